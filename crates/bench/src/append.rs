//! `claims-ledger-bench append`: durable append throughput and latency through the real gRPC server, against
//! a baseline measured in the same run on the same disk: the same record bytes written into a
//! preallocated, zero-filled file with one `fdatasync` per group of (writers × events per request)
//! records — the best that this storage design's group commit could do for that many writers. Results are reported as ratios, since absolute
//! figures on a shared machine mean little.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;

use crate::raw::RawSegment;
use claims_ledger_log::{ExpectedRevision, LogOptions};
use claims_ledger_proto as pb;
use claims_ledger_server::app::{App, ClientCommand, Shape, WriteContext};

/// HTTP/2 connections the writers share, as a client pool would (at most one per writer).
const CONNECTIONS: usize = 8;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Scratch directory on the disk to measure (removed afterwards).
    #[arg(long, default_value = "./bench-data")]
    pub dir: PathBuf,
    /// Concurrent writer counts to try.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub writers: Vec<usize>,
    /// Events per request to try.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub events_per_request: Vec<usize>,
    /// Seconds to measure each configuration (ours and the baseline each).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Drive the application layer directly instead of through gRPC (same validation, log and
    /// fsync; no network, no protobuf). Shows how much of the cost is the transport.
    #[arg(long, conflicts_with = "session")]
    pub in_process: bool,
    /// Each writer sends its appends over one `Ledger.AppendSession` stream, waiting for each answer
    /// before sending the next, instead of one unary call per append.
    #[arg(long)]
    pub session: bool,
}

/// How the writers of `measure_ours` reach the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// One unary call per request (`RecordStatement`, or `SubmitBatch` for several events).
    Unary,
    /// One `AppendSession` stream per writer, one message per request.
    Session,
    /// `App::write` called directly: no network, no protobuf.
    InProcess,
}

impl Transport {
    pub(crate) fn of(args: &BenchArgs) -> Transport {
        match (args.in_process, args.session) {
            (true, _) => Transport::InProcess,
            (false, true) => Transport::Session,
            (false, false) => Transport::Unary,
        }
    }
}

/// How `measure_ours` runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ours {
    pub(crate) writers: usize,
    pub(crate) per_request: usize,
    pub(crate) seconds: f64,
    pub(crate) transport: Transport,
}

/// One measured window: events done, syncs made, time taken, sorted request latencies.
pub(crate) struct Measured {
    pub(crate) events: u64,
    /// Disk syncs made during the measurement.
    pub(crate) syncs: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

impl Measured {
    /// Two windows as one (for baselines measured before and after).
    pub(crate) fn pooled(mut self, other: Measured) -> Measured {
        self.events += other.events;
        self.syncs += other.syncs;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self
    }

    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The source every benchmark registers, and the quote its statements cite.
pub(crate) const SOURCE_TEXT: &str = "Lavrov told reporters: \u{201c}We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace.\u{201d}";
pub(crate) const QUOTE: &str =
    "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace.";
/// The day statements are stated on unless a benchmark says otherwise (2024-06-05).
pub(crate) const STATED: i64 = 1_717_545_600;

pub(crate) fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// A statement by `speaker` (for `on_behalf_of`, or nobody when empty) on day `stated_at`, quoting
/// [`QUOTE`] from the benchmark source with a verified span.
pub(crate) fn quote_statement(
    source_id: &str,
    speaker: &str,
    on_behalf_of: &str,
    stated_at: i64,
) -> pb::RecordStatementCommand {
    let start = SOURCE_TEXT
        .find(QUOTE)
        .map(|b| SOURCE_TEXT[..b].chars().count())
        .unwrap_or(0) as u32;
    pb::RecordStatementCommand {
        statement_id: String::new(),
        speaker_id: speaker.into(),
        on_behalf_of_id: on_behalf_of.into(),
        stated_time: Some(pb::StatedTime {
            at: timestamp(stated_at),
            precision: pb::TimePrecision::Day as i32,
        }),
        venue: "press briefing".into(),
        mode: pb::StatementMode::DirectQuote as i32,
        attribution_verb: "told reporters".into(),
        content: "Russia is prepared to resume negotiations in Istanbul.".into(),
        spans: vec![pb::Span {
            source_id: source_id.to_string(),
            start,
            end: start + QUOTE.chars().count() as u32,
            exact: QUOTE.into(),
        }],
        reports_statement_id: String::new(),
    }
}

async fn setup(server: &str) -> anyhow::Result<String> {
    let mut c = pb::ledger_client::LedgerClient::connect(server.to_string()).await?;
    c.register_party(pb::RegisterPartyRequest {
        command: Some(pb::RegisterPartyCommand {
            party_id: "bench-speaker".into(),
            kind: pb::PartyKind::Person as i32,
            name: "Bench Speaker".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let r = c
        .register_source(pb::RegisterSourceRequest {
            command: Some(pb::RegisterSourceCommand {
                publisher: "Bench".into(),
                url: "https://example.org/bench".into(),
                title: "Bench source".into(),
                published_at: Some(prost_types::Timestamp {
                    seconds: 1_717_632_000,
                    nanos: 0,
                }),
                retrieved_at: Some(prost_types::Timestamp {
                    seconds: 1_717_632_000,
                    nanos: 0,
                }),
                language: "en".into(),
                text: SOURCE_TEXT.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().source_id)
}

/// Durable appends through gRPC (or in process): `writers` tasks each sending requests of
/// `per_request` statements.
/// Returns the measurement, the request count, a typical stored record and the process CPU time
/// these events took (load generator included).
pub(crate) async fn measure_ours(
    dir: &Path,
    ours: Ours,
) -> anyhow::Result<(Measured, u64, Vec<u8>, Duration)> {
    let Ours {
        writers,
        per_request,
        seconds,
        transport,
    } = ours;
    // As `serve` opens it: durable, with the Merkle tree and the projector.
    let app = App::open(dir, LogOptions::default())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(claims_ledger_server::grpc::server::serve(
        listener,
        app.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let source_id = setup(&addr).await?;
    // A few HTTP/2 connections shared by the writers, as a client pool would.
    let mut channels = Vec::new();
    for _ in 0..writers.clamp(1, CONNECTIONS) {
        channels.push(
            tonic::transport::Endpoint::from_shared(addr.clone())?
                .connect()
                .await?,
        );
    }
    let start_count = app.log().durable_count();
    let start_syncs = app.log().sync_count();
    let start_cpu = process_cpu();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let channel = channels[w % channels.len()].clone();
        let cmd = quote_statement(&source_id, "bench-speaker", "", STATED);
        let mut writer = BenchWriter::new(transport, channel, &app, cmd, per_request).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                writer.send().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    let end = app.log().durable_count();
    let events = end - start_count;
    // A typical stored record of ours, so the baseline writes the same bytes.
    let record = app
        .log()
        .get(end - 1)?
        .context("the benchmark log is empty")?
        .stored;
    let _ = stop_tx.send(());
    server.await??;
    // Stop the projector too, so no work of this run spills into the next measurement; the CPU it
    // spends catching up is counted, since these events need it.
    app.finish().await;
    let cpu = process_cpu().saturating_sub(start_cpu);
    latencies.sort();
    let requests = latencies.len() as u64;
    Ok((
        Measured {
            events,
            syncs: app.log().sync_count() - start_syncs,
            elapsed,
            latencies,
        },
        requests,
        record,
        cpu,
    ))
}

/// One writer of `measure_ours`: sends a request of `per_request` statements and waits for it to be
/// durable.
enum BenchWriter {
    /// `RecordStatement`, for one event per request.
    UnaryOne {
        client: pb::ledger_client::LedgerClient<tonic::transport::Channel>,
        request: pb::RecordStatementRequest,
    },
    /// `SubmitBatch`, for several.
    UnaryBatch {
        client: pb::ledger_client::LedgerClient<tonic::transport::Channel>,
        batch: pb::SubmitBatchRequest,
    },
    Session {
        requests: tokio::sync::mpsc::Sender<pb::AppendSessionRequest>,
        answers: tonic::Streaming<pb::AppendSessionResponse>,
        append: pb::SubmitBatchRequest,
        next_id: u64,
    },
    InProcess {
        app: App,
        commands: Vec<ClientCommand>,
        shape: Shape,
    },
}

impl BenchWriter {
    async fn new(
        transport: Transport,
        channel: tonic::transport::Channel,
        app: &App,
        cmd: pb::RecordStatementCommand,
        per_request: usize,
    ) -> anyhow::Result<BenchWriter> {
        let batch = |cmd: &pb::RecordStatementCommand| pb::SubmitBatchRequest {
            options: None,
            commands: (0..per_request)
                .map(|_| pb::BatchCommand {
                    expected_revision: None,
                    command: Some(pb::batch_command::Command::RecordStatement(cmd.clone())),
                })
                .collect(),
        };
        Ok(match transport {
            Transport::Unary if per_request == 1 => BenchWriter::UnaryOne {
                client: pb::ledger_client::LedgerClient::new(channel),
                request: pb::RecordStatementRequest {
                    command: Some(cmd),
                    ..Default::default()
                },
            },
            Transport::Unary => BenchWriter::UnaryBatch {
                client: pb::ledger_client::LedgerClient::new(channel),
                batch: batch(&cmd),
            },
            Transport::Session => {
                let (requests, rx) = tokio::sync::mpsc::channel(1);
                let answers = pb::ledger_client::LedgerClient::new(channel)
                    .append_session(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                BenchWriter::Session {
                    requests,
                    answers,
                    append: batch(&cmd),
                    next_id: 0,
                }
            }
            Transport::InProcess => {
                let command =
                    claims_ledger_server::grpc::convert::record_statement(cmd, "command.")
                        .map_err(|e| anyhow::anyhow!("the bench command does not convert: {e}"))?;
                BenchWriter::InProcess {
                    app: app.clone(),
                    commands: vec![
                        ClientCommand {
                            command,
                            expected: ExpectedRevision::Any,
                        };
                        per_request
                    ],
                    shape: if per_request == 1 {
                        Shape::Single
                    } else {
                        Shape::BATCH
                    },
                }
            }
        })
    }

    async fn send(&mut self) -> anyhow::Result<()> {
        match self {
            BenchWriter::UnaryOne { client, request } => {
                client.record_statement(request.clone()).await?;
            }
            BenchWriter::UnaryBatch { client, batch } => {
                client.submit_batch(batch.clone()).await?;
            }
            BenchWriter::Session {
                requests,
                answers,
                append,
                next_id,
            } => {
                *next_id += 1;
                requests
                    .send(pb::AppendSessionRequest {
                        request_id: *next_id,
                        append: Some(append.clone()),
                    })
                    .await
                    .map_err(|_| anyhow::anyhow!("the append session closed"))?;
                let answer = answers
                    .message()
                    .await?
                    .context("the append session ended early")?;
                match answer.result {
                    Some(pb::append_session_response::Result::Accepted(_))
                        if answer.request_id == *next_id => {}
                    other => anyhow::bail!("append {next_id} not accepted: {other:?}"),
                }
            }
            BenchWriter::InProcess {
                app,
                commands,
                shape,
            } => {
                app.write(WriteContext::default(), commands.clone(), *shape)
                    .await?;
            }
        }
        Ok(())
    }
}

/// CPU time (user + system) this process has used so far, all threads; zero where `/proc` is not
/// there. Ticks are USER_HZ, which Linux fixes at 100 for user space.
pub(crate) fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The transport's ceiling: `writers` tasks calling `grpc.health.v1.Health/Check` back to back over
/// the same connections as `measure_ours` (through the same server layers, no storage). With one
/// event per request, appends through gRPC cannot beat this rate on this machine.
async fn measure_noop_rpcs(dir: &Path, writers: usize, seconds: f64) -> anyhow::Result<f64> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let server = BenchServer::start(dir).await?;
    let channels = server.channels(writers.clamp(1, CONNECTIONS)).await?;
    let (_, rate) = closed_loop(
        &channels,
        writers,
        seconds,
        HealthClient::new,
        |mut c| async move { c.check(HealthCheckRequest::default()).await.map(drop) },
    )
    .await?;
    server.stop().await?;
    Ok(rate)
}

/// `writers` tasks, each with its own client on one of `channels`, making `call` back to back for
/// `seconds`, each waiting for its answer before the next. Returns the calls answered and their rate.
pub(crate) async fn closed_loop<C, F, Fut>(
    channels: &[tonic::transport::Channel],
    writers: usize,
    seconds: f64,
    client: impl Fn(tonic::transport::Channel) -> C,
    call: F,
) -> anyhow::Result<(u64, f64)>
where
    C: Clone + Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    anyhow::ensure!(!channels.is_empty(), "no connection to call over");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, call) = (client(channels[w % channels.len()].clone()), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                // A tonic client clone shares its connection; it is two reference counts.
                call(client.clone()).await?;
                n += 1;
            }
            Ok::<_, tonic::Status>(n)
        }));
    }
    let mut calls = 0u64;
    for t in tasks {
        calls += t.await??;
    }
    Ok((calls, calls as f64 / started.elapsed().as_secs_f64()))
}

/// The best this storage design could do: the same record bytes, `group` per write into a
/// preallocated, zero-filled file and one `fdatasync` each, on one thread (see `raw`).
pub(crate) fn measure_baseline(
    dir: &Path,
    group: usize,
    record: &[u8],
    seconds: f64,
) -> anyhow::Result<Measured> {
    let mut segment = RawSegment::create(dir)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut pos: u64 = 0;
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let t = Instant::now();
        segment.write_group(group, record)?;
        pos += group as u64;
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Measured {
        events: pos,
        syncs: latencies.len() as u64,
        elapsed,
        latencies,
    })
}

/// The `p` quantile (0..=1) of sorted latencies; zero when there are none.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    // A short warm-up run gives a real stored record for the baseline to write.
    let warm_dir = args.dir.join("warm-up");
    let _ = std::fs::remove_dir_all(&warm_dir);
    let warm_up = Ours {
        writers: 1,
        per_request: 1,
        seconds: 0.3,
        transport: Transport::Unary,
    };
    let (_, _, record, _) = measure_ours(&warm_dir, warm_up).await?;
    let _ = std::fs::remove_dir_all(&warm_dir);
    if !args.json {
        println!("| writers | events/request | ours events/s | baseline events/s | ratio | ours p50 ms | ours p99 ms | ours events/sync | baseline events/sync | baseline sync p50 ms | ours CPU µs/event | baseline CPU µs/event | CPU ratio | no-op RPCs/s | no-op / baseline | raw writes via gRPC events/s | its events/sync | raw writes via gRPC / baseline |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for &per in &args.events_per_request {
        for &writers in &args.writers {
            let run_dir = args.dir.join(format!("ours-{writers}-{per}"));
            let base_dir = args.dir.join(format!("base-{writers}-{per}"));
            let _ = std::fs::remove_dir_all(&run_dir);
            let _ = std::fs::remove_dir_all(&base_dir);
            // The disk's speed drifts with its neighbours: measure the baseline both before and
            // after ours (half the time each) and pool the two.
            let group = writers * per;
            let half = args.seconds / 2.0;
            let cpu_before = process_cpu();
            let before = tokio::task::block_in_place(|| {
                measure_baseline(&base_dir.join("before"), group, &record, half)
            })?;
            let mut base_cpu = process_cpu().saturating_sub(cpu_before);
            let (ours, requests, _, cpu) = measure_ours(
                &run_dir,
                Ours {
                    writers,
                    per_request: per,
                    seconds: args.seconds,
                    transport: Transport::of(&args),
                },
            )
            .await?;
            let cpu_before = process_cpu();
            let after = tokio::task::block_in_place(|| {
                measure_baseline(&base_dir.join("after"), group, &record, half)
            })?;
            base_cpu += process_cpu().saturating_sub(cpu_before);
            let baseline = before.pooled(after);
            // Only single-event requests are bounded by the request rate.
            let noop = if per == 1 && Transport::of(&args) == Transport::Unary {
                let rate =
                    measure_noop_rpcs(&args.dir.join(format!("noop-{writers}")), writers, half)
                        .await?;
                let _ = std::fs::remove_dir_all(args.dir.join(format!("noop-{writers}")));
                Some(rate)
            } else {
                None
            };
            // The same calls answered by raw writes behind a bare gRPC server: ours cannot beat it.
            let ceiling = if per == 1 && Transport::of(&args) == Transport::Unary {
                let request = pb::RecordStatementRequest {
                    command: Some(quote_statement(
                        &uuid::Uuid::nil().to_string(),
                        "bench-speaker",
                        "",
                        STATED,
                    )),
                    ..Default::default()
                };
                Some(
                    crate::ceiling::measure_raw_rpcs(
                        &args.dir.join(format!("ceiling-{writers}")),
                        writers,
                        writers.clamp(1, CONNECTIONS),
                        &record,
                        request,
                        half,
                    )
                    .await?,
                )
            } else {
                None
            };
            // CPU per event is steadier than throughput on a shared machine.
            let us_per_event =
                |cpu: Duration, events: u64| cpu.as_secs_f64() * 1e6 / events.max(1) as f64;
            let (ours_cpu, base_cpu) = (
                us_per_event(cpu, ours.events),
                us_per_event(base_cpu, baseline.events),
            );
            let ratio = ours.rate() / baseline.rate();
            let per_sync = ours.events as f64 / ours.syncs.max(1) as f64;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "writers": writers, "events_per_request": per,
                        "ours_events_per_s": ours.rate(), "baseline_events_per_s": baseline.rate(),
                        "ratio": ratio, "ours_p50_ms": ms(ours.percentile(0.5)), "ours_p99_ms": ms(ours.percentile(0.99)),
                        "ours_events_per_sync": per_sync, "baseline_events_per_sync": group,
                        "baseline_sync_p50_ms": ms(baseline.percentile(0.5)), "record_bytes": record.len(),
                        "requests": requests, "ours_cpu_us_per_event": ours_cpu,
                        "baseline_cpu_us_per_event": base_cpu, "noop_rpcs_per_s": noop,
                        "raw_rpcs_per_s": ceiling.map(|c| c.0),
                        "raw_rpcs_events_per_sync": ceiling.map(|c| c.1),
                    })
                );
            } else {
                println!(
                    "| {writers} | {per} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {group} | {:.2} | {ours_cpu:.0} | {base_cpu:.0} | {:.1} | {} | {} | {} | {} | {} |",
                    ours.rate(),
                    baseline.rate(),
                    ratio,
                    ms(ours.percentile(0.5)),
                    ms(ours.percentile(0.99)),
                    per_sync,
                    ms(baseline.percentile(0.5)),
                    ours_cpu / base_cpu.max(f64::MIN_POSITIVE),
                    noop.map_or("-".to_string(), |r| format!("{r:.0}")),
                    noop.map_or("-".to_string(), |r| format!("{:.2}", r / baseline.rate())),
                    ceiling.map_or("-".to_string(), |(r, _)| format!("{r:.0}")),
                    ceiling.map_or("-".to_string(), |(_, g)| format!("{g:.1}")),
                    ceiling.map_or("-".to_string(), |(r, _)| format!("{:.2}", r / baseline.rate())),
                );
            }
            let _ = std::fs::remove_dir_all(&run_dir);
            let _ = std::fs::remove_dir_all(&base_dir);
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(0)
}

/// A server on a free local port for the benchmarks, with the app behind it.
pub(crate) struct BenchServer {
    pub(crate) app: App,
    pub(crate) addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), claims_ledger_server::grpc::server::ServeError>>,
}

impl BenchServer {
    /// Opens the app as `serve` does (durable, with its projections) and serves it.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<BenchServer> {
        let app = tokio::task::block_in_place(|| App::open(dir, LogOptions::default()))
            .with_context(|| format!("opening {}", dir.display()))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(claims_ledger_server::grpc::server::serve(
            listener,
            app.clone(),
            async {
                let _ = stop_rx.await;
            },
        ));
        Ok(BenchServer {
            app,
            addr,
            stop,
            handle,
        })
    }

    pub(crate) async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(self.addr.clone())?
            .connect()
            .await?)
    }

    pub(crate) async fn channels(
        &self,
        n: usize,
    ) -> anyhow::Result<Vec<tonic::transport::Channel>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.channel().await?);
        }
        Ok(out)
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.handle.await??;
        self.app.finish().await;
        Ok(())
    }
}
