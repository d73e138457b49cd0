//! Subscriptions: catch up from any position, then follow the log live, in one loop that always
//! reads durable events by position — from `Recent`, an in-memory copy of the log's tail, when it
//! holds them, else from the log. There is no separate live stream to switch to, so the hand-over
//! from catch-up to live cannot lose, repeat or reorder an event; the durable-count watch only says
//! *when* to read. A slow consumer fills its own bounded channel and then its reader simply pauses: writers
//! never wait for subscribers, and a lagging subscriber is by construction reading from the log.
//!
//! A named subscription belongs to the identity whose first acknowledgement stored it: only that
//! identity, or an admin, may acknowledge it, delete it or resume it by name (the log checks and
//! stores the owner with the cursor, under its limits). Without tokens every caller is one anonymous
//! caller who may act on every subscription, and what it stores has no owner. A subscription stored
//! without an owner (before owners existed, or in open mode) is claimed by the first identity other
//! than an admin that acknowledges it; until then anyone may resume it, and only an admin delete it.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::query::{bad_token, Page};
use super::{App, AppError};
use crate::config::{Identity, Role};
use claims_ledger_domain::FieldViolation;
use claims_ledger_log::{CursorActor, RecordedEvent};

/// Events read from the log per step.
const PAGE: usize = 256;
/// Durable events kept in memory for live subscribers.
const RECENT: usize = 4096;
/// Messages buffered per subscriber before its reader pauses.
const BUFFER: usize = 128;
const MAX_FILTERS: usize = 64;
const MAX_PREFIX: usize = 256;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first position to deliver.
    Position(u64),
    /// After the last durable event.
    End,
}

/// A subscription's start, filters and pacing.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub start: Start,
    /// A named durable subscription: start at its acknowledged position if it has one.
    pub name: Option<String>,
    /// Who subscribes (`None`: nobody authenticates); resuming another identity's named subscription
    /// is refused.
    pub caller: Option<Identity>,
    pub stream_prefixes: Vec<String>,
    pub event_types: Vec<String>,
    pub checkpoint_every_events: u64,
    pub checkpoint_every: Duration,
    pub heartbeat: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            start: Start::Position(0),
            name: None,
            caller: None,
            stream_prefixes: Vec::new(),
            event_types: Vec::new(),
            checkpoint_every_events: 1000,
            checkpoint_every: Duration::from_secs(5),
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// The latest durable events, appended by the commit observer in log order. Live subscribers read
/// them here instead of each decoding the same records from sled; anything older, or not yet here,
/// is read from the log, so this is a cache of the log and never a second source of truth.
#[derive(Default)]
pub(crate) struct Recent {
    events: VecDeque<Arc<RecordedEvent>>,
}

impl Recent {
    pub(crate) fn extend(&mut self, events: &[Arc<RecordedEvent>]) {
        for e in events {
            // Contiguity is what makes a hit trustworthy; a gap (impossible in log order) resets.
            if self
                .events
                .back()
                .is_some_and(|b| b.position + 1 != e.position)
            {
                self.events.clear();
            }
            self.events.push_back(e.clone());
        }
        while self.events.len() > RECENT {
            self.events.pop_front();
        }
    }

    /// Up to `max` events from position `from`, if this cache holds `from`.
    pub(crate) fn read(&self, from: u64, max: usize) -> Option<Vec<Arc<RecordedEvent>>> {
        let first = self.events.front()?.position;
        let skip = usize::try_from(from.checked_sub(first)?).ok()?;
        if skip >= self.events.len() {
            return None;
        }
        Some(self.events.iter().skip(skip).take(max).cloned().collect())
    }
}

/// One message of a subscription. Positions are "next to scan": resume from them.
#[derive(Debug, Clone)]
pub enum SubscriptionItem {
    /// Shared: every subscriber of a live event gets the same allocation.
    Event(Arc<RecordedEvent>),
    Checkpoint(u64),
    CaughtUp(u64),
    Heartbeat(u64),
}

impl SubscribeOptions {
    fn check(&self) -> Result<(), AppError> {
        let mut v = Vec::new();
        let mut fail = |field: &str, description: String| {
            v.push(FieldViolation {
                field: field.to_string(),
                description,
            })
        };
        for (field, items) in [
            ("stream_prefixes", &self.stream_prefixes),
            ("event_types", &self.event_types),
        ] {
            if items.len() > MAX_FILTERS {
                fail(field, format!("at most {MAX_FILTERS} entries"));
            }
            for (i, item) in items.iter().enumerate() {
                if item.is_empty() || item.len() > MAX_PREFIX {
                    fail(
                        &format!("{field}[{i}]"),
                        format!("must be 1..{MAX_PREFIX} bytes"),
                    );
                }
            }
        }
        if let Some(Err(e)) = self.name.as_deref().map(check_name) {
            fail(&e.field, e.description);
        }
        if self.heartbeat < Duration::from_millis(100) {
            fail("heartbeat_ms", "must be at least 100".into());
        }
        if v.is_empty() {
            Ok(())
        } else {
            Err(AppError::Invalid(v))
        }
    }

    fn matches(&self, e: &RecordedEvent) -> bool {
        (self.stream_prefixes.is_empty()
            || self
                .stream_prefixes
                .iter()
                .any(|p| e.stream.starts_with(p.as_str())))
            && (self.event_types.is_empty() || self.event_types.contains(&e.event_type))
    }
}

/// A subscription name: 1..128 of `A-Z a-z 0-9 . _ -`.
/// Whether `name` may name a subscription: 1..128 characters of A-Z a-z 0-9 . _ -
pub fn valid_subscription_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(name: &str) -> Result<(), FieldViolation> {
    if valid_subscription_name(name) {
        Ok(())
    } else {
        Err(FieldViolation {
            field: "subscription_name".into(),
            description: "must be 1..128 characters of A-Z a-z 0-9 . _ -".into(),
        })
    }
}

/// A named subscription's stored position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub acknowledged: u64,
    pub lag: u64,
    /// The identity it belongs to; `None` when stored without one.
    pub owner: Option<String>,
}

/// How `caller` acts on cursors: an identity as itself (an admin on anyone's), and without tokens
/// the one anonymous caller, on every cursor.
fn actor(caller: Option<&Identity>) -> CursorActor<'_> {
    match caller {
        None => CursorActor {
            identity: None,
            privileged: true,
        },
        Some(i) => CursorActor {
            identity: Some(&i.name),
            privileged: i.has(Role::Admin),
        },
    }
}

/// A subscription's outgoing side: where it is, and when it last said something.
struct Outbox {
    tx: mpsc::Sender<Result<SubscriptionItem, AppError>>,
    /// The next position to scan.
    pos: u64,
    /// Events scanned since the last checkpoint.
    scanned: u64,
    last_checkpoint: Instant,
    last_sent: Instant,
    /// This subscription in the metrics registry (live count and lag) until it ends.
    metrics: crate::metrics::SubscriptionMetrics,
}

impl Outbox {
    /// Sends one message; false once the subscriber has gone away.
    async fn send(&mut self, item: SubscriptionItem) -> bool {
        self.last_sent = Instant::now();
        self.tx.send(Ok(item)).await.is_ok()
    }

    async fn checkpoint(&mut self) -> bool {
        self.scanned = 0;
        self.last_checkpoint = Instant::now();
        self.send(SubscriptionItem::Checkpoint(self.pos)).await
    }
}

impl App {
    /// Records that the named subscriber processed everything before `position`, for `caller`, who
    /// must own it (or be an admin) and, for a new name, have room for one more; returns the stored
    /// position (never lower than before).
    pub async fn ack(
        &self,
        caller: Option<&Identity>,
        name: &str,
        position: u64,
    ) -> Result<u64, AppError> {
        check_name(name).map_err(|v| AppError::Invalid(vec![v]))?;
        Ok(self.log.store_cursor(name, position, actor(caller)).await?)
    }

    /// The named subscriber's acknowledged position and lag.
    pub fn subscription(&self, name: &str) -> Result<SubscriptionState, AppError> {
        check_name(name).map_err(|v| AppError::Invalid(vec![v]))?;
        let cursor = self
            .log
            .cursor_entry(name)?
            .ok_or_else(|| AppError::NotFound(format!("subscription {name:?}")))?;
        Ok(SubscriptionState {
            acknowledged: cursor.position,
            lag: self.log.durable_count().saturating_sub(cursor.position),
            owner: cursor.owner,
        })
    }

    /// Named subscribers in name order, with their acknowledged positions and lag, a page at a time,
    /// and the event count the lags are measured against. The token is the hex of the last name of
    /// the previous page.
    pub fn list_subscriptions(
        &self,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Page<(String, SubscriptionState)>, u64), AppError> {
        let after = if page_token.is_empty() {
            None
        } else {
            let name = hex::decode(page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|n| valid_subscription_name(n))
                .ok_or_else(bad_token)?;
            Some(name)
        };
        let durable = self.log.durable_count();
        let mut found = self.log.cursors(after.as_deref(), page_size + 1)?;
        let next_page_token = if found.len() > page_size {
            found.truncate(page_size);
            found
                .last()
                .map(|c| hex::encode(c.name.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let items = found
            .into_iter()
            .map(|c| {
                let state = SubscriptionState {
                    acknowledged: c.position,
                    lag: durable.saturating_sub(c.position),
                    owner: c.owner,
                };
                (c.name, state)
            })
            .collect();
        let page = Page {
            items,
            next_page_token,
        };
        Ok((page, durable))
    }

    /// Forgets a named subscriber's position, for `caller`, who must own it or be an admin; returns
    /// whether it existed.
    pub async fn delete_subscription(
        &self,
        caller: Option<&Identity>,
        name: &str,
    ) -> Result<bool, AppError> {
        check_name(name).map_err(|v| AppError::Invalid(vec![v]))?;
        Ok(self.log.delete_cursor(name, actor(caller)).await?)
    }

    /// Starts a subscription; its messages arrive on the returned channel until the receiver is
    /// dropped, the server shuts down (`AppError::ShuttingDown`), or reading the log fails.
    pub fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<mpsc::Receiver<Result<SubscriptionItem, AppError>>, AppError> {
        let mut options = options;
        options.check()?;
        if let Some(name) = &options.name {
            if let Some(cursor) = self.log.cursor_entry(name)? {
                if !actor(options.caller.as_ref()).may_use(cursor.owner.as_deref()) {
                    return Err(
                        claims_ledger_log::LogError::CursorNotOwned { name: name.clone() }.into(),
                    );
                }
                options.start = Start::Position(cursor.position);
            }
        }
        // A position past the end (a checkpoint from another or a newer copy of the log) would
        // silently skip whatever is appended up to it.
        let count = self.log.durable_count();
        if let Start::Position(p) = options.start {
            if p > count {
                return Err(AppError::OutOfRange(format!(
                    "position {p} is beyond the end of the log ({count} events)"
                )));
            }
        }
        let (tx, rx) = mpsc::channel(BUFFER);
        let app = self.clone();
        tokio::spawn(async move { app.run_subscription(options, tx).await });
        Ok(rx)
    }

    async fn run_subscription(
        self,
        o: SubscribeOptions,
        tx: mpsc::Sender<Result<SubscriptionItem, AppError>>,
    ) {
        let log = self.log();
        let mut durable = log.watch_durable();
        let mut shutdown = self.shutdown.subscribe();
        let pos = match o.start {
            Start::Position(p) => p,
            Start::End => log.durable_count(),
        };
        let mut out = Outbox {
            tx,
            pos,
            scanned: 0,
            last_checkpoint: Instant::now(),
            last_sent: Instant::now(),
            metrics: self.metrics.track_subscription(o.name.as_deref(), pos),
        };
        let mut caught_up = false;
        loop {
            if *shutdown.borrow_and_update() {
                let _ = out.tx.send(Err(AppError::ShuttingDown)).await;
                return;
            }
            // Mark the current count seen before reading it, so no later commit is missed.
            durable.borrow_and_update();
            if out.pos < log.durable_count() {
                let cached = self
                    .recent
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(out.pos, PAGE);
                let page = match cached {
                    Some(page) => page,
                    None => match log.read_all(out.pos, false, PAGE) {
                        Ok(p) => p.into_iter().map(Arc::new).collect(),
                        Err(e) => {
                            let _ = out.tx.send(Err(e.into())).await;
                            return;
                        }
                    },
                };
                for rec in page {
                    out.pos = rec.position + 1;
                    out.metrics.set_position(out.pos);
                    out.scanned += 1;
                    if o.matches(&rec) && !out.send(SubscriptionItem::Event(rec)).await {
                        return;
                    }
                    if (out.scanned >= o.checkpoint_every_events
                        || out.last_checkpoint.elapsed() >= o.checkpoint_every)
                        && !out.checkpoint().await
                    {
                        return;
                    }
                }
                continue;
            }
            if !caught_up {
                caught_up = true;
                if !out.send(SubscriptionItem::CaughtUp(out.pos)).await {
                    return;
                }
            }
            // Idle: report progress over everything scanned since the last checkpoint (which matters
            // when the filter skipped events), so a resume need not rescan them.
            if out.scanned > 0 && !out.checkpoint().await {
                return;
            }
            tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep_until(out.last_sent + o.heartbeat) => {
                    if !out.send(SubscriptionItem::Heartbeat(out.pos)).await {
                        return;
                    }
                }
                _ = out.tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(position: u64) -> Arc<RecordedEvent> {
        let stored = format!(r#"{{"position":{position}}}"#).into_bytes();
        Arc::new(RecordedEvent {
            position,
            prev_hash: [0; 32],
            hash: [0; 32],
            event_id: uuid::Uuid::nil(),
            stream: "s".into(),
            stream_revision: position,
            event_type: "T".into(),
            schema_version: 1,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            recorded_by: "t".into(),
            correlation_id: None,
            causation_id: None,
            idempotency: None,
            payload: serde_json::value::RawValue::from_string("{}".into()).expect("json"),
            stored,
        })
    }

    fn positions(v: Option<Vec<Arc<RecordedEvent>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.position).collect())
    }

    #[test]
    fn recent_events_answer_only_what_they_hold_contiguously() {
        let mut r = Recent::default();
        assert_eq!(positions(r.read(0, 10)), None);
        r.extend(&(5..10).map(rec).collect::<Vec<_>>());
        assert_eq!(
            positions(r.read(4, 10)),
            None,
            "older than the cache: read the log"
        );
        assert_eq!(positions(r.read(7, 10)), Some(vec![7, 8, 9]));
        assert_eq!(positions(r.read(5, 2)), Some(vec![5, 6]));
        assert_eq!(
            positions(r.read(10, 10)),
            None,
            "not yet here: read the log"
        );
        // A gap can only mean a foreign sequence: start over rather than serve it.
        r.extend(&[rec(20)]);
        assert_eq!(positions(r.read(9, 10)), None);
        assert_eq!(positions(r.read(20, 10)), Some(vec![20]));
        // Bounded.
        r.extend(&(21..21 + RECENT as u64 + 10).map(rec).collect::<Vec<_>>());
        assert_eq!(positions(r.read(20, 1)), None);
        assert_eq!(r.events.len(), RECENT);
    }
}
