//! The wire contract of claims-ledger: the generated protobuf messages and gRPC clients and servers
//! of `claimsledger.v1` (from the repository's `proto/`), and their encoded descriptor set for
//! server reflection.
//!
//! Architecture invariant: only the transport (`claims-ledger-server`'s `grpc` module) and the
//! client library name these types; the domain and the log never see them.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("claimsledger.v1");

/// Encoded descriptor set of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("claimsledger_descriptor");
