//! Prometheus metrics: a real server takes appends over gRPC while `metrics::serve` runs on its own
//! port, and raw HTTP scrapes show the log's counters and histograms move by exactly what was
//! written, the projection lag return to zero, and live subscriptions with their lags; the
//! exposition parses line by line. The gRPC layer counts real tonic statuses (trailers-only errors,
//! OK in trailers, unknown methods folded into `other`) and, around a bare service, statuses in
//! headers, in trailers, and calls dropped unfinished.
// Its own test binary: the metrics registry is per process, and other tests' appends would move it.
#[path = "it/common/mod.rs"]
mod common;

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
use claims_ledger_server::metrics::{self, GrpcMetricsLayer};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::Bytes;
use tower::{Layer, Service, ServiceExt};

/// Tests that write to a log or count its subscriptions run one at a time: the registry is global.
static LOG_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts `metrics::serve` on an ephemeral port; it stops when the sender is dropped.
async fn start_metrics() -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(metrics::serve(listener, async {
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

/// Checks the text format line by line (`# HELP` and `# TYPE` before each family's samples; every
/// other line `name{labels} value`) and returns the samples keyed by their line's series text.
fn parse_exposition(body: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = Vec::new();
    assert!(body.ends_with('\n'), "exposition ends with a newline");
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(is_metric_name(name) && !help.is_empty(), "{line}");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helped.iter().any(|h| h == name), "HELP before TYPE: {line}");
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "one TYPE per family: {line}"
            );
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
            None => ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| typed.get(*f).map(String::as_str) == Some("histogram"))
                .unwrap_or_else(|| panic!("sample before its TYPE: {line}"))
                .to_string(),
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
    for name in [
        "claims_ledger_append_duration_seconds",
        "claims_ledger_fsync_duration_seconds",
        "claims_ledger_group_commit_events",
        "claims_ledger_group_commit_appends",
        "claims_ledger_grpc_request_duration_seconds",
    ] {
        assert_eq!(
            typed.get(name).map(String::as_str),
            Some("histogram"),
            "{name}"
        );
    }
    for name in [
        "claims_ledger_events_appended_total",
        "claims_ledger_grpc_requests_total",
    ] {
        assert_eq!(
            typed.get(name).map(String::as_str),
            Some("counter"),
            "{name}"
        );
    }
    for name in [
        "claims_ledger_projection_lag_events",
        "claims_ledger_subscriptions",
        "claims_ledger_subscription_lag_events",
        "claims_ledger_log_events",
    ] {
        assert_eq!(typed.get(name).map(String::as_str), Some("gauge"), "{name}");
    }
    samples
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
    let _serial = LOG_TESTS.lock().await;
    let s = TestServer::start().await;
    let (addr, _stop) = start_metrics().await;
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

    // The projector catches up with the log, and the lag says so.
    scrape_until(&addr, "projection lag 0", |m| {
        m.get("claims_ledger_projection_lag_events") == Some(&0.0)
    })
    .await;
    s.stop().await;
}

/// The appends inside an append session are counted one by one, by the status each carried, and
/// timed; the gRPC layer sees the whole session as one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_session_appends_are_counted_by_status() {
    let _serial = LOG_TESTS.lock().await;
    let s = TestServer::start().await;
    let before = parse_exposition(&metrics::render());
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

    let after = parse_exposition(&metrics::render());
    let delta = |series: &str| get(&after, series) - get(&before, series);
    assert_eq!(
        delta("claims_ledger_session_appends_total{code=\"OK\"}"),
        2.0
    );
    assert_eq!(
        delta("claims_ledger_session_appends_total{code=\"INVALID_ARGUMENT\"}"),
        1.0
    );
    assert_eq!(
        delta("claims_ledger_session_append_duration_seconds_count"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscriptions_are_counted_with_their_lag() {
    let _serial = LOG_TESTS.lock().await;
    let s = TestServer::start().await;
    let (addr, _stop) = start_metrics().await;
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
    // The reporter answers SERVING for "" and NOT_FOUND for services it was not told about.
    let (_health, health_service) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(GrpcMetricsLayer::new())
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
    let before = parse_exposition(&metrics::render());
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

    let requests = |m: &HashMap<String, f64>, method: &str, code: &str| {
        get(
            m,
            &format!("claims_ledger_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}}"),
        )
    };
    let check_path = "/grpc.health.v1.Health/Check";
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = parse_exposition(&metrics::render());
        // The server sees the cancelled stream a moment after the client dropped it.
        if requests(&m, "/grpc.health.v1.Health/Watch", "CANCELLED") >= 1.0
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
        delta(check_path, "NOT_FOUND"),
        3.0,
        "trailers-only errors from the headers"
    );
    assert_eq!(
        delta("/grpc.health.v1.Health/Watch", "CANCELLED"),
        1.0,
        "a stream the client dropped"
    );
    assert_eq!(
        delta("/claimsledger.v1.Ledger/RegisterParty", "UNAUTHENTICATED"),
        1.0
    );
    assert_eq!(delta("other", "UNIMPLEMENTED"), 1.0);
    assert!(
        !after
            .keys()
            .any(|k| k.contains("/claimsledger.v1.Query/ListParties")),
        "unknown methods get no series of their own"
    );
    let durations = |m: &HashMap<String, f64>| {
        get(
            m,
            &format!(
                "claims_ledger_grpc_request_duration_seconds_count{{method=\"{check_path}\"}}"
            ),
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
    let mut svc = GrpcMetricsLayer::new().layer(tower::service_fn(fake));
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
    let count = |series: &str| get(&parse_exposition(&metrics::render()), series);
    let series = |method: &str, code: &str| {
        format!("claims_ledger_grpc_requests_total{{method=\"/t.Fake/{method}\",code=\"{code}\"}}")
    };

    // In the headers: counted as soon as the response is out, without touching the body.
    let body = call("/t.Fake/Header").await;
    assert_eq!(count(&series("Header", "NOT_FOUND")), 1.0);
    drop(body);
    assert_eq!(count(&series("Header", "NOT_FOUND")), 1.0, "counted once");
    assert_eq!(count(&series("Header", "CANCELLED")), 0.0);

    // In the trailers: counted when they pass.
    let body = call("/t.Fake/Unavailable").await;
    assert_eq!(count(&series("Unavailable", "UNAVAILABLE")), 0.0);
    drain(body).await;
    assert_eq!(count(&series("Unavailable", "UNAVAILABLE")), 1.0);
    drain(call("/t.Fake/Ok").await).await;
    assert_eq!(count(&series("Ok", "OK")), 1.0);
    drain(call("/t.Fake/Garbled").await).await;
    assert_eq!(count(&series("Garbled", "UNKNOWN")), 1.0);

    // Dropped before its trailers: the client went away.
    drop(call("/t.Fake/Dropped").await);
    assert_eq!(count(&series("Dropped", "CANCELLED")), 1.0);

    // And the layer composes with tower's ServiceExt like any service.
    GrpcMetricsLayer::new()
        .layer(tower::service_fn(fake))
        .oneshot(
            http::Request::builder()
                .uri("http://x/t.Fake/Header")
                .body(())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(count(&series("Header", "NOT_FOUND")), 2.0);
}

#[tokio::test]
async fn endpoint_answers_only_get_metrics() {
    let (addr, stop) = start_metrics().await;
    let (status, headers, body) = http(&addr, "HEAD /metrics HTTP/1.1\r\nHost: m\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.is_empty(), "HEAD has no body");
    assert!(headers.get("content-length").is_some_and(|l| l != "0"));
    let (status, _, _) = http(&addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "query strings are ignored");
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
    let _serial = LOG_TESTS.lock().await;
    let s = TestServer::start().await;
    let (addr, _stop) = start_metrics().await;
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
    metrics::set_acknowledged("metrics-acked", None);
    assert!(!scrape(&addr).await.contains_key(series));
    let s = TestServer::start_in(dir).await;
    let m = scrape(&addr).await;
    assert_eq!(
        get(&m, series),
        10.0,
        "{head} acknowledged of {}",
        head + 10
    );
    s.stop().await;
}
