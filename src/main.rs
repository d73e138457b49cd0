//! The `claims-ledger` binary: parse the command line, set up logging, run. Everything else is in the
//! library (`claims_ledger::cli`).
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = claims_ledger::cli::Cli::parse();
    let code = claims_ledger::cli::run(cli).await?;
    std::process::exit(code);
}
