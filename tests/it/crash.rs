//! Crash safety: a server process is killed with SIGKILL while 8 clients append. After a restart every
//! acknowledged event is present at the position it was acknowledged with, the log is gap-free, and
//! `claims-ledger verify` passes on the data directory; a loop of 30 such kills with idempotent retries
//! loses and duplicates nothing.
use crate::common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claims_ledger_proto as pb;
use common::*;

#[derive(Debug, Clone)]
struct Acked {
    party_id: String,
    event_id: String,
    position: u64,
    hash: String,
}

async fn append_until_error(addr: String, writer: usize, acked: Arc<Mutex<Vec<Acked>>>) {
    let Ok(mut c) = pb::ledger_client::LedgerClient::connect(addr).await else {
        return;
    };
    for i in 0.. {
        let id = format!("w{writer}-n{i}");
        let r = c
            .register_party(pb::RegisterPartyRequest {
                command: Some(party(&id, pb::PartyKind::Group)),
                ..Default::default()
            })
            .await;
        match r {
            Ok(resp) => {
                let e = resp.into_inner().result.unwrap().events.remove(0);
                acked.lock().unwrap().push(Acked {
                    party_id: id,
                    event_id: e.event_id,
                    position: e.position,
                    hash: e.hash,
                });
            }
            Err(_) => return,
        }
    }
}

async fn read_everything(addr: &str) -> Vec<pb::EventEnvelope> {
    let mut ev = pb::events_client::EventsClient::connect(addr.to_string())
        .await
        .expect("connect after restart");
    let mut all = Vec::new();
    let mut from = Some(0);
    while let Some(p) = from {
        let page = ev
            .read_all(pb::ReadAllRequest {
                from_position: p,
                max_count: 1000,
                ..Default::default()
            })
            .await
            .expect("read")
            .into_inner();
        all.extend(page.events);
        from = page.next_position;
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_appends_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut total_acked = 0;
    // Two crash rounds: the second one appends to (and crashes) a recovered log.
    for round in 0..2 {
        let mut server = ChildServer::start(&data, &["--durability", "fsync"]);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                tokio::spawn(append_until_error(
                    server.addr.clone(),
                    w + 100 * round,
                    acked.clone(),
                ))
            })
            .collect();
        // Let appends flow, then kill mid-stream without any warning.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().len() < 200 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill9();
        for w in writers {
            w.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= 200,
            "round {round}: only {} appends acknowledged",
            acked.len()
        );
        total_acked += acked.len();

        let server = ChildServer::start(&data, &["--durability", "fsync"]);
        let all = read_everything(&server.addr).await;
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.position, i as u64, "gap-free after restart");
        }
        for a in &acked {
            let e = all.get(a.position as usize).unwrap_or_else(|| {
                panic!(
                    "acknowledged position {} lost ({} events)",
                    a.position,
                    all.len()
                )
            });
            assert_eq!(e.event_id, a.event_id, "event at {} replaced", a.position);
            assert_eq!(e.hash, a.hash);
            assert_eq!(e.stream, format!("party-{}", a.party_id));
        }
        drop(server);
    }
    assert!(total_acked >= 400);

    let out = Command::new(bin())
        .args(["verify", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

/// One writer of the crash loop: registers parties `w<writer>-n<i>` under the idempotency key
/// `k-w<writer>-n<i>`, and after an error re-sends the same write (same key, same content) to the
/// next server, as a client with safe retries would. Returns the acknowledged writes and the next
/// write to make.
async fn idempotent_writer(
    addr: String,
    writer: usize,
    mut next: usize,
    acked: Arc<Mutex<Vec<Acked>>>,
) -> usize {
    let Ok(mut c) = pb::ledger_client::LedgerClient::connect(addr).await else {
        return next;
    };
    loop {
        let id = format!("w{writer}-n{next}");
        let r = c
            .register_party(pb::RegisterPartyRequest {
                options: Some(pb::WriteOptions {
                    idempotency_key: format!("k-{id}"),
                    ..Default::default()
                }),
                command: Some(party(&id, pb::PartyKind::Group)),
                ..Default::default()
            })
            .await;
        match r {
            Ok(resp) => {
                let e = resp.into_inner().result.unwrap().events.remove(0);
                acked.lock().unwrap().push(Acked {
                    party_id: id,
                    event_id: e.event_id,
                    position: e.position,
                    hash: e.hash,
                });
                next += 1;
            }
            Err(_) => return next,
        }
    }
}

/// 30 cycles of: start the server on the same directory, let 8 writers append with idempotent
/// retries, SIGKILL it. At the end, every acknowledged event (including the answer to a retry) must
/// be in the log at the position it was acknowledged with, no write may be in the log twice, and
/// `claims-ledger verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_sigkills_under_eight_idempotent_writers_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut next = [0usize; 8];
    for cycle in 0..30 {
        let mut server = ChildServer::start(&data, &["--durability", "fsync"]);
        let before = acked.lock().unwrap().len();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                tokio::spawn(idempotent_writer(
                    server.addr.clone(),
                    w,
                    next[w],
                    acked.clone(),
                ))
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Kill at a different point each cycle.
        let target = before + 8 + (cycle * 7) % 40;
        while acked.lock().unwrap().len() < target && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill9();
        for (w, h) in writers.into_iter().enumerate() {
            next[w] = h.await.unwrap();
        }
        assert!(
            acked.lock().unwrap().len() > before,
            "cycle {cycle}: nothing was acknowledged"
        );
    }
    let server = ChildServer::start(&data, &["--durability", "fsync"]);
    let all = read_everything(&server.addr).await;
    let acked = acked.lock().unwrap().clone();
    let mut streams = std::collections::HashSet::new();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64, "gap-free");
        assert!(
            streams.insert(e.stream.clone()),
            "{} written twice",
            e.stream
        );
    }
    for a in &acked {
        let e = all
            .get(a.position as usize)
            .unwrap_or_else(|| panic!("acknowledged position {} lost", a.position));
        assert_eq!(e.event_id, a.event_id, "event at {} replaced", a.position);
        assert_eq!(e.hash, a.hash);
        assert_eq!(e.stream, format!("party-{}", a.party_id));
    }
    assert!(acked.len() >= 30 * 8, "{} acknowledged", acked.len());
    drop(server);
    let out = Command::new(bin())
        .args(["verify", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run verify");
    assert!(
        out.status.success(),
        "verify failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
