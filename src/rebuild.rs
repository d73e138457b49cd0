//! `claims-ledger rebuild`: rebuilds every projection of a stopped server's data directory from log
//! position 0 into a fresh generation, offline, with a progress bar on stderr. It opens the log and
//! the projections exactly as the server does, so sled's directory lock turns a running server into a
//! clear refusal rather than two writers. A running server rebuilds online through
//! `Admin.RebuildProjections` instead.
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use claims_ledger_log::{EventLog, LogError, LogOptions, SLED_LOCKED};
use claims_ledger_server::projection::Projections;

/// Redraw the progress bar at most this often; a redraw per 512-event batch would flood a terminal.
const REDRAW: Duration = Duration::from_millis(100);

/// Width of the bar itself, in characters.
const BAR: usize = 30;

/// The log's open error, with what to do about a shorter log.
fn log_open_error(dir: &Path, err: LogError) -> anyhow::Error {
    match err {
        LogError::ShorterLog(s) => anyhow::anyhow!(
            "refusing to rebuild from {}: {s}. Restore it from a backup (README, \"Backup and \
             restore\"), or run `rebuild --accept-shorter-log` to accept the shorter log knowingly \
             (logged, and recorded in the log)",
            dir.display()
        ),
        other => open_error("event log", dir, other),
    }
}

/// Turns an open error into a message that says what to do about it.
fn open_error(what: &str, dir: &Path, err: impl std::fmt::Display) -> anyhow::Error {
    let msg = err.to_string();
    if msg.contains(SLED_LOCKED) {
        anyhow::anyhow!(
            "the {what} in {} is locked by another process: stop the server before an offline \
             rebuild (or ask the running server with Admin.RebuildProjections)",
            dir.display()
        )
    } else {
        anyhow::anyhow!("opening the {what} in {}: {msg}", dir.display())
    }
}

/// One progress line: bar, percentage, applied/total, rate.
fn progress_line(applied: u64, total: u64, elapsed: Duration) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (applied as f64 / total as f64).min(1.0)
    };
    let filled = ((fraction * BAR as f64).round() as usize).min(BAR);
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        applied as f64 / secs
    } else {
        0.0
    };
    format!(
        "[{}{}] {:5.1}%  {applied}/{total} events  {rate:.0} events/s",
        "#".repeat(filled),
        "-".repeat(BAR - filled),
        fraction * 100.0
    )
}

/// The bar on stderr, only when stderr is a terminal: in a log file `\r` redraws are noise.
struct Progress {
    total: u64,
    start: Instant,
    last_draw: Option<Instant>,
    enabled: bool,
}

impl Progress {
    fn update(&mut self, applied: u64, force: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !force && self.last_draw.is_some_and(|t| now - t < REDRAW) {
            return;
        }
        self.last_draw = Some(now);
        let line = progress_line(applied, self.total, now - self.start);
        let mut err = std::io::stderr().lock();
        // A progress bar that cannot be drawn is not worth failing the rebuild for.
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
    }

    fn finish(&mut self, applied: u64) {
        if self.enabled {
            self.update(applied, true);
            eprintln!();
        }
    }
}

/// Runs the offline rebuild; the exit code is 0 on success. `accept_shorter_log` is the operator's
/// override of the open's refusal of a log shorter than its records (see `serve`).
pub fn run(data_dir: &Path, json: bool, accept_shorter_log: bool) -> anyhow::Result<i32> {
    // EventLog::open would create an empty log here; a mistyped path should fail instead.
    if !data_dir.join("db").exists() {
        anyhow::bail!("no claims-ledger data in {}", data_dir.display());
    }
    // Opened first, as the server does: their checkpoint is one of the log's records of its length.
    let projections_dir = claims_ledger_server::app::projections_dir(data_dir);
    let (projections, _) = Projections::open_unchecked(&projections_dir)
        .map_err(|e| open_error("projections", &projections_dir, e))?;
    let options = LogOptions {
        evidence: claims_ledger_server::app::projection_evidence(&projections)
            .into_iter()
            .collect(),
        accept_shorter_log,
        ..LogOptions::default()
    };
    let log = EventLog::open(data_dir, options, None).map_err(|e| log_open_error(data_dir, e))?;

    let total = log.durable_count();
    let start = Instant::now();
    let mut progress = Progress {
        total,
        start,
        last_draw: None,
        enabled: std::io::stderr().is_terminal(),
    };
    progress.update(0, true);
    let report = projections.rebuild(&log, &mut |applied| progress.update(applied, false));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // End the bar's line so the error starts on its own.
            if progress.enabled {
                eprintln!();
            }
            return Err(anyhow::anyhow!("rebuilding projections: {e}"));
        }
    };
    progress.finish(report.events);
    projections
        .flush()
        .map_err(|e| anyhow::anyhow!("flushing projections: {e}"))?;
    let elapsed = start.elapsed();
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        report.events as f64 / secs
    } else {
        0.0
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "events_replayed": report.events, "generation": report.generation,
                "elapsed_seconds": secs, "events_per_second": rate,
            })
        );
    } else {
        println!(
            "rebuilt projections: {} events replayed into generation {} in {secs:.2} s ({rate:.0} events/s)",
            report.events, report.generation
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_bar_percentage_counts_and_rate() {
        let line = progress_line(50, 200, Duration::from_secs(2));
        assert_eq!(
            line,
            "[########----------------------]  25.0%  50/200 events  25 events/s"
        );
    }

    #[test]
    fn progress_line_of_an_empty_log_is_complete() {
        let line = progress_line(0, 0, Duration::ZERO);
        assert!(line.starts_with(&format!("[{}] 100.0%", "#".repeat(BAR))));
    }

    #[test]
    fn a_locked_directory_says_to_stop_the_server() {
        let e = open_error(
            "event log",
            Path::new("data"),
            "storage: IO error: could not acquire lock on \"data/db\"",
        );
        assert!(e.to_string().contains("stop the server"));
        let other = open_error("event log", Path::new("data"), "i/o: permission denied");
        assert!(!other.to_string().contains("stop the server"));
    }
}
