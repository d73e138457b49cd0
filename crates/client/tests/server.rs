//! The client against a real server started in this process on 127.0.0.1: a write whose answer is
//! lost is retried under the same idempotency key and comes back `deduplicated` with nothing
//! written twice; a refusal is not retried; a subscription delivers every event exactly once and in
//! order across a server restart and across being dropped and started again; the auditor accepts
//! the real log's checkpoints and proofs and rejects tampered ones.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use claims_ledger_client::audit::{check_consistency, Auditor};
use claims_ledger_client::tonic::body::Body;
use claims_ledger_client::tonic::codegen::http;
use claims_ledger_client::{
    pb, Code, Connection, Item, RetryPolicy, Status, Subscription, Transport,
};
use claims_ledger_log::LogOptions;
use claims_ledger_server::app::App;
use tempfile::TempDir;
use tower::ServiceExt as _;

// ---- a server in this process ------------------------------------------------------------------

struct TestServer {
    addr: SocketAddr,
    dir: TempDir,
    app: App,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        TestServer::start_at(dir, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// Serves `dir` on `addr` (port 0 for any), so a restart can come back on the same address.
    async fn start_at(dir: TempDir, addr: SocketAddr) -> TestServer {
        // The open waits for the lock a stopped server's threads are still releasing.
        let app = App::open(dir.path(), LogOptions::default()).expect("open app");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // The old server's connections may linger in TIME_WAIT on this port.
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind");
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let serve_app = app.clone();
        let handle = tokio::spawn(async move {
            claims_ledger_server::grpc::server::serve(listener, serve_app, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        TestServer {
            addr,
            dir,
            app,
            stop,
            handle,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A graceful stop (subscriptions end with UNAVAILABLE), then a start on the same address and
    /// data directory.
    async fn restart(self) -> TestServer {
        let addr = self.addr;
        let dir = self.stop().await;
        TestServer::start_at(dir, addr).await
    }

    async fn stop(self) -> TempDir {
        let _ = self.stop.send(());
        let _ = self.handle.await;
        self.app.finish().await;
        self.dir
    }
}

/// Retries quick enough for a test, and enough of them to ride out a restart.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 50,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
        retry_resource_exhausted: true,
    }
}

async fn connect(s: &TestServer) -> Connection {
    Connection::builder(s.url())
        .retry(quick_retries())
        .connect()
        .await
        .expect("connect")
}

fn party(id: &str) -> pb::RegisterPartyRequest {
    pb::RegisterPartyRequest {
        command: Some(pb::RegisterPartyCommand {
            party_id: id.to_string(),
            kind: pb::PartyKind::State as i32,
            name: id.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn register(conn: &Connection, ids: impl IntoIterator<Item = String>) {
    let ledger = conn.ledger();
    for id in ids {
        ledger.register_party(party(&id)).await.expect("register");
    }
}

async fn all_events(conn: &Connection) -> Vec<pb::EventEnvelope> {
    let events = conn.events();
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = events
            .read_all(pb::ReadAllRequest {
                from_position: from,
                max_count: 1000,
                ..Default::default()
            })
            .await
            .expect("ReadAll");
        out.extend(page.events);
        match page.next_position {
            Some(next) => from = next,
            None => return out,
        }
    }
}

// ---- a transport that loses answers ------------------------------------------------------------

/// Passes every call through, counts the calls to `path`, and for the first `lose` of them lets
/// the server act but throws its answer away, as a dropped connection would, reporting
/// UNAVAILABLE instead.
#[derive(Clone)]
struct LoseAnswers {
    inner: Transport,
    path: &'static str,
    lose: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<Body>> for LoseAnswers {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The clone used in `call` waits for its own readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let ours = req.uri().path() == self.path;
        let lose = ours
            && self
                .lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if ours {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            // A unary answer's headers come once the server has finished the call: the write
            // is done when this returns.
            let answer = inner.oneshot(req).await?;
            if lose {
                drop(answer);
                return Err(Box::new(Status::unavailable("the answer was lost")) as BoxError);
            }
            Ok(answer)
        })
    }
}

/// Lets the first `cuts` `Subscribe` calls deliver `frames` data frames each, then breaks their
/// response bodies off with UNAVAILABLE, as a dropped connection would.
#[derive(Clone)]
struct CutSubscriptions {
    inner: Transport,
    cuts: Arc<AtomicU32>,
    frames: usize,
}

impl tower::Service<http::Request<Body>> for CutSubscriptions {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let cut = req.uri().path() == "/claimsledger.v1.Events/Subscribe"
            && self
                .cuts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        let frames = self.frames;
        let inner = self.inner.clone();
        Box::pin(async move {
            let answer = inner.oneshot(req).await?;
            if !cut {
                return Ok(answer);
            }
            Ok(answer.map(|body| {
                Body::new(CutBody {
                    inner: body,
                    frames_left: frames,
                })
            }))
        })
    }
}

struct CutBody {
    inner: Body,
    frames_left: usize,
}

impl http_body::Body for CutBody {
    type Data = claims_ledger_client::tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Status>>> {
        if self.frames_left == 0 {
            return Poll::Ready(Some(Err(Status::unavailable("the connection dropped"))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data() {
                    self.frames_left -= 1;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }
}

fn losing(conn: Connection, path: &'static str, lose: u32) -> (Connection, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let conn = conn.map_transport(|inner| {
        Transport::new(LoseAnswers {
            inner,
            path,
            lose: Arc::new(AtomicU32::new(lose)),
            calls: counted,
        })
    });
    (conn, calls)
}

// ---- writes ------------------------------------------------------------------------------------

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_retried_with_its_key_and_deduplicated() {
    let server = TestServer::start().await;
    let (conn, calls) = losing(
        connect(&server).await,
        "/claimsledger.v1.Ledger/RegisterParty",
        2,
    );

    // No key given: the client makes one, and every attempt carries it.
    let written = conn
        .ledger()
        .register_party(party("ukraine"))
        .await
        .expect("written in the end");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two answers lost, then one"
    );
    assert_eq!(written.attempts, 3);
    assert!(
        written.deduplicated(),
        "the retry found the first attempt's write: {:?}",
        written.response
    );

    // One event, carrying the key the client made.
    let events = all_events(&conn).await;
    assert_eq!(events.len(), 1, "nothing written twice: {events:?}");
    assert_eq!(events[0].idempotency_key, written.idempotency_key);
    assert_eq!(written.events().len(), 1);
    assert_eq!(written.events()[0].event_id, events[0].event_id);
    server.stop().await;
}

#[tokio::test]
async fn a_batch_keeps_the_callers_key_across_retries() {
    let server = TestServer::start().await;
    let (conn, calls) = losing(
        connect(&server).await,
        "/claimsledger.v1.Ledger/SubmitBatch",
        1,
    );
    let request = pb::SubmitBatchRequest {
        options: Some(pb::WriteOptions {
            idempotency_key: "import-42".into(),
            ..Default::default()
        }),
        commands: ["russia", "ukraine"]
            .into_iter()
            .map(|id| pb::BatchCommand {
                expected_revision: None,
                command: party(id)
                    .command
                    .map(pb::batch_command::Command::RegisterParty),
            })
            .collect(),
    };
    let written = conn.ledger().submit_batch(request).await.expect("batch");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(written.idempotency_key, "import-42");
    assert!(written.deduplicated());
    let events = all_events(&conn).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].idempotency_key, "import-42");
    server.stop().await;
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let server = TestServer::start().await;
    let (conn, calls) = losing(
        connect(&server).await,
        "/claimsledger.v1.Ledger/RegisterParty",
        0,
    );
    let ledger = conn.ledger();
    ledger.register_party(party("russia")).await.expect("first");
    // The same id under another (fresh) key: ALREADY_EXISTS, once.
    let err = ledger
        .register_party(party("russia"))
        .await
        .expect_err("taken");
    assert_eq!(err.code(), Some(Code::AlreadyExists), "{err}");
    // Invalid: an empty name.
    let mut bad = party("belarus");
    if let Some(c) = bad.command.as_mut() {
        c.name.clear();
    }
    let err = ledger.register_party(bad).await.expect_err("invalid");
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one call each, no retry");
    assert_eq!(all_events(&conn).await.len(), 1);
    server.stop().await;
}

// ---- subscriptions -----------------------------------------------------------------------------

/// The positions of the next `n` events, checking that each is the one after the previous.
async fn take_events(sub: &mut Subscription, n: usize, seen: &mut Vec<u64>) {
    let mut got = 0;
    while got < n {
        if let Item::Event(e) = sub.next().await.expect("next") {
            if let Some(last) = seen.last() {
                assert_eq!(
                    e.position,
                    last + 1,
                    "in order, no gap, no repeat: {seen:?}"
                );
            }
            seen.push(e.position);
            got += 1;
        }
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn a_subscription_resumes_across_a_server_restart_exactly_once() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    register(&conn, ids("before", 5)).await;

    // Named, and acknowledged behind what it delivered: after the restart the server starts again
    // at the acknowledged position, and the client must not pass those events on twice.
    let mut sub = conn
        .events()
        .subscribe(pb::SubscribeRequest {
            subscription_name: "resumer".into(),
            ..Default::default()
        })
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    take_events(&mut sub, 2, &mut seen).await;
    assert_eq!(sub.ack().await.expect("ack"), 2);
    take_events(&mut sub, 3, &mut seen).await;
    assert_eq!(seen, [0, 1, 2, 3, 4]);

    let server = server.restart().await;
    // Written after the restart, through the same connection (its channel reconnects).
    register(&conn, ids("after", 5)).await;
    take_events(&mut sub, 5, &mut seen).await;
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert!(sub.reconnects() >= 1, "{sub:?}");
    assert_eq!(sub.resume_position(), 10);

    // And it goes on live.
    register(&conn, ids("last", 1)).await;
    take_events(&mut sub, 1, &mut seen).await;
    assert_eq!(seen.last(), Some(&10));
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_resumes_after_its_stream_breaks_mid_way() {
    let server = TestServer::start().await;
    let cuts = Arc::new(AtomicU32::new(4));
    let conn = connect(&server).await.map_transport(|inner| {
        Transport::new(CutSubscriptions {
            inner,
            cuts: cuts.clone(),
            frames: 2,
        })
    });
    register(&conn, ids("early", 6)).await;
    let mut sub = conn
        .events()
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    take_events(&mut sub, 6, &mut seen).await;
    for round in 0..4 {
        register(&conn, ids(&format!("round{round}"), 3)).await;
        take_events(&mut sub, 3, &mut seen).await;
    }
    assert_eq!(seen, (0..18).collect::<Vec<_>>());
    // Each round's events are written only after the previous round was read, so they travel in
    // frames of their own: five rounds need at least three streams of two frames each.
    assert!(sub.reconnects() >= 2, "{sub:?}");
    assert!(cuts.load(Ordering::SeqCst) <= 2);
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_subscription_resumes_from_its_saved_position_or_its_ack() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    register(&conn, ids("a", 4)).await;

    // Unnamed: the consumer keeps the resume position with its own state.
    let mut sub = conn
        .events()
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    take_events(&mut sub, 3, &mut seen).await;
    let saved = sub.resume_position();
    drop(sub);
    register(&conn, ids("b", 3)).await;
    let mut sub = conn
        .events()
        .subscribe(pb::SubscribeRequest {
            from_position: saved,
            ..Default::default()
        })
        .await
        .expect("resubscribe");
    take_events(&mut sub, 4, &mut seen).await;
    assert_eq!(seen, (0..7).collect::<Vec<_>>());
    drop(sub);

    // Named: the server keeps the acknowledged position; `from_position` is then ignored.
    let named = pb::SubscribeRequest {
        subscription_name: "worker".into(),
        ..Default::default()
    };
    let mut sub = conn.events().subscribe(named.clone()).await.expect("named");
    let mut first = Vec::new();
    take_events(&mut sub, 5, &mut first).await;
    sub.ack().await.expect("ack");
    drop(sub);
    let mut sub = conn.events().subscribe(named).await.expect("named again");
    assert_eq!(sub.resume_position(), 5);
    take_events(&mut sub, 2, &mut first).await;
    assert_eq!(first, (0..7).collect::<Vec<_>>());

    // `from_end` becomes a position at once: events written while the subscriber is away are
    // still delivered after a reconnect.
    let mut tail = conn
        .events()
        .subscribe(pb::SubscribeRequest {
            from_end: true,
            ..Default::default()
        })
        .await
        .expect("from end");
    assert_eq!(tail.resume_position(), 7);
    register(&conn, ids("c", 1)).await;
    let mut got = vec![6];
    take_events(&mut tail, 1, &mut got).await;
    assert_eq!(got, [6, 7]);
    server.stop().await;
}

#[tokio::test]
async fn a_filtered_subscription_moves_its_resume_point_over_skipped_events() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    register(&conn, ids("x", 3)).await;
    let mut sub = conn
        .events()
        .subscribe(pb::SubscribeRequest {
            stream_prefixes: vec!["party-nothing-matches".into()],
            ..Default::default()
        })
        .await
        .expect("subscribe");
    // Nothing matches, yet the caught-up mark says the three events were scanned.
    loop {
        match sub.next().await.expect("next") {
            Item::CaughtUp { next_position } => {
                assert_eq!(next_position, 3);
                break;
            }
            Item::Checkpoint { .. } => {}
            Item::Event(e) => panic!("filtered out, yet delivered: {e:?}"),
        }
    }
    assert_eq!(sub.resume_position(), 3);
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_past_the_end_is_refused_not_retried() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    let err = conn
        .events()
        .subscribe(pb::SubscribeRequest {
            from_position: 99,
            ..Default::default()
        })
        .await
        .expect_err("past the end");
    assert_eq!(err.code(), Some(Code::OutOfRange), "{err}");
    server.stop().await;
}

// ---- the auditor -------------------------------------------------------------------------------

#[tokio::test]
async fn the_auditor_accepts_the_real_log_and_rejects_tampering() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    register(&conn, ids("p", 5)).await;
    let audit = conn.audit();
    let key = audit.get_public_key().await.expect("key").verifier_key;
    let auditor = Auditor::from_key(&key).expect("pinned key");

    let old = auditor.latest(&audit).await.expect("latest verifies");
    assert_eq!(old.checkpoint.size, 5);
    for position in 0..5 {
        let e = auditor
            .check_event(&audit, &old.checkpoint, position)
            .await
            .unwrap_or_else(|e| panic!("event {position}: {e}"));
        assert_eq!(e.position, position);
    }

    register(&conn, ids("q", 4)).await;
    let new = auditor.latest(&audit).await.expect("latest");
    assert_eq!(new.checkpoint.size, 9);
    // The saved note still opens, and the new log extends it.
    let saved = auditor.open(&old.note).expect("saved note");
    auditor
        .check_extends(&audit, &saved, &new.checkpoint)
        .await
        .expect("extends");

    // Tampered answers, each rejected.
    let answer = audit
        .get_event_with_proof(2, Some(new.checkpoint.size))
        .await
        .expect("event with proof");
    auditor
        .verify_event(&new.checkpoint, 2, &answer)
        .expect("honest answer");

    let mut forged = answer.clone();
    if let Some(e) = forged.event.as_mut() {
        let text = String::from_utf8(e.stored_bytes.clone()).expect("utf-8");
        e.stored_bytes = text.replacen("p-2", "p-X", 1).into_bytes();
        assert_ne!(
            e.stored_bytes,
            answer.event.as_ref().expect("event").stored_bytes
        );
    }
    let f = auditor
        .verify_event(&new.checkpoint, 2, &forged)
        .expect_err("edited event");
    assert!(f.reason().contains("is not in the signed tree"), "{f}");

    let mut forged = answer.clone();
    if let Some(p) = forged.proof.as_mut() {
        p.hashes[0][5] ^= 0x40;
    }
    auditor
        .verify_event(&new.checkpoint, 2, &forged)
        .expect_err("edited proof");

    let mut forged = answer.clone();
    if let Some(c) = forged.checkpoint.as_mut() {
        c.note = c.note.replacen("\n9\n", "\n8\n", 1);
    }
    let f = auditor
        .verify_event(&new.checkpoint, 2, &forged)
        .expect_err("edited checkpoint");
    assert!(f.reason().contains("does not verify"), "{f}");

    // Another log's key does not open this log's notes.
    let other =
        claims_ledger_client::audit::checkpoint::Signer::from_seed(saved.origin.as_str(), &[9; 32])
            .expect("signer");
    let stranger = Auditor::new(other.verifier());
    stranger.latest(&audit).await.expect_err("wrong key");

    // A consistency proof with one bit flipped.
    let mut proof = audit
        .get_consistency_proof(5, Some(9))
        .await
        .expect("proof")
        .hashes;
    check_consistency(&saved, &new.checkpoint, &proof).expect("honest");
    proof[0][0] ^= 1;
    check_consistency(&saved, &new.checkpoint, &proof).expect_err("forged");
    server.stop().await;
}

// ---- the other handles -------------------------------------------------------------------------

#[tokio::test]
async fn every_handle_reaches_its_service() {
    let server = TestServer::start().await;
    let conn = connect(&server).await;
    let written = conn
        .ledger()
        .recorded_by("importer")
        .expect("header value")
        .register_party(party("moldova"))
        .await
        .expect("write");
    let events = all_events(&conn).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].recorded_by, "importer",
        "the header reached the server"
    );

    let after = written.events()[0].position + 1;
    let view = conn
        .query()
        .get_party(pb::GetPartyRequest {
            party_id: "moldova".into(),
            consistency: Some(pb::ReadConsistency {
                min_position: after,
            }),
        })
        .await
        .expect("GetParty");
    let name = view
        .party
        .and_then(|v| v.party)
        .map(|p| p.name)
        .unwrap_or_default();
    assert_eq!(name, "moldova");
    let err = conn
        .query()
        .get_party(pb::GetPartyRequest {
            party_id: "atlantis".into(),
            consistency: None,
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");

    let status = conn.admin().get_projection_status().await.expect("status");
    assert_eq!(status.log_count, 1);

    let head = conn.events().get_head().await.expect("head");
    assert_eq!(head.event_count, 1);
    assert_eq!(head.hash, events[0].hash);
    server.stop().await;
}

#[tokio::test]
async fn a_missing_server_is_a_connect_error() {
    // Bound, then closed: nothing listens on this port any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let err = Connection::connect(format!("http://{addr}"))
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, claims_ledger_client::Error::Connect { .. }),
        "{err:?}"
    );
}
