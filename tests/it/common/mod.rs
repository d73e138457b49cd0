//! Test support: a real server on an ephemeral port, in-process or as a child process of the built
//! binary, and small builders for commands.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claims_ledger_log::LogOptions;
use claims_ledger_proto as pb;
use claims_ledger_server::app::App;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub const TEXT: &str = "Lavrov told reporters: \u{201c}We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace,\u{201d} he said. Zelenskyy\u{2019}s administration wants Crimea back.";

/// Code-point span of `needle` in `TEXT`.
pub fn span_of(source_id: &str, needle: &str) -> pb::Span {
    let byte = TEXT.find(needle).expect("needle in TEXT");
    let start = TEXT[..byte].chars().count() as u32;
    pb::Span {
        source_id: source_id.to_string(),
        start,
        end: start + needle.chars().count() as u32,
        exact: needle.to_string(),
    }
}

/// A server running inside the test process.
pub struct TestServer {
    pub addr: String,
    pub dir: TempDir,
    pub app: App,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_in(tempfile::tempdir().expect("tempdir")).await
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.addr.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn ledger(&self) -> pb::ledger_client::LedgerClient<Channel> {
        pb::ledger_client::LedgerClient::new(self.channel().await)
    }

    pub async fn events(&self) -> pb::events_client::EventsClient<Channel> {
        pb::events_client::EventsClient::new(self.channel().await)
    }

    pub async fn query(&self) -> pb::query_client::QueryClient<Channel> {
        pb::query_client::QueryClient::new(self.channel().await)
    }

    /// The log's head, read over gRPC.
    pub async fn head(&self) -> pb::GetHeadResponse {
        self.events()
            .await
            .get_head(pb::GetHeadRequest {})
            .await
            .expect("GetHead")
            .into_inner()
    }

    pub async fn admin(&self) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.channel().await)
    }

    /// Starts a server on an existing data directory (for restart tests).
    pub async fn start_in(dir: TempDir) -> TestServer {
        // The open waits for a lock that the previous server's threads are still releasing.
        let app = App::open(dir.path(), LogOptions::default()).expect("open app");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
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
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.app.finish().await;
        self.dir
    }
}

/// The built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_claims-ledger"))
}

/// A server running as a child process of the real binary.
pub struct ChildServer {
    pub child: Child,
    pub addr: String,
}

impl ChildServer {
    pub fn start(data_dir: &Path, extra: &[&str]) -> ChildServer {
        let addr_file = data_dir.with_extension("addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut child = Command::new(bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--addr-file"])
            .arg(&addr_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.is_empty() {
                    return ChildServer {
                        child,
                        addr: format!("http://{a}"),
                    };
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited early: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Graceful stop with SIGTERM; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        false
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The fields a status's `BadRequest` details name, in order (none without such details).
pub fn field_violations(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// A `SubmitBatch` request (or session append) of `commands`, without options or expectations.
pub fn batch_of(commands: Vec<pb::batch_command::Command>) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        options: None,
        commands: commands
            .into_iter()
            .map(|c| pb::BatchCommand {
                expected_revision: None,
                command: Some(c),
            })
            .collect(),
    }
}

pub fn party(id: &str, kind: pb::PartyKind) -> pb::RegisterPartyCommand {
    pb::RegisterPartyCommand {
        party_id: id.to_string(),
        kind: kind as i32,
        name: id.to_string(),
        ..Default::default()
    }
}

pub fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// 2024-06-06T00:00:00Z
pub const PUBLISHED: i64 = 1_717_632_000;
/// 2024-06-05T00:00:00Z
pub const WEDNESDAY: i64 = 1_717_545_600;

pub fn source() -> pb::RegisterSourceCommand {
    pb::RegisterSourceCommand {
        publisher: "Test Wire".into(),
        url: "https://example.org/istanbul".into(),
        title: "Istanbul talks".into(),
        published_at: ts(PUBLISHED),
        retrieved_at: ts(PUBLISHED + 3600),
        language: "en".into(),
        text: TEXT.into(),
        ..Default::default()
    }
}

pub fn statement(speaker: &str, source_id: &str, needle: &str) -> pb::RecordStatementCommand {
    pb::RecordStatementCommand {
        speaker_id: speaker.into(),
        stated_time: Some(pb::StatedTime {
            at: ts(WEDNESDAY + 5000),
            precision: pb::TimePrecision::Day as i32,
        }),
        mode: pb::StatementMode::DirectQuote as i32,
        attribution_verb: "told reporters".into(),
        content: "Russia is ready for talks in Istanbul.".into(),
        spans: vec![span_of(source_id, needle)],
        ..Default::default()
    }
}

pub fn claim(statement_id: &str, party: &str, topic: &str, stance: &str) -> pb::AssertClaimCommand {
    pb::AssertClaimCommand {
        statement_id: statement_id.into(),
        party_id: party.into(),
        topic: topic.into(),
        stance: stance.into(),
        ..Default::default()
    }
}
