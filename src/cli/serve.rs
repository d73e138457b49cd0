//! `claims-ledger serve`: open the store, optionally load the demo dataset, serve until SIGINT/SIGTERM.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio::net::TcpListener;

use super::DurabilityArg;
use crate::app::{App, OpenOptions};
use crate::log::{Durability, LogOptions};

pub async fn run(
    data_dir: PathBuf,
    listen: SocketAddr,
    demo: bool,
    durability: DurabilityArg,
    addr_file: Option<PathBuf>,
    signing_key: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let durability = match durability {
        DurabilityArg::Fsync => Durability::Fsync,
        DurabilityArg::Relaxed => {
            tracing::warn!("durability is relaxed: a crash can lose acknowledged writes");
            Durability::Relaxed
        }
    };
    let signer = match &signing_key {
        Some(path) => Some(
            crate::checkpoint::keys::load(path)
                .with_context(|| format!("loading the signing key {}", path.display()))?,
        ),
        None => None,
    };
    let app = App::open_options(
        &data_dir,
        OpenOptions {
            log: LogOptions {
                durability,
                ..LogOptions::default()
            },
            no_projections: false,
            signer,
        },
    )
    .with_context(|| format!("opening {}", data_dir.display()))?;
    tracing::info!(origin = app.origin(), key = %app.verifier().public_key_string(), "checkpoints are signed with this key");
    if demo {
        let dataset = crate::dataset::parse(crate::dataset::ISTANBUL)?;
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
    tracing::info!(%addr, data_dir = %data_dir.display(), "listening");
    if let Some(f) = addr_file {
        // Write then rename, so a reader never sees a half-written address.
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())?;
        std::fs::rename(&tmp, &f)?;
    }
    crate::grpc::server::serve(listener, app.clone(), shutdown_signal()).await?;
    app.finish().await;
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
