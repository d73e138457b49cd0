//! Bounded connections: what an unauthenticated client can hold before it has proved anything.
//!
//! The server accepts TCP connections itself (instead of tonic's `TcpIncoming`) so that it can
//! refuse and time out connections before hyper sees them:
//! - at most [`ConnectionLimits::max_connections`] connections are open at once; one more is accepted
//!   and closed at once (the client reads end-of-file), so the listen queue never fills and accepting
//!   never blocks;
//! - a connection must send its first [`PREFACE_LEN`] bytes (the HTTP/2 client preface, or with TLS
//!   the start of its handshake) within [`ConnectionLimits::handshake_timeout`], and with TLS the
//!   handshake must also finish within it (tonic's `ServerTlsConfig::timeout`);
//! - a connection with no open call (stream) for [`ConnectionLimits::idle_timeout`] is closed, new
//!   connections included: gRPC clients reconnect by themselves on their next call;
//! - calls per connection are limited by HTTP/2 (`SETTINGS_MAX_CONCURRENT_STREAMS`: further calls wait
//!   in the client for a free stream), and calls per peer IP address across its connections by
//!   [`StreamLimitLayer`], which answers `RESOURCE_EXHAUSTED` beyond the limit.
//!
//! A connection that breaks a limit is closed by failing its next read, which makes hyper drop it
//! without a GOAWAY.
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::Stream;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::codegen::Bytes;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Length of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
pub const PREFACE_LEN: usize = 24;

/// Connection limits; see the module documentation. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most; further ones are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time for the first bytes (and with TLS the whole handshake).
    pub handshake_timeout: Duration,
    /// Time a connection may stay open with no call in progress.
    pub idle_timeout: Duration,
    /// Concurrent calls per connection (HTTP/2 streams); further calls wait for a free stream.
    pub max_streams_per_connection: u32,
    /// Concurrent calls per peer IP address, all its connections together; further calls get
    /// `RESOURCE_EXHAUSTED`. 0: no limit (for a server behind a proxy, where every call comes from
    /// the proxy's address).
    pub max_streams_per_peer: usize,
}

/// Default of [`ConnectionLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`ConnectionLimits::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`ConnectionLimits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default of [`ConnectionLimits::max_streams_per_peer`]: room for a thousand live subscribers from
/// one host (as `claims-ledger-bench subscribe` runs) and their writers.
pub const DEFAULT_MAX_STREAMS_PER_PEER: usize = 2048;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_streams_per_connection: super::MAX_STREAMS_PER_CONNECTION,
            max_streams_per_peer: DEFAULT_MAX_STREAMS_PER_PEER,
        }
    }
}

/// What one connection shares with the calls made on it.
struct ConnState {
    /// Calls in progress.
    active: AtomicUsize,
    /// When `active` last became 0 (or the accept).
    idle_since: Mutex<Instant>,
    /// The connection's reader, woken when it becomes idle so that it arms its idle timer.
    reader: AtomicWaker,
}

impl ConnState {
    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Warns at most once per [`Throttled::EVERY`], with how many were suppressed since, so that a
/// flood of refusals cannot flood the log too.
#[derive(Default)]
struct Throttled {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(1);

    /// `Some(suppressed since the last warning)` when this one should be logged.
    fn check(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if s.0
            .is_some_and(|last| now.duration_since(last) < Self::EVERY)
        {
            s.1 += 1;
            return None;
        }
        let suppressed = std::mem::take(&mut s.1);
        s.0 = Some(now);
        Some(suppressed)
    }
}

/// The connections and calls of one server.
pub(crate) struct Tracker {
    limits: ConnectionLimits,
    refused_connections: Throttled,
    refused_calls: Throttled,
    slots: Arc<Semaphore>,
    /// By peer address: a TCP connection's (remote address) is unique while it is open.
    connections: Mutex<HashMap<SocketAddr, Arc<ConnState>>>,
    /// Calls in progress per peer IP address.
    peers: Mutex<HashMap<IpAddr, usize>>,
}

impl Tracker {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Tracker> {
        Arc::new(Tracker {
            limits,
            refused_connections: Throttled::default(),
            refused_calls: Throttled::default(),
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            connections: Mutex::default(),
            peers: Mutex::default(),
        })
    }

    fn connection(&self, peer: SocketAddr) -> Option<Arc<ConnState>> {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .cloned()
    }

    /// Counts a call from `peer`, or refuses it when its IP address is at its limit.
    fn open_call(self: &Arc<Self>, peer: SocketAddr) -> Option<CallGuard> {
        {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let n = peers.entry(peer.ip()).or_insert(0);
            if self.limits.max_streams_per_peer != 0 && *n >= self.limits.max_streams_per_peer {
                return None;
            }
            *n += 1;
        }
        let connection = self.connection(peer);
        if let Some(c) = &connection {
            c.active.fetch_add(1, Ordering::AcqRel);
        }
        Some(CallGuard {
            tracker: self.clone(),
            peer,
            connection,
        })
    }
}

/// One call in progress; dropped when its response body is done or dropped.
struct CallGuard {
    tracker: Arc<Tracker>,
    peer: SocketAddr,
    connection: Option<Arc<ConnState>>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        {
            let mut peers = self.tracker.peers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = peers.get_mut(&self.peer.ip()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    peers.remove(&self.peer.ip());
                }
            }
        }
        if let Some(c) = &self.connection {
            if c.active.fetch_sub(1, Ordering::AcqRel) == 1 {
                *c.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                c.reader.wake();
            }
        }
    }
}

/// Accepted connections, each holding one of the [`ConnectionLimits::max_connections`] slots.
/// Never yields an error: a failed accept (out of file descriptors, say) is logged and retried after
/// a pause rather than in a busy loop.
pub(crate) fn incoming(
    listener: TcpListener,
    tracker: Arc<Tracker>,
) -> impl Stream<Item = Result<Limited, io::Error>> {
    futures_util::stream::unfold((listener, tracker), |(listener, tracker)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; pausing");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = tracker.slots.clone().try_acquire_owned() else {
                if let Some(suppressed) = tracker.refused_connections.check() {
                    tracing::warn!(
                        %peer,
                        max_connections = tracker.limits.max_connections,
                        suppressed,
                        "connection refused: too many open connections"
                    );
                }
                drop(stream);
                continue;
            };
            // Without TCP_NODELAY, small responses wait for delayed ACKs (~40 ms per request).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let limited = Limited::new(stream, peer, permit, &tracker);
            return Some((Ok(limited), (listener, tracker)));
        }
    })
}

/// An accepted connection under the limits: holds its slot, times out its handshake and idleness.
pub(crate) struct Limited {
    // First, so it is dropped (and the slot freed) before the socket closes: a client that saw the
    // close and connects again finds the slot free.
    _slot: OwnedSemaphorePermit,
    io: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    state: Arc<ConnState>,
    tracker: Arc<Tracker>,
    read: usize,
    /// Until [`PREFACE_LEN`] bytes have come in.
    handshake: Option<Pin<Box<Sleep>>>,
    idle: Pin<Box<Sleep>>,
    idle_deadline: Option<Instant>,
}

impl Limited {
    fn new(
        io: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        tracker: &Arc<Tracker>,
    ) -> Limited {
        let now = Instant::now();
        let state = Arc::new(ConnState {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            reader: AtomicWaker::new(),
        });
        tracker
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, state.clone());
        Limited {
            local: io.local_addr().ok(),
            io,
            peer,
            state,
            tracker: tracker.clone(),
            _slot: slot,
            read: 0,
            handshake: Some(Box::pin(tokio::time::sleep(
                tracker.limits.handshake_timeout,
            ))),
            idle: Box::pin(tokio::time::sleep(tracker.limits.idle_timeout)),
            idle_deadline: None,
        }
    }

    /// Whether a deadline has passed; registers for the next one otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        if let Some(h) = &mut self.handshake {
            if h.as_mut().poll(cx).is_ready() {
                return Some("no handshake within the handshake timeout");
            }
        }
        self.state.reader.register(cx.waker());
        if self.state.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        // A timeout too large to add is no timeout (the configuration bounds nothing above).
        let deadline = self
            .state
            .idle_since()
            .checked_add(self.tracker.limits.idle_timeout)?;
        if Instant::now() >= deadline {
            return Some("idle beyond the idle timeout");
        }
        if self.idle_deadline != Some(deadline) {
            self.idle.as_mut().reset(deadline);
            self.idle_deadline = Some(deadline);
        }
        // Registers the timer; when it fires, the next poll finds the deadline passed.
        let _ = self.idle.as_mut().poll(cx);
        None
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let mut connections = self
            .tracker
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if connections
            .get(&self.peer)
            .is_some_and(|c| Arc::ptr_eq(c, &self.state))
        {
            connections.remove(&self.peer);
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                self.read = self.read.saturating_add(buf.filled().len() - before);
                if self.read >= PREFACE_LEN {
                    self.handshake = None;
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        match self.expired(cx) {
            Some(why) => {
                tracing::debug!(peer = %self.peer, "closing connection: {why}");
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Limited {
    // The same as a plain TcpStream's, so `Request::remote_addr` works as before.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.peer),
        }
    }
}

/// A `tower::Layer` counting calls per connection (for the idle timeout) and per peer IP address
/// (refusing those beyond [`ConnectionLimits::max_streams_per_peer`] with `RESOURCE_EXHAUSTED`).
#[derive(Clone)]
pub(crate) struct StreamLimitLayer {
    tracker: Arc<Tracker>,
}

impl StreamLimitLayer {
    pub(crate) fn new(tracker: Arc<Tracker>) -> StreamLimitLayer {
        StreamLimitLayer { tracker }
    }
}

impl<S> tower::Layer<S> for StreamLimitLayer {
    type Service = StreamLimit<S>;

    fn layer(&self, inner: S) -> StreamLimit<S> {
        StreamLimit {
            inner,
            tracker: self.tracker.clone(),
        }
    }
}

/// The service of [`StreamLimitLayer`].
#[derive(Clone)]
pub(crate) struct StreamLimit<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn peer_of<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|t| t.get_ref().remote_addr())
        })
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for StreamLimit<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let guard = match peer_of(&req) {
            Some(peer) => match self.tracker.open_call(peer) {
                Some(g) => Some(g),
                None => {
                    if let Some(suppressed) = self.tracker.refused_calls.check() {
                        tracing::warn!(
                            %peer,
                            method = req.uri().path(),
                            limit = self.tracker.limits.max_streams_per_peer,
                            suppressed,
                            "call refused: too many concurrent calls from this address"
                        );
                    }
                    let status = tonic::Status::resource_exhausted(format!(
                        "too many concurrent calls from {}: at most {}",
                        peer.ip(),
                        self.tracker.limits.max_streams_per_peer
                    ));
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            },
            None => None,
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let res = call.await?;
            Ok(res.map(|body| {
                tonic::body::Body::new(CallBody {
                    inner: tonic::body::Body::new(body),
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its call counted until hyper is done with it.
struct CallBody {
    inner: tonic::body::Body,
    _guard: Option<CallGuard>,
}

impl http_body::Body for CallBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
