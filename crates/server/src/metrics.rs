//! Prometheus metrics: a process-wide registry of atomic counters, gauges and fixed-bucket
//! histograms, rendered in the text exposition format 0.0.4 by [`render`] and served on their own
//! port by [`serve`], a minimal HTTP/1.1 server answering `GET /metrics`.
//!
//! What is measured, and where:
//! - the log (`log::store`): append latency from the moment an append reaches the log until it is
//!   acknowledged after the fsync of its commit group ([`observe_append`]), the time of each sync
//!   ([`observe_fsync`]), the events and appends each sync covers ([`observe_group`]), and events
//!   made durable ([`observe_committed`], which also keeps the durable count for the lags below);
//! - the projector: the position it has applied ([`set_projection_applied`]); the projection lag is
//!   computed at scrape time as durable count − applied;
//! - subscriptions: one [`SubscriptionMetrics`] guard per live subscription, holding its next
//!   position; its lag is computed at scrape time as durable count − that position. Only named
//!   subscriptions get their own label; anonymous ones are reported as their maximum lag under
//!   `subscription="anonymous"`, so the number of series stays bounded; and every named
//!   subscriber's acknowledged position, connected or not ([`set_acknowledged`], kept by the log
//!   from its open on), whose lag is computed the same way, so a consumer that stopped shows;
//! - gRPC: [`GrpcMetricsLayer`], a `tower::Layer` for `tonic::transport::Server::builder().layer(..)`
//!   that counts requests by method and status code and times them; and the appends inside
//!   `Ledger.AppendSession` streams ([`observe_session_append`]), which that layer sees as one call.
//!
//! The hot path takes no locks: histograms and counters are plain atomics. Only the labelled series
//! sit in maps behind locks: per gRPC method (a read lock once per request; the write lock only the
//! first time a method is seen) and per live subscription (once at its start and once at its end).
//!
//! One registry per process: a process that opens several logs (tests) sees their figures mixed.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bucket bounds of the latency histograms, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Bucket bounds of events per sync.
const EVENT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
/// Bucket bounds of appends per sync (at most `LogOptions::max_group` per staged group).
const APPEND_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Distinct gRPC method labels kept; requests to further paths are counted as `method="other"`.
const MAX_METHODS: usize = 128;
/// Longest path kept as a method label.
const MAX_METHOD_LEN: usize = 200;

/// The gRPC status codes, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CODE_CANCELLED: usize = 1;
const CODE_UNKNOWN: usize = 2;
const CODE_UNIMPLEMENTED: usize = 12;

/// A histogram with fixed buckets. Observations are integers in `scale` units per base unit
/// (nanoseconds for seconds, 1 for counts), so the sum is an atomic integer too.
struct Histogram {
    /// Upper bounds in base units, as rendered in `le`.
    le: &'static [f64],
    /// The same bounds in observation units.
    bounds: Box<[u64]>,
    scale: u64,
    /// Non-cumulative counts: `buckets[i]` holds observations in `(bounds[i-1], bounds[i]]`; the
    /// last one those above every bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(le: &'static [f64], scale: u64) -> Histogram {
        Histogram {
            le,
            bounds: le
                .iter()
                .map(|b| (b * scale as f64).round() as u64)
                .collect(),
            scale,
            buckets: (0..=le.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn seconds() -> Histogram {
        Histogram::new(DURATION_BUCKETS, NANOS_PER_SECOND)
    }

    fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|b| *b < value);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples; `labels` are `k="v"` pairs, or empty.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (le, bucket) in self.le.iter().zip(self.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        if let Some(inf) = self.buckets.last() {
            cumulative += inf.load(Ordering::Relaxed);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum.load(Ordering::Relaxed);
        if self.scale == 1 {
            let _ = writeln!(out, "{name}_sum{braces} {sum}");
        } else {
            let _ = writeln!(out, "{name}_sum{braces} {}", sum as f64 / self.scale as f64);
        }
        // The count is the +Inf bucket, so a scrape is always self-consistent.
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Requests of one gRPC method.
struct MethodStats {
    codes: [AtomicU64; 17],
    duration: Histogram,
}

impl MethodStats {
    fn new() -> MethodStats {
        MethodStats {
            codes: std::array::from_fn(|_| AtomicU64::new(0)),
            duration: Histogram::seconds(),
        }
    }
}

/// One live subscription.
struct SubscriptionEntry {
    name: Option<Box<str>>,
    /// The next position it will scan.
    position: AtomicU64,
}

#[derive(Default)]
struct Subscriptions {
    next_id: u64,
    live: HashMap<u64, Arc<SubscriptionEntry>>,
}

struct Registry {
    append: Histogram,
    fsync: Histogram,
    group_events: Histogram,
    group_appends: Histogram,
    events_appended: AtomicU64,
    log_events: AtomicU64,
    projection_applied: AtomicU64,
    /// Whether a projector runs (without one the projection lag means nothing and is left out).
    projector: AtomicBool,
    subscriptions: Mutex<Subscriptions>,
    /// Named subscribers' acknowledged positions, by name.
    acknowledged: Mutex<BTreeMap<String, u64>>,
    grpc: RwLock<HashMap<Box<str>, Arc<MethodStats>>>,
    /// Paths beyond `MAX_METHODS`, unimplemented ones, and unprintable ones.
    grpc_other: Arc<MethodStats>,
    /// Appends answered inside append sessions.
    session_appends: MethodStats,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        append: Histogram::seconds(),
        fsync: Histogram::seconds(),
        group_events: Histogram::new(EVENT_BUCKETS, 1),
        group_appends: Histogram::new(APPEND_BUCKETS, 1),
        events_appended: AtomicU64::new(0),
        log_events: AtomicU64::new(0),
        projection_applied: AtomicU64::new(0),
        projector: AtomicBool::new(false),
        subscriptions: Mutex::new(Subscriptions::default()),
        acknowledged: Mutex::new(BTreeMap::new()),
        grpc: RwLock::new(HashMap::new()),
        grpc_other: Arc::new(MethodStats::new()),
        session_appends: MethodStats::new(),
    })
}

/// One append acknowledged: `latency` from its arrival at the log to its reply after the sync.
pub fn observe_append(latency: Duration) {
    registry().append.observe_duration(latency);
}

/// One append of an append session answered with gRPC status `code` (0 when accepted), `took`
/// after its message arrived.
pub fn observe_session_append(code: i32, took: Duration) {
    let stats = &registry().session_appends;
    let slot = usize::try_from(code)
        .ok()
        .filter(|c| *c < stats.codes.len())
        .unwrap_or(2); // UNKNOWN
    stats.codes[slot].fetch_add(1, Ordering::Relaxed);
    stats.duration.observe_duration(took);
}

/// One sync of the log to disk (flush plus fdatasync) took `took`.
pub fn observe_fsync(took: Duration) {
    registry().fsync.observe_duration(took);
}

/// One sync made `events` events durable and acknowledges `appends` appends.
pub fn observe_group(events: usize, appends: usize) {
    let r = registry();
    r.group_events.observe(events as u64);
    r.group_appends.observe(appends as u64);
}

/// `events` events became durable; the log now holds `durable` events.
pub fn observe_committed(events: usize, durable: u64) {
    let r = registry();
    r.events_appended
        .fetch_add(events as u64, Ordering::Relaxed);
    r.log_events.store(durable, Ordering::Release);
}

/// The log holds `durable` events (at open, before any commit).
pub fn set_log_durable(durable: u64) {
    registry().log_events.store(durable, Ordering::Release);
}

/// The projections have applied every event below `applied`.
pub fn set_projection_applied(applied: u64) {
    let r = registry();
    r.projection_applied.store(applied, Ordering::Release);
    r.projector.store(true, Ordering::Release);
}

/// Most named subscribers given an acknowledged-lag series per scrape.
const MAX_ACKNOWLEDGED_SERIES: usize = 1000;

/// Each named subscriber's lag behind `durable`, in name order; past `cap` names, only the `cap`
/// furthest behind (any reader may create names, and those are the ones worth a series).
fn acknowledged_lags(
    acked: &BTreeMap<String, u64>,
    durable: u64,
    cap: usize,
) -> Vec<(String, u64)> {
    let mut lags: Vec<(String, u64)> = acked
        .iter()
        .map(|(name, acked)| (name.clone(), durable.saturating_sub(*acked)))
        .collect();
    if lags.len() > cap {
        lags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        lags.truncate(cap);
        lags.sort();
    }
    lags
}

/// A named subscriber's stored acknowledged position (`None`: forgotten).
pub fn set_acknowledged(name: &str, position: Option<u64>) {
    let mut acked = registry()
        .acknowledged
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match position {
        // Concurrent acknowledgements may report out of order; the stored one is their maximum.
        Some(p) => {
            let slot = acked.entry(name.to_string()).or_insert(p);
            *slot = (*slot).max(p);
        }
        None => {
            acked.remove(name);
        }
    }
}

/// Registers a live subscription until dropped; keep its position current with
/// [`SubscriptionMetrics::set_position`].
pub fn track_subscription(name: Option<&str>, position: u64) -> SubscriptionMetrics {
    let entry = Arc::new(SubscriptionEntry {
        name: name.map(Box::from),
        position: AtomicU64::new(position),
    });
    let mut subs = registry()
        .subscriptions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let id = subs.next_id;
    subs.next_id += 1;
    subs.live.insert(id, entry.clone());
    SubscriptionMetrics { id, entry }
}

/// A live subscription's entry in the registry; dropping it removes the subscription.
pub struct SubscriptionMetrics {
    id: u64,
    entry: Arc<SubscriptionEntry>,
}

impl SubscriptionMetrics {
    /// The next position the subscription will scan.
    pub fn set_position(&self, position: u64) {
        self.entry.position.store(position, Ordering::Relaxed);
    }
}

impl Drop for SubscriptionMetrics {
    fn drop(&mut self) {
        registry()
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .remove(&self.id);
    }
}

/// Escapes a label value for the exposition format.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Every metric, in the Prometheus text exposition format 0.0.4.
pub fn render() -> String {
    let r = registry();
    let mut out = String::with_capacity(8192);
    let durable = r.log_events.load(Ordering::Acquire);

    let histograms = [
        (
            "claims_ledger_append_duration_seconds",
            "Time from an append reaching the log until it is acknowledged after the fsync of its commit group.",
            &r.append,
        ),
        (
            "claims_ledger_fsync_duration_seconds",
            "Time to make one commit group durable: sled flush plus fdatasync.",
            &r.fsync,
        ),
        (
            "claims_ledger_group_commit_events",
            "Events made durable by one sync.",
            &r.group_events,
        ),
        (
            "claims_ledger_group_commit_appends",
            "Appends acknowledged after one sync.",
            &r.group_appends,
        ),
    ];
    for (name, help, histogram) in histograms {
        header(&mut out, name, "histogram", help);
        histogram.render(&mut out, name, "");
    }

    let name = "claims_ledger_events_appended_total";
    header(
        &mut out,
        name,
        "counter",
        "Events made durable since the process started.",
    );
    let _ = writeln!(out, "{name} {}", r.events_appended.load(Ordering::Relaxed));

    let name = "claims_ledger_log_events";
    header(&mut out, name, "gauge", "Durable events in the log.");
    let _ = writeln!(out, "{name} {durable}");

    let name = "claims_ledger_projection_lag_events";
    header(
        &mut out,
        name,
        "gauge",
        "Durable events the projections have not applied yet.",
    );
    if r.projector.load(Ordering::Acquire) {
        let applied = r.projection_applied.load(Ordering::Acquire);
        let _ = writeln!(out, "{name} {}", durable.saturating_sub(applied));
    }

    // Lags by label: named subscriptions by name (several with one name: the largest), anonymous
    // ones together, as the largest lag among them.
    let (live, lags) = {
        let subs = r.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        let mut lags: BTreeMap<String, u64> = BTreeMap::new();
        lags.insert("anonymous".into(), 0);
        for e in subs.live.values() {
            let lag = durable.saturating_sub(e.position.load(Ordering::Relaxed));
            let label = e.name.as_deref().unwrap_or("anonymous");
            let slot = lags.entry(label.to_string()).or_insert(0);
            *slot = (*slot).max(lag);
        }
        (subs.live.len(), lags)
    };
    let name = "claims_ledger_subscriptions";
    header(&mut out, name, "gauge", "Live subscriptions.");
    let _ = writeln!(out, "{name} {live}");
    let name = "claims_ledger_subscription_lag_events";
    header(
        &mut out,
        name,
        "gauge",
        "Durable events a live subscription has not scanned yet; anonymous subscriptions as their maximum.",
    );
    for (label, lag) in &lags {
        let _ = writeln!(
            out,
            "{name}{{subscription=\"{}\"}} {lag}",
            escape_label(label)
        );
    }
    let name = "claims_ledger_subscription_acknowledged_lag_events";
    header(
        &mut out,
        name,
        "gauge",
        "Durable events at or after a named subscriber's acknowledged position, whether it is connected or not.",
    );
    let acked = acknowledged_lags(
        &r.acknowledged.lock().unwrap_or_else(|p| p.into_inner()),
        durable,
        MAX_ACKNOWLEDGED_SERIES,
    );
    for (label, lag) in &acked {
        let _ = writeln!(
            out,
            "{name}{{subscription=\"{}\"}} {lag}",
            escape_label(label)
        );
    }

    let mut methods: Vec<(String, Arc<MethodStats>)> = r
        .grpc
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (escape_label(k), v.clone()))
        .collect();
    methods.sort_by(|a, b| a.0.cmp(&b.0));
    methods.push(("other".into(), r.grpc_other.clone()));
    let name = "claims_ledger_grpc_requests_total";
    header(
        &mut out,
        name,
        "counter",
        "gRPC requests finished, by method and status code.",
    );
    for (method, stats) in &methods {
        render_codes(
            &mut out,
            name,
            &format!("method=\"{method}\","),
            &stats.codes,
        );
    }
    let name = "claims_ledger_grpc_request_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time from a gRPC request's arrival until its status is sent (for streams, until the stream ends).",
    );
    for (method, stats) in &methods {
        stats
            .duration
            .render(&mut out, name, &format!("method=\"{method}\""));
    }

    let name = "claims_ledger_session_appends_total";
    header(
        &mut out,
        name,
        "counter",
        "Appends answered inside Ledger.AppendSession streams, by the status code each carried.",
    );
    render_codes(&mut out, name, "", &r.session_appends.codes);
    let name = "claims_ledger_session_append_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time from an append session message's arrival until its answer is ready.",
    );
    r.session_appends.duration.render(&mut out, name, "");
    out
}

/// One sample per status code seen, labelled `{labels}code="..."` (`labels` ends with a comma).
fn render_codes(out: &mut String, name: &str, labels: &str, codes: &[AtomicU64; 17]) {
    for (code, count) in CODE_NAMES.iter().zip(codes.iter()) {
        let count = count.load(Ordering::Relaxed);
        if count > 0 {
            let _ = writeln!(out, "{name}{{{labels}code=\"{code}\"}} {count}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC layer
// ---------------------------------------------------------------------------------------------

/// A `tower::Layer` counting gRPC requests by method and status code, and timing them:
/// `Server::builder().layer(GrpcMetricsLayer::new())`.
///
/// How the status is found: tonic answers a failed unary call (and a stream refused before its
/// first message, and an unknown method) "trailers-only", with `grpc-status` in the response
/// headers, so the headers are checked first. Otherwise the status comes in the trailers at the end
/// of the body (`grpc-status: 0` after a successful unary call, or whatever a stream ended with),
/// which the response body is wrapped to read as they pass. A body dropped before its trailers
/// counts as `CANCELLED` (the client went away, or the server dropped the call); a body that ends
/// without trailers, or an error from the inner service or the body, as `UNKNOWN`. Durations run
/// until the status is known, so a subscription's is the whole subscription.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl GrpcMetricsLayer {
    pub fn new() -> GrpcMetricsLayer {
        GrpcMetricsLayer
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// A request being counted; counted exactly once, as `CANCELLED` if dropped unfinished.
struct Call {
    stats: Option<Arc<MethodStats>>,
    /// The path, when it had no entry yet: one is made when it finishes (unless UNIMPLEMENTED).
    path: Option<Box<str>>,
    started: Instant,
    done: bool,
}

impl Call {
    fn start(path: &str) -> Call {
        let stats = registry()
            .grpc
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned();
        Call {
            path: stats.is_none().then(|| Box::from(path)),
            stats,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(&mut self, code: usize) {
        if self.done {
            return;
        }
        self.done = true;
        let stats = match self.stats.take() {
            Some(s) => s,
            None => method_entry(self.path.as_deref().unwrap_or(""), code),
        };
        if let Some(c) = stats.codes.get(code) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        stats.duration.observe_duration(self.started.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(CODE_CANCELLED);
    }
}

/// Whether `path` has the shape of a gRPC method: `/package.Service/Method`.
fn is_method_path(path: &str) -> bool {
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    path.len() <= MAX_METHOD_LEN
        && path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .is_some_and(|(service, method)| {
                ident(service) && service.contains('.') && ident(method) && !method.contains('.')
            })
}

/// The entry of a path seen for the first time. Unknown methods (which tonic answers UNIMPLEMENTED),
/// paths not shaped like a method, and paths beyond the cap share `other`, so a scanner cannot grow
/// the table past `MAX_METHODS`.
fn method_entry(path: &str, code: usize) -> Arc<MethodStats> {
    let r = registry();
    if code == CODE_UNIMPLEMENTED || !is_method_path(path) {
        return r.grpc_other.clone();
    }
    let mut table = r.grpc.write().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = table.get(path) {
        return s.clone();
    }
    if table.len() >= MAX_METHODS {
        return r.grpc_other.clone();
    }
    let s = Arc::new(MethodStats::new());
    table.insert(Box::from(path), s.clone());
    s
}

/// The status code in `grpc-status`; unparseable or out-of-range values count as UNKNOWN.
fn status_code(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?;
    let code = std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|c| *c < CODE_NAMES.len())
        .unwrap_or(CODE_UNKNOWN);
    Some(code)
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<GrpcMetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let mut call = Call::start(req.uri().path());
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
                    call.finish(CODE_UNKNOWN);
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
                        .finish(status_code(trailers).unwrap_or(CODE_UNKNOWN));
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.call.finish(CODE_UNKNOWN),
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

// ---------------------------------------------------------------------------------------------
// HTTP endpoint
// ---------------------------------------------------------------------------------------------

/// Largest request head read; longer ones are answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// Most connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Longest a connection may take from accept to close.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long, and how much, a closed connection's remaining input is read and discarded.
const LINGER: Duration = Duration::from_secs(2);
const MAX_LINGER_BYTES: usize = 64 * 1024;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` (and `HEAD`) on `listener` until `shutdown` resolves: one request per
/// connection, answered and closed. Other paths get 404, other methods on `/metrics` 405.
pub async fn serve<F>(listener: TcpListener, shutdown: F)
where
    F: Future<Output = ()>,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "metrics: too many connections; closing");
                    continue;
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection"),
                        Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Where the request head ends (after its blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head = loop {
        if let Some(end) = head_end(&buf) {
            break buf.get(..end);
        }
        if buf.len() >= MAX_HEAD {
            break None;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // Closed before a whole head: nobody to answer.
            return Ok(());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let (status, allow, body, head_only) = match head {
        None => (
            "431 Request Header Fields Too Large",
            false,
            String::new(),
            false,
        ),
        Some(head) => {
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            let (method, target, version) = (parts.next(), parts.next(), parts.next());
            let path = target.map(|t| t.split('?').next().unwrap_or(t));
            match (method, path, version) {
                (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") => match (m, p) {
                    ("GET", "/metrics") => ("200 OK", false, render(), false),
                    ("HEAD", "/metrics") => ("200 OK", false, render(), true),
                    (_, "/metrics") => ("405 Method Not Allowed", true, String::new(), false),
                    _ => (
                        "404 Not Found",
                        false,
                        "not found; try /metrics\n".into(),
                        false,
                    ),
                },
                _ => ("400 Bad Request", false, String::new(), false),
            }
        }
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if allow {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Lingering close: closing with unread input (the rest of an oversized head) would reset the
    // connection and could destroy the answer before the client reads it. Wait for the client to
    // close, discarding what it still sends, for a little while.
    let _ = tokio::time::timeout(LINGER, async {
        let mut discarded = 0usize;
        while discarded < MAX_LINGER_BYTES {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_lags_are_capped_to_the_furthest_behind() {
        let acked: BTreeMap<String, u64> = [("a", 90), ("b", 10), ("c", 50), ("d", 200)]
            .into_iter()
            .map(|(n, p)| (n.to_string(), p))
            .collect();
        let all = acknowledged_lags(&acked, 100, 10);
        let want = [("a", 10), ("b", 90), ("c", 50), ("d", 0)];
        assert_eq!(all, want.map(|(n, l)| (n.to_string(), l)));
        // Two series: the two furthest behind, still in name order.
        let capped = acknowledged_lags(&acked, 100, 2);
        assert_eq!(
            capped,
            [("b", 90), ("c", 50)].map(|(n, l)| (n.to_string(), l))
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[1.0, 2.0, 4.0], 1);
        for v in [0, 1, 2, 3, 4, 5, 100] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert_eq!(
            out,
            "x_bucket{le=\"1\"} 2\nx_bucket{le=\"2\"} 3\nx_bucket{le=\"4\"} 5\n\
             x_bucket{le=\"+Inf\"} 7\nx_sum 115\nx_count 7\n"
        );
    }

    #[test]
    fn seconds_histogram_renders_fractional_bounds_and_sum() {
        let h = Histogram::seconds();
        h.observe_duration(Duration::from_micros(500));
        h.observe_duration(Duration::from_micros(501));
        h.observe_duration(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "d", "method=\"m\"");
        assert!(
            out.starts_with("d_bucket{method=\"m\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("d_bucket{method=\"m\",le=\"0.001\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("d_bucket{method=\"m\",le=\"5\"} 2\n"), "{out}");
        assert!(
            out.contains("d_bucket{method=\"m\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("d_sum{method=\"m\"} 10.001001\n"), "{out}");
        assert!(out.ends_with("d_count{method=\"m\"} 3\n"), "{out}");
    }

    #[test]
    fn status_codes_parse_and_bad_ones_are_unknown() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status_code(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(status_code(&h), Some(5));
        h.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(status_code(&h), Some(CODE_UNKNOWN));
        h.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(status_code(&h), Some(CODE_UNKNOWN));
    }

    #[test]
    fn only_method_shaped_paths_get_their_own_label() {
        assert!(is_method_path("/claimsledger.v1.Ledger/RegisterParty"));
        assert!(is_method_path("/grpc.health.v1.Health/Check"));
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
            assert!(!is_method_path(bad), "{bad:?}");
        }
        assert!(!is_method_path(&format!("/a.B/{}", "c".repeat(300))));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn request_heads_end_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}

/// The log's reports ([`claims_ledger_log::LogMetrics`]), recorded in this process's registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSink;

impl claims_ledger_log::LogMetrics for LogSink {
    fn opened(&self, durable: u64) {
        set_log_durable(durable);
    }
    fn cursor(&self, name: &str, position: Option<u64>) {
        set_acknowledged(name, position);
    }
    fn synced_group(&self, events: usize, appends: usize) {
        observe_group(events, appends);
    }
    fn committed(&self, events: usize, durable: u64) {
        observe_committed(events, durable);
    }
    fn acknowledged(&self, latency: Duration) {
        observe_append(latency);
    }
    fn synced(&self, took: Duration) {
        observe_fsync(took);
    }
}
