//! Snapshots of state derived from the log (the stream index here, the write model in the server):
//! each names the hash of the last event it covers, so that an open uses one only when the log holds
//! exactly that prefix, and falls back to the log itself otherwise. The file format is `snapshot`.
use super::*;

/// The snapshot `file` (of `kind`) in `dir`: `Ok(None)` if there is none, `Err(why)` if it is
/// unreadable or the log in `db` of `count` events does not hold exactly the prefix it names.
pub(super) fn matching_snapshot(
    dir: &Path,
    db: &sled::Db,
    count: u64,
    file: &str,
    kind: &str,
) -> Result<Option<Snapshot>, String> {
    let Some(snap) = snapshot::read(&dir.join(file), kind)? else {
        return Ok(None);
    };
    if snap.count > count {
        return Err(format!(
            "it covers {} events, the log holds {count}",
            snap.count
        ));
    }
    if prefix_hash(db, snap.count).map_err(|e| e.to_string())? != snap.head_hash {
        return Err("it was made from another log".into());
    }
    Ok(Some(snap))
}

/// Hash of event `count - 1` (the genesis hash for 0): what a snapshot of `count` events names.
fn prefix_hash(db: &sled::Db, count: u64) -> Result<Hash, LogError> {
    match count.checked_sub(1) {
        Some(pos) => Ok(read_event(db, pos)?.hash),
        None => Ok(GENESIS_HASH),
    }
}

impl EventLog {
    /// Hash of event `count - 1` (the genesis hash for 0), for a snapshot of the first `count`
    /// events; `count` must not exceed the durable count.
    pub fn prefix_hash(&self, count: u64) -> Result<Hash, LogError> {
        let durable = self.durable_count();
        if count > durable {
            return Err(LogError::Corrupt {
                position: count,
                reason: format!("no prefix of {count} events: {durable} are durable"),
            });
        }
        prefix_hash(&self.shared.db, count)
    }

    /// The snapshot `file` (of `kind`) of the data directory if the durable log holds exactly the
    /// prefix it names; `Err(why)` if there is one that does not fit (see `snapshot`).
    pub fn matching_snapshot(&self, file: &str, kind: &str) -> Result<Option<Snapshot>, String> {
        let (dir, db) = (&self.shared.dir, &self.shared.db);
        matching_snapshot(dir, db, self.durable_count(), file, kind)
    }

    /// Writes `body`, state derived from the first `count` durable events, as the snapshot `file`
    /// of the data directory (see `snapshot`), named by the hash of event `count - 1`.
    pub fn save_snapshot(
        &self,
        file: &str,
        kind: &str,
        count: u64,
        body: Vec<u8>,
    ) -> Result<(), LogError> {
        self.writer()?;
        let head_hash = self.prefix_hash(count)?;
        snapshot::write(
            &self.shared.dir.join(file),
            kind,
            &Snapshot {
                count,
                head_hash,
                body,
            },
        )
    }
}
