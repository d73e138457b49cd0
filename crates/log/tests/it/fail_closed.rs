//! Failing closed at open: a log made shorter than its durable records (a prefix restored into a
//! copy, or an older copy of sled's files swapped in) is refused, for each kind of record alone,
//! by the writable open, the read-only open and `verify`, with a message naming the record and
//! both counts; so is another log of the same length beside the first one's mark of durable events.
//! The operator override accepts it, records the choice in the log, and resets the
//! records, so the next open is clean. Frames that do not continue the store's hash chain are
//! refused too.
use std::path::Path;

use serde_json::value::RawValue;
use uuid::Uuid;

use claims_ledger_log::evidence::{DURABLE_MARK, SHORTER_LOG_ACCEPTED, SIGNED_MARK, SYSTEM_STREAM};
use claims_ledger_log::import::Importer;
use claims_ledger_log::verify::verify_dir;
use claims_ledger_log::{
    open_db, AppendRequest, CursorActor, EventLog, Evidence, LogError, LogOptions, NewEvent,
    RecordedEvent, ShorterLog, INDEX_SNAPSHOT,
};

const LONG: u64 = 40;
const SHORT: u64 = 25;

fn event(i: u64) -> AppendRequest {
    AppendRequest {
        events: vec![NewEvent {
            event_id: Uuid::new_v4(),
            stream: format!("s-{}", i % 4),
            event_type: "Noted".into(),
            schema_version: 1,
            payload: RawValue::from_string(format!(r#"{{"i":{i}}}"#)).expect("json"),
        }],
        expectations: Vec::new(),
        idempotency: None,
        recorded_by: "tester".into(),
        correlation_id: None,
        causation_id: None,
    }
}

async fn append(log: &EventLog, from: u64, to: u64) {
    for i in from..to {
        log.append(event(i)).await.expect("append");
    }
}

fn everything(log: &EventLog) -> Vec<RecordedEvent> {
    log.read_all(0, false, usize::MAX).expect("read all")
}

const ADMIN: CursorActor<'static> = CursorActor {
    identity: Some("ops"),
    privileged: true,
};

/// A closed log of [`LONG`] events in `dir`, with a cursor at its end, a stream index snapshot
/// and a signed checkpoint of its whole tree recorded. Returns its events.
async fn long_log(dir: &Path) -> Vec<RecordedEvent> {
    let log = EventLog::open(dir, LogOptions::default(), None).expect("open");
    append(&log, 0, LONG).await;
    log.store_cursor("indexer", LONG, ADMIN)
        .await
        .expect("cursor");
    log.save_index_snapshot().expect("snapshot");
    let root = log.tree_root(LONG).expect("root");
    log.record_signed_checkpoint(LONG, root).expect("signed");
    let events = everything(&log);
    drop(log);
    events
}

/// The first [`SHORT`] of `events` restored into `dir`, as a restore of an older export would.
fn restore_prefix(events: &[RecordedEvent], dir: &Path) {
    let mut imp = Importer::create(dir).expect("create");
    for e in &events[..SHORT as usize] {
        imp.push(e).expect("push");
    }
    imp.finish().expect("finish");
    // The importer's threads let go of the directory before the next open takes it.
    drop(open_db(dir).expect("released"));
}

fn shorter(result: Result<EventLog, LogError>) -> ShorterLog {
    match result {
        Ok(log) => panic!("a shorter log opened with {} events", log.durable_count()),
        Err(LogError::ShorterLog(s)) => *s,
        Err(e) => panic!("refused for another reason: {e}"),
    }
}

/// Each way of opening refuses, and names `source` with both counts.
fn assert_refused(dir: &Path, source: &str, expected: u64) {
    let s = shorter(EventLog::open(dir, LogOptions::default(), None));
    assert_eq!(s.recovered, SHORT);
    assert_eq!(s.expected(), expected);
    assert!(
        s.evidence
            .iter()
            .any(|e| e.source.contains(source) && e.count == expected),
        "{source} in {:?}",
        s.evidence
    );
    let text = s.to_string();
    for part in [
        format!("holds {SHORT} events"),
        format!("show {expected} events"),
        source.to_string(),
        "backup".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} in {text}");
    }
    // Readers and `verify` refuse it too, rather than report a healthy shorter log.
    shorter(EventLog::open_read_only(dir));
    match verify_dir(dir) {
        Err(LogError::ShorterLog(s)) => assert_eq!(s.expected(), expected),
        other => panic!("verify: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_longer_than_the_log_refuses_the_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let (long, copy) = (root.path().join("long"), root.path().join("copy"));
    let events = long_log(&long).await;
    restore_prefix(&events, &copy);
    std::fs::copy(long.join(INDEX_SNAPSHOT), copy.join(INDEX_SNAPSHOT)).expect("copy");
    assert_refused(&copy, INDEX_SNAPSHOT, LONG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_past_the_log_refuses_the_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let (long, copy) = (root.path().join("long"), root.path().join("copy"));
    let events = long_log(&long).await;
    restore_prefix(&events, &copy);
    // The cursor as the longer log stored it, in a store that lost the events it covers.
    let value = open_db(&long)
        .expect("open")
        .get(b"cindexer")
        .expect("get")
        .expect("the cursor");
    let db = open_db(&copy).expect("open");
    db.insert(b"cindexer", value).expect("insert");
    db.flush().expect("flush");
    drop(db);
    assert_refused(&copy, "\"indexer\"", LONG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_checkpoint_past_the_log_refuses_the_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let (long, copy) = (root.path().join("long"), root.path().join("copy"));
    let events = long_log(&long).await;
    restore_prefix(&events, &copy);
    std::fs::copy(long.join(SIGNED_MARK), copy.join(SIGNED_MARK)).expect("copy");
    assert_refused(&copy, "signed checkpoint", LONG);
}

/// An older copy of sled's own files swapped in, the write-ahead log and the other files kept:
/// the mark of durable events still says how far sled was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mark_of_durable_events_refuses_an_older_store() {
    let root = tempfile::tempdir().expect("tempdir");
    let (dir, old) = (root.path().join("data"), root.path().join("old-sled"));
    {
        let log = EventLog::open(&dir, LogOptions::default(), None).expect("open");
        append(&log, 0, SHORT).await;
    }
    let sled_files = |from: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(from)
            .expect("ls")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                let name = p.file_name().expect("name").to_string_lossy().to_string();
                name == "db" || name == "conf" || name.starts_with("snap.") || name == "blobs"
            })
            .collect()
    };
    // Wait for the closed log's threads to let go before copying.
    drop(open_db(&dir).expect("released"));
    std::fs::create_dir_all(&old).expect("mkdir");
    for p in sled_files(&dir) {
        if p.is_file() {
            std::fs::copy(&p, old.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    {
        let log = EventLog::open(&dir, LogOptions::default(), None).expect("reopen");
        append(&log, SHORT, LONG).await;
    }
    drop(open_db(&dir).expect("released"));
    for p in sled_files(&dir) {
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("rm");
        } else {
            std::fs::remove_file(&p).expect("rm");
        }
    }
    for p in sled_files(&old) {
        std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy back");
    }
    assert_refused(&dir, DURABLE_MARK, LONG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_caller_keeps_refuses_the_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let (long, copy) = (root.path().join("long"), root.path().join("copy"));
    let events = long_log(&long).await;
    restore_prefix(&events, &copy);
    let options = LogOptions {
        evidence: vec![Evidence {
            source: "the projection checkpoint".into(),
            count: 33,
        }],
        ..LogOptions::default()
    };
    let s = shorter(EventLog::open(&copy, options, None));
    assert_eq!((s.recovered, s.expected()), (SHORT, 33));
    // The same record at or below the log's length shows nothing.
    let options = LogOptions {
        evidence: vec![Evidence {
            source: "the projection checkpoint".into(),
            count: SHORT,
        }],
        ..LogOptions::default()
    };
    let log = EventLog::open(&copy, options, None).expect("not shorter");
    assert_eq!(log.durable_count(), SHORT);
}

/// Every record at once, accepted by the operator: the open records the acceptance as an event of
/// the log's own stream, with the evidence and counts, moves the cursor back, removes the stale
/// snapshot and rewrites the marks; the next open without the override is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_shorter_log_is_recorded_and_the_next_open_is_clean() {
    let root = tempfile::tempdir().expect("tempdir");
    let (long, copy) = (root.path().join("long"), root.path().join("copy"));
    let events = long_log(&long).await;
    restore_prefix(&events, &copy);
    for f in [INDEX_SNAPSHOT, SIGNED_MARK, DURABLE_MARK] {
        std::fs::copy(long.join(f), copy.join(f)).expect("copy");
    }
    let value = open_db(&long)
        .expect("open")
        .get(b"cindexer")
        .expect("get")
        .expect("the cursor");
    {
        let db = open_db(&copy).expect("open");
        db.insert(b"cindexer", value).expect("insert");
        db.flush().expect("flush");
    }
    let refused = shorter(EventLog::open(&copy, LogOptions::default(), None));
    assert_eq!(refused.evidence.len(), 4, "{:?}", refused.evidence);
    let accept = LogOptions {
        accept_shorter_log: true,
        ..LogOptions::default()
    };
    let log = EventLog::open(&copy, accept, None).expect("accepted");
    let all = everything(&log);
    assert_eq!(all.len() as u64, SHORT + 1);
    for (a, b) in all.iter().zip(&events[..SHORT as usize]) {
        assert_eq!(a.hash, b.hash, "the prefix is unchanged");
    }
    let recorded = all.last().expect("the acceptance");
    assert!(recorded.is_system());
    assert_eq!(recorded.stream, SYSTEM_STREAM);
    assert_eq!(recorded.event_type, SHORTER_LOG_ACCEPTED);
    assert_eq!(recorded.prev_hash, events[SHORT as usize - 1].hash);
    let payload: ShorterLog = serde_json::from_str(recorded.payload.get()).expect("payload");
    assert_eq!(payload, refused);
    // The subscriber resumes at the acceptance; nothing else covers more than the log.
    assert_eq!(log.cursor("indexer").expect("cursor"), Some(SHORT));
    assert!(!copy.join(INDEX_SNAPSHOT).exists());
    // Callers cannot write to the log's own stream.
    let mut forged = event(0);
    forged.events[0].stream = SYSTEM_STREAM.into();
    assert!(matches!(
        log.append(forged).await,
        Err(LogError::InvalidStream(_))
    ));
    append(&log, 100, 103).await;
    drop(log);
    let log = EventLog::open(&copy, LogOptions::default(), None).expect("a clean open");
    assert_eq!(log.durable_count(), SHORT + 4);
    drop(log);
    match verify_dir(&copy).expect("verify") {
        Ok(r) => assert_eq!(r.events, SHORT + 4),
        Err(m) => panic!("{m}"),
    }
}

/// The override on a log that is whole changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_override_on_a_whole_log_records_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = long_log(dir.path()).await;
    let accept = LogOptions {
        accept_shorter_log: true,
        ..LogOptions::default()
    };
    let log = EventLog::open(dir.path(), accept, None).expect("open");
    assert_eq!(everything(&log).len(), events.len());
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

/// Frames that continue the store's event count but not its hash chain (another log's) are
/// refused, where they would otherwise be replayed as a fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_do_not_link_to_the_head_refuse_the_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    {
        let log_a = EventLog::open(&a, LogOptions::default(), None).expect("open a");
        append(&log_a, 0, 20).await;
    }
    // Reopened after a clean close, a's write-ahead log holds the frames from position 20 only.
    let log_a = EventLog::open(&a, LogOptions::default(), None).expect("reopen a");
    append(&log_a, 20, 30).await;
    {
        let log_b = EventLog::open(&b, LogOptions::default(), None).expect("open b");
        append(&log_b, 1000, 1020).await;
    }
    drop(open_db(&b).expect("b released"));
    std::fs::remove_dir_all(b.join("wal")).expect("remove b's wal");
    copy_dir(&a.join("wal"), &b.join("wal"));
    drop(log_a);
    let before = std::fs::read(b.join("db")).expect("read");
    match EventLog::open(&b, LogOptions::default(), None) {
        Ok(log) => panic!("a fork opened with {} events", log.durable_count()),
        Err(LogError::Corrupt { reason, position }) => {
            assert_eq!(position, 20, "{reason}");
            assert!(reason.contains("does not link"), "{reason}");
            assert!(reason.contains(".wal"), "{reason}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
    }
    assert_eq!(std::fs::read(b.join("db")).expect("read"), before);
}

/// Another log of the same length, beside the mark of durable events of the first: the mark names
/// another last event, so the open refuses it too (the store was swapped, not shortened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mark_of_durable_events_refuses_another_log_of_the_same_length() {
    let root = tempfile::tempdir().expect("tempdir");
    let (long, other) = (root.path().join("long"), root.path().join("other"));
    long_log(&long).await;
    {
        let log = EventLog::open(&other, LogOptions::default(), None).expect("open");
        append(&log, 1000, 1000 + LONG).await;
    }
    drop(open_db(&other).expect("released"));
    std::fs::copy(long.join(DURABLE_MARK), other.join(DURABLE_MARK)).expect("copy");
    let s = shorter(EventLog::open(&other, LogOptions::default(), None));
    assert_eq!((s.recovered, s.expected()), (LONG, LONG));
    let text = s.to_string();
    assert!(text.contains("show other events"), "{text}");
    assert!(
        text.contains(&format!("another event at position {}", LONG - 1)),
        "{text}"
    );
}
