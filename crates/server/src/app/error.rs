//! Errors of the use cases: domain rule violations, concurrency conflicts, and failures of the log.
//! The transport maps each variant to exactly one gRPC status, in one place.
use claims_ledger_domain::{DomainError, FieldViolation};
use claims_ledger_log::{ExpectedRevision, LogError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The command breaks a domain rule (see [`DomainError`] for how to react).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Malformed request envelope (options, batch size, stream name). Fix the named fields.
    #[error("invalid argument: {}", claims_ledger_domain::error::join(.0))]
    Invalid(Vec<FieldViolation>),
    /// A client-given expected revision did not match. Re-read the stream, decide again.
    #[error("stream {stream:?}: expected {expected}, actual {}", .actual.map_or("no stream".to_string(), |r| format!("revision {r}")))]
    WrongExpectedRevision {
        stream: String,
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    /// Another writer created the same entity first.
    #[error("stream {stream:?} was created concurrently by another write")]
    CreatedConcurrently { stream: String },
    /// The idempotency key was used for different content.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyConflict { key: String },
    /// A position past the end of the log. Resume from a position this log has reached.
    #[error("{0}")]
    OutOfRange(String),
    /// The requested stream or event does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The caller's identity may not act on this resource (another identity's subscription). Use
    /// your own.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit on what the caller (or everyone) may hold was reached. Free something first.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is shutting down. Reconnect and resume: a subscription from the last position
    /// received, an append session from its first append without an answer.
    #[error("the server is shutting down; reconnect and resume (a subscription from the last position received, an append session from its first append without an answer, which was not applied)")]
    ShuttingDown,
    /// Writes are refused until restart (a sync failed). Retry against a healthy server.
    #[error("the ledger is not accepting writes")]
    Unavailable,
    /// The projections did not reach the position asked for in time. Retry, or ask for less.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Only at open: the data directory holds a log shorter than its durable records show (see
    /// `claims_ledger_log::evidence`). Restore from a backup, or accept it knowingly.
    #[error("{0}")]
    ShorterLog(Box<claims_ledger_log::ShorterLog>),
    /// Anything else; logged server-side, never shown to clients in detail.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> AppError {
        AppError::Invalid(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }
}

impl From<LogError> for AppError {
    fn from(e: LogError) -> AppError {
        match e {
            LogError::WrongExpectedRevision {
                stream,
                expected,
                actual,
            } => AppError::WrongExpectedRevision {
                stream,
                expected,
                actual,
            },
            LogError::IdempotencyConflict { key } => AppError::IdempotencyConflict { key },
            LogError::RecordTooLarge { size, max } => AppError::invalid(
                "command",
                format!("the encoded event is {size} bytes, at most {max} allowed"),
            ),
            LogError::InvalidStream(s) => {
                AppError::invalid("stream", format!("invalid stream name {s:?}"))
            }
            LogError::CursorBeyondHead { position, durable } => AppError::invalid(
                "position",
                format!("{position} is beyond the end of the log ({durable} events)"),
            ),
            e @ LogError::CursorNotOwned { .. } => AppError::PermissionDenied(e.to_string()),
            e @ LogError::TooManyCursors { .. } => AppError::ResourceExhausted(e.to_string()),
            LogError::ProofRequest(m) => AppError::OutOfRange(m),
            LogError::Poisoned | LogError::Closed => AppError::Unavailable,
            LogError::ShorterLog(s) => AppError::ShorterLog(s),
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<crate::projection::ProjectionError> for AppError {
    fn from(e: crate::projection::ProjectionError) -> AppError {
        match e {
            crate::projection::ProjectionError::Log(l) => l.into(),
            other => AppError::Internal(other.to_string()),
        }
    }
}
