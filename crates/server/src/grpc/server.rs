//! Assembles the gRPC server: our services, `grpc.health.v1.Health`, and server reflection v1 and
//! v1alpha (grpcurl speaks v1; grpcui and Python's grpcio-reflection speak v1alpha). Connections are
//! accepted under the limits of [`connections`] (a cap, handshake and idle timeouts, calls per peer).
mod connections;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use connections::{
    ConnectionLimits, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_STREAMS_PER_PEER, PREFACE_LEN,
};

use super::auth::AuthLayer;

use super::audit::AuditService;
use super::events::EventsService;
use super::ledger::LedgerService;
use super::pb;
use super::query::{AdminService, QueryService};
use crate::app::App;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How to serve beyond the defaults (open, plaintext).
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Bearer tokens; `None` serves without authentication.
    pub tokens: Option<std::sync::Arc<crate::config::Tokens>>,
    /// PEM certificate chain and private key for TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Connection cap, timeouts and concurrent calls.
    pub limits: ConnectionLimits,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(listener, app, ServeOptions::default(), shutdown).await
}

/// As [`serve`], with authentication and TLS as configured.
pub async fn serve_with(
    listener: TcpListener,
    app: App,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::ledger_server::LedgerServer<LedgerService>>()
        .await;
    health
        .set_serving::<pb::events_server::EventsServer<EventsService>>()
        .await;
    // Queries answer from projections: report NOT_SERVING until they have caught up with the log
    // as it was at start, so a load balancer does not route reads to a replaying server.
    health
        .set_not_serving::<pb::query_server::QueryServer<QueryService>>()
        .await;
    let mut applied = app.watch_projection();
    let target = app.log().durable_count();
    let query_health = health.clone();
    tokio::spawn(async move {
        // Holds only a receiver, so it never keeps the data directory open.
        if applied.wait_for(|a| *a >= target).await.is_ok() {
            query_health
                .set_serving::<pb::query_server::QueryServer<QueryService>>()
                .await;
        }
    });
    health
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    health
        .set_serving::<pb::audit_server::AuditServer<AuditService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // Subscriptions never end by themselves: tell them to, or the graceful shutdown would wait forever.
    let shutdown_app = app.clone();
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        shutdown_app.begin_shutdown();
        let _ = signalled_tx.send(());
    };
    let limits = options.limits;
    let tracker = connections::Tracker::new(limits);
    let mut builder = Server::builder();
    if let Some((cert, key)) = &options.tls {
        builder = builder.tls_config(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(cert, key))
                .timeout(limits.handshake_timeout),
        )?;
    }
    let server = builder
        // Keepalive pings find dead peers, whose connections would otherwise hold a drain open.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Beyond this, a client's further calls on one connection wait for a free stream.
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        // Outermost, so refusals by the auth layer and the stream limit are counted too.
        .layer(crate::metrics::GrpcMetricsLayer::new(app.metrics()))
        // Before authentication: an unauthenticated caller's calls count against its address too.
        .layer(connections::StreamLimitLayer::new(tracker.clone()))
        .layer(AuthLayer::new(options.tokens.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::ledger_server::LedgerServer::new(LedgerService::new(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::events_server::EventsServer::new(EventsService::new(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::query_server::QueryServer::new(QueryService::new(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::admin_server::AdminServer::new(AdminService::new(app.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::audit_server::AuditServer::new(AuditService::new(app))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(connections::incoming(listener, tracker), shutdown);
    // A client that never reads (a paused process, a half-open connection) must not keep the server
    // from stopping: after the signal, in-flight requests get DRAIN_DEADLINE to finish.
    let deadline = async {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_DEADLINE).await;
            tracing::warn!("connections still open after the drain deadline; stopping anyway");
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r?,
        _ = deadline => {}
    }
    Ok(())
}

/// Largest request message accepted (room for a batch registering over a hundred full-size source
/// texts); a larger one gets OUT_OF_RANGE from the transport before any handler runs, so nothing is
/// written.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Concurrent calls (HTTP/2 streams) per client connection, by default.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
