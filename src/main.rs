//! The `claims-ledger` binary: parse the command line, set up logging, run. Everything else is in the
//! library (`claims_ledger_cli`) and the crates under `crates/`.
use clap::Parser;

/// Requests allocate and free many small buffers on several threads; with mimalloc's per-thread
/// heaps, 64 single-event writers ran about 25% faster here than with the system allocator
/// (interleaved runs of `bench`). The raw-sled baseline in the same process gains as much, so the
/// ratios in BENCHMARKS.md do not move.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = claims_ledger_cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.json_logs() {
        logs.json().init();
    } else {
        logs.init();
    }
    let code = claims_ledger_cli::run(cli).await?;
    std::process::exit(code);
}
