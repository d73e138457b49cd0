//! Recovery from the write-ahead log, seen through the public API and the files. A power loss is
//! simulated by copying only what was made durable: sled's files as of its last sync, and the
//! segments as they stand once every acknowledged append was synced. The copy must open with every
//! acknowledged append, deduplicate retries as the original would, and verify; damage to the copy's
//! segments, frames that start past sled's head, and frames that disagree with sled must refuse the
//! open, never shorten the log. A layout-2 directory (no write-ahead log) is migrated in place.
use std::path::Path;

use serde_json::value::RawValue;
use uuid::Uuid;

use claims_ledger_log::verify::verify_dir;
use claims_ledger_log::{
    open_db, sha256, AppendRequest, Durability, EventLog, Idempotency, LogError, LogOptions,
    NewEvent, RecordedEvent,
};

fn request(n: u64, key: Option<&str>) -> AppendRequest {
    AppendRequest {
        events: (0..1 + n % 3)
            .map(|i| NewEvent {
                event_id: Uuid::new_v4(),
                stream: format!("s-{}", (n + i) % 5),
                event_type: "Noted".into(),
                schema_version: 1,
                payload: RawValue::from_string(format!(
                    r#"{{"n":{n},"i":{i},"pad":"{}"}}"#,
                    "x".repeat(300)
                ))
                .expect("json"),
            })
            .collect(),
        expectations: Vec::new(),
        idempotency: key.map(|k| Idempotency {
            key: k.to_string(),
            content_hash: sha256(k.as_bytes()),
        }),
        recorded_by: "tester".into(),
        correlation_id: None,
        causation_id: None,
    }
}

/// Small segments fill, retire and get recycled within a test. A power-loss copy needs segments
/// large enough that none is recycled between the copy of sled and that of the segments: a
/// recycle flushes sled, and the copy must hold sled as of its last sync.
fn options(segment_bytes: u64) -> LogOptions {
    LogOptions {
        durability: Durability::Fsync,
        wal_segment_bytes: segment_bytes,
        ..LogOptions::default()
    }
}

const SMALL: u64 = 16 << 10;
const LARGE: u64 = 4 << 20;

/// Appends `from..to`, eight at a time concurrently so groups form; every third with a key.
async fn append_range(log: &EventLog, from: u64, to: u64) {
    let mut n = from;
    while n < to {
        let batch: Vec<_> = (n..to.min(n + 8))
            .map(|i| {
                let key = (i % 3 == 0).then(|| format!("key-{i}"));
                log.append(request(i, key.as_deref()))
            })
            .collect();
        for r in futures_join(batch).await {
            r.expect("append");
        }
        n += 8;
    }
}

async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await);
    }
    out
}

fn copy_dir(from: &Path, to: &Path, skip_wal: bool) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == "wal" && skip_wal {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(&name), false);
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

fn everything(log: &EventLog) -> Vec<RecordedEvent> {
    log.read_all(0, false, usize::MAX).expect("read all")
}

/// Builds a power-loss copy of a log in `crashed`: sled as of a sync after `durable_events`
/// events, then `more` events acknowledged only through the write-ahead log. Returns what the
/// original acknowledged.
async fn power_loss_copy(
    original: &Path,
    crashed: &Path,
    durable_events: u64,
    more: u64,
) -> Vec<RecordedEvent> {
    let log = EventLog::open(original, options(LARGE), None).expect("open");
    append_range(&log, 0, durable_events).await;
    log.checkpoint().await.expect("checkpoint");
    // sled's files as of that sync: no append runs until the copy is made.
    copy_dir(original, crashed, true);
    append_range(&log, durable_events, durable_events + more).await;
    // Every acknowledged frame is synced, and nothing else is being written.
    copy_dir(&original.join("wal"), &crashed.join("wal"), false);
    let acked = everything(&log);
    drop(log);
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_loss_keeps_every_acknowledged_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (original, crashed) = (dir.path().join("a"), dir.path().join("b"));
    let acked = power_loss_copy(&original, &crashed, 40, 120).await;
    assert!(acked.len() > 200, "{} events", acked.len());
    // The copy's sled holds fewer events than were acknowledged: recovery has work to do.
    {
        let db = open_db(&crashed).expect("open the copy's sled");
        let head = db.get(b"mhead").expect("get").expect("a head");
        let count = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        assert!(
            count < acked.len() as u64,
            "sled already held {count} events"
        );
    }
    // Before replay, readers that cannot replay refuse rather than see a shorter log.
    match EventLog::open_read_only(&crashed) {
        Ok(_) => panic!("a read-only open served a log shorter than the write-ahead log"),
        Err(e) => assert!(e.to_string().contains("write-ahead log"), "{e}"),
    }
    let log = EventLog::open(&crashed, options(SMALL), None).expect("recover");
    let recovered = everything(&log);
    assert_eq!(recovered.len(), acked.len());
    for (a, b) in acked.iter().zip(&recovered) {
        assert_eq!((a.position, a.hash), (b.position, b.hash));
    }
    // Idempotency records came back with the events: a retry is answered as the original was.
    let retry = log
        .append(request(99, Some("key-99")))
        .await
        .expect("retry");
    assert!(retry.deduplicated);
    assert_eq!(
        retry.events[0].position,
        acked
            .iter()
            .find(|e| e.idempotency.as_ref().is_some_and(|m| m.key == "key-99"))
            .expect("original")
            .position
    );
    // The tree and head came back too: appends continue the chain, and the log verifies.
    let next = log.append(request(1000, None)).await.expect("append");
    assert_eq!(next.events[0].position, acked.len() as u64);
    drop(log);
    match verify_dir(&crashed).expect("verify") {
        Ok(report) => assert_eq!(report.events, acked.len() as u64 + next.events.len() as u64),
        Err(m) => panic!("the recovered log does not verify: {m}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_write_ahead_log_refuses_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (original, crashed) = (dir.path().join("a"), dir.path().join("b"));
    power_loss_copy(&original, &crashed, 8, 60).await;
    // The in-use segment with the most frames; damage its first frame, with frames after it.
    let mut segments: Vec<(std::path::PathBuf, usize)> = std::fs::read_dir(crashed.join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            let used = bytes.iter().rposition(|b| *b != 0).unwrap_or(0);
            (p, used)
        })
        .collect();
    segments.sort_by_key(|(_, used)| *used);
    let (path, used) = segments.pop().expect("a segment");
    assert!(used > 2000, "the segment holds several frames");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[64 + 40] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    match EventLog::open(&crashed, options(SMALL), None) {
        Ok(log) => panic!(
            "a damaged write-ahead log opened with {} events",
            log.durable_count()
        ),
        Err(LogError::Corrupt { reason, .. }) => {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            assert!(reason.contains(&name), "{reason}");
            assert!(reason.contains("offset 64"), "{reason}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
    }
    // Nothing was cut: the damaged bytes are still there for an operator to look at.
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_2_directory_is_migrated_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let log = EventLog::open(dir.path(), options(SMALL), None).expect("open");
        append_range(&log, 0, 30).await;
        everything(&log)
    };
    // What a layout-2 binary leaves: the same keys, its mark, and no write-ahead log.
    {
        let db = open_db(dir.path()).expect("open sled");
        db.insert(b"mlayout", &2u32.to_be_bytes()).expect("mark");
        db.flush().expect("flush");
    }
    std::fs::remove_dir_all(dir.path().join("wal")).expect("remove the wal");
    let log = EventLog::open(dir.path(), options(SMALL), None).expect("a layout-2 directory opens");
    let after = everything(&log);
    assert_eq!(
        after.iter().map(|e| e.hash).collect::<Vec<_>>(),
        before.iter().map(|e| e.hash).collect::<Vec<_>>()
    );
    let next = log.append(request(500, Some("new"))).await.expect("append");
    assert_eq!(next.events[0].position, before.len() as u64);
    drop(log);
    let db = open_db(dir.path()).expect("open sled");
    assert_eq!(
        db.get(b"mlayout").expect("get").as_deref(),
        Some(&3u32.to_be_bytes()[..])
    );
    assert!(dir.path().join("wal").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_leaves_an_empty_write_ahead_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = EventLog::open(dir.path(), options(SMALL), None).expect("open");
        append_range(&log, 0, 50).await;
    }
    // The writer thread closes the log once the last handle is gone; wait for the lock.
    let _db = open_db(dir.path()).expect("reopen");
    for entry in std::fs::read_dir(dir.path().join("wal")).expect("wal dir") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        assert!(
            bytes.iter().all(|b| *b == 0),
            "a segment still holds frames"
        );
    }
}

fn refused(dir: &Path) -> String {
    match EventLog::open(dir, options(SMALL), None) {
        Ok(log) => panic!("opened with {} events", log.durable_count()),
        Err(LogError::Corrupt { reason, .. }) => reason,
        Err(e) => panic!("refused for another reason: {e}"),
    }
}

/// sled lost events that the write-ahead log no longer holds (as when sled's own recovery cuts a
/// damaged segment short): the frames start past sled's head, and the open refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_start_past_the_store_refuse_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (original, crashed) = (dir.path().join("a"), dir.path().join("b"));
    let log = EventLog::open(&original, options(SMALL), None).expect("open");
    // sled as it was before any append.
    copy_dir(&original, &crashed, true);
    append_range(&log, 0, 80).await;
    // Segments fill and are recycled once sled holds them: the first frames are gone.
    log.checkpoint().await.expect("checkpoint");
    copy_dir(&original.join("wal"), &crashed.join("wal"), false);
    drop(log);
    let reason = refused(&crashed);
    assert!(reason.contains("events are missing"), "{reason}");
    assert!(reason.contains(".wal"), "{reason}");
}

/// The write-ahead log of one log beside the sled of another: the frames sled already holds
/// disagree with it, and the open refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_disagree_with_the_store_refuse_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let log_a = EventLog::open(&a, options(LARGE), None).expect("open a");
    append_range(&log_a, 0, 20).await;
    let log_b = EventLog::open(&b, options(LARGE), None).expect("open b");
    append_range(&log_b, 0, 40).await;
    log_b.checkpoint().await.expect("checkpoint");
    drop(log_b);
    // b's sled is closed and complete; a's frames go beside it.
    let _ = open_db(&b).expect("b released");
    std::fs::remove_dir_all(b.join("wal")).expect("remove b's wal");
    copy_dir(&a.join("wal"), &b.join("wal"), false);
    drop(log_a);
    let reason = refused(&b);
    assert!(reason.contains("differs"), "{reason}");
}
