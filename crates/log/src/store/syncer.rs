//! The syncer thread: makes the groups the writer staged durable (one `fdatasync` of the write-ahead
//! log segment for all groups waiting; never a sled flush), then publishes them to readers, tells the
//! commit observer, and answers their appends, strictly in log order. A failed sync poisons the log
//! (see the parent module).
use super::*;

/// Longest the syncer waits for a group being staged to join its sync (see `Syncer::run`).
const MAX_COALESCE: Duration = Duration::from_millis(2);

/// Where an append's answer goes.
type Reply = oneshot::Sender<Result<AppendOutcome, LogError>>;

/// A group applied to sled, waiting for its sync and its answers.
pub(super) struct StagedGroup {
    /// Each with when its append reached the log.
    pub(super) replies: Vec<(Reply, AppendOutcome, Instant)>,
    pub(super) events: Vec<RecordedEvent>,
    /// The head after this group.
    pub(super) head: Head,
    /// The write-ahead log segment holding the group's frame, when it has events.
    pub(super) wal_file: Option<wal::SyncHandle>,
}

/// Makes staged groups durable, publishes them, and answers their appends, strictly in order.
pub(super) struct Syncer {
    pub(super) shared: Arc<Shared>,
    pub(super) durability: Durability,
    pub(super) observer: Option<Arc<dyn CommitObserver>>,
}

impl Shared {
    pub(super) fn poison(&self, e: &LogError) {
        tracing::error!(error = %e, "append failed; the log refuses writes until restart");
        self.poisoned.store(true, Ordering::Release);
        // Wake anyone waiting for durability so they see the refusal instead of hanging.
        self.durable_tx.send_modify(|_| {});
    }
}

impl Syncer {
    pub(super) fn run(mut self, staged: std::sync::mpsc::Receiver<StagedGroup>) {
        while let Ok(first) = staged.recv() {
            // Every group staged while the previous sync ran shares the next one.
            let mut groups = vec![first];
            // A group being staged right now joins this sync: one sync for both costs less than two.
            let deadline = Instant::now() + MAX_COALESCE;
            loop {
                while let Ok(g) = staged.try_recv() {
                    groups.push(g);
                }
                if !self.shared.staging.load(Ordering::Acquire) || Instant::now() >= deadline {
                    break;
                }
                match staged.recv_timeout(Duration::from_micros(100)) {
                    Ok(g) => groups.push(g),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            self.finish(groups);
        }
    }

    /// Syncs once for `groups` (in log order), then publishes and answers them.
    fn finish(&mut self, groups: Vec<StagedGroup>) {
        let refuse = |groups: Vec<StagedGroup>| {
            for (reply, _, _) in groups.into_iter().flat_map(|g| g.replies) {
                let _ = reply.send(Err(LogError::Poisoned));
            }
        };
        if self.shared.poisoned.load(Ordering::Acquire) {
            return refuse(groups);
        }
        if groups.iter().any(|g| !g.events.is_empty()) {
            if let Err(e) = self.sync(&groups) {
                self.shared.poison(&e);
                return refuse(groups);
            }
            self.shared.metrics.synced_group(
                groups.iter().map(|g| g.events.len()).sum(),
                groups.iter().map(|g| g.replies.len()).sum(),
            );
        }
        for StagedGroup {
            replies,
            events,
            head,
            wal_file: _,
        } in groups
        {
            if !events.is_empty() {
                *self.shared.head.lock().unwrap_or_else(|p| p.into_inner()) = head;
                self.shared.durable.store(head.count, Ordering::Release);
                self.shared.metrics.committed(events.len(), head.count);
                if let Some(obs) = &self.observer {
                    let events: Vec<Arc<RecordedEvent>> =
                        events.into_iter().map(Arc::new).collect();
                    obs.committed(&events);
                }
                self.shared.durable_tx.send_replace(head.count);
            }
            // Replays of earlier appends are answered here too: their originals were in earlier
            // groups, synced before this one.
            for (reply, outcome, received) in replies {
                self.shared.metrics.acknowledged(received.elapsed());
                let _ = reply.send(Ok(outcome));
            }
        }
    }

    /// One `fdatasync` per segment the groups' frames are in (one, unless a segment filled).
    fn sync(&mut self, groups: &[StagedGroup]) -> Result<(), LogError> {
        if self.durability == Durability::Relaxed {
            return Ok(());
        }
        let started = Instant::now();
        let mut synced: Vec<&wal::SyncHandle> = Vec::with_capacity(1);
        for file in groups.iter().filter_map(|g| g.wal_file.as_ref()) {
            if !synced.iter().any(|f| f.same_segment(file)) {
                file.sync_data()?;
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                synced.push(file);
            }
        }
        self.shared.metrics.synced(started.elapsed());
        Ok(())
    }
}
