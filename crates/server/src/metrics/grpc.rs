//! The gRPC layer: counts each call by service, method and status code, and times it, under the
//! names and labels of the gRPC ecosystem's Prometheus middleware (`grpc_server_handled_total`,
//! `grpc_server_handling_seconds`; `grpc_service`, `grpc_method`, `grpc_code`).
//!
//! How the status is found: tonic answers a failed unary call (and a stream refused before its first
//! message, and an unknown method) "trailers-only", with `grpc-status` in the response headers, so
//! the headers are checked first. Otherwise the status comes in the trailers at the end of the body
//! (`grpc-status: 0` after a successful unary call, or whatever a stream ended with), which the
//! response body is wrapped to read as they pass. A body dropped before its trailers counts as
//! `Canceled` (the client went away, or the server dropped the call); a body that ends without
//! trailers, or an error from the inner service or the body, as `Unknown`. Durations run until the
//! status is known, so a subscription's is the whole subscription.
//!
//! Bounded series: a path gets its own labels only if it has the shape of a method
//! (`/package.Service/Method`), did not end `Unimplemented` (tonic's answer to a method it does not
//! serve), and fits within [`MAX_METHODS`]; every other call is counted under
//! `grpc_service="other", grpc_method="other"`, so a scanner cannot grow the table.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::{seconds_histogram, GrpcCode, Metrics, CODE_NAMES};

/// Distinct methods given their own labels; further ones are counted under `other`.
pub const MAX_METHODS: usize = 128;
/// Longest path given its own labels.
const MAX_METHOD_LEN: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: Arc<str>,
    grpc_method: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandledLabels {
    grpc_service: Arc<str>,
    grpc_method: Arc<str>,
    grpc_code: GrpcCode,
}

/// The gRPC families of one registry, and the methods seen so far.
pub(super) struct Series {
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// By path; read on every call, written the first time a method finishes.
    methods: RwLock<HashMap<Box<str>, Arc<MethodSeries>>>,
    other: OnceLock<Arc<MethodSeries>>,
}

impl Default for Series {
    fn default() -> Series {
        Series {
            handled: Family::default(),
            handling: Family::new_with_constructor(seconds_histogram),
            methods: RwLock::default(),
            other: OnceLock::new(),
        }
    }
}

/// One method's series, looked up once per call instead of by label set.
struct MethodSeries {
    labels: MethodLabels,
    /// `handled` by code, made the first time a code is seen (series exist only for codes seen).
    codes: [OnceLock<Counter>; CODE_NAMES.len()],
    duration: Histogram,
}

impl Series {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_server_handled",
            "gRPC calls finished on the server, by service, method and status code",
            self.handled.clone(),
        );
        registry.register_with_unit(
            "grpc_server_handling",
            "Time from a gRPC call's arrival until its status is sent (for streams, until the stream ends)",
            Unit::Seconds,
            self.handling.clone(),
        );
    }

    fn series(&self, service: &str, method: &str) -> Arc<MethodSeries> {
        let labels = MethodLabels {
            grpc_service: Arc::from(service),
            grpc_method: Arc::from(method),
        };
        Arc::new(MethodSeries {
            duration: self.handling.get_or_create_owned(&labels),
            labels,
            codes: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    fn other(&self) -> Arc<MethodSeries> {
        self.other
            .get_or_init(|| self.series("other", "other"))
            .clone()
    }

    /// The series of a path seen for the first time, finished with `code`.
    fn entry(&self, path: &str, code: GrpcCode) -> Arc<MethodSeries> {
        let Some((service, method)) = method_path(path) else {
            return self.other();
        };
        if code == GrpcCode::UNIMPLEMENTED {
            return self.other();
        }
        let mut table = self.methods.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = table.get(path) {
            return s.clone();
        }
        if table.len() >= MAX_METHODS {
            return self.other();
        }
        let s = self.series(service, method);
        table.insert(Box::from(path), s.clone());
        s
    }

    fn count(&self, series: &MethodSeries, code: GrpcCode, started: Instant) {
        if let Some(slot) = series.codes.get(code.index()) {
            slot.get_or_init(|| {
                self.handled.get_or_create_owned(&HandledLabels {
                    grpc_service: series.labels.grpc_service.clone(),
                    grpc_method: series.labels.grpc_method.clone(),
                    grpc_code: code,
                })
            })
            .inc();
        }
        series.duration.observe(started.elapsed().as_secs_f64());
    }
}

/// `/package.Service/Method` split into service and method, if `path` has that shape.
fn method_path(path: &str) -> Option<(&str, &str)> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if path.len() > MAX_METHOD_LEN {
        return None;
    }
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (ident(service) && service.contains('.') && ident(method) && !method.contains('.'))
        .then_some((service, method))
}

/// The status code in `grpc-status`; unparseable or out-of-range values count as `Unknown`.
fn status_code(headers: &::http::HeaderMap) -> Option<GrpcCode> {
    let v = headers.get("grpc-status")?;
    let code = std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map_or(GrpcCode::UNKNOWN, GrpcCode::from_i32);
    Some(code)
}

/// A `tower::Layer` counting gRPC calls into a server's [`Metrics`]:
/// `Server::builder().layer(GrpcMetricsLayer::new(app.metrics()))`. See the module documentation
/// for how statuses are read.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    series: Arc<Series>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: &Metrics) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            series: metrics.inner.grpc.clone(),
        }
    }
}

impl std::fmt::Debug for GrpcMetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcMetricsLayer").finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            series: self.series.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    series: Arc<Series>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for GrpcMetrics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// A call being counted; counted exactly once, as `Canceled` if dropped unfinished.
struct Call {
    series: Arc<Series>,
    /// Its method's series, when the path had one already.
    known: Option<Arc<MethodSeries>>,
    /// The path, when it had none yet: one is made when the call finishes (unless Unimplemented).
    path: Option<Box<str>>,
    started: Instant,
    done: bool,
}

impl Call {
    fn start(series: Arc<Series>, path: &str) -> Call {
        let known = series
            .methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned();
        Call {
            path: known.is_none().then(|| Box::from(path)),
            known,
            series,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(&mut self, code: GrpcCode) {
        if self.done {
            return;
        }
        self.done = true;
        let method = match self.known.take() {
            Some(s) => s,
            None => self.series.entry(self.path.as_deref().unwrap_or(""), code),
        };
        self.series.count(&method, code, self.started);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(GrpcCode::CANCELLED);
    }
}

impl<S, ReqBody, ResBody> tower::Service<::http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<::http::Request<ReqBody>, Response = ::http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = ::http::Response<GrpcMetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ::http::Request<ReqBody>) -> Self::Future {
        let mut call = Call::start(self.series.clone(), req.uri().path());
        let response = self.inner.call(req);
        Box::pin(async move {
            match response.await {
                Ok(res) => {
                    // Trailers-only: the status is in the headers and the body is empty.
                    if let Some(code) = status_code(res.headers()) {
                        call.finish(code);
                    }
                    Ok(res.map(|inner| GrpcMetricsBody { inner, call }))
                }
                Err(e) => {
                    call.finish(GrpcCode::UNKNOWN);
                    Err(e)
                }
            }
        })
    }
}

/// A response body that counts its call when the trailers pass (or when dropped unfinished).
pub struct GrpcMetricsBody<B> {
    inner: B,
    call: Call,
}

impl<B> http_body::Body for GrpcMetricsBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call
                        .finish(status_code(trailers).unwrap_or(GrpcCode::UNKNOWN));
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.call.finish(GrpcCode::UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_parse_and_bad_ones_are_unknown() {
        let mut h = ::http::HeaderMap::new();
        assert_eq!(status_code(&h), None);
        h.insert("grpc-status", ::http::HeaderValue::from_static("5"));
        assert_eq!(status_code(&h).map(GrpcCode::name), Some("NotFound"));
        h.insert("grpc-status", ::http::HeaderValue::from_static("99"));
        assert_eq!(status_code(&h), Some(GrpcCode::UNKNOWN));
        h.insert("grpc-status", ::http::HeaderValue::from_static("x"));
        assert_eq!(status_code(&h), Some(GrpcCode::UNKNOWN));
    }

    #[test]
    fn only_method_shaped_paths_get_their_own_labels() {
        assert_eq!(
            method_path("/claimsledger.v1.Ledger/RegisterParty"),
            Some(("claimsledger.v1.Ledger", "RegisterParty"))
        );
        assert_eq!(
            method_path("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        for bad in [
            "",
            "/",
            "/metrics",
            "/Ledger/RegisterParty",
            "/a.B/",
            "/a.B/C/D",
            "/a.B/C\"x",
            "/a.B/C.D",
        ] {
            assert_eq!(method_path(bad), None, "{bad:?}");
        }
        assert_eq!(method_path(&format!("/a.B/{}", "c".repeat(300))), None);
    }

    #[test]
    fn methods_beyond_the_cap_are_other() {
        let series = Series::default();
        for i in 0..MAX_METHODS + 5 {
            let path = format!("/t.S/M{i}");
            let s = series.entry(&path, GrpcCode::OK);
            let want = if i < MAX_METHODS {
                format!("M{i}")
            } else {
                "other".to_string()
            };
            assert_eq!(&*s.labels.grpc_method, want.as_str());
        }
        let s = series.entry("/t.S/M0", GrpcCode::OK);
        assert_eq!(
            &*s.labels.grpc_method, "M0",
            "known methods keep their series"
        );
        let s = series.entry("/t.S/New", GrpcCode::UNIMPLEMENTED);
        assert_eq!(&*s.labels.grpc_method, "other");
    }
}
