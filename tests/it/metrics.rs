//! Prometheus metrics: a real server takes appends over gRPC while `metrics::serve` runs on its own
//! port with that server's registry, and raw HTTP scrapes show the log's counters and histograms
//! move by exactly what was written, the projection lag return to zero, and live subscriptions with
//! their lags; the exposition parses line by line, in both formats the endpoint speaks. The gRPC
//! layer counts real tonic statuses (trailers-only errors, OK in trailers, unknown methods folded
//! into `other`) and, around a bare service, statuses in headers, in trailers, and calls dropped
//! unfinished. Each server has its own registry, so these run beside the other tests: two servers
//! in one process keep their figures apart.
use crate::common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use claims_ledger_proto as pb;
use claims_ledger_server::app::{Start, SubscribeOptions, SubscriptionItem};
use claims_ledger_server::config::{token_hash, Role, TokenEntry, Tokens};
use claims_ledger_server::grpc::auth::AuthLayer;
use claims_ledger_server::metrics::{self, GrpcMetricsLayer, Metrics};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::Bytes;
use tower::{Layer, Service, ServiceExt};

/// Starts `metrics::serve` for `registry` on an ephemeral port; it stops when the sender is dropped.
async fn start_metrics(registry: &Metrics) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(metrics::serve(listener, registry.clone(), async {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// Sends `request` as is and returns (status line, lowercase headers, body).
async fn http(addr: &str, request: &str) -> (String, HashMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status = lines.next().expect("status line").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Scrapes `/metrics` asking for OpenMetrics, as Prometheus does; checks the answer and parses it.
async fn scrape_openmetrics(addr: &str) -> HashMap<String, f64> {
    let (status, headers, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: metrics\r\nAccept: application/openmetrics-text;version=1.0.0,\
         text/plain;version=0.0.4;q=0.5\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    parse_openmetrics(&body)
}

/// Scrapes `/metrics` over raw TCP; checks the answer and parses every sample.
async fn scrape(addr: &str) -> HashMap<String, f64> {
    let (status, headers, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: metrics\r\nAccept: */*\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some(body.len().to_string().as_str())
    );
    parse_exposition(&body)
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `k="v",k="v"`, honouring escapes; panics on anything else.
fn parse_labels(s: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\": {line}"));
        assert!(is_metric_name(name), "bad label name {name:?}: {line}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            assert!(rest.is_empty(), "junk after label: {line}");
        }
    }
    out
}

/// The families every scrape has, with their types (in the Prometheus text format).
const ALWAYS: &[(&str, &str)] = &[
    ("claims_ledger_append_duration_seconds", "histogram"),
    ("claims_ledger_fsync_duration_seconds", "histogram"),
    ("claims_ledger_group_commit_events", "histogram"),
    ("claims_ledger_group_commit_appends", "histogram"),
    ("claims_ledger_session_append_duration_seconds", "histogram"),
    ("claims_ledger_events_appended_total", "counter"),
    ("claims_ledger_log_events", "gauge"),
    ("claims_ledger_subscriptions", "gauge"),
    ("claims_ledger_subscription_lag_events", "gauge"),
    (
        "claims_ledger_subscription_acknowledged_lag_events",
        "gauge",
    ),
    ("claims_ledger_build_info", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_threads", "gauge"),
    ("process_start_time_seconds", "gauge"),
];

/// Families that appear once something was counted in them, with their types.
const ONCE_SEEN: &[(&str, &str)] = &[
    ("claims_ledger_projection_lag_events", "gauge"),
    ("claims_ledger_session_appends_total", "counter"),
    ("grpc_server_handled_total", "counter"),
    ("grpc_server_handling_seconds", "histogram"),
];

/// Checks the Prometheus text format 0.0.4 line by line (`# HELP` and `# TYPE` before each family's
/// samples; every other line `name{labels} value`; counters named `_total`) and the families every
/// scrape has, and returns the samples keyed by their line's series text.
fn parse_exposition(body: &str) -> HashMap<String, f64> {
    let (samples, typed) = parse_text(body, false);
    for (name, kind) in ALWAYS {
        assert_eq!(typed.get(*name).map(String::as_str), Some(*kind), "{name}");
    }
    for (name, kind) in ONCE_SEEN {
        if let Some(k) = typed.get(*name) {
            assert_eq!(k, kind, "{name}");
        }
    }
    for (name, kind) in &typed {
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} is named _total");
        }
    }
    let build = format!(
        "claims_ledger_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(samples.get(&build), Some(&1.0), "{build}");
    samples
}

/// As [`parse_exposition`], for OpenMetrics 1.0: `# UNIT` lines, counters and infos typed under
/// their family name with `_total` and `_info` samples, and `# EOF` at the end.
fn parse_openmetrics(body: &str) -> HashMap<String, f64> {
    let body = body
        .strip_suffix("# EOF\n")
        .expect("OpenMetrics ends with # EOF");
    let (samples, typed) = parse_text(body, true);
    // OpenMetrics types counters and infos by their family names, without the sample suffix.
    let family = |name: &'static str, kind: &'static str| match (kind, name) {
        ("counter", _) => (name.strip_suffix("_total").unwrap_or(name), kind),
        (_, "claims_ledger_build_info") => ("claims_ledger_build", "info"),
        _ => (name, kind),
    };
    for (name, kind) in ALWAYS {
        let (name, kind) = family(name, kind);
        assert_eq!(typed.get(name).map(String::as_str), Some(kind), "{name}");
    }
    for (name, kind) in ONCE_SEEN {
        let (name, kind) = family(name, kind);
        if let Some(k) = typed.get(name) {
            assert_eq!(k, kind, "{name}");
        }
    }
    samples
}

/// Parses either text format; returns the samples and each family's type.
fn parse_text(body: &str, openmetrics: bool) -> (HashMap<String, f64>, HashMap<String, String>) {
    let mut samples = HashMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = Vec::new();
    assert!(body.ends_with('\n'), "exposition ends with a newline");
    let kinds: &[&str] = if openmetrics {
        &[
            "counter",
            "gauge",
            "histogram",
            "summary",
            "unknown",
            "info",
            "stateset",
            "gaugehistogram",
        ]
    } else {
        &["counter", "gauge", "histogram", "summary", "untyped"]
    };
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(is_metric_name(name) && !help.is_empty(), "{line}");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(kinds.contains(&kind), "{line}");
            assert!(helped.iter().any(|h| h == name), "HELP before TYPE: {line}");
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "one TYPE per family: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            assert!(openmetrics, "UNIT only in OpenMetrics: {line}");
            let (name, unit) = rest.split_once(' ').expect("UNIT has a unit");
            assert!(typed.contains_key(name), "TYPE before UNIT: {line}");
            assert!(name.ends_with(&format!("_{unit}")), "{line}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                parse_labels(labels.strip_suffix('}').expect("closing brace"), line),
            ),
            None => (series, Vec::new()),
        };
        assert!(is_metric_name(name), "bad metric name: {line}");
        let family = match typed.get(name) {
            Some(_) => name.to_string(),
            None => {
                let suffixes: &[(&str, &str)] = &[
                    ("_bucket", "histogram"),
                    ("_sum", "histogram"),
                    ("_count", "histogram"),
                    ("_total", "counter"),
                    ("_created", "counter"),
                    ("_info", "info"),
                ];
                suffixes
                    .iter()
                    .filter(|(_, kind)| openmetrics || *kind == "histogram")
                    .find_map(|(suffix, kind)| {
                        name.strip_suffix(suffix)
                            .filter(|f| typed.get(*f).map(String::as_str) == Some(*kind))
                    })
                    .unwrap_or_else(|| panic!("sample before its TYPE: {line}"))
                    .to_string()
            }
        };
        if name.ends_with("_bucket") && typed.get(&family).map(String::as_str) == Some("histogram")
        {
            assert!(
                labels.iter().any(|(k, _)| k == "le"),
                "bucket has le: {line}"
            );
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate series: {line}"
        );
    }
    (samples, typed)
}

/// `registry` in the Prometheus text format.
fn render(registry: &Metrics) -> String {
    registry.render().expect("render")
}

/// The `grpc_server_handled_total` series of `service/method` ended with `code`.
fn handled(path: &str, code: &str) -> String {
    let (service, method) = path.split_once('/').expect("service/method");
    format!(
        "grpc_server_handled_total{{grpc_service=\"{service}\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
    )
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// Scrapes until `pred` holds (or panics after 10 s), returning that scrape.
async fn scrape_until(
    addr: &str,
    what: &str,
    mut pred: impl FnMut(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(addr).await;
        if pred(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers `n` parties from `writers` concurrent clients; returns the events written.
async fn write_parties(s: &TestServer, tag: &str, writers: usize, n: usize) -> u64 {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = s.ledger().await;
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut events = 0u64;
            for i in (w..n).step_by(writers) {
                let r = c
                    .register_party(pb::RegisterPartyRequest {
                        command: Some(party(&format!("{tag}-{i}"), pb::PartyKind::Person)),
                        ..Default::default()
                    })
                    .await
                    .expect("register party")
                    .into_inner();
                events += r.result.expect("result").events.len() as u64;
            }
            events
        }));
    }
    let mut events = 0;
    for t in tasks {
        events += t.await.expect("writer");
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_move_the_log_metrics_by_exactly_what_was_written() {
    let s = TestServer::start().await;
    let (addr, _stop) = start_metrics(s.app.metrics()).await;
    let before = scrape(&addr).await;

    let appends = 12u64;
    let events = write_parties(&s, "metrics", 3, appends as usize).await;
    assert_eq!(events, appends, "one event per RegisterParty");
    let head = s
        .events()
        .await
        .get_head(pb::GetHeadRequest {})
        .await
        .expect("head")
        .into_inner();

    // Acknowledged appends were counted before their replies were sent: no waiting needed.
    let after = scrape(&addr).await;
    let delta = |series: &str| get(&after, series) - get(&before, series);
    assert_eq!(
        delta("claims_ledger_events_appended_total"),
        events as f64,
        "events appended counts exactly the events written"
    );
    assert_eq!(
        delta("claims_ledger_append_duration_seconds_count"),
        appends as f64,
        "one append latency per acknowledged append"
    );
    assert!(delta("claims_ledger_append_duration_seconds_sum") > 0.0);
    let syncs = delta("claims_ledger_fsync_duration_seconds_count");
    assert!(
        syncs >= 1.0 && syncs <= appends as f64,
        "1..={appends} syncs, got {syncs}"
    );
    assert!(delta("claims_ledger_fsync_duration_seconds_sum") > 0.0);
    assert_eq!(
        delta("claims_ledger_group_commit_events_count"),
        syncs,
        "one group size per sync"
    );
    assert_eq!(
        delta("claims_ledger_group_commit_events_sum"),
        events as f64
    );
    assert_eq!(
        delta("claims_ledger_group_commit_appends_sum"),
        appends as f64
    );
    assert_eq!(
        get(&after, "claims_ledger_log_events"),
        head.event_count as f64
    );
    // Every append took at least its fsync, so no append is faster than the fastest bucket it fits.
    assert_eq!(
        get(
            &after,
            "claims_ledger_append_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        get(&after, "claims_ledger_append_duration_seconds_count")
    );

    // The server's own gRPC layer counted the calls, by service, method and code.
    assert_eq!(
        delta(
            "grpc_server_handled_total{grpc_service=\"claimsledger.v1.Ledger\",\
             grpc_method=\"RegisterParty\",grpc_code=\"OK\"}"
        ),
        appends as f64
    );
    assert_eq!(
        delta(
            "grpc_server_handling_seconds_count{grpc_service=\"claimsledger.v1.Ledger\",\
             grpc_method=\"RegisterParty\"}"
        ),
        appends as f64
    );
    // The process: figures that any live process has.
    assert!(get(&after, "process_open_fds") > 0.0);
    assert!(get(&after, "process_max_fds") >= get(&after, "process_open_fds"));
    assert!(get(&after, "process_resident_memory_bytes") > 0.0);
    assert!(get(&after, "process_cpu_seconds_total") > 0.0);
    let started = get(&after, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        started > now - 24.0 * 3600.0 && started <= now + 1.0,
        "started at {started}, now {now}"
    );

    // The same figures in OpenMetrics, for a scraper that asks for it.
    let open = scrape_openmetrics(&addr).await;
    assert_eq!(
        get(&open, "claims_ledger_events_appended_total"),
        get(&after, "claims_ledger_events_appended_total")
    );

    // The projector catches up with the log, and the lag says so.
    scrape_until(&addr, "projection lag 0", |m| {
        m.get("claims_ledger_projection_lag_events") == Some(&0.0)
    })
    .await;

    // Another server in this process has its own registry: none of the above is in it.
    let other = TestServer::start().await;
    let (other_addr, _other_stop) = start_metrics(other.app.metrics()).await;
    let m = scrape(&other_addr).await;
    assert_eq!(get(&m, "claims_ledger_events_appended_total"), 0.0);
    assert_eq!(get(&m, "claims_ledger_append_duration_seconds_count"), 0.0);
    assert!(
        !m.keys().any(|k| k.starts_with("grpc_server_handled_total")),
        "no calls to the other server: {m:?}"
    );
    other.stop().await;
    s.stop().await;
}

/// The appends inside an append session are counted one by one, by the status each carried, and
/// timed; the gRPC layer sees the whole session as one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_session_appends_are_counted_by_status() {
    let s = TestServer::start().await;
    let registry = s.app.metrics().clone();
    let before = parse_exposition(&render(&registry));
    let register = |id: &str| {
        batch_of(vec![pb::batch_command::Command::RegisterParty(party(
            id,
            pb::PartyKind::Person,
        ))])
    };
    let messages = vec![
        pb::AppendSessionRequest {
            request_id: 1,
            append: Some(register("session-metrics-a")),
        },
        // No append: refused with INVALID_ARGUMENT, and the session goes on.
        pb::AppendSessionRequest {
            request_id: 2,
            append: None,
        },
        pb::AppendSessionRequest {
            request_id: 3,
            append: Some(register("session-metrics-b")),
        },
    ];
    let mut answers = s
        .ledger()
        .await
        .append_session(tokio_stream::iter(messages))
        .await
        .expect("open session")
        .into_inner();
    let mut refused = Vec::new();
    while let Some(answer) = answers.message().await.expect("answer") {
        if let Some(pb::append_session_response::Result::Refused(r)) = answer.result {
            refused.push((answer.request_id, r.code));
        }
    }
    assert_eq!(refused, vec![(2, tonic::Code::InvalidArgument as i32)]);

    let after = parse_exposition(&render(&registry));
    let delta = |series: &str| get(&after, series) - get(&before, series);
    assert_eq!(
        delta("claims_ledger_session_appends_total{grpc_code=\"OK\"}"),
        2.0
    );
    assert_eq!(
        delta("claims_ledger_session_appends_total{grpc_code=\"InvalidArgument\"}"),
        1.0
    );
    assert_eq!(
        delta("claims_ledger_session_append_duration_seconds_count"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscriptions_are_counted_with_their_lag() {
    let s = TestServer::start().await;
    let (addr, _stop) = start_metrics(s.app.metrics()).await;
    let base = get(&scrape(&addr).await, "claims_ledger_subscriptions");

    let written = write_parties(&s, "lag", 4, 200).await;
    assert_eq!(written, 200);
    let subscribe = |name: Option<&str>, start: Start| {
        s.app
            .subscribe(SubscribeOptions {
                name: name.map(str::to_string),
                start,
                ..SubscribeOptions::default()
            })
            .expect("subscribe")
    };
    // Nobody reads these two: each fills its buffer and then pauses, 200 − buffer events behind.
    let mut named = subscribe(Some("metrics-lagging"), Start::Position(0));
    let anonymous_behind = subscribe(None, Start::Position(0));
    let anonymous_live = subscribe(None, Start::End);

    let named_lag = "claims_ledger_subscription_lag_events{subscription=\"metrics-lagging\"}";
    let anon_lag = "claims_ledger_subscription_lag_events{subscription=\"anonymous\"}";
    let mut last = None;
    let m = scrape_until(&addr, "paused subscribers", |m| {
        // Both paused after filling their buffers: the same reading twice in a row.
        let now = (get(m, named_lag), get(m, anon_lag));
        let stable = last.replace(now) == Some(now);
        stable
            && now.0 == now.1
            && now.0 > 0.0
            && now.0 < 200.0
            && get(m, "claims_ledger_subscriptions") == base + 3.0
    })
    .await;
    assert_eq!(get(&m, "claims_ledger_subscriptions"), base + 3.0);
    let lag = get(&m, named_lag);
    assert!(lag > 0.0 && lag < 200.0, "paused after its buffer: {lag}");
    assert_eq!(
        get(&m, anon_lag),
        lag,
        "anonymous subscriptions report the largest lag among them"
    );
    assert!(
        !m.keys()
            .any(|k| k.starts_with("claims_ledger_subscription_lag_events{")
                && !k.contains("\"metrics-lagging\"")
                && !k.contains("\"anonymous\"")),
        "no per-subscription series for anonymous subscriptions: {m:?}"
    );

    // Reading the named one to the end brings its lag to zero.
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), named.recv())
            .await
            .expect("subscription stalled")
            .expect("open")
            .expect("item");
        if matches!(item, SubscriptionItem::CaughtUp(_)) {
            break;
        }
    }
    scrape_until(&addr, "named lag 0", |m| get(m, named_lag) == 0.0).await;

    // Ended subscriptions leave the registry.
    drop((named, anonymous_behind, anonymous_live));
    let m = scrape_until(&addr, "subscriptions gone", |m| {
        get(m, "claims_ledger_subscriptions") == base
    })
    .await;
    assert!(!m.contains_key(named_lag), "an ended name leaves no series");
    assert_eq!(get(&m, anon_lag), 0.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_layer_counts_real_tonic_statuses() {
    // The server's stack: the metrics layer outermost, so it also counts what authentication refuses.
    let tokens = Tokens::from_entries(&[TokenEntry {
        name: "metrics-reader".into(),
        sha256: token_hash("reader-token"),
        roles: vec![Role::Reader],
    }])
    .expect("tokens");
    let registry = Metrics::new();
    // The reporter answers SERVING for "" and NOT_FOUND for services it was not told about.
    let (_health, health_service) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(GrpcMetricsLayer::new(&registry))
            .layer(AuthLayer::new(Some(Arc::new(tokens))))
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let before = parse_exposition(&render(&registry));
    let mut health_client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.to_string(),
    };
    for _ in 0..2 {
        health_client
            .check(check(""))
            .await
            .expect("server is serving");
    }
    for _ in 0..3 {
        let e = health_client
            .check(check("no.such.Service"))
            .await
            .expect_err("unregistered");
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
    // A stream: the status comes in its trailers, or it is cancelled when the client goes away.
    let mut watch = health_client
        .watch(check(""))
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("status").expect("one message");
    drop(watch);
    // Refused by authentication before any service: counted by the outer layer all the same.
    let e = pb::ledger_client::LedgerClient::new(channel.clone())
        .register_party(pb::RegisterPartyRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // A method this server does not have: UNIMPLEMENTED, counted under `other`.
    let mut req = tonic::Request::new(pb::ListPartiesRequest::default());
    req.metadata_mut().insert(
        "authorization",
        "Bearer reader-token".parse().expect("metadata"),
    );
    let e = pb::query_client::QueryClient::new(channel)
        .list_parties(req)
        .await
        .expect_err("not served here");
    assert_eq!(e.code(), tonic::Code::Unimplemented);

    let requests =
        |m: &HashMap<String, f64>, method: &str, code: &str| get(m, &handled(method, code));
    let check_path = "grpc.health.v1.Health/Check";
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = parse_exposition(&render(&registry));
        // The server sees the cancelled stream a moment after the client dropped it.
        if requests(&m, "grpc.health.v1.Health/Watch", "Canceled") >= 1.0
            || Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let delta =
        |method: &str, code: &str| requests(&after, method, code) - requests(&before, method, code);
    assert_eq!(delta(check_path, "OK"), 2.0, "OK from the trailers");
    assert_eq!(
        delta(check_path, "NotFound"),
        3.0,
        "trailers-only errors from the headers"
    );
    assert_eq!(
        delta("grpc.health.v1.Health/Watch", "Canceled"),
        1.0,
        "a stream the client dropped"
    );
    assert_eq!(
        delta("claimsledger.v1.Ledger/RegisterParty", "Unauthenticated"),
        1.0
    );
    assert_eq!(delta("other/other", "Unimplemented"), 1.0);
    assert!(
        !after
            .keys()
            .any(|k| k.contains("claimsledger.v1.Query") || k.contains("ListParties")),
        "unknown methods get no series of their own"
    );
    let durations = |m: &HashMap<String, f64>| {
        get(
            m,
            "grpc_server_handling_seconds_count{grpc_service=\"grpc.health.v1.Health\",\
             grpc_method=\"Check\"}",
        )
    };
    assert_eq!(durations(&after) - durations(&before), 5.0);

    let _ = stop.send(());
    let _ = server.await;
}

/// A response body: one data frame, then trailers with `grpc-status`.
struct TrailersBody {
    data: Option<Bytes>,
    status: Option<&'static str>,
}

impl http_body::Body for TrailersBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
        }
        Poll::Ready(self.status.take().map(|s| {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static(s));
            Ok(http_body::Frame::trailers(t))
        }))
    }
}

/// A bare service: `/t.Fake/Header` answers `grpc-status: 5` in its headers (trailers-only); any
/// other path answers data and then trailers with the status named by the path's last segment.
async fn fake(req: http::Request<()>) -> Result<http::Response<TrailersBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/t.Fake/Header" {
        let mut res = http::Response::new(TrailersBody {
            data: None,
            status: None,
        });
        res.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("5"));
        return Ok(res);
    }
    let status = match path.rsplit('/').next() {
        Some("Ok") => "0",
        Some("Unavailable") => "14",
        _ => "not-a-number",
    };
    Ok(http::Response::new(TrailersBody {
        data: Some(Bytes::from_static(b"\0\0\0\0\0")),
        status: Some(status),
    }))
}

async fn drain<B: http_body::Body + Unpin>(mut body: B) {
    while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
        .await
        .is_some()
    {}
}

#[tokio::test]
async fn layer_reads_status_from_headers_trailers_or_counts_a_drop_as_cancelled() {
    let registry = Metrics::new();
    let mut svc = GrpcMetricsLayer::new(&registry).layer(tower::service_fn(fake));
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .expect("ready");
    let mut call = |path: &'static str| {
        let req = http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(())
            .expect("request");
        let fut = svc.call(req);
        async move { fut.await.expect("response").into_body() }
    };
    let count = |series: &str| get(&parse_exposition(&render(&registry)), series);
    let series = |method: &str, code: &str| handled(&format!("t.Fake/{method}"), code);

    // In the headers: counted as soon as the response is out, without touching the body.
    let body = call("/t.Fake/Header").await;
    assert_eq!(count(&series("Header", "NotFound")), 1.0);
    drop(body);
    assert_eq!(count(&series("Header", "NotFound")), 1.0, "counted once");
    assert_eq!(count(&series("Header", "Canceled")), 0.0);

    // In the trailers: counted when they pass.
    let body = call("/t.Fake/Unavailable").await;
    assert_eq!(count(&series("Unavailable", "Unavailable")), 0.0);
    drain(body).await;
    assert_eq!(count(&series("Unavailable", "Unavailable")), 1.0);
    drain(call("/t.Fake/Ok").await).await;
    assert_eq!(count(&series("Ok", "OK")), 1.0);
    drain(call("/t.Fake/Garbled").await).await;
    assert_eq!(count(&series("Garbled", "Unknown")), 1.0);

    // Dropped before its trailers: the client went away.
    drop(call("/t.Fake/Dropped").await);
    assert_eq!(count(&series("Dropped", "Canceled")), 1.0);

    // And the layer composes with tower's ServiceExt like any service.
    GrpcMetricsLayer::new(&registry)
        .layer(tower::service_fn(fake))
        .oneshot(
            http::Request::builder()
                .uri("http://x/t.Fake/Header")
                .body(())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(count(&series("Header", "NotFound")), 2.0);
}

/// Past the cap, only the subscribers furthest behind keep an acknowledged-lag series.
#[test]
fn acknowledged_lag_series_are_capped_to_the_furthest_behind() {
    use claims_ledger_log::LogMetrics;
    let registry = Metrics::new();
    let cap = metrics::MAX_ACKNOWLEDGED_SERIES;
    let total = cap + 50;
    registry.opened(total as u64);
    // Subscriber i acknowledged position i: the lowest numbers are furthest behind.
    for i in 0..total {
        registry.cursor(&format!("s{i:05}"), Some(i as u64));
    }
    let m = parse_exposition(&render(&registry));
    let series = |i: usize| {
        format!("claims_ledger_subscription_acknowledged_lag_events{{subscription=\"s{i:05}\"}}")
    };
    let kept = m
        .keys()
        .filter(|k| k.starts_with("claims_ledger_subscription_acknowledged_lag_events{"))
        .count();
    assert_eq!(kept, cap);
    assert_eq!(get(&m, &series(0)), total as f64);
    assert_eq!(get(&m, &series(cap - 1)), (total - cap + 1) as f64);
    assert!(!m.contains_key(&series(cap)), "closer ones have no series");
    // A forgotten one makes room.
    registry.cursor("s00000", None);
    let m = parse_exposition(&render(&registry));
    assert!(!m.contains_key(&series(0)));
    assert!(m.contains_key(&series(cap)));
}

#[tokio::test]
async fn endpoint_answers_only_get_metrics() {
    let registry = Metrics::new();
    let (addr, stop) = start_metrics(&registry).await;
    let (status, headers, body) = http(&addr, "HEAD /metrics HTTP/1.1\r\nHost: m\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.is_empty(), "HEAD has no body");
    assert!(headers.get("content-length").is_some_and(|l| l != "0"));
    let (status, _, body) = http(&addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
    assert!(
        status.ends_with(" 200 OK"),
        "query strings are ignored: {status}"
    );
    parse_exposition(&body);
    let (status, _, _) = http(&addr, "GET / HTTP/1.1\r\nHost: m\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = http(&addr, "POST /metrics HTTP/1.1\r\nHost: m\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET, HEAD"));
    let (status, _, _) = http(&addr, "nonsense\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9_000));
    let (status, _, _) = http(&addr, &huge).await;
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");

    // After shutdown nothing listens.
    drop(stop);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_subscribers_show_their_acknowledged_lag_connected_or_not() {
    let s = TestServer::start().await;
    let (addr, _stop) = start_metrics(s.app.metrics()).await;
    write_parties(&s, "acked", 2, 20).await;
    let head = s.head().await.event_count;
    let series =
        "claims_ledger_subscription_acknowledged_lag_events{subscription=\"metrics-acked\"}";
    let mut ev = s.events().await;
    let ack = |position: u64| pb::AckRequest {
        subscription_name: "metrics-acked".into(),
        position,
    };
    ev.ack(ack(5)).await.expect("ack");
    assert_eq!(get(&scrape(&addr).await, series), (head - 5) as f64);
    // An older acknowledgement changes nothing; new events raise the lag of a consumer that is not
    // even connected.
    ev.ack(ack(3)).await.expect("ack");
    write_parties(&s, "acked-more", 1, 10).await;
    let m = scrape_until(&addr, "10 more events", |m| {
        get(m, series) == (head + 10 - 5) as f64
    })
    .await;
    assert_eq!(get(&m, series), (head + 5) as f64);
    // Forgotten: the series goes.
    ev.delete_subscription(pb::DeleteSubscriptionRequest {
        subscription_name: "metrics-acked".into(),
    })
    .await
    .expect("delete");
    assert!(!scrape(&addr).await.contains_key(series));

    // The positions stored on disk are reported from the open on.
    ev.ack(ack(head)).await.expect("ack");
    let dir = s.stop().await;
    // A new server has a new registry, which has the position from the log's open on.
    let s = TestServer::start_in(dir).await;
    let (addr, _stop) = start_metrics(s.app.metrics()).await;
    let m = scrape(&addr).await;
    assert_eq!(
        get(&m, series),
        10.0,
        "{head} acknowledged of {}",
        head + 10
    );
    s.stop().await;
}

/// The metric names in `text`: identifiers starting with one of our families' prefixes.
fn metric_names(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            ["claims_ledger_", "grpc_server_", "process_"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// The alert rules shipped in `deploy/` and the README's metrics section name only metrics the
/// server exposes, under the names the scrapes above check.
#[test]
fn documented_metric_names_are_exposed() {
    let families: Vec<(&str, &str)> = ALWAYS.iter().chain(ONCE_SEEN).copied().collect();
    let known = |name: &str| {
        families.iter().any(|(f, kind)| {
            name == *f
                || (*kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(*f)))
        })
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("rules");
    let named = metric_names(&rules);
    assert!(named.len() >= 5, "{named:?}");
    for name in &named {
        assert!(
            known(name),
            "deploy/prometheus/alerts.yml names {name}, which is not exposed"
        );
    }
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let section = readme
        .split_once("Metrics: `GET /metrics`")
        .and_then(|(_, rest)| rest.split_once("\n\n"))
        .map(|(section, _)| section)
        .expect("README has a metrics paragraph");
    let named = metric_names(section);
    for (name, _) in ALWAYS.iter().chain(ONCE_SEEN) {
        assert!(
            named.iter().any(|n| n == name),
            "README does not name {name}"
        );
    }
    for name in &named {
        assert!(known(name), "README names {name}, which is not exposed");
    }
}
