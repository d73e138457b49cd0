//! Prometheus metrics, kept in a [`prometheus_client`] registry that each [`Metrics`] owns: one per
//! [`App`](crate::app::App), so several servers in one process (as in the tests) keep their figures
//! apart. [`http::serve`] answers `GET /metrics` with it over hyper; [`GrpcMetricsLayer`] counts the
//! gRPC calls.
//!
//! What is measured, and where (names as exposed):
//! - the log, through [`claims_ledger_log::LogMetrics`], which [`Metrics`] implements and the app
//!   installs in `LogOptions::metrics` (the log itself names no metrics library):
//!   `claims_ledger_append_duration_seconds`, from an append's arrival at the log to its
//!   acknowledgement after the fsync of its commit group; `claims_ledger_fsync_duration_seconds`,
//!   each sync; `claims_ledger_group_commit_events` and `claims_ledger_group_commit_appends`, what
//!   each sync covered; `claims_ledger_events_appended_total`, events made durable since the open;
//!   `claims_ledger_log_events`, the durable count;
//! - the projector ([`Metrics::set_projection_applied`]): `claims_ledger_projection_lag_events`,
//!   durable count − applied, computed at scrape time and left out when no projector runs;
//! - subscriptions: one [`SubscriptionMetrics`] guard per live subscription
//!   ([`Metrics::track_subscription`]), holding its next position. `claims_ledger_subscriptions`
//!   counts them; `claims_ledger_subscription_lag_events{subscription}` gives each named one's lag,
//!   and the anonymous ones' largest lag under `subscription="anonymous"`, so that anonymous readers
//!   cannot grow the number of series. `claims_ledger_subscription_acknowledged_lag_events` gives
//!   every named subscriber's lag behind its stored acknowledged position, connected or not (the
//!   log reports those positions from its open on), so a consumer that stopped shows; past
//!   [`MAX_ACKNOWLEDGED_SERIES`] names, only the ones furthest behind;
//! - gRPC ([`GrpcMetricsLayer`]), with the label names of the gRPC ecosystem's Prometheus
//!   middleware, so its dashboards and alerts apply: `grpc_server_handled_total{grpc_service,
//!   grpc_method, grpc_code}` and `grpc_server_handling_seconds{grpc_service, grpc_method}`. Codes
//!   are spelled as there too (`OK`, `Canceled`, `NotFound`, ...). An append session is one call;
//!   the appends inside it are counted one by one by [`Metrics::observe_session_append`]:
//!   `claims_ledger_session_appends_total{grpc_code}` and
//!   `claims_ledger_session_append_duration_seconds`;
//! - the process (`process`): `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`,
//!   `process_start_time_seconds`, read from `/proc` at scrape time (Linux only);
//! - `claims_ledger_build_info{version}`, always 1.
//!
//! Counters are atomics; the histograms of `prometheus_client` take a short mutex per observation,
//! held for a few arithmetic operations, which a scrape also takes for as long as it copies one
//! histogram. Labelled series sit in maps behind read-mostly locks: per gRPC method a read lock once
//! per call (the write lock only the first time a method is seen), per live subscription once at its
//! start and once at its end.
mod grpc;
pub mod http;
#[cfg(target_os = "linux")]
mod process;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

pub use grpc::{GrpcMetrics, GrpcMetricsBody, GrpcMetricsLayer};
pub use http::{serve, serve_with_token};

/// Bucket bounds of the latency histograms, in seconds.
const DURATION_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Bucket bounds of events per sync.
const EVENT_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
/// Bucket bounds of appends per sync (at most `LogOptions::max_group` per staged group).
const APPEND_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Most named subscribers given an acknowledged-lag series per scrape: any reader may create names,
/// and the ones furthest behind are those worth a series.
pub const MAX_ACKNOWLEDGED_SERIES: usize = 1000;

fn seconds_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A gRPC status code as a label value, spelled as the gRPC ecosystem's Prometheus middleware
/// spells it (Go's `codes.Code` names), so that its dashboards and alert rules apply unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrpcCode(u8);

/// The codes' names, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

impl GrpcCode {
    pub const OK: GrpcCode = GrpcCode(0);
    pub const CANCELLED: GrpcCode = GrpcCode(1);
    pub const UNKNOWN: GrpcCode = GrpcCode(2);
    pub const UNIMPLEMENTED: GrpcCode = GrpcCode(12);

    /// The code numbered `code` on the wire; out-of-range numbers are `Unknown`, as gRPC reads them.
    pub fn from_i32(code: i32) -> GrpcCode {
        u8::try_from(code)
            .ok()
            .filter(|c| usize::from(*c) < CODE_NAMES.len())
            .map_or(GrpcCode::UNKNOWN, GrpcCode)
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        CODE_NAMES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("Unknown")
    }

    fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl EncodeLabelValue for GrpcCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabels {
    grpc_code: GrpcCode,
}

/// The server's metrics: cheap to clone, every clone the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    append: Histogram,
    fsync: Histogram,
    group_events: Histogram,
    group_appends: Histogram,
    events_appended: Counter,
    live: Arc<Live>,
    grpc: Arc<grpc::Series>,
    session_appends: Family<CodeLabels, Counter>,
    session_duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Metrics {
        let append = seconds_histogram();
        let fsync = seconds_histogram();
        let group_events = Histogram::new(EVENT_BUCKETS);
        let group_appends = Histogram::new(APPEND_BUCKETS);
        let events_appended = Counter::default();
        let live = Arc::new(Live::default());
        let grpc = Arc::new(grpc::Series::default());
        let session_appends = Family::<CodeLabels, Counter>::default();
        let session_duration = seconds_histogram();

        let mut registry = Registry::default();
        grpc.register(&mut registry);
        #[cfg(target_os = "linux")]
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        let ours = registry.sub_registry_with_prefix("claims_ledger");
        ours.register(
            "build",
            "The version of the server",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        ours.register_with_unit(
            "append_duration",
            "Time from an append reaching the log until it is acknowledged after the fsync of its commit group",
            Unit::Seconds,
            append.clone(),
        );
        ours.register_with_unit(
            "fsync_duration",
            "Time to make one commit group durable: fdatasync of its write-ahead log segment",
            Unit::Seconds,
            fsync.clone(),
        );
        ours.register(
            "group_commit_events",
            "Events made durable by one sync",
            group_events.clone(),
        );
        ours.register(
            "group_commit_appends",
            "Appends acknowledged after one sync",
            group_appends.clone(),
        );
        ours.register(
            "events_appended",
            "Events made durable since the log was opened",
            events_appended.clone(),
        );
        ours.register(
            "session_appends",
            "Appends answered inside Ledger.AppendSession streams, by the status code each carried",
            session_appends.clone(),
        );
        ours.register_with_unit(
            "session_append_duration",
            "Time from an append session message's arrival until its answer is ready",
            Unit::Seconds,
            session_duration.clone(),
        );
        ours.register_collector(Box::new(LiveCollector(live.clone())));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                append,
                fsync,
                group_events,
                group_appends,
                events_appended,
                live,
                grpc,
                session_appends,
                session_duration,
            }),
        }
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Every metric in the Prometheus text format 0.0.4.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, self.registry())?;
        Ok(out)
    }

    /// Every metric in the OpenMetrics text format 1.0 (ending with `# EOF`).
    pub fn render_openmetrics(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, self.registry())?;
        Ok(out)
    }

    /// One append of an append session answered with gRPC status `code` (0 when accepted), `took`
    /// after its message arrived.
    pub fn observe_session_append(&self, code: i32, took: Duration) {
        let labels = CodeLabels {
            grpc_code: GrpcCode::from_i32(code),
        };
        self.inner.session_appends.get_or_create(&labels).inc();
        self.inner.session_duration.observe(took.as_secs_f64());
    }

    /// The projections have applied every event below `applied`.
    pub fn set_projection_applied(&self, applied: u64) {
        let live = &self.inner.live;
        live.applied.store(applied, Ordering::Release);
        live.projector.store(true, Ordering::Release);
    }

    /// Registers a live subscription until the guard is dropped; keep its position current with
    /// [`SubscriptionMetrics::set_position`].
    pub fn track_subscription(&self, name: Option<&str>, position: u64) -> SubscriptionMetrics {
        let entry = Arc::new(SubscriptionEntry {
            name: name.map(Box::from),
            position: AtomicU64::new(position),
        });
        let live = self.inner.live.clone();
        let id = {
            let mut subs = live.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
            let id = subs.next_id;
            subs.next_id += 1;
            subs.live.insert(id, entry.clone());
            id
        };
        SubscriptionMetrics { live, id, entry }
    }

    /// A named subscriber's stored acknowledged position (`None`: forgotten).
    fn set_acknowledged(&self, name: &str, position: Option<u64>) {
        let mut acked = self
            .inner
            .live
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
}

/// The log's reports, recorded in this registry.
impl claims_ledger_log::LogMetrics for Metrics {
    fn opened(&self, durable: u64) {
        self.inner.live.durable.store(durable, Ordering::Release);
    }
    fn cursor(&self, name: &str, position: Option<u64>) {
        self.set_acknowledged(name, position);
    }
    fn synced_group(&self, events: usize, appends: usize) {
        self.inner.group_events.observe(events as f64);
        self.inner.group_appends.observe(appends as f64);
    }
    fn committed(&self, events: usize, durable: u64) {
        self.inner.events_appended.inc_by(events as u64);
        self.inner.live.durable.store(durable, Ordering::Release);
    }
    fn acknowledged(&self, latency: Duration) {
        self.inner.append.observe(latency.as_secs_f64());
    }
    fn synced(&self, took: Duration) {
        self.inner.fsync.observe(took.as_secs_f64());
    }
}

/// One live subscription.
#[derive(Debug)]
struct SubscriptionEntry {
    name: Option<Box<str>>,
    /// The next position it will scan.
    position: AtomicU64,
}

#[derive(Debug, Default)]
struct Subscriptions {
    next_id: u64,
    live: HashMap<u64, Arc<SubscriptionEntry>>,
}

/// What the lags are computed from at scrape time.
#[derive(Debug, Default)]
struct Live {
    /// Durable events in the log.
    durable: AtomicU64,
    applied: AtomicU64,
    /// Whether a projector runs (without one the projection lag means nothing and is left out).
    projector: AtomicBool,
    subscriptions: Mutex<Subscriptions>,
    /// Named subscribers' acknowledged positions, by name.
    acknowledged: Mutex<BTreeMap<String, u64>>,
}

/// A live subscription's entry in its server's registry; dropping it removes the subscription.
pub struct SubscriptionMetrics {
    live: Arc<Live>,
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
        self.live
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .remove(&self.id);
    }
}

/// Each named subscriber's lag behind `durable`, in name order; past `cap` names, only the `cap`
/// furthest behind.
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

/// Writes the figures computed at scrape time: the durable count and the lags behind it.
#[derive(Debug)]
struct LiveCollector(Arc<Live>);

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = &self.0;
        let durable = live.durable.load(Ordering::Acquire);
        gauge(
            &mut encoder,
            "log_events",
            "Durable events in the log.",
            durable,
        )?;
        if live.projector.load(Ordering::Acquire) {
            let applied = live.applied.load(Ordering::Acquire);
            gauge(
                &mut encoder,
                "projection_lag_events",
                "Durable events the projections have not applied yet.",
                durable.saturating_sub(applied),
            )?;
        }

        // Named subscriptions by name (several with one name: the largest), anonymous ones
        // together, as the largest lag among them.
        let (count, lags) = {
            let subs = live.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
            let mut lags: BTreeMap<String, u64> = BTreeMap::new();
            lags.insert("anonymous".into(), 0);
            for e in subs.live.values() {
                let lag = durable.saturating_sub(e.position.load(Ordering::Relaxed));
                let label = e.name.as_deref().unwrap_or("anonymous");
                let slot = lags.entry(label.to_string()).or_insert(0);
                *slot = (*slot).max(lag);
            }
            (subs.live.len() as u64, lags)
        };
        gauge(&mut encoder, "subscriptions", "Live subscriptions.", count)?;
        by_subscription(
            &mut encoder,
            "subscription_lag_events",
            "Durable events a live subscription has not scanned yet; anonymous subscriptions as their maximum.",
            lags,
        )?;
        let acked = acknowledged_lags(
            &live.acknowledged.lock().unwrap_or_else(|p| p.into_inner()),
            durable,
            MAX_ACKNOWLEDGED_SERIES,
        );
        by_subscription(
            &mut encoder,
            "subscription_acknowledged_lag_events",
            "Durable events at or after a named subscriber's acknowledged position, whether it is connected or not.",
            acked,
        )
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn by_subscription(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    lags: impl IntoIterator<Item = (String, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (subscription, lag) in lags {
        let labels = [("subscription", subscription.as_str())];
        ConstGauge::new(lag).encode(family.encode_family(&labels)?)?;
    }
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
    fn codes_are_named_as_the_grpc_ecosystem_names_them() {
        assert_eq!(GrpcCode::from_i32(0).name(), "OK");
        assert_eq!(GrpcCode::from_i32(1).name(), "Canceled");
        assert_eq!(GrpcCode::from_i32(5).name(), "NotFound");
        assert_eq!(GrpcCode::from_i32(16).name(), "Unauthenticated");
        assert_eq!(GrpcCode::from_i32(17).name(), "Unknown");
        assert_eq!(GrpcCode::from_i32(-1).name(), "Unknown");
    }

    #[test]
    fn registries_are_separate_and_label_values_escaped() {
        let a = Metrics::new();
        let b = Metrics::new();
        claims_ledger_log::LogMetrics::committed(&a, 3, 3);
        claims_ledger_log::LogMetrics::cursor(&a, "q\"uote\\d\nname", Some(1));
        let text_a = a.render().expect("render");
        let text_b = b.render().expect("render");
        assert!(
            text_a.contains("\nclaims_ledger_events_appended_total 3\n"),
            "{text_a}"
        );
        assert!(
            text_b.contains("\nclaims_ledger_events_appended_total 0\n"),
            "{text_b}"
        );
        assert!(
            text_a.contains(
                "claims_ledger_subscription_acknowledged_lag_events{subscription=\"q\\\"uote\\\\d\\nname\"} 2\n"
            ),
            "{text_a}"
        );
        assert!(text_a.contains(&format!(
            "claims_ledger_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        let open = a.render_openmetrics().expect("render");
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE claims_ledger_build info\n"), "{open}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let m = Metrics::new();
        for v in [0, 1, 2, 3, 4, 5, 100] {
            claims_ledger_log::LogMetrics::synced_group(&m, v, 1);
        }
        let text = m.render().expect("render");
        for want in [
            "claims_ledger_group_commit_events_bucket{le=\"1\"} 2\n",
            "claims_ledger_group_commit_events_bucket{le=\"2\"} 3\n",
            "claims_ledger_group_commit_events_bucket{le=\"4\"} 5\n",
            "claims_ledger_group_commit_events_bucket{le=\"4096\"} 7\n",
            "claims_ledger_group_commit_events_bucket{le=\"+Inf\"} 7\n",
            "claims_ledger_group_commit_events_sum 115.0\n",
            "claims_ledger_group_commit_events_count 7\n",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
