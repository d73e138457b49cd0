//! Durability seen from outside the process: the server runs under `strace`, and for every
//! acknowledged write an `fdatasync` of sled's data file must have started after the request was sent
//! and finished before the acknowledgement arrived. A process kill cannot show this (the page cache
//! survives it); the system-call trace can. With `--durability relaxed` the same check must fail,
//! which shows the test can tell the difference.
use crate::common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use claims_ledger_proto as pb;
use common::*;

/// (start, end) in seconds since the epoch of each fdatasync/fsync on a file named `db`.
fn data_file_syncs(trace: &str) -> Vec<(f64, f64)> {
    trace
        .lines()
        .filter(|l| (l.contains(" fdatasync(") || l.contains(" fsync(")) && l.contains("/db>"))
        .filter(|l| l.contains(") = 0 <"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _pid = f.next()?;
            let start: f64 = f.next()?.parse().ok()?;
            let dur: f64 = l.rsplit_once('<')?.1.trim_end_matches('>').parse().ok()?;
            Some((start, start + dur))
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Runs a traced server, makes `n` sequential writes, and returns how many of them had a data-file
/// sync inside their request/acknowledgement window.
fn writes_covered_by_a_sync(dir: &Path, durability: &str, n: usize) -> usize {
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
            "trace=fdatasync,fsync",
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
    let syncs = data_file_syncs(&trace);
    windows
        .iter()
        .filter(|(sent, acked)| syncs.iter().any(|(s, e)| s >= sent && e <= acked))
        .count()
}

#[test]
fn every_acknowledged_write_waited_for_an_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20;
    assert_eq!(
        writes_covered_by_a_sync(dir.path(), "fsync", n),
        n,
        "an acknowledgement arrived without a data-file sync inside its request window"
    );
    // The negative control: relaxed mode acknowledges before syncing.
    let relaxed = writes_covered_by_a_sync(dir.path(), "relaxed", n);
    assert!(
        relaxed < n / 2,
        "relaxed mode should not sync per write, yet {relaxed} of {n} writes had a sync"
    );
}
