//! The event log against a model: a `Vec` of events, a map of stream revisions and a map of
//! idempotency keys. Random appends (alone, or several submitted at once so that they can share a
//! group commit) must give exactly the outcome the model predicts, and the log must read back as the
//! model says, forwards and backwards, per stream and whole, and verify offline after the log is
//! dropped. Fixed tests cover reopening, concurrency, atomicity of refused appends and the commit
//! observer.
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::value::RawValue;
use tempfile::TempDir;
use uuid::Uuid;

use claims_ledger_log::verify::{verify_dir, VerifyReport};
use claims_ledger_log::{
    sha256, AppendOutcome, AppendRequest, CommitObserver, Durability, EventLog, ExpectedRevision,
    Hash, Head, Idempotency, LogError, LogOptions, NewEvent, RecordedEvent, GENESIS_HASH,
    MAX_RECORD_BYTES,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const STREAMS: [&str; 4] = ["alpha", "beta", "gamma-\u{e9}", "delta/1"];
const KEYS: [&str; 3] = ["key-0", "key-1", "key-2"];
const EVENT_TYPES: [&str; 2] = ["Created", "Changed"];

fn new_event(stream: &str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        stream: stream.to_string(),
        event_type: "Noted".to_string(),
        schema_version: 1,
        payload: RawValue::from_string(payload.to_string()).expect("valid JSON payload"),
    }
}

fn request(
    events: Vec<NewEvent>,
    expectations: &[(&str, ExpectedRevision)],
    idempotency: Option<Idempotency>,
) -> AppendRequest {
    AppendRequest {
        events,
        expectations: expectations
            .iter()
            .map(|(s, e)| (s.to_string(), *e))
            .collect(),
        idempotency,
        recorded_by: "tester".to_string(),
        correlation_id: None,
        causation_id: None,
    }
}

fn content_hash(n: u8) -> Hash {
    sha256(&[0xC0, n])
}

fn idem(key: &str, content: u8) -> Idempotency {
    Idempotency {
        key: key.to_string(),
        content_hash: content_hash(content),
    }
}

fn options(durability: Durability) -> LogOptions {
    LogOptions {
        durability,
        ..LogOptions::default()
    }
}

fn open_log(
    dir: &Path,
    durability: Durability,
    observer: Option<Arc<dyn CommitObserver>>,
) -> EventLog {
    EventLog::open(dir, options(durability), observer).expect("open the log")
}

/// Verifies `dir` offline once the (dropped) log has let go of it; the verification must pass.
fn verify_ok(dir: &Path) -> VerifyReport {
    match verify_dir(dir).expect("verify") {
        Ok(report) => report,
        Err(m) => panic!("verification failed: {m}"),
    }
}

/// Submits appends in the given order without waiting for one before sending the next, so that the
/// writer may put several of them in one group. Each future's first poll queues its job on the
/// writer's channel, and the futures are first polled in order, so the log sees them in this order.
async fn append_in_order(
    log: &EventLog,
    reqs: Vec<AppendRequest>,
) -> Vec<Result<AppendOutcome, LogError>> {
    type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<AppendOutcome, LogError>> + 'a>>;
    let mut futures: Vec<AppendFuture<'_>> = reqs
        .into_iter()
        .map(|r| Box::pin(log.append(r)) as AppendFuture<'_>)
        .collect();
    let mut results: Vec<Option<Result<AppendOutcome, LogError>>> =
        futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (fut, slot) in futures.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(r) => *slot = Some(r),
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    results.into_iter().map(|r| r.expect("done")).collect()
}

/// Records everything the writer reports as committed.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<RecordedEvent>>,
    groups: Mutex<Vec<usize>>,
}

impl CommitObserver for Recorder {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        self.seen
            .lock()
            .unwrap()
            .extend(events.iter().map(|e| (**e).clone()));
        self.groups.lock().unwrap().push(events.len());
    }
}

impl Recorder {
    fn positions(&self) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect()
    }
}

/// Asserts that two reads of the log hold the same events, byte for byte.
fn assert_same_events(got: &[RecordedEvent], want: &[RecordedEvent]) {
    assert_eq!(got.len(), want.len(), "number of events");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.position, w.position);
        assert_eq!(g.stored, w.stored, "stored bytes at {}", w.position);
        assert_eq!(g.hash, w.hash);
        assert_eq!(g.prev_hash, w.prev_hash);
        assert_eq!(g.event_id, w.event_id);
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// How an expectation is chosen; resolved against the model when the request is built.
#[derive(Debug, Clone)]
enum ExpSpec {
    Any,
    NoStream,
    StreamExists,
    /// The stream's current revision (`Exact(0)` for an absent stream, which is wrong).
    ExactRight,
    /// The current revision plus this (never 0), or `|delta|` when the stream is absent.
    ExactWrong(i8),
}

#[derive(Debug, Clone)]
struct EventSpec {
    stream: usize,
    event_type: usize,
    schema_version: u32,
    text: String,
    spaced: bool,
}

#[derive(Debug, Clone)]
struct AppendSpec {
    events: Vec<EventSpec>,
    expectations: Vec<(usize, ExpSpec)>,
    /// (key index, content index)
    idem: Option<(usize, u8)>,
    correlation: Option<u8>,
    causation: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Single(AppendSpec),
    /// Submitted at once, in this order.
    Together(Vec<AppendSpec>),
}

#[derive(Debug, Clone)]
struct ModelEvent {
    event_id: Uuid,
    stream: String,
    stream_revision: u64,
    event_type: String,
    schema_version: u32,
    payload: String,
    recorded_by: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    /// Known once the append is acknowledged.
    recorded_at: Option<DateTime<Utc>>,
    hash: Option<Hash>,
}

#[derive(Debug, Clone)]
enum IdemResult {
    Known(AppendOutcome),
    /// Predicted to succeed as the n-th request of the batch being submitted.
    InFlight(usize),
}

#[derive(Debug)]
enum Expect {
    Appended {
        first: usize,
    },
    Wrong {
        stream: String,
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    Conflict {
        key: String,
    },
    Replay(AppendOutcome),
    ReplayOf(usize),
}

#[derive(Default)]
struct Model {
    events: Vec<ModelEvent>,
    streams: HashMap<String, u64>,
    idem: HashMap<String, (Hash, IdemResult)>,
    last_recorded: Option<DateTime<Utc>>,
    seq: u64,
    /// Counts of outcomes seen, to tell that a run exercised every path.
    stats: HashMap<&'static str, usize>,
}

impl Model {
    fn build(&mut self, spec: &AppendSpec) -> AppendRequest {
        self.seq += 1;
        let seq = self.seq;
        let events = spec
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let text = serde_json::to_string(&e.text).unwrap();
                let payload = if e.spaced {
                    format!("{{ \"seq\" : {seq} ,\n \"i\": {i}, \"text\" :{text} }}")
                } else {
                    format!(r#"{{"seq":{seq},"i":{i},"text":{text}}}"#)
                };
                NewEvent {
                    event_id: Uuid::from_u128(((seq as u128) << 8) | i as u128),
                    stream: STREAMS[e.stream].to_string(),
                    event_type: EVENT_TYPES[e.event_type].to_string(),
                    schema_version: e.schema_version,
                    payload: RawValue::from_string(payload).unwrap(),
                }
            })
            .collect();
        let expectations = spec
            .expectations
            .iter()
            .map(|(s, x)| {
                let stream = STREAMS[*s];
                let current = self.streams.get(stream).copied();
                let expected = match x {
                    ExpSpec::Any => ExpectedRevision::Any,
                    ExpSpec::NoStream => ExpectedRevision::NoStream,
                    ExpSpec::StreamExists => ExpectedRevision::StreamExists,
                    ExpSpec::ExactRight => ExpectedRevision::Exact(current.unwrap_or(0)),
                    ExpSpec::ExactWrong(d) => ExpectedRevision::Exact(match current {
                        Some(c) => u64::try_from(c as i64 + *d as i64).unwrap_or(c + 1),
                        None => d.unsigned_abs() as u64,
                    }),
                };
                (stream.to_string(), expected)
            })
            .collect();
        AppendRequest {
            events,
            expectations,
            idempotency: spec.idem.map(|(k, c)| idem(KEYS[k], c)),
            recorded_by: format!("writer-{}", seq % 3),
            correlation_id: spec.correlation.map(|c| format!("corr-{c}")),
            causation_id: spec.causation.then(|| format!("cause-{seq}")),
        }
    }

    /// The outcome the log must give `req`, applied to the model as if it succeeds as predicted.
    fn predict(&mut self, req: &AppendRequest, batch_index: usize) -> Expect {
        if let Some(i) = &req.idempotency {
            if let Some((hash, result)) = self.idem.get(&i.key) {
                if *hash != i.content_hash {
                    return Expect::Conflict { key: i.key.clone() };
                }
                return match result {
                    IdemResult::Known(o) => Expect::Replay(o.clone()),
                    IdemResult::InFlight(j) => Expect::ReplayOf(*j),
                };
            }
        }
        for (stream, expected) in &req.expectations {
            let actual = self.streams.get(stream).copied();
            let ok = match expected {
                ExpectedRevision::Any => true,
                ExpectedRevision::NoStream => actual.is_none(),
                ExpectedRevision::StreamExists => actual.is_some(),
                ExpectedRevision::Exact(r) => actual == Some(*r),
            };
            if !ok {
                return Expect::Wrong {
                    stream: stream.clone(),
                    expected: *expected,
                    actual,
                };
            }
        }
        let first = self.events.len();
        for ev in &req.events {
            let rev = self.streams.get(&ev.stream).map_or(0, |r| r + 1);
            self.streams.insert(ev.stream.clone(), rev);
            self.events.push(ModelEvent {
                event_id: ev.event_id,
                stream: ev.stream.clone(),
                stream_revision: rev,
                event_type: ev.event_type.clone(),
                schema_version: ev.schema_version,
                payload: ev.payload.get().to_string(),
                recorded_by: req.recorded_by.clone(),
                correlation_id: req.correlation_id.clone(),
                causation_id: req.causation_id.clone(),
                recorded_at: None,
                hash: None,
            });
        }
        if let Some(i) = &req.idempotency {
            self.idem.insert(
                i.key.clone(),
                (i.content_hash, IdemResult::InFlight(batch_index)),
            );
        }
        Expect::Appended { first }
    }

    /// Checks the log's answer to the `index`-th request of a batch against the prediction.
    fn settle(
        &mut self,
        req: &AppendRequest,
        expect: &Expect,
        results: &[Result<AppendOutcome, LogError>],
        index: usize,
    ) {
        let result = &results[index];
        match expect {
            Expect::Appended { first } => {
                *self.stats.entry("appended").or_default() += 1;
                let o = match result {
                    Ok(o) => o,
                    Err(e) => panic!("expected an append, got {e:?} for {req:?}"),
                };
                assert!(!o.deduplicated, "a fresh append is not deduplicated");
                assert_eq!(o.events.len(), req.events.len());
                if let Some(last) = self.last_recorded {
                    assert!(o.recorded_at >= last, "recorded time went backwards");
                }
                self.last_recorded = Some(o.recorded_at);
                for (i, a) in o.events.iter().enumerate() {
                    let m = &mut self.events[first + i];
                    assert_eq!(a.position, (first + i) as u64);
                    assert_eq!(a.event_id, m.event_id);
                    assert_eq!(a.stream, m.stream);
                    assert_eq!(a.stream_revision, m.stream_revision);
                    m.recorded_at = Some(o.recorded_at);
                    m.hash = Some(a.hash);
                }
                if let Some(i) = &req.idempotency {
                    self.idem.insert(
                        i.key.clone(),
                        (i.content_hash, IdemResult::Known(o.clone())),
                    );
                }
            }
            Expect::Wrong {
                stream,
                expected,
                actual,
            } => {
                *self.stats.entry("wrong").or_default() += 1;
                match result {
                    Err(LogError::WrongExpectedRevision {
                        stream: s,
                        expected: e,
                        actual: a,
                    }) => {
                        assert_eq!((s, e, a), (stream, expected, actual), "for {req:?}");
                    }
                    other => panic!("expected WrongExpectedRevision, got {other:?} for {req:?}"),
                }
            }
            Expect::Conflict { key } => {
                *self.stats.entry("conflict").or_default() += 1;
                match result {
                    Err(LogError::IdempotencyConflict { key: k }) => assert_eq!(k, key),
                    other => panic!("expected IdempotencyConflict, got {other:?} for {req:?}"),
                }
            }
            Expect::Replay(original) => {
                *self.stats.entry("replay").or_default() += 1;
                let want = AppendOutcome {
                    deduplicated: true,
                    ..original.clone()
                };
                match result {
                    Ok(o) => assert_eq!(o, &want, "replay differs from the original"),
                    Err(e) => panic!("expected a replay, got {e:?} for {req:?}"),
                }
            }
            Expect::ReplayOf(j) => {
                *self.stats.entry("replay-in-batch").or_default() += 1;
                let original = results[*j].as_ref().expect("the original succeeded");
                let want = AppendOutcome {
                    deduplicated: true,
                    ..original.clone()
                };
                match result {
                    Ok(o) => assert_eq!(o, &want, "replay differs from the original"),
                    Err(e) => panic!("expected a replay, got {e:?} for {req:?}"),
                }
            }
        }
    }

    fn head(&self) -> Head {
        Head {
            count: self.events.len() as u64,
            hash: self
                .events
                .last()
                .map_or(GENESIS_HASH, |e| e.hash.expect("settled")),
        }
    }
}

fn assert_event_matches(got: &RecordedEvent, want: &ModelEvent, position: u64) {
    assert_eq!(got.position, position);
    assert_eq!(got.hash, sha256(&got.stored), "hash of the stored bytes");
    assert_eq!(Some(got.hash), want.hash, "hash at {position}");
    assert_eq!(got.event_id, want.event_id);
    assert_eq!(got.stream, want.stream);
    assert_eq!(got.stream_revision, want.stream_revision);
    assert_eq!(got.event_type, want.event_type);
    assert_eq!(got.schema_version, want.schema_version);
    assert_eq!(got.payload.get(), want.payload, "payload at {position}");
    assert_eq!(got.recorded_by, want.recorded_by);
    assert_eq!(got.correlation_id, want.correlation_id);
    assert_eq!(got.causation_id, want.causation_id);
    assert_eq!(Some(got.recorded_at), want.recorded_at);
}

/// Everything a reader can see must equal the model.
async fn check_log(log: &EventLog, model: &Model) {
    let n = model.events.len();
    let all = log.read_all(0, false, usize::MAX).unwrap();
    assert_eq!(all.len(), n, "read_all length");
    let mut prev = GENESIS_HASH;
    for (i, (got, want)) in all.iter().zip(&model.events).enumerate() {
        assert_event_matches(got, want, i as u64);
        assert_eq!(
            got.prev_hash, prev,
            "prev_hash at {i} links to the previous hash"
        );
        prev = got.hash;
    }
    assert_eq!(log.head(), model.head());
    assert_eq!(log.durable_count(), n as u64);
    for (i, e) in all.iter().enumerate() {
        let got = log.get(i as u64).unwrap().expect("present");
        assert_eq!(got.stored, e.stored);
    }
    assert!(log.get(n as u64).unwrap().is_none());

    // Backwards, whole and in windows.
    let back = log.read_all(u64::MAX, true, usize::MAX).unwrap();
    let back_pos: Vec<u64> = back.iter().map(|e| e.position).collect();
    assert_eq!(back_pos, (0..n as u64).rev().collect::<Vec<_>>());
    for from in 0..=n {
        let fwd: Vec<u64> = log
            .read_all(from as u64, false, 3)
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(fwd, (from as u64..n as u64).take(3).collect::<Vec<_>>());
        let bwd: Vec<u64> = log
            .read_all(from as u64, true, 3)
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        let top = (from as u64).min((n as u64).saturating_sub(1));
        let want: Vec<u64> = if n == 0 {
            Vec::new()
        } else {
            (0..=top).rev().take(3).collect()
        };
        assert_eq!(bwd, want, "read_all({from}, backwards, 3)");
    }

    // Per stream.
    for stream in STREAMS {
        let want: Vec<(u64, &ModelEvent)> = model
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.stream == stream)
            .map(|(p, e)| (p as u64, e))
            .collect();
        assert_eq!(
            log.stream_revision(stream).unwrap(),
            model.streams.get(stream).copied(),
            "stream_revision({stream})"
        );
        assert_eq!(
            want.len() as u64,
            model.streams.get(stream).map_or(0, |r| r + 1)
        );
        let fwd = log.read_stream(stream, 0, false, usize::MAX).unwrap();
        assert_eq!(fwd.len(), want.len(), "read_stream({stream}) length");
        for (got, (p, w)) in fwd.iter().zip(&want) {
            assert_event_matches(got, w, *p);
        }
        let bwd = log.read_stream(stream, u64::MAX, true, usize::MAX).unwrap();
        assert_eq!(bwd.len(), want.len());
        for (got, (p, w)) in bwd.iter().zip(want.iter().rev()) {
            assert_event_matches(got, w, *p);
        }
        // Windows: from revision r, at most 2.
        for r in 0..=want.len() {
            let f: Vec<u64> = log
                .read_stream(stream, r as u64, false, 2)
                .unwrap()
                .iter()
                .map(|e| e.stream_revision)
                .collect();
            assert_eq!(f, (r as u64..want.len() as u64).take(2).collect::<Vec<_>>());
            let b: Vec<u64> = log
                .read_stream(stream, r as u64, true, 2)
                .unwrap()
                .iter()
                .map(|e| e.stream_revision)
                .collect();
            let want_b: Vec<u64> = if want.is_empty() {
                Vec::new()
            } else {
                (0..=(r as u64).min(want.len() as u64 - 1))
                    .rev()
                    .take(2)
                    .collect()
            };
            assert_eq!(b, want_b, "read_stream({stream}, {r}, backwards, 2)");
        }
    }
    assert!(log.read_stream("nobody", 0, false, 10).unwrap().is_empty());
    assert_eq!(log.stream_revision("nobody").unwrap(), None);

    // Idempotency keys, as the app layer asks for them.
    for key in KEYS {
        match model.idem.get(key) {
            None => assert!(log
                .idempotent_result(&idem(key, 0))
                .await
                .unwrap()
                .is_none()),
            Some((hash, IdemResult::Known(o))) => {
                let got = log
                    .idempotent_result(&Idempotency {
                        key: key.to_string(),
                        content_hash: *hash,
                    })
                    .await
                    .unwrap()
                    .expect("recorded");
                assert_eq!(
                    got,
                    AppendOutcome {
                        deduplicated: true,
                        ..o.clone()
                    }
                );
                let other = Idempotency {
                    key: key.to_string(),
                    content_hash: sha256(hash),
                };
                assert!(matches!(
                    log.idempotent_result(&other).await,
                    Err(LogError::IdempotencyConflict { .. })
                ));
            }
            Some((_, IdemResult::InFlight(_))) => unreachable!("all settled"),
        }
    }
}

/// Runs `ops` against a fresh log and the model, checks everything, then drops the log, verifies the
/// directory offline and reopens it to check that it reads back the same.
fn run_case(ops: &[Op], durability: Durability) -> HashMap<&'static str, usize> {
    let dir = TempDir::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let (model, all) = rt.block_on(async {
        let log = open_log(dir.path(), durability, Some(recorder.clone()));
        let mut model = Model::default();
        for op in ops {
            let specs: &[AppendSpec] = match op {
                Op::Single(s) => std::slice::from_ref(s),
                Op::Together(v) => v,
            };
            let mut reqs = Vec::new();
            let mut expects = Vec::new();
            for (i, spec) in specs.iter().enumerate() {
                let req = model.build(spec);
                expects.push(model.predict(&req, i));
                reqs.push(req);
            }
            let results = append_in_order(&log, reqs.clone()).await;
            for (i, (req, expect)) in reqs.iter().zip(&expects).enumerate() {
                model.settle(req, expect, &results, i);
            }
        }
        check_log(&log, &model).await;
        let all = log.read_all(0, false, usize::MAX).unwrap();
        drop(log);
        (model, all)
    });

    // The observer saw every committed event once, in order, as stored.
    assert_eq!(
        recorder.positions(),
        (0..model.events.len() as u64).collect::<Vec<_>>()
    );
    assert_same_events(&recorder.seen.lock().unwrap(), &all);

    let report = verify_ok(dir.path());
    assert_eq!(report.events, model.events.len() as u64);
    assert_eq!(report.head_hash, model.head().hash);
    assert_eq!(
        report.streams,
        STREAMS
            .iter()
            .filter(|s| model.streams.contains_key(**s))
            .count()
    );

    let log = open_log(dir.path(), durability, None);
    assert_eq!(log.head(), model.head());
    assert_same_events(&log.read_all(0, false, usize::MAX).unwrap(), &all);
    drop(log);
    // Wait for the writer to let go of the directory before it is deleted.
    verify_ok(dir.path());
    model.stats
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn exp_spec() -> impl Strategy<Value = ExpSpec> {
    prop_oneof![
        4 => Just(ExpSpec::Any),
        2 => Just(ExpSpec::NoStream),
        2 => Just(ExpSpec::StreamExists),
        4 => Just(ExpSpec::ExactRight),
        2 => prop_oneof![Just(-1i8), Just(1), Just(2)].prop_map(ExpSpec::ExactWrong),
    ]
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    (
        0..STREAMS.len(),
        0..EVENT_TYPES.len(),
        1u32..3,
        "[a-z \u{e9}\"\\\\\n\u{1F600}]{0,8}",
        any::<bool>(),
    )
        .prop_map(
            |(stream, event_type, schema_version, text, spaced)| EventSpec {
                stream,
                event_type,
                schema_version,
                text,
                spaced,
            },
        )
}

fn append_spec() -> impl Strategy<Value = AppendSpec> {
    (
        prop::collection::vec(event_spec(), 1..=4),
        prop::collection::vec((0..STREAMS.len(), exp_spec()), 0..=3),
        prop::option::weighted(0.45, (0..KEYS.len(), 0u8..2)),
        prop::option::of(0u8..3),
        any::<bool>(),
    )
        .prop_map(
            |(events, expectations, idem, correlation, causation)| AppendSpec {
                events,
                expectations,
                idem,
                correlation,
                causation,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => append_spec().prop_map(Op::Single),
        1 => prop::collection::vec(append_spec(), 2..=5).prop_map(Op::Together),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run_case(&ops, Durability::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed tests
// ---------------------------------------------------------------------------------------------

fn ev(stream: usize, text: &str) -> EventSpec {
    EventSpec {
        stream,
        event_type: 0,
        schema_version: 1,
        text: text.to_string(),
        spaced: false,
    }
}

fn app(
    events: Vec<EventSpec>,
    expectations: Vec<(usize, ExpSpec)>,
    idem: Option<(usize, u8)>,
) -> AppendSpec {
    AppendSpec {
        events,
        expectations,
        idem,
        correlation: None,
        causation: false,
    }
}

/// The model run on a fixed sequence that takes every path, with real fsync.
#[test]
fn fixed_sequence_with_fsync_matches_the_model() {
    use ExpSpec::*;
    let (a, b, c, d) = (0, 1, 2, 3);
    let ops = vec![
        Op::Single(app(
            vec![ev(a, "one"), ev(a, "two")],
            vec![(a, NoStream)],
            Some((0, 1)),
        )),
        Op::Single(app(vec![ev(a, "x")], vec![(a, NoStream)], None)),
        Op::Single(app(vec![ev(b, "x")], vec![(b, StreamExists)], None)),
        Op::Single(app(vec![ev(b, "x")], vec![(b, ExactRight)], None)),
        Op::Single(app(vec![ev(a, "retry")], vec![(a, NoStream)], Some((0, 1)))),
        Op::Single(app(vec![ev(a, "other")], vec![], Some((0, 0)))),
        Op::Single(app(
            vec![ev(a, "three"), ev(b, "b0"), ev(c, "c0"), ev(b, "b1")],
            vec![(a, ExactRight), (b, NoStream), (c, Any)],
            None,
        )),
        // Refused with a key: the key stays free.
        Op::Single(app(
            vec![ev(c, "no")],
            vec![(c, ExactWrong(1))],
            Some((1, 0)),
        )),
        Op::Single(app(vec![ev(c, "yes")], vec![(c, ExactRight)], Some((1, 0)))),
        Op::Together(vec![
            app(vec![ev(d, "d0")], vec![(d, NoStream)], Some((2, 0))),
            app(vec![ev(d, "dup")], vec![(d, NoStream)], None),
            app(vec![ev(d, "again")], vec![(d, NoStream)], Some((2, 0))),
            app(vec![ev(d, "clash")], vec![], Some((2, 1))),
            app(
                vec![ev(d, "d1"), ev(a, "a")],
                vec![(d, ExactRight), (a, StreamExists)],
                None,
            ),
        ]),
        Op::Together(vec![
            app(vec![ev(a, "p")], vec![(a, Any)], None),
            app(vec![ev(b, "q")], vec![(b, ExactRight)], None),
            app(vec![ev(c, "r")], vec![(c, ExactWrong(-1))], None),
            app(vec![ev(d, "s")], vec![(d, StreamExists)], Some((1, 0))),
        ]),
    ];
    let stats = run_case(&ops, Durability::Fsync);
    for path in ["appended", "wrong", "conflict", "replay", "replay-in-batch"] {
        assert!(
            stats.get(path).copied().unwrap_or(0) > 0,
            "{path} not exercised: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_drop_and_reopen() {
    let dir = TempDir::new().unwrap();
    let log = open_log(dir.path(), Durability::Fsync, None);
    let first = log
        .append(request(
            vec![
                new_event("order-1", r#"{"n":1}"#),
                new_event("order-1", r#"{"n":2}"#),
            ],
            &[("order-1", ExpectedRevision::NoStream)],
            Some(idem("k1", 1)),
        ))
        .await
        .unwrap();
    log.append(request(
        vec![new_event("order-2", r#"{"n":3}"#)],
        &[("order-2", ExpectedRevision::NoStream)],
        None,
    ))
    .await
    .unwrap();
    let third = log
        .append(request(
            vec![new_event("order-1", r#"{"n":4, "s": "caf\u00e9"}"#)],
            &[("order-1", ExpectedRevision::Exact(1))],
            Some(idem("k2", 1)),
        ))
        .await
        .unwrap();
    let head = log.head();
    assert_eq!(head.count, 4);
    let before = log.read_all(0, false, usize::MAX).unwrap();
    let stream_before = log.read_stream("order-1", 0, false, usize::MAX).unwrap();
    drop(log);

    let log = open_log(dir.path(), Durability::Fsync, None);
    assert_eq!(log.head(), head, "same head after reopen");
    assert_eq!(log.durable_count(), 4);
    assert_same_events(&log.read_all(0, false, usize::MAX).unwrap(), &before);
    assert_same_events(
        &log.read_stream("order-1", 0, false, usize::MAX).unwrap(),
        &stream_before,
    );
    assert_eq!(log.stream_revision("order-1").unwrap(), Some(2));
    assert_eq!(log.stream_revision("order-2").unwrap(), Some(0));

    // Keys used before the reopen still deduplicate, and still conflict.
    let replay = log
        .append(request(
            vec![
                new_event("order-1", r#"{"n":1}"#),
                new_event("order-1", r#"{"n":2}"#),
            ],
            &[("order-1", ExpectedRevision::NoStream)],
            Some(idem("k1", 1)),
        ))
        .await
        .unwrap();
    assert_eq!(
        replay,
        AppendOutcome {
            deduplicated: true,
            ..first
        }
    );
    assert_eq!(
        log.idempotent_result(&idem("k2", 1)).await.unwrap(),
        Some(AppendOutcome {
            deduplicated: true,
            ..third.clone()
        })
    );
    let conflict = log
        .append(request(
            vec![new_event("order-9", "{}")],
            &[],
            Some(idem("k1", 2)),
        ))
        .await;
    assert!(
        matches!(conflict, Err(LogError::IdempotencyConflict { ref key }) if key == "k1"),
        "{conflict:?}"
    );
    assert_eq!(log.head(), head, "replays and conflicts write nothing");

    // Revisions continue.
    let err = log
        .append(request(
            vec![new_event("order-1", "{}")],
            &[("order-1", ExpectedRevision::NoStream)],
            None,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::WrongExpectedRevision { ref stream, expected: ExpectedRevision::NoStream, actual: Some(2) }
                if stream == "order-1"
        ),
        "{err:?}"
    );
    let next = log
        .append(request(
            vec![new_event("order-1", r#"{"n":5}"#)],
            &[("order-1", ExpectedRevision::Exact(2))],
            None,
        ))
        .await
        .unwrap();
    assert_eq!(next.events[0].position, 4);
    assert_eq!(next.events[0].stream_revision, 3);
    assert!(next.recorded_at >= third.recorded_at);
    let e4 = log.get(4).unwrap().unwrap();
    assert_eq!(
        e4.prev_hash, head.hash,
        "the chain continues from the old head"
    );
    drop(log);
    let report = verify_ok(dir.path());
    assert_eq!(report.events, 5);
    assert_eq!(report.streams, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_gap_free_and_ordered() {
    const TASKS: u128 = 8;
    const PER_TASK: u128 = 50;
    let dir = TempDir::new().unwrap();
    let recorder = Arc::new(Recorder::default());
    let log = open_log(dir.path(), Durability::Fsync, Some(recorder.clone()));
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..PER_TASK {
                // Half the tasks own a stream and check its revision exactly; half share one.
                let (stream, expected) = if t < TASKS / 2 {
                    let e = if i == 0 {
                        ExpectedRevision::NoStream
                    } else {
                        ExpectedRevision::Exact(i as u64 - 1)
                    };
                    (format!("task-{t}"), e)
                } else {
                    ("shared".to_string(), ExpectedRevision::Any)
                };
                let mut e = new_event(&stream, &format!(r#"{{"task":{t},"i":{i}}}"#));
                e.event_id = Uuid::from_u128((t << 32) | i);
                let o = log
                    .append(request(vec![e], &[(stream.as_str(), expected)], None))
                    .await
                    .unwrap();
                assert_eq!(o.events.len(), 1);
                assert_eq!(o.events[0].event_id, Uuid::from_u128((t << 32) | i));
                outcomes.push(o);
            }
            outcomes
        }));
    }
    let mut per_task = Vec::new();
    for h in handles {
        per_task.push(h.await.unwrap());
    }

    let all = log.read_all(0, false, usize::MAX).unwrap();
    assert_eq!(all.len(), (TASKS * PER_TASK) as usize);
    let mut prev = GENESIS_HASH;
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64);
        assert_eq!(e.prev_hash, prev);
        assert_eq!(e.hash, sha256(&e.stored));
        prev = e.hash;
    }
    assert_eq!(
        log.head(),
        Head {
            count: 400,
            hash: prev
        }
    );
    for (t, outcomes) in per_task.iter().enumerate() {
        let positions: Vec<u64> = outcomes.iter().map(|o| o.events[0].position).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "task {t}'s events are in its order"
        );
        for (i, o) in outcomes.iter().enumerate() {
            let a = &o.events[0];
            let stored = &all[a.position as usize];
            assert_eq!(
                stored.event_id, a.event_id,
                "position {} holds its event",
                a.position
            );
            assert_eq!(stored.hash, a.hash);
            assert_eq!(stored.stream, a.stream);
            assert_eq!(stored.stream_revision, a.stream_revision);
            assert_eq!(stored.payload.get(), format!(r#"{{"task":{t},"i":{i}}}"#));
            if (t as u128) < TASKS / 2 {
                assert_eq!(a.stream_revision, i as u64);
            }
        }
    }
    // The shared stream's revisions follow positions.
    let shared = log.read_stream("shared", 0, false, usize::MAX).unwrap();
    assert_eq!(shared.len(), 200);
    for (r, e) in shared.iter().enumerate() {
        assert_eq!(e.stream_revision, r as u64);
    }
    assert!(shared.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(recorder.positions(), (0..400).collect::<Vec<_>>());
    let groups = recorder.groups.lock().unwrap().len();
    eprintln!("400 concurrent appends committed in {groups} groups");
    drop(log);
    assert_eq!(verify_ok(dir.path()).events, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_appends_write_nothing() {
    let dir = TempDir::new().unwrap();
    let log = open_log(dir.path(), Durability::Relaxed, None);
    log.append(request(
        vec![
            new_event("a", r#"{"seed":1}"#),
            new_event("b", r#"{"seed":2}"#),
        ],
        &[],
        None,
    ))
    .await
    .unwrap();
    let head = log.head();
    let before = log.read_all(0, false, usize::MAX).unwrap();
    let unchanged = |log: &EventLog, what: &str| {
        assert_eq!(log.head(), head, "{what}: head unchanged");
        assert_eq!(log.durable_count(), 2, "{what}");
        assert_same_events(&log.read_all(0, false, usize::MAX).unwrap(), &before);
        assert_eq!(log.stream_revision("a").unwrap(), Some(0), "{what}");
        assert_eq!(log.stream_revision("b").unwrap(), Some(0), "{what}");
        assert_eq!(log.stream_revision("c").unwrap(), None, "{what}");
    };

    // The second of three expectations fails: nothing is written, the key stays free.
    let three = || {
        request(
            vec![
                new_event("a", r#"{"n":1}"#),
                new_event("b", r#"{"n":2}"#),
                new_event("c", r#"{"n":3}"#),
            ],
            &[
                ("a", ExpectedRevision::Exact(0)),
                ("b", ExpectedRevision::Exact(5)),
                ("c", ExpectedRevision::NoStream),
            ],
            Some(idem("k", 1)),
        )
    };
    let err = log.append(three()).await.unwrap_err();
    assert!(
        matches!(
            err,
            LogError::WrongExpectedRevision { ref stream, expected: ExpectedRevision::Exact(5), actual: Some(0) }
                if stream == "b"
        ),
        "{err:?}"
    );
    unchanged(&log, "wrong expected revision");
    assert_eq!(log.idempotent_result(&idem("k", 1)).await.unwrap(), None);

    // Too large, as the second event of the append.
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(MAX_RECORD_BYTES));
    let err = log
        .append(request(
            vec![new_event("a", "{}"), new_event("b", &big)],
            &[],
            Some(idem("k", 1)),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LogError::RecordTooLarge { size, max } if max == MAX_RECORD_BYTES && size > max),
        "{err:?}"
    );
    unchanged(&log, "record too large");

    // Invalid stream names.
    for bad in ["bad\0name", "", &"s".repeat(257)] {
        let err = log
            .append(request(
                vec![new_event("a", "{}"), new_event(bad, "{}")],
                &[],
                Some(idem("k", 1)),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(err, LogError::InvalidStream(ref s) if s == bad),
            "{bad:?}: {err:?}"
        );
        unchanged(&log, "invalid stream");
    }
    let err = log.append(request(vec![], &[], None)).await.unwrap_err();
    assert!(matches!(err, LogError::EmptyAppend), "{err:?}");
    unchanged(&log, "empty append");

    // A large record under the limit is fine, and the refused key is still free.
    let under = format!(r#"{{"blob":"{}"}}"#, "y".repeat(MAX_RECORD_BYTES - 2048));
    let o = log
        .append(request(
            vec![new_event("a", &under)],
            &[],
            Some(idem("k", 1)),
        ))
        .await
        .unwrap();
    assert!(!o.deduplicated);
    assert_eq!(o.events[0].position, 2, "refused appends used no positions");
    assert_eq!(o.events[0].stream_revision, 1);
    let back = log.get(2).unwrap().unwrap();
    assert_eq!(back.payload.get(), under);
    assert_eq!(back.prev_hash, head.hash);
    let o2 = log.append(three()).await.unwrap();
    assert!(o2.deduplicated, "the key now replays");
    assert_eq!(o2.events, o.events);
    drop(log);
    assert_eq!(verify_ok(dir.path()).events, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_sees_every_committed_event_once_in_order() {
    let dir = TempDir::new().unwrap();
    let recorder = Arc::new(Recorder::default());
    let log = open_log(dir.path(), Durability::Fsync, Some(recorder.clone()));
    let mut handles = Vec::new();
    for t in 0..4u8 {
        let log = log.clone();
        let recorder = recorder.clone();
        handles.push(tokio::spawn(async move {
            let stream = format!("obs-{}", t % 2);
            for i in 0..20u8 {
                let events: Vec<NewEvent> = (0..=(i % 3))
                    .map(|j| new_event(&stream, &format!(r#"{{"t":{t},"i":{i},"j":{j}}}"#)))
                    .collect();
                // Some refused, some replays, some conflicts, mostly appends.
                let expectations: &[(&str, ExpectedRevision)] = if i % 5 == 4 {
                    &[("obs-0", ExpectedRevision::Exact(9999))]
                } else {
                    &[]
                };
                let key = Some(idem(&format!("t{t}-{}", i / 2), i % 4 / 3));
                match log.append(request(events, expectations, key)).await {
                    Ok(o) => {
                        // Told before the acknowledgement.
                        let seen = recorder.positions();
                        for a in &o.events {
                            assert!(seen.contains(&a.position), "observer told before ack");
                        }
                    }
                    Err(LogError::WrongExpectedRevision { .. })
                    | Err(LogError::IdempotencyConflict { .. }) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    // Failures after the concurrent part: nothing reported for them.
    let seen_before = recorder.positions().len();
    let _ = log
        .append(request(
            vec![new_event("obs-0", "{}")],
            &[("obs-0", ExpectedRevision::NoStream)],
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(recorder.positions().len(), seen_before);

    let all = log.read_all(0, false, usize::MAX).unwrap();
    assert!(!all.is_empty());
    assert_eq!(
        recorder.positions(),
        (0..all.len() as u64).collect::<Vec<_>>(),
        "each committed event exactly once, in position order"
    );
    assert_same_events(&recorder.seen.lock().unwrap(), &all);
    drop(log);
    verify_ok(dir.path());
}

/// Long streams span several index chunks (64 revisions each), also inside a single append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_streams_cross_index_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut positions = Vec::new();
    {
        let log = open_log(dir.path(), Durability::Fsync, None);
        // Batches of 1, 7 and 50 events interleaved with another stream, up to 300 revisions.
        let sizes = [1usize, 7, 50];
        let mut n = 0usize;
        let mut i = 0;
        while n < 300 {
            let k = sizes[i % 3].min(300 - n);
            let mut events: Vec<NewEvent> = (n..n + k)
                .map(|r| new_event("long", &format!(r#"{{"r":{r}}}"#)))
                .collect();
            events.push(new_event("other", r#"{"x":1}"#));
            let out = log
                .append(request(
                    events,
                    &[(
                        "long",
                        if n == 0 {
                            ExpectedRevision::NoStream
                        } else {
                            ExpectedRevision::Exact(n as u64 - 1)
                        },
                    )],
                    None,
                ))
                .await
                .expect("append");
            for a in out.events.iter().filter(|a| a.stream == "long") {
                assert_eq!(a.stream_revision, positions.len() as u64);
                positions.push(a.position);
            }
            n += k;
            i += 1;
        }
        assert_eq!(log.stream_revision("long").unwrap(), Some(299));
        let fwd = log.read_stream("long", 60, false, 10).unwrap();
        let got: Vec<u64> = fwd.iter().map(|e| e.stream_revision).collect();
        assert_eq!(got, (60..70).collect::<Vec<_>>());
        assert_eq!(fwd[0].position, positions[60]);
        let back = log.read_stream("long", 130, true, 5).unwrap();
        let got: Vec<u64> = back.iter().map(|e| e.position).collect();
        assert_eq!(
            got,
            positions[126..=130]
                .iter()
                .rev()
                .copied()
                .collect::<Vec<_>>()
        );
        let all = log.read_stream("long", 0, false, 1000).unwrap();
        assert_eq!(all.len(), 300);
    }
    let report = verify_ok(dir.path());
    assert_eq!(report.streams, 2);
    let log = open_log(dir.path(), Durability::Fsync, None);
    assert_eq!(log.stream_revision("long").unwrap(), Some(299));
    let out = log
        .append(request(
            vec![new_event("long", "{}")],
            &[("long", ExpectedRevision::Exact(299))],
            None,
        ))
        .await
        .expect("continues after reopen");
    assert_eq!(out.events[0].stream_revision, 300);
}
