//! `claims-ledger-bench query`: what the read side costs, each figure a ratio to a baseline measured in
//! the same run on the same disk, since absolute figures on a shared machine mean little.
//!
//! The log is generated first (`--events`, relaxed durability, batches of 252 commands): parties, a
//! source, then mostly `RecordStatement` + `AssertClaim` pairs on four parties and six topics, with a
//! few reviews and corrections in every batch, plus one party (`turkey`) whose 50 claims on 5 topics
//! are the answer the query measurement asks for.
//!
//! - **Rebuild**: the projections built from that log, twice: by `Projections::open` on an empty
//!   directory plus the catch-up from position 0 the projector would do (every sled cache is
//!   empty) and by `rebuild()` into a new generation (the log's cache now warm; includes switching
//!   over, flushing and dropping the old generation). Baseline: a raw sled scan of the log's `e` keys
//!   reading every value, timed once on a freshly opened database and once more on the same handle, so
//!   the cold and the warm case each have theirs; measured before and after ours and pooled.
//! - **Query latency**: one client calls `Query.GetPositions` (the `turkey` party, every topic) back to
//!   back through gRPC while 8 writers append single-event `RecordStatement`s and `AssertClaim`s
//!   durably (fsync, default options) on other parties, so that the answer stays the same size.
//!   Baseline: the same queries with no writer, half before and half after, pooled.
//! - **Open**: opening the generated log as the server does (the log with its stream index, the
//!   write model, and the projections, brought to the head first so that they keep their own
//!   checkpoint and replay nothing), with the snapshots a graceful shutdown saves and with them moved
//!   aside, alternately, twice each. Baseline: the cold raw scan, timed before each pair. Each open
//!   starts once sled has released the previous one's locks, and runs outside the runtime, so no
//!   projector starts beside it.
//! - **Append**: 8 and 64 writers appending single events durably through gRPC to the server as
//!   `serve` runs it (projections on), on fresh directories. Baseline: the same record bytes
//!   written into a zero-filled file with one fdatasync per group of as many records as there are
//!   writers (the `append` benchmark's baseline), in the order ours, raw, ours, raw, each side's two windows
//!   pooled. The product can no longer run without its projections, so the earlier comparison with
//!   projections off is gone. Our windows also report how far the projector was behind the log when
//!   the writers stopped, and how long it took to catch up.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use prost::Message as _;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::append::{
    measure_baseline, ms, percentile, quote_statement, timestamp, BenchServer, Measured,
    SOURCE_TEXT,
};
use claims_ledger_domain::limits::MAX_BATCH;
use claims_ledger_log::{open_db, Durability, EventLog, ExpectedRevision, LogOptions};
use claims_ledger_proto as pb;
use claims_ledger_server::app::{
    projections_dir, App, ClientCommand, OpenOptions, Shape, WriteContext,
};
use claims_ledger_server::grpc::convert;
use claims_ledger_server::projection::Projections;

/// One of the three measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Rebuild,
    Open,
    Query,
    Append,
}

#[derive(Debug, Clone, Args)]
pub struct QueryBenchArgs {
    /// Scratch directory on the disk to measure (removed afterwards).
    #[arg(long, default_value = "./bench-data")]
    pub dir: PathBuf,
    /// Events in the generated log (rebuild and query measurements).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Seconds of each measured window (appends; queries with writers, and without in all).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Print JSON lines instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Run only these measurements (repeatable or comma-separated); all when absent.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
}

/// Writers while queries are measured, each on its own HTTP/2 connection.
const QUERY_WRITERS: usize = 8;
/// Writer counts of the append measurement.
const APPEND_WRITERS: [usize; 2] = [8, 64];
/// HTTP/2 connections the append writers share, as a client pool would.
const MAX_CONNECTIONS: usize = 8;
/// Longest wait for the projector to catch up with the log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Untimed work before a measured window: connections, sled caches, the first fsyncs.
const WARM_UP_SECONDS: f64 = 0.5;
/// How often the projection lag is sampled while writers append.
const LAG_SAMPLE: Duration = Duration::from_millis(10);
const RECORDED_BY: &str = "bench-query";

/// (speaker, speaker's name, the state it speaks for, the state's name).
type Speaker = (&'static str, &'static str, &'static str, &'static str);

/// The parties the bulk of the log, and every writer, speak for.
const SPEAKERS: [Speaker; 4] = [
    ("sergey-lavrov", "Sergey Lavrov", "russia", "Russia"),
    ("dmytro-kuleba", "Dmytro Kuleba", "ukraine", "Ukraine"),
    (
        "antony-blinken",
        "Antony Blinken",
        "united-states",
        "United States",
    ),
    (
        "josep-borrell",
        "Josep Borrell",
        "european-union",
        "European Union",
    ),
];
/// The party whose positions are queried: its claims are written once, up front, and never grow.
const QUERIED: Speaker = ("hakan-fidan", "Hakan Fidan", "turkey", "Turkey");
const QUERIED_TOPICS: usize = 5;
const QUERIED_CLAIMS_PER_TOPIC: usize = 10;
const TOPICS: [&str; 6] = [
    "negotiation-venue",
    "preconditions-for-talks",
    "ceasefire",
    "sanctions",
    "prisoner-exchange",
    "security-guarantees",
];
const STANCES: [&str; 5] = [
    "Istanbul",
    "Geneva",
    "talks only after a ceasefire",
    "talks without preconditions",
    "no talks",
];
/// Statement + claim pairs per generated batch; with 8 reviews and 4 corrections, 252 commands.
const PAIRS_PER_BATCH: usize = 120;

/// The source's publication (2024-06-06); statements must not be stated after it.
const PUBLISHED: i64 = 1_717_632_000;
/// The day before publication: stated times count back from it, a day at a time.
const LAST_STATED: i64 = 1_717_545_600;
const DAY: i64 = 86_400;

type Cmd = pb::batch_command::Command;

fn party(id: &str, name: &str, kind: pb::PartyKind) -> Cmd {
    Cmd::RegisterParty(pb::RegisterPartyCommand {
        party_id: id.into(),
        kind: kind as i32,
        name: name.into(),
        ..Default::default()
    })
}

fn source(source_id: &str) -> Cmd {
    Cmd::RegisterSource(pb::RegisterSourceCommand {
        source_id: source_id.into(),
        publisher: "Bench".into(),
        url: "https://example.org/bench".into(),
        title: "Bench source".into(),
        published_at: timestamp(PUBLISHED),
        retrieved_at: timestamp(PUBLISHED),
        language: "en".into(),
        text: SOURCE_TEXT.into(),
    })
}

/// Every party of the log and the one source, as one batch.
fn setup_commands(source_id: &str) -> Vec<Cmd> {
    let mut out = Vec::new();
    for (person, person_name, state, state_name) in SPEAKERS.iter().chain([&QUERIED]) {
        out.push(party(state, state_name, pb::PartyKind::State));
        out.push(party(person, person_name, pb::PartyKind::Person));
    }
    out.push(source(source_id));
    out
}

/// A statement quoting the source, `days_back` days before the source's publication.
fn statement(
    source_id: &str,
    statement_id: &str,
    speaker: &Speaker,
    days_back: i64,
) -> pb::RecordStatementCommand {
    pb::RecordStatementCommand {
        statement_id: statement_id.into(),
        ..quote_statement(
            source_id,
            speaker.0,
            speaker.2,
            LAST_STATED - days_back * DAY,
        )
    }
}

fn claim(
    claim_id: &str,
    statement_id: &str,
    party: &str,
    topic: &str,
    stance: &str,
) -> pb::AssertClaimCommand {
    pb::AssertClaimCommand {
        claim_id: claim_id.into(),
        statement_id: statement_id.into(),
        party_id: party.into(),
        topic: topic.into(),
        stance: stance.into(),
        conditions: vec!["if Kyiv is genuinely interested in peace".into()],
    }
}

fn review(claim_id: &str) -> Cmd {
    Cmd::ReviewClaim(pb::ReviewClaimCommand {
        review_id: Uuid::now_v7().to_string(),
        claim_id: claim_id.into(),
        reviewer: "Bench Fact Check".into(),
        rating: Some(pb::Rating {
            label: "Misleading".into(),
            value: 2,
            best: 5,
            worst: 1,
        }),
        explanation: "The quote omits the conditions attached to it.".into(),
        url: "https://example.org/review".into(),
    })
}

fn correction(
    target_kind: pb::TargetKind,
    target_id: &str,
    kind: pb::CorrectionKind,
    replacement_id: &str,
) -> Cmd {
    Cmd::IssueCorrection(pb::IssueCorrectionCommand {
        correction_id: Uuid::now_v7().to_string(),
        target_kind: target_kind as i32,
        target_id: target_id.into(),
        kind: kind as i32,
        reason: "The transcript was corrected by the ministry.".into(),
        replacement_id: replacement_id.into(),
    })
}

/// The queried party's claims: 10 per topic on 5 topics, stances changing every third claim, with a
/// review on the first of each topic, a retracted and a superseded claim and a retracted statement,
/// so that the answer exercises every part of provenance.
fn queried_commands(source_id: &str) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut claims = Vec::new();
    let mut statements = Vec::new();
    let n = QUERIED_TOPICS * QUERIED_CLAIMS_PER_TOPIC;
    for i in 0..n {
        let (topic, j) = (i / QUERIED_CLAIMS_PER_TOPIC, i % QUERIED_CLAIMS_PER_TOPIC);
        let (s, c) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        out.push(Cmd::RecordStatement(statement(
            source_id,
            &s,
            &QUERIED,
            (n - i) as i64,
        )));
        out.push(Cmd::AssertClaim(claim(
            &c,
            &s,
            QUERIED.2,
            TOPICS[topic],
            STANCES[(j / 3) % STANCES.len()],
        )));
        statements.push(s);
        claims.push(c);
    }
    for topic in 0..QUERIED_TOPICS {
        out.push(review(&claims[topic * QUERIED_CLAIMS_PER_TOPIC]));
    }
    let last = QUERIED_CLAIMS_PER_TOPIC - 1;
    out.push(correction(
        pb::TargetKind::Claim,
        &claims[last],
        pb::CorrectionKind::Retract,
        "",
    ));
    let topic1 = QUERIED_CLAIMS_PER_TOPIC;
    out.push(correction(
        pb::TargetKind::Claim,
        &claims[topic1 + last - 1],
        pb::CorrectionKind::Supersede,
        &claims[topic1 + last],
    ));
    out.push(correction(
        pb::TargetKind::Statement,
        &statements[2 * QUERIED_CLAIMS_PER_TOPIC + 5],
        pb::CorrectionKind::Retract,
        "",
    ));
    out
}

/// One bulk batch: `PAIRS_PER_BATCH` statement + claim pairs round the speakers and topics, 8 reviews,
/// and 4 corrections (a claim retracted, a claim superseded, an erratum, a statement retracted).
/// `counter` numbers pairs across batches, to spread stated times and stances.
fn bulk_commands(source_id: &str, counter: &mut u64) -> Vec<Cmd> {
    let mut out = Vec::with_capacity(MAX_BATCH);
    let mut claims = Vec::with_capacity(PAIRS_PER_BATCH);
    let mut statements = Vec::with_capacity(PAIRS_PER_BATCH);
    for _ in 0..PAIRS_PER_BATCH {
        let n = *counter as usize;
        *counter += 1;
        let speaker = &SPEAKERS[n % SPEAKERS.len()];
        let (s, c) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        out.push(Cmd::RecordStatement(statement(
            source_id,
            &s,
            speaker,
            (n % 3650) as i64,
        )));
        out.push(Cmd::AssertClaim(claim(
            &c,
            &s,
            speaker.2,
            TOPICS[(n / SPEAKERS.len()) % TOPICS.len()],
            STANCES[(n / 7) % STANCES.len()],
        )));
        statements.push(s);
        claims.push(c);
    }
    for k in 0..8 {
        out.push(review(&claims[k * 15]));
    }
    out.push(correction(
        pb::TargetKind::Claim,
        &claims[3],
        pb::CorrectionKind::Retract,
        "",
    ));
    out.push(correction(
        pb::TargetKind::Claim,
        &claims[5],
        pb::CorrectionKind::Supersede,
        &claims[9],
    ));
    out.push(correction(
        pb::TargetKind::Statement,
        &statements[7],
        pb::CorrectionKind::Erratum,
        "",
    ));
    out.push(correction(
        pb::TargetKind::Statement,
        &statements[11],
        pb::CorrectionKind::Retract,
        "",
    ));
    out
}

fn batch_request(commands: Vec<Cmd>) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        options: None,
        commands: commands
            .into_iter()
            .map(|c| pb::BatchCommand {
                expected_revision: None,
                command: Some(c),
            })
            .collect(),
    }
}

/// Writes one batch through the application layer (no gRPC: this is set-up, not measured).
async fn write_batch(app: &App, commands: Vec<Cmd>) -> anyhow::Result<()> {
    let commands = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let prefix = format!("commands[{i}].{}.", convert::batch_command_name(&c));
            Ok(ClientCommand {
                command: convert::batch_command(c, &prefix)?,
                expected: ExpectedRevision::Any,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ctx = WriteContext {
        recorded_by: RECORDED_BY.into(),
        ..Default::default()
    };
    app.write(ctx, commands, Shape::BATCH).await?;
    Ok(())
}

/// The generated log.
struct Dataset {
    dir: PathBuf,
    events: u64,
    source_id: String,
    took: Duration,
}

/// Opens `dir` as the server does, on a thread outside the runtime, so that no projector task starts:
/// nothing then runs beside what is measured, and dropping the app closes the data directory.
fn open_without_projector(dir: &Path, options: OpenOptions) -> anyhow::Result<App> {
    let opened = tokio::task::block_in_place(|| {
        std::thread::scope(|s| s.spawn(|| App::open_options(dir, options)).join())
    });
    match opened {
        Ok(app) => Ok(app?),
        Err(_) => bail!("opening {} panicked", dir.display()),
    }
}

/// Generates a log of at least `target` events in `dir` without syncing and without applying it to
/// projections, then closes it with its snapshots saved and no projections on disk.
async fn generate(dir: &Path, target: u64) -> anyhow::Result<Dataset> {
    let started = Instant::now();
    let options = OpenOptions {
        log: LogOptions {
            durability: Durability::Relaxed,
            ..Default::default()
        },
        ..OpenOptions::default()
    };
    let app = open_without_projector(dir, options)?;
    let source_id = Uuid::now_v7().to_string();
    write_batch(&app, setup_commands(&source_id)).await?;
    write_batch(&app, queried_commands(&source_id)).await?;
    let mut counter = 0u64;
    while app.log().durable_count() < target {
        // Two batches in flight, so that deciding one overlaps the log appending the other.
        let first = bulk_commands(&source_id, &mut counter);
        let second = bulk_commands(&source_id, &mut counter);
        let (a, b) = tokio::join!(write_batch(&app, first), write_batch(&app, second));
        a?;
        b?;
    }
    let events = app.log().durable_count();
    // Not `finish`, which would apply the whole log to the projections: that is what the rebuild
    // measures.
    app.begin_shutdown();
    let snapshots = app.clone();
    tokio::task::spawn_blocking(move || snapshots.save_snapshots()).await??;
    drop(app);
    let _ = std::fs::remove_dir_all(projections_dir(dir));
    Ok(Dataset {
        dir: dir.to_path_buf(),
        events,
        source_id,
        took: started.elapsed(),
    })
}

/// Timed raw scans of a closed log: the first on a freshly opened database, the second on the same
/// handle with sled's cache warm.
struct RawScans {
    cold: Duration,
    warm: Duration,
    bytes: u64,
}

/// Reads every stored page; returns (events, bytes). Summing the bytes makes the scan read them, as
/// any consumer must, rather than only count the handles sled returns.
pub(crate) fn scan(db: &sled::Db) -> anyhow::Result<(u64, u64)> {
    let (mut events, mut bytes, mut sum) = (0u64, 0u64, 0u64);
    for page in claims_ledger_log::disk::pages(db) {
        let (_, value) = page?;
        events += claims_ledger_log::disk::page_frames(&value).count() as u64;
        bytes += value.len() as u64;
        sum = value
            .iter()
            .fold(sum, |acc, &b| acc.wrapping_add(u64::from(b)));
    }
    std::hint::black_box(sum);
    Ok((events, bytes))
}

fn raw_scans(dir: &Path, count: u64) -> anyhow::Result<RawScans> {
    let db = open_db(dir).with_context(|| format!("opening {}", dir.display()))?;
    let started = Instant::now();
    let (events, bytes) = scan(&db)?;
    let cold = started.elapsed();
    let started = Instant::now();
    scan(&db)?;
    let warm = started.elapsed();
    if events != count {
        bail!("the raw scan found {events} events where the log holds {count}");
    }
    Ok(RawScans { cold, warm, bytes })
}

struct Rebuild {
    events: u64,
    bytes: u64,
    /// Both baselines, before and after ours, summed.
    base_cold: Duration,
    base_warm: Duration,
    before: RawScans,
    after: RawScans,
    /// `Projections::open` on an empty directory, then catching up from position 0.
    open_build: Duration,
    /// `rebuild()`, in all.
    rebuild: Duration,
    /// Until `rebuild()` had applied the last event (the rest is switching over, flushing and
    /// dropping the old generation).
    rebuild_applying: Duration,
}

/// Raw scans, ours, raw scans again. Leaves the rebuilt projections where `App::open` looks for them.
fn measure_rebuild(data: &Dataset) -> anyhow::Result<Rebuild> {
    let dir = &data.dir;
    let count = data.events;
    let before = raw_scans(dir, count)?;
    let log = EventLog::open(dir, LogOptions::default(), None)
        .with_context(|| format!("opening {}", dir.display()))?;
    if log.durable_count() != count {
        bail!(
            "the log holds {} events, {count} were written",
            log.durable_count()
        );
    }
    let pdir = projections_dir(dir);
    let _ = std::fs::remove_dir_all(&pdir);
    let started = Instant::now();
    let projections = Projections::open(&pdir, &log)?;
    // Opening starts empty; this is the catch-up the server's projector does after it.
    projections.catch_up(&log)?;
    let open_build = started.elapsed();
    if projections.applied() != count {
        bail!(
            "opening the projections applied {} of {count} events",
            projections.applied()
        );
    }
    let mut applied_all = None;
    let mut progress = |applied: u64| {
        if applied >= count && applied_all.is_none() {
            applied_all = Some(Instant::now());
        }
    };
    let started = Instant::now();
    let report = projections.rebuild(&log, &mut progress)?;
    let rebuild = started.elapsed();
    let rebuild_applying = applied_all.map_or(rebuild, |t| t - started);
    if report.events != count {
        bail!("the rebuild applied {} of {count} events", report.events);
    }
    projections.flush()?;
    drop(projections);
    drop(log);
    let after = raw_scans(dir, count)?;
    Ok(Rebuild {
        events: count,
        bytes: before.bytes,
        base_cold: before.cold + after.cold,
        base_warm: before.warm + after.warm,
        before,
        after,
        open_build,
        rebuild,
        rebuild_applying,
    })
}

struct OpenResult {
    events: u64,
    /// Both opens of each kind, summed.
    with_snapshots: Duration,
    without: Duration,
    /// The cold raw scans before each pair, summed.
    scan_cold: Duration,
    /// Saving both snapshots once, and their sizes.
    save: Duration,
    index_bytes: u64,
    state_bytes: u64,
}

/// Returns once no process holds sled's lock on the log or the projections in `dir` (sled releases
/// it from background threads a moment after the last handle is dropped), so that an open's time
/// holds no waiting.
fn wait_unlocked(dir: &Path) -> anyhow::Result<()> {
    use fs2::FileExt as _;
    let deadline = Instant::now() + Duration::from_secs(10);
    for db in [dir.to_path_buf(), projections_dir(dir)] {
        let file = match std::fs::File::open(db.join("db")) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        while file.try_lock_exclusive().is_err() {
            if Instant::now() > deadline {
                bail!("{} stayed locked", db.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Closing the file releases the lock.
        drop(file);
    }
    Ok(())
}

fn measure_open(data: &Dataset) -> anyhow::Result<OpenResult> {
    use claims_ledger_log::INDEX_SNAPSHOT;
    use claims_ledger_server::app::STATE_SNAPSHOT;
    let (dir, count) = (&data.dir, data.events);
    let open = |expect: (u64, u64)| -> anyhow::Result<Duration> {
        wait_unlocked(dir)?;
        let started = Instant::now();
        let app = open_without_projector(
            dir,
            OpenOptions {
                // Only the open is timed: not the save a long replay triggers.
                resnapshot_after: Some(u64::MAX),
                ..OpenOptions::default()
            },
        )?;
        let took = started.elapsed();
        if app.opened_from_snapshots() != expect || app.log().durable_count() != count {
            bail!(
                "opened from snapshots {:?} with {} events; expected {expect:?} and {count}",
                app.opened_from_snapshots(),
                app.log().durable_count()
            );
        }
        Ok(took)
    };
    // The server's open includes the projections: bring them to the head first (the rebuild part
    // may not have run), as a graceful shutdown leaves them, so that no open replays into them.
    wait_unlocked(dir)?;
    {
        let log = EventLog::open(dir, LogOptions::default(), None)?;
        let projections = Projections::open(&projections_dir(dir), &log)?;
        projections.catch_up(&log)?;
        projections.flush()?;
    }
    // Snapshots of the whole log, timed once.
    wait_unlocked(dir)?;
    let app = open_without_projector(dir, OpenOptions::default())?;
    let started = Instant::now();
    app.save_snapshots()?;
    let save = started.elapsed();
    drop(app);
    let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len());
    let (index_bytes, state_bytes) = (size(INDEX_SNAPSHOT)?, size(STATE_SNAPSHOT)?);
    let aside = |f: &str| dir.join(format!("{f}.aside"));
    let (mut with_snapshots, mut without, mut scan_cold) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..2 {
        wait_unlocked(dir)?;
        scan_cold += raw_scans(dir, count)?.cold;
        with_snapshots += open((count, count))?;
        for f in [INDEX_SNAPSHOT, STATE_SNAPSHOT] {
            std::fs::rename(dir.join(f), aside(f))?;
        }
        without += open((0, 0))?;
        for f in [INDEX_SNAPSHOT, STATE_SNAPSHOT] {
            std::fs::rename(aside(f), dir.join(f))?;
        }
    }
    Ok(OpenResult {
        events: count,
        with_snapshots,
        without,
        scan_cold,
        save,
        index_bytes,
        state_bytes,
    })
}

fn print_open(r: &OpenResult, json: bool) {
    let (with, without, scan) = (
        r.with_snapshots.as_secs_f64() / 2.0,
        r.without.as_secs_f64() / 2.0,
        r.scan_cold.as_secs_f64() / 2.0,
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "kind": "open", "events": r.events,
                "open_with_snapshots_s": with, "open_without_snapshots_s": without,
                "baseline_cold_scan_s": scan,
                "with_snapshots_ratio": with / scan, "without_snapshots_ratio": without / scan,
                "save_snapshots_s": r.save.as_secs_f64(),
                "index_snapshot_bytes": r.index_bytes, "state_snapshot_bytes": r.state_bytes,
            })
        );
    } else {
        println!("| opening as the server does (stream index + write model + projections at the head) | events | seconds (mean of 2) | **÷ cold raw scan** |");
        println!("|---|---|---|---|");
        println!(
            "| with the snapshots of a graceful shutdown | {} | {with:.2} | **{:.2}** |",
            r.events,
            with / scan
        );
        println!(
            "| without snapshots (whole log folded) | {} | {without:.2} | **{:.2}** |",
            r.events,
            without / scan
        );
        println!(
            "| baseline: cold raw scan of the log's pages | {} | {scan:.2} | 1 |",
            r.events
        );
        println!();
        println!(
            "Saving both snapshots took {:.2} s: stream index {:.1} MB, write model {:.1} MB.",
            r.save.as_secs_f64(),
            r.index_bytes as f64 / 1e6,
            r.state_bytes as f64 / 1e6,
        );
        println!();
    }
}

impl BenchServer {
    /// How long the projector took to apply everything durable now.
    async fn caught_up(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let target = self.app.log().durable_count();
        self.app
            .wait_for_projection(target, CATCH_UP_TIMEOUT)
            .await?;
        Ok(started.elapsed())
    }

    /// Events durable in the log and not yet applied to the projections.
    fn lag(&self) -> anyhow::Result<u64> {
        let s = self.app.projection_status();
        Ok(s.log_count.saturating_sub(s.applied))
    }
}

/// `writers` tasks appending single events durably through gRPC for `seconds`: each records a
/// statement for its party, then asserts a claim on it, and so on. Latencies are per request.
async fn append_for(
    channels: &[Channel],
    writers: usize,
    source_id: &str,
    seconds: f64,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let mut client = pb::ledger_client::LedgerClient::new(channels[w % channels.len()].clone());
        let source_id = source_id.to_string();
        let speaker = SPEAKERS[w % SPEAKERS.len()];
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = w;
            while Instant::now() < deadline {
                let statement_id = Uuid::now_v7().to_string();
                let s = statement(&source_id, &statement_id, &speaker, (n % 3650) as i64);
                let sent = Instant::now();
                client
                    .record_statement(pb::RecordStatementRequest {
                        command: Some(s),
                        ..Default::default()
                    })
                    .await?;
                latencies.push(sent.elapsed());
                if Instant::now() >= deadline {
                    break;
                }
                let c = claim(
                    &Uuid::now_v7().to_string(),
                    &statement_id,
                    speaker.2,
                    TOPICS[n % TOPICS.len()],
                    STANCES[n % STANCES.len()],
                );
                let sent = Instant::now();
                client
                    .assert_claim(pb::AssertClaimRequest {
                        command: Some(c),
                        ..Default::default()
                    })
                    .await?;
                latencies.push(sent.elapsed());
                n += writers;
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
    Ok(Measured {
        events: latencies.len() as u64,
        syncs: 0,
        elapsed,
        latencies,
    })
}

/// Back-to-back `GetPositions` calls for `seconds`.
struct Queries {
    window: Measured,
    /// Answers whose size (positions and history entries) differed from the first one's.
    changed: u64,
}

impl Queries {
    fn pooled(self, other: Queries) -> Queries {
        Queries {
            window: self.window.pooled(other.window),
            changed: self.changed + other.changed,
        }
    }
}

/// What one answer holds: positions, history entries, encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AnswerSize {
    positions: usize,
    entries: usize,
    bytes: usize,
}

fn positions_request() -> pb::GetPositionsRequest {
    pb::GetPositionsRequest {
        party_id: QUERIED.2.into(),
        ..Default::default()
    }
}

async fn query_shape(channel: &Channel) -> anyhow::Result<AnswerSize> {
    let mut client = pb::query_client::QueryClient::new(channel.clone());
    let r = client
        .get_positions(positions_request())
        .await?
        .into_inner();
    Ok(AnswerSize {
        positions: r.positions.len(),
        entries: r.positions.iter().map(|p| p.history.len()).sum(),
        bytes: r.encoded_len(),
    })
}

async fn query_for(
    channel: &Channel,
    expected: AnswerSize,
    seconds: f64,
) -> anyhow::Result<Queries> {
    let mut client = pb::query_client::QueryClient::new(channel.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let (mut latencies, mut changed) = (Vec::new(), 0u64);
    while Instant::now() < deadline {
        let sent = Instant::now();
        let r = client
            .get_positions(positions_request())
            .await?
            .into_inner();
        latencies.push(sent.elapsed());
        let positions = r.positions.len();
        let entries: usize = r.positions.iter().map(|p| p.history.len()).sum();
        if positions != expected.positions || entries != expected.entries {
            changed += 1;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Queries {
        window: Measured {
            events: latencies.len() as u64,
            syncs: 0,
            elapsed,
            latencies,
        },
        changed,
    })
}

struct QueryResult {
    shape: AnswerSize,
    baseline: Queries,
    loaded: Queries,
    appends: Measured,
    lag_at_end: u64,
    drain: Duration,
}

/// Queries alone (half), queries with writers, queries alone (half) on the generated log.
async fn measure_query(data: &Dataset, seconds: f64) -> anyhow::Result<QueryResult> {
    let server = BenchServer::start(&data.dir).await?;
    server.caught_up().await?;
    let query_channel = server.channel().await?;
    let writer_channels = server.channels(QUERY_WRITERS).await?;
    let shape = query_shape(&query_channel).await?;
    if shape.entries == 0 {
        bail!("the queried party has no positions");
    }
    query_for(&query_channel, shape, WARM_UP_SECONDS).await?;
    let half = seconds / 2.0;
    let before = query_for(&query_channel, shape, half).await?;
    // Untimed: the first fsynced appends after the unsynced bulk load run slower than later ones.
    append_for(
        &writer_channels,
        QUERY_WRITERS,
        &data.source_id,
        WARM_UP_SECONDS,
    )
    .await?;
    server.caught_up().await?;
    let (loaded, appends) = tokio::join!(
        query_for(&query_channel, shape, seconds),
        append_for(&writer_channels, QUERY_WRITERS, &data.source_id, seconds)
    );
    let lag_at_end = server.lag()?;
    let drain = server.caught_up().await?;
    let after = query_for(&query_channel, shape, half).await?;
    drop(writer_channels);
    drop(query_channel);
    server.stop().await?;
    Ok(QueryResult {
        shape,
        baseline: before.pooled(after),
        loaded: loaded?,
        appends: appends?,
        lag_at_end,
        drain,
    })
}

/// One window of our appends.
struct Window {
    appends: Measured,
    /// Projection lag when the writers stopped, the most sampled during the window, and how long the
    /// projector then took to catch up.
    lag_at_end: u64,
    max_lag: u64,
    drain: Duration,
    /// A typical stored record of this window, for the baseline to write.
    record: Vec<u8>,
}

/// Samples the projection lag until `deadline`; returns the most seen.
async fn sample_lag(server: &BenchServer, deadline: Instant) -> anyhow::Result<u64> {
    let mut most = 0;
    while Instant::now() < deadline {
        most = most.max(server.lag()?);
        tokio::time::sleep(LAG_SAMPLE).await;
    }
    Ok(most)
}

/// `writers` single-event writers for `seconds` on a fresh log in `dir`, served as `serve` does.
async fn measure_append(dir: &Path, writers: usize, seconds: f64) -> anyhow::Result<Window> {
    let _ = std::fs::remove_dir_all(dir);
    let server = BenchServer::start(dir).await?;
    let source_id = Uuid::now_v7().to_string();
    pb::ledger_client::LedgerClient::new(server.channel().await?)
        .submit_batch(batch_request(setup_commands(&source_id)))
        .await?;
    let channels = server.channels(writers.clamp(1, MAX_CONNECTIONS)).await?;
    append_for(&channels, writers, &source_id, WARM_UP_SECONDS).await?;
    server.caught_up().await?;
    let syncs = server.app.log().sync_count();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (appends, max_lag) = tokio::join!(
        append_for(&channels, writers, &source_id, seconds),
        sample_lag(&server, deadline)
    );
    let mut appends = appends?;
    appends.syncs = server.app.log().sync_count() - syncs;
    let (lag_at_end, drain) = (server.lag()?, server.caught_up().await?);
    let last = server.app.log().durable_count().saturating_sub(1);
    let record = server
        .app
        .log()
        .get(last)?
        .context("the append window wrote nothing")?
        .stored;
    drop(channels);
    server.stop().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(Window {
        appends,
        lag_at_end,
        max_lag: max_lag?,
        drain,
        record,
    })
}

/// Our windows and the baseline's of one writer count, each side pooled.
struct AppendResult {
    writers: usize,
    /// Raw sled + fdatasync, groups of `writers` records.
    raw: Measured,
    ours: Measured,
    /// Per window of ours, in order.
    lags_at_end: Vec<u64>,
    max_lag: u64,
    drains: Vec<Duration>,
    /// Each window's rate, in the order run: ours, raw, ours, raw.
    rates: Vec<f64>,
}

async fn measure_appends(
    root: &Path,
    writers: usize,
    seconds: f64,
) -> anyhow::Result<AppendResult> {
    let (mut raw, mut ours): (Option<Measured>, Option<Measured>) = (None, None);
    let (mut lags_at_end, mut drains, mut rates, mut max_lag) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    let pool = |slot: &mut Option<Measured>, m: Measured| {
        *slot = Some(match slot.take() {
            Some(prev) => prev.pooled(m),
            None => m,
        });
    };
    // Alternating, so that the disk's drift affects both alike; ours first, for a record to write.
    for i in 0..2 {
        let dir = root.join(format!("append-{writers}-{i}"));
        let w = measure_append(&dir, writers, seconds).await?;
        rates.push(w.appends.rate());
        lags_at_end.push(w.lag_at_end);
        drains.push(w.drain);
        max_lag = max_lag.max(w.max_lag);
        pool(&mut ours, w.appends);
        let base_dir = root.join(format!("raw-{writers}-{i}"));
        let _ = std::fs::remove_dir_all(&base_dir);
        let m = tokio::task::block_in_place(|| {
            measure_baseline(&base_dir, writers, &w.record, seconds)
        })?;
        let _ = std::fs::remove_dir_all(&base_dir);
        rates.push(m.rate());
        pool(&mut raw, m);
    }
    Ok(AppendResult {
        writers,
        raw: raw.context("no baseline window ran")?,
        ours: ours.context("no window of ours ran")?,
        lags_at_end,
        max_lag,
        drains,
        rates,
    })
}

fn rate(events: u64, d: Duration) -> f64 {
    events as f64 / d.as_secs_f64().max(1e-9)
}

fn print_dataset(data: &Dataset, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "kind": "dataset", "events": data.events,
                "generate_s": data.took.as_secs_f64(),
                "generate_events_per_s": rate(data.events, data.took),
            })
        );
    } else {
        println!(
            "Generated a log of {} events in {:.1} s ({:.0} events/s, relaxed durability, batches of {} commands).",
            data.events,
            data.took.as_secs_f64(),
            rate(data.events, data.took),
            2 * PAIRS_PER_BATCH + 12,
        );
        println!();
    }
}

fn print_rebuild(r: &Rebuild, json: bool) {
    // Both baselines ran twice (before and after ours); ours once each.
    let base_cold = rate(2 * r.events, r.base_cold);
    let base_warm = rate(2 * r.events, r.base_warm);
    let open = rate(r.events, r.open_build);
    let rebuild = rate(r.events, r.rebuild);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "kind": "rebuild", "events": r.events, "event_value_bytes": r.bytes,
                "open_build_events_per_s": open, "baseline_cold_events_per_s": base_cold,
                "open_build_ratio": open / base_cold,
                "rebuild_events_per_s": rebuild, "baseline_warm_events_per_s": base_warm,
                "rebuild_ratio": rebuild / base_warm,
                "open_build_s": r.open_build.as_secs_f64(), "rebuild_s": r.rebuild.as_secs_f64(),
                "rebuild_applying_s": r.rebuild_applying.as_secs_f64(),
                "baseline_cold_before_s": r.before.cold.as_secs_f64(),
                "baseline_cold_after_s": r.after.cold.as_secs_f64(),
                "baseline_warm_before_s": r.before.warm.as_secs_f64(),
                "baseline_warm_after_s": r.after.warm.as_secs_f64(),
            })
        );
    } else {
        println!("| projections from the log | events | ours events/s | baseline events/s | **ratio** | ours s | baseline s (before, after) |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| first build, `Projections::open` + catch-up on an empty directory (caches empty) | {} | {open:.0} | {base_cold:.0} | **{:.3}** | {:.1} | {:.2}, {:.2} |",
            r.events,
            open / base_cold,
            r.open_build.as_secs_f64(),
            r.before.cold.as_secs_f64(),
            r.after.cold.as_secs_f64(),
        );
        println!(
            "| `rebuild()` into a new generation (log cache warm) | {} | {rebuild:.0} | {base_warm:.0} | **{:.3}** | {:.1} | {:.2}, {:.2} |",
            r.events,
            rebuild / base_warm,
            r.rebuild.as_secs_f64(),
            r.before.warm.as_secs_f64(),
            r.after.warm.as_secs_f64(),
        );
        println!();
        println!(
            "Event values: {:.0} MB, {} bytes per event. `rebuild()` had applied every event after {:.1} s; switching over, flushing and dropping the old generation took the other {:.1} s.",
            r.bytes as f64 / 1e6,
            r.bytes / r.events.max(1),
            r.rebuild_applying.as_secs_f64(),
            (r.rebuild - r.rebuild_applying).as_secs_f64(),
        );
        println!();
    }
}

fn print_query(q: &QueryResult, json: bool) {
    let (b, l) = (&q.baseline.window, &q.loaded.window);
    let p = |m: &Measured, x: f64| ms(percentile(&m.latencies, x));
    if json {
        println!(
            "{}",
            serde_json::json!({
                "kind": "query", "party": QUERIED.2, "positions": q.shape.positions,
                "history_entries": q.shape.entries, "answer_bytes": q.shape.bytes,
                "writers": QUERY_WRITERS,
                "baseline_p50_ms": p(b, 0.5), "baseline_p99_ms": p(b, 0.99),
                "baseline_queries_per_s": b.rate(),
                "loaded_p50_ms": p(l, 0.5), "loaded_p99_ms": p(l, 0.99),
                "loaded_queries_per_s": l.rate(),
                "p50_ratio": p(l, 0.5) / p(b, 0.5), "p99_ratio": p(l, 0.99) / p(b, 0.99),
                "queries_per_s_ratio": l.rate() / b.rate(),
                "answers_changed": q.baseline.changed + q.loaded.changed,
                "writer_events_per_s": q.appends.rate(),
                "writer_ack_p50_ms": p(&q.appends, 0.5), "writer_ack_p99_ms": p(&q.appends, 0.99),
                "projection_lag_at_end": q.lag_at_end, "caught_up_after_ms": ms(q.drain),
            })
        );
    } else {
        println!(
            "| `GetPositions`, {} positions, {} history entries, {} KB per answer | queries/s | p50 ms | p99 ms |",
            q.shape.positions,
            q.shape.entries,
            q.shape.bytes / 1000,
        );
        println!("|---|---|---|---|");
        println!(
            "| no writers (baseline) | {:.0} | {:.2} | {:.2} |",
            b.rate(),
            p(b, 0.5),
            p(b, 0.99)
        );
        println!(
            "| {QUERY_WRITERS} durable writers | {:.0} | {:.2} | {:.2} |",
            l.rate(),
            p(l, 0.5),
            p(l, 0.99)
        );
        println!(
            "| **ratio** | **{:.2}** | **{:.2}** | **{:.2}** |",
            l.rate() / b.rate(),
            p(l, 0.5) / p(b, 0.5),
            p(l, 0.99) / p(b, 0.99)
        );
        println!();
        println!(
            "Writers meanwhile: {:.0} events/s, ack p50 {:.2} ms, p99 {:.2} ms; projection lag when they stopped: {} events, caught up {:.0} ms later. Answers that changed size: {}.",
            q.appends.rate(),
            p(&q.appends, 0.5),
            p(&q.appends, 0.99),
            q.lag_at_end,
            ms(q.drain),
            q.baseline.changed + q.loaded.changed,
        );
        println!();
    }
}

fn print_appends(results: &[AppendResult], json: bool) {
    let p = |m: &Measured, x: f64| ms(percentile(&m.latencies, x));
    if json {
        for r in results {
            println!(
                "{}",
                serde_json::json!({
                    "kind": "append", "writers": r.writers, "events_per_request": 1,
                    "raw_events_per_s": r.raw.rate(), "ours_events_per_s": r.ours.rate(),
                    "ratio": r.ours.rate() / r.raw.rate(),
                    "raw_sync_p50_ms": p(&r.raw, 0.5), "raw_sync_p99_ms": p(&r.raw, 0.99),
                    "ours_p50_ms": p(&r.ours, 0.5), "ours_p99_ms": p(&r.ours, 0.99),
                    "raw_events_per_sync": r.raw.events as f64 / r.raw.syncs.max(1) as f64,
                    "ours_events_per_sync": r.ours.events as f64 / r.ours.syncs.max(1) as f64,
                    "window_events_per_s_ours_raw_ours_raw": r.rates,
                    "projection_lag_at_end": r.lags_at_end, "projection_max_lag": r.max_lag,
                    "caught_up_after_ms": r.drains.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                })
            );
        }
    } else {
        println!("| writers | events/request | raw write + fdatasync events/s | ours (projections on) events/s | **ratio ours/raw** | raw sync p50 / p99 ms | ours p50 / p99 ms | windows ours, raw, ours, raw | lag at end (events) | most lag sampled | caught up after ms |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in results {
            let list = |v: Vec<String>| v.join(", ");
            println!(
                "| {} | 1 | {:.0} | {:.0} | **{:.2}** | {:.2} / {:.2} | {:.2} / {:.2} | {} | {} | {} | {} |",
                r.writers,
                r.raw.rate(),
                r.ours.rate(),
                r.ours.rate() / r.raw.rate(),
                p(&r.raw, 0.5),
                p(&r.raw, 0.99),
                p(&r.ours, 0.5),
                p(&r.ours, 0.99),
                list(r.rates.iter().map(|x| format!("{x:.0}")).collect()),
                list(r.lags_at_end.iter().map(|x| x.to_string()).collect()),
                r.max_lag,
                list(r.drains.iter().map(|d| format!("{:.0}", ms(*d))).collect()),
            );
        }
        println!();
    }
}

pub async fn run(args: QueryBenchArgs) -> anyhow::Result<i32> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        bail!("--seconds must be a positive number of seconds");
    }
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let log_dir = args.dir.join("log");
    let _ = std::fs::remove_dir_all(&log_dir);
    if wants(Part::Rebuild) || wants(Part::Open) || wants(Part::Query) {
        let data = generate(&log_dir, args.events).await?;
        print_dataset(&data, args.json);
        if wants(Part::Rebuild) {
            let r = tokio::task::block_in_place(|| measure_rebuild(&data))?;
            print_rebuild(&r, args.json);
        }
        if wants(Part::Open) {
            let r = tokio::task::block_in_place(|| measure_open(&data))?;
            print_open(&r, args.json);
        }
        if wants(Part::Query) {
            let q = measure_query(&data, args.seconds).await?;
            print_query(&q, args.json);
        }
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    if wants(Part::Append) {
        let mut results = Vec::with_capacity(APPEND_WRITERS.len());
        for writers in APPEND_WRITERS {
            results.push(measure_appends(&args.dir, writers, args.seconds).await?);
        }
        print_appends(&results, args.json);
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(0)
}
