//! Durability seen from outside the process: the server runs under `strace`, and for every
//! acknowledged write exactly one `fdatasync` of a write-ahead log segment (`*.wal`) must have
//! started after the request was sent and finished before the acknowledgement arrived. A process
//! kill cannot show this (the page cache survives it); the system-call trace can. With
//! `--durability relaxed` the same check must fail, which shows the test can tell the difference.
//!
//! The acknowledgement must not wait for sled's flush either. sled's own IO and flusher threads
//! call `sync_file_range` whenever they like, so the property checked is about the log's threads:
//! while the writes run, the threads that write segment frames (the writer) and sync them (the
//! syncer, which acknowledges) make no `sync_file_range` and no sync of sled's data file.
use crate::common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use claims_ledger_proto as pb;
use common::*;

/// One completed system call of the trace.
struct Call<'a> {
    tid: u64,
    start: f64,
    end: f64,
    line: &'a str,
}

/// Completed calls (strace `-f -ttt -T` lines). A call that another thread's interrupted is printed
/// as `<unfinished ...>` and later `<... name resumed>`; the two are joined, keeping the start of
/// the first and the name and path of the first.
fn calls(trace: &str) -> Vec<Call<'_>> {
    let mut pending: std::collections::HashMap<u64, (f64, &str)> = Default::default();
    let mut out = Vec::new();
    for line in trace.lines() {
        let mut f = line.split_whitespace();
        let (Some(tid), Some(time)) = (f.next(), f.next()) else {
            continue;
        };
        let (Ok(tid), Ok(time)) = (tid.parse::<u64>(), time.parse::<f64>()) else {
            continue;
        };
        if line.ends_with("<unfinished ...>") {
            pending.insert(tid, (time, line));
            continue;
        }
        let Some(dur) = line
            .rsplit_once('<')
            .and_then(|(_, d)| d.trim_end_matches('>').parse::<f64>().ok())
        else {
            continue;
        };
        let (start, first) = if line.contains(" resumed>") {
            match pending.remove(&tid) {
                Some(p) => p,
                None => continue,
            }
        } else {
            (time, line)
        };
        let ok = line.contains(") = ") && !line.contains(") = -1");
        if ok {
            out.push(Call {
                tid,
                start,
                end: start + dur,
                line: first,
            });
        }
    }
    out
}

fn is_sync(c: &Call) -> bool {
    c.line.contains(" fdatasync(") || c.line.contains(" fsync(")
}

/// (start, end) of each successful fdatasync/fsync of a write-ahead log segment.
fn segment_syncs(calls: &[Call]) -> Vec<(f64, f64)> {
    calls
        .iter()
        .filter(|c| is_sync(c) && c.line.contains(".wal>"))
        .map(|c| (c.start, c.end))
        .collect()
}

/// The calls inside `[from, to]` by the threads that write or sync segment frames there, that
/// would make an acknowledgement wait for sled: `sync_file_range`, or a sync of sled's data file.
fn sled_syncs_on_the_ack_path<'a>(calls: &'a [Call<'a>], from: f64, to: f64) -> Vec<&'a str> {
    let during = |c: &&Call| c.start >= from && c.end <= to;
    let log_threads: std::collections::HashSet<u64> = calls
        .iter()
        .filter(during)
        .filter(|c| c.line.contains(".wal>"))
        .map(|c| c.tid)
        .collect();
    calls
        .iter()
        .filter(during)
        .filter(|c| log_threads.contains(&c.tid))
        .filter(|c| c.line.contains("sync_file_range(") || (is_sync(c) && c.line.contains("/db>")))
        .map(|c| c.line)
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// What the trace of `n` sequential writes shows.
struct Seen {
    /// Writes with exactly one segment sync inside their request/acknowledgement window.
    covered_once: usize,
    /// Writes with at least one.
    covered: usize,
    /// Calls by the log's threads that would make an acknowledgement wait for sled.
    sled_syncs: Vec<String>,
    /// Whether the trace saw the log's threads at all (segment writes).
    saw_segment_writes: bool,
}

/// Runs a traced server, makes `n` sequential writes, and reports what the trace shows.
fn trace_writes(dir: &Path, durability: &str, n: usize) -> Seen {
    let data = dir.join(format!("data-{durability}"));
    let addr_file = dir.join(format!("addr-{durability}"));
    let trace_file = dir.join(format!("trace-{durability}"));
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-ttt",
            "-T",
            "-y",
            "-e",
            "trace=fdatasync,fsync,sync_file_range,pwrite64",
            "-o",
        ])
        .arg(&trace_file)
        .arg(bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--durability",
            durability,
            "--addr-file",
        ])
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("strace is needed for this test (Debian package strace)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.is_empty() {
                break format!("http://{a}");
            }
        }
        if let Ok(Some(status)) = strace.try_wait() {
            panic!("traced server exited early: {status}");
        }
        if Instant::now() > deadline {
            let _ = strace.kill();
            let _ = strace.wait();
            panic!("traced server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let windows: Vec<(f64, f64)> = rt.block_on(async {
        let mut c = pb::ledger_client::LedgerClient::connect(addr)
            .await
            .expect("connect");
        let mut windows = Vec::new();
        for i in 0..n {
            let sent = now();
            c.register_party(pb::RegisterPartyRequest {
                command: Some(party(&format!("p{i}"), pb::PartyKind::Group)),
                ..Default::default()
            })
            .await
            .expect("write");
            windows.push((sent, now()));
        }
        windows
    });

    // Stop the whole process group (strace and the server) and let strace finish its file.
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", strace.id())])
        .status();
    let _ = strace.wait();
    let trace = std::fs::read_to_string(&trace_file).expect("trace file");
    let calls = calls(&trace);
    let syncs = segment_syncs(&calls);
    let in_window = |(sent, acked): &(f64, f64)| {
        syncs
            .iter()
            .filter(|(s, e)| s >= sent && e <= acked)
            .count()
    };
    let (from, to) = (windows[0].0, windows[n - 1].1);
    Seen {
        covered_once: windows.iter().filter(|w| in_window(w) == 1).count(),
        covered: windows.iter().filter(|w| in_window(w) >= 1).count(),
        sled_syncs: sled_syncs_on_the_ack_path(&calls, from, to)
            .into_iter()
            .map(str::to_string)
            .collect(),
        saw_segment_writes: calls
            .iter()
            .any(|c| c.line.contains(" pwrite64(") && c.line.contains(".wal>")),
    }
}

#[test]
fn every_acknowledged_write_waited_for_one_segment_fdatasync_and_no_sled_flush() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20;
    let seen = trace_writes(dir.path(), "fsync", n);
    assert!(seen.saw_segment_writes, "the trace shows no segment writes");
    assert_eq!(
        seen.covered_once, n,
        "an acknowledgement arrived without exactly one segment sync inside its request window"
    );
    assert!(
        seen.sled_syncs.is_empty(),
        "the log's writer or syncer waited for sled: {:#?}",
        seen.sled_syncs
    );
    // The negative control: relaxed mode acknowledges before syncing.
    let relaxed = trace_writes(dir.path(), "relaxed", n);
    assert!(relaxed.saw_segment_writes);
    assert!(
        relaxed.covered < n / 2,
        "relaxed mode should not sync per write, yet {} of {n} writes had a sync",
        relaxed.covered
    );
}

/// The ack-path check flags a log thread that flushes sled, even when strace splits the call, and
/// leaves sled's own threads alone.
#[test]
fn the_ack_path_check_catches_a_sled_flush_by_a_log_thread() {
    let trace = "\
7 100.000000 pwrite64(5</d/wal/00000000.wal>, \"..\", 90, 64) = 90 <0.000010>
8 100.000100 fdatasync(5</d/wal/00000000.wal> <unfinished ...>
9 100.000150 sync_file_range(3</d/db>, 0, 4096, 7) = 0 <0.000100>
8 100.000400 <... fdatasync resumed>) = 0 <0.000300>
8 100.000500 sync_file_range(3</d/db>, 0, 4096, 7 <unfinished ...>
9 100.000550 pwrite64(3</d/db>, \"..\", 10, 0) = 10 <0.000010>
8 100.000700 <... sync_file_range resumed>) = 0 <0.000200>
";
    let calls = calls(trace);
    assert_eq!(segment_syncs(&calls), vec![(100.0001, 100.0001 + 0.0003)]);
    let flagged = sled_syncs_on_the_ack_path(&calls, 99.0, 101.0);
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert!(flagged[0].starts_with("8 100.000500 sync_file_range"));
}
