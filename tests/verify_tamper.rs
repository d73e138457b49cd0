//! Offline verification against an attacker with disk access: a log of 20 events is written through
//! `EventLog`, dropped, then changed directly in sled (the same way `open_db` opens it). `verify_dir`
//! must name the first position that no longer holds, and pass an untouched log.
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tempfile::TempDir;
use uuid::Uuid;

use claims_ledger::log::verify::{verify_dir, Mismatch, VerifyReport};
use claims_ledger::log::{
    open_db, sha256, AppendRequest, EventLog, ExpectedRevision, Head, LogError, LogOptions,
    NewEvent,
};

const EVENTS: u64 = 20;

fn new_event(stream: &str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        stream: stream.to_string(),
        event_type: "Noted".to_string(),
        schema_version: 1,
        payload: RawValue::from_string(payload.to_string()).expect("valid JSON payload"),
    }
}

/// Runs `f` until it stops failing because sled's directory lock is still held by a log (or db)
/// that is shutting down (at most ~5 s).
fn retry_lock<T>(what: &str, mut f: impl FnMut() -> Result<T, LogError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn verify(dir: &Path) -> Result<VerifyReport, Mismatch> {
    retry_lock("verify", || verify_dir(dir))
}

fn pos_key(prefix: u8, position: u64) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// Writes 20 events over three streams through the log, drops it, and returns the live head.
async fn build_log(dir: &Path) -> Head {
    let log = EventLog::open(dir, LogOptions::default(), None).unwrap();
    let streams = ["claim-1", "claim-2", "source-1"];
    let mut n = 0u64;
    while n < EVENTS {
        // Appends of 1 or 2 events, so that some groups hold several.
        let count = if n % 3 == 0 && n + 2 <= EVENTS { 2 } else { 1 };
        let events = (n..n + count)
            .map(|i| {
                new_event(
                    streams[(i % 3) as usize],
                    &format!(r#"{{"n":{i},"note":"event number {i}"}}"#),
                )
            })
            .collect();
        log.append(AppendRequest {
            events,
            expectations: vec![(streams[0].to_string(), ExpectedRevision::Any)],
            idempotency: None,
            recorded_by: "builder".to_string(),
            correlation_id: None,
            causation_id: None,
        })
        .await
        .unwrap();
        n += count;
    }
    let head = log.head();
    assert_eq!(head.count, EVENTS);
    drop(log);
    head
}

/// A fresh log in a new directory; `tamper` then changes it through sled directly.
async fn tampered(tamper: impl FnOnce(&sled::Db)) -> (TempDir, Head) {
    let dir = TempDir::new().unwrap();
    let head = build_log(dir.path()).await;
    let db = retry_lock("open the db", || open_db(dir.path()));
    tamper(&db);
    db.flush().unwrap();
    drop(db);
    (dir, head)
}

fn stored(db: &sled::Db, position: u64) -> Vec<u8> {
    db.get(pos_key(b'e', position))
        .unwrap()
        .expect("event present")
        .to_vec()
}

/// Event bytes with one payload character changed ("number" becomes "Number"); still valid JSON.
fn edited(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains("\"note\":\"event number 7\""), "{text}");
    let out = text.replacen("event number", "event Number", 1);
    assert_eq!(out.len(), text.len());
    serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
    out.into_bytes()
}

fn expect_mismatch(dir: &Path) -> Mismatch {
    match verify(dir) {
        Ok(report) => panic!("tampered log verified: {report:?}"),
        Err(m) => m,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untouched_log_verifies() {
    let (dir, head) = tampered(|_| {}).await;
    let report = verify(dir.path()).expect("untouched log verifies");
    assert_eq!(report.events, EVENTS);
    assert_eq!(report.head_hash, head.hash);
    assert_eq!(report.streams, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_payload_is_named() {
    let (dir, _) = tampered(|db| {
        // The value is the hash written with the record, then the record bytes: change the record only.
        let value = stored(db, 7);
        let (hash, record) = value.split_at(32);
        let mut changed = hash.to_vec();
        changed.extend(edited(record));
        db.insert(pos_key(b'e', 7), changed).unwrap();
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 7, "{m}");
    assert!(m.reason.contains("hash"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_payload_with_rewritten_hash_is_caught_by_its_merkle_leaf() {
    let (dir, _) = tampered(|db| {
        let bytes = edited(&stored(db, 7)[32..]);
        let mut changed = sha256(&bytes).to_vec();
        changed.extend(bytes);
        db.insert(pos_key(b'e', 7), changed).unwrap();
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 7, "{m}");
    assert!(m.reason.contains("Merkle subtree hash (0, 7)"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_payload_with_rewritten_hash_and_no_tree_breaks_the_next_link() {
    let (dir, _) = tampered(|db| {
        let bytes = edited(&stored(db, 7)[32..]);
        let mut changed = sha256(&bytes).to_vec();
        changed.extend(bytes);
        db.insert(pos_key(b'e', 7), changed).unwrap();
        // An attacker who also removes the tree still meets the hash chain.
        db.remove(b"mtree").unwrap().expect("the log keeps a tree");
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 8, "{m}");
    assert!(m.reason.contains("prev_hash"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_merkle_node_is_named_by_its_first_leaf() {
    let (dir, _) = tampered(|db| {
        // Interior node (level 2, index 1): leaves 4..8.
        let key = [b'n', 2, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut v = db.get(key).unwrap().expect("node stored").to_vec();
        v[0] ^= 1;
        db.insert(key, v).unwrap();
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 4, "{m}");
    assert!(
        m.reason
            .contains("Merkle subtree hash (2, 1) does not match"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_event_is_a_gap() {
    let (dir, _) = tampered(|db| {
        db.remove(pos_key(b'e', 12)).unwrap().expect("was there");
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 12, "{m}");
    assert!(m.reason.contains("missing"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_log_disagrees_with_the_head() {
    let (dir, _) = tampered(|db| {
        db.remove(pos_key(b'e', EVENTS - 1))
            .unwrap()
            .expect("was there");
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, EVENTS - 1, "{m}");
    assert!(m.reason.contains("head"), "{m}");
}

/// Not in the original list: a rewritten head hash alone is caught too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_head_is_named() {
    let (dir, _) = tampered(|db| {
        let mut h = db.get(b"mhead").unwrap().expect("head").to_vec();
        h[39] ^= 1;
        db.insert(b"mhead", h).unwrap();
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, EVENTS, "{m}");
    assert!(m.reason.contains("head"), "{m}");
}

/// The stream index is checked against the log too: a dropped index chunk is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_stream_index_is_named() {
    let (dir, _) = tampered(|db| {
        let (k, mut v) = db
            .scan_prefix(b"sclaim-1\0")
            .next()
            .expect("index chunk")
            .unwrap();
        let mut changed = v.to_vec();
        changed.truncate(changed.len() - 8);
        v = changed.into();
        db.insert(k, v).unwrap();
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert!(m.reason.contains("stream claim-1"), "{m}");
}
