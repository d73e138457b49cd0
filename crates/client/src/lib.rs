//! A Rust client for claims-ledger (being extracted from the command line).
