//! Reaching a server: `http://` in plaintext or `https://` checked against a CA certificate the
//! caller names, a bearer token sent on every call, connect and request timeouts, and the retry
//! policy every handle made from the connection starts with. One [`Connection`] is one HTTP/2
//! channel; cloning it or making handles from it is cheap and shares the channel.
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt as _;

use crate::retry::RetryPolicy;
use crate::Error;

/// The boxed service every generated client of this crate runs on: the channel with the token
/// added, plus whatever layers [`Connection::map_transport`] put around it. Boxed so that handles
/// have one nameable type whatever layers a program adds.
pub type Transport = BoxCloneSyncService<
    http::Request<Body>,
    http::Response<Body>,
    Box<dyn std::error::Error + Send + Sync>,
>;

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Where the CA certificate comes from.
#[derive(Clone)]
enum Ca {
    Pem(Vec<u8>),
    File(PathBuf),
}

/// How to connect: built by [`Connection::builder`], used by [`ConnectOptions::connect`].
#[derive(Clone)]
pub struct ConnectOptions {
    address: String,
    ca: Option<Ca>,
    domain_name: Option<String>,
    token: Option<String>,
    allow_plaintext_token: bool,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    retry: RetryPolicy,
}

impl fmt::Debug for ConnectOptions {
    /// Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("address", &self.address)
            .field("ca", &self.ca.as_ref().map(|_| "set"))
            .field("domain_name", &self.domain_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow_plaintext_token", &self.allow_plaintext_token)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl ConnectOptions {
    /// Checks an `https://` server against this CA certificate (PEM).
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Ca::Pem(pem.into()));
        self
    }

    /// Checks an `https://` server against the CA certificate in this PEM file (read at connect).
    pub fn ca_certificate_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Ca::File(path.into()));
        self
    }

    /// The name the server's certificate must carry, when it is not the address's host.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// Sends `authorization: Bearer <token>` on every call. Blank tokens are ignored, so an unset
    /// environment variable read as "" means "no token".
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        let token = token.trim();
        self.token = (!token.is_empty()).then(|| token.to_string());
        self
    }

    /// How long the first connection may take; `None` waits for the operating system. Default
    /// 10 s.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a unary call may wait for its answer, each attempt separately (a timed-out write is
    /// retried with the same idempotency key). For a subscription it bounds only the wait for the
    /// server to accept it, never how long it runs. `None` waits forever. Default 30 s.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The retry policy handles start with (each can change its own). Default
    /// [`RetryPolicy::default`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sends the token over plain `http://` to a host that is not loopback. Off by default: anyone
    /// on the path could read the token and act with its roles. Turn it on only where the network
    /// itself is trusted (a private link, or a proxy beside the client that adds TLS).
    pub fn allow_plaintext_token(mut self, allow: bool) -> Self {
        self.allow_plaintext_token = allow;
        self
    }

    /// Connects now, so that a wrong address or certificate shows here rather than at the first
    /// call. The channel reconnects by itself after the connection drops.
    pub async fn connect(self) -> Result<Connection, Error> {
        let invalid = |source| Error::InvalidAddress {
            address: self.address.clone(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(self.address.clone()).map_err(invalid)?;
        // Checked before any connection is made, so a refused token never leaves the process.
        if self.token.is_some()
            && !self.allow_plaintext_token
            && endpoint.uri().scheme_str() != Some("https")
            && !endpoint.uri().host().is_some_and(is_loopback)
        {
            return Err(Error::PlaintextToken {
                address: self.address.clone(),
            });
        }
        if let Some(t) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(t);
        }
        if let Some(t) = self.request_timeout {
            endpoint = endpoint.timeout(t);
        }
        if self.address.starts_with("https://") {
            let pem = match &self.ca {
                None => return Err(Error::MissingCaCertificate),
                Some(Ca::Pem(pem)) => pem.clone(),
                Some(Ca::File(path)) => {
                    std::fs::read(path).map_err(|source| Error::CaCertificate {
                        path: path.clone(),
                        source,
                    })?
                }
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let Some(name) = &self.domain_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(Error::Tls)?;
        }
        let token = match &self.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(Error::InvalidToken)?,
            ),
            None => None,
        };
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            address: self.address.clone(),
            source,
        })?;
        // Erased to the `Transport` type: one body type and one error type, whatever the stack.
        let service = InterceptedService::new(channel, Bearer(token))
            .map_response(|r| r.map(Body::new))
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) });
        Ok(Connection {
            transport: BoxCloneSyncService::new(service),
            retry: self.retry,
            address: self.address,
        })
    }
}

/// A connection to one server, and the factory of the service handles.
///
/// ```no_run
/// # async fn demo() -> Result<(), claims_ledger_client::Error> {
/// use std::time::Duration;
/// use claims_ledger_client::Connection;
///
/// let conn = Connection::builder("https://ledger.example.org:50051")
///     .ca_certificate_file("/etc/claims-ledger/ca.pem")
///     .bearer_token(std::env::var("CLAIMS_LEDGER_TOKEN").unwrap_or_default())
///     .connect_timeout(Some(Duration::from_secs(5)))
///     .request_timeout(Some(Duration::from_secs(20)))
///     .connect()
///     .await?;
/// let head = conn.events().get_head().await?;
/// println!("{} events", head.event_count);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    transport: Transport,
    retry: RetryPolicy,
    address: String,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Options for connecting to `address` (`http://host:port` or `https://host:port`), with the
    /// defaults: no CA, no token, 10 s to connect, 30 s per call, [`RetryPolicy::default`].
    pub fn builder(address: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            address: address.into(),
            ca: None,
            domain_name: None,
            token: None,
            allow_plaintext_token: false,
            connect_timeout: Some(Duration::from_secs(10)),
            request_timeout: Some(Duration::from_secs(30)),
            retry: RetryPolicy::default(),
        }
    }

    /// Connects to a plaintext `http://` address with the default options.
    pub async fn connect(address: impl Into<String>) -> Result<Connection, Error> {
        Connection::builder(address).connect().await
    }

    /// The address connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The retry policy new handles start with.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The transport, to build any generated client on (`pb::query_client::QueryClient::new(..)`)
    /// for what the handles do not wrap.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Wraps the transport in further layers (metrics, tracing, or faults injected by a test);
    /// handles made afterwards use the wrapped transport.
    pub fn map_transport(mut self, f: impl FnOnce(Transport) -> Transport) -> Self {
        self.transport = f(self.transport);
        self
    }

    /// The write service, with automatic idempotency keys and safe retries.
    pub fn ledger(&self) -> crate::ledger::Ledger {
        crate::ledger::Ledger::new(self.transport(), self.retry.clone())
    }

    /// The log: head, reads, subscriptions and their cursors.
    pub fn events(&self) -> crate::events::Events {
        crate::events::Events::new(self.transport(), self.retry.clone())
    }

    /// The read models: positions, histories, provenance.
    pub fn query(&self) -> crate::query::Query {
        crate::query::Query::new(self.transport(), self.retry.clone())
    }

    /// Signed checkpoints and Merkle proofs, for [`crate::audit::Auditor`].
    pub fn audit(&self) -> crate::audit::Audit {
        crate::audit::Audit::new(self.transport(), self.retry.clone())
    }

    /// Projection administration.
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(self.transport(), self.retry.clone())
    }
}

/// Whether a URI host names this machine: `localhost`, or an address in 127.0.0.0/8 or `::1`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let o = Connection::builder("http://127.0.0.1:1").bearer_token("s3cret");
        let shown = format!("{o:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_blank_token_is_no_token() {
        let o = Connection::builder("http://127.0.0.1:1").bearer_token("  ");
        assert!(o.token.is_none());
        let o = Connection::builder("http://127.0.0.1:1").bearer_token(" t ");
        assert_eq!(o.token.as_deref(), Some("t"));
    }

    #[tokio::test]
    async fn https_without_a_ca_is_refused_before_connecting() {
        let err = Connection::builder("https://127.0.0.1:1")
            .connect()
            .await
            .expect_err("no CA");
        assert!(matches!(err, Error::MissingCaCertificate), "{err:?}");
    }

    #[tokio::test]
    async fn a_bad_address_and_a_bad_token_are_named() {
        let err = Connection::connect("not a uri").await.expect_err("bad uri");
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
        let err = Connection::builder("http://127.0.0.1:1")
            .bearer_token("line\nbreak")
            .connect()
            .await
            .expect_err("bad token");
        assert!(matches!(err, Error::InvalidToken(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_missing_ca_file_is_named() {
        let err = Connection::builder("https://127.0.0.1:1")
            .ca_certificate_file("/nonexistent/ca.pem")
            .connect()
            .await
            .expect_err("no file");
        assert!(
            matches!(&err, Error::CaCertificate { path, .. } if path.ends_with("ca.pem")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_token_over_plaintext_off_loopback_is_refused_before_connecting() {
        // `.invalid` never resolves: if the check failed, the connect would fail differently.
        let err = Connection::builder("http://ledger.invalid:50051")
            .bearer_token("s3cret")
            .connect()
            .await
            .expect_err("plaintext token");
        assert!(matches!(err, Error::PlaintextToken { .. }), "{err:?}");
        let allowed = Connection::builder("http://ledger.invalid:50051")
            .bearer_token("s3cret")
            .allow_plaintext_token(true)
            .connect()
            .await
            .expect_err("the name does not resolve");
        assert!(matches!(allowed, Error::Connect { .. }), "{allowed:?}");
        // Without a token there is nothing to protect.
        let no_token = Connection::connect("http://ledger.invalid:50051")
            .await
            .expect_err("the name does not resolve");
        assert!(matches!(no_token, Error::Connect { .. }), "{no_token:?}");
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "ledger.example.org",
            "10.0.0.1",
            "[::2]",
            "0.0.0.0",
            "localhost.evil",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
