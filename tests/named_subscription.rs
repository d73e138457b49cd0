//! Named durable subscriptions: the server stores a consumer's acknowledged position, which survives
//! a restart (graceful or SIGKILL); delivery resumes there, so it is at-least-once: whatever was
//! delivered but not acknowledged comes again, nothing is skipped.
mod common;

use std::time::Duration;

use claims_ledger::grpc::pb;
use claims_ledger::grpc::pb::subscribe_response::Kind;
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
