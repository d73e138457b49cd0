//! `claimsledger.v1.Events`: reads of the log itself (head, whole log, one stream) and subscriptions
//! (`Subscribe`, and the cursors of named ones), with typed payloads and the exact stored bytes so
//! that clients can recompute every hash. The subscription logic itself is `app::subscribe`; the
//! caller's identity (from the auth layer, absent without tokens) decides who owns a named one.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::envelope_pb;
use super::pb;
use crate::app::{App, AppError, Start, SubscribeOptions, SubscriptionItem, SubscriptionState};
use crate::config::Identity;
use claims_ledger_log::RecordedEvent;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub struct EventsService {
    app: App,
    envelopes: Arc<EnvelopeCache>,
}

impl EventsService {
    pub fn new(app: App) -> Self {
        EventsService {
            app,
            envelopes: Arc::default(),
        }
    }
}

fn backwards(direction: i32) -> Result<bool, AppError> {
    match pb::Direction::try_from(direction) {
        Ok(pb::Direction::Backwards) => Ok(true),
        Ok(_) => Ok(false),
        Err(_) => Err(AppError::invalid(
            "direction",
            format!("unknown direction {direction}"),
        )),
    }
}

fn envelopes(events: Vec<RecordedEvent>) -> Result<Vec<pb::EventEnvelope>, AppError> {
    events.iter().map(envelope_pb).collect()
}

/// Envelopes of recent events, converted once and shared by every subscriber that sends them.
#[derive(Default)]
pub struct EnvelopeCache {
    entries: Mutex<HashMap<u64, Arc<pb::EventEnvelope>>>,
}

/// Envelopes kept; older positions are converted again when a lagging subscriber reaches them.
const ENVELOPES: u64 = 4096;

impl EnvelopeCache {
    /// The envelope of `rec`; `head` is the log's event count. Only events near the head are shared
    /// (that is where live subscribers are); a catch-up far behind converts its own.
    fn envelope(&self, rec: &RecordedEvent, head: u64) -> Result<pb::EventEnvelope, AppError> {
        if rec.position + ENVELOPES < head {
            return envelope_pb(rec);
        }
        let hit = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rec.position)
            .cloned();
        if let Some(e) = hit {
            return Ok((*e).clone());
        }
        let envelope = Arc::new(envelope_pb(rec)?);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(rec.position, envelope.clone());
        if entries.len() as u64 > 2 * ENVELOPES {
            let keep_from = rec.position.saturating_sub(ENVELOPES);
            entries.retain(|p, _| *p >= keep_from);
        }
        Ok((*envelope).clone())
    }
}

fn subscription_message(
    cache: &EnvelopeCache,
    head: u64,
    item: SubscriptionItem,
) -> Result<pb::SubscribeResponse, AppError> {
    use pb::subscribe_response::Kind;
    let kind = match item {
        SubscriptionItem::Event(rec) => Kind::Event(cache.envelope(&rec, head)?),
        SubscriptionItem::Checkpoint(p) => Kind::Checkpoint(pb::Checkpoint { next_position: p }),
        SubscriptionItem::CaughtUp(p) => Kind::CaughtUp(pb::CaughtUp { next_position: p }),
        SubscriptionItem::Heartbeat(p) => Kind::Heartbeat(pb::Heartbeat {
            next_position: p,
            at: Some(super::convert::ts(&chrono::Utc::now())),
        }),
    };
    Ok(pb::SubscribeResponse { kind: Some(kind) })
}

fn subscription_pb(name: String, s: SubscriptionState) -> pb::GetSubscriptionResponse {
    pb::GetSubscriptionResponse {
        subscription_name: name,
        acknowledged_position: s.acknowledged,
        lag: s.lag,
        owner: s.owner.unwrap_or_default(),
    }
}

/// The authenticated caller; `None` without tokens.
fn caller<T>(req: &Request<T>) -> Option<Identity> {
    req.extensions().get::<Identity>().cloned()
}

fn or_default(v: u32, default: u32) -> u32 {
    if v == 0 {
        default
    } else {
        v
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    type SubscribeStream = SubscribeStream;

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let acknowledged_position = self
            .app
            .ack(caller.as_ref(), &r.subscription_name, r.position)
            .await?;
        Ok(Response::new(pb::AckResponse {
            acknowledged_position,
        }))
    }

    async fn get_subscription(
        &self,
        req: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        let r = req.into_inner();
        let s = self.app.subscription(&r.subscription_name)?;
        Ok(Response::new(subscription_pb(r.subscription_name, s)))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let r = req.into_inner();
        let size = super::page_size("page_size", r.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let (page, event_count) = self.app.list_subscriptions(size, &r.page_token)?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: page
                .items
                .into_iter()
                .map(|(name, s)| subscription_pb(name, s))
                .collect(),
            next_page_token: page.next_page_token,
            event_count,
        }))
    }

    async fn delete_subscription(
        &self,
        req: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let existed = self
            .app
            .delete_subscription(caller.as_ref(), &r.subscription_name)
            .await?;
        Ok(Response::new(pb::DeleteSubscriptionResponse { existed }))
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller(&req);
        let r = req.into_inner();
        let options = SubscribeOptions {
            caller,
            start: if r.from_end {
                Start::End
            } else {
                Start::Position(r.from_position)
            },
            name: (!r.subscription_name.is_empty()).then_some(r.subscription_name),
            stream_prefixes: r.stream_prefixes,
            event_types: r.event_types,
            checkpoint_every_events: u64::from(or_default(r.checkpoint_every_events, 1000)),
            checkpoint_every: Duration::from_millis(u64::from(or_default(
                r.checkpoint_every_ms,
                5000,
            ))),
            heartbeat: Duration::from_millis(u64::from(or_default(r.heartbeat_ms, 10_000))),
        };
        let rx = self.app.subscribe(options)?;
        let cache = self.envelopes.clone();
        let app = self.app.clone();
        let stream = ReceiverStream::new(rx).map(move |item| {
            let head = app.log().durable_count();
            item.and_then(|i| subscription_message(&cache, head, i))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_head(
        &self,
        _req: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::GetHeadResponse>, Status> {
        let head = self.app.log().head();
        Ok(Response::new(pb::GetHeadResponse {
            event_count: head.count,
            position: head.count.saturating_sub(1),
            hash: hex::encode(head.hash),
        }))
    }

    async fn read_all(
        &self,
        req: Request<pb::ReadAllRequest>,
    ) -> Result<Response<pb::ReadAllResponse>, Status> {
        let r = req.into_inner();
        let max = super::page_size("max_count", r.max_count, DEFAULT_PAGE, MAX_PAGE)?;
        let back = backwards(r.direction)?;
        let log = self.app.log();
        let count = log.durable_count();
        let from = if r.from_end {
            count.saturating_sub(1)
        } else {
            r.from_position
        };
        let events = log.read_all(from, back, max).map_err(AppError::from)?;
        let next_position = match (back, events.last()) {
            (false, Some(e)) if e.position + 1 < count => Some(e.position + 1),
            (true, Some(e)) if e.position > 0 => Some(e.position - 1),
            _ => None,
        };
        Ok(Response::new(pb::ReadAllResponse {
            events: envelopes(events)?,
            next_position,
            event_count: count,
        }))
    }

    async fn read_stream(
        &self,
        req: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        let r = req.into_inner();
        if r.stream.is_empty() {
            return Err(AppError::invalid("stream", "is required").into());
        }
        let max = super::page_size("max_count", r.max_count, DEFAULT_PAGE, MAX_PAGE)?;
        let back = backwards(r.direction)?;
        let log = self.app.log();
        let Some(last) = log.stream_revision(&r.stream).map_err(AppError::from)? else {
            return Err(AppError::NotFound(format!("stream {:?}", r.stream)).into());
        };
        let from = if r.from_end { last } else { r.from_revision };
        let events = log
            .read_stream(&r.stream, from, back, max)
            .map_err(AppError::from)?;
        let next_revision = match (back, events.last()) {
            (false, Some(e)) if e.stream_revision < last => Some(e.stream_revision + 1),
            (true, Some(e)) if e.stream_revision > 0 => Some(e.stream_revision - 1),
            _ => None,
        };
        Ok(Response::new(pb::ReadStreamResponse {
            events: envelopes(events)?,
            next_revision,
            last_revision: last,
        }))
    }
}
