//! `claims-ledger serve`: read the configuration (flags, then environment, then `--config` file,
//! then defaults), open the store, optionally load the demo dataset, serve until SIGINT/SIGTERM.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;

use super::DurabilityArg;
use claims_ledger_log::{Durability, LogOptions};
use claims_ledger_server::app::{App, OpenOptions};
use claims_ledger_server::config::{FileConfig, Tokens};
use claims_ledger_server::grpc::server::ServeOptions;

/// Flags of `serve`. Each may also come from its environment variable or the config file.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see README, "Configuration"); flags and environment override it.
    #[arg(long, env = "CLAIMS_LEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (created if missing). Default `./data`.
    #[arg(long, env = "CLAIMS_LEDGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port. Default `127.0.0.1:50051`.
    #[arg(long, env = "CLAIMS_LEDGER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Load the built-in Istanbul dataset before serving (idempotent).
    #[arg(long, env = "CLAIMS_LEDGER_DEMO")]
    pub demo: bool,
    /// When a write is acknowledged. Default `fsync`.
    #[arg(long, env = "CLAIMS_LEDGER_DURABILITY", value_enum)]
    pub durability: Option<DurabilityArg>,
    /// Write the bound address to this file once listening (for scripts and tests).
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// Checkpoint signing key (C2SP private key string, file mode 0600). Default: `signing.key`
    /// in the data directory, generated on first start.
    #[arg(long, env = "CLAIMS_LEDGER_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "CLAIMS_LEDGER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CLAIMS_LEDGER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen beyond loopback without tokens (only behind something else that authenticates).
    #[arg(long, env = "CLAIMS_LEDGER_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP, no authentication) on this address.
    /// Default: none. Bind it where only your scraper can reach it.
    #[arg(long, env = "CLAIMS_LEDGER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format on stderr: `text` (default) or `json`.
    #[arg(long, env = "CLAIMS_LEDGER_LOG_FORMAT")]
    pub log_format: Option<String>,
}

impl ServeArgs {
    /// The config file, if one was named.
    pub fn file(&self) -> anyhow::Result<FileConfig> {
        match &self.config {
            Some(path) => Ok(FileConfig::load(path)?),
            None => Ok(FileConfig::default()),
        }
    }
}

/// Serving beyond loopback without tokens is refused unless asked for explicitly.
pub fn check_exposure(
    listen: SocketAddr,
    authenticated: bool,
    allowed: bool,
) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() && !authenticated && !allowed {
        anyhow::bail!(
            "refusing to listen on {listen} without authentication: configure tokens, listen on \
             loopback, or pass --allow-unauthenticated if something else authenticates callers"
        );
    }
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let file = args.file()?;
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./data"));
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051)));
    let durability = match (args.durability, file.durability.as_deref()) {
        (Some(DurabilityArg::Relaxed), _) | (None, Some("relaxed")) => {
            tracing::warn!("durability is relaxed: a crash can lose acknowledged writes");
            Durability::Relaxed
        }
        (Some(DurabilityArg::Fsync), _) | (None, Some("fsync") | None) => Durability::Fsync,
        (None, Some(other)) => {
            anyhow::bail!("config: durability must be fsync or relaxed, not {other:?}")
        }
    };
    let tokens = Tokens::from_entries(&file.tokens).map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let tokens = (!tokens.is_empty()).then(|| Arc::new(tokens));
    check_exposure(
        listen,
        tokens.is_some(),
        args.allow_unauthenticated || file.allow_unauthenticated.unwrap_or(false),
    )?;
    let tls_files = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        _ => file.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone())),
    };
    let tls = match tls_files {
        Some((c, k)) => Some((
            std::fs::read(&c).with_context(|| format!("reading {}", c.display()))?,
            std::fs::read(&k).with_context(|| format!("reading {}", k.display()))?,
        )),
        None => None,
    };
    let signing_key = args.signing_key.clone().or(file.signing_key.clone());
    let signer = match &signing_key {
        Some(path) => Some(
            claims_ledger_core::checkpoint::keys::load(path)
                .with_context(|| format!("loading the signing key {}", path.display()))?,
        ),
        None => None,
    };
    let app = App::open_options(
        &data_dir,
        OpenOptions {
            log: LogOptions {
                durability,
                cursor_limits: file.cursor_limits(),
                ..LogOptions::default()
            },
            signer,
            resnapshot_after: None,
        },
    )
    .with_context(|| format!("opening {}", data_dir.display()))?;
    tracing::info!(origin = app.origin(), key = %app.verifier().public_key_string(), "checkpoints are signed with this key");
    if args.demo {
        let dataset =
            claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL)?;
        let r = app.load_dataset(&dataset, "demo-loader").await?;
        tracing::info!(
            written = r.written,
            already_present = r.already_present,
            "demo dataset loaded"
        );
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        data_dir = %data_dir.display(),
        tls = tls.is_some(),
        authentication = tokens.is_some(),
        "listening"
    );
    if let Some(f) = &args.addr_file {
        // Write then rename, so a reader never sees a half-written address.
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())?;
        std::fs::rename(&tmp, f)?;
    }
    let metrics = match args.metrics_listen.or(file.metrics_listen) {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "serving Prometheus metrics on /metrics");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(claims_ledger_server::metrics::serve(
                l,
                app.metrics().clone(),
                async move {
                    let _ = stopped.await;
                },
            ));
            Some((stop, task))
        }
        None => None,
    };
    let options = ServeOptions { tokens, tls };
    claims_ledger_server::grpc::server::serve_with(
        listener,
        app.clone(),
        options,
        shutdown_signal(),
    )
    .await?;
    app.finish().await;
    // Metrics stay up through the drain.
    if let Some((stop, task)) = metrics {
        let _ = stop.send(());
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}
