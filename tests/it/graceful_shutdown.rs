//! SIGTERM while 8 writers append and a subscriber follows the log, against the real binary: the
//! server stops cleanly, the subscription ends with UNAVAILABLE, every acknowledged event is on disk,
//! and the next start has nothing to recover (the log verifies, the Merkle tree and the projections
//! are at the head).
use crate::common;

use std::time::Duration;

use claims_ledger_log::{EventLog, LogOptions};
use claims_ledger_proto as pb;
use claims_ledger_server::projection::Projections;
use common::*;
use tokio_stream::StreamExt;

#[test]
fn sigterm_during_appends_loses_nothing_and_restarts_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ChildServer::start(&data, &[]);
    let addr = server.addr.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (acked, sub_end) = rt.block_on(async {
        let mut events = pb::events_client::EventsClient::connect(addr.clone())
            .await
            .expect("connect");
        let mut sub = events
            .subscribe(pb::SubscribeRequest::default())
            .await
            .expect("subscribe")
            .into_inner();
        let mut writers = Vec::new();
        for w in 0..8 {
            let addr = addr.clone();
            writers.push(tokio::spawn(async move {
                let mut c = pb::ledger_client::LedgerClient::connect(addr)
                    .await
                    .expect("connect");
                let mut acked = Vec::new();
                for i in 0.. {
                    let r = c
                        .register_party(pb::RegisterPartyRequest {
                            command: Some(party(&format!("p-{w}-{i}"), pb::PartyKind::Person)),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(r) => acked.extend(
                            r.into_inner()
                                .result
                                .map(|r| r.events)
                                .unwrap_or_default()
                                .into_iter()
                                .map(|e| (e.position, e.event_id)),
                        ),
                        // Refused once the server stops accepting: the write was never acknowledged.
                        Err(_) => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let pid = server.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.expect("writer"));
        }
        // The subscription ends with a clear status rather than silently.
        let mut end = None;
        while let Some(item) = tokio::time::timeout(Duration::from_secs(15), sub.next())
            .await
            .expect("the subscription ends")
        {
            if let Err(s) = item {
                end = Some(s.code());
                break;
            }
        }
        (acked, end)
    });
    drop(rt);
    assert!(server.terminate(), "exited cleanly (code 0) after SIGTERM");
    assert!(
        acked.len() > 20,
        "writers were acknowledged: {}",
        acked.len()
    );
    assert_eq!(
        sub_end,
        Some(tonic::Code::Unavailable),
        "subscription ended with UNAVAILABLE"
    );

    // Every acknowledged event is there, exactly where it was acknowledged.
    let report = claims_ledger_log::verify::verify_dir(&data)
        .expect("open")
        .expect("the log verifies after SIGTERM");
    assert!(report.merkle_root.is_some());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let log = rt
        .block_on(async { EventLog::open(&data, LogOptions::default(), None) })
        .expect("reopen");
    let count = log.durable_count();
    for (position, event_id) in &acked {
        let e = log
            .get(*position)
            .expect("read")
            .expect("acknowledged event present");
        assert_eq!(&e.event_id.to_string(), event_id, "position {position}");
    }
    // Nothing to recover: the projections were brought to the head before exit.
    let (projections, version_ok) =
        Projections::open_unchecked(&claims_ledger_server::app::projections_dir(&data))
            .expect("open");
    assert!(version_ok);
    assert_eq!(
        projections.applied(),
        count,
        "projections at the head after a clean stop"
    );
    assert_eq!(
        log.tree_root(count).ok(),
        report.merkle_root,
        "tree at the head"
    );
}
