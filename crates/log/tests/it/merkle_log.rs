//! The Merkle tree the log keeps beside its events: its root is the RFC 6962 root of the stored
//! record bytes, proofs for every size verify with the trust-nothing verifiers, a log written
//! without the tree gets it back when reopened, and sizes beyond the durable log are refused.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_without_the_tree_gets_it_back_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let off = LogOptions {
        merkle: false,
        ..LogOptions::default()
    };
    {
        let log = EventLog::open(dir.path(), LogOptions::default(), None).expect("open");
        fill(&log, 5).await;
    }
    // Reopen without the tree, append more: proofs are refused meanwhile.
    let log = loop {
        match EventLog::open(dir.path(), off.clone(), None) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    fill(&log, 7).await;
    assert!(matches!(log.tree_root(1), Err(LogError::ProofRequest(_))));
    let n = log.durable_count();
    drop(log);
    let log = loop {
        match EventLog::open(dir.path(), LogOptions::default(), None) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert_eq!(log.tree_root(n).expect("root"), merkle::root(&leaves(&log)));
    fill(&log, 3).await;
    assert_eq!(
        log.tree_root(log.durable_count()).expect("root"),
        merkle::root(&leaves(&log))
    );
}
