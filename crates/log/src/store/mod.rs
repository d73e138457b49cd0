//! The log on sled: one writer thread that validates and stages appends, and one syncer thread that
//! makes them durable and answers them. The on-disk layout is described in `layout`. This module holds
//! the public API (the request and answer types, [`LogOptions`], [`EventLog`] and its open) and the
//! state the threads and readers share; each concern behind the API has its own submodule: `read`
//! (events by position and by stream), `index` (the stream index and its snapshot), `derived`
//! (snapshots of derived state and whether they fit the log), `tree` (the Merkle tree and its
//! proofs), `cursor` (subscriber positions), `writer` and `syncer` (the two threads of the append
//! path).
//!
//! Durability: the writer writes each group as one frame to the log's own write-ahead log (`wal`)
//! and applies it to sled in memory; the syncer makes the frame durable with one `fdatasync` of the
//! segment file before any append of the group is acknowledged, and only then makes the group
//! visible to readers. sled is never flushed on that path: a background flusher
//! (`wal::Pool::run_flusher`) flushes sled and syncs its data file when a segment fills, and only then
//! recycles the segment. At open, `recover` replays the frames sled does not hold durably. Group
//! commit is pipelined: while the syncer syncs group k, the writer checks and applies group k+1,
//! and appends arriving meanwhile share the next sync. If a sync fails the log refuses all further
//! writes until restart: after a failed fsync the kernel may have dropped the dirty pages, so
//! nothing written since can be trusted to be on disk.
//!
//! Fail closed: after recovery, the open compares the log with every durable record of its length
//! (`evidence`) and refuses a shorter one with [`LogError::ShorterLog`], unless the operator accepts
//! it ([`LogOptions::accept_shorter_log`]), which the log records as an event of its own.
mod cursor;
mod derived;
mod index;
mod read;
mod recover;
mod syncer;
mod tree;
mod writer;

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

use crate::evidence::{self, Evidence, ShorterLog};
use crate::layout::{
    be_u64, idempotency_key, parse_head, CURSOR, HEAD_KEY, LAYOUT_KEY, LAYOUT_MIGRATES,
    LAYOUT_VERSION,
};
use crate::observe::{LogMetrics, NoMetrics};
use crate::record::{Hash, RecordedEvent, GENESIS_HASH};
use crate::snapshot::{self, Snapshot};
use crate::tiles::Tiles;
use crate::wal::{self, Pool};
use crate::LogError;
use claims_ledger_core::merkle::Frontier;
pub(crate) use cursor::encode as cursor_value;
pub use cursor::{Cursor, CursorActor, CursorLimits};
use derived::matching_snapshot;
use index::{index_snapshot, index_streams};
pub(crate) use index::{read_index_snapshot, StreamIndex};
pub use index::{INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND};
pub(crate) use read::page_of;
use read::read_event;
use syncer::Syncer;
use tree::{catch_up_tree, stored_frontier};
use writer::Writer;

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
    /// Acknowledge once the group's frame is written and sled has the batch in memory, without the
    /// sync: a process crash loses nothing (the page cache survives it), but a power loss can lose
    /// acknowledged writes the system had not written out yet. For tests and bulk imports only.
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
    /// Where the log reports its work (see [`LogMetrics`]).
    pub metrics: Arc<dyn LogMetrics>,
    /// How many subscriber cursors may exist.
    pub cursor_limits: CursorLimits,
    /// Size of new write-ahead log segments; a segment is recycled once sled holds it durably.
    pub wal_segment_bytes: u64,
    /// Durable records of the log's length kept outside it (the server's projection checkpoint),
    /// compared at open with the log's own (see [`crate::evidence`]).
    pub evidence: Vec<Evidence>,
    /// Accept a log shorter than its durable records knowingly, instead of refusing to open it:
    /// the open logs the choice, appends it to the log (a [`crate::evidence::SHORTER_LOG_ACCEPTED`]
    /// event with the evidence and counts), then resets the records that no longer fit.
    pub accept_shorter_log: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            durability: Durability::Fsync,
            max_group: 1024,
            metrics: Arc::new(NoMetrics),
            cursor_limits: CursorLimits::default(),
            wal_segment_bytes: wal::DEFAULT_SEGMENT_BYTES,
            evidence: Vec::new(),
            accept_shorter_log: false,
        }
    }
}

/// Opens sled the same way everywhere (server, verify, tests), so its segment size stays fixed.
pub fn open_db(dir: &Path) -> Result<sled::Db, LogError> {
    create_private_dir(dir)?;
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
///
/// The directory is created 0700 and, once sled has created its files, everything in it is made
/// private with [`make_private`] (sled creates its files with the process's umask). A mode that
/// cannot be changed is only logged here, so that offline tools still open a copy they do not own;
/// the server checks the data directory strictly before it opens anything.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let dir = config.get_path();
    create_private_dir(&dir)?;
    let deadline = Instant::now() + LOCK_WAIT;
    let db = loop {
        match config.open() {
            Err(e) if e.to_string().contains(SLED_LOCKED) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => break result?,
        }
    };
    if let Err(e) = make_private(&dir) {
        tracing::warn!(error = %e, "data files are accessible to group or others");
    }
    Ok(db)
}

/// Mode of the data directory and of every directory in it.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file in the data directory.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode [`PRIVATE_DIR_MODE`], whatever the umask.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Takes every permission of group and others away from `dir` and everything below it (directories
/// end up 0700, files 0600), and logs a warning for each path it had to change: the ledger's data
/// must not be readable past the roles. Symbolic links are neither followed nor changed. Fails when a
/// mode cannot be changed (a file of another user, say), so that a server can refuse to start on
/// data it cannot make private. A missing `dir` is nothing to do. Returns the paths changed.
pub fn make_private(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut changed = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed meanwhile (a snapshot's temporary file renamed into place).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            let private = mode & 0o700;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(private)).map_err(
                |e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot make {} private (mode {mode:04o}): {e}",
                            path.display()
                        ),
                    )
                },
            )?;
            tracing::warn!(
                path = %path.display(),
                was = format!("{mode:04o}"),
                now = format!("{private:04o}"),
                "data file was accessible to group or others; made private"
            );
            changed.push(path.clone());
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

/// Refuses a database written in another layout; marks a new one with this layout.
fn check_layout(db: &sled::Db) -> Result<(), LogError> {
    if let Some(reason) = layout_mismatch(db)? {
        return Err(LogError::Corrupt {
            position: 0,
            reason,
        });
    }
    // The mark is written (or layout 2 migrated to 3) by `recover`, once the write-ahead log exists.
    Ok(())
}

/// Why a database holding a log cannot be read by this binary, if it cannot: it was written in
/// another storage layout. An empty database (no head yet) fits any.
pub(crate) fn layout_mismatch(db: &sled::Db) -> Result<Option<String>, LogError> {
    let stored = db.get(LAYOUT_KEY)?;
    // Layout 2 has the same keys and no write-ahead log: a writable open migrates it in place.
    if stored.as_deref() == Some(&LAYOUT_VERSION.to_be_bytes()[..])
        || stored.as_deref() == Some(&LAYOUT_MIGRATES.to_be_bytes()[..])
        || db.get(HEAD_KEY)?.is_none()
    {
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

/// Checks the write-ahead log of a directory opened without replaying it (read-only opens and
/// `verify`): its frames must agree with sled, and none may be missing from sled, because a reader
/// that cannot replay them would see a shorter log. Then compares the log with its other durable
/// records of its length (see `evidence`), and refuses a shorter one.
pub(crate) fn check_wal(dir: &Path, db: &sled::Db) -> Result<(), LogError> {
    let scan = wal::scan(&wal::wal_dir(dir))?;
    let head = stored_head(db)?;
    let logged = recover::replay(db, &scan, false)?;
    if logged.count > head.count {
        return Err(LogError::Corrupt {
            position: head.count,
            reason: format!(
                "events {}..{} are in the write-ahead log but not yet in the store (the server \
                 stopped without closing the log); start the server once to replay them, then \
                 check again",
                head.count, logged.count
            ),
        });
    }
    // An event that does not read is left to `verify`'s walk, which names its position.
    let hash_at = |p: u64| Ok(read_event(db, p).ok().map(|e| e.hash));
    let records = evidence::Recovered {
        dir,
        db,
        count: head.count,
        hash_at: &hash_at,
    };
    match evidence::gather(&records, &[])? {
        Some(short) => Err(LogError::ShorterLog(Box::new(short))),
        None => Ok(()),
    }
}

/// For a writable open: reads the head event, which must be there with the head's hash, then
/// compares the log with every durable record of its length (see `evidence`).
fn compare_evidence(
    dir: &Path,
    db: &sled::Db,
    head: Head,
    external: &[Evidence],
) -> Result<Option<ShorterLog>, LogError> {
    if let Some(last) = head.count.checked_sub(1) {
        if read_event(db, last)?.hash != head.hash {
            return Err(LogError::Corrupt {
                position: last,
                reason: "the last event is not the one the head names".into(),
            });
        }
    }
    let hash_at = |p: u64| read_event(db, p).map(|e| Some(e.hash));
    evidence::gather(
        &evidence::Recovered {
            dir,
            db,
            count: head.count,
            hash_at: &hash_at,
        },
        external,
    )
}

/// The stored head: the event count and the hash of the last event.
fn stored_head(db: &sled::Db) -> Result<Head, LogError> {
    match db.get(HEAD_KEY)? {
        Some(v) => {
            let (count, hash) = parse_head(&v).ok_or_else(|| LogError::Corrupt {
                position: 0,
                reason: "unreadable head record".into(),
            })?;
            Ok(Head { count, hash })
        }
        None => Ok(Head {
            count: 0,
            hash: GENESIS_HASH,
        }),
    }
}

/// The stream index of the first `count` events, from the snapshot in `dir` where it fits and from
/// the records after it; returns it with the event count the snapshot covered.
fn load_index(dir: &Path, db: &sled::Db, count: u64) -> Result<(StreamIndex, u64), LogError> {
    let indexing = Instant::now();
    let (streams, from) = index_snapshot(dir, db, count);
    let streams = index_streams(db, streams, from, count)?;
    tracing::info!(
        events = count,
        from_snapshot = from,
        streams = streams.len(),
        took_ms = indexing.elapsed().as_millis() as u64,
        "stream index rebuilt from the log"
    );
    Ok((streams, from))
}

/// How often the background flusher looks for full segments even when not woken.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// sled's `flush()` only calls `sync_file_range`; the data file's `fdatasync` makes it durable.
/// Never on the acknowledgement path.
/// Then raises the mark of durable events (see `evidence`) to the head read before the flush.
fn make_sled_durable(db: &sled::Db, data_file: &File, dir: &Path) -> Result<(), LogError> {
    // Read first: the flush covers at least what was applied before it began.
    let head = stored_head(db)?;
    db.flush()?;
    data_file.sync_data()?;
    recover::sync_blobs(dir)?;
    evidence::raise_durable(dir, head.count, head.hash)
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
    /// `Some(leaves)` when opened read-only: the stored tree, which nothing extends, has this many
    /// leaves (fewer than the events if an older binary appended without it), and proofs stop there.
    /// `None` when the writer keeps the tree at the head.
    frozen_tree: Option<u64>,
    /// The data directory, for snapshots.
    dir: PathBuf,
    /// Events whose stream index came from the snapshot at open.
    index_from_snapshot: u64,
    /// Each stream's positions (index = revision), including those of groups not yet durable:
    /// readers drop those. Only the writer changes it.
    streams: RwLock<StreamIndex>,
    metrics: Arc<dyn LogMetrics>,
    /// Serializes cursor changes, with their limits.
    cursors: cursor::CursorGuard,
    /// The write-ahead log's segments awaiting recycling; `None` when opened read-only.
    wal_pool: Option<Arc<Pool>>,
    /// The largest signed tree size recorded by this process (see `record_signed_checkpoint`).
    signed: AtomicU64,
}

/// The append-only, hash-chained event log. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    shared: Arc<Shared>,
    /// The writer thread's queue; `None` for a log opened with [`EventLog::open_read_only`].
    tx: Option<Arc<WriterHandle>>,
}

/// The writer's queue and thread. When the last handle goes, the queue closes and the drop waits
/// for the writer to finish: it makes sled durable and empties the write-ahead log, which must
/// happen before the process exits, or the next offline `verify` finds frames to replay.
struct WriterHandle {
    /// Taken by [`EventLog::close`] or the drop.
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WriterHandle {
    /// Closes the queue and waits for the writer to finish what it holds and close the log.
    fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.close();
    }
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
        let wal = recover::recover(dir, &db, &data_file, options.wal_segment_bytes)?;
        let head = stored_head(&db)?;
        let accepted = match compare_evidence(dir, &db, head, &options.evidence) {
            Ok(None) => None,
            Ok(Some(short)) if options.accept_shorter_log => {
                tracing::error!(
                    recovered = short.recovered,
                    expected = short.expected(),
                    evidence = ?short.evidence,
                    unreadable = ?short.unreadable,
                    "the operator accepts a log shorter than its durable records; the choice is \
                     recorded in the log"
                );
                Some(short)
            }
            Ok(Some(short)) => {
                // Nothing was written past recovery: leave the write-ahead log empty.
                let _ = wal.close();
                return Err(LogError::ShorterLog(Box::new(short)));
            }
            Err(e) => {
                let _ = wal.close();
                return Err(e);
            }
        };
        if options.accept_shorter_log && accepted.is_none() {
            tracing::info!("the log is as long as its durable records show: nothing to accept");
        }
        let last_recorded = match head.count.checked_sub(1) {
            Some(pos) => Some(read_event(&db, pos)?.recorded_at),
            None => None,
        };
        let (frontier, tiles) = catch_up_tree(&db, &data_file, head.count)?;
        let (streams, from) = load_index(dir, &db, head.count)?;
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
            frozen_tree: None,
            dir: dir.to_path_buf(),
            index_from_snapshot: from,
            streams: RwLock::new(streams),
            metrics: options.metrics.clone(),
            cursors: cursor::CursorGuard::new(options.cursor_limits),
            wal_pool: Some(wal.pool.clone()),
            signed: AtomicU64::new(0),
        });
        let flusher = {
            let pool = wal.pool.clone();
            let db = db.clone();
            let data_file = shared.data_file.try_clone()?;
            let dir = dir.to_path_buf();
            std::thread::Builder::new()
                .name("log-flusher".into())
                .spawn(move || {
                    pool.run_flusher(FLUSH_INTERVAL, &|| make_sled_durable(&db, &data_file, &dir))
                })?
        };
        let (tx, rx) = mpsc::channel(options.max_group.max(1) * 4);
        let syncer = Syncer {
            shared: shared.clone(),
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
            wal: Some(wal),
            flusher: Some(flusher),
        };
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run(rx, syncer))?;
        let log = EventLog {
            shared,
            tx: Some(Arc::new(WriterHandle {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            })),
        };
        if let Some(short) = accepted {
            log.record_acceptance(short)?;
        }
        Ok(log)
    }

    /// Appends the operator's acceptance of a shorter log to the system stream and waits for it to
    /// be durable; only then resets the records that showed a longer log (see `evidence`), so a
    /// crash in between leaves them to refuse the next open, never an unrecorded acceptance.
    fn record_acceptance(&self, short: ShorterLog) -> Result<(), LogError> {
        let payload = serde_json::to_string(&short)
            .and_then(RawValue::from_string)
            .map_err(|e| LogError::Encode(e.to_string()))?;
        let req = AppendRequest {
            events: vec![NewEvent {
                event_id: Uuid::new_v4(),
                stream: evidence::SYSTEM_STREAM.into(),
                event_type: evidence::SHORTER_LOG_ACCEPTED.into(),
                schema_version: 1,
                payload,
            }],
            expectations: Vec::new(),
            idempotency: None,
            recorded_by: "operator override at open".into(),
            correlation_id: None,
            causation_id: None,
        };
        // The open may run inside an async runtime, where blocking on the answer is not allowed.
        let log = self.clone();
        let appended = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(LogError::from)?
                .block_on(log.send(req))
        })
        .join()
        .map_err(|_| LogError::Closed)??;
        let (db, data_file, dir) = (&self.shared.db, &self.shared.data_file, &self.shared.dir);
        make_sled_durable(db, data_file, dir)?;
        let head = self.head();
        let changed =
            evidence::reset_after_acceptance(dir, db, short.recovered, (head.count, head.hash))?;
        make_sled_durable(db, data_file, dir)?;
        for item in db.scan_prefix([CURSOR]) {
            let (k, v) = item?;
            if let (Ok(name), Some(p)) = (std::str::from_utf8(&k[1..]), be_u64(&v)) {
                self.shared.metrics.cursor(name, Some(p));
            }
        }
        tracing::warn!(
            position = appended.events.first().map(|e| e.position),
            recovered = short.recovered,
            expected = short.expected(),
            ?changed,
            "shorter log accepted: recorded in the log, and the records that showed more reset"
        );
        Ok(())
    }

    /// Opens the log in `dir` for reading only, for offline checks: the log writes nothing (no
    /// layout mark, no tree catch-up, no directory sync) and starts no thread, and a lagging Merkle
    /// tree stays as it is (proofs stop where it stops). Appends, cursor changes and snapshots are
    /// refused with [`LogError::ReadOnly`].
    pub fn open_read_only(dir: &Path) -> Result<EventLog, LogError> {
        let db = open_db(dir)?;
        if let Some(reason) = layout_mismatch(&db)? {
            return Err(LogError::Corrupt {
                position: 0,
                reason,
            });
        }
        let data_file = File::open(dir.join("db"))?;
        check_wal(dir, &db)?;
        let head = stored_head(&db)?;
        let leaves = stored_frontier(&db)?.size().min(head.count);
        let (streams, from) = load_index(dir, &db, head.count)?;
        let (durable_tx, _) = watch::channel(head.count);
        let shared = Arc::new(Shared {
            db,
            durable: AtomicU64::new(head.count),
            durable_tx,
            head: Mutex::new(head),
            poisoned: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            staging: AtomicBool::new(false),
            data_file,
            frozen_tree: Some(leaves),
            dir: dir.to_path_buf(),
            index_from_snapshot: from,
            streams: RwLock::new(streams),
            metrics: Arc::new(NoMetrics),
            cursors: cursor::CursorGuard::new(CursorLimits::default()),
            wal_pool: None,
            signed: AtomicU64::new(0),
        });
        Ok(EventLog { shared, tx: None })
    }

    /// The writer's queue: [`LogError::ReadOnly`] for a log opened without one, and
    /// [`LogError::Closed`] once it was closed.
    fn writer(&self) -> Result<mpsc::Sender<Job>, LogError> {
        let handle = self.tx.as_ref().ok_or(LogError::ReadOnly)?;
        let tx = handle.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.clone().ok_or(LogError::Closed)
    }

    /// Closes the log now, whatever other handles exist: waits for the appends already queued,
    /// then makes sled durable and empties the write-ahead log, as dropping the last handle does.
    /// Later appends get [`LogError::Closed`]; reads still work. A server calls it on every way
    /// out, since a handle left in a task that never ends would keep the log from closing. Blocks.
    pub fn close(&self) {
        if let Some(h) = &self.tx {
            h.close();
        }
    }

    /// Events whose stream index the open took from the snapshot (0: indexed from the start).
    pub fn index_from_snapshot(&self) -> u64 {
        self.shared.index_from_snapshot
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends atomically; resolves once the events are durable (per the configured durability).
    /// Streams starting with `$` are the log's own ([`crate::evidence::SYSTEM_STREAM`]).
    pub async fn append(&self, req: AppendRequest) -> Result<AppendOutcome, LogError> {
        if let Some(e) = req.events.iter().find(|e| e.stream.starts_with('$')) {
            return Err(LogError::InvalidStream(e.stream.clone()));
        }
        self.send(req).await
    }

    /// Hands an append to the writer and waits for its answer.
    async fn send(&self, req: AppendRequest) -> Result<AppendOutcome, LogError> {
        let (reply, rx) = oneshot::channel();
        let received = Instant::now();
        self.writer()?
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

    /// Number of disk syncs made since the log was opened (each may cover many appends).
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Makes sled durable and recycles the write-ahead log segments it then covers, as the
    /// background flusher does when a segment fills. Returns how many segments were recycled.
    pub async fn checkpoint(&self) -> Result<usize, LogError> {
        let pool = self.shared.wal_pool.clone().ok_or(LogError::ReadOnly)?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            pool.recycle_retired(true, &|| {
                make_sled_durable(&shared.db, &shared.data_file, &shared.dir)
            })
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    /// Write-ahead log segments that are full and wait for sled to be made durable past them.
    pub fn wal_segments_retired(&self) -> usize {
        self.shared
            .wal_pool
            .as_ref()
            .map_or(0, |p| p.retired_count())
    }

    /// Recycled write-ahead log segments ready for reuse.
    pub fn wal_segments_free(&self) -> usize {
        self.shared.wal_pool.as_ref().map_or(0, |p| p.free_count())
    }

    /// Whether a failed sync has stopped all writes.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Records durably that a checkpoint of the tree of `size` events with `root` is about to be
    /// handed out, so that no later open serves a log shorter than a checkpoint someone holds (see
    /// `evidence`). Call it before giving the checkpoint away; it writes (one small file and one
    /// `fdatasync`) only for a size larger than any recorded before.
    pub fn record_signed_checkpoint(&self, size: u64, root: Hash) -> Result<(), LogError> {
        self.writer()?;
        if size <= self.shared.signed.load(Ordering::Acquire) {
            return Ok(());
        }
        evidence::raise_signed(&self.shared.dir, size, root)?;
        self.shared.signed.fetch_max(size, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::head_value;

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

    /// Whatever modes the files were created with, an open leaves the directory 0700 and its files
    /// 0600, and says which paths it changed.
    #[test]
    fn opening_makes_the_data_directory_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("sub/file"), b"x").expect("write");
        for (p, mode) in [(dir.clone(), 0o755), (dir.join("sub"), 0o775)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        std::fs::set_permissions(dir.join("sub/file"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let changed = make_private(&dir).expect("private");
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert!(make_private(&dir).expect("again").is_empty());
        let log = EventLog::open(&dir, LogOptions::default(), None).expect("open");
        let mut pending = vec![dir.clone()];
        while let Some(p) = pending.pop() {
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} {mode:o}", p.display());
            if meta.is_dir() {
                pending.extend(
                    std::fs::read_dir(&p)
                        .expect("ls")
                        .map(|e| e.expect("e").path()),
                );
            }
        }
        drop(log);
        assert!(make_private(&root.path().join("missing"))
            .expect("missing")
            .is_empty());
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
}
