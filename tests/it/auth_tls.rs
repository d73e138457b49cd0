//! Identity and access over real gRPC: every role against every service, unknown and missing tokens,
//! "recorded by" taken from the token and never from the client's header, nothing written when a
//! call is refused; TLS round trip with health checks; and the refusal to serve beyond loopback
//! without authentication.
use crate::common;

use std::sync::Arc;

use claims_ledger_log::LogOptions;
use claims_ledger_proto as pb;
use claims_ledger_server::app::App;
use claims_ledger_server::config::{token_hash, Role, TokenEntry, Tokens};
use claims_ledger_server::grpc::server::{serve_with, ServeOptions};
use common::*;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

struct Served {
    addr: String,
    app: App,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn start(options: ServeOptions) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = App::open(dir.path(), LogOptions::default()).expect("open");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let scheme = if options.tls.is_some() {
        "https://localhost"
    } else {
        "http://127.0.0.1"
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serve_app = app.clone();
    tokio::spawn(async move {
        serve_with(listener, serve_app, options, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Served {
        addr: format!("{scheme}:{port}"),
        app,
        _dir: dir,
        stop: Some(tx),
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

const ROLES: [(&str, Role); 4] = [
    ("reader", Role::Reader),
    ("writer", Role::Writer),
    ("auditor", Role::Auditor),
    ("admin", Role::Admin),
];

fn tokens() -> Arc<Tokens> {
    let entries: Vec<TokenEntry> = ROLES
        .iter()
        .map(|(name, role)| TokenEntry {
            name: format!("{name}-desk"),
            sha256: token_hash(&format!("token-of-{name}")),
            roles: vec![*role],
        })
        .collect();
    Arc::new(Tokens::from_entries(&entries).expect("tokens"))
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    // A client's claim of who it is must never reach the log when tokens are configured.
    r.metadata_mut()
        .insert("x-recorded-by", "somebody-else".parse().expect("header"));
    r
}

/// Calls one method of each service with `token`; returns (method, code).
async fn calls(ch: &Channel, token: Option<&str>, n: usize) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut ledger = pb::ledger_client::LedgerClient::new(ch.clone());
    let mut query = pb::query_client::QueryClient::new(ch.clone());
    let mut events = pb::events_client::EventsClient::new(ch.clone());
    let mut audit = pb::audit_client::AuditClient::new(ch.clone());
    let mut admin = pb::admin_client::AdminClient::new(ch.clone());
    vec![
        (
            "Ledger.RegisterParty",
            code(
                ledger
                    .register_party(with_token(
                        pb::RegisterPartyRequest {
                            command: Some(party(&format!("party-{n}"), pb::PartyKind::State)),
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "Query.ListParties",
            code(
                query
                    .list_parties(with_token(pb::ListPartiesRequest::default(), token))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "Events.GetHead",
            code(
                events
                    .get_head(with_token(pb::GetHeadRequest {}, token))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "Events.DeleteSubscription",
            code(
                events
                    .delete_subscription(with_token(
                        pb::DeleteSubscriptionRequest {
                            subscription_name: "nobody".into(),
                        },
                        token,
                    ))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "Audit.GetCheckpoint",
            code(
                audit
                    .get_checkpoint(with_token(
                        pb::GetCheckpointRequest { tree_size: Some(0) },
                        token,
                    ))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "Audit.GetConsistencyProof",
            code(
                audit
                    .get_consistency_proof(with_token(
                        pb::GetConsistencyProofRequest {
                            old_size: 0,
                            new_size: Some(0),
                        },
                        token,
                    ))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "Admin.GetProjectionStatus",
            code(
                admin
                    .get_projection_status(with_token(pb::GetProjectionStatusRequest {}, token))
                    .await
                    .map(|_| ()),
            ),
        ),
    ]
}

/// Which methods each role may call (every role includes reader).
fn allowed(role: &str, method: &str) -> bool {
    match method {
        "Ledger.RegisterParty" => role == "writer",
        // Anyone may ask to delete a subscription of their own (this one does not exist).
        "Admin.GetProjectionStatus" => role == "admin",
        "Audit.GetConsistencyProof" => role == "auditor",
        _ => true,
    }
}

async fn head(s: &Served) -> u64 {
    s.app.log().durable_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_service() {
    let s = start(ServeOptions {
        tokens: Some(tokens()),
        tls: None,
        ..Default::default()
    })
    .await;
    let ch = Endpoint::from_shared(s.addr.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    for (no, token) in [(0, None), (1, Some("not-a-token"))] {
        let before = head(&s).await;
        for (method, code) in calls(&ch, token, no).await {
            assert_eq!(code, Code::Unauthenticated, "{method} with token {token:?}");
        }
        assert_eq!(
            head(&s).await,
            before,
            "nothing written without a valid token"
        );
    }
    for (i, (role, _)) in ROLES.iter().enumerate() {
        let before = head(&s).await;
        let token = format!("token-of-{role}");
        for (method, code) in calls(&ch, Some(&token), 10 + i).await {
            if allowed(role, method) {
                assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{role} may call {method}, got {code:?}"
                );
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{role} must not call {method}"
                );
            }
        }
        let written = head(&s).await - before;
        assert_eq!(
            written,
            u64::from(*role == "writer"),
            "{role} wrote {written} events"
        );
    }
    // The writer's event is recorded by its token's identity, not by the header it sent.
    let last = s
        .app
        .log()
        .get(head(&s).await - 1)
        .expect("read")
        .expect("event");
    assert_eq!(last.recorded_by, "writer-desk");
    // Health and reflection stay open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a token");
    assert_eq!(
        r.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_with_health_checks() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let s = start(ServeOptions {
        tokens: None,
        tls: Some((cert_pem.clone().into_bytes(), key_pem.into_bytes())),
        ..Default::default()
    })
    .await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let ch = Endpoint::from_shared(s.addr.replace("localhost", "127.0.0.1"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("TLS connect");
    let mut ledger = pb::ledger_client::LedgerClient::new(ch.clone());
    let r = ledger
        .register_party(pb::RegisterPartyRequest {
            command: Some(party("russia", pb::PartyKind::State)),
            ..Default::default()
        })
        .await
        .expect("write over TLS");
    assert_eq!(r.into_inner().party_id, "russia");
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "claimsledger.v1.Ledger".into(),
        })
        .await
        .expect("health over TLS");
    // A plaintext client does not get through.
    let plain = Endpoint::from_shared(s.addr.replace("https://localhost", "http://127.0.0.1"))
        .expect("endpoint")
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut events = pb::events_client::EventsClient::new(ch);
        assert!(
            events.get_head(pb::GetHeadRequest {}).await.is_err(),
            "plaintext must fail"
        );
    }
}

#[test]
fn serving_beyond_loopback_needs_tokens_or_an_explicit_flag() {
    use claims_ledger_cli::serve::check_exposure;
    let public: std::net::SocketAddr = "0.0.0.0:50051".parse().expect("addr");
    let local: std::net::SocketAddr = "127.0.0.1:50051".parse().expect("addr");
    assert!(check_exposure(public, false, false).is_err());
    assert!(check_exposure(public, true, false).is_ok());
    assert!(check_exposure(public, false, true).is_ok());
    assert!(check_exposure(local, false, false).is_ok());
    // The binary refuses and says why.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("CLAIMS_LEDGER_ALLOW_UNAUTHENTICATED")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without authentication"));
}

/// The real binary with a config file: TLS and tokens from the file, and the client subcommands
/// authenticating with `CLAIMS_LEDGER_TOKEN` over `https://` with `CLAIMS_LEDGER_CA_CERT`.
#[test]
fn the_binary_serves_tls_with_tokens_from_its_config_and_clients_authenticate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem())
        .expect("write key");
    // A private key readable by group or others is refused, as the signing key is.
    std::fs::set_permissions(
        dir.path().join("tls.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod key");
    let config = format!(
        "log_format = \"json\"\n[tls]\ncert = \"{0}/tls.crt\"\nkey = \"{0}/tls.key\"\n\n\
         [[tokens]]\nname = \"desk-editor\"\nsha256 = \"{1}\"\nroles = [\"writer\"]\n",
        dir.path().display(),
        token_hash("s3cret")
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).expect("write config");
    let config_arg = config_path.to_str().expect("utf-8").to_string();
    let server = ChildServer::start(&dir.path().join("data"), &["--config", &config_arg]);
    let url = server.addr.replace("http://127.0.0.1", "https://localhost");
    let run = |token: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(args)
            .args(["--server", &url])
            .env("CLAIMS_LEDGER_CA_CERT", dir.path().join("tls.crt"));
        match token {
            Some(t) => cmd.env("CLAIMS_LEDGER_TOKEN", t),
            None => cmd.env_remove("CLAIMS_LEDGER_TOKEN"),
        };
        cmd.output().expect("run client")
    };
    let refused = run(None, &["head", "--json"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let dataset = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/istanbul.json");
    let load = run(Some("s3cret"), &["load", dataset, "--json"]);
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let head = run(Some("s3cret"), &["head", "--json"]);
    assert!(
        head.status.success(),
        "{}",
        String::from_utf8_lossy(&head.stderr)
    );
    let tail = run(
        Some("s3cret"),
        &["tail", "--from", "start", "--limit", "1", "--json"],
    );
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let first: serde_json::Value =
        serde_json::from_slice(tail.stdout.split(|b| *b == b'\n').next().expect("a line"))
            .expect("json");
    assert_eq!(first["recorded_by"], "desk-editor", "{first}");
}
