//! End-to-end tests: real servers on ephemeral ports, in process or the built binary, driven over gRPC and through the CLI.
//! One test binary for the whole crate, so the stack is linked once.
mod append_session;
mod audit_api;
mod audit_tamper;
mod auth_tls;
mod backup;
mod cli_query;
mod common;
mod config_precedence;
mod crash;
mod demo;
mod deploy_files;
mod fsync_trace;
mod fuzz;
mod graceful_shutdown;
mod hostile_input;
mod ledger_api;
mod metrics;
mod named_subscription;
mod query_api;
mod refusal_log;
mod restart_snapshot;
mod security;
mod session_decode;
mod subscribe;
mod subscription_owner;
mod tidy;
