//! The transport: the only module that names tonic and prost types. It converts wire messages to
//! domain commands and back ([`convert`]), maps every application error to a status in one place
//! ([`status`]), and assembles the server with health checks and reflection ([`server`]).
mod audit;
pub mod auth;
pub mod convert;
mod events;
mod ledger;
mod query;
pub mod server;
mod status;

/// Generated protobuf and gRPC code for `claimsledger.v1`.
pub use claims_ledger_proto as pb;

pub use ledger::RECORDED_BY_HEADER;

use crate::app::{App, AppError};

/// Runs a synchronous use case (sled reads, signing) off the async threads.
pub(crate) async fn on_blocking_thread<R: Send + 'static>(
    app: &App,
    f: impl FnOnce(&App) -> Result<R, AppError> + Send + 'static,
) -> Result<R, tonic::Status> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| tonic::Status::from(AppError::Internal(format!("blocking task: {e}"))))?
        .map_err(tonic::Status::from)
}

/// A page size from a request: 0 means `default`, more than `max` is a violation of `field`.
pub(crate) fn page_size(field: &str, n: u32, default: u32, max: u32) -> Result<usize, AppError> {
    match n {
        0 => Ok(default as usize),
        n if n <= max => Ok(n as usize),
        n => Err(AppError::invalid(
            field,
            format!("must be at most {max}, got {n}"),
        )),
    }
}
