//! `claims-ledger serve`: read the configuration (flags, then environment, then `--config` file,
//! then defaults), open the store, optionally load the demo dataset, serve until SIGINT/SIGTERM.
//! Whatever ends the run after the open (a signal, the drain deadline, an error), the log is
//! closed before the process exits, so the data directory needs no replay.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;

use super::DurabilityArg;
use claims_ledger_log::{Durability, LogOptions};
use claims_ledger_server::app::{App, AppError, OpenOptions};
use claims_ledger_server::config::{parse_sha256, FileConfig, Tokens};
use claims_ledger_server::grpc::server::{ConnectionLimits, ServeOptions};

/// Largest TLS private key file read.
const MAX_TLS_KEY_BYTES: u64 = 1 << 20;

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
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this address. Default: none. A
    /// non-loopback address needs --metrics-allow-remote.
    #[arg(long, env = "CLAIMS_LEDGER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Exposure overrides and connection limits (boxed: they would make every other subcommand's
    /// value as large).
    #[command(flatten)]
    pub limits: Box<LimitArgs>,
    /// Log format on stderr: `text` (default) or `json`.
    #[arg(long, env = "CLAIMS_LEDGER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Start on a log shorter than its durable records show (snapshots, subscription cursors, the
    /// projection checkpoint, the marks of durable events and of signed checkpoints), accepting
    /// that acknowledged events are lost. The choice is logged and recorded in the log itself;
    /// the records are then reset. No environment variable: it must be chosen for one start.
    #[arg(long)]
    pub accept_shorter_log: bool,
}

/// Flags of `serve` about exposure and connection limits (README, "Security").
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Serve metrics on a non-loopback address (plain HTTP: only on a network you trust).
    #[arg(long, env = "CLAIMS_LEDGER_METRICS_ALLOW_REMOTE")]
    pub metrics_allow_remote: bool,
    /// SHA-256 (hex) of the bearer token that `GET /metrics` then requires.
    #[arg(long, env = "CLAIMS_LEDGER_METRICS_TOKEN_SHA256")]
    pub metrics_token_sha256: Option<String>,
    /// Accept tokens over plaintext on a non-loopback address (only where the network is trusted,
    /// for example behind a TLS-terminating proxy).
    #[arg(long, env = "CLAIMS_LEDGER_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    /// Open connections at most; further ones are closed at once. Default 1024.
    #[arg(long, env = "CLAIMS_LEDGER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a new connection has to start HTTP/2 (and finish its TLS handshake). Default 10.
    #[arg(long, env = "CLAIMS_LEDGER_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds a connection may stay open with no call in progress. Default 300.
    #[arg(long, env = "CLAIMS_LEDGER_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Concurrent calls per connection; further calls wait for a free stream. Default 256.
    #[arg(long, env = "CLAIMS_LEDGER_MAX_STREAMS")]
    pub max_streams: Option<u32>,
    /// Concurrent calls per peer IP address; further calls get RESOURCE_EXHAUSTED. 0: no limit.
    /// Default 2048.
    #[arg(long, env = "CLAIMS_LEDGER_MAX_STREAMS_PER_PEER")]
    pub max_streams_per_peer: Option<usize>,
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

/// Tokens travel in every call: over plaintext, only on loopback unless the network is declared
/// trusted.
pub fn check_plaintext(
    listen: SocketAddr,
    authenticated: bool,
    tls: bool,
    allowed: bool,
) -> anyhow::Result<()> {
    if authenticated && !tls && !listen.ip().is_loopback() && !allowed {
        anyhow::bail!(
            "refusing to listen on {listen} with tokens but without TLS: every call would carry a \
             token in clear. Configure TLS ([tls] or --tls-cert/--tls-key), listen on loopback, or \
             pass --allow-plaintext (allow_plaintext = true) if the network is trusted, for example \
             behind a TLS-terminating proxy"
        );
    }
    Ok(())
}

/// The metrics endpoint (plain HTTP, consumer names and sizes) stays on loopback unless allowed.
pub fn check_metrics_exposure(addr: SocketAddr, allowed: bool) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && !allowed {
        anyhow::bail!(
            "refusing to serve metrics on {addr}: the endpoint is plain HTTP and shows consumer names \
             and sizes. Bind it to loopback, or pass --metrics-allow-remote \
             (metrics_allow_remote = true) if only your scraper can reach it (and consider \
             metrics_token_sha256)"
        );
    }
    Ok(())
}

/// The connection limits: flags, then environment, then `[connections]`, then defaults.
fn connection_limits(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<ConnectionLimits> {
    let c = file.connections.clone().unwrap_or_default();
    let d = ConnectionLimits::default();
    let secs = |flag: Option<u64>, key: Option<u64>, default: Duration| match flag.or(key) {
        Some(0) => anyhow::bail!("connection timeouts must be at least one second"),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    };
    let limits = ConnectionLimits {
        max_connections: args
            .limits
            .max_connections
            .or(c.max)
            .unwrap_or(d.max_connections),
        handshake_timeout: secs(
            args.limits.handshake_timeout_secs,
            c.handshake_timeout_secs,
            d.handshake_timeout,
        )?,
        idle_timeout: secs(
            args.limits.idle_timeout_secs,
            c.idle_timeout_secs,
            d.idle_timeout,
        )?,
        max_streams_per_connection: args
            .limits
            .max_streams
            .or(c.max_streams)
            .unwrap_or(d.max_streams_per_connection),
        max_streams_per_peer: args
            .limits
            .max_streams_per_peer
            .or(c.max_streams_per_peer)
            .unwrap_or(d.max_streams_per_peer),
    };
    if limits.max_connections == 0 || limits.max_streams_per_connection == 0 {
        anyhow::bail!("the connection cap and the streams per connection must be at least 1");
    }
    Ok(limits)
}

/// What the open's error means for the operator.
fn open_error(dir: &std::path::Path, e: AppError) -> anyhow::Error {
    match e {
        AppError::ShorterLog(s) => anyhow::anyhow!(
            "refusing to serve {}: {s}.\nRestore the data directory from a backup (`claims-ledger \
             restore`, README \"Backup and restore\"). To accept the shorter log knowingly, start \
             once with --accept-shorter-log: the choice is logged and recorded in the log",
            dir.display()
        ),
        other => anyhow::Error::new(other).context(format!("opening {}", dir.display())),
    }
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
            // The same rule as the signing key: refused when group or others may read it.
            claims_ledger_core::checkpoint::keys::read_private_file(&k, MAX_TLS_KEY_BYTES)
                .context("loading the TLS private key")?,
        )),
        None => None,
    };
    check_plaintext(
        listen,
        tokens.is_some(),
        tls.is_some(),
        args.limits.allow_plaintext || file.allow_plaintext.unwrap_or(false),
    )?;
    let metrics_listen = args.metrics_listen.or(file.metrics_listen);
    if let Some(addr) = metrics_listen {
        check_metrics_exposure(
            addr,
            args.limits.metrics_allow_remote || file.metrics_allow_remote.unwrap_or(false),
        )?;
    }
    let metrics_token = match args
        .limits
        .metrics_token_sha256
        .as_deref()
        .or(file.metrics_token_sha256.as_deref())
    {
        Some(h) => Some(
            parse_sha256(h)
                .ok_or_else(|| anyhow::anyhow!("metrics_token_sha256 must be 64 hex digits"))?,
        ),
        None => None,
    };
    let limits = connection_limits(&args, &file)?;
    let signing_key = args.signing_key.clone().or(file.signing_key.clone());
    let signer = match &signing_key {
        Some(path) => Some(
            claims_ledger_core::checkpoint::keys::load(path)
                .with_context(|| format!("loading the signing key {}", path.display()))?,
        ),
        None => None,
    };
    // Data readable past the roles is made private before anything opens it; what cannot be fixed
    // (files of another user) stops the start.
    claims_ledger_log::make_private(&data_dir).with_context(|| {
        format!(
            "the data directory {} must be accessible to its owner only",
            data_dir.display()
        )
    })?;
    let app = App::open_options(
        &data_dir,
        OpenOptions {
            log: LogOptions {
                durability,
                cursor_limits: file.cursor_limits(),
                accept_shorter_log: args.accept_shorter_log,
                ..LogOptions::default()
            },
            signer,
            resnapshot_after: None,
        },
    )
    .map_err(|e| open_error(&data_dir, e))?;
    let serving = Serving {
        listen,
        tls,
        tokens,
        metrics_listen,
        metrics_token,
        limits,
    };
    let served = serve_app(&app, &args, &data_dir, serving).await;
    // Whichever way serving ended: connections that outlived the drain may still hold the app, so
    // the log is closed explicitly, after the projections and snapshots are saved.
    app.finish().await;
    app.close().await;
    // sled creates files while it runs (its own snapshots) with the process's umask: make them
    // private too, as the open did for the files it found.
    if let Err(e) = claims_ledger_log::make_private(&data_dir) {
        tracing::warn!(error = %e, "cannot make the data directory private");
    }
    let metrics = served?;
    // Metrics stay up through the drain.
    if let Some((stop, task)) = metrics {
        let _ = stop.send(());
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(0)
}

/// The metrics endpoint's stop signal and task.
type MetricsTask = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// How to serve, as configured.
struct Serving {
    listen: SocketAddr,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    tokens: Option<Arc<Tokens>>,
    metrics_listen: Option<SocketAddr>,
    metrics_token: Option<[u8; 32]>,
    limits: ConnectionLimits,
}

/// Everything between the open and the close: the demo data, the listeners, and serving until a
/// signal. Returns the metrics endpoint, still up, for the caller to stop after the close.
async fn serve_app(
    app: &App,
    args: &ServeArgs,
    data_dir: &std::path::Path,
    serving: Serving,
) -> anyhow::Result<Option<MetricsTask>> {
    let Serving {
        listen,
        tls,
        tokens,
        metrics_listen,
        metrics_token,
        limits,
    } = serving;
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
    let metrics = match metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "serving Prometheus metrics on /metrics");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(claims_ledger_server::metrics::serve_with_token(
                l,
                app.metrics().clone(),
                metrics_token,
                async move {
                    let _ = stopped.await;
                },
            ));
            Some((stop, task))
        }
        None => None,
    };
    let options = ServeOptions {
        tokens,
        tls,
        limits,
    };
    let served = claims_ledger_server::grpc::server::serve_with(
        listener,
        app.clone(),
        options,
        shutdown_signal(),
    )
    .await;
    if let Err(e) = served {
        if let Some((stop, task)) = metrics {
            let _ = stop.send(());
            let _ = task.await;
        }
        return Err(e.into());
    }
    Ok(metrics)
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
