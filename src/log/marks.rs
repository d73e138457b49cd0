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
