//! The Merkle tree the log keeps beside its events: its root is the RFC 6962 root of the stored
//! record bytes, proofs for every size verify with the trust-nothing verifiers, a tree that lags
//! behind the events gets caught up when reopened (a read-only open proves only what it covers),
//! and sizes beyond the durable log are refused.
use serde_json::value::RawValue;
use uuid::Uuid;

use claims_ledger_core::merkle;
use claims_ledger_log::{AppendRequest, EventLog, LogError, LogOptions, NewEvent};

fn request(n: usize) -> AppendRequest {
    AppendRequest {
        events: (0..n)
            .map(|i| NewEvent {
                event_id: Uuid::new_v4(),
                stream: format!("claim-{}", i % 3),
                event_type: "ClaimAsserted".into(),
                schema_version: 1,
                payload: RawValue::from_string(format!("{{\"i\":{i}}}")).expect("json"),
            })
            .collect(),
        expectations: vec![],
        idempotency: None,
        recorded_by: "test".into(),
        correlation_id: None,
        causation_id: None,
    }
}

async fn fill(log: &EventLog, appends: usize) {
    for a in 0..appends {
        log.append(request(1 + a % 4)).await.expect("append");
    }
}

fn leaves(log: &EventLog) -> Vec<merkle::Hash> {
    log.read_all(0, false, 100_000)
        .expect("read")
        .iter()
        .map(|e| merkle::leaf_hash(&e.stored))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_covers_the_stored_bytes_and_proves_every_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), LogOptions::default(), None).expect("open");
    fill(&log, 20).await;
    let n = log.durable_count();
    let leaves = leaves(&log);
    assert_eq!(leaves.len() as u64, n);
    for size in 0..=n {
        let root = log.tree_root(size).expect("root");
        assert_eq!(root, merkle::root(&leaves[..size as usize]), "size {size}");
        for index in 0..size {
            let proof = log.inclusion_proof(index, size).expect("inclusion");
            merkle::verify_inclusion(&leaves[index as usize], index, size, &proof, &root)
                .expect("inclusion verifies");
        }
        for old in 0..=size {
            let proof = log.consistency_proof(old, size).expect("consistency");
            let old_root = log.tree_root(old).expect("old root");
            merkle::verify_consistency(old, size, &old_root, &root, &proof)
                .expect("consistency verifies");
        }
    }
    // Beyond the durable log, or backwards: refused, not made up.
    assert!(matches!(
        log.tree_root(n + 1),
        Err(LogError::ProofRequest(_))
    ));
    assert!(matches!(
        log.inclusion_proof(n, n),
        Err(LogError::ProofRequest(_))
    ));
    assert!(matches!(
        log.consistency_proof(n, n - 1),
        Err(LogError::ProofRequest(_))
    ));
}

/// Reopens `dir` once the previous handle has let go of it.
async fn reopen(dir: &std::path::Path) -> EventLog {
    loop {
        match EventLog::open(dir, LogOptions::default(), None) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// A tree that lags behind the events, as an older binary that could append without it left one:
/// a read-only open proves only what it covers, a writable open catches it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_tree_is_caught_up_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (covered, n) = {
        let log = EventLog::open(dir.path(), LogOptions::default(), None).expect("open");
        fill(&log, 5).await;
        let covered = log.durable_count();
        fill(&log, 7).await;
        (covered, log.durable_count())
    };
    {
        let db = loop {
            match claims_ledger_log::open_db(dir.path()) {
                Ok(db) => break db,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        claims_ledger_log::disk::cut_tree(&db, covered).expect("cut the tree");
        db.flush().expect("flush");
    }
    let log = loop {
        match EventLog::open_read_only(dir.path()) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert_eq!(log.durable_count(), n);
    let all = leaves(&log);
    assert_eq!(
        log.tree_root(covered).expect("root within the stored tree"),
        merkle::root(&all[..covered as usize])
    );
    assert!(matches!(
        log.tree_root(covered + 1),
        Err(LogError::ProofRequest(_))
    ));
    drop(log);
    let log = reopen(dir.path()).await;
    assert_eq!(log.tree_root(n).expect("root"), merkle::root(&leaves(&log)));
    fill(&log, 3).await;
    assert_eq!(
        log.tree_root(log.durable_count()).expect("root"),
        merkle::root(&leaves(&log))
    );
}

/// A read-only open reads everything and writes nothing: appends, cursors and snapshots are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_log_serves_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = EventLog::open(dir.path(), LogOptions::default(), None).expect("open");
        fill(&log, 4).await;
    }
    let log = loop {
        match EventLog::open_read_only(dir.path()) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let n = log.durable_count();
    assert_eq!(log.read_all(0, false, 100).expect("read").len() as u64, n);
    assert_eq!(log.tree_root(n).expect("root"), merkle::root(&leaves(&log)));
    assert!(log.stream_revision("claim-0").expect("revision").is_some());
    assert!(matches!(
        log.append(request(1)).await,
        Err(LogError::ReadOnly)
    ));
    assert!(matches!(
        log.store_cursor(
            "reader",
            1,
            claims_ledger_log::CursorActor {
                identity: None,
                privileged: true
            }
        )
        .await,
        Err(LogError::ReadOnly)
    ));
    assert!(matches!(log.save_index_snapshot(), Err(LogError::ReadOnly)));
    assert!(!dir.path().join(claims_ledger_log::INDEX_SNAPSHOT).exists());
    assert_eq!(log.durable_count(), n);
}
