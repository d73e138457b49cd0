//! Restarts from snapshots: a graceful stop saves the stream index and the write model, and the next
//! open folds in only the events after them. A snapshot older than the log (as after a crash) is
//! extended by the events after it; one of another log, or a damaged one, is ignored and the whole
//! log is folded. In every case the restarted server decides, reads and checks revisions exactly as
//! one that folded the whole log would.
use crate::common;

use std::path::Path;

use claims_ledger_core::codec::{Put as _, Reader};
use claims_ledger_log::verify::verify_dir;
use claims_ledger_log::{snapshot, INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND};
use claims_ledger_proto as pb;
use claims_ledger_server::app::{
    verify_state_snapshot, App, OpenOptions, STATE_SNAPSHOT, STATE_SNAPSHOT_KIND,
};
use common::*;
use tonic::Code;

async fn load_demo(s: &TestServer) -> usize {
    let dataset = claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL)
        .expect("dataset");
    s.app
        .load_dataset(&dataset, "demo-loader")
        .await
        .expect("load demo");
    dataset.commands.len()
}

/// The event count a snapshot file covers.
fn covers(dir: &Path, file: &str, kind: &str) -> u64 {
    snapshot::read(&dir.join(file), kind)
        .expect("readable")
        .expect("present")
        .count
}

async fn register(s: &TestServer, id: &str) -> Result<(), tonic::Status> {
    s.ledger()
        .await
        .register_party(pb::RegisterPartyRequest {
            command: Some(party(id, pb::PartyKind::Person)),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Renames party `id` expecting its stream at `revision`.
async fn rename(s: &TestServer, id: &str, revision: u64, name: &str) -> Result<(), tonic::Status> {
    s.ledger()
        .await
        .update_party(pb::UpdatePartyRequest {
            expected_revision: Some(pb::ExpectedRevision {
                kind: pb::ExpectedRevisionKind::Exact as i32,
                revision,
            }),
            command: Some(pb::UpdatePartyCommand {
                party_id: id.into(),
                kind: pb::PartyKind::Person as i32,
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn register_source(s: &TestServer) -> String {
    s.ledger()
        .await
        .register_source(pb::RegisterSourceRequest {
            command: Some(source()),
            ..Default::default()
        })
        .await
        .expect("source")
        .into_inner()
        .source_id
}

/// Records a statement by `speaker` quoting the source `source_id`.
async fn record(s: &TestServer, speaker: &str, source_id: &str) -> Result<(), tonic::Status> {
    s.ledger()
        .await
        .record_statement(pb::RecordStatementRequest {
            command: Some(statement(speaker, source_id, "We are prepared")),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Positions of the events of `stream`, in revision order.
async fn stream_positions(s: &TestServer, stream: &str) -> Vec<u64> {
    let events = s
        .events()
        .await
        .read_stream(pb::ReadStreamRequest {
            stream: stream.into(),
            max_count: 1000,
            ..Default::default()
        })
        .await
        .expect("read_stream")
        .into_inner()
        .events;
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            assert_eq!(e.stream_revision, i as u64);
            assert_eq!(e.stream, stream);
            e.position
        })
        .collect()
}

fn demo_len() -> usize {
    claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL)
        .expect("dataset")
        .commands
        .len()
}

/// Writes the demo, party "p" and p's first rename; returns the event count.
async fn write_head(s: &TestServer) -> u64 {
    load_demo(s).await;
    register(s, "p").await.expect("p");
    rename(s, "p", 0, "First").await.expect("rename 1");
    s.head().await.event_count
}

/// What a log holds after the first stop: p's positions and the source registered after it.
struct Tail {
    p_positions: Vec<u64>,
    source_id: String,
}

/// Writes after the first stop: p's second rename, party "late" and a source.
async fn write_tail(s: &TestServer) -> Tail {
    rename(s, "p", 1, "Second").await.expect("rename 2");
    register(s, "late").await.expect("late");
    let source_id = register_source(s).await;
    let p_positions = stream_positions(s, "party-p").await;
    assert_eq!(p_positions.len(), 3);
    Tail {
        p_positions,
        source_id,
    }
}

/// [`write_head`], a stop (snapshots at its count `n`), a restart that takes them, [`write_tail`]
/// and a stop. Returns the directory (snapshots at the end of the log), `n` and the tail.
async fn two_stops() -> (tempfile::TempDir, u64, Tail) {
    let s = TestServer::start().await;
    let n = write_head(&s).await;
    let dir = s.stop().await;
    assert_eq!(covers(dir.path(), INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND), n);
    assert_eq!(covers(dir.path(), STATE_SNAPSHOT, STATE_SNAPSHOT_KIND), n);
    let s = TestServer::start_in(dir).await;
    assert_eq!(s.app.opened_from_snapshots(), (n, n));
    let tail = write_tail(&s).await;
    (s.stop().await, n, tail)
}

/// The checks every restarted server must pass, however it folded the log.
async fn behaves_as_folded_from_the_start(s: &TestServer, tail: &Tail) {
    // The write model knows every entity, before and after any snapshot: a statement by the party
    // and on the source registered last is accepted (the log's own checks would not see them).
    record(s, "late", &tail.source_id)
        .await
        .expect("late's statement");
    let unknown = record(s, "never-registered", &tail.source_id).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    let count = s.head().await.event_count;
    for id in ["p", "late"] {
        assert_eq!(
            register(s, id).await.unwrap_err().code(),
            Code::AlreadyExists
        );
    }
    let dataset = claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL)
        .expect("dataset");
    let again = s
        .app
        .load_dataset(&dataset, "demo-loader")
        .await
        .expect("reload");
    assert_eq!((again.written, again.already_present), (0, demo_len()));
    assert_eq!(
        s.head().await.event_count,
        count,
        "nothing was written twice"
    );
    // The stream index holds every event of the stream, in order.
    assert_eq!(stream_positions(s, "party-p").await, tail.p_positions);
    // Revisions continue from the last event, not from the snapshot.
    let stale = rename(s, "p", 1, "Stale").await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    rename(s, "p", 2, "Third")
        .await
        .expect("rename at the real revision");
    let mut after = tail.p_positions.clone();
    after.push(count);
    assert_eq!(stream_positions(s, "party-p").await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_takes_the_snapshots_and_folds_in_nothing_else() {
    let (dir, _, tail) = two_stops().await;
    let end = covers(dir.path(), STATE_SNAPSHOT, STATE_SNAPSHOT_KIND);
    let s = TestServer::start_in(dir).await;
    assert_eq!(s.app.opened_from_snapshots(), (end, end));
    behaves_as_folded_from_the_start(&s, &tail).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_snapshot_is_extended_by_the_events_after_it() {
    let s = TestServer::start().await;
    let n = write_head(&s).await;
    let dir = s.stop().await;
    // Keep the first stop's snapshots, as if the second run had crashed before saving its own.
    let saved: Vec<(&str, Vec<u8>)> = [INDEX_SNAPSHOT, STATE_SNAPSHOT]
        .into_iter()
        .map(|f| (f, std::fs::read(dir.path().join(f)).expect("snapshot")))
        .collect();
    let s = TestServer::start_in(dir).await;
    let tail = write_tail(&s).await;
    let dir = s.stop().await;
    for (f, bytes) in &saved {
        std::fs::write(dir.path().join(f), bytes).expect("put the older snapshot back");
    }

    let s = TestServer::start_in(dir).await;
    assert_eq!(s.app.opened_from_snapshots(), (n, n));
    behaves_as_folded_from_the_start(&s, &tail).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_another_log_or_damaged_ones_are_ignored() {
    // Another log: its snapshots would claim entities this one never had.
    let other = TestServer::start().await;
    load_demo(&other).await;
    register(&other, "ghost").await.expect("ghost");
    let other_dir = other.stop().await;

    let (dir, _, tail) = two_stops().await;
    for f in [INDEX_SNAPSHOT, STATE_SNAPSHOT] {
        std::fs::copy(other_dir.path().join(f), dir.path().join(f)).expect("copy");
    }
    let s = TestServer::start_in(dir).await;
    assert_eq!(s.app.opened_from_snapshots(), (0, 0));
    register(&s, "ghost")
        .await
        .expect("the other log's party is not in this one");
    let dir = s.stop().await;

    // Damaged: one flipped byte in each (the stop above wrote fresh ones).
    for f in [INDEX_SNAPSHOT, STATE_SNAPSHOT] {
        let path = dir.path().join(f);
        let mut bytes = std::fs::read(&path).expect("snapshot");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        std::fs::write(&path, bytes).expect("damage");
    }
    let s = TestServer::start_in(dir).await;
    assert_eq!(s.app.opened_from_snapshots(), (0, 0));
    behaves_as_folded_from_the_start(&s, &tail).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_stream_index_snapshot_fails_verify_and_is_never_served() {
    let (dir, _, tail) = two_stops().await;
    let path = dir.path().join(INDEX_SNAPSHOT);
    let snap = snapshot::read(&path, INDEX_SNAPSHOT_KIND)
        .expect("readable")
        .expect("present");
    let report = verify_dir(dir.path()).expect("open").expect("verifies");
    assert_eq!(report.index_snapshot, Some(snap.count));

    // Swap two of p's positions, keeping the count, the head hash and a valid checksum: a snapshot
    // the server takes, mapping p's revisions to the wrong events.
    // The body: the number of streams (u32), then per stream its name (u16 length), its count (u32)
    // and its positions (u64 each).
    let mut r = Reader::new(&snap.body);
    let mut body = Vec::new();
    let streams = r.u32().expect("streams");
    body.put_u32(streams);
    for _ in 0..streams {
        let name = r.str16().expect("name");
        let mut positions: Vec<u64> = (0..r.u32().expect("count"))
            .map(|_| r.u64().expect("position"))
            .collect();
        if name == "party-p" {
            positions.swap(0, 1);
        }
        body.put_str16(name);
        body.put_u32(positions.len() as u32);
        positions.iter().for_each(|p| body.put_u64(*p));
    }
    let forged = snapshot::Snapshot {
        body,
        ..snap.clone()
    };
    snapshot::write(&path, INDEX_SNAPSHOT_KIND, &forged).expect("write");
    let m = verify_dir(dir.path())
        .expect("open")
        .expect_err("a forged index");
    assert_eq!(m.position, tail.p_positions[0]);
    assert!(m.reason.contains("party-p revision 0"), "{}", m.reason);

    let s = TestServer::start_in(dir).await;
    assert_eq!(s.app.opened_from_snapshots().0, snap.count);
    let err = s
        .events()
        .await
        .read_stream(pb::ReadStreamRequest {
            stream: "party-p".into(),
            ..Default::default()
        })
        .await
        .expect_err("the wrong events are not served");
    assert_eq!(err.code(), Code::Internal);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_that_folds_a_long_tail_saves_snapshots_before_serving() {
    let s = TestServer::start().await;
    let n = write_head(&s).await;
    let dir = s.stop().await;
    // As after a crash: no snapshots.
    let remove = || {
        for f in [INDEX_SNAPSHOT, STATE_SNAPSHOT] {
            std::fs::remove_file(dir.path().join(f)).expect("remove");
        }
    };
    remove();
    // Opened on a thread outside the runtime, so that no projector task starts and dropping the
    // app closes the directory.
    let open = |resnapshot_after: Option<u64>| {
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            App::open_options(
                &path,
                OpenOptions {
                    resnapshot_after,
                    ..OpenOptions::default()
                },
            )
        })
        .join()
        .expect("the open thread")
        .expect("open")
    };
    // Below the threshold (the default, at this size) the open saves nothing.
    let app = open(None);
    assert_eq!(app.opened_from_snapshots(), (0, 0));
    assert!(!dir.path().join(STATE_SNAPSHOT).exists());
    drop(app);
    // At or past it, the snapshots are on disk before the open returns ...
    let app = open(Some(n));
    assert_eq!(app.opened_from_snapshots(), (0, 0));
    assert_eq!(covers(dir.path(), INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND), n);
    assert_eq!(covers(dir.path(), STATE_SNAPSHOT, STATE_SNAPSHOT_KIND), n);
    // ... so a crash right after (no stop, no finish) leaves them for the next open.
    drop(app);
    let app = open(Some(n));
    assert_eq!(app.opened_from_snapshots(), (n, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_write_model_snapshot_fails_verify() {
    let s = TestServer::start().await;
    write_head(&s).await;
    let dir = s.stop().await;
    let older = snapshot::read(&dir.path().join(STATE_SNAPSHOT), STATE_SNAPSHOT_KIND)
        .expect("readable")
        .expect("present");
    let s = TestServer::start_in(dir).await;
    write_tail(&s).await;
    let dir = s.stop().await;
    let path = dir.path().join(STATE_SNAPSHOT);
    let snap = snapshot::read(&path, STATE_SNAPSHOT_KIND)
        .expect("readable")
        .expect("present");
    let checked = verify_state_snapshot(dir.path()).expect("open");
    assert_eq!(checked, Ok(Some(snap.count)));

    // The write model of the first stop (before party "late" and the last source) under the count
    // and head hash of the last: a valid checksum, and a server would take it and let "late" be
    // registered twice.
    assert_ne!(older.body, snap.body);
    let forged = snapshot::Snapshot {
        body: older.body,
        ..snap
    };
    snapshot::write(&path, STATE_SNAPSHOT_KIND, &forged).expect("write");
    let reason = verify_state_snapshot(dir.path())
        .expect("open")
        .expect_err("a forged write model");
    assert!(reason.contains(STATE_SNAPSHOT), "{reason}");

    // `claims-ledger verify` fails on it too, after the log itself verified.
    let out = std::process::Command::new(bin())
        .args(["verify", "--data-dir"])
        .arg(dir.path())
        .arg("--json")
        .output()
        .expect("run verify");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], false);
    assert!(
        report["reason"]
            .as_str()
            .is_some_and(|r| r.contains(STATE_SNAPSHOT)),
        "{report}"
    );
}
