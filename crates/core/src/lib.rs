//! The pure core of claims-ledger: primitives every other layer relies on, with no I/O runtime, no
//! storage engine and no wire format.
//!
//! - [`merkle`]: RFC 6962 / 9162 Merkle trees: incremental frontier, proofs from stored subtree
//!   hashes, and verification that trusts nothing it is sent.
//! - [`checkpoint`]: signed checkpoints (C2SP tlog-checkpoint in a signed note, Ed25519) and their
//!   key files.
//! - [`codec`]: a small binary codec (fixed-width integers, length-prefixed strings) for snapshots.
//!
//! Architecture invariant: this crate depends on no tokio, sled, tonic or prost (checked by the
//! workspace's tidy test).
pub mod checkpoint;
pub mod codec;
pub mod merkle;
