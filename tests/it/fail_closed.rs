//! The fail-closed open, against the real binary. A demo data directory is served and stopped
//! cleanly; a copy holding only a prefix of its log (the restore of an older export) beside one of
//! its durable records (the projections, the write model snapshot) is refused by `serve`, `rebuild`
//! and `verify`, each naming the record and both counts and pointing to a restore. The operator
//! override starts it, records the acceptance as an event of the log's own stream that clients
//! read, and the next plain start is clean. And a connection held open past the drain deadline
//! no longer keeps the server from closing its log.
use crate::common;

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use claims_ledger_log::import::Importer;
use claims_ledger_log::{open_db, EventLog};
use claims_ledger_proto as pb;
use common::*;

/// Events kept by the shorter copies.
const KEEP: u64 = 30;

/// Serves the demo dataset in `dir`, issues a signed checkpoint, and stops cleanly (snapshots
/// saved, projections at the head). Returns the event count.
fn demo_dir(dir: &Path) -> u64 {
    let mut server = ChildServer::start(dir, &["--demo"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let count = rt.block_on(async {
        let mut audit = pb::audit_client::AuditClient::connect(server.addr.clone())
            .await
            .expect("connect");
        let signed = audit
            .get_checkpoint(pb::GetCheckpointRequest::default())
            .await
            .expect("checkpoint")
            .into_inner();
        signed.checkpoint.expect("a checkpoint").tree_size
    });
    drop(rt);
    assert!(server.terminate(), "stopped cleanly");
    assert!(count > KEEP, "{count} events");
    // The checkpoint handed out was recorded first, and the clean stop raised the durable mark.
    for mark in ["signed.hwm", "durable.hwm"] {
        assert!(dir.join(mark).is_file(), "{mark}");
    }
    count
}

/// The first [`KEEP`] events of the log in `from`, restored into `to`.
fn restore_prefix(from: &Path, to: &Path) {
    let events = {
        let log = EventLog::open_read_only(from).expect("open");
        log.read_all(0, false, KEEP as usize).expect("read")
    };
    let mut imp = Importer::create(to).expect("create");
    for e in &events {
        imp.push(e).expect("push");
    }
    imp.finish().expect("finish");
    drop(open_db(to).expect("released"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, target).expect("copy");
        }
    }
}

/// Runs `serve` on `dir`, which must refuse to start; returns what it printed on stderr.
fn serve_refused(dir: &Path) -> String {
    let addr_file = dir.with_extension("addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::fs::read_to_string(&addr_file).is_ok_and(|a| !a.is_empty()) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started on a shorter log");
        }
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read stderr");
            assert!(!status.success(), "exit status {status}: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server neither started nor refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The refusal names the record, both counts, a restore, and the override.
fn assert_names(text: &str, record: &str, expected: u64, override_flag: &str) {
    for part in [
        record.to_string(),
        format!("holds {KEEP} events"),
        format!("show {expected} events"),
        "restore".to_string(),
        override_flag.to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
    assert!(!text.contains("still running"), "{text}");
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().expect("run")
}

#[test]
fn serve_refuses_a_shorter_log_and_records_an_accepted_one() {
    let root = tempfile::tempdir().expect("tempdir");
    let demo = root.path().join("demo");
    let count = demo_dir(&demo);

    // The write model snapshot alone.
    let by_snapshot = root.path().join("by-snapshot");
    restore_prefix(&demo, &by_snapshot);
    std::fs::copy(demo.join("state.snap"), by_snapshot.join("state.snap")).expect("copy");
    let err = serve_refused(&by_snapshot);
    assert_names(&err, "state.snap", count, "--accept-shorter-log");
    // `verify` fails at the position where the log ends, naming the same record.
    let out = cli(&["verify", "--data-dir", by_snapshot.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("FAILED at position {KEEP}")),
        "{stdout}"
    );
    assert!(stdout.contains("state.snap"), "{stdout}");

    // The projection checkpoint alone.
    let by_projections = root.path().join("by-projections");
    restore_prefix(&demo, &by_projections);
    copy_dir(
        &demo.join("projections"),
        &by_projections.join("projections"),
    );
    let err = serve_refused(&by_projections);
    assert_names(&err, "projection checkpoint", count, "--accept-shorter-log");

    // Accepted knowingly: the server starts, and the acceptance is the log's next event.
    let mut server = ChildServer::start(&by_projections, &["--accept-shorter-log"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut events = pb::events_client::EventsClient::connect(server.addr.clone())
            .await
            .expect("connect");
        let read = events
            .read_all(pb::ReadAllRequest {
                from_position: KEEP,
                direction: pb::Direction::Forwards as i32,
                ..Default::default()
            })
            .await
            .expect("read")
            .into_inner()
            .events;
        assert_eq!(read.len(), 1, "only the acceptance after the kept prefix");
        let e = &read[0];
        assert_eq!((e.position, e.stream.as_str()), (KEEP, "$log"));
        assert_eq!(e.event_type, "ShorterLogAccepted");
        let Some(pb::event_payload::Kind::ShorterLogAccepted(p)) =
            e.payload.as_ref().and_then(|p| p.kind.clone())
        else {
            panic!("payload {:?}", e.payload);
        };
        assert_eq!((p.recovered, p.expected), (KEEP, count));
        assert!(
            p.evidence
                .iter()
                .any(|r| r.source.contains("projection checkpoint") && r.count == count),
            "{:?}",
            p.evidence
        );
        // Writes continue after it.
        let mut ledger = pb::ledger_client::LedgerClient::connect(server.addr.clone())
            .await
            .expect("connect");
        let w = ledger
            .register_party(pb::RegisterPartyRequest {
                command: Some(party("after-acceptance", pb::PartyKind::Person)),
                ..Default::default()
            })
            .await
            .expect("write")
            .into_inner();
        let appended = w.result.expect("result").events;
        assert_eq!(appended[0].position, KEEP + 1);
    });
    assert!(server.terminate(), "stopped cleanly");

    // A plain start is clean now, and the log verifies.
    let mut server = ChildServer::start(&by_projections, &[]);
    let head = rt.block_on(async {
        let mut events = pb::events_client::EventsClient::connect(server.addr.clone())
            .await
            .expect("connect");
        events
            .get_head(pb::GetHeadRequest {})
            .await
            .expect("head")
            .into_inner()
    });
    assert_eq!(head.event_count, KEEP + 2);
    assert!(server.terminate(), "stopped cleanly");
    let out = cli(&[
        "verify",
        "--data-dir",
        by_projections.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn rebuild_refuses_a_shorter_log_unless_told() {
    let root = tempfile::tempdir().expect("tempdir");
    let demo = root.path().join("demo");
    let count = demo_dir(&demo);
    let dir = root.path().join("copy");
    restore_prefix(&demo, &dir);
    copy_dir(&demo.join("projections"), &dir.join("projections"));
    let path = dir.to_str().expect("utf-8");
    let out = cli(&["rebuild", "--data-dir", path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_names(
        &err,
        "projection checkpoint",
        count,
        "rebuild --accept-shorter-log",
    );
    let out = cli(&["rebuild", "--data-dir", path, "--accept-shorter-log"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = EventLog::open_read_only(&dir).expect("open");
    assert_eq!(log.durable_count(), KEEP + 1);
    let last = log.get(KEEP).expect("read").expect("the acceptance");
    assert!(last.is_system());
    drop(log);
    // The projections were rebuilt from the shorter log: a plain rebuild runs clean.
    let out = cli(&["rebuild", "--data-dir", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A subscriber whose HTTP/2 window stays shut keeps its stream from ending, so the graceful
/// drain runs into its deadline. The server must still close its log before it exits: sled made
/// durable and the write-ahead log emptied, so that the directory verifies offline.
#[test]
fn a_stream_held_past_the_drain_deadline_still_leaves_a_closed_log() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let mut server = ChildServer::start(&data, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut ledger = pb::ledger_client::LedgerClient::connect(server.addr.clone())
            .await
            .expect("connect");
        for i in 0..20 {
            ledger
                .register_party(pb::RegisterPartyRequest {
                    command: Some(party(&format!("p-{i}"), pb::PartyKind::Person)),
                    ..Default::default()
                })
                .await
                .expect("write");
        }
    });
    // Acknowledged through the write-ahead log; sled is not flushed until a segment fills.
    let frames = wal_bytes(&data);
    assert!(frames > 0, "the write-ahead log holds the writes");
    let addr = server.addr.trim_start_matches("http://").to_string();
    let _held = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        // A zero window: the server may send headers but no message of the subscription.
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut client = client.ready().await.expect("ready");
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/claimsledger.v1.Events/Subscribe"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (response, mut body) = client.send_request(request, false).expect("send");
        // An empty SubscribeRequest: from position 0, which has events to send.
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("send body");
        let response = response.await.expect("response headers");
        assert_eq!(response.status(), 200);
        (client, response)
    });
    // SIGTERM; the drain waits for the held stream until its deadline, then the server stops.
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    drop(_held);
    assert_eq!(
        wal_bytes(&data),
        0,
        "the write-ahead log was emptied at exit"
    );
    match claims_ledger_log::verify::verify_dir(&data).expect("open") {
        Ok(report) => assert_eq!(report.events, 20),
        Err(m) => panic!("{m}"),
    }
}

/// Non-zero bytes in the write-ahead log's segments.
fn wal_bytes(data: &Path) -> usize {
    std::fs::read_dir(data.join("wal"))
        .expect("wal dir")
        .map(|e| {
            std::fs::read(e.expect("entry").path())
                .expect("read")
                .iter()
                .filter(|b| **b != 0)
                .count()
        })
        .sum()
}
