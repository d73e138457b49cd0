//! `claims-ledger-bench audit`: what tamper evidence costs, each figure against a baseline measured
//! in the same run.
//! - **Append**: durable appends through gRPC, the Merkle tree kept in the same batches as the
//!   events, against the same record bytes written into a zero-filled file with one fdatasync per
//!   group of as many records as there are writers (the `append` benchmark's baseline); windows alternate ours,
//!   raw, ours, raw and the two of each kind are pooled, so drift of the shared disk falls on both.
//!   The log can no longer run without its tree, so the earlier comparison with the tree off is gone:
//!   this figure is the whole append path against the disk, of which the tree is one part.
//! - **Proofs** at `--events` (default 1,000,000) events: inclusion and consistency proof latency
//!   for random positions and sizes, against a random point read of one event (the cheapest thing a
//!   proof could possibly cost: one sled lookup plus its hash check).
//! - **Verify**: `verify --data-dir` (hash chain, stream revisions, every Merkle leaf and stored tile,
//!   the frontier) against a raw sled scan that reads every stored page, before and after, pooled.
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::value::RawValue;

use crate::append::{measure_baseline, measure_ours, ms, percentile, Measured, Ours, Transport};
use crate::query::scan;
use claims_ledger_log::{open_db, AppendRequest, Durability, EventLog, LogOptions, NewEvent};

#[derive(Debug, Clone, Args)]
pub struct AuditBenchArgs {
    /// Scratch directory on the disk to measure (removed afterwards).
    #[arg(long, default_value = "./bench-data")]
    pub dir: PathBuf,
    /// Events in the log the proofs and verify are measured on.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Seconds per append configuration (split into two windows each of ours and of the baseline).
    #[arg(long, default_value_t = 6.0)]
    pub seconds: f64,
    /// Concurrent writers to try for the append comparison.
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    pub writers: Vec<usize>,
    /// Proofs of each kind to time.
    #[arg(long, default_value_t = 20_000)]
    pub samples: usize,
    /// Print JSON lines instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// A small, fast, deterministic generator (xorshift64*): the positions only need to be spread out.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

async fn append_comparison(args: &AuditBenchArgs) -> anyhow::Result<()> {
    if !args.json {
        println!("| writers | events/request | raw write + fdatasync events/s | ours (tree on) events/s | **ratio ours/raw** | raw sync p50 / p99 ms | ours p50 / p99 ms |");
        println!("|---|---|---|---|---|---|---|");
    }
    for &writers in &args.writers {
        let half = args.seconds / 2.0;
        let mut raw: Option<Measured> = None;
        let mut ours: Option<Measured> = None;
        let pool = |slot: &mut Option<Measured>, m: Measured| {
            *slot = Some(match slot.take() {
                Some(prev) => prev.pooled(m),
                None => m,
            });
        };
        // Ours first in each pair, so the baseline writes a record of ours.
        for i in 0..2 {
            let dir = args.dir.join(format!("append-{writers}-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            let (m, _, record, _) = measure_ours(
                &dir,
                Ours {
                    writers,
                    per_request: 1,
                    seconds: half,
                    transport: Transport::Unary,
                },
            )
            .await?;
            pool(&mut ours, m);
            let _ = std::fs::remove_dir_all(&dir);
            let base_dir = args.dir.join(format!("raw-{writers}-{i}"));
            let _ = std::fs::remove_dir_all(&base_dir);
            let m = tokio::task::block_in_place(|| {
                measure_baseline(&base_dir, writers, &record, half)
            })?;
            pool(&mut raw, m);
            let _ = std::fs::remove_dir_all(&base_dir);
        }
        let (Some(raw), Some(ours)) = (raw, ours) else {
            continue;
        };
        let ratio = ours.rate() / raw.rate();
        if args.json {
            println!(
                "{}",
                serde_json::json!({"measure": "append", "writers": writers, "raw_events_per_s": raw.rate(),
                    "ours_events_per_s": ours.rate(), "ratio": ratio,
                    "raw_sync_p50_ms": ms(raw.percentile(0.5)), "raw_sync_p99_ms": ms(raw.percentile(0.99)),
                    "ours_p50_ms": ms(ours.percentile(0.5)), "ours_p99_ms": ms(ours.percentile(0.99))})
            );
        } else {
            println!(
                "| {writers} | 1 | {:.0} | {:.0} | **{ratio:.2}** | {:.2} / {:.2} | {:.2} / {:.2} |",
                raw.rate(),
                ours.rate(),
                ms(raw.percentile(0.5)),
                ms(raw.percentile(0.99)),
                ms(ours.percentile(0.5)),
                ms(ours.percentile(0.99)),
            );
        }
    }
    Ok(())
}

/// Writes `count` events of about 700 bytes (a typical record here) in appends of 1,000, relaxed.
async fn generate(dir: &Path, count: u64) -> anyhow::Result<Duration> {
    let log = EventLog::open(
        dir,
        LogOptions {
            durability: Durability::Relaxed,
            ..LogOptions::default()
        },
        None,
    )?;
    let filler = "x".repeat(560);
    let started = Instant::now();
    let mut written = 0u64;
    while written < count {
        let n = (count - written).min(1000);
        let events = (0..n)
            .map(|i| {
                Ok(NewEvent {
                    event_id: uuid::Uuid::new_v4(),
                    stream: format!("claim-{}", (written + i) % 5000),
                    event_type: "ClaimAsserted".into(),
                    schema_version: 1,
                    payload: RawValue::from_string(format!(
                        "{{\"n\":{},\"text\":\"{filler}\"}}",
                        written + i
                    ))?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        log.append(AppendRequest {
            events,
            expectations: vec![],
            idempotency: None,
            recorded_by: "bench-audit".into(),
            correlation_id: None,
            causation_id: None,
        })
        .await?;
        written += n;
    }
    Ok(started.elapsed())
}

fn timed<T>(
    samples: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        std::hint::black_box(f()?);
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

fn proofs(dir: &Path, args: &AuditBenchArgs) -> anyhow::Result<()> {
    let log = EventLog::open(dir, LogOptions::default(), None)
        .with_context(|| format!("opening {}", dir.display()))?;
    let n = log.durable_count();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let reads = timed(args.samples, || Ok(log.get(rng.below(n))?))?;
    let inclusion = timed(args.samples, || Ok(log.inclusion_proof(rng.below(n), n)?))?;
    let consistency = timed(args.samples, || {
        Ok(log.consistency_proof(1 + rng.below(n - 1), n)?)
    })?;
    let row = |name: &str, d: &[Duration]| {
        let (p50, p99) = (percentile(d, 0.5), percentile(d, 0.99));
        let (b50, b99) = (percentile(&reads, 0.5), percentile(&reads, 0.99));
        if args.json {
            println!(
                "{}",
                serde_json::json!({"measure": name, "events": n, "p50_us": p50.as_secs_f64() * 1e6,
                    "p99_us": p99.as_secs_f64() * 1e6, "ratio_p50": p50.as_secs_f64() / b50.as_secs_f64(),
                    "ratio_p99": p99.as_secs_f64() / b99.as_secs_f64()})
            );
        } else {
            println!(
                "| {name} | {:.1} | {:.1} | **{:.2}** | **{:.2}** |",
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                p50.as_secs_f64() / b50.as_secs_f64(),
                p99.as_secs_f64() / b99.as_secs_f64()
            );
        }
    };
    if !args.json {
        println!("\n{} events, {} samples each; baseline: a random point read of one event (sled get + hash check)\n", n, args.samples);
        println!("| operation | p50 µs | p99 µs | **p50 ratio to point read** | **p99 ratio** |");
        println!("|---|---|---|---|---|");
    }
    row("point read (baseline)", &reads);
    row("inclusion proof", &inclusion);
    row("consistency proof", &consistency);
    Ok(())
}

fn verify_speed(dir: &Path, count: u64, json: bool) -> anyhow::Result<()> {
    let raw = |dir: &Path| -> anyhow::Result<Duration> {
        let db = open_db(dir).with_context(|| format!("opening {}", dir.display()))?;
        let started = Instant::now();
        let (events, _) = scan(&db)?;
        anyhow::ensure!(events == count, "raw scan found {events} of {count} events");
        Ok(started.elapsed())
    };
    let before = raw(dir)?;
    let started = Instant::now();
    let report = claims_ledger_log::verify::verify_dir(dir)
        .with_context(|| format!("opening {}", dir.display()))?
        .map_err(|m| anyhow::anyhow!("the benchmark log does not verify: {m}"))?;
    let verify = started.elapsed();
    anyhow::ensure!(report.merkle_root.is_some(), "the log kept no tree");
    let after = raw(dir)?;
    let base = (before + after) / 2;
    let (ours_rate, base_rate) = (
        count as f64 / verify.as_secs_f64(),
        count as f64 / base.as_secs_f64(),
    );
    if json {
        println!(
            "{}",
            serde_json::json!({"measure": "verify", "events": count, "verify_events_per_s": ours_rate,
                "raw_scan_events_per_s": base_rate, "ratio": ours_rate / base_rate})
        );
    } else {
        println!("\n| check of {count} events | events/s | **ratio to raw scan** |");
        println!("|---|---|---|");
        println!("| raw sled scan reading every value (baseline, before/after mean) | {base_rate:.0} | 1.00 |");
        println!(
            "| `verify --data-dir` (chain, stream revisions, every Merkle leaf and tile) | {ours_rate:.0} | **{:.3}** |",
            ours_rate / base_rate
        );
    }
    Ok(())
}

pub async fn run(args: AuditBenchArgs) -> anyhow::Result<i32> {
    let _ = std::fs::remove_dir_all(&args.dir);
    append_comparison(&args).await?;
    let log_dir = args.dir.join("proofs");
    let took = generate(&log_dir, args.events).await?;
    if !args.json {
        println!(
            "\nGenerated {} events in {:.1} s (relaxed durability, appends of 1,000).",
            args.events,
            took.as_secs_f64()
        );
    }
    tokio::task::block_in_place(|| proofs(&log_dir, &args))?;
    tokio::task::block_in_place(|| verify_speed(&log_dir, args.events, args.json))?;
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(0)
}
