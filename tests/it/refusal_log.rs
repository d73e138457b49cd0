//! Refused requests are logged so that an operator can act on them: the real binary, with tokens and
//! JSON logs on a captured stderr, gets a call without a valid token (UNAUTHENTICATED), one beyond
//! its caller's role (PERMISSION_DENIED by the auth layer) and one on another identity's
//! subscription (PERMISSION_DENIED by the service). Each leaves one WARN line naming the peer's
//! address, the method, the identity when known, and the code; no token appears anywhere.
use crate::common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use claims_ledger_proto as pb;
use claims_ledger_server::config::token_hash;
use common::*;
use tonic::transport::Channel;
use tonic::Code;

const ALICE: &str = "alice-secret-token-1";
const BOB: &str = "bob-secret-token-2";
const WRONG: &str = "not-a-configured-token-3";

fn req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

/// The refusal lines of a JSON log, as their fields.
fn refusals(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "request refused")
        .map(|v| {
            assert_eq!(v["level"], "WARN", "{v}");
            v["fields"].clone()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_with_peer_method_identity_and_code_but_no_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "log_format = \"json\"\n\
         [[tokens]]\nname = \"alice\"\nsha256 = \"{}\"\nroles = [\"reader\"]\n\
         [[tokens]]\nname = \"bob\"\nsha256 = \"{}\"\nroles = [\"reader\"]\n",
        token_hash(ALICE),
        token_hash(BOB)
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).expect("write config");
    let addr_file = dir.path().join("addr");
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        match std::fs::read_to_string(&addr_file) {
            Ok(a) if !a.is_empty() => break a,
            _ => {}
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "server exited early"
        );
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut events = pb::events_client::EventsClient::new(channel.clone());
    let mut admin = pb::admin_client::AdminClient::new(channel);

    let err = events
        .get_head(req(pb::GetHeadRequest {}, WRONG))
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = admin
        .get_projection_status(req(pb::GetProjectionStatusRequest {}, ALICE))
        .await
        .expect_err("a reader at Admin");
    assert_eq!(err.code(), Code::PermissionDenied);
    let ack = |token| {
        req(
            pb::AckRequest {
                subscription_name: "alices".into(),
                position: 0,
            },
            token,
        )
    };
    events.ack(ack(ALICE)).await.expect("alice's own");
    let err = events.ack(ack(BOB)).await.expect_err("bob on alice's");
    assert_eq!(err.code(), Code::PermissionDenied);

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(&stderr_path).expect("read stderr");
    for token in [ALICE, BOB, WRONG] {
        assert!(!log.contains(token), "a token reached the log:\n{log}");
    }
    let got: Vec<(String, String, String)> = refusals(&log)
        .iter()
        .map(|f| {
            let peer: SocketAddr = f["peer"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("a peer address in {f}"));
            assert!(peer.ip().is_loopback() && peer.port() != 0, "{f}");
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("method"), s("identity"), s("code"))
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "/claimsledger.v1.Events/GetHead".to_string(),
                "-".to_string(),
                "Unauthenticated".to_string()
            ),
            (
                "/claimsledger.v1.Admin/GetProjectionStatus".to_string(),
                "alice".to_string(),
                "PermissionDenied".to_string()
            ),
            (
                "/claimsledger.v1.Events/Ack".to_string(),
                "bob".to_string(),
                "PermissionDenied".to_string()
            ),
        ],
        "{log}"
    );
}
