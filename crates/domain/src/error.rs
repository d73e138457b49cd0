//! Domain errors. Each variant says how a caller should react; the transport maps each to one gRPC code.
use std::fmt;

/// One bad field, named by its path in the request (`spans[0].exact`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Malformed input. Fix the named fields; resending unchanged fails the same way.
    #[error("invalid argument: {}", join(.0))]
    Invalid(Vec<FieldViolation>),
    /// A referenced entity does not exist. Register it first (or in the same batch, before).
    #[error("{what} {id:?} not found ({field})")]
    NotFound {
        field: String,
        what: &'static str,
        id: String,
    },
    /// The id the command would create is taken. Choose another id, or treat as done.
    #[error("{what} {id:?} already exists ({field})")]
    AlreadyExists {
        field: String,
        what: &'static str,
        id: String,
    },
    /// The current state forbids the command (e.g. the target is already retracted). Re-read, then
    /// decide whether to send something else.
    #[error("{message} ({field})")]
    FailedPrecondition { field: String, message: String },
}

/// Violations as one readable line: `field: description; field: description`.
pub fn join(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl DomainError {
    /// Prefixes every field path, e.g. with `commands[3].record_statement.` inside a batch.
    pub fn prefixed(self, prefix: &str) -> DomainError {
        let p = |f: String| format!("{prefix}{f}");
        match self {
            DomainError::Invalid(v) => DomainError::Invalid(
                v.into_iter()
                    .map(|x| FieldViolation {
                        field: p(x.field),
                        description: x.description,
                    })
                    .collect(),
            ),
            DomainError::NotFound { field, what, id } => DomainError::NotFound {
                field: p(field),
                what,
                id,
            },
            DomainError::AlreadyExists { field, what, id } => DomainError::AlreadyExists {
                field: p(field),
                what,
                id,
            },
            DomainError::FailedPrecondition { field, message } => DomainError::FailedPrecondition {
                field: p(field),
                message,
            },
        }
    }

    /// A single-field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> DomainError {
        DomainError::Invalid(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }
}
