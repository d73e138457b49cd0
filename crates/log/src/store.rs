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
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::layout::{
    be_u64, cursor_key, frames, head_value, idempotency_key, page_first, page_key, parse_head,
    PageBuilder, CURSOR, FRONTIER_KEY, HEAD_KEY, LAYOUT_KEY, LAYOUT_VERSION,
};
use super::record::{self, Encode, Hash, IdempotencyMark, RecordedEvent, GENESIS_HASH};
use super::snapshot::{self, Snapshot};
use super::tiles::{stage_tree, TileNodes, Tiles};
use super::LogError;
use crate::observe::{LogMetrics, NoMetrics};
use claims_ledger_core::codec::{Put as _, Reader};
use claims_ledger_core::merkle::{self, Frontier};

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

impl From<&RecordedEvent> for Appended {
    fn from(rec: &RecordedEvent) -> Appended {
        Appended {
            event_id: rec.event_id,
            stream: rec.stream.clone(),
            stream_revision: rec.stream_revision,
            position: rec.position,
            hash: rec.hash,
        }
    }
}

/// The answer to an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub events: Vec<Appended>,
    pub recorded_at: DateTime<Utc>,
    /// True when this replays an earlier append with the same idempotency key.
    pub deduplicated: bool,
}

/// Stored under `i` + key: enough to answer a retry exactly as the original. Derived from the log
/// (the append's first event carries an [`IdempotencyMark`]), so `import` can rebuild it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct IdempotencyRecord {
    #[serde(with = "hex::serde")]
    pub(super) content_hash: Hash,
    pub(super) recorded_at: DateTime<Utc>,
    pub(super) events: Vec<Appended>,
}

impl IdempotencyRecord {
    pub(super) fn to_bytes(&self) -> Result<Vec<u8>, LogError> {
        serde_json::to_vec(self).map_err(|e| LogError::Encode(e.to_string()))
    }

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

/// Told about every durable group, in log order, on the syncer thread, before any of the group's
/// appends is acknowledged. Keep it quick: it delays the acknowledgements. The events are shared, so
/// an observer can keep them without copying.
pub trait CommitObserver: Send + Sync {
    fn committed(&self, events: &[Arc<RecordedEvent>]);
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
    /// Where the log reports its work (see [`LogMetrics`]).
    pub metrics: Arc<dyn LogMetrics>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            durability: Durability::Fsync,
            max_group: 1024,
            merkle: true,
            metrics: Arc::new(NoMetrics),
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
    let db = open_sled(&sled::Config::new().path(dir).segment_size(16 << 20))?;
    Ok(db)
}

/// sled's message when another handle holds the directory's lock (sled 0.34, `config.rs`).
pub const SLED_LOCKED: &str = "could not acquire lock";

/// How long an open waits for a lock that is being released.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens `config`, waiting up to [`LOCK_WAIT`] while its directory is locked. sled lets go of the
/// lock from background threads some time after the last handle drops, so a reopen in the same
/// process (a restart, `verify` after a run) can briefly find it still held. A lock held by another
/// live process still fails, only later.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(e) if e.to_string().contains(SLED_LOCKED) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// The page holding position `pos`, if any: its first position and its bytes.
pub(crate) fn page_of(db: &sled::Db, pos: u64) -> Result<Option<(u64, sled::IVec)>, LogError> {
    let Some(item) = db.range(page_key(0)..=page_key(pos)).next_back() else {
        return Ok(None);
    };
    let (k, v) = item?;
    let first = page_first(&k).ok_or_else(|| LogError::Corrupt {
        position: pos,
        reason: format!("malformed page key {k:?}"),
    })?;
    Ok(Some((first, v)))
}

/// An event below the head that is not stored.
fn missing(position: u64) -> LogError {
    LogError::Corrupt {
        position,
        reason: "missing below the head".into(),
    }
}

/// A page whose bytes stop in the middle of the frame of `position`.
fn cut(position: u64) -> LogError {
    LogError::Corrupt {
        position,
        reason: "truncated page".into(),
    }
}

/// Reads the event at `pos`, checking its bytes against the hash stored with them.
fn read_event(db: &sled::Db, pos: u64) -> Result<RecordedEvent, LogError> {
    let (first, page) = page_of(db, pos)?.ok_or_else(|| missing(pos))?;
    let index = usize::try_from(pos - first).map_err(|_| missing(pos))?;
    let found = match frames(&page).nth(index) {
        Some(Some((hash, bytes))) => decode_frame(pos, hash, bytes),
        Some(None) => Err(cut(pos)),
        None => Err(missing(pos)),
    };
    found
}

/// Decodes one stored event, checking its bytes against the hash written with them.
fn decode_frame(pos: u64, hash: Hash, bytes: &[u8]) -> Result<RecordedEvent, LogError> {
    let rec = record::decode(pos, bytes.to_vec())?;
    if rec.hash != hash {
        return Err(LogError::Corrupt {
            position: pos,
            reason: "stored bytes do not match the hash written with them".into(),
        });
    }
    Ok(rec)
}

/// Visits the stored events in `[from, end)` in position order (or `(.., from]` downwards when
/// `backwards`, ignoring `end`) until `visit` returns false. Pages must follow each other without
/// gaps; a missing or cut page is reported as corruption, never skipped.
fn scan_events(
    db: &sled::Db,
    from: u64,
    end: u64,
    backwards: bool,
    mut visit: impl FnMut(RecordedEvent) -> bool,
) -> Result<(), LogError> {
    if backwards {
        // Each page must end where the page after it (seen just before) starts.
        let mut next_first: Option<u64> = None;
        for item in db.range(page_key(0)..=page_key(from)).rev() {
            let (k, v) = item?;
            let first = page_first(&k).ok_or_else(|| missing(from))?;
            let mut page = Vec::new();
            for (i, frame) in frames(&v).enumerate() {
                page.push(frame.ok_or_else(|| cut(first + i as u64))?);
            }
            let page_end = first + page.len() as u64;
            match next_first {
                Some(next) if page_end != next => return Err(missing(page_end)),
                None if page_end <= from => return Err(missing(from)),
                _ => {}
            }
            next_first = Some(first);
            for (i, (hash, bytes)) in page.into_iter().enumerate().rev() {
                let pos = first + i as u64;
                if pos <= from && !visit(decode_frame(pos, hash, bytes)?) {
                    return Ok(());
                }
            }
        }
        return match next_first {
            Some(0) | None => Ok(()),
            Some(first) => Err(missing(first - 1)),
        };
    }
    scan_frames(db, from, end, |pos, hash, bytes| {
        Ok(visit(decode_frame(pos, hash, bytes)?))
    })
}

/// Visits the stored frames (position, stored hash, record bytes) in `[from, end)` in position order
/// until `visit` returns false. A missing or cut page is reported as corruption, never skipped.
fn scan_frames(
    db: &sled::Db,
    from: u64,
    end: u64,
    mut visit: impl FnMut(u64, Hash, &[u8]) -> Result<bool, LogError>,
) -> Result<(), LogError> {
    if from >= end {
        return Ok(());
    }
    let start = page_of(db, from)?.map_or(from, |(first, _)| first);
    let mut expected = start;
    for item in db.range(page_key(start)..page_key(end)) {
        let (k, v) = item?;
        let first = page_first(&k).ok_or_else(|| missing(expected))?;
        if first != expected {
            return Err(missing(expected));
        }
        for frame in frames(&v) {
            let (hash, bytes) = frame.ok_or_else(|| cut(expected))?;
            let pos = expected;
            expected += 1;
            if pos < from {
                continue;
            }
            if pos >= end || !visit(pos, hash, bytes)? {
                return Ok(());
            }
        }
    }
    if expected < end {
        return Err(missing(expected));
    }
    Ok(())
}

/// The stored frontier, extended over any events written without the tree (a log opened with
/// `merkle: false`) and synced, so every durable event is in the tree. Returns it with the partial
/// tiles of that size.
fn catch_up_tree(
    db: &sled::Db,
    data_file: &File,
    count: u64,
) -> Result<(Frontier, Tiles), LogError> {
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

/// Refuses a database written in another layout; marks a new one with this layout.
fn check_layout(db: &sled::Db) -> Result<(), LogError> {
    if let Some(reason) = layout_mismatch(db)? {
        return Err(LogError::Corrupt {
            position: 0,
            reason,
        });
    }
    if db.get(LAYOUT_KEY)?.is_none() {
        // Made durable by the first group's sync, or written again at the next open.
        db.insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes())?;
    }
    Ok(())
}

/// Why a database holding a log cannot be read by this binary, if it cannot: it was written in
/// another storage layout. An empty database (no head yet) fits any.
pub(crate) fn layout_mismatch(db: &sled::Db) -> Result<Option<String>, LogError> {
    let stored = db.get(LAYOUT_KEY)?;
    if stored.as_deref() == Some(&LAYOUT_VERSION.to_be_bytes()[..]) || db.get(HEAD_KEY)?.is_none() {
        return Ok(None);
    }
    // Layout 1 had no mark.
    let version = stored
        .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes))
        .unwrap_or(1);
    Ok(Some(format!(
        "the data directory uses storage layout {version}, this binary reads only layout \
         {LAYOUT_VERSION}; export it with the binary that wrote it and restore it with this one"
    )))
}

/// Each stream's positions, by revision.
pub(super) type StreamIndex = HashMap<String, Vec<u64>>;

/// File name of the stream index snapshot in the data directory.
pub const INDEX_SNAPSHOT: &str = "streams.snap";
/// v2: the binary body of [`encode_index`] (v1 was JSON, and is ignored: the open indexes the log).
pub const INDEX_SNAPSHOT_KIND: &str = "stream-index/v2";

/// The number of streams (u32), then each stream as its name (u16 length), its number of events
/// (u32) and their positions (u64 each).
fn encode_index<'a>(streams: impl ExactSizeIterator<Item = (&'a str, &'a [u64])>) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_u32(streams.len() as u32);
    for (name, positions) in streams {
        out.put_str16(name);
        out.put_u32(positions.len() as u32);
        for p in positions {
            out.put_u64(*p);
        }
    }
    out
}

fn decode_index(body: &[u8]) -> Result<StreamIndex, String> {
    let mut r = Reader::new(body);
    let streams = r.u32()? as usize;
    // Bounded by what is left (a stream takes at least 14 bytes), so a damaged count cannot ask for
    // a huge allocation.
    let mut index = StreamIndex::with_capacity(streams.min(body.len() / 14));
    for _ in 0..streams {
        let name = r.str16()?.to_string();
        let n = r.u32()? as usize;
        // Bounded by what is left, so a damaged count cannot ask for a huge allocation.
        let mut positions = Vec::with_capacity(n.min(body.len() / 8));
        for _ in 0..n {
            positions.push(r.u64()?);
        }
        if index.insert(name, positions).is_some() {
            return Err("a stream listed twice".into());
        }
    }
    if !r.is_empty() {
        return Err("data after the last stream".into());
    }
    Ok(index)
}

/// The stream index of the snapshot in `dir` and the event count it covers, if it is usable for the
/// log in `db` of `count` events (see `snapshot`); an empty index and 0 otherwise.
fn index_snapshot(dir: &Path, db: &sled::Db, count: u64) -> (StreamIndex, u64) {
    match read_index_snapshot(dir, db, count) {
        Ok(Some(found)) => found,
        Ok(None) => (HashMap::new(), 0),
        Err(reason) => {
            tracing::warn!(%reason, "stream index snapshot ignored; indexing the whole log");
            (HashMap::new(), 0)
        }
    }
}

/// The stream index snapshot in `dir` with the event count it covers: `Ok(None)` if there is none,
/// `Err(why)` if the log in `db` of `count` events cannot use it. `verify` checks what it maps.
pub(super) fn read_index_snapshot(
    dir: &Path,
    db: &sled::Db,
    count: u64,
) -> Result<Option<(StreamIndex, u64)>, String> {
    let Some(snap) = matching_snapshot(dir, db, count, INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND)? else {
        return Ok(None);
    };
    let index = decode_index(&snap.body).map_err(|e| format!("undecodable: {e}"))?;
    // Every position below its count, once: a cheap check that it is what it claims to be.
    let total: usize = index.values().map(Vec::len).sum();
    if total as u64 != snap.count || index.values().flatten().any(|p| *p >= snap.count) {
        return Err("its positions do not cover its count".into());
    }
    Ok(Some((index, snap.count)))
}

/// The snapshot `file` (of `kind`) in `dir`: `Ok(None)` if there is none, `Err(why)` if it is
/// unreadable or the log in `db` of `count` events does not hold exactly the prefix it names.
fn matching_snapshot(
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

/// Extends `streams`, the index of the first `from` events, to the first `count`, from the records
/// themselves. Reads only each record's stream and revision: hashes and links are `verify`'s to check.
fn index_streams(
    db: &sled::Db,
    mut streams: StreamIndex,
    from: u64,
    count: u64,
) -> Result<StreamIndex, LogError> {
    scan_frames(db, from, count, |pos, _, bytes| {
        let (stream, revision) = record::stream_of(pos, bytes)?;
        let positions = streams.entry(stream).or_default();
        if revision != positions.len() as u64 {
            return Err(LogError::Corrupt {
                position: pos,
                reason: format!(
                    "stream revision {revision} where {} was expected",
                    positions.len()
                ),
            });
        }
        positions.push(pos);
        Ok(true)
    })?;
    Ok(streams)
}

fn proof_error(e: merkle::ProofRequestError<LogError>) -> LogError {
    match e {
        merkle::ProofRequestError::Store(e) => e,
        other => LogError::ProofRequest(other.to_string()),
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
    /// The data directory, for snapshots.
    dir: PathBuf,
    /// Events whose stream index came from the snapshot at open.
    index_from_snapshot: u64,
    /// Each stream's positions (index = revision), including those of groups not yet durable:
    /// readers drop those. Only the writer changes it.
    streams: RwLock<StreamIndex>,
    metrics: Arc<dyn LogMetrics>,
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
        check_layout(&db)?;
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
        let (frontier, tiles) = if options.merkle {
            catch_up_tree(&db, &data_file, head.count)?
        } else {
            (Frontier::new(), Tiles::default())
        };
        let indexing = Instant::now();
        let (streams, from) = index_snapshot(dir, &db, head.count);
        let streams = index_streams(&db, streams, from, head.count)?;
        tracing::info!(
            events = head.count,
            from_snapshot = from,
            streams = streams.len(),
            took_ms = indexing.elapsed().as_millis() as u64,
            "stream index rebuilt from the log"
        );
        let (durable_tx, _) = watch::channel(head.count);
        options.metrics.opened(head.count);
        for item in db.scan_prefix([CURSOR]) {
            let (k, v) = item?;
            if let (Ok(name), Some(p)) = (std::str::from_utf8(&k[1..]), be_u64(&v)) {
                options.metrics.cursor(name, Some(p));
            }
        }
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
            dir: dir.to_path_buf(),
            index_from_snapshot: from,
            streams: RwLock::new(streams),
            metrics: options.metrics.clone(),
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
            tiles,
            last_recorded,
            options,
        };
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run(rx, syncer))?;
        Ok(EventLog { shared, tx })
    }

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

    /// Events whose stream index the open took from the snapshot (0: indexed from the start).
    pub fn index_from_snapshot(&self) -> u64 {
        self.shared.index_from_snapshot
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Writes the stream index of the durable events to the data directory, so that the next open
    /// indexes only the events after them. Returns the event count it covers. Correct at any time;
    /// meant for shutdown, since it holds the index for the writer for the length of the encoding.
    pub fn save_index_snapshot(&self) -> Result<u64, LogError> {
        let count = self.durable_count();
        let body = {
            let index = self
                .shared
                .streams
                .read()
                .unwrap_or_else(|p| p.into_inner());
            // Positions at or past `count` belong to groups not yet durable.
            let durable: Vec<(&str, &[u64])> = index
                .iter()
                .filter_map(|(s, p)| {
                    let n = p.partition_point(|pos| *pos < count);
                    (n > 0).then(|| (s.as_str(), &p[..n]))
                })
                .collect();
            encode_index(durable.into_iter())
        };
        self.save_snapshot(INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND, count, body)?;
        Ok(count)
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
        if !backwards && from >= end {
            return Ok(out);
        }
        scan_events(
            &self.shared.db,
            if backwards { from.min(end - 1) } else { from },
            end,
            backwards,
            |e| {
                out.push(e);
                out.len() < max
            },
        )?;
        Ok(out)
    }

    /// The positions of a stream's durable events, in revision order (index = revision).
    fn stream_positions(&self, stream: &str) -> Result<Vec<u64>, LogError> {
        let durable = self.durable_count();
        let mut positions = self
            .shared
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
            .cloned()
            .unwrap_or_default();
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
            .map(|rev| {
                let position = positions[rev as usize];
                let rec = read_event(&self.shared.db, position)?;
                // The index is derived (possibly from a snapshot): never serve what it gets wrong.
                if rec.stream != stream || rec.stream_revision != rev {
                    return Err(LogError::Corrupt {
                        position,
                        reason: format!(
                            "the stream index maps {stream} revision {rev} here, but the event is \
                             {} revision {}; stop the server, delete {INDEX_SNAPSHOT} and restart",
                            rec.stream, rec.stream_revision
                        ),
                    });
                }
                Ok(rec)
            })
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

    /// Named subscribers and their acknowledged positions, in name order: those after `after`, at
    /// most `limit`.
    pub fn cursors(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, LogError> {
        let start = match after {
            // The smallest key above `after`'s own.
            Some(name) => {
                let mut k = cursor_key(name);
                k.push(0);
                k
            }
            None => vec![CURSOR],
        };
        let mut out = Vec::new();
        for item in self.shared.db.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if k.first() != Some(&CURSOR) {
                break;
            }
            let corrupt = |reason: String| LogError::Corrupt {
                position: 0,
                reason,
            };
            let name = String::from_utf8(k[1..].to_vec())
                .map_err(|_| corrupt(format!("a subscription cursor key {k:?} is not UTF-8")))?;
            let position = be_u64(&v)
                .ok_or_else(|| corrupt(format!("the cursor of {name:?} is unreadable")))?;
            out.push((name, position));
        }
        Ok(out)
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
        let stored = tokio::task::spawn_blocking(move || {
            let stored = shared.db.update_and_fetch(&key, |old| {
                let old = old.and_then(be_u64).unwrap_or(0);
                Some(old.max(position).to_be_bytes().to_vec())
            })?;
            shared.db.flush()?;
            shared.data_file.sync_data()?;
            Ok(stored.and_then(|v| be_u64(&v)).unwrap_or(position))
        })
        .await
        .map_err(|_| LogError::Closed)?;
        if let Ok(p) = &stored {
            self.shared.metrics.cursor(name, Some(*p));
        }
        stored
    }

    /// Forgets a named subscriber's position. Returns whether it existed.
    pub async fn delete_cursor(&self, name: &str) -> Result<bool, LogError> {
        let shared = self.shared.clone();
        let key = cursor_key(name);
        let existed = tokio::task::spawn_blocking(move || {
            let existed = shared.db.remove(&key)?.is_some();
            shared.db.flush()?;
            shared.data_file.sync_data()?;
            Ok(existed)
        })
        .await
        .map_err(|_| LogError::Closed)?;
        if existed.is_ok() {
            self.shared.metrics.cursor(name, None);
        }
        existed
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
    /// The Merkle tree's right edge after the last staged event, and its partial tiles.
    frontier: Frontier,
    tiles: Tiles,
    last_recorded: Option<DateTime<Utc>>,
    options: LogOptions,
}

/// Idempotency records of a group not yet written: consulted before sled, so a retry within the same
/// group sees its original.
#[derive(Default)]
struct Pending {
    idempotency: HashMap<String, IdempotencyRecord>,
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
            let mut pages = PageBuilder::new();
            for e in &group.events {
                pages.push(e.position, &e.hash, &e.stored);
            }
            pages.stage(&mut batch);
            batch.insert(HEAD_KEY, head_value(head.count, &head.hash));
            let tree = self.options.merkle.then(|| {
                let leaves = group.events.iter().map(|e| merkle::leaf_hash(&e.stored));
                stage_tree(&self.frontier, &self.tiles, leaves, &mut batch)
            });
            if let Err(e) = self.db.apply_batch(batch) {
                self.shared.poison(&e.into());
                for (reply, _, _) in group.replies.drain(..) {
                    let _ = reply.send(Err(LogError::Poisoned));
                }
                group.events.clear();
                return group;
            }
            self.head = head;
            if let Some((frontier, tiles)) = tree {
                self.frontier = frontier;
                self.tiles = tiles;
            }
            self.last_recorded = Some(recorded_at);
            group.head = head;
        }
        group
    }

    /// The number of events of each of `streams` staged so far (durable or not).
    fn stream_counts<'a>(&self, streams: impl Iterator<Item = &'a str>) -> HashMap<&'a str, u64> {
        let index = self
            .shared
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner());
        streams
            .map(|s| (s, index.get(s).map_or(0, |p| p.len() as u64)))
            .collect()
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
        // Each stream's event count before this append; events below advance it.
        let mut counts = self.stream_counts(
            req.expectations
                .iter()
                .map(|(s, _)| s.as_str())
                .chain(req.events.iter().map(|e| e.stream.as_str())),
        );
        for (stream, expected) in &req.expectations {
            let actual = counts.get(stream.as_str()).and_then(|c| c.checked_sub(1));
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
        let mark = match &req.idempotency {
            Some(idem) => Some(IdempotencyMark {
                key: idem.key.clone(),
                content_hash: idem.content_hash,
                events: u32::try_from(req.events.len()).map_err(|_| {
                    LogError::Encode(format!("{} events in one append", req.events.len()))
                })?,
            }),
            None => None,
        };
        // Encode everything first; stage only if all records are acceptable.
        let mut staged = Vec::with_capacity(req.events.len());
        let mut prev = head.hash;
        for (i, ev) in req.events.iter().enumerate() {
            if ev.stream.is_empty() || ev.stream.len() > MAX_STREAM_NAME || ev.stream.contains('\0')
            {
                return Err(LogError::InvalidStream(ev.stream.clone()));
            }
            let position = head.count + i as u64;
            let count = counts.entry(ev.stream.as_str()).or_default();
            let revision = *count;
            *count += 1;
            // The append's idempotency goes with its first event only.
            let mark = if i == 0 { mark.as_ref() } else { None };
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
                idempotency: mark,
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
                idempotency: mark.cloned(),
                payload: ev.payload.clone(),
                stored: bytes,
            });
            prev = hash;
        }
        let appended: Vec<Appended> = staged.iter().map(Appended::from).collect();
        let idempotency = match &req.idempotency {
            Some(idem) => {
                let rec = IdempotencyRecord {
                    content_hash: idem.content_hash,
                    recorded_at,
                    events: appended.clone(),
                };
                let bytes = rec.to_bytes()?;
                Some((idem.key.clone(), rec, bytes))
            }
            None => None,
        };
        // Accepted: later appends (of this group too) see these revisions. Readers see them only
        // once durable; if this group never becomes durable, the log is poisoned and stops.
        {
            let mut index = self
                .shared
                .streams
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for rec in &staged {
                match index.get_mut(rec.stream.as_str()) {
                    Some(positions) => positions.push(rec.position),
                    None => {
                        index.insert(rec.stream.clone(), vec![rec.position]);
                    }
                }
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
            self.shared.metrics.synced_group(
                groups.iter().map(|g| g.events.len()).sum(),
                groups.iter().map(|g| g.replies.len()).sum(),
            );
        }
        for StagedGroup {
            replies,
            events,
            head,
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

    fn sync(&mut self) -> Result<(), LogError> {
        if self.durability == Durability::Relaxed {
            return Ok(());
        }
        let started = Instant::now();
        self.db.flush()?;
        self.shared.data_file.sync_data()?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_new_blobs()?;
        self.shared.metrics.synced(started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_index_body_round_trips_and_refuses_damage() {
        let index: StreamIndex = [
            ("party-p", vec![0, 4, 9]),
            ("Росси́я", vec![1]),
            ("e", vec![]),
        ]
        .into_iter()
        .map(|(s, p)| (s.to_string(), p))
        .collect();
        let body = encode_index(index.iter().map(|(s, p)| (s.as_str(), p.as_slice())));
        assert_eq!(decode_index(&body), Ok(index));
        assert!(decode_index(&body[..body.len() - 1]).is_err());
        let mut more = body.clone();
        more.push(0);
        assert!(decode_index(&more).is_err());
        // A count of streams far beyond the bytes: refused, without allocating for it.
        let mut huge = body.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_index(&huge).is_err());
    }

    /// A directory written by the one-key-per-event layout (a head but no layout mark) is refused
    /// with a message that says what to do, rather than misread.
    #[test]
    fn a_directory_of_another_layout_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open_db(dir.path()).expect("open");
            db.insert(HEAD_KEY, head_value(3, &[1u8; 32]))
                .expect("insert");
            db.flush().expect("flush");
        }
        let err = match EventLog::open(dir.path(), LogOptions::default(), None) {
            Ok(_) => panic!("a layout-1 directory opened"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("layout 1"), "{err}");
        assert!(err.contains("export"), "{err}");
        // `verify` says it cannot check it, rather than reporting a broken log.
        let db = open_db(dir.path()).expect("reopen");
        match crate::verify::verify_db(&db) {
            Err(e) => assert!(e.to_string().contains("layout 1"), "{e}"),
            Ok(r) => panic!("verify read a layout-1 directory: {r:?}"),
        }
    }

    /// A reopen waits for a handle that is letting go of the directory, instead of failing the
    /// way a restart in the same process sometimes did.
    #[test]
    fn an_open_waits_for_the_lock_to_be_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open_db(dir.path()).expect("open");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let started = Instant::now();
        let db = open_db(dir.path()).expect("reopen once released");
        assert!(started.elapsed() >= Duration::from_millis(250));
        releaser.join().expect("releaser");
        db.insert(b"k", b"v").expect("the reopened db writes");
    }

    /// Pages are found from any position inside them, and scans in both directions cross page
    /// boundaries without skipping or repeating an event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_found_inside_pages_in_both_directions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LogOptions {
            durability: Durability::Relaxed,
            ..LogOptions::default()
        };
        let log = EventLog::open(dir.path(), options, None).expect("open");
        // Appends of 1, 2, 3 ... events: pages of different lengths.
        let mut n = 0u64;
        for size in 1..=12u64 {
            let events = (0..size)
                .map(|i| NewEvent {
                    event_id: Uuid::new_v4(),
                    stream: format!("s-{}", (n + i) % 5),
                    event_type: "T".into(),
                    schema_version: 1,
                    payload: RawValue::from_string(format!("{{\"n\":{}}}", n + i)).expect("json"),
                })
                .collect();
            log.append(AppendRequest {
                events,
                expectations: Vec::new(),
                idempotency: None,
                recorded_by: "test".into(),
                correlation_id: None,
                causation_id: None,
            })
            .await
            .expect("append");
            n += size;
        }
        for pos in 0..n {
            let e = log.get(pos).expect("read").expect("present");
            assert_eq!(e.position, pos);
            assert_eq!(e.payload.get(), format!("{{\"n\":{pos}}}"));
        }
        let positions = |events: Result<Vec<RecordedEvent>, LogError>| -> Vec<u64> {
            events.expect("read").iter().map(|e| e.position).collect()
        };
        assert_eq!(
            positions(log.read_all(17, false, 30)),
            (17..47).collect::<Vec<_>>()
        );
        assert_eq!(
            positions(log.read_all(40, true, 25)),
            (16..=40).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            positions(log.read_stream("s-3", 0, false, 100)),
            (0..n).filter(|p| p % 5 == 3).collect::<Vec<_>>()
        );
    }
}
