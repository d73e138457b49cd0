//! Generations: a rebuild replays the log from position 0 into a fresh tree beside the serving one,
//! without blocking queries or the live projection, then catches up the rest under the lock and
//! switches over, so the applied count never goes backwards. The meta keys name the serving
//! generation durably; leftovers of an interrupted rebuild are dropped at open.
use super::apply::catch_up_tree;
use super::{
    read_checkpoint, tree_name, Active, ProjectionError, Projections, META_ACTIVE, META_VERSION,
    PROJECTION_VERSION,
};
use claims_ledger_log::EventLog;

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub generation: u64,
}

impl Projections {
    /// Whether a rebuild is running.
    pub fn rebuild_running(&self) -> bool {
        self.rebuild_running
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Rebuilds from position 0 into a fresh generation and switches to it. The serving generation
    /// keeps answering (and catching up) meanwhile. `progress` sees the new generation's applied count.
    pub fn rebuild(
        &self,
        log: &EventLog,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RebuildReport, ProjectionError> {
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        self.rebuild_running
            .store(true, std::sync::atomic::Ordering::Release);
        let result = self.rebuild_locked(log, progress);
        self.rebuild_running
            .store(false, std::sync::atomic::Ordering::Release);
        result
    }

    fn rebuild_locked(
        &self,
        log: &EventLog,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RebuildReport, ProjectionError> {
        let (generation, tree) = self.fresh_generation()?;
        let mut checkpoint = read_checkpoint(&tree)?;
        // Most of the work, without blocking queries or the live projection.
        catch_up_tree(log, &tree, &mut checkpoint, log.durable_count(), progress)?;
        // The rest under the lock, so the switch never goes backwards.
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        let end = log.durable_count().max(active.checkpoint.applied);
        catch_up_tree(log, &tree, &mut checkpoint, end, progress)?;
        self.switch(
            &mut active,
            Active {
                generation,
                tree,
                checkpoint,
            },
        )?;
        Ok(RebuildReport {
            events: checkpoint.applied,
            generation,
        })
    }

    /// An empty tree for the next generation (dropping any leftover of that name).
    fn fresh_generation(&self) -> Result<(u64, sled::Tree), ProjectionError> {
        let generation = self.generation() + 1;
        let name = tree_name(generation);
        self.db.drop_tree(name.as_bytes())?;
        Ok((generation, self.db.open_tree(&name)?))
    }

    /// Makes `next` the serving generation (durably named in the meta keys) and drops the old tree.
    fn switch(&self, active: &mut Active, next: Active) -> Result<(), ProjectionError> {
        self.db
            .insert(META_ACTIVE, &next.generation.to_be_bytes())?;
        self.db
            .insert(META_VERSION, &PROJECTION_VERSION.to_be_bytes())?;
        self.db.flush()?;
        let applied = next.checkpoint.applied;
        let old = std::mem::replace(active, next);
        self.applied_tx.send_replace(applied);
        self.db.drop_tree(tree_name(old.generation).as_bytes())?;
        Ok(())
    }

    /// Starts over with an empty generation at position 0, for the projector to fill in the
    /// background (used at open, so that a store to rebuild never delays serving writes).
    pub(super) fn reset(&self) -> Result<(), ProjectionError> {
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, tree) = self.fresh_generation()?;
        let checkpoint = read_checkpoint(&tree)?;
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        self.switch(
            &mut active,
            Active {
                generation,
                tree,
                checkpoint,
            },
        )
    }
}
