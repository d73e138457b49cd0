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
//! write: rows are staged before), so an answer never mixes two checkpoints. A rebuild fills a fresh generation beside the serving one and switches over
//! under the lock once it has caught up.
pub mod rows;

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use tokio::sync::watch;
use uuid::Uuid;

use claims_ledger_domain::event::Event;
use claims_ledger_domain::model::TargetKind;
use claims_ledger_domain::positions::{ending_of, ClaimEntry};
use claims_ledger_log::{EventLog, Hash, LogError, RecordedEvent, GENESIS_HASH};
use rows::*;

/// Bumped when rows change shape; a store of another version is rebuilt at open.
pub const PROJECTION_VERSION: u64 = 1;

/// Events applied per atomic batch while catching up.
pub const BATCH: usize = 512;

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

/// Staged row writes, key → value.
type Writes = BTreeMap<Vec<u8>, Vec<u8>>;

/// A batch being applied: writes are staged here and read back before they reach sled, so that
/// later events of the batch see earlier ones.
struct Staged<'a> {
    tree: &'a sled::Tree,
    writes: Writes,
}

impl Staged<'_> {
    fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, ProjectionError> {
        match self.writes.get(key) {
            Some(v) => serde_json::from_slice(v)
                .map(Some)
                .map_err(|e| corrupt(key, e)),
            None => get_row(self.tree, key),
        }
    }

    fn contains(&self, key: &[u8]) -> Result<bool, ProjectionError> {
        Ok(self.writes.contains_key(key) || self.tree.contains_key(key)?)
    }

    fn put<T: serde::Serialize>(&mut self, key: Vec<u8>, row: &T) -> Result<(), ProjectionError> {
        let v = serde_json::to_vec(row).map_err(|e| corrupt(&key, e))?;
        self.writes.insert(key, v);
        Ok(())
    }

    fn put_raw(&mut self, key: Vec<u8>, value: &[u8]) {
        self.writes.insert(key, value.to_vec());
    }
}

/// Applies one event's row updates. Each update is idempotent: applying an event twice leaves the
/// rows as applying it once did. An event only ever reaches entities recorded before it, so a replay
/// out of order cannot link what the log never linked.
fn apply_event(
    st: &mut Staged<'_>,
    rec: &RecordedEvent,
    event: &Event,
) -> Result<(), ProjectionError> {
    let origin = Origin::of(rec);
    let pos = rec.position;
    match event {
        Event::PartyRegistered(p) => {
            let key = party_key(&p.party_id);
            if !st.contains(&key)? {
                st.put(
                    key,
                    &PartyRow {
                        party: p.clone(),
                        registered: origin,
                        last_updated: None,
                    },
                )?;
            }
        }
        Event::PartyUpdated(p) => {
            let key = party_key(&p.party_id);
            if let Some(mut row) = st.get::<PartyRow>(&key)? {
                let newer = row.last_updated.as_ref().is_none_or(|o| o.position < pos)
                    && row.registered.position < pos;
                if newer {
                    row.party = p.clone();
                    row.last_updated = Some(origin);
                    st.put(key, &row)?;
                }
            }
        }
        Event::SourceRegistered(s) => {
            let key = uuid_key(SOURCE, &s.source_id).to_vec();
            if !st.contains(&key)? {
                st.put(
                    key,
                    &SourceRow {
                        source: s.clone(),
                        origin,
                    },
                )?;
            }
        }
        Event::StatementRecorded(s) => {
            let key = uuid_key(STATEMENT, &s.statement_id).to_vec();
            if !st.contains(&key)? {
                let mut parties = vec![s.speaker_id.as_str()];
                parties.extend(s.on_behalf_of_id.as_deref());
                parties.dedup();
                for party in parties {
                    st.put_raw(
                        party_statement_key(party, s.stated_time.at, pos),
                        s.statement_id.as_bytes(),
                    );
                }
                st.put(
                    key,
                    &StatementRow {
                        statement: s.clone(),
                        origin,
                        ended: None,
                        topics: Default::default(),
                        claims: Vec::new(),
                    },
                )?;
            }
        }
        Event::ClaimAsserted(c) => {
            let claim_key = uuid_key(CLAIM, &c.claim_id).to_vec();
            let st_key = uuid_key(STATEMENT, &c.statement_id).to_vec();
            // `decide` never asserts on an unknown statement; a foreign log that does is left out
            // rather than given an invented stated time, as in the pure fold.
            let statement = st.get::<StatementRow>(&st_key)?;
            let Some(mut statement) = statement.filter(|s| s.origin.position < pos) else {
                return Ok(());
            };
            if st.contains(&claim_key)? {
                return Ok(());
            }
            st.put(
                claim_key,
                &ClaimRow {
                    entry: ClaimEntry {
                        claim: c.clone(),
                        stated: statement.statement.stated_time,
                        position: pos,
                        ended: None,
                        statement_ended: statement.ended,
                    },
                    origin,
                },
            )?;
            st.put_raw(fact_key(&c.party_id, &c.topic, pos), c.claim_id.as_bytes());
            statement.topics.insert(c.topic.clone());
            if !statement.claims.contains(&c.claim_id) {
                statement.claims.push(c.claim_id);
            }
            st.put(st_key, &statement)?;
        }
        Event::ClaimReviewed(r) => {
            st.put(
                uuid_pos_key(REVIEW, &r.claim_id, pos).to_vec(),
                &ReviewRow {
                    review: r.clone(),
                    origin,
                },
            )?;
        }
        Event::CorrectionIssued(c) => {
            st.put(
                uuid_pos_key(CORRECTION, &c.target_id, pos).to_vec(),
                &CorrectionRow {
                    correction: c.clone(),
                    origin,
                },
            )?;
            let Some(ended) = ending_of(c, pos) else {
                return Ok(());
            };
            match c.target_kind {
                TargetKind::Statement => {
                    let key = uuid_key(STATEMENT, &c.target_id).to_vec();
                    // Only what existed when the correction was made: a replayed correction must
                    // not reach an entity recorded after it (the pure fold never sees one).
                    let target = st.get::<StatementRow>(&key)?;
                    if let Some(mut s) = target.filter(|s| s.origin.position < pos) {
                        s.ended.get_or_insert(ended);
                        for claim_id in &s.claims {
                            let ck = uuid_key(CLAIM, claim_id).to_vec();
                            if let Some(mut row) = st.get::<ClaimRow>(&ck)? {
                                row.entry.end_statement(ended);
                                st.put(ck, &row)?;
                            }
                        }
                        st.put(key, &s)?;
                    }
                }
                TargetKind::Claim => {
                    let key = uuid_key(CLAIM, &c.target_id).to_vec();
                    let target = st.get::<ClaimRow>(&key)?;
                    if let Some(mut row) = target.filter(|r| r.origin.position < pos) {
                        row.entry.end(ended);
                        st.put(key, &row)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn decode(rec: &RecordedEvent) -> Result<Event, ProjectionError> {
    Event::from_payload(
        &rec.event_type,
        rec.schema_version,
        rec.payload.get().as_bytes(),
    )
    .map_err(|e| ProjectionError::Undecodable {
        position: rec.position,
        reason: e.to_string(),
    })
}

/// Stages the row updates of `events` (consecutive, in log order) from position `from` on; events
/// below `from` are skipped, a gap is an error. Returns the writes and the checkpoint they lead to.
fn stage<E: Borrow<RecordedEvent>>(
    tree: &sled::Tree,
    from: Checkpoint,
    events: &[E],
) -> Result<(Writes, Checkpoint), ProjectionError> {
    let mut staged = Staged {
        tree,
        writes: BTreeMap::new(),
    };
    let mut next = from;
    for rec in events {
        let rec: &RecordedEvent = rec.borrow();
        if rec.position < next.applied {
            continue;
        }
        if rec.position != next.applied {
            return Err(ProjectionError::OutOfOrder {
                expected: next.applied,
                got: rec.position,
            });
        }
        apply_event(&mut staged, rec, &decode(rec)?)?;
        next = Checkpoint {
            applied: rec.position + 1,
            last_hash: rec.hash,
        };
    }
    Ok((staged.writes, next))
}

fn write_batch(
    tree: &sled::Tree,
    writes: Writes,
    checkpoint: Option<&Checkpoint>,
) -> Result<(), ProjectionError> {
    let mut batch = sled::Batch::default();
    for (k, v) in writes {
        batch.insert(k, v);
    }
    if let Some(c) = checkpoint {
        batch.insert(CHECKPOINT, checkpoint_value(c));
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// Applies `events` (consecutive, in log order) to `tree` in one atomic batch with its checkpoint.
/// Events below the checkpoint are skipped; a gap is an error.
fn apply_to_tree<E: Borrow<RecordedEvent>>(
    tree: &sled::Tree,
    checkpoint: &mut Checkpoint,
    events: &[E],
) -> Result<(), ProjectionError> {
    let (writes, next) = stage(tree, *checkpoint, events)?;
    if next == *checkpoint {
        return Ok(());
    }
    write_batch(tree, writes, Some(&next))?;
    *checkpoint = next;
    Ok(())
}

/// Applies events to `tree` from its checkpoint up to `end` (exclusive), reading them from `log`.
fn catch_up_tree(
    log: &EventLog,
    tree: &sled::Tree,
    checkpoint: &mut Checkpoint,
    end: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ProjectionError> {
    while checkpoint.applied < end {
        let want = ((end - checkpoint.applied) as usize).min(BATCH);
        let events = log.read_all(checkpoint.applied, false, want)?;
        if events.is_empty() {
            break;
        }
        apply_to_tree(tree, checkpoint, &events)?;
        progress(checkpoint.applied);
    }
    Ok(())
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

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub generation: u64,
}

impl Projections {
    /// Opens the projections in `dir`. If their version differs, or their checkpoint is not a prefix
    /// of `log` (a log restored from elsewhere, or a relaxed-durability log that lost its tail), they
    /// start over empty at position 0; the caller's catch-up fills them (the server's `Query` health
    /// stays NOT_SERVING meanwhile), so opening never waits for a replay.
    pub fn open(dir: &Path, log: &EventLog) -> Result<Projections, ProjectionError> {
        let (p, version_ok) = Projections::open_unchecked(dir)?;
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
        Ok(p)
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

    /// Whether a rebuild is running.
    pub fn rebuild_running(&self) -> bool {
        self.rebuild_running
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver that sees the applied count change.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    fn read(&self) -> RwLockReadGuard<'_, Active> {
        self.active.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A consistent view for one query: the serving generation at one checkpoint.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { guard: self.read() }
    }

    /// Applies `events` (consecutive, in log order) to the serving generation.
    ///
    /// The rows are staged without holding the lock (the projector is the only writer of the serving
    /// tree, so what it reads cannot change under it); the exclusive lock covers only the batch write
    /// and the checkpoint, so queries wait for a sled write, not for JSON work.
    pub fn apply<E: Borrow<RecordedEvent>>(&self, events: &[E]) -> Result<(), ProjectionError> {
        let (generation, tree, checkpoint) = {
            let a = self.read();
            (a.generation, a.tree.clone(), a.checkpoint)
        };
        let (writes, next) = stage(&tree, checkpoint, events)?;
        if next == checkpoint {
            return Ok(());
        }
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        if active.generation == generation && active.checkpoint == checkpoint {
            write_batch(&active.tree, writes, Some(&next))?;
            active.checkpoint = next;
        } else {
            // A rebuild switched generations (or another caller applied) meanwhile: stage again
            // against what is serving now, under the lock.
            let Active {
                tree, checkpoint, ..
            } = &mut *active;
            apply_to_tree(tree, checkpoint, events)?;
        }
        self.applied_tx.send_replace(active.checkpoint.applied);
        Ok(())
    }

    /// Applies the row updates of `events` again, ignoring and keeping the checkpoint. Rows must not
    /// change: every update is idempotent. Exists so tests can check exactly that.
    #[doc(hidden)]
    pub fn reapply_rows<E: Borrow<RecordedEvent>>(
        &self,
        events: &[E],
    ) -> Result<(), ProjectionError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let active = self.active.write().unwrap_or_else(|p| p.into_inner());
        let from = Checkpoint {
            applied: first.borrow().position,
            last_hash: GENESIS_HASH,
        };
        let (writes, _) = stage(&active.tree, from, events)?;
        write_batch(&active.tree, writes, None)
    }

    /// Applies every durable event of `log` the serving generation has not seen, in atomic batches.
    pub fn catch_up(&self, log: &EventLog) -> Result<(), ProjectionError> {
        loop {
            let from = self.applied();
            let end = log.durable_count();
            if from >= end {
                return Ok(());
            }
            let want = ((end - from) as usize).min(BATCH);
            let events = log.read_all(from, false, want)?;
            if events.is_empty() {
                return Ok(());
            }
            self.apply(&events)?;
        }
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
    fn reset(&self) -> Result<(), ProjectionError> {
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

    /// Writes everything applied so far to disk (used at shutdown and by the offline rebuild).
    pub fn flush(&self) -> Result<(), ProjectionError> {
        self.db.flush()?;
        Ok(())
    }
}

/// A raw row: key and value bytes.
pub type Row = (Vec<u8>, Vec<u8>);

/// One consistent view of the serving generation.
pub struct Snapshot<'a> {
    guard: RwLockReadGuard<'a, Active>,
}

/// Where a statement listing starts and which way it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementScan<'k> {
    pub party: &'k str,
    pub newest_first: bool,
    /// Continue after this index key (from a previous page).
    pub after: Option<&'k [u8]>,
}

impl Snapshot<'_> {
    fn tree(&self) -> &sled::Tree {
        &self.guard.tree
    }

    /// Events this view reflects: positions `[0, applied)`.
    pub fn applied(&self) -> u64 {
        self.guard.checkpoint.applied
    }

    pub fn party(&self, id: &str) -> Result<Option<PartyRow>, ProjectionError> {
        get_row(self.tree(), &party_key(id))
    }

    /// Up to `limit` parties with ids after `after`, in id order.
    pub fn parties(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PartyRow>, ProjectionError> {
        let start = match after {
            // The smallest key after `party_key(a)`.
            Some(a) => {
                let mut k = party_key(a);
                k.push(0);
                k
            }
            None => vec![PARTY],
        };
        let mut out = Vec::new();
        for item in self.tree().range(start..vec![PARTY + 1]).take(limit) {
            let (k, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?);
        }
        Ok(out)
    }

    pub fn source(&self, id: &Uuid) -> Result<Option<SourceRow>, ProjectionError> {
        get_row(self.tree(), &uuid_key(SOURCE, id))
    }

    pub fn statement(&self, id: &Uuid) -> Result<Option<StatementRow>, ProjectionError> {
        get_row(self.tree(), &uuid_key(STATEMENT, id))
    }

    pub fn claim(&self, id: &Uuid) -> Result<Option<ClaimRow>, ProjectionError> {
        get_row(self.tree(), &uuid_key(CLAIM, id))
    }

    fn rows_under<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<T>, ProjectionError> {
        let mut out = Vec::new();
        for item in self.tree().scan_prefix(prefix) {
            let (k, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?);
        }
        Ok(out)
    }

    /// Reviews of a claim, in log order.
    pub fn reviews(&self, claim: &Uuid) -> Result<Vec<ReviewRow>, ProjectionError> {
        self.rows_under(&uuid_key(REVIEW, claim))
    }

    /// Corrections targeting a statement or claim, in log order.
    pub fn corrections(&self, target: &Uuid) -> Result<Vec<CorrectionRow>, ProjectionError> {
        self.rows_under(&uuid_key(CORRECTION, target))
    }

    /// Topics `party` has claims on, in order: one seek per topic, not one read per claim.
    pub fn topics(&self, party: &str) -> Result<Vec<String>, ProjectionError> {
        let prefix = fact_prefix(party, None);
        let Some(end) = prefix_end(&prefix) else {
            return Ok(Vec::new());
        };
        let mut topics = Vec::new();
        let mut start = prefix.clone();
        while let Some(item) = self.tree().range(start.clone()..end.clone()).next() {
            let (k, _) = item?;
            let topic = fact_topic(&k, prefix.len())
                .ok_or_else(|| corrupt(&k, "malformed fact key"))?
                .to_string();
            // Past every key of this topic: its prefix ends in 0x00, so 0x01 sorts after them all.
            start = fact_prefix(party, Some(&topic));
            if let Some(last) = start.last_mut() {
                *last = 1;
            }
            topics.push(topic);
        }
        Ok(topics)
    }

    /// The claims behind (`party`, `topic`), in assertion order.
    pub fn claims_on(&self, party: &str, topic: &str) -> Result<Vec<ClaimRow>, ProjectionError> {
        let mut out = Vec::new();
        for item in self.tree().scan_prefix(fact_prefix(party, Some(topic))) {
            let (k, v) = item?;
            let id = Uuid::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            let row = self
                .claim(&id)?
                .ok_or_else(|| corrupt(&k, format!("fact names missing claim {id}")))?;
            out.push(row);
        }
        Ok(out)
    }

    /// A party's statements from its history index, in stated-time order (ties by position) or the
    /// reverse, after a previous page's last key. Each comes with its index key, for the next page.
    pub fn party_statements(
        &self,
        scan: &StatementScan<'_>,
    ) -> Result<
        impl Iterator<Item = Result<(Vec<u8>, StatementRow), ProjectionError>> + '_,
        ProjectionError,
    > {
        let prefix = party_statement_prefix(scan.party);
        let end = prefix_end(&prefix).unwrap_or_default();
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match (scan.newest_first, scan.after) {
                (false, None) => Box::new(self.tree().range(prefix.clone()..end)),
                (false, Some(a)) => {
                    let mut start = a.to_vec();
                    start.push(0);
                    Box::new(self.tree().range(start..end))
                }
                (true, None) => Box::new(self.tree().range(prefix.clone()..end).rev()),
                (true, Some(a)) => Box::new(self.tree().range(prefix.clone()..a.to_vec()).rev()),
            };
        Ok(iter.map(move |item| {
            let (k, v) = item?;
            let id = Uuid::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            let row = self
                .statement(&id)?
                .ok_or_else(|| corrupt(&k, format!("index names missing statement {id}")))?;
            Ok((k.to_vec(), row))
        }))
    }

    /// Every row of this generation except the checkpoint, in key order: for comparing generations.
    pub fn dump(&self) -> Result<Vec<Row>, ProjectionError> {
        let mut out = Vec::new();
        for item in self.tree().iter() {
            let (k, v) = item?;
            if k.as_ref() != CHECKPOINT {
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
