//! Named subscriptions belong to the identity that created them: over real gRPC with tokens, another
//! reader can neither acknowledge, delete nor resume one (PERMISSION_DENIED, and nothing moves), an
//! admin can, the owner is listed and survives a restart; subscriptions stored without an owner (open
//! mode, or before owners existed) are claimed by the first identity that acknowledges them; and the
//! per-identity and overall limits answer RESOURCE_EXHAUSTED.
use crate::common;

use std::sync::Arc;
use std::time::Duration;

use claims_ledger_log::{CursorLimits, LogOptions};
use claims_ledger_proto as pb;
use claims_ledger_proto::subscribe_response::Kind;
use claims_ledger_server::app::App;
use claims_ledger_server::config::{token_hash, Role, TokenEntry, Tokens};
use claims_ledger_server::grpc::server::{serve_with, ServeOptions};
use common::*;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_types::StatusExt as _;

/// A server with tokens (or none) and cursor limits, on `dir`.
struct Served {
    addr: String,
    app: App,
    dir: TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

const IDENTITIES: [(&str, Role); 4] = [
    ("indexer-desk", Role::Reader),
    ("intruder", Role::Reader),
    ("writer-desk", Role::Writer),
    ("ops", Role::Admin),
];

fn tokens() -> Arc<Tokens> {
    let entries: Vec<TokenEntry> = IDENTITIES
        .iter()
        .map(|(name, role)| TokenEntry {
            name: name.to_string(),
            sha256: token_hash(&format!("token-of-{name}")),
            roles: vec![*role],
        })
        .collect();
    Arc::new(Tokens::from_entries(&entries).expect("tokens"))
}

async fn start(dir: TempDir, with_tokens: bool, limits: CursorLimits) -> Served {
    let options = LogOptions {
        cursor_limits: limits,
        ..LogOptions::default()
    };
    let app = App::open(dir.path(), options).expect("open");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let serve_app = app.clone();
    let serve = ServeOptions {
        tokens: with_tokens.then(tokens),
        ..ServeOptions::default()
    };
    let handle = tokio::spawn(async move {
        serve_with(listener, serve_app, serve, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Served {
        addr,
        app,
        dir,
        stop,
        handle,
    }
}

impl Served {
    async fn stop(self) -> TempDir {
        let _ = self.stop.send(());
        let _ = self.handle.await;
        self.app.finish().await;
        self.dir
    }

    async fn as_identity(&self, who: Option<&str>) -> Client {
        let channel = Endpoint::from_shared(self.addr.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        Client {
            channel,
            token: who.map(|w| format!("token-of-{w}")),
        }
    }
}

/// One caller: a channel and its token (none in open mode).
struct Client {
    channel: Channel,
    token: Option<String>,
}

impl Client {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        r
    }

    fn events(&self) -> pb::events_client::EventsClient<Channel> {
        pb::events_client::EventsClient::new(self.channel.clone())
    }

    async fn ack(&self, name: &str, position: u64) -> Result<u64, tonic::Status> {
        let r = self.req(pb::AckRequest {
            subscription_name: name.into(),
            position,
        });
        Ok(self
            .events()
            .ack(r)
            .await?
            .into_inner()
            .acknowledged_position)
    }

    async fn delete(&self, name: &str) -> Result<bool, tonic::Status> {
        let r = self.req(pb::DeleteSubscriptionRequest {
            subscription_name: name.into(),
        });
        Ok(self
            .events()
            .delete_subscription(r)
            .await?
            .into_inner()
            .existed)
    }

    async fn get(&self, name: &str) -> pb::GetSubscriptionResponse {
        let r = self.req(pb::GetSubscriptionRequest {
            subscription_name: name.into(),
        });
        self.events()
            .get_subscription(r)
            .await
            .expect("GetSubscription")
            .into_inner()
    }

    /// Resumes `name` and returns the position of the first event delivered.
    async fn resume(&self, name: &str) -> Result<u64, tonic::Status> {
        let r = self.req(pb::SubscribeRequest {
            subscription_name: name.into(),
            ..Default::default()
        });
        let mut stream = self.events().subscribe(r).await?.into_inner();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), stream.message())
                .await
                .expect("delivery")?
                .expect("an event before the end");
            if let Some(Kind::Event(e)) = msg.kind {
                return Ok(e.position);
            }
        }
    }

    async fn write(&self, n: std::ops::Range<usize>) {
        let mut ledger = pb::ledger_client::LedgerClient::new(self.channel.clone());
        for i in n {
            ledger
                .register_party(self.req(pb::RegisterPartyRequest {
                    command: Some(party(&format!("p{i}"), pb::PartyKind::Group)),
                    ..Default::default()
                }))
                .await
                .expect("write");
        }
    }
}

fn denied(r: Result<impl std::fmt::Debug, tonic::Status>, what: &str) -> tonic::Status {
    let s = r.expect_err(what);
    assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
    assert!(
        !s.message().contains("indexer-desk"),
        "{what}: the refusal names the owner: {}",
        s.message()
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_or_an_admin_may_ack_delete_or_resume() {
    let s = start(
        tempfile::tempdir().expect("tempdir"),
        true,
        CursorLimits::default(),
    )
    .await;
    let owner = s.as_identity(Some("indexer-desk")).await;
    let intruder = s.as_identity(Some("intruder")).await;
    let admin = s.as_identity(Some("ops")).await;
    s.as_identity(Some("writer-desk")).await.write(0..70).await;

    // The first acknowledgement creates the subscription and binds it to its caller.
    assert_eq!(owner.ack("indexer", 5).await.expect("owner acks"), 5);
    let state = owner.get("indexer").await;
    assert_eq!(
        (state.acknowledged_position, state.owner.as_str()),
        (5, "indexer-desk")
    );

    // The audit's reproduction: another reader moving it to 63 is refused, and nothing moves.
    denied(intruder.ack("indexer", 63).await, "another reader's Ack");
    denied(intruder.delete("indexer").await, "another reader's delete");
    denied(intruder.resume("indexer").await, "another reader's resume");
    assert_eq!(owner.get("indexer").await.acknowledged_position, 5);

    // The owner resumes where it acknowledged; an admin may move it, and it stays the owner's.
    assert_eq!(owner.resume("indexer").await.expect("owner resumes"), 5);
    assert_eq!(admin.ack("indexer", 7).await.expect("admin acks"), 7);
    assert_eq!(admin.resume("indexer").await.expect("admin resumes"), 7);
    assert_eq!(owner.get("indexer").await.owner, "indexer-desk");

    // The intruder's own subscription is its own, and listed with its owner.
    assert_eq!(intruder.ack("junk", 1).await.expect("own name"), 1);
    let list = intruder
        .events()
        .list_subscriptions(intruder.req(pb::ListSubscriptionsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    let owners: Vec<(String, String)> = list
        .subscriptions
        .into_iter()
        .map(|s| (s.subscription_name, s.owner))
        .collect();
    assert_eq!(
        owners,
        [
            ("indexer".to_string(), "indexer-desk".to_string()),
            ("junk".to_string(), "intruder".to_string())
        ]
    );

    // Owners survive a restart.
    let s = start(s.stop().await, true, CursorLimits::default()).await;
    let owner = s.as_identity(Some("indexer-desk")).await;
    let intruder = s.as_identity(Some("intruder")).await;
    let admin = s.as_identity(Some("ops")).await;
    denied(intruder.ack("indexer", 63).await, "after a restart");
    assert_eq!(owner.get("indexer").await.owner, "indexer-desk");
    assert_eq!(owner.ack("indexer", 8).await.expect("owner acks"), 8);

    // The owner may delete its own; an admin anyone's.
    assert!(owner.delete("indexer").await.expect("owner deletes"));
    assert!(admin.delete("junk").await.expect("admin deletes"));
    assert!(!intruder.delete("never-was").await.expect("absent"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unowned_subscriptions_are_claimed_by_their_first_acknowledging_identity() {
    // Open mode: every caller is the same anonymous caller, and stores no owner.
    let s = start(
        tempfile::tempdir().expect("tempdir"),
        false,
        CursorLimits::default(),
    )
    .await;
    let anyone = s.as_identity(None).await;
    anyone.write(0..10).await;
    assert_eq!(anyone.ack("legacy", 3).await.expect("open ack"), 3);
    assert_eq!(anyone.get("legacy").await.owner, "");

    // With tokens now: anyone may still resume it, only an admin delete it, and an admin's Ack
    // claims nothing.
    let s = start(s.stop().await, true, CursorLimits::default()).await;
    let owner = s.as_identity(Some("indexer-desk")).await;
    let intruder = s.as_identity(Some("intruder")).await;
    let admin = s.as_identity(Some("ops")).await;
    assert_eq!(intruder.resume("legacy").await.expect("unowned resume"), 3);
    denied(intruder.delete("legacy").await, "deleting an unowned one");
    assert_eq!(admin.ack("legacy", 4).await.expect("admin"), 4);
    assert_eq!(owner.get("legacy").await.owner, "");
    // The first identity to acknowledge it owns it from then on.
    assert_eq!(owner.ack("legacy", 5).await.expect("claim"), 5);
    assert_eq!(owner.get("legacy").await.owner, "indexer-desk");
    denied(intruder.ack("legacy", 9).await, "after the claim");

    // Back in open mode, the anonymous caller may act on every subscription.
    let s = start(s.stop().await, false, CursorLimits::default()).await;
    let anyone = s.as_identity(None).await;
    assert_eq!(anyone.ack("legacy", 6).await.expect("open ack"), 6);
    assert_eq!(anyone.get("legacy").await.owner, "indexer-desk");
    assert!(anyone.delete("legacy").await.expect("open delete"));
    s.stop().await;
}

fn exhausted(r: Result<u64, tonic::Status>, what: &str, says: &str) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), Code::ResourceExhausted, "{what}: {s:?}");
    assert!(s.message().contains(says), "{what}: {}", s.message());
    let quota = s.get_details_quota_failure().expect("QuotaFailure details");
    assert_eq!(quota.violations.len(), 1, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_and_overall_limits_are_resource_exhausted() {
    let limits = CursorLimits {
        per_owner: 2,
        total: 3,
    };
    let s = start(tempfile::tempdir().expect("tempdir"), true, limits).await;
    let a = s.as_identity(Some("indexer-desk")).await;
    let b = s.as_identity(Some("intruder")).await;
    s.as_identity(Some("writer-desk")).await.write(0..3).await;

    a.ack("a1", 1).await.expect("first");
    a.ack("a2", 1).await.expect("second");
    exhausted(
        a.ack("a3", 1).await,
        "a third for a",
        "this identity already has 2",
    );
    // Moving one it has is not a new one.
    assert_eq!(a.ack("a1", 2).await.expect("existing"), 2);
    b.ack("b1", 1).await.expect("b's first");
    exhausted(
        b.ack("b2", 1).await,
        "a fourth overall",
        "the server already holds 3",
    );

    // Nothing refused was stored.
    let list = a
        .events()
        .list_subscriptions(a.req(pb::ListSubscriptionsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = list
        .subscriptions
        .iter()
        .map(|s| s.subscription_name.as_str())
        .collect();
    assert_eq!(names, ["a1", "a2", "b1"]);

    // Deleting one makes room again.
    assert!(a.delete("a1").await.expect("delete"));
    a.ack("a3", 1).await.expect("room again");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_acknowledgements_cannot_pass_a_limit_together() {
    let limits = CursorLimits {
        per_owner: 5,
        total: 100,
    };
    let s = start(tempfile::tempdir().expect("tempdir"), true, limits).await;
    let a = Arc::new(s.as_identity(Some("indexer-desk")).await);
    let acks: Vec<_> = (0..20)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.ack(&format!("n{i:02}"), 0).await })
        })
        .collect();
    let mut codes = Vec::new();
    for t in acks {
        codes.push(t.await.expect("task").map_err(|s| s.code()));
    }
    assert_eq!(codes.iter().filter(|c| c.is_ok()).count(), 5, "{codes:?}");
    assert!(codes
        .iter()
        .all(|c| matches!(c, Ok(0) | Err(Code::ResourceExhausted))));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_survive_export_and_restore() {
    use claims_ledger_cli::backup::{export_with, restore_file};
    let s = start(
        tempfile::tempdir().expect("tempdir"),
        true,
        CursorLimits::default(),
    )
    .await;
    let desk = s.as_identity(Some("indexer-desk")).await;
    desk.ack("indexer", 0).await.expect("the desk creates it");
    // The export runs as an admin, who may list every subscription.
    let conn = claims_ledger_client::Connection::builder(s.addr.clone())
        .bearer_token("token-of-ops")
        .connect()
        .await
        .expect("connect");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("ledger.ndjson");
    export_with(&conn, &out).await.expect("export");
    let text = std::fs::read_to_string(&out).expect("read");
    let cursor_line = text
        .lines()
        .find(|l| l.starts_with("{\"cursor\""))
        .expect("a cursor line");
    assert!(
        cursor_line.contains("\"owner\":\"indexer-desk\""),
        "{cursor_line}"
    );
    s.stop().await;

    // The same file labelled v2 (which had no owners) is refused at that line.
    let v2 = tmp.path().join("v2.ndjson");
    std::fs::write(
        &v2,
        text.replacen("claims-ledger/export/v3", "claims-ledger/export/v2", 1),
    )
    .expect("write");
    let err = restore_file(&v2, &tmp.path().join("from-v2")).expect_err("an owner in v2");
    assert!(err.reason.contains("owner"), "{err}");

    let restored = tmp.path().join("restored");
    restore_file(&out, &restored).expect("restore");
    let dir = tempfile::TempDir::new_in(tmp.path()).expect("tempdir");
    std::fs::remove_dir(dir.path()).expect("empty");
    std::fs::rename(&restored, dir.path()).expect("move");
    let r = start(dir, true, CursorLimits::default()).await;
    let intruder = r.as_identity(Some("intruder")).await;
    denied(intruder.ack("indexer", 0).await, "another reader's ack");
    let desk = r.as_identity(Some("indexer-desk")).await;
    assert_eq!(desk.get("indexer").await.owner, "indexer-desk");
    desk.ack("indexer", 0).await.expect("the owner still may");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_its_limits_from_the_config_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "[subscriptions]\nmax_per_identity = 1\n").expect("config");
    let mut server = ChildServer::start(
        &tmp.path().join("data"),
        &["--config", config.to_str().expect("utf-8 path")],
    );
    let channel = Endpoint::from_shared(server.addr.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let served = Client {
        channel,
        token: None,
    };
    served
        .ack("first", 0)
        .await
        .expect("the first is within the limit");
    exhausted(
        served.ack("second", 0).await,
        "a second name over max_per_identity = 1",
        "",
    );
    server.terminate();
}
