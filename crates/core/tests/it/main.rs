//! Integration tests of the pure core: RFC 6962 vectors, Merkle proofs, signed checkpoints.
//! One test binary for the whole crate, so the stack is linked once.
mod checkpoint;
mod merkle_vectors;
