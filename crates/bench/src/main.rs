//! `claims-ledger-bench`: the benchmarks, outside the product binary. Each measures the server
//! against a baseline taken in the same run on the same disk, because this machine is shared and
//! noisy: report ratios, not bare figures (see BENCHMARKS.md for the commands and results).
//!
//! - [`append`]: durable append throughput and latency against raw sled plus fdatasync, with the
//!   transport ceilings of [`ceiling`];
//! - [`audit`]: appends with the Merkle tree against raw sled, proofs, and offline verify;
//! - [`subscribe`]: catch-up against a raw scan, and fan-out to many live subscribers;
//! - [`query`]: projection rebuild, query latency under writers, open time with snapshots.
mod append;
mod audit;
mod ceiling;
mod query;
mod raw;
mod subscribe;

use clap::{Parser, Subcommand};

/// Requests allocate and free many small buffers on several threads; measure with the allocator the
/// product uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "claims-ledger-bench",
    version,
    about = "Benchmarks of claims-ledger, each against a baseline measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Measure durable append throughput and latency against raw sled + fdatasync on the same disk.
    Append(append::BenchArgs),
    /// Measure tamper evidence: appends (with the Merkle tree) against raw sled + fdatasync, proof
    /// latency at a million events against a point read, and `verify --data-dir` against a raw sled
    /// scan.
    Audit(audit::AuditBenchArgs),
    /// Measure subscriptions: catch-up rate against a raw sled scan, and fan-out to many live
    /// subscribers against the append rate with none.
    Subscribe(subscribe::SubscribeBenchArgs),
    /// Measure the read side: projection rebuild rate against a raw sled scan, query latency with
    /// and without durable writers, and append throughput (projections on) against raw sled +
    /// fdatasync.
    Query(query::QueryBenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let code = match Cli::parse().command {
        Cmd::Append(args) => append::run(args).await?,
        Cmd::Audit(args) => audit::run(args).await?,
        Cmd::Subscribe(args) => subscribe::run(args).await?,
        Cmd::Query(args) => query::run(args).await?,
    };
    std::process::exit(code);
}
