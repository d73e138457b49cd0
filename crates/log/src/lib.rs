//! The append-only event log: a single totally ordered sequence of events with gap-free positions,
//! per-stream revisions, optimistic concurrency, durable idempotency, a SHA-256 hash chain over the
//! exact stored bytes, and group commit with a real fdatasync before any acknowledgement.
//!
//! Knows nothing of gRPC or of the domain: payloads are opaque JSON here. Metrics leave through
//! [`LogMetrics`], which the host implements.
pub mod disk;
pub mod evidence;
pub mod import;
mod layout;
mod marks;
mod observe;
mod record;
pub mod snapshot;
mod store;
mod tiles;
pub mod verify;
mod wal;

pub use evidence::{Evidence, ShorterLog};
pub use observe::{LogMetrics, NoMetrics};
pub use record::{
    decode, sha256, Hash, IdempotencyMark, RecordedEvent, GENESIS_HASH, MAX_RECORD_BYTES,
};
pub use store::{
    make_private, open_db, open_sled, AppendOutcome, AppendRequest, Appended, CommitObserver,
    Cursor, CursorActor, CursorLimits, Durability, EventLog, ExpectedRevision, Head, Idempotency,
    LogOptions, NewEvent, INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND, SLED_LOCKED,
};

/// Errors of the log. Variants say what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A stream was not where the writer expected. Re-read the stream and decide again.
    #[error("stream {stream:?}: expected {expected}, but it is {}", match .actual { Some(r) => format!("at revision {r}"), None => "absent".to_string() })]
    WrongExpectedRevision {
        stream: String,
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    /// The idempotency key was used before for different content. Use a new key.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyConflict { key: String },
    /// One encoded event is too large to store safely. Send less.
    #[error("event of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("invalid stream name {0:?}")]
    InvalidStream(String),
    /// A subscriber acknowledged a position the log has not reached. Acknowledge only what was
    /// delivered.
    #[error("position {position} is beyond the end of the log ({durable} events)")]
    CursorBeyondHead { position: u64, durable: u64 },
    /// A subscriber cursor belongs to another identity. Use a name of your own.
    #[error("subscription {name:?} belongs to another identity")]
    CursorNotOwned { name: String },
    /// A new subscriber cursor would pass a limit: the owner's (`per_owner`) or the log's. Delete
    /// cursors that are no longer needed.
    #[error("{}", if *.per_owner {
        format!("this identity already has {limit} named subscriptions, its limit; delete one it no longer needs", limit = .limit)
    } else {
        format!("the server already holds {limit} named subscriptions, its limit; an administrator can delete unused ones", limit = .limit)
    })]
    TooManyCursors { per_owner: bool, limit: usize },
    /// A proof was asked for a tree size, position or pair of sizes the log cannot prove.
    #[error("{0}")]
    ProofRequest(String),
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// Stored data does not read back. Stop and run `claims-ledger verify`.
    #[error("corrupt log at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
    /// The log recovered at open is shorter than its durable records show (see [`evidence`]):
    /// acknowledged events are missing. Restore the data directory from a backup, or open it with
    /// [`LogOptions::accept_shorter_log`] to accept the shorter log knowingly.
    #[error("{0}")]
    ShorterLog(Box<ShorterLog>),
    /// A sync failed earlier; writes are refused until restart.
    #[error("the log stopped accepting writes after a failed sync; restart the server")]
    Poisoned,
    #[error("the log is closed")]
    Closed,
    /// The log was opened with [`EventLog::open_read_only`]: it serves reads only.
    #[error("the log was opened read-only")]
    ReadOnly,
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
