//! claims-ledger: an event-sourced ledger of who said what, when, where and according to which source.
//!
//! Layout, from the inside out (each layer may use only the ones above it):
//! - [`domain`]: pure types and rules: commands, events, validation, the write model.
//! - [`merkle`]: pure RFC 6962 / 9162 Merkle trees: incremental frontier, proofs from stored subtree
//!   hashes, verification that trusts nothing (the log keeps its tree as tiles, see `log`).
//! - [`codec`]: a pure binary codec (fixed-width integers, length-prefixed strings) for snapshot files.
//! - [`log`]: the append-only, hash-chained event log on sled, with group commit and real fsync.
//! - [`projection`]: read models on sled (their own database), applied in atomic batches with a
//!   checkpoint, rebuilt into a fresh generation and switched over atomically.
//! - [`app`]: use cases: idempotency, validate, decide, append; the write model kept in step with the log.
//! - [`grpc`]: the only place that names tonic and prost types; maps `app::Error` to `Status` once.
//! - [`cli`]: the `claims-ledger` subcommands: serve, client commands for people, verify, bench.
pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod codec;
pub mod config;
pub mod dataset;
pub mod domain;
pub mod grpc;
pub mod log;
pub mod merkle;
pub mod metrics;
pub mod projection;
