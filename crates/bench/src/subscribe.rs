//! `claims-ledger-bench subscribe`: what `Events.Subscribe` costs through the real gRPC server (load
//! generator and server in one process), each figure a ratio to a baseline measured in the same run
//! on the same disk, since absolute figures on a shared machine mean little.
//!
//! - **Catch-up**: one client subscribes from position 0 of a log preloaded with `--events` events
//!   (`RecordStatement`s of about 900 stored bytes, written in batches) and reads until `CaughtUp`,
//!   twice, pooled. Baseline: a raw sled scan of the same `e` keys that reads every value and recomputes the SHA-256
//!   of its record bytes — the least a verifier must do. Like ours it runs on a warm cache, and it is
//!   measured before and after ours and pooled.
//! - **Fan-out**: F live subscribers (`from_end`, at most 100 streams per HTTP/2 connection) while 8
//!   writers append single-event `RecordStatement`s, each acknowledged after fdatasync, for
//!   `--live-seconds`. Baseline: the append rate of the same writers with no subscriber, measured
//!   half before and half after all fan-outs and pooled; the ratio shows how much subscribers slow
//!   writers. Also reported: deliveries per second (events × subscribers) and their ratio to F × the
//!   append rate of that run (1.0 = no subscriber fell behind); whether every subscriber received
//!   every event exactly once and in order; and the latency from a writer receiving its
//!   acknowledgement to a subscriber receiving the event. That latency is negative when the event
//!   arrived first, which it may: an event is visible to subscribers as soon as it is durable, before
//!   its acknowledgement has crossed the network back to the writer.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::append::{ms, quote_statement, timestamp, BenchServer, Measured, SOURCE_TEXT, STATED};
use claims_ledger_domain::limits::MAX_BATCH;
use claims_ledger_log::{open_db, Durability, ExpectedRevision, LogOptions};
use claims_ledger_proto as pb;
use claims_ledger_proto::subscribe_response::Kind;
use claims_ledger_server::app::{projections_dir, App, ClientCommand, Shape, WriteContext};
use claims_ledger_server::grpc::convert;

#[derive(Debug, Clone, Args)]
pub struct SubscribeBenchArgs {
    /// Scratch directory on the disk to measure (removed afterwards).
    #[arg(long, default_value = "./bench-sub-data")]
    pub dir: PathBuf,
    /// Events preloaded into the log for the catch-up measurement.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Live subscriber counts to try.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub fanout: Vec<usize>,
    /// Seconds of appends for each fan-out (and in all for the no-subscriber baseline).
    #[arg(long, default_value_t = 5.0)]
    pub live_seconds: f64,
    /// Print JSON lines instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Concurrent writers during the fan-out measurements, each on its own HTTP/2 connection.
const WRITERS: usize = 8;
/// Subscriptions per HTTP/2 connection (servers commonly allow 100 to 200 concurrent streams).
const SUBSCRIBERS_PER_CONNECTION: usize = 100;
/// Longest wait for all subscribers to catch up before the writers start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Shortest wait for the subscribers to receive everything once the writers stop; it grows with
/// `--live-seconds`. A subscriber still behind after it counts as incomplete.
const MIN_DRAIN: Duration = Duration::from_secs(20);
/// Appends made before the first measurement and not counted.
const WARM_UP_SECONDS: f64 = 1.0;
const SPEAKER: &str = "bench-speaker";
const RECORDED_BY: &str = "bench-subscribe";

fn party_command() -> pb::RegisterPartyCommand {
    pb::RegisterPartyCommand {
        party_id: SPEAKER.into(),
        kind: pb::PartyKind::Person as i32,
        name: "Bench Speaker".into(),
        ..Default::default()
    }
}

fn source_command() -> pb::RegisterSourceCommand {
    pb::RegisterSourceCommand {
        publisher: "Bench".into(),
        url: "https://example.org/bench".into(),
        title: "Bench source".into(),
        published_at: timestamp(1_717_632_000),
        retrieved_at: timestamp(1_717_632_000),
        language: "en".into(),
        text: SOURCE_TEXT.into(),
        ..Default::default()
    }
}

/// The statement the append benchmark writes: one verified span, about 900 stored bytes.
fn statement_command(source_id: &str) -> pb::RecordStatementCommand {
    quote_statement(source_id, SPEAKER, "", STATED)
}

fn context() -> WriteContext {
    WriteContext {
        recorded_by: RECORDED_BY.into(),
        ..Default::default()
    }
}

fn any(command: claims_ledger_domain::Command) -> ClientCommand {
    ClientCommand {
        command,
        expected: ExpectedRevision::Any,
    }
}

/// Writes a party, a source and statements until the log holds `events` events, without syncing
/// (this is set-up, not measured). Returns the source id and the event count.
async fn preload(dir: &Path, events: u64) -> anyhow::Result<(String, u64)> {
    let app = App::open(
        dir,
        LogOptions {
            durability: Durability::Relaxed,
            ..Default::default()
        },
    )?;
    let party = convert::register_party(party_command(), "command.")?;
    app.write(context(), vec![any(party)], Shape::Single)
        .await?;
    let source = convert::register_source(source_command(), "command.")?;
    let written = app
        .write(context(), vec![any(source)], Shape::Single)
        .await?;
    let source_id = written
        .entity_ids
        .first()
        .context("registering the source returned no id")?
        .clone();
    let statement = convert::record_statement(statement_command(&source_id), "command.")?;
    loop {
        let have = app.log().durable_count();
        if have >= events {
            break;
        }
        let n = (events - have).min(MAX_BATCH as u64) as usize;
        let batch = (0..n).map(|_| any(statement.clone())).collect();
        app.write(context(), batch, Shape::BATCH).await?;
    }
    let count = app.log().durable_count();
    // Release the directory for the servers that follow.
    app.finish().await;
    drop(app);
    // The servers measured later build their projections from the log themselves, as they did when
    // the set-up wrote none.
    std::fs::remove_dir_all(projections_dir(dir))?;
    Ok((source_id, count))
}

/// Reads the stored events at positions `0..count` and checks the SHA-256 of each record against the
/// hash stored beside it. Returns how many events it read, which must be `count`.
fn scan(db: &sled::Db, count: u64) -> anyhow::Result<u64> {
    let mut n = 0u64;
    'pages: for page in claims_ledger_log::disk::pages(db) {
        let (_, page) = page?;
        for frame in claims_ledger_log::disk::page_frames(&page) {
            if n == count {
                break 'pages;
            }
            let (stored, record) = frame.with_context(|| format!("page cut at event {n}"))?;
            let hash: [u8; 32] = Sha256::digest(record).into();
            if hash != stored {
                bail!("event {n}: the record does not match its stored hash");
            }
            n += 1;
        }
    }
    if n != count {
        bail!("the raw scan found {n} events where the log holds {count}");
    }
    Ok(n)
}

/// The baseline of catch-up: one untimed scan to warm sled's cache (ours runs after the server's
/// replay has read everything), then a timed one.
fn measure_raw_scan(dir: &Path, count: u64) -> anyhow::Result<Duration> {
    let db = open_db(dir).with_context(|| format!("opening {}", dir.display()))?;
    scan(&db, count)?;
    let started = Instant::now();
    let n = scan(&db, count)?;
    let elapsed = started.elapsed();
    if n != count {
        bail!("the raw scan found {n} events where the log holds {count}");
    }
    Ok(elapsed)
}

/// One client subscribes from position 0 and reads until `CaughtUp`, checking positions as it goes.
async fn measure_catch_up(server: &BenchServer, count: u64) -> anyhow::Result<Duration> {
    let mut client = pb::events_client::EventsClient::new(server.channel().await?);
    let started = Instant::now();
    let mut stream = client
        .subscribe(pb::SubscribeRequest::default())
        .await?
        .into_inner();
    let mut next = 0u64;
    while let Some(message) = stream.message().await? {
        match message.kind {
            Some(Kind::Event(e)) => {
                if e.position != next {
                    bail!("catch-up delivered position {} after {}", e.position, next);
                }
                next += 1;
            }
            Some(Kind::CaughtUp(c)) => {
                let elapsed = started.elapsed();
                if next != count || c.next_position != count {
                    bail!(
                        "caught up at {} after {next} events, but the log holds {count}",
                        c.next_position
                    );
                }
                return Ok(elapsed);
            }
            _ => {}
        }
    }
    bail!("the subscription ended before catching up")
}

/// When each position was acknowledged to its writer. Sharded, so that a thousand subscribers
/// looking positions up do not contend on one lock.
struct Acks {
    shards: Vec<RwLock<HashMap<u64, Instant>>>,
}

impl Acks {
    const SHARDS: u64 = 64;

    fn new() -> Acks {
        Acks {
            shards: (0..Self::SHARDS)
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, position: u64) -> &RwLock<HashMap<u64, Instant>> {
        &self.shards[(position % Self::SHARDS) as usize]
    }

    fn insert(&self, position: u64, at: Instant) {
        self.shard(position)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(position, at);
    }

    fn get(&self, position: u64) -> Option<Instant> {
        self.shard(position)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&position)
            .copied()
    }
}

/// Buckets of [`Latencies`]: exact below 64 µs, then 32 per power of two (about 3% wide).
const BUCKETS: usize = 64 + 58 * 32;

/// A histogram of signed latencies in microseconds; bounded memory however many deliveries.
#[derive(Clone)]
struct Latencies {
    positive: Vec<u64>,
    /// Magnitudes of negative latencies (delivered before the writer had its acknowledgement).
    negative: Vec<u64>,
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            positive: vec![0; BUCKETS],
            negative: vec![0; BUCKETS],
        }
    }

    fn bucket(micros: u64) -> usize {
        if micros < 64 {
            micros as usize
        } else {
            let octave = 63 - micros.leading_zeros() as usize;
            let sub = ((micros >> (octave - 5)) & 31) as usize;
            64 + (octave - 6) * 32 + sub
        }
    }

    /// The middle of a bucket, in microseconds.
    fn middle(bucket: usize) -> f64 {
        if bucket < 64 {
            return bucket as f64;
        }
        let octave = (bucket - 64) / 32 + 6;
        let width = 1u64 << (octave - 5);
        let lower = (1u64 << octave) + ((bucket - 64) % 32) as u64 * width;
        lower as f64 + width as f64 / 2.0
    }

    /// Records `delivered - acked`.
    fn record(&mut self, delivered: Instant, acked: Instant) {
        match delivered.checked_duration_since(acked) {
            Some(d) => self.positive[Self::bucket(d.as_micros() as u64)] += 1,
            None => self.negative[Self::bucket((acked - delivered).as_micros() as u64)] += 1,
        }
    }

    fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.positive.iter_mut().zip(&other.positive) {
            *a += b;
        }
        for (a, b) in self.negative.iter_mut().zip(&other.negative) {
            *a += b;
        }
    }

    fn count(&self) -> u64 {
        self.positive.iter().sum::<u64>() + self.negative.iter().sum::<u64>()
    }

    /// The `p` quantile in milliseconds, or `None` when nothing was recorded.
    fn quantile_ms(&self, p: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((p * n as f64).ceil() as u64).clamp(1, n);
        let ascending = self
            .negative
            .iter()
            .enumerate()
            .rev()
            .map(|(i, c)| (-Self::middle(i), *c))
            .chain(
                self.positive
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (Self::middle(i), *c)),
            );
        let mut seen = 0;
        for (micros, c) in ascending {
            seen += c;
            if seen >= rank {
                // `+ 0.0` turns -0.0 into 0.0.
                return Some(micros / 1000.0 + 0.0);
            }
        }
        None
    }
}

/// The appends of one measured window, and when it started.
struct Appends {
    window: Measured,
    started: Instant,
}

impl Appends {
    fn pooled(self, other: Appends) -> Appends {
        Appends {
            window: self.window.pooled(other.window),
            started: self.started,
        }
    }

    fn rate(&self) -> f64 {
        self.window.rate()
    }

    fn events(&self) -> u64 {
        self.window.events
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        ms(self.window.percentile(p))
    }
}

/// `WRITERS` tasks appending one statement per request for `seconds`, recording in `acks` when each
/// position's acknowledgement arrived.
async fn append_for(
    channels: &[Channel],
    source_id: &str,
    seconds: f64,
    acks: Option<Arc<Acks>>,
) -> anyhow::Result<Appends> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(WRITERS);
    for w in 0..WRITERS {
        let mut client = pb::ledger_client::LedgerClient::new(channels[w % channels.len()].clone());
        let command = statement_command(source_id);
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let response = client
                    .record_statement(pb::RecordStatementRequest {
                        command: Some(command.clone()),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let acked = Instant::now();
                if let Some(acks) = &acks {
                    for e in response.result.iter().flat_map(|r| &r.events) {
                        acks.insert(e.position, acked);
                    }
                }
                latencies.push(acked - sent);
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Appends {
        window: Measured {
            events: latencies.len() as u64,
            syncs: 0,
            elapsed,
            latencies,
        },
        started,
    })
}

/// What the subscribers are told once the writers have stopped.
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    /// Stop once this position is reached (the log's count when the writers stopped).
    target: Option<u64>,
    /// Stop now: the drain timed out.
    stop: bool,
}

/// What one live subscriber saw.
struct Received {
    /// The `CaughtUp` position: the first position this subscriber should receive live.
    caught_up_at: u64,
    events: u64,
    /// Events whose position was not the one after the previous event's.
    out_of_order: u64,
    /// The position after the last event received.
    next: u64,
    last_delivery: Option<Instant>,
    latencies: Latencies,
    /// Deliveries that arrived before their acknowledgement was recorded; resolved at the end.
    before_ack: Vec<(u64, Instant)>,
    /// Why the stream ended early, if it did.
    failure: Option<String>,
}

/// Subscribes from the end, reports `CaughtUp` on `ready`, then records every event received until
/// told to stop.
async fn subscriber(
    channel: Channel,
    ready: mpsc::Sender<anyhow::Result<u64>>,
    mut control: watch::Receiver<Control>,
    acks: Arc<Acks>,
) -> Received {
    let mut r = Received {
        caught_up_at: 0,
        events: 0,
        out_of_order: 0,
        next: 0,
        last_delivery: None,
        latencies: Latencies::new(),
        before_ack: Vec::new(),
        failure: None,
    };
    let mut client = pb::events_client::EventsClient::new(channel);
    let opened = client
        .subscribe(pb::SubscribeRequest {
            from_end: true,
            ..Default::default()
        })
        .await;
    let mut stream = match opened {
        Ok(s) => s.into_inner(),
        Err(status) => {
            let _ = ready.send(Err(status.into())).await;
            r.failure = Some("subscribe failed".into());
            return r;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(pb::SubscribeResponse {
                kind: Some(Kind::CaughtUp(c)),
            })) => {
                r.caught_up_at = c.next_position;
                r.next = c.next_position;
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = ready
                    .send(Err(anyhow::anyhow!("a subscription ended before CaughtUp")))
                    .await;
                r.failure = Some("ended before CaughtUp".into());
                return r;
            }
            Err(status) => {
                let _ = ready.send(Err(status.into())).await;
                r.failure = Some("failed before CaughtUp".into());
                return r;
            }
        }
    }
    let _ = ready.send(Ok(r.caught_up_at)).await;
    drop(ready);
    loop {
        let c = *control.borrow_and_update();
        if c.stop || c.target.is_some_and(|t| r.next >= t) {
            return r;
        }
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(pb::SubscribeResponse { kind: Some(Kind::Event(e)) })) => {
                    let now = Instant::now();
                    if e.position != r.next {
                        r.out_of_order += 1;
                    }
                    r.next = e.position + 1;
                    r.events += 1;
                    r.last_delivery = Some(now);
                    match acks.get(e.position) {
                        Some(acked) => r.latencies.record(now, acked),
                        None => r.before_ack.push((e.position, now)),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    r.failure = Some("the stream ended".into());
                    return r;
                }
                Err(status) => {
                    r.failure = Some(status.to_string());
                    return r;
                }
            },
            changed = control.changed() => {
                if changed.is_err() {
                    return r;
                }
            }
        }
    }
}

struct FanOut {
    subscribers: usize,
    connections: usize,
    appends: Appends,
    /// Events received, summed over subscribers.
    deliveries: u64,
    /// Deliveries per second from the first append to the last delivery.
    delivery_rate: f64,
    complete: bool,
    incomplete_subscribers: usize,
    out_of_order: u64,
    failures: Vec<String>,
    latencies: Latencies,
    /// Deliveries that arrived before their writer had the acknowledgement (negative latencies).
    before_ack: u64,
    /// From the writers' stop to the last delivery.
    drain: Duration,
    drain_timed_out: bool,
}

async fn measure_fanout(
    server: &BenchServer,
    writer_channels: &[Channel],
    source_id: &str,
    subscribers: usize,
    seconds: f64,
) -> anyhow::Result<FanOut> {
    let connections = subscribers / SUBSCRIBERS_PER_CONNECTION + 1;
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(server.channel().await?);
    }
    let acks = Arc::new(Acks::new());
    let (control, control_rx) = watch::channel(Control::default());
    let (ready_tx, mut ready) = mpsc::channel(subscribers.max(1));
    let start = server.app.log().durable_count();
    let mut tasks = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        tasks.push(tokio::spawn(subscriber(
            channels[i % connections].clone(),
            ready_tx.clone(),
            control_rx.clone(),
            acks.clone(),
        )));
    }
    drop(ready_tx);
    let all_ready = async {
        for _ in 0..subscribers {
            match ready.recv().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => bail!("a subscriber ended before catching up"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(READY_TIMEOUT, all_ready)
        .await
        .with_context(|| format!("{subscribers} subscribers did not catch up in time"))??;

    let appends = append_for(writer_channels, source_id, seconds, Some(acks.clone())).await?;
    let writers_done = Instant::now();
    let end = server.app.log().durable_count();
    if end - start != appends.events() {
        bail!(
            "the log grew by {} events while the writers had {} acknowledged",
            end - start,
            appends.events()
        );
    }
    control.send_replace(Control {
        target: Some(end),
        stop: false,
    });
    let drain_deadline =
        tokio::time::Instant::now() + MIN_DRAIN.max(Duration::from_secs_f64(seconds * 4.0));
    let mut drain_timed_out = false;
    let mut received = Vec::with_capacity(subscribers);
    for mut task in tasks {
        let r = if drain_timed_out {
            task.await?
        } else {
            match tokio::time::timeout_at(drain_deadline, &mut task).await {
                Ok(r) => r?,
                Err(_) => {
                    drain_timed_out = true;
                    control.send_replace(Control {
                        target: Some(end),
                        stop: true,
                    });
                    task.await?
                }
            }
        };
        received.push(r);
    }
    drop(channels);

    let expected = end - start;
    let mut latencies = Latencies::new();
    let mut fanout = FanOut {
        subscribers,
        connections,
        deliveries: 0,
        delivery_rate: 0.0,
        complete: true,
        incomplete_subscribers: 0,
        out_of_order: 0,
        failures: Vec::new(),
        latencies: Latencies::new(),
        before_ack: 0,
        drain: Duration::ZERO,
        drain_timed_out,
        appends,
    };
    let mut last_delivery = None::<Instant>;
    for r in received {
        fanout.deliveries += r.events;
        fanout.out_of_order += r.out_of_order;
        let whole = r.caught_up_at == start
            && r.events == expected
            && r.out_of_order == 0
            && r.next == end
            && r.failure.is_none();
        if !whole {
            fanout.incomplete_subscribers += 1;
        }
        if let Some(f) = r.failure {
            if fanout.failures.len() < 3 {
                fanout.failures.push(f);
            }
        }
        latencies.merge(&r.latencies);
        for (position, delivered) in r.before_ack {
            if let Some(acked) = acks.get(position) {
                latencies.record(delivered, acked);
            }
        }
        last_delivery = last_delivery.max(r.last_delivery);
    }
    fanout.complete = fanout.incomplete_subscribers == 0;
    fanout.before_ack = latencies.negative.iter().sum();
    fanout.latencies = latencies;
    if let Some(last) = last_delivery {
        fanout.drain = last.saturating_duration_since(writers_done);
        let span = last.saturating_duration_since(fanout.appends.started);
        fanout.delivery_rate = fanout.deliveries as f64 / span.as_secs_f64().max(1e-9);
    }
    Ok(fanout)
}

fn rate(events: u64, d: Duration) -> f64 {
    events as f64 / d.as_secs_f64().max(1e-9)
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

pub async fn run(args: SubscribeBenchArgs) -> anyhow::Result<i32> {
    if !(args.live_seconds.is_finite() && args.live_seconds > 0.0) {
        bail!("--live-seconds must be a positive number of seconds");
    }
    let data = args.dir.join("log");
    let _ = std::fs::remove_dir_all(&args.dir);
    let (source_id, count) = preload(&data, args.events.max(3)).await?;

    // Catch-up: raw scan, ours through gRPC, raw scan again.
    let before = tokio::task::block_in_place(|| measure_raw_scan(&data, count))?;
    let server = BenchServer::start(&data).await?;
    // Two passes, pooled: one pass is short enough for the machine's drift to show.
    let ours = measure_catch_up(&server, count).await? + measure_catch_up(&server, count).await?;
    let ours_rate = rate(2 * count, ours);

    // Fan-out: no-subscriber baseline (half before, half after), then each fan-out.
    let mut writer_channels = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        writer_channels.push(server.channel().await?);
    }
    // Untimed warm-up: the first fsynced appends after the bulk preload run slower than later ones.
    append_for(&writer_channels, &source_id, WARM_UP_SECONDS, None).await?;
    let half = args.live_seconds / 2.0;
    let base_before = append_for(&writer_channels, &source_id, half, None).await?;
    let mut fanouts = Vec::with_capacity(args.fanout.len());
    for &f in &args.fanout {
        fanouts.push(
            measure_fanout(&server, &writer_channels, &source_id, f, args.live_seconds).await?,
        );
    }
    let stalled = measure_stalled(&server, &writer_channels, &source_id, args.live_seconds).await?;
    let base_after = append_for(&writer_channels, &source_id, half, None).await?;
    let (before_rate, after_rate) = (base_before.rate(), base_after.rate());
    let baseline = base_before.pooled(base_after);
    drop(writer_channels);
    server.stop().await?;

    let after = tokio::task::block_in_place(|| measure_raw_scan(&data, count))?;
    let raw_rate = rate(2 * count, before + after);
    let catch_up_ratio = ours_rate / raw_rate;

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "kind": "stalled_subscriber", "append_events_per_s": stalled.appends.rate(),
                "baseline_append_events_per_s": baseline.rate(),
                "ratio": stalled.appends.rate() / baseline.rate(),
                "received_everything_afterwards": stalled.complete,
                "delivered_afterwards": stalled.delivered,
            })
        );
        println!(
            "{}",
            serde_json::json!({
                "kind": "catch_up", "events": count,
                "ours_events_per_s": ours_rate, "baseline_events_per_s": raw_rate,
                "ratio": catch_up_ratio,
                "baseline_before_events_per_s": rate(count, before),
                "baseline_after_events_per_s": rate(count, after),
            })
        );
        println!(
            "{}",
            serde_json::json!({
                "kind": "append_baseline", "subscribers": 0, "writers": WRITERS,
                "events": baseline.events(), "append_events_per_s": baseline.rate(),
                "ack_p50_ms": baseline.percentile_ms(0.5), "ack_p99_ms": baseline.percentile_ms(0.99),
                "before_events_per_s": before_rate, "after_events_per_s": after_rate,
            })
        );
        for f in &fanouts {
            println!(
                "{}",
                serde_json::json!({
                    "kind": "fanout", "subscribers": f.subscribers, "connections": f.connections,
                    "writers": WRITERS, "events": f.appends.events(),
                    "append_events_per_s": f.appends.rate(),
                    "baseline_append_events_per_s": baseline.rate(),
                    "ratio": f.appends.rate() / baseline.rate(),
                    "ack_p50_ms": f.appends.percentile_ms(0.5),
                    "ack_p99_ms": f.appends.percentile_ms(0.99),
                    "deliveries": f.deliveries, "deliveries_per_s": f.delivery_rate,
                    "delivery_ratio": f.delivery_rate / (f.subscribers as f64 * f.appends.rate()),
                    "complete": f.complete, "incomplete_subscribers": f.incomplete_subscribers,
                    "out_of_order": f.out_of_order, "failures": f.failures,
                    "latency_p50_ms": f.latencies.quantile_ms(0.5),
                    "latency_p99_ms": f.latencies.quantile_ms(0.99),
                    "latency_max_ms": f.latencies.quantile_ms(1.0),
                    "delivered_before_ack": f.before_ack,
                    "drain_s": f.drain.as_secs_f64(), "drain_timed_out": f.drain_timed_out,
                })
            );
        }
    } else {
        println!("| catch-up | events | ours events/s | baseline events/s | **ratio** |");
        println!("|---|---|---|---|---|");
        println!(
            "| 1 subscriber from 0 | {count} | {ours_rate:.0} | {raw_rate:.0} | **{catch_up_ratio:.2}** |"
        );
        println!();
        println!(
            "No-subscriber baseline: {} writers, {:.0} append events/s ({before_rate:.0} before, {after_rate:.0} after the fan-outs), ack p50 {:.2} ms, p99 {:.2} ms.",
            WRITERS,
            baseline.rate(),
            baseline.percentile_ms(0.5),
            baseline.percentile_ms(0.99)
        );
        println!();
        println!("| subscribers | connections | events | append events/s | baseline append events/s | **ratio** | writer ack p50 ms | deliveries/s | deliveries ÷ (subscribers × appends) | complete | ack→delivery p50 ms | p99 ms | delivered before ack | drain s |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for f in &fanouts {
            let ideal = f.subscribers as f64 * f.appends.rate();
            let share = if f.deliveries == 0 {
                0.0
            } else {
                f.before_ack as f64 / f.deliveries as f64 * 100.0
            };
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | **{:.2}** | {:.2} | {:.0} | {:.2} | {} | {} | {} | {share:.0}% | {:.2} |",
                f.subscribers,
                f.connections,
                f.appends.events(),
                f.appends.rate(),
                baseline.rate(),
                f.appends.rate() / baseline.rate(),
                f.appends.percentile_ms(0.5),
                f.delivery_rate,
                if ideal > 0.0 { f.delivery_rate / ideal } else { 0.0 },
                if f.complete {
                    "yes".to_string()
                } else {
                    format!(
                        "no ({} of {} behind{})",
                        f.incomplete_subscribers,
                        f.subscribers,
                        if f.drain_timed_out { ", drain timed out" } else { "" }
                    )
                },
                fmt_ms(f.latencies.quantile_ms(0.5)),
                fmt_ms(f.latencies.quantile_ms(0.99)),
                f.drain.as_secs_f64(),
            );
        }
        println!();
        println!("| slow subscriber | append events/s | baseline append events/s | **ratio** | then received everything, in order |");
        println!("|---|---|---|---|---|");
        println!(
            "| 1 that never reads while writers append | {:.0} | {:.0} | **{:.2}** | {} ({} events) |",
            stalled.appends.rate(),
            baseline.rate(),
            stalled.appends.rate() / baseline.rate(),
            if stalled.complete { "yes" } else { "no" },
            stalled.delivered,
        );
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(0)
}

/// The append rate while one subscriber never reads, and whether it then receives everything.
struct Stalled {
    appends: Appends,
    complete: bool,
    delivered: u64,
}

/// Opens a subscription from position 0 — more than any buffer holds — and does not read it while
/// the writers append; afterwards reads it to the end and checks order and completeness.
async fn measure_stalled(
    server: &BenchServer,
    writer_channels: &[Channel],
    source_id: &str,
    seconds: f64,
) -> anyhow::Result<Stalled> {
    use pb::subscribe_response::Kind;
    let mut client = pb::events_client::EventsClient::new(server.channel().await?);
    let mut stream = client
        .subscribe(pb::SubscribeRequest::default())
        .await?
        .into_inner();
    let appends = append_for(writer_channels, source_id, seconds, None).await?;
    let mut ends = pb::events_client::EventsClient::new(server.channel().await?);
    let end = ends
        .get_head(pb::GetHeadRequest {})
        .await?
        .into_inner()
        .event_count;
    let (mut delivered, mut complete) = (0u64, true);
    while delivered < end {
        let message = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .context("the stalled subscriber got nothing for 60 s after the writers stopped")??;
        match message.and_then(|m| m.kind) {
            Some(Kind::Event(e)) => {
                complete &= e.position == delivered;
                delivered += 1;
            }
            Some(_) => {}
            None => {
                complete = false;
                break;
            }
        }
    }
    Ok(Stalled {
        appends,
        complete: complete && delivered == end,
        delivered,
    })
}
