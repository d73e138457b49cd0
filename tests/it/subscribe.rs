//! `Events.Subscribe` over real gRPC: gap-free, duplicate-free ordered delivery across the catch-up /
//! live switch while 8 writers append, filters, checkpoints that let a filtered consumer resume, exact
//! resumption, heartbeats, a subscriber that never reads, and the end status at shutdown.
use crate::common;

use std::time::Duration;

use claims_ledger_proto as pb;
use claims_ledger_proto::subscribe_response::Kind;
use common::*;
use tonic::Code;

type Sub = tonic::Streaming<pb::SubscribeResponse>;

async fn subscribe(s: &TestServer, req: pb::SubscribeRequest) -> Sub {
    s.events()
        .await
        .subscribe(req)
        .await
        .expect("subscribe")
        .into_inner()
}

/// Reads until `n` events arrived; returns their positions and every message kind seen.
async fn take_events(sub: &mut Sub, n: usize) -> (Vec<pb::EventEnvelope>, Vec<Kind>) {
    let mut events = Vec::new();
    let mut other = Vec::new();
    while events.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(30), sub.message())
            .await
            .expect("subscription stalled")
            .expect("stream error")
            .expect("stream ended");
        match msg.kind.expect("kind") {
            Kind::Event(e) => events.push(e),
            k => other.push(k),
        }
    }
    (events, other)
}

async fn append_parties(s: &TestServer, writer: usize, n: usize) {
    let mut c = s.ledger().await;
    for i in 0..n {
        c.register_party(pb::RegisterPartyRequest {
            command: Some(party(&format!("w{writer}-p{i}"), pb::PartyKind::Group)),
            ..Default::default()
        })
        .await
        .expect("append");
    }
}

async fn whole_log(s: &TestServer) -> Vec<pb::EventEnvelope> {
    s.events()
        .await
        .read_all(pb::ReadAllRequest {
            max_count: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_subscribers_see_exact_ordered_sequences() {
    let s = TestServer::start().await;
    // Some history first, so that one subscriber starts mid-log and all of them catch up.
    append_parties(&s, 99, 20).await;
    let subs = vec![
        (pb::SubscribeRequest::default(), "all from 0"),
        (
            pb::SubscribeRequest {
                stream_prefixes: vec!["party-w3-".into(), "party-w5-".into()],
                ..Default::default()
            },
            "two writers' streams",
        ),
        (
            pb::SubscribeRequest {
                from_position: 13,
                ..Default::default()
            },
            "from the middle",
        ),
        (
            pb::SubscribeRequest {
                event_types: vec!["PartyRegistered".into()],
                stream_prefixes: vec!["party-w1-".into()],
                checkpoint_every_events: 7,
                ..Default::default()
            },
            "one writer, by type",
        ),
    ];
    let per_writer = 25;
    let total = 20 + 8 * per_writer;
    let mut readers = Vec::new();
    for (req, name) in subs.clone() {
        let mut sub = subscribe(&s, req.clone()).await;
        let expected_count = match name {
            "all from 0" => total,
            "two writers' streams" => 2 * per_writer,
            "from the middle" => total - 13,
            _ => per_writer,
        };
        readers.push(tokio::spawn(async move {
            (name, take_events(&mut sub, expected_count).await)
        }));
    }
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let addr = s.addr.clone();
            tokio::spawn(async move {
                let mut c = pb::ledger_client::LedgerClient::connect(addr)
                    .await
                    .unwrap();
                for i in 0..per_writer {
                    c.register_party(pb::RegisterPartyRequest {
                        command: Some(party(&format!("w{w}-p{i}"), pb::PartyKind::Group)),
                        ..Default::default()
                    })
                    .await
                    .expect("append");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let log = whole_log(&s).await;
    assert_eq!(log.len(), total);
    for ((req, name), r) in subs.into_iter().zip(readers) {
        let (got_name, (events, other)) = r.await.unwrap();
        assert_eq!(name, got_name);
        let expected: Vec<u64> = log
            .iter()
            .filter(|e| e.position >= req.from_position)
            .filter(|e| {
                req.stream_prefixes.is_empty()
                    || req.stream_prefixes.iter().any(|p| e.stream.starts_with(p))
            })
            .filter(|e| req.event_types.is_empty() || req.event_types.contains(&e.event_type))
            .map(|e| e.position)
            .collect();
        let got: Vec<u64> = events.iter().map(|e| e.position).collect();
        assert_eq!(got, expected, "subscriber {name}: exact ordered sequence");
        for e in &events {
            assert_eq!(
                e.hash, log[e.position as usize].hash,
                "{name}: same bytes as the log"
            );
        }
        assert!(
            other
                .iter()
                .filter(|k| matches!(k, Kind::CaughtUp(_)))
                .count()
                <= 1,
            "{name}: at most one caught-up marker"
        );
        if name == "one writer, by type" {
            assert!(
                other.iter().any(|k| matches!(k, Kind::Checkpoint(_))),
                "a filtered subscriber gets checkpoints"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_marker_checkpoints_without_matches_and_heartbeats() {
    let s = TestServer::start().await;
    append_parties(&s, 0, 10).await;
    let mut sub = subscribe(
        &s,
        pb::SubscribeRequest {
            stream_prefixes: vec!["claim-".into()],
            heartbeat_ms: 200,
            ..Default::default()
        },
    )
    .await;
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.message())
            .await
            .expect("message in time")
            .unwrap()
            .unwrap();
        kinds.push(msg.kind.unwrap());
    }
    // Nothing matches: caught up at 10, a checkpoint covering the 10 skipped events, then heartbeats.
    assert!(
        matches!(kinds[0], Kind::CaughtUp(pb::CaughtUp { next_position: 10 })),
        "{kinds:?}"
    );
    assert!(
        matches!(
            kinds[1],
            Kind::Checkpoint(pb::Checkpoint { next_position: 10 })
        ),
        "{kinds:?}"
    );
    assert!(
        matches!(
            kinds[2],
            Kind::Heartbeat(pb::Heartbeat {
                next_position: 10,
                ..
            })
        ),
        "{kinds:?}"
    );

    let err = s
        .events()
        .await
        .subscribe(pb::SubscribeRequest {
            heartbeat_ms: 5,
            stream_prefixes: vec![String::new()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_checkpoint_or_event_misses_and_repeats_nothing() {
    let s = TestServer::start().await;
    append_parties(&s, 0, 60).await;
    let req = |from: u64| pb::SubscribeRequest {
        from_position: from,
        stream_prefixes: vec!["party-w0-p1".into()],
        checkpoint_every_events: 5,
        ..Default::default()
    };
    // Expected: parties p1, p10..p19 (prefix "party-w0-p1").
    let expected: Vec<u64> = whole_log(&s)
        .await
        .iter()
        .filter(|e| e.stream.starts_with("party-w0-p1"))
        .map(|e| e.position)
        .collect();
    assert_eq!(expected.len(), 11);
    // Stop at every checkpoint in turn and resume from it; the union must be exact each time.
    let mut first = subscribe(&s, req(0)).await;
    let mut checkpoints = Vec::new();
    let mut before = Vec::new();
    loop {
        match first.message().await.unwrap().unwrap().kind.unwrap() {
            Kind::Event(e) => before.push((e.position, checkpoints.len())),
            Kind::Checkpoint(c) => checkpoints.push(c.next_position),
            Kind::CaughtUp(_) => break,
            Kind::Heartbeat(_) => {}
        }
    }
    drop(first);
    assert!(checkpoints.len() >= 10, "{checkpoints:?}");
    for (k, cp) in checkpoints.iter().enumerate() {
        let mut got: Vec<u64> = before
            .iter()
            .filter(|(_, c)| *c <= k)
            .map(|(p, _)| *p)
            .collect();
        let remaining = expected.len() - got.len();
        let mut resumed = subscribe(&s, req(*cp)).await;
        let (events, _) = take_events(&mut resumed, remaining).await;
        got.extend(events.iter().map(|e| e.position));
        assert_eq!(got, expected, "resume from checkpoint {cp}");
    }
    // Resume from the position after an event.
    let mut resumed = subscribe(&s, req(expected[4] + 1)).await;
    let (events, _) = take_events(&mut resumed, expected.len() - 5).await;
    let got: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(got, expected[5..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_reads_blocks_no_writer_and_later_gets_everything() {
    let s = TestServer::start().await;
    // Subscribed, never polled while 1200 events (~1.5 MB of envelopes, far more than the
    // subscription and HTTP/2 buffers hold) are appended.
    let mut stalled = subscribe(&s, pb::SubscribeRequest::default()).await;
    let appenders: Vec<_> = (0..4)
        .map(|w| {
            let addr = s.addr.clone();
            tokio::spawn(async move {
                let mut c = pb::ledger_client::LedgerClient::connect(addr)
                    .await
                    .unwrap();
                for i in 0..300 {
                    c.register_party(pb::RegisterPartyRequest {
                        command: Some(pb::RegisterPartyCommand {
                            description: "x".repeat(600),
                            ..party(&format!("s{w}-{i}"), pb::PartyKind::Group)
                        }),
                        ..Default::default()
                    })
                    .await
                    .expect("append while a subscriber stalls");
                }
            })
        })
        .collect();
    for a in appenders {
        tokio::time::timeout(Duration::from_secs(60), a)
            .await
            .expect("writers finished although a subscriber never read")
            .unwrap();
    }
    let (events, _) = take_events(&mut stalled, 1200).await;
    let got: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(got, (0..1200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_subscriptions_with_unavailable() {
    let s = TestServer::start().await;
    append_parties(&s, 0, 3).await;
    let mut sub = subscribe(&s, pb::SubscribeRequest::default()).await;
    let (events, _) = take_events(&mut sub, 3).await;
    assert_eq!(events.len(), 3);
    let stopping = tokio::spawn(s.stop());
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.message())
            .await
            .expect("the stream ends at shutdown")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("graceful shutdown finishes with a subscriber connected")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_events_as_lines_or_ndjson() {
    let s = TestServer::start().await;
    append_parties(&s, 0, 5).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("tail")
            .args(["--server", &s.addr])
            .args(args)
            .output()
            .expect("run tail");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let ndjson = run(&["--from", "start", "--json", "--limit", "5"]);
    let lines: Vec<serde_json::Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let positions: Vec<u64> = lines
        .iter()
        .map(|v| v["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![0, 1, 2, 3, 4]);
    assert_eq!(lines[2]["stream"], "party-w0-p2");
    assert_eq!(lines[2]["payload"]["party_id"], "w0-p2");
    let log = whole_log(&s).await;
    assert_eq!(lines[4]["hash"], log[4].hash);
    assert_eq!(lines[4]["idempotency_key"], "");
    // A write made under an idempotency key shows it on its (first) event.
    s.ledger()
        .await
        .register_party(pb::RegisterPartyRequest {
            options: Some(pb::WriteOptions {
                idempotency_key: "tail-key-1".into(),
                ..Default::default()
            }),
            command: Some(party("keyed", pb::PartyKind::Group)),
            ..Default::default()
        })
        .await
        .expect("keyed write");
    let keyed = run(&["--from", "5", "--json", "--limit", "1"]);
    let keyed: serde_json::Value = serde_json::from_str(keyed.trim()).expect("JSON");
    assert_eq!(keyed["idempotency_key"], "tail-key-1");

    let text = run(&[
        "--from",
        "3",
        "--stream-prefix",
        "party-w0-p4",
        "--limit",
        "1",
    ]);
    assert!(text.contains("party-w0-p4@0"), "{text}");
    assert!(text.contains("PartyRegistered"), "{text}");
    assert_eq!(text.lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_beyond_the_end_is_out_of_range() {
    let s = TestServer::start().await;
    append_parties(&s, 0, 3).await;
    let err = s
        .events()
        .await
        .subscribe(pb::SubscribeRequest {
            from_position: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    // Exactly the end is fine: caught up at once.
    let mut sub = subscribe(
        &s,
        pb::SubscribeRequest {
            from_position: 3,
            ..Default::default()
        },
    )
    .await;
    let first = sub.message().await.unwrap().unwrap().kind.unwrap();
    assert!(
        matches!(first, Kind::CaughtUp(pb::CaughtUp { next_position: 3 })),
        "{first:?}"
    );
}
