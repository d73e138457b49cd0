//! The wire contract of claims-ledger: the generated protobuf messages and gRPC clients and servers
//! of `claimsledger.v1` (from the repository's `proto/`), and their encoded descriptor set for
//! server reflection.
//!
//! Architecture invariant: only the transport (`claims-ledger-server`'s `grpc` module) and the
//! client library name these types; the domain and the log never see them.
//!
//! The read-side answers (`GetPositionsResponse`, `GetPositionHistoryResponse`, `GetClaimResponse`,
//! `GetStatementResponse` and every message in them) implement `serde::Serialize`, derived by
//! `build.rs` with the field rules of [`json`]; that is the command line's `--json` output. Why
//! derived serde rather than the canonical protobuf JSON mapping (as `pbjson` generates): the
//! command line's JSON predates this and scripts read it, and the canonical mapping differs from it
//! in every respect that matters to a reader: 64-bit integers become strings, enums keep their
//! `STATEMENT_MODE_` prefix and upper case, absent fields disappear instead of being `null`, each
//! view nests its payload one level deeper, and `pbjson-types` writes timestamps with `+00:00`.
//! Matching it would take a rewrite pass over the generated JSON as large as the hand-written code it
//! replaces. Derived serde keeps the timestamps as `prost_types::Timestamp` (no well-known types of
//! another crate to map and rename across the workspace) and costs one attribute per field, chosen
//! from the descriptor set. Nothing deserializes this JSON, so only `Serialize` is derived.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("claimsledger.v1");

pub mod json;

/// Encoded descriptor set of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("claimsledger_descriptor");
