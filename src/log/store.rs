//! The log on sled: one writer thread that validates and stages appends, and one syncer thread that
//! makes them durable and answers them. The on-disk layout is described in `layout`.
//!
//! Durability: sled's `flush()` writes its buffers but only calls `sync_file_range`, which neither
//! flushes the disk cache nor persists file-size changes. The syncer therefore calls `fdatasync` on
//! sled's data file itself (and on any blob file) before any append of a group is acknowledged, and
//! only then makes the group visible to readers. Group commit is pipelined: while the syncer syncs
//! group k, the writer checks and applies group k+1, and appends arriving meanwhile share the next
//! sync. If a sync fails the log refuses all further writes until restart: after a failed fsync the
//! kernel may have dropped the dirty pages, so nothing written since can be trusted to be on disk.
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::layout::{
    be_u64, chunk_positions, cursor_key, event_key, event_value, head_value, idempotency_key,
    node_key, parse_head, split_event_value, stream_chunk_key, stream_prefix, CHUNK, FRONTIER_KEY,
    HEAD_KEY,
};
use super::record::{self, Encode, Hash, RecordedEvent, GENESIS_HASH};
use super::LogError;
use crate::merkle::{self, Frontier};

/// What a writer expects of a stream before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedRevision {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
}

impl std::fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedRevision::Any => write!(f, "any"),
            ExpectedRevision::NoStream => write!(f, "no stream"),
            ExpectedRevision::StreamExists => write!(f, "stream exists"),
            ExpectedRevision::Exact(r) => write!(f, "revision {r}"),
        }
    }
}

/// How appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fdatasync before every acknowledgement (shared by concurrent appends). The default.
    #[default]
    Fsync,
    /// Acknowledge once sled has the batch in memory; sled writes it out within its flush interval
    /// (500 ms). A crash can lose acknowledged writes from that window. For tests and bulk imports only.
    Relaxed,
}

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub stream: String,
    pub event_type: String,
    pub schema_version: u32,
    /// Payload JSON.
    pub payload: Box<RawValue>,
}

/// Deduplication of a whole append by a client-chosen key.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    /// Hash of the request's content; the same key with another content is refused.
    pub content_hash: Hash,
}

/// An atomic append of one or more events to one or more streams.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub events: Vec<NewEvent>,
    /// Checked against the state before this append, all of them; any mismatch rejects the whole append.
    pub expectations: Vec<(String, ExpectedRevision)>,
    pub idempotency: Option<Idempotency>,
    pub recorded_by: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
}

/// Where one appended event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub event_id: Uuid,
    pub stream: String,
    pub stream_revision: u64,
    pub position: u64,
    #[serde(with = "hex::serde")]
    pub hash: Hash,
}

/// The answer to an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub events: Vec<Appended>,
    pub recorded_at: DateTime<Utc>,
    /// True when this replays an earlier append with the same idempotency key.
    pub deduplicated: bool,
}

/// Stored under `i` + key: enough to answer a retry exactly as the original.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecord {
    #[serde(with = "hex::serde")]
    content_hash: Hash,
    recorded_at: DateTime<Utc>,
    events: Vec<Appended>,
}

impl IdempotencyRecord {
    fn outcome(&self) -> AppendOutcome {
        AppendOutcome {
            events: self.events.clone(),
            recorded_at: self.recorded_at,
            deduplicated: true,
        }
    }
}

/// The last event of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Number of events (the next position).
    pub count: u64,
    /// Hash of the last event, or [`GENESIS_HASH`] when empty.
    pub hash: Hash,
}

/// Told about every durable group, in log order, on the writer thread, before any of the group's
/// appends is acknowledged. Keep it quick: it delays the next group.
pub trait CommitObserver: Send + Sync {
    fn committed(&self, events: &[RecordedEvent]);
}

/// Options for [`EventLog::open`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub durability: Durability,
    /// Most appends that share one sync.
    pub max_group: usize,
    /// Maintain the RFC 6962 Merkle tree in the same batches as the events. Off only to measure its
    /// cost; a log opened with it on again catches the tree up from where it stopped.
    pub merkle: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            durability: Durability::Fsync,
            max_group: 1024,
            merkle: true,
        }
    }
}

const MAX_STREAM_NAME: usize = 256;

/// Longest a group waits for stragglers (see `Writer::run`).
const MAX_LINGER: Duration = Duration::from_micros(500);

/// Longest the syncer waits for a group being staged to join its sync (see `Syncer::run`).
const MAX_COALESCE: Duration = Duration::from_millis(2);

/// Opens sled the same way everywhere (server, verify, tests), so its segment size stays fixed.
pub fn open_db(dir: &Path) -> Result<sled::Db, LogError> {
    std::fs::create_dir_all(dir)?;
    // 16 MiB segments put sled's blob threshold at 4 MiB; a leaf holds at most ~17 entries of at most
    // MAX_RECORD_BYTES, so no leaf ever becomes an (unsynced) blob.
    let db = sled::Config::new()
        .path(dir)
        .segment_size(16 << 20)
        .open()?;
    Ok(db)
}

/// Reads the event at `pos`, checking its bytes against the hash stored with them.
fn read_event(db: &sled::Db, pos: u64) -> Result<RecordedEvent, LogError> {
    match db.get(event_key(pos))? {
        Some(v) => decode_event_value(pos, &v),
        None => Err(LogError::Corrupt {
            position: pos,
            reason: "missing below the head".into(),
        }),
    }
}

fn decode_event_value(pos: u64, v: &[u8]) -> Result<RecordedEvent, LogError> {
    let corrupt = |reason: &str| LogError::Corrupt {
        position: pos,
        reason: reason.to_string(),
    };
    let (hash, bytes) = split_event_value(v).ok_or_else(|| corrupt("truncated event value"))?;
    let rec = record::decode(pos, bytes.to_vec())?;
    if rec.hash != hash {
        return Err(corrupt(
            "stored bytes do not match the hash written with them",
        ));
    }
    Ok(rec)
}

/// Pushes the leaves of `events` onto a copy of `frontier`, staging every perfect subtree they complete
/// and the new frontier in `batch`, so the tree is written atomically with the events.
fn stage_tree(frontier: &Frontier, events: &[RecordedEvent], batch: &mut sled::Batch) -> Frontier {
    let mut next = frontier.clone();
    for e in events {
        // `TreeFull` needs 2^64 events; positions would overflow first.
        let _ = next.push_with(merkle::leaf_hash(&e.stored), |level, index, hash| {
            batch.insert(&node_key(level, index)[..], &hash[..]);
        });
    }
    batch.insert(FRONTIER_KEY, next.to_bytes());
    next
}

/// The stored frontier, extended over any events written without the tree (a log from before it, or
/// one opened with `merkle: false`) and synced, so every durable event is in the tree.
fn catch_up_tree(db: &sled::Db, data_file: &File, count: u64) -> Result<Frontier, LogError> {
    let mut frontier = match db.get(FRONTIER_KEY)? {
        Some(v) => Frontier::from_bytes(&v).map_err(|e| LogError::Corrupt {
            position: 0,
            reason: format!("unreadable Merkle frontier: {e}"),
        })?,
        None => Frontier::new(),
    };
    if frontier.size() > count {
        return Err(LogError::Corrupt {
            position: count,
            reason: format!(
                "the Merkle tree has {} leaves but the log {count} events",
                frontier.size()
            ),
        });
    }
    if frontier.size() == count {
        return Ok(frontier);
    }
    tracing::info!(
        from = frontier.size(),
        to = count,
        "extending the Merkle tree over the log"
    );
    while frontier.size() < count {
        let end = count.min(frontier.size() + 4096);
        let mut events = Vec::new();
        for item in db.range(event_key(frontier.size())..event_key(end)) {
            let (k, v) = item?;
            let pos = be_u64(&k[1..]).unwrap_or(u64::MAX);
            events.push(decode_event_value(pos, &v)?);
        }
        if events.is_empty() {
            break;
        }
        let mut batch = sled::Batch::default();
        frontier = stage_tree(&frontier, &events, &mut batch);
        db.apply_batch(batch)?;
    }
    db.flush()?;
    data_file.sync_data()?;
    Ok(frontier)
}

fn proof_error(e: merkle::ProofRequestError<LogError>) -> LogError {
    match e {
        merkle::ProofRequestError::Store(e) => e,
        other => LogError::ProofRequest(other.to_string()),
    }
}

/// The stored perfect subtrees, for proofs. Only ask for sizes the log has made durable.
pub(crate) struct SledNodes<'a>(pub(crate) &'a sled::Db);

impl merkle::NodeStore for SledNodes<'_> {
    type Error = LogError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, LogError> {
        let missing = || LogError::Corrupt {
            position: index.checked_shl(level).unwrap_or(u64::MAX),
            reason: format!("Merkle node ({level}, {index}) is missing"),
        };
        let v = self.0.get(node_key(level, index))?.ok_or_else(missing)?;
        v.as_ref().try_into().map_err(|_| missing())
    }
}

struct Shared {
    db: sled::Db,
    /// Events below this position are durable and visible to readers.
    durable: AtomicU64,
    durable_tx: watch::Sender<u64>,
    head: Mutex<Head>,
    poisoned: AtomicBool,
    /// Disk syncs made, for group-commit statistics.
    syncs: AtomicU64,
    /// The writer is staging a group right now (the syncer waits for it rather than syncing twice).
    staging: AtomicBool,
    /// sled's data file, for fdatasync of writes made outside the syncer (subscription cursors).
    data_file: File,
    /// Whether the Merkle tree is maintained (proofs are refused otherwise).
    merkle: bool,
}

/// The append-only, hash-chained event log. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
}

struct Job {
    req: AppendRequest,
    reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
    /// When the append reached the log, for the append latency metric.
    received: Instant,
}

impl EventLog {
    /// Opens (or creates) the log in `dir` and starts its writer thread. `observer` is told about every
    /// group committed from now on; replay earlier events with [`EventLog::read_all`].
    pub fn open(
        dir: &Path,
        options: LogOptions,
        observer: Option<Arc<dyn CommitObserver>>,
    ) -> Result<EventLog, LogError> {
        let db = open_db(dir)?;
        // Persist the directory entries of sled's files once, so the files themselves survive a crash.
        File::open(dir)?.sync_all()?;
        let data_file = File::open(dir.join("db"))?;
        let head = match db.get(HEAD_KEY)? {
            Some(v) => {
                let (count, hash) = parse_head(&v).ok_or_else(|| LogError::Corrupt {
                    position: 0,
                    reason: "unreadable head record".into(),
                })?;
                Head { count, hash }
            }
            None => Head {
                count: 0,
                hash: GENESIS_HASH,
            },
        };
        let last_recorded = match head.count.checked_sub(1) {
            Some(pos) => Some(read_event(&db, pos)?.recorded_at),
            None => None,
        };
        let frontier = if options.merkle {
            catch_up_tree(&db, &data_file, head.count)?
        } else {
            Frontier::new()
        };
        let (durable_tx, _) = watch::channel(head.count);
        crate::metrics::set_log_durable(head.count);
        let shared = Arc::new(Shared {
            db: db.clone(),
            durable: AtomicU64::new(head.count),
            durable_tx,
            head: Mutex::new(head),
            poisoned: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            staging: AtomicBool::new(false),
            data_file,
            merkle: options.merkle,
        });
        let (tx, rx) = mpsc::channel(options.max_group.max(1) * 4);
        let syncer = Syncer {
            shared: shared.clone(),
            db: db.clone(),
            blobs_dir: dir.join("blobs"),
            synced_blobs: HashSet::new(),
            durability: options.durability,
            observer,
        };
        let writer = Writer {
            shared: shared.clone(),
            db,
            head,
            frontier,
            last_recorded,
            options,
        };
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run(rx, syncer))?;
        Ok(EventLog { shared, tx })
    }

    /// Appends atomically; resolves once the events are durable (per the configured durability).
    pub async fn append(&self, req: AppendRequest) -> Result<AppendOutcome, LogError> {
        let (reply, rx) = oneshot::channel();
        let received = Instant::now();
        self.tx
            .send(Job {
                req,
                reply,
                received,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// The durable head.
    pub fn head(&self) -> Head {
        *self.shared.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of durable events.
    pub fn durable_count(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// A receiver that sees the durable event count change.
    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.shared.durable_tx.subscribe()
    }

    /// The recorded result of an idempotency key, once that result is durable.
    pub async fn idempotent_result(
        &self,
        idem: &Idempotency,
    ) -> Result<Option<AppendOutcome>, LogError> {
        let Some(rec) = self.idempotency_record(&idem.key)? else {
            return Ok(None);
        };
        if rec.content_hash != idem.content_hash {
            return Err(LogError::IdempotencyConflict {
                key: idem.key.clone(),
            });
        }
        // The record may belong to a group whose sync is still running: wait for it.
        if let Some(last) = rec.events.iter().map(|e| e.position).max() {
            let mut rx = self.watch_durable();
            let shared = &self.shared;
            rx.wait_for(|count| *count > last || shared.poisoned.load(Ordering::Acquire))
                .await
                .map_err(|_| LogError::Closed)?;
            if self.durable_count() <= last {
                // The original's sync failed: it was never acknowledged and never will be.
                return Err(LogError::Poisoned);
            }
        }
        Ok(Some(rec.outcome()))
    }

    fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, LogError> {
        match self.shared.db.get(idempotency_key(key))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| LogError::Corrupt {
                    position: 0,
                    reason: format!("unreadable idempotency record for {key:?}: {e}"),
                }),
        }
    }

    /// Reads one durable event.
    pub fn get(&self, position: u64) -> Result<Option<RecordedEvent>, LogError> {
        if position >= self.durable_count() {
            return Ok(None);
        }
        read_event(&self.shared.db, position).map(Some)
    }

    /// Reads up to `max` durable events from `from` (inclusive), forwards or backwards.
    pub fn read_all(
        &self,
        from: u64,
        backwards: bool,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let end = self.durable_count();
        let mut out = Vec::new();
        if end == 0 || max == 0 {
            return Ok(out);
        }
        let db = &self.shared.db;
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if backwards {
            let from = from.min(end - 1);
            Box::new(db.range(event_key(0)..=event_key(from)).rev())
        } else {
            if from >= end {
                return Ok(out);
            }
            Box::new(db.range(event_key(from)..event_key(end)))
        };
        for item in iter.take(max) {
            let (k, v) = item?;
            let pos = be_u64(&k[1..]).unwrap_or(u64::MAX);
            out.push(decode_event_value(pos, &v)?);
        }
        Ok(out)
    }

    /// The positions of a stream's durable events, in revision order (index = revision).
    fn stream_positions(&self, stream: &str) -> Result<Vec<u64>, LogError> {
        let durable = self.durable_count();
        let mut positions = Vec::new();
        for item in self.shared.db.scan_prefix(stream_prefix(stream)) {
            let (_, v) = item?;
            positions.extend(chunk_positions(&v));
        }
        // Events not yet synced are invisible; positions grow with revisions, so they form a tail.
        while positions.last().is_some_and(|p| *p >= durable) {
            positions.pop();
        }
        Ok(positions)
    }

    /// The last durable revision of a stream, if it exists.
    pub fn stream_revision(&self, stream: &str) -> Result<Option<u64>, LogError> {
        Ok((self.stream_positions(stream)?.len() as u64).checked_sub(1))
    }

    /// Reads up to `max` durable events of one stream from revision `from`.
    pub fn read_stream(
        &self,
        stream: &str,
        from: u64,
        backwards: bool,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let positions = self.stream_positions(stream)?;
        let Some(last) = (positions.len() as u64).checked_sub(1) else {
            return Ok(Vec::new());
        };
        let revs: Box<dyn Iterator<Item = u64>> = if backwards {
            Box::new((0..=from.min(last)).rev())
        } else {
            Box::new(from..=last)
        };
        revs.take(max)
            .map(|rev| read_event(&self.shared.db, positions[rev as usize]))
            .collect()
    }

    /// The acknowledged position of a named subscriber, if it ever acknowledged.
    pub fn cursor(&self, name: &str) -> Result<Option<u64>, LogError> {
        Ok(self
            .shared
            .db
            .get(cursor_key(name))?
            .and_then(|v| be_u64(&v)))
    }

    /// Durably records that the named subscriber has processed everything before `position`.
    /// Cursors only move forward: an older acknowledgement (a retry, a reordered message) keeps the
    /// stored one. Returns the stored position. Syncs to disk before returning.
    pub async fn store_cursor(&self, name: &str, position: u64) -> Result<u64, LogError> {
        let shared = self.shared.clone();
        let key = cursor_key(name);
        let durable = self.durable_count();
        if position > durable {
            return Err(LogError::CursorBeyondHead { position, durable });
        }
        tokio::task::spawn_blocking(move || {
            let stored = shared.db.update_and_fetch(&key, |old| {
                let old = old.and_then(be_u64).unwrap_or(0);
                Some(old.max(position).to_be_bytes().to_vec())
            })?;
            shared.db.flush()?;
            shared.data_file.sync_data()?;
            Ok(stored.and_then(|v| be_u64(&v)).unwrap_or(position))
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    /// Forgets a named subscriber's position. Returns whether it existed.
    pub async fn delete_cursor(&self, name: &str) -> Result<bool, LogError> {
        let shared = self.shared.clone();
        let key = cursor_key(name);
        tokio::task::spawn_blocking(move || {
            let existed = shared.db.remove(&key)?.is_some();
            shared.db.flush()?;
            shared.data_file.sync_data()?;
            Ok(existed)
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    /// Checks that a tree of `size` leaves can be proven: maintained, and within the durable log.
    fn provable(&self, size: u64) -> Result<(), LogError> {
        if !self.shared.merkle {
            return Err(LogError::ProofRequest(
                "this log was opened without its Merkle tree".into(),
            ));
        }
        let durable = self.durable_count();
        if size > durable {
            return Err(LogError::ProofRequest(format!(
                "tree size {size} is beyond the end of the log ({durable} events)"
            )));
        }
        Ok(())
    }

    /// The RFC 6962 root of the first `size` events.
    pub fn tree_root(&self, size: u64) -> Result<Hash, LogError> {
        self.provable(size)?;
        merkle::root_at(&SledNodes(&self.shared.db), size).map_err(proof_error)
    }

    /// The stored leaf hash of the event at `position`.
    pub fn tree_leaf(&self, position: u64) -> Result<Hash, LogError> {
        self.provable(position.saturating_add(1))?;
        merkle::NodeStore::node(&SledNodes(&self.shared.db), 0, position)
    }

    /// The inclusion proof of the event at `position` in the tree of `size` events.
    pub fn inclusion_proof(&self, position: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.provable(size)?;
        merkle::inclusion_proof(&SledNodes(&self.shared.db), position, size).map_err(proof_error)
    }

    /// The consistency proof from the tree of `old_size` events to the tree of `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, LogError> {
        self.provable(new_size)?;
        merkle::consistency_proof(&SledNodes(&self.shared.db), old_size, new_size)
            .map_err(proof_error)
    }

    /// Number of disk syncs made since the log was opened (each may cover many appends).
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Whether a failed sync has stopped all writes.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }
}

/// Owns all writes. One thread, so validation of expected revisions and the hash chain needs no locks.
struct Writer {
    shared: Arc<Shared>,
    db: sled::Db,
    head: Head,
    /// The Merkle tree's right edge after the last staged event.
    frontier: Frontier,
    last_recorded: Option<DateTime<Utc>>,
    options: LogOptions,
}

/// What a group has changed so far but not yet written: consulted before sled, so later appends in
/// a group see earlier ones.
#[derive(Default)]
struct Pending {
    streams: HashMap<String, StreamTail>,
    idempotency: HashMap<String, IdempotencyRecord>,
}

/// A stream's last revision and the contents of its last index chunk.
#[derive(Clone)]
struct StreamTail {
    revision: u64,
    chunk: Vec<u8>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>, syncer: Syncer) {
        // The syncer makes staged groups durable and answers them, in order, while this thread
        // stages the next group: applying to sled overlaps with the previous group's fdatasync.
        // At most one group waits for it: the writer then blocks, and requests pile up into the
        // next, larger group, which bounds memory and the number of syncs.
        let (to_syncer, staged) = std::sync::mpsc::sync_channel::<StagedGroup>(1);
        let syncer = std::thread::Builder::new()
            .name("log-syncer".into())
            .spawn(move || syncer.run(staged));
        let syncer = match syncer {
            Ok(handle) => handle,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the log syncer; refusing writes");
                self.shared.poisoned.store(true, Ordering::Release);
                while let Some(job) = rx.blocking_recv() {
                    let _ = job.reply.send(Err(LogError::Poisoned));
                }
                return;
            }
        };
        let mut last_group = 0usize;
        let mut last_cycle = Duration::ZERO;
        while let Some(first) = rx.blocking_recv() {
            let started = Instant::now();
            let mut jobs = vec![first];
            self.drain(&mut rx, &mut jobs);
            // Linger: when the previous group was large and this one is much smaller, the other
            // writers are most likely on their way back with their next request. Waiting a fraction
            // of a cycle for them makes one sync serve them all, instead of paying a whole sync for
            // a straggler. A lone writer (groups of 1) never waits.
            if last_group >= 4 && jobs.len() < last_group / 2 {
                let deadline = Instant::now() + (last_cycle / 2).min(MAX_LINGER);
                while jobs.len() < last_group / 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(20));
                    self.drain(&mut rx, &mut jobs);
                }
            }
            last_group = jobs.len();
            self.shared.staging.store(true, Ordering::Release);
            let group = self.stage_group(jobs);
            let sent = to_syncer.send(group);
            self.shared.staging.store(false, Ordering::Release);
            if sent.is_err() {
                break;
            }
            last_cycle = started.elapsed();
        }
        drop(to_syncer);
        let _ = syncer.join();
    }

    /// Moves every queued job into `jobs`, up to the group limit.
    fn drain(&self, rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
        while jobs.len() < self.options.max_group {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
    }

    /// Checks and applies a group to sled (visible to the writer, not yet to readers) and hands it
    /// to the syncer. Refused appends are answered here; nothing else is answered before its sync.
    fn stage_group(&mut self, jobs: Vec<Job>) -> StagedGroup {
        let mut group = StagedGroup {
            replies: Vec::with_capacity(jobs.len()),
            events: Vec::new(),
            head: self.head,
        };
        if self.shared.poisoned.load(Ordering::Acquire) {
            for j in jobs {
                let _ = j.reply.send(Err(LogError::Poisoned));
            }
            return group;
        }
        let now = Utc::now();
        // Recorded time never goes backwards, so "as of recorded time" equals "as of position".
        let recorded_at = match self.last_recorded {
            Some(last) if last > now => last,
            _ => now,
        };
        let mut pending = Pending::default();
        let mut batch = sled::Batch::default();
        let mut head = self.head;
        for job in jobs {
            match self.prepare(&job.req, recorded_at, &mut head, &mut pending, &mut batch) {
                Ok((outcome, events)) => {
                    group.events.extend(events);
                    group.replies.push((job.reply, outcome, job.received));
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        if !group.events.is_empty() {
            batch.insert(HEAD_KEY, head_value(head.count, &head.hash));
            let frontier = self
                .options
                .merkle
                .then(|| stage_tree(&self.frontier, &group.events, &mut batch));
            if let Err(e) = self.db.apply_batch(batch) {
                self.shared.poison(&e.into());
                for (reply, _, _) in group.replies.drain(..) {
                    let _ = reply.send(Err(LogError::Poisoned));
                }
                group.events.clear();
                return group;
            }
            self.head = head;
            if let Some(f) = frontier {
                self.frontier = f;
            }
            self.last_recorded = Some(recorded_at);
            group.head = head;
        }
        group
    }

    fn stream_tail(&self, pending: &Pending, stream: &str) -> Result<Option<StreamTail>, LogError> {
        if let Some(t) = pending.streams.get(stream) {
            return Ok(Some(t.clone()));
        }
        let Some(item) = self.db.scan_prefix(stream_prefix(stream)).next_back() else {
            return Ok(None);
        };
        let (k, v) = item?;
        let chunk_no = k
            .len()
            .checked_sub(4)
            .and_then(|at| k.get(at..))
            .and_then(|c| c.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| LogError::Corrupt {
                position: 0,
                reason: format!("malformed index key of stream {stream}"),
            })?;
        let count = v.len() as u64 / 8;
        if count == 0 {
            return Err(LogError::Corrupt {
                position: 0,
                reason: format!("empty index chunk of stream {stream}"),
            });
        }
        Ok(Some(StreamTail {
            revision: u64::from(chunk_no) * CHUNK + count - 1,
            chunk: v.to_vec(),
        }))
    }

    /// Checks one append and stages it in `batch`. Touches `head`, `pending` and `batch` only once every
    /// check has passed, so a refused append leaves the group as it was.
    fn prepare(
        &self,
        req: &AppendRequest,
        recorded_at: DateTime<Utc>,
        head: &mut Head,
        pending: &mut Pending,
        batch: &mut sled::Batch,
    ) -> Result<(AppendOutcome, Vec<RecordedEvent>), LogError> {
        if let Some(idem) = &req.idempotency {
            let rec = match pending.idempotency.get(&idem.key) {
                Some(r) => Some(r.clone()),
                None => match self.db.get(idempotency_key(&idem.key))? {
                    Some(v) => Some(serde_json::from_slice::<IdempotencyRecord>(&v).map_err(
                        |e| LogError::Corrupt {
                            position: 0,
                            reason: format!("unreadable idempotency record: {e}"),
                        },
                    )?),
                    None => None,
                },
            };
            if let Some(rec) = rec {
                if rec.content_hash != idem.content_hash {
                    return Err(LogError::IdempotencyConflict {
                        key: idem.key.clone(),
                    });
                }
                return Ok((rec.outcome(), Vec::new()));
            }
        }
        if req.events.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        // Each stream's tail before this append, looked up once; events below update it.
        let mut tails: HashMap<&str, Option<StreamTail>> = HashMap::new();
        for (stream, expected) in &req.expectations {
            let tail = match tails.get(stream.as_str()) {
                Some(t) => t.clone(),
                None => {
                    let t = self.stream_tail(pending, stream)?;
                    tails.insert(stream, t.clone());
                    t
                }
            };
            let actual = tail.map(|t| t.revision);
            let ok = match expected {
                ExpectedRevision::Any => true,
                ExpectedRevision::NoStream => actual.is_none(),
                ExpectedRevision::StreamExists => actual.is_some(),
                ExpectedRevision::Exact(r) => actual == Some(*r),
            };
            if !ok {
                return Err(LogError::WrongExpectedRevision {
                    stream: stream.clone(),
                    expected: *expected,
                    actual,
                });
            }
        }
        // Encode everything first; stage only if all records are acceptable.
        // Index chunks this append writes, by (stream, chunk number).
        let mut chunks: HashMap<(&str, u64), Vec<u8>> = HashMap::new();
        let mut staged = Vec::with_capacity(req.events.len());
        let mut prev = head.hash;
        for (i, ev) in req.events.iter().enumerate() {
            if ev.stream.is_empty() || ev.stream.len() > MAX_STREAM_NAME || ev.stream.contains('\0')
            {
                return Err(LogError::InvalidStream(ev.stream.clone()));
            }
            let current = match tails.remove(ev.stream.as_str()) {
                Some(t) => t,
                None => self.stream_tail(pending, &ev.stream)?,
            };
            let position = head.count + i as u64;
            let (revision, mut chunk) = match current {
                Some(t) if (t.revision + 1) % CHUNK != 0 => (t.revision + 1, t.chunk),
                Some(t) => (t.revision + 1, Vec::new()),
                None => (0, Vec::new()),
            };
            chunk.extend_from_slice(&position.to_be_bytes());
            chunks.insert((&ev.stream, revision / CHUNK), chunk.clone());
            tails.insert(&ev.stream, Some(StreamTail { revision, chunk }));
            let bytes = record::encode(&Encode {
                position,
                prev_hash: &prev,
                event_id: ev.event_id,
                stream: &ev.stream,
                stream_revision: revision,
                event_type: &ev.event_type,
                schema_version: ev.schema_version,
                recorded_at,
                recorded_by: &req.recorded_by,
                correlation_id: req.correlation_id.as_deref(),
                causation_id: req.causation_id.as_deref(),
                payload: &ev.payload,
            })?;
            let hash = record::sha256(&bytes);
            staged.push(RecordedEvent {
                position,
                prev_hash: prev,
                hash,
                event_id: ev.event_id,
                stream: ev.stream.clone(),
                stream_revision: revision,
                event_type: ev.event_type.clone(),
                schema_version: ev.schema_version,
                recorded_at,
                recorded_by: req.recorded_by.clone(),
                correlation_id: req.correlation_id.clone(),
                causation_id: req.causation_id.clone(),
                payload: ev.payload.clone(),
                stored: bytes,
            });
            prev = hash;
        }
        let appended: Vec<Appended> = staged
            .iter()
            .map(|rec| Appended {
                event_id: rec.event_id,
                stream: rec.stream.clone(),
                stream_revision: rec.stream_revision,
                position: rec.position,
                hash: rec.hash,
            })
            .collect();
        let idempotency = match &req.idempotency {
            Some(idem) => {
                let rec = IdempotencyRecord {
                    content_hash: idem.content_hash,
                    recorded_at,
                    events: appended.clone(),
                };
                let bytes =
                    serde_json::to_vec(&rec).map_err(|e| LogError::Encode(e.to_string()))?;
                Some((idem.key.clone(), rec, bytes))
            }
            None => None,
        };
        for rec in &staged {
            batch.insert(
                &event_key(rec.position),
                event_value(&rec.hash, &rec.stored),
            );
        }
        for ((stream, chunk_no), chunk) in chunks {
            batch.insert(stream_chunk_key(stream, chunk_no), chunk);
        }
        for (stream, tail) in tails {
            if let Some(tail) = tail {
                pending.streams.insert(stream.to_string(), tail);
            }
        }
        head.count += staged.len() as u64;
        head.hash = prev;
        if let Some((k, rec, bytes)) = idempotency {
            batch.insert(idempotency_key(&k), bytes);
            pending.idempotency.insert(k, rec);
        }
        Ok((
            AppendOutcome {
                events: appended,
                recorded_at,
                deduplicated: false,
            },
            staged,
        ))
    }
}

/// Where an append's answer goes.
type Reply = oneshot::Sender<Result<AppendOutcome, LogError>>;

/// A group applied to sled, waiting for its sync and its answers.
struct StagedGroup {
    /// Each with when its append reached the log.
    replies: Vec<(Reply, AppendOutcome, Instant)>,
    events: Vec<RecordedEvent>,
    /// The head after this group.
    head: Head,
}

/// Makes staged groups durable, publishes them, and answers their appends, strictly in order.
struct Syncer {
    shared: Arc<Shared>,
    db: sled::Db,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<std::ffi::OsString>,
    durability: Durability,
    observer: Option<Arc<dyn CommitObserver>>,
}

impl Shared {
    fn poison(&self, e: &LogError) {
        tracing::error!(error = %e, "append failed; the log refuses writes until restart");
        self.poisoned.store(true, Ordering::Release);
        // Wake anyone waiting for durability so they see the refusal instead of hanging.
        self.durable_tx.send_modify(|_| {});
    }
}

impl Syncer {
    fn run(mut self, staged: std::sync::mpsc::Receiver<StagedGroup>) {
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
        // The writer is gone: leave sled synced for a clean reopen.
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "final sync failed");
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
            if let Err(e) = self.sync() {
                self.shared.poison(&e);
                return refuse(groups);
            }
            crate::metrics::observe_group(
                groups.iter().map(|g| g.events.len()).sum(),
                groups.iter().map(|g| g.replies.len()).sum(),
            );
        }
        for group in groups {
            if !group.events.is_empty() {
                *self.shared.head.lock().unwrap_or_else(|p| p.into_inner()) = group.head;
                self.shared
                    .durable
                    .store(group.head.count, Ordering::Release);
                crate::metrics::observe_committed(group.events.len(), group.head.count);
                if let Some(obs) = &self.observer {
                    obs.committed(&group.events);
                }
                self.shared.durable_tx.send_replace(group.head.count);
            }
            // Replays of earlier appends are answered here too: their originals were in earlier
            // groups, synced before this one.
            for (reply, outcome, received) in group.replies {
                crate::metrics::observe_append(received.elapsed());
                let _ = reply.send(Ok(outcome));
            }
        }
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if self.durability == Durability::Relaxed {
            return Ok(());
        }
        let started = Instant::now();
        self.db.flush()?;
        self.shared.data_file.sync_data()?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_new_blobs()?;
        crate::metrics::observe_fsync(started.elapsed());
        Ok(())
    }

    /// sled writes values it deems too big to separate blob files and never syncs them. Records are
    /// bounded so this should not happen; if it does, the blobs are synced here rather than lost.
    fn sync_new_blobs(&mut self) -> Result<(), LogError> {
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut any = false;
        for entry in entries {
            let entry = entry?;
            if self.synced_blobs.insert(entry.file_name()) {
                File::open(entry.path())?.sync_all()?;
                any = true;
            }
        }
        if any {
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        Ok(())
    }
}
