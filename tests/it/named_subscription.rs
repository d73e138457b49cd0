//! Named durable subscriptions: the server stores a consumer's acknowledged position, which survives
//! a restart (graceful or SIGKILL); delivery resumes there, so it is at-least-once: whatever was
//! delivered but not acknowledged comes again, nothing is skipped.
use crate::common;

use std::time::Duration;

use claims_ledger_proto as pb;
use claims_ledger_proto::subscribe_response::Kind;
use common::*;
use tonic::transport::Channel;
use tonic::Code;

async fn events_client(addr: &str) -> pb::events_client::EventsClient<Channel> {
    pb::events_client::EventsClient::connect(addr.to_string())
        .await
        .expect("connect")
}

async fn append(addr: &str, ids: std::ops::Range<usize>) {
    let mut c = pb::ledger_client::LedgerClient::connect(addr.to_string())
        .await
        .unwrap();
    for i in ids {
        c.register_party(pb::RegisterPartyRequest {
            command: Some(party(&format!("p{i}"), pb::PartyKind::Group)),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// Subscribes by name (asking for position 0 if it has no stored position) and returns the
/// positions of the first `n` events delivered.
async fn first_events(addr: &str, name: &str, n: usize) -> Vec<u64> {
    let mut sub = events_client(addr)
        .await
        .subscribe(pb::SubscribeRequest {
            subscription_name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(20), sub.message())
            .await
            .expect("delivery")
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(e)) = msg.kind {
            got.push(e.position);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_positions_survive_restarts_and_delivery_is_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ChildServer::start(&data, &[]);
    append(&server.addr, 0..20).await;

    // The consumer processes events 0..10 but acknowledges only up to 6 before the server dies.
    assert_eq!(
        first_events(&server.addr, "indexer", 10).await,
        (0..10).collect::<Vec<_>>()
    );
    let mut ev = events_client(&server.addr).await;
    let ack = |position: u64| pb::AckRequest {
        subscription_name: "indexer".into(),
        position,
    };
    assert_eq!(
        ev.ack(ack(6))
            .await
            .unwrap()
            .into_inner()
            .acknowledged_position,
        6
    );
    // Acknowledgements only move forward.
    assert_eq!(
        ev.ack(ack(3))
            .await
            .unwrap()
            .into_inner()
            .acknowledged_position,
        6
    );
    let err = ev.ack(ack(1000)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = ev
        .ack(pb::AckRequest {
            subscription_name: "no spaces".into(),
            position: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.kill9();

    let mut server = ChildServer::start(&data, &[]);
    let mut ev = events_client(&server.addr).await;
    let state = ev
        .get_subscription(pb::GetSubscriptionRequest {
            subscription_name: "indexer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((state.acknowledged_position, state.lag), (6, 14));
    // Redelivery from the acknowledged position: 6..10 come again (at least once), nothing skipped.
    assert_eq!(
        first_events(&server.addr, "indexer", 14).await,
        (6..20).collect::<Vec<_>>()
    );
    ev.ack(ack(20)).await.unwrap();
    assert!(server.terminate(), "clean shutdown");

    let server = ChildServer::start(&data, &[]);
    append(&server.addr, 20..23).await;
    assert_eq!(
        first_events(&server.addr, "indexer", 3).await,
        vec![20, 21, 22],
        "after a graceful restart too"
    );
    let mut ev = events_client(&server.addr).await;
    let gone = ev
        .delete_subscription(pb::DeleteSubscriptionRequest {
            subscription_name: "indexer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.existed);
    let err = ev
        .get_subscription(pb::GetSubscriptionRequest {
            subscription_name: "indexer".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Without a stored position, the request's own start applies again.
    assert_eq!(first_events(&server.addr, "indexer", 2).await, vec![0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_listed_in_name_order_with_their_lag() {
    let s = TestServer::start().await;
    append(&s.addr, 0..10).await;
    let head = s.head().await.event_count;
    let mut ev = events_client(&s.addr).await;
    // Acknowledged out of name order; "indexer" twice (the later, higher position stays).
    let acks = [
        ("search-indexer", 4),
        ("alerts", 10),
        ("dashboard.v2", 0),
        ("warehouse_sync", 7),
        ("search-indexer", 9),
    ];
    for (name, position) in acks {
        ev.ack(pb::AckRequest {
            subscription_name: name.into(),
            position,
        })
        .await
        .expect("ack");
    }
    let want: Vec<(String, u64, u64)> = [
        ("alerts", 10),
        ("dashboard.v2", 0),
        ("search-indexer", 9),
        ("warehouse_sync", 7),
    ]
    .iter()
    .map(|(n, p)| (n.to_string(), *p, head - p))
    .collect();

    // Two per page: two full pages, then an empty token.
    let mut got = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = ev
            .list_subscriptions(pb::ListSubscriptionsRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert_eq!(page.event_count, head);
        assert!(page.subscriptions.len() <= 2);
        got.extend(
            page.subscriptions
                .into_iter()
                .map(|s| (s.subscription_name, s.acknowledged_position, s.lag)),
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(got, want);
    assert!((2..=3).contains(&pages), "{pages} pages");

    // A deleted one is gone; the default page holds the rest.
    ev.delete_subscription(pb::DeleteSubscriptionRequest {
        subscription_name: "dashboard.v2".into(),
    })
    .await
    .expect("delete");
    let all = ev
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = all
        .subscriptions
        .iter()
        .map(|s| s.subscription_name.as_str())
        .collect();
    assert_eq!(names, ["alerts", "search-indexer", "warehouse_sync"]);
    assert!(all.next_page_token.is_empty());

    // Tokens this server did not issue, and pages too large, are refused by field.
    for (req, field) in [
        (
            pb::ListSubscriptionsRequest {
                page_token: "not hex".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListSubscriptionsRequest {
                page_token: hex::encode("bad name!"),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListSubscriptionsRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
    ] {
        let err = ev.list_subscriptions(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(field_violations(&err), vec![field.to_string()]);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriptions_command_lists_them_for_people_and_scripts() {
    let s = TestServer::start().await;
    append(&s.addr, 0..6).await;
    let mut ev = events_client(&s.addr).await;
    for (name, position) in [("zulu", 6), ("alpha", 2)] {
        ev.ack(pb::AckRequest {
            subscription_name: name.into(),
            position,
        })
        .await
        .expect("ack");
    }
    let run = |json: bool| {
        let addr = s.addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(bin());
            cmd.args(["subscriptions", "--server", &addr]);
            if json {
                cmd.arg("--json");
            }
            let out = cmd.output().expect("run");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).expect("UTF-8")
        })
    };
    let lines: Vec<serde_json::Value> = run(true)
        .await
        .expect("task")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let got: Vec<(String, u64, u64)> = lines
        .iter()
        .map(|v| {
            (
                v["subscription"].as_str().expect("name").to_string(),
                v["acknowledged_position"].as_u64().expect("position"),
                v["lag"].as_u64().expect("lag"),
            )
        })
        .collect();
    assert_eq!(got, [("alpha".into(), 2, 4), ("zulu".into(), 6, 0)]);
    let text = run(false).await.expect("task");
    assert!(
        text.contains("2 named subscriber(s); the furthest behind lags 4 event(s)"),
        "{text}"
    );
    s.stop().await;
}
