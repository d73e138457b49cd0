//! The claims-ledger service, from the inside out (each module may use only the ones above it):
//! - [`projection`]: read models on sled (their own database), applied in atomic batches with a
//!   checkpoint, rebuilt into a fresh generation and switched over atomically.
//! - [`app`]: use cases: idempotency, validate, decide, append; the write model kept in step with
//!   the log; subscriptions; audit.
//! - [`grpc`]: the only module that names tonic and prost types; maps `AppError` to `Status` once.
//! - [`config`]: the configuration file and bearer tokens; [`metrics`]: Prometheus metrics.
//!
//! Below it are the pure domain (`claims-ledger-domain`), the log (`claims-ledger-log`) and the
//! contract (`claims-ledger-proto`).
pub mod app;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod projection;
