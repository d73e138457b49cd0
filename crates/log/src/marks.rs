//! Following idempotency marks through a log in position order (see `record`), to rebuild the answer
//! each keyed append gave: `import` writes these answers as `i` records, `verify` compares them with
//! the stored ones. One place for the rules a log's marks must follow: an append's events hold
//! consecutive positions and one `recorded_at`, a mark never opens inside another append, a key
//! marks one append only, and the log does not end inside an append.
use std::collections::HashSet;

use super::record::{sha256, Hash, RecordedEvent};
use super::store::{Appended, IdempotencyRecord};

/// A keyed append whose events are still arriving.
struct Open {
    first: u64,
    key: String,
    answer: IdempotencyRecord,
    /// Events of the append not yet pushed.
    remaining: u32,
}

/// A keyed append whose last event was pushed.
pub(super) struct Closed {
    /// Position of its first event.
    pub first: u64,
    pub key: String,
    pub answer: IdempotencyRecord,
}

#[derive(Default)]
pub(super) struct Marks {
    open: Option<Open>,
    /// SHA-256 of every key marked so far.
    keys: HashSet<Hash>,
}

impl Marks {
    /// Why `rec`, the next event of the log, breaks the rules; changes nothing.
    pub fn check(&self, rec: &RecordedEvent) -> Result<(), String> {
        match (&rec.idempotency, &self.open) {
            (Some(mark), _) if mark.events == 0 => Err(format!(
                "the idempotency mark of key {:?} counts no events",
                mark.key
            )),
            (Some(mark), Some(open)) => Err(format!(
                "an append under idempotency key {:?} starts while the one under {:?} still lacks \
                 {} event(s)",
                mark.key, open.key, open.remaining
            )),
            (Some(mark), None) if self.keys.contains(&sha256(mark.key.as_bytes())) => {
                Err(format!("idempotency key {:?} used a second time", mark.key))
            }
            (None, Some(open)) if open.answer.recorded_at != rec.recorded_at => Err(format!(
                "recorded_at differs within the append under idempotency key {:?}",
                open.key
            )),
            _ => Ok(()),
        }
    }

    /// Takes `rec`, which [`Marks::check`] accepted; returns the append it completes, if any.
    pub fn push(&mut self, rec: &RecordedEvent) -> Option<Closed> {
        if let Some(mark) = &rec.idempotency {
            self.keys.insert(sha256(mark.key.as_bytes()));
            self.open = Some(Open {
                first: rec.position,
                key: mark.key.clone(),
                answer: IdempotencyRecord {
                    content_hash: mark.content_hash,
                    recorded_at: rec.recorded_at,
                    events: Vec::with_capacity(mark.events as usize),
                },
                remaining: mark.events,
            });
        }
        let mut open = self.open.take()?;
        open.answer.events.push(Appended::from(rec));
        open.remaining -= 1;
        if open.remaining > 0 {
            self.open = Some(open);
            return None;
        }
        Some(Closed {
            first: open.first,
            key: open.key,
            answer: open.answer,
        })
    }

    /// Why the log may not end here: an append still lacks events.
    pub fn check_end(&self) -> Result<(), String> {
        match &self.open {
            Some(open) => Err(format!(
                "the log ends inside the append under idempotency key {:?}, {} event(s) short",
                open.key, open.remaining
            )),
            None => Ok(()),
        }
    }

    /// Position of the first event of the append still open, if any.
    pub fn open_since(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.first)
    }

    /// Whether `key` marked an append so far.
    pub fn marked(&self, key: &str) -> bool {
        self.keys.contains(&sha256(key.as_bytes()))
    }

    /// Keys marked so far.
    pub fn count(&self) -> u64 {
        self.keys.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::IdempotencyMark;
    use chrono::DateTime;
    use serde_json::value::RawValue;
    use uuid::Uuid;

    fn event(position: u64, mark: Option<(&str, u32)>, seconds: i64) -> RecordedEvent {
        RecordedEvent {
            position,
            prev_hash: [0; 32],
            hash: [position as u8; 32],
            event_id: Uuid::nil(),
            stream: "s".into(),
            stream_revision: position,
            event_type: "T".into(),
            schema_version: 1,
            recorded_at: DateTime::from_timestamp(seconds, 0).expect("time"),
            recorded_by: "t".into(),
            correlation_id: None,
            causation_id: None,
            idempotency: mark.map(|(key, events)| IdempotencyMark {
                key: key.into(),
                content_hash: [1; 32],
                events,
            }),
            payload: RawValue::from_string("{}".into()).expect("json"),
            stored: Vec::new(),
        }
    }

    #[test]
    fn an_append_closes_after_its_count_and_each_rule_is_named() {
        let mut m = Marks::default();
        for e in [event(0, Some(("a", 2)), 0), event(1, None, 0)] {
            m.check(&e).expect("fits");
            if let Some(closed) = m.push(&e) {
                assert_eq!((closed.first, closed.key.as_str()), (0, "a"));
                assert_eq!(closed.answer.events.len(), 2);
            }
        }
        assert!(m.check_end().is_ok() && m.marked("a") && m.count() == 1);

        let zero = event(2, Some(("z", 0)), 0);
        assert!(m
            .check(&zero)
            .is_err_and(|r| r.contains("counts no events")));
        let again = event(2, Some(("a", 1)), 0);
        assert!(m.check(&again).is_err_and(|r| r.contains("a second time")));

        let open = event(2, Some(("b", 2)), 5);
        m.check(&open).expect("fits");
        assert!(m.push(&open).is_none());
        assert_eq!(m.open_since(), Some(2));
        assert!(m
            .check(&event(3, Some(("c", 1)), 5))
            .is_err_and(|r| r.contains("still lacks 1 event")));
        assert!(m
            .check(&event(3, None, 6))
            .is_err_and(|r| r.contains("recorded_at differs")));
        assert!(m.check_end().is_err_and(|r| r.contains("1 event(s) short")));
    }
}
