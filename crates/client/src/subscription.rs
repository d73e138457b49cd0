//! A subscription that survives disconnects. It remembers the resume point: the position before
//! which every event has been delivered to the caller or skipped by the filters. Events move it
//! past themselves; checkpoints, heartbeats and the caught-up mark move it over filtered-out
//! stretches. When the stream breaks (the server restarts, the connection drops, the server ends it
//! with `UNAVAILABLE` at shutdown, or stays silent for three heartbeat intervals) it subscribes
//! again from exactly that point, with the same filters, after a backoff. Positions are gap-free and a subscription delivers in position order,
//! so dropping anything below the resume point removes the only repeats there can be (a named
//! subscription restarts at its acknowledged position, which may lie behind). The caller gets every
//! matching event once, in order.
//!
//! To resume in another process, save [`Subscription::resume_position`] with the work it covers
//! and start again with `from_position` set to it; or name the subscription and
//! [`ack`](Subscription::ack) — the server then starts there.
//!
//! ```no_run
//! # async fn demo() -> Result<(), claims_ledger_client::Error> {
//! use claims_ledger_client::{pb, Connection, Item};
//!
//! let conn = Connection::connect("http://127.0.0.1:50051").await?;
//! let mut sub = conn
//!     .events()
//!     .subscribe(pb::SubscribeRequest {
//!         subscription_name: "mailer".into(),
//!         event_types: vec!["ClaimAsserted".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//! loop {
//!     match sub.next().await? {
//!         Item::Event(e) => println!("{} {}", e.position, e.stream),
//!         Item::CaughtUp { .. } => println!("live from here"),
//!         // Progress over events the filter skipped: a cheap moment to acknowledge.
//!         Item::Checkpoint { .. } => {
//!             sub.ack().await?;
//!         }
//!     }
//! }
//! # }
//! ```
use std::time::Duration;

use tonic::{Code, Status};

use crate::connection::Transport;
use crate::events::Events;
use crate::pb;
use crate::pb::events_client::EventsClient;
use crate::pb::subscribe_response::Kind;
use crate::retry::RetryPolicy;
use crate::Error;

/// The server's heartbeat interval when the request leaves `heartbeat_ms` at 0 (events.proto).
const DEFAULT_HEARTBEAT_MS: u32 = 10_000;

/// What a subscription delivers. Heartbeats only move the resume point and are not passed on.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The next matching event (boxed: an envelope is large, the other items are not).
    Event(Box<pb::EventEnvelope>),
    /// Everything before `next_position` has been scanned: persist it to resume cheaply.
    Checkpoint { next_position: u64 },
    /// The subscription reached the end of the log; what follows is live. Sent once, even if a
    /// reconnect reaches the end again.
    CaughtUp { next_position: u64 },
}

/// A resumable `Events.Subscribe`; made by [`Events::subscribe`].
pub struct Subscription {
    client: EventsClient<Transport>,
    events: Events,
    retry: RetryPolicy,
    /// Filters, name and checkpoint settings; the start is replaced at every (re)subscribe.
    request: pb::SubscribeRequest,
    next_position: u64,
    stream: Option<tonic::Streaming<pb::SubscribeResponse>>,
    caught_up_sent: bool,
    /// Consecutive breaks without a message in between; bounded by the retry policy.
    failures: u32,
    reconnects: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.request.subscription_name)
            .field("next_position", &self.next_position)
            .field("connected", &self.stream.is_some())
            .field("reconnects", &self.reconnects)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) async fn start(
        client: EventsClient<Transport>,
        retry: RetryPolicy,
        events: &Events,
        request: pb::SubscribeRequest,
    ) -> Result<Subscription, Error> {
        let name = request.subscription_name.clone();
        // Where the server will start, as a position: its acknowledged one for a known name, else
        // the request's. A later reconnect asks for this position explicitly, never for "the end".
        let acked = if name.is_empty() {
            None
        } else {
            match events.get_subscription(&name).await {
                Ok(s) => Some(s.acknowledged_position),
                Err(e) if e.code() == Some(Code::NotFound) => None,
                Err(e) => return Err(e),
            }
        };
        let next_position = match acked {
            Some(p) => p,
            None if request.from_end => events.get_head().await?.event_count,
            None => request.from_position,
        };
        let mut sub = Subscription {
            client,
            events: events.clone(),
            retry,
            request,
            next_position,
            stream: None,
            caught_up_sent: false,
            failures: 0,
            reconnects: 0,
        };
        // Opened now so that a bad request (filters, a position past the end) fails here.
        let stream = sub.retry.run(|| sub.open_once()).await?;
        sub.stream = Some(stream);
        Ok(sub)
    }

    /// The resume point: every event before it has been delivered or filtered out.
    pub fn resume_position(&self) -> u64 {
        self.next_position
    }

    /// How many times the subscription was opened again after a break.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The subscription's name, empty if it has none.
    pub fn name(&self) -> &str {
        &self.request.subscription_name
    }

    /// Acknowledges everything delivered so far (the resume point) for a named subscription, so
    /// that the server starts there next time. Returns the stored position.
    pub async fn ack(&self) -> Result<u64, Error> {
        if self.request.subscription_name.is_empty() {
            return Err(Error::NotNamed);
        }
        self.events
            .ack(&self.request.subscription_name, self.next_position)
            .await
    }

    /// The next item. A break in the stream is repaired here: the subscription is opened again
    /// from the resume point, up to the retry policy's attempts in a row without a message. If it
    /// cannot be, the error is returned and the subscription stays usable: the next call tries
    /// again from the same point. A permanent error (e.g. `OUT_OF_RANGE` after the server's log
    /// was replaced by a shorter one) is returned as is.
    pub async fn next(&mut self) -> Result<Item, Error> {
        loop {
            if self.stream.is_none() {
                match self.open_once().await {
                    Ok(s) => self.stream = Some(s),
                    Err(status) => {
                        self.broke(status).await?;
                        continue;
                    }
                }
            }
            let idle = self.idle_limit();
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let message = match tokio::time::timeout(idle, stream.message()).await {
                // A connection that died without a word (a peer gone from the network) is
                // noticed by the missing heartbeats, and treated like any other break.
                Err(_) => {
                    self.stream = None;
                    self.broke(Status::unavailable(format!(
                        "nothing from the server for {} ms, not even a heartbeat",
                        idle.as_millis()
                    )))
                    .await?;
                    continue;
                }
                Ok(Ok(Some(m))) => m,
                // Subscribe never ends by itself: an end is a break like any other.
                Ok(Ok(None)) => {
                    self.stream = None;
                    self.broke(Status::unavailable("the server ended the subscription"))
                        .await?;
                    continue;
                }
                Ok(Err(status)) => {
                    self.stream = None;
                    self.broke(status).await?;
                    continue;
                }
            };
            self.failures = 0;
            if let Some(item) = self.take(message) {
                return Ok(item);
            }
        }
    }

    /// How long the stream may stay silent: three heartbeat intervals. The server sends a
    /// heartbeat after `heartbeat_ms` (default 10 s) without any other message.
    fn idle_limit(&self) -> Duration {
        let heartbeat = match self.request.heartbeat_ms {
            0 => DEFAULT_HEARTBEAT_MS,
            ms => ms,
        };
        Duration::from_millis(u64::from(heartbeat) * 3)
    }

    /// Applies one message to the resume point; what to pass on, if anything.
    fn take(&mut self, message: pb::SubscribeResponse) -> Option<Item> {
        match message.kind? {
            Kind::Event(e) => {
                // Below the resume point: delivered before a break (a named subscription restarts
                // at its acknowledged position). Exactly once means not again.
                if e.position < self.next_position {
                    return None;
                }
                self.next_position = e.position + 1;
                Some(Item::Event(Box::new(e)))
            }
            Kind::Checkpoint(c) => {
                if c.next_position < self.next_position {
                    return None;
                }
                self.next_position = c.next_position;
                Some(Item::Checkpoint {
                    next_position: c.next_position,
                })
            }
            Kind::CaughtUp(c) => {
                self.next_position = self.next_position.max(c.next_position);
                if self.caught_up_sent {
                    return None;
                }
                self.caught_up_sent = true;
                Some(Item::CaughtUp {
                    next_position: self.next_position,
                })
            }
            Kind::Heartbeat(h) => {
                self.next_position = self.next_position.max(h.next_position);
                None
            }
        }
    }

    /// Counts a break; waits before the next attempt, or gives up with the status.
    async fn broke(&mut self, status: Status) -> Result<(), Error> {
        if !self.retry.should_retry(&status) {
            return Err(Error::rpc(status, self.failures + 1));
        }
        self.failures += 1;
        if self.failures >= self.retry.max_attempts {
            let attempts = std::mem::take(&mut self.failures);
            return Err(Error::rpc(status, attempts));
        }
        tokio::time::sleep(self.retry.backoff(self.failures)).await;
        self.reconnects += 1;
        Ok(())
    }

    /// One `Subscribe` call from the resume point.
    async fn open_once(&self) -> Result<tonic::Streaming<pb::SubscribeResponse>, Status> {
        let request = pb::SubscribeRequest {
            from_position: self.next_position,
            from_end: false,
            ..self.request.clone()
        };
        let mut client = self.client.clone();
        Ok(client.subscribe(request).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub_at(next_position: u64) -> Subscription {
        // A client that is never called: `take` is pure bookkeeping.
        let conn_transport: Transport = tower::util::BoxCloneSyncService::new(tower::service_fn(
            |_req: tonic::codegen::http::Request<tonic::body::Body>| async {
                Err::<tonic::codegen::http::Response<tonic::body::Body>, _>(Box::<
                    dyn std::error::Error + Send + Sync,
                >::from(
                    "unused"
                ))
            },
        ));
        let retry = RetryPolicy::default();
        Subscription {
            client: EventsClient::new(conn_transport.clone()),
            events: Events::new(conn_transport, retry.clone()),
            retry,
            request: pb::SubscribeRequest::default(),
            next_position,
            stream: None,
            caught_up_sent: false,
            failures: 0,
            reconnects: 0,
        }
    }

    fn event(position: u64) -> pb::SubscribeResponse {
        pb::SubscribeResponse {
            kind: Some(Kind::Event(pb::EventEnvelope {
                position,
                ..Default::default()
            })),
        }
    }

    fn checkpoint(next_position: u64) -> pb::SubscribeResponse {
        pb::SubscribeResponse {
            kind: Some(Kind::Checkpoint(pb::Checkpoint { next_position })),
        }
    }

    fn caught_up(next_position: u64) -> pb::SubscribeResponse {
        pb::SubscribeResponse {
            kind: Some(Kind::CaughtUp(pb::CaughtUp { next_position })),
        }
    }

    fn positions(sub: &mut Subscription, messages: Vec<pb::SubscribeResponse>) -> Vec<u64> {
        messages
            .into_iter()
            .filter_map(|m| match sub.take(m) {
                Some(Item::Event(e)) => Some(e.position),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn repeats_below_the_resume_point_are_dropped() {
        let mut sub = sub_at(0);
        assert_eq!(
            positions(&mut sub, vec![event(0), event(1), event(3)]),
            [0, 1, 3]
        );
        assert_eq!(sub.resume_position(), 4);
        // A named subscription restarted at its acknowledged position 1.
        assert_eq!(
            positions(&mut sub, vec![event(1), event(3), event(4), event(5)]),
            [4, 5]
        );
        assert_eq!(sub.resume_position(), 6);
    }

    #[test]
    fn checkpoints_move_the_resume_point_forward_only() {
        let mut sub = sub_at(10);
        assert_eq!(sub.take(checkpoint(7)), None, "behind: a replay");
        assert_eq!(sub.resume_position(), 10);
        assert_eq!(
            sub.take(checkpoint(20)),
            Some(Item::Checkpoint { next_position: 20 })
        );
        assert_eq!(sub.resume_position(), 20);
    }

    #[test]
    fn caught_up_is_passed_on_once() {
        let mut sub = sub_at(0);
        assert_eq!(
            sub.take(caught_up(5)),
            Some(Item::CaughtUp { next_position: 5 })
        );
        assert_eq!(sub.take(caught_up(6)), None);
        assert_eq!(sub.resume_position(), 6);
    }

    #[test]
    fn silence_is_tolerated_for_three_heartbeats() {
        let mut sub = sub_at(0);
        assert_eq!(sub.idle_limit(), Duration::from_secs(30));
        sub.request.heartbeat_ms = 200;
        assert_eq!(sub.idle_limit(), Duration::from_millis(600));
    }

    #[tokio::test]
    async fn ack_needs_a_name() {
        let sub = sub_at(0);
        assert!(matches!(sub.ack().await, Err(Error::NotNamed)));
    }

    #[tokio::test]
    async fn breaks_are_bounded_and_refusals_are_not_retried() {
        let mut sub = sub_at(0);
        sub.retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            retry_resource_exhausted: true,
        };
        assert!(sub.broke(Status::unavailable("x")).await.is_ok());
        assert!(sub.broke(Status::unavailable("x")).await.is_ok());
        let err = sub
            .broke(Status::unavailable("x"))
            .await
            .expect_err("third");
        assert_eq!(err.code(), Some(Code::Unavailable));
        // The count starts again: a later `next` may try again.
        assert!(sub.broke(Status::unavailable("x")).await.is_ok());
        let err = sub
            .broke(Status::out_of_range("past the end"))
            .await
            .expect_err("permanent");
        assert_eq!(err.code(), Some(Code::OutOfRange));
    }
}
