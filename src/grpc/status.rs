//! The one mapping from application errors to gRPC statuses, with google.rpc error details
//! (BadRequest field violations, PreconditionFailure, ResourceInfo, ErrorInfo) so that clients in any
//! language can act on them. Internal errors are logged here and never echoed.
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::app::AppError;
use crate::domain::DomainError;

const DOMAIN: &str = "claimsledger.v1";

fn bad_request(message: String, v: Vec<crate::domain::FieldViolation>) -> Status {
    let mut details = ErrorDetails::new();
    for f in v {
        details.add_bad_request_violation(f.field, f.description);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

impl From<AppError> for Status {
    fn from(e: AppError) -> Status {
        let message = e.to_string();
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
            AppError::OutOfRange(_) => Status::out_of_range(message),
            AppError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            AppError::Unavailable | AppError::ShuttingDown => Status::unavailable(message),
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}
