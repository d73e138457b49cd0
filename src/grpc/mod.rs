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
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("claimsledger.v1");

    /// Encoded descriptor set of our protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("claimsledger_descriptor");
}

pub use ledger::RECORDED_BY_HEADER;
