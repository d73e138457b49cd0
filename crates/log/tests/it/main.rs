//! Integration tests of the log: against a model, its Merkle tree, and verify after tampering.
//! One test binary for the whole crate, so the stack is linked once.
mod cursors;
mod fail_closed;
mod log_model;
mod merkle_log;
mod verify_tamper;
mod wal_recovery;
