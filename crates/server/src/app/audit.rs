//! The audit use cases: signed checkpoints of the log's Merkle tree at any durable size, inclusion
//! and consistency proofs, and an event with its proof and the checkpoint it is proven against. The
//! tree itself is the log's (kept in the same batches as the events); this module only signs.
use chrono::Utc;

use super::{App, AppError};
use claims_ledger_core::checkpoint::{Checkpoint, Verifier};
use claims_ledger_log::{Hash, RecordedEvent};

/// A checkpoint and its signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub checkpoint: Checkpoint,
    /// The signed note, exactly as signed.
    pub note: String,
}

/// An inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inclusion {
    pub position: u64,
    pub tree_size: u64,
    pub hashes: Vec<Hash>,
    pub leaf_hash: Hash,
}

impl App {
    /// The key checkpoints are signed with.
    pub fn verifier(&self) -> Verifier {
        self.signer.verifier()
    }

    /// The log's origin (the signing key's name).
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    fn tree_size(&self, size: Option<u64>) -> u64 {
        size.unwrap_or_else(|| self.log.durable_count())
    }

    /// A checkpoint of the tree at `size` (the durable log when `None`), signed now.
    pub fn signed_checkpoint(&self, size: Option<u64>) -> Result<Signed, AppError> {
        let size = self.tree_size(size);
        let root = self.log.tree_root(size)?;
        let checkpoint = Checkpoint::new(self.origin(), size, root, Utc::now())
            .map_err(|e| AppError::Internal(format!("checkpoint: {e}")))?;
        let note = checkpoint
            .sign(&self.signer)
            .map_err(|e| AppError::Internal(format!("signing a checkpoint: {e}")))?;
        // Durably, before anyone holds it: no later open may serve a log shorter than it.
        self.log.record_signed_checkpoint(size, root)?;
        Ok(Signed { checkpoint, note })
    }

    /// The inclusion proof of the event at `position` in the tree of `size` events.
    pub fn inclusion(&self, position: u64, size: Option<u64>) -> Result<Inclusion, AppError> {
        let tree_size = self.tree_size(size);
        let hashes = self.log.inclusion_proof(position, tree_size)?;
        let leaf_hash = self.log.tree_leaf(position)?;
        Ok(Inclusion {
            position,
            tree_size,
            hashes,
            leaf_hash,
        })
    }

    /// The consistency proof from `old_size` to `new_size` (the durable log when `None`).
    pub fn consistency(
        &self,
        old_size: u64,
        new_size: Option<u64>,
    ) -> Result<(u64, Vec<Hash>), AppError> {
        let new_size = self.tree_size(new_size);
        Ok((new_size, self.log.consistency_proof(old_size, new_size)?))
    }

    /// The event at `position`, its inclusion proof, and a checkpoint of the same tree size.
    pub fn event_with_proof(
        &self,
        position: u64,
        size: Option<u64>,
    ) -> Result<(RecordedEvent, Inclusion, Signed), AppError> {
        // One size for all three parts, even while writers append.
        let size = Some(self.tree_size(size));
        let inclusion = self.inclusion(position, size)?;
        let event = self
            .log
            .get(position)?
            .ok_or_else(|| AppError::OutOfRange(format!("no event at position {position}")))?;
        Ok((event, inclusion, self.signed_checkpoint(size)?))
    }
}
