//! The RFC 6962 Merkle tree over the log: catching a lagging tree up at open, and the roots and
//! proofs readers ask for. The writer extends the tree in the same batches as the events (see
//! `writer`), so every durable event is a leaf. A tree can lag only in a data directory written by
//! an older binary that could append without it; a writable open catches it up, a read-only open
//! proves only what it covers.
use super::read::scan_events;
use super::*;
use crate::layout::FRONTIER_KEY;
use crate::tiles::{stage_tree, TileNodes};
use claims_ledger_core::merkle;

/// The stored right edge of the tree (empty when none is stored).
pub(super) fn stored_frontier(db: &sled::Db) -> Result<Frontier, LogError> {
    match db.get(FRONTIER_KEY)? {
        Some(v) => Frontier::from_bytes(&v).map_err(|e| LogError::Corrupt {
            position: 0,
            reason: format!("unreadable Merkle frontier: {e}"),
        }),
        None => Ok(Frontier::new()),
    }
}

/// The stored frontier, extended over any events written without the tree and synced, so every
/// durable event is in the tree. Returns it with the partial tiles of that size.
pub(super) fn catch_up_tree(
    db: &sled::Db,
    data_file: &File,
    count: u64,
) -> Result<(Frontier, Tiles), LogError> {
    let mut frontier = stored_frontier(db)?;
    if frontier.size() > count {
        return Err(LogError::Corrupt {
            position: count,
            reason: format!(
                "the Merkle tree has {} leaves but the log {count} events",
                frontier.size()
            ),
        });
    }
    let mut tiles = Tiles::load(db, frontier.size())?;
    if frontier.size() == count {
        return Ok((frontier, tiles));
    }
    tracing::info!(
        from = frontier.size(),
        to = count,
        "extending the Merkle tree over the log"
    );
    while frontier.size() < count {
        let end = count.min(frontier.size() + 4096);
        let mut leaves = Vec::new();
        scan_events(db, frontier.size(), end, false, |e| {
            leaves.push(merkle::leaf_hash(&e.stored));
            true
        })?;
        let mut batch = sled::Batch::default();
        (frontier, tiles) = stage_tree(&frontier, &tiles, leaves, &mut batch);
        db.apply_batch(batch)?;
    }
    db.flush()?;
    data_file.sync_data()?;
    Ok((frontier, tiles))
}

fn proof_error(e: merkle::ProofRequestError<LogError>) -> LogError {
    match e {
        merkle::ProofRequestError::Store(e) => e,
        other => LogError::ProofRequest(other.to_string()),
    }
}

impl EventLog {
    /// Checks that a tree of `size` leaves can be proven: within the durable log, and within the
    /// stored tree of a log opened read-only.
    fn provable(&self, size: u64) -> Result<(), LogError> {
        let durable = self.durable_count();
        if size > durable {
            return Err(LogError::ProofRequest(format!(
                "tree size {size} is beyond the end of the log ({durable} events)"
            )));
        }
        match self.shared.frozen_tree {
            Some(leaves) if size > leaves => Err(LogError::ProofRequest(format!(
                "this log was opened read-only and its Merkle tree covers only {leaves} events"
            ))),
            _ => Ok(()),
        }
    }

    /// The RFC 6962 root of the first `size` events.
    pub fn tree_root(&self, size: u64) -> Result<Hash, LogError> {
        self.provable(size)?;
        merkle::root_at(&TileNodes(&self.shared.db), size).map_err(proof_error)
    }

    /// The stored leaf hash of the event at `position`.
    pub fn tree_leaf(&self, position: u64) -> Result<Hash, LogError> {
        self.provable(position.saturating_add(1))?;
        merkle::NodeStore::node(&TileNodes(&self.shared.db), 0, position)
    }

    /// The inclusion proof of the event at `position` in the tree of `size` events.
    pub fn inclusion_proof(&self, position: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.provable(size)?;
        merkle::inclusion_proof(&TileNodes(&self.shared.db), position, size).map_err(proof_error)
    }

    /// The consistency proof from the tree of `old_size` events to the tree of `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, LogError> {
        self.provable(new_size)?;
        merkle::consistency_proof(&TileNodes(&self.shared.db), old_size, new_size)
            .map_err(proof_error)
    }
}
