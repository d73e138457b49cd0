//! Read models on sled, built from the log: parties, sources, statements, claims with the corrections
//! that ended them, reviews, and the indexes behind positions and statement history.
//!
//! They live in their own sled database (`projections/` in the data directory) so that their writes
//! never share the log's flush and fsync. Each generation is one tree; every batch of events is one
//! atomic `apply_batch` that also moves the tree's checkpoint (next position and the hash of the last
//! event applied), so rows and checkpoint never disagree. Every row update is idempotent, and events
//! below the checkpoint are skipped. They are not fsynced: after a crash they resume from whatever
//! checkpoint sled recovered, because the log is the truth.
//!
//! Queries read under a shared lock that batch application takes exclusively (only for the sled
//! write: rows are staged before), so an answer never mixes two checkpoints. A rebuild fills a fresh
//! generation beside the serving one and switches over under the lock once it has caught up.
//!
//! This module opens the store and holds what the parts share (the serving generation and its
//! checkpoint); `apply` turns events into rows, `generation` rebuilds into a fresh generation and
//! switches to it, `read` answers from one consistent view, and `rows` defines the rows and keys.
mod apply;
mod generation;
mod read;
pub mod rows;

use std::path::Path;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use tokio::sync::watch;

pub use apply::BATCH;
use claims_ledger_log::{EventLog, Hash, LogError, GENESIS_HASH};
pub use generation::RebuildReport;
pub use read::{Row, Snapshot, StatementScan};
use rows::CHECKPOINT;

/// Bumped when rows change shape; a store of another version is rebuilt at open.
pub const PROJECTION_VERSION: u64 = 1;

/// Meta keys of the database: the serving generation, and the row version it was built with.
const META_ACTIVE: &[u8] = b"active-generation";
const META_VERSION: &[u8] = b"version";

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("unreadable projection row {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("events must be applied in order: expected position {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("undecodable event at position {position}: {reason}")]
    Undecodable { position: u64, reason: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What the checkpoint of a generation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Events applied: positions `[0, applied)`.
    pub applied: u64,
    /// Hash of the event at `applied - 1` (genesis for none), to notice a log that is not ours.
    pub last_hash: Hash,
}

struct Active {
    generation: u64,
    tree: sled::Tree,
    checkpoint: Checkpoint,
}

/// The read models. Share it behind an `Arc`.
pub struct Projections {
    db: sled::Db,
    active: RwLock<Active>,
    applied_tx: watch::Sender<u64>,
    /// One rebuild at a time.
    rebuilding: Mutex<()>,
    rebuild_running: std::sync::atomic::AtomicBool,
}

fn tree_name(generation: u64) -> String {
    format!("generation-{generation}")
}

fn corrupt(key: &[u8], reason: impl ToString) -> ProjectionError {
    ProjectionError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn read_checkpoint(tree: &sled::Tree) -> Result<Checkpoint, ProjectionError> {
    match tree.get(CHECKPOINT)? {
        None => Ok(Checkpoint {
            applied: 0,
            last_hash: GENESIS_HASH,
        }),
        Some(v) if v.len() == 40 => {
            let mut count = [0u8; 8];
            count.copy_from_slice(&v[..8]);
            let mut last_hash = [0u8; 32];
            last_hash.copy_from_slice(&v[8..]);
            Ok(Checkpoint {
                applied: u64::from_be_bytes(count),
                last_hash,
            })
        }
        Some(_) => Err(corrupt(CHECKPOINT, "checkpoint is not 40 bytes")),
    }
}

fn checkpoint_value(c: &Checkpoint) -> Vec<u8> {
    let mut v = c.applied.to_be_bytes().to_vec();
    v.extend_from_slice(&c.last_hash);
    v
}

fn get_row<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, ProjectionError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| corrupt(key, e)),
    }
}

/// Whether `checkpoint` describes a prefix of `log`.
fn matches_log(log: &EventLog, checkpoint: &Checkpoint) -> Result<bool, ProjectionError> {
    if checkpoint.applied == 0 {
        return Ok(true);
    }
    if checkpoint.applied > log.durable_count() {
        return Ok(false);
    }
    Ok(log
        .get(checkpoint.applied - 1)?
        .is_some_and(|rec| rec.hash == checkpoint.last_hash))
}

impl Projections {
    /// Opens the projections in `dir`. If their version differs, or their checkpoint is not a prefix
    /// of `log` (a log restored from elsewhere, or one an operator accepted shorter), they
    /// start over empty at position 0; the caller's catch-up fills them (the server's `Query` health
    /// stays NOT_SERVING meanwhile), so opening never waits for a replay.
    pub fn open(dir: &Path, log: &EventLog) -> Result<Projections, ProjectionError> {
        let (p, version_ok) = Projections::open_unchecked(dir)?;
        p.fit_to_log(log, version_ok)?;
        Ok(p)
    }

    /// The second half of [`Projections::open`], for a caller that opened them before the log
    /// (the server, which gives the log their checkpoint as a record of its length): starts over
    /// at position 0 if the rows are of another version or the checkpoint is not a prefix of `log`.
    pub fn fit_to_log(&self, log: &EventLog, version_ok: bool) -> Result<(), ProjectionError> {
        let p = self;
        let checkpoint = p.read().checkpoint;
        if !version_ok || !matches_log(log, &checkpoint)? {
            if checkpoint.applied == 0 {
                tracing::info!("building projections from position 0 in the background");
            } else {
                tracing::warn!(
                    applied = checkpoint.applied,
                    version_ok,
                    "projections do not match this log; starting over from position 0 in the background"
                );
            }
            p.reset()?;
        }
        Ok(())
    }

    /// Opens without checking against a log; also says whether the rows are of this version. For
    /// callers about to rebuild anyway (the offline `rebuild`), so they do not replay twice.
    pub fn open_unchecked(dir: &Path) -> Result<(Projections, bool), ProjectionError> {
        std::fs::create_dir_all(dir)?;
        let db =
            claims_ledger_log::open_sled(&sled::Config::new().path(dir).cache_capacity(256 << 20))?;
        let generation = match db.get(META_ACTIVE)? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            _ => 0,
        };
        let version_ok = db
            .get(META_VERSION)?
            .is_some_and(|v| v.as_ref() == PROJECTION_VERSION.to_be_bytes());
        // Leftovers of an interrupted rebuild.
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if name.starts_with("generation-") && name != tree_name(generation) {
                db.drop_tree(name.as_bytes())?;
            }
        }
        let tree = db.open_tree(tree_name(generation))?;
        let checkpoint = read_checkpoint(&tree)?;
        let (tx, _) = watch::channel(checkpoint.applied);
        let p = Projections {
            db,
            active: RwLock::new(Active {
                generation,
                tree,
                checkpoint,
            }),
            applied_tx: tx,
            rebuilding: Mutex::new(()),
            rebuild_running: Default::default(),
        };
        Ok((p, version_ok))
    }

    /// Events applied by the serving generation.
    pub fn applied(&self) -> u64 {
        self.read().checkpoint.applied
    }

    /// The serving generation.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// A receiver that sees the applied count change.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    fn read(&self) -> RwLockReadGuard<'_, Active> {
        self.active.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes everything applied so far to disk (used at shutdown and by the offline rebuild).
    pub fn flush(&self) -> Result<(), ProjectionError> {
        self.db.flush()?;
        Ok(())
    }
}
