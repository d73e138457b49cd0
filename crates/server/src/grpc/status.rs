//! The one mapping from application errors to gRPC statuses, with google.rpc error details
//! (BadRequest field violations, PreconditionFailure, ResourceInfo, ErrorInfo) so that clients in any
//! language can act on them. Internal errors are logged here and never echoed.
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::app::AppError;
use claims_ledger_domain::DomainError;

const DOMAIN: &str = "claimsledger.v1";

/// Longest status message, and longest field-violation description, sent to a client. Messages quote
/// offending values; unbounded, a long one would push the response headers past what clients accept
/// (~16 KiB), and the client would see a protocol error instead of the status.
const MAX_MESSAGE_CHARS: usize = 1024;
const MAX_DESCRIPTION_CHARS: usize = 160;
/// All field paths and descriptions together; past it, the rest are summarized in one violation.
const MAX_DETAILS_CHARS: usize = 6000;

/// `s` cut to `max` characters, marked when cut.
fn clip(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}… (cut)", &s[..at]),
        None => s,
    }
}

fn bad_request(message: String, v: Vec<claims_ledger_domain::FieldViolation>) -> Status {
    let mut details = ErrorDetails::new();
    let total = v.len();
    let mut used = 0;
    for (i, f) in v.into_iter().enumerate() {
        let description = clip(f.description, MAX_DESCRIPTION_CHARS);
        used += f.field.len() + description.len();
        if used > MAX_DETAILS_CHARS {
            details.add_bad_request_violation(
                f.field,
                format!(
                    "… and {} more violations not listed; fix these first",
                    total - i
                ),
            );
            break;
        }
        details.add_bad_request_violation(f.field, description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The status for a message of a client stream that could not be read. tonic reports an undecodable
/// message as INTERNAL; that is the client's mistake, so it becomes INVALID_ARGUMENT naming the
/// message (1 is the first). Other errors (too large, transport) keep their status.
pub(crate) fn unreadable_message(status: Status, index: u64) -> Status {
    if status.code() == Code::Internal && status.message().starts_with("failed to decode Protobuf")
    {
        Status::invalid_argument(clip(
            format!("message {index} of the stream: {}", status.message()),
            MAX_MESSAGE_CHARS,
        ))
    } else {
        status
    }
}

impl From<AppError> for Status {
    fn from(e: AppError) -> Status {
        let message = clip(e.to_string(), MAX_MESSAGE_CHARS);
        match e {
            AppError::Domain(DomainError::Invalid(v)) | AppError::Invalid(v) => {
                bad_request(message, v)
            }
            AppError::Domain(DomainError::NotFound { field, what, id }) => {
                Status::with_error_details(
                    Code::NotFound,
                    message,
                    ErrorDetails::with_resource_info(
                        what,
                        id,
                        "",
                        format!("referenced by {field}"),
                    ),
                )
            }
            AppError::Domain(DomainError::AlreadyExists { field, what, id }) => {
                Status::with_error_details(
                    Code::AlreadyExists,
                    message,
                    ErrorDetails::with_resource_info(what, id, "", format!("named by {field}")),
                )
            }
            AppError::Domain(DomainError::FailedPrecondition { field, message: m }) => {
                Status::with_error_details(
                    Code::FailedPrecondition,
                    message,
                    ErrorDetails::with_precondition_failure_violation("STATE", field, m),
                )
            }
            AppError::WrongExpectedRevision {
                stream,
                expected,
                actual,
            } => {
                let mut details = ErrorDetails::with_precondition_failure_violation(
                    "REVISION",
                    stream.clone(),
                    message.clone(),
                );
                details.set_error_info(
                    "WRONG_EXPECTED_REVISION",
                    DOMAIN,
                    HashMap::from([
                        ("stream".to_string(), stream),
                        ("expected".to_string(), expected.to_string()),
                        (
                            "actual".to_string(),
                            actual.map_or("no stream".into(), |r| r.to_string()),
                        ),
                    ]),
                );
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            AppError::CreatedConcurrently { stream } => Status::with_error_details(
                Code::AlreadyExists,
                message,
                ErrorDetails::with_resource_info("stream", stream, "", "created by another write"),
            ),
            AppError::IdempotencyConflict { key } => Status::with_error_details(
                Code::AlreadyExists,
                message,
                ErrorDetails::with_error_info(
                    "IDEMPOTENCY_KEY_REUSED",
                    DOMAIN,
                    HashMap::from([("idempotency_key".to_string(), key)]),
                ),
            ),
            AppError::NotFound(_) => Status::not_found(message),
            AppError::PermissionDenied(_) => Status::permission_denied(message),
            AppError::ResourceExhausted(_) => Status::with_error_details(
                Code::ResourceExhausted,
                message.clone(),
                ErrorDetails::with_quota_failure_violation("named subscriptions", message),
            ),
            AppError::OutOfRange(_) => Status::out_of_range(message),
            AppError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            AppError::Unavailable | AppError::ShuttingDown => Status::unavailable(message),
            // Only an open refuses with it, never a call; were one to, nothing internal is shown.
            AppError::ShorterLog(_) => Status::data_loss("the log is shorter than its records"),
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}
