//! Offline verification against an attacker with disk access: a log of 20 events is written through
//! `EventLog`, dropped, then changed directly on disk through `claims_ledger_log::disk` (raw pages
//! and Merkle tiles, on the db `open_db` opens). `verify_dir` must name the first position that no
//! longer holds, and pass an untouched log.
use std::path::Path;

use serde_json::value::RawValue;
use tempfile::TempDir;
use uuid::Uuid;

use claims_ledger_log::disk;
use claims_ledger_log::verify::{verify_dir, Mismatch, VerifyReport};
use claims_ledger_log::{
    decode, open_db, sha256, AppendRequest, EventLog, ExpectedRevision, Hash, Head, Idempotency,
    LogOptions, NewEvent,
};

const EVENTS: u64 = 20;
/// Events of the log built for higher tile levels: two full level-0 tiles and a partial third,
/// so tile (1, 0) holds two hashes.
const LONG_EVENTS: u64 = 600;

fn new_event(stream: &str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        stream: stream.to_string(),
        event_type: "Noted".to_string(),
        schema_version: 1,
        payload: RawValue::from_string(payload.to_string()).expect("valid JSON payload"),
    }
}

fn verify(dir: &Path) -> Result<VerifyReport, Mismatch> {
    verify_dir(dir).expect("verify")
}

/// Writes `total` events through the log in appends of `count(n)` events (`n` = events so far), each
/// made by `event(i)` and expecting `expect`; drops the log and returns the live head.
async fn write_log(
    dir: &Path,
    total: u64,
    count: impl Fn(u64) -> u64,
    event: impl Fn(u64) -> NewEvent,
    expect: Vec<(String, ExpectedRevision)>,
) -> Head {
    let log = EventLog::open(dir, LogOptions::default(), None).unwrap();
    let mut n = 0u64;
    while n < total {
        let count = count(n).min(total - n);
        log.append(AppendRequest {
            events: (n..n + count).map(&event).collect(),
            expectations: expect.clone(),
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
    assert_eq!(head.count, total);
    drop(log);
    head
}

/// Writes 20 events over three streams through the log, drops it, and returns the live head.
async fn build_log(dir: &Path) -> Head {
    let streams = ["claim-1", "claim-2", "source-1"];
    write_log(
        dir,
        EVENTS,
        // Appends of 1 or 2 events, so that some groups hold several.
        |n| if n % 3 == 0 && n + 2 <= EVENTS { 2 } else { 1 },
        |i| {
            new_event(
                streams[(i % 3) as usize],
                &format!(r#"{{"n":{i},"note":"event number {i}"}}"#),
            )
        },
        vec![(streams[0].to_string(), ExpectedRevision::Any)],
    )
    .await
}

/// Writes `LONG_EVENTS` events on one stream in appends of 100, drops the log, and returns its head.
async fn build_long_log(dir: &Path) -> Head {
    write_log(
        dir,
        LONG_EVENTS,
        |_| 100,
        |i| new_event("claim-1", &format!(r#"{{"n":{i}}}"#)),
        vec![],
    )
    .await
}

/// Opens the stopped log in `dir`, lets `tamper` change it on disk, and flushes.
fn tamper_dir(dir: &Path, tamper: impl FnOnce(&sled::Db)) {
    let db = open_db(dir).expect("open the db");
    tamper(&db);
    db.flush().unwrap();
    drop(db);
}

/// A fresh log in a new directory; `tamper` then changes it on disk.
async fn tampered(tamper: impl FnOnce(&sled::Db)) -> (TempDir, Head) {
    let dir = TempDir::new().unwrap();
    let head = build_log(dir.path()).await;
    tamper_dir(dir.path(), tamper);
    (dir, head)
}

/// The hash stored with the event at `position`, and its record bytes.
fn stored(db: &sled::Db, position: u64) -> (Hash, Vec<u8>) {
    disk::stored_event(db, position)
        .unwrap()
        .expect("event present")
}

/// Overwrites the event at `position` with `hash` and `record`.
fn replace(db: &sled::Db, position: u64, hash: &Hash, record: &[u8]) {
    assert!(
        disk::replace_event(db, position, hash, record).unwrap(),
        "event {position} present"
    );
}

/// Flips one bit of hash `slot` of the stored tile `(level, index)`.
fn flip_tile_hash(db: &sled::Db, level: u8, index: u64, slot: usize) {
    let mut hashes = disk::tile(db, level, index)
        .unwrap()
        .unwrap_or_else(|| panic!("tile ({level}, {index}) stored"));
    assert!(
        hashes.len() >= (slot + 1) * 32,
        "tile ({level}, {index}) holds {} bytes",
        hashes.len()
    );
    hashes[slot * 32] ^= 1;
    disk::put_tile(db, level, index, &hashes).unwrap();
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
        // Change the record only, keeping the hash written with it.
        let (hash, record) = stored(db, 7);
        replace(db, 7, &hash, &edited(&record));
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 7, "{m}");
    assert!(
        m.reason
            .contains("stored bytes do not match the hash written with them"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_payload_with_rewritten_hash_is_caught_by_its_merkle_leaf() {
    let (dir, _) = tampered(|db| {
        let bytes = edited(&stored(db, 7).1);
        replace(db, 7, &sha256(&bytes), &bytes);
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 7, "{m}");
    assert!(
        m.reason
            .contains("Merkle leaf hash in tile (0, 0) does not match the event"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_payload_with_rewritten_hash_and_no_tree_breaks_the_next_link() {
    let (dir, _) = tampered(|db| {
        let bytes = edited(&stored(db, 7).1);
        replace(db, 7, &sha256(&bytes), &bytes);
        // An attacker who also removes the tree still meets the hash chain. Without a frontier,
        // verify skips the tree (the tiles left behind are not read).
        db.remove(b"mtree").unwrap().expect("the log keeps a tree");
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 8, "{m}");
    assert!(m.reason.contains("prev_hash"), "{m}");
}

/// Interior Merkle nodes are no longer stored one by one: the closest attack is on a tile above
/// the leaves. In a log of 600 events, tile (1, 0) holds the roots of leaves 0..256 and 256..512;
/// its hash 1 is named by the first leaf under it, 256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_tile_hash_is_named_by_its_first_leaf() {
    let dir = TempDir::new().unwrap();
    build_long_log(dir.path()).await;
    let report = verify(dir.path()).expect("untouched long log verifies");
    assert_eq!(report.events, LONG_EVENTS);
    tamper_dir(dir.path(), |db| {
        let hashes = disk::tile(db, 1, 0).unwrap().expect("tile (1, 0) stored");
        assert_eq!(hashes.len(), 2 * 32, "tile (1, 0) is partial");
        flip_tile_hash(db, 1, 0, 1);
    });
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 256, "{m}");
    assert!(
        m.reason
            .contains("Merkle tile (1, 0) does not match the recomputed tree at hash 1"),
        "{m}"
    );
}

/// A leaf hash changed in its level-0 tile is met when verify reaches that leaf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_leaf_tile_hash_is_named_by_its_leaf() {
    let (dir, _) = tampered(|db| flip_tile_hash(db, 0, 0, 4)).await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 4, "{m}");
    assert!(
        m.reason
            .contains("Merkle leaf hash in tile (0, 0) does not match the event"),
        "{m}"
    );
}

/// Events can no longer be removed one key at a time: a page holds a commit group. Truncating the
/// page at 12 removes 12 and any later events of its page, so the log jumps from 12 to the next
/// page, which starts right after the removed events whether 12 began its page or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_event_is_a_gap() {
    let mut removed = 0;
    let (dir, _) = tampered(|db| {
        removed = disk::truncate_page_at(db, 12).unwrap();
        assert!(removed >= 1, "event 12 was there");
    })
    .await;
    assert!(12 + (removed as u64) < EVENTS, "{removed} removed");
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 12, "{m}");
    assert!(
        m.reason.contains(&format!(
            "missing; the next page starts at {}",
            12 + removed
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_log_disagrees_with_the_head() {
    let (dir, _) = tampered(|db| {
        // The last event always ends its page.
        assert_eq!(disk::truncate_page_at(db, EVENTS - 1).unwrap(), 1);
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, EVENTS - 1, "{m}");
    assert!(
        m.reason
            .contains(&format!("head record says {EVENTS} events")),
        "{m}"
    );
    assert!(
        m.reason.contains(&format!("the log has {}", EVENTS - 1)),
        "{m}"
    );
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
    assert!(
        m.reason
            .contains(&format!("head record says {EVENTS} events")),
        "{m}"
    );
}

/// There is no stream index on disk any more (the writer rebuilds it from the records), so the
/// closest attack is on a record's own stream revision: event 9 is claim-1's fourth event
/// (revision 3); it is made to claim revision 4 and its hash is recomputed. The stream check
/// names it before its Merkle leaf does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_stream_revision_is_named() {
    let (dir, _) = tampered(|db| {
        let record = stored(db, 9).1;
        let rec: serde_json::Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(
            (rec["stream"].as_str(), rec["stream_revision"].as_u64()),
            (Some("claim-1"), Some(3)),
            "{rec}"
        );
        let text = String::from_utf8(record).unwrap();
        assert_eq!(text.matches("\"stream_revision\":3,").count(), 1, "{text}");
        let forged = text.replacen("\"stream_revision\":3,", "\"stream_revision\":4,", 1);
        replace(db, 9, &sha256(forged.as_bytes()), forged.as_bytes());
    })
    .await;
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 9, "{m}");
    assert!(
        m.reason
            .contains("stream claim-1 revision 4 where 3 was expected"),
        "{m}"
    );
}

/// A log of 4 events: an append of 2 under key "k-0" (positions 0, 1), one without a key (2), one
/// of 1 under "k-1" (3). Dropped, and its directory returned.
async fn keyed_log() -> TempDir {
    let dir = TempDir::new().unwrap();
    let log = EventLog::open(dir.path(), LogOptions::default(), None).unwrap();
    for (key, n) in [(Some("k-0"), 2), (None, 1), (Some("k-1"), 1)] {
        log.append(AppendRequest {
            events: (0..n)
                .map(|i| new_event("claim-1", &format!(r#"{{"i":{i}}}"#)))
                .collect(),
            expectations: vec![],
            idempotency: key.map(|k| Idempotency {
                key: k.to_string(),
                content_hash: sha256(k.as_bytes()),
            }),
            recorded_by: "builder".to_string(),
            correlation_id: None,
            causation_id: None,
        })
        .await
        .unwrap();
    }
    drop(log);
    dir
}

/// The stored idempotency record of `key`, as JSON.
fn idempotency_json(db: &sled::Db, key: &str) -> serde_json::Value {
    let v = disk::idempotency_record(db, key)
        .unwrap()
        .unwrap_or_else(|| panic!("an idempotency record for {key}"));
    serde_json::from_slice(&v).unwrap()
}

fn put_idempotency_json(db: &sled::Db, key: &str, v: &serde_json::Value) {
    disk::put_idempotency_record(db, key, Some(&serde_json::to_vec(v).unwrap())).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_are_checked_against_the_appends_that_made_them() {
    let dir = keyed_log().await;
    let report = verify(dir.path()).expect("untouched log verifies");
    assert_eq!(
        (report.idempotency_marked, report.idempotency_unmarked),
        (2, 0)
    );

    // Removed: the append at 3 has a mark and no record.
    let copy = |dir: &Path| {
        let db = open_db(dir).unwrap();
        let v = idempotency_json(&db, "k-1");
        drop(db);
        v
    };
    let k1 = copy(dir.path());
    tamper_dir(dir.path(), |db| {
        disk::put_idempotency_record(db, "k-1", None).unwrap()
    });
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 3);
    assert!(m.reason.contains("\"k-1\" is missing"), "{}", m.reason);

    // Rewritten so that a retry of "k-0" would be answered with another event's hash.
    tamper_dir(dir.path(), |db| {
        put_idempotency_json(db, "k-1", &k1);
        let mut k0 = idempotency_json(db, "k-0");
        k0["events"][1]["hash"] = k1["events"][0]["hash"].clone();
        put_idempotency_json(db, "k-0", &k0);
    });
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 0);
    assert!(
        m.reason.contains("does not match its append"),
        "{}",
        m.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_a_mark_must_name_events_of_the_log() {
    let dir = keyed_log().await;
    // A record as a writer before marks would have left it for the unkeyed append at 2.
    let legacy = |db: &sled::Db| {
        let (_, bytes) = stored(db, 2);
        let rec = decode(2, bytes).unwrap();
        serde_json::json!({
            "content_hash": hex::encode([9u8; 32]),
            "recorded_at": rec.recorded_at,
            "events": [{
                "event_id": rec.event_id,
                "stream": rec.stream,
                "stream_revision": rec.stream_revision,
                "position": 2,
                "hash": hex::encode(rec.hash),
            }],
        })
    };
    tamper_dir(dir.path(), |db| {
        put_idempotency_json(db, "old", &legacy(db))
    });
    let report = verify(dir.path()).expect("a faithful older record verifies");
    assert_eq!(
        (report.idempotency_marked, report.idempotency_unmarked),
        (2, 1)
    );

    // The same record, naming a position past the head.
    tamper_dir(dir.path(), |db| {
        let mut v = legacy(db);
        v["events"][0]["position"] = serde_json::json!(4);
        put_idempotency_json(db, "old", &v);
    });
    let m = expect_mismatch(dir.path());
    assert!(
        m.reason.contains("\"old\" names position 4"),
        "{}",
        m.reason
    );

    // Naming the event at 2 with another stream revision.
    tamper_dir(dir.path(), |db| {
        let mut v = legacy(db);
        v["events"][0]["stream_revision"] = serde_json::json!(7);
        put_idempotency_json(db, "old", &v);
    });
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 2);
    assert!(
        m.reason.contains("does not match the event at position 2"),
        "{}",
        m.reason
    );

    // Naming the first event of a keyed append: that append's own record is the only answer.
    tamper_dir(dir.path(), |db| {
        let v = idempotency_json(db, "k-1");
        put_idempotency_json(db, "old", &v);
    });
    let m = expect_mismatch(dir.path());
    assert_eq!(m.position, 3);
    assert!(
        m.reason.contains("starts another keyed append"),
        "{}",
        m.reason
    );
}
