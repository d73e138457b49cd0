//! Applying events: each event's row updates are staged in memory (so later events of a batch see
//! earlier ones) and written in one atomic batch with the checkpoint they lead to. Every update is
//! idempotent, so replaying an event leaves the rows as they were.
use std::borrow::Borrow;
use std::collections::BTreeMap;

use super::rows::*;
use super::{checkpoint_value, corrupt, get_row, Active, Checkpoint, ProjectionError, Projections};
use claims_ledger_domain::event::Event;
use claims_ledger_domain::model::TargetKind;
use claims_ledger_domain::positions::{ending_of, ClaimEntry};
use claims_ledger_log::{EventLog, RecordedEvent, GENESIS_HASH};

/// Events applied per atomic batch while catching up.
pub const BATCH: usize = 512;

/// Staged row writes, key → value.
type Writes = BTreeMap<Vec<u8>, Vec<u8>>;

/// A batch being applied: writes are staged here and read back before they reach sled, so that
/// later events of the batch see earlier ones.
struct Staged<'a> {
    tree: &'a sled::Tree,
    writes: Writes,
}

impl Staged<'_> {
    fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, ProjectionError> {
        match self.writes.get(key) {
            Some(v) => serde_json::from_slice(v)
                .map(Some)
                .map_err(|e| corrupt(key, e)),
            None => get_row(self.tree, key),
        }
    }

    fn contains(&self, key: &[u8]) -> Result<bool, ProjectionError> {
        Ok(self.writes.contains_key(key) || self.tree.contains_key(key)?)
    }

    fn put<T: serde::Serialize>(&mut self, key: Vec<u8>, row: &T) -> Result<(), ProjectionError> {
        let v = serde_json::to_vec(row).map_err(|e| corrupt(&key, e))?;
        self.writes.insert(key, v);
        Ok(())
    }

    fn put_raw(&mut self, key: Vec<u8>, value: &[u8]) {
        self.writes.insert(key, value.to_vec());
    }
}

/// Applies one event's row updates. Each update is idempotent: applying an event twice leaves the
/// rows as applying it once did. An event only ever reaches entities recorded before it, so a replay
/// out of order cannot link what the log never linked.
fn apply_event(
    st: &mut Staged<'_>,
    rec: &RecordedEvent,
    event: &Event,
) -> Result<(), ProjectionError> {
    let origin = Origin::of(rec);
    let pos = rec.position;
    match event {
        Event::PartyRegistered(p) => {
            let key = party_key(&p.party_id);
            if !st.contains(&key)? {
                st.put(
                    key,
                    &PartyRow {
                        party: p.clone(),
                        registered: origin,
                        last_updated: None,
                    },
                )?;
            }
        }
        Event::PartyUpdated(p) => {
            let key = party_key(&p.party_id);
            if let Some(mut row) = st.get::<PartyRow>(&key)? {
                let newer = row.last_updated.as_ref().is_none_or(|o| o.position < pos)
                    && row.registered.position < pos;
                if newer {
                    row.party = p.clone();
                    row.last_updated = Some(origin);
                    st.put(key, &row)?;
                }
            }
        }
        Event::SourceRegistered(s) => {
            let key = uuid_key(SOURCE, &s.source_id).to_vec();
            if !st.contains(&key)? {
                st.put(
                    key,
                    &SourceRow {
                        source: s.clone(),
                        origin,
                    },
                )?;
            }
        }
        Event::StatementRecorded(s) => {
            let key = uuid_key(STATEMENT, &s.statement_id).to_vec();
            if !st.contains(&key)? {
                let mut parties = vec![s.speaker_id.as_str()];
                parties.extend(s.on_behalf_of_id.as_deref());
                parties.dedup();
                for party in parties {
                    st.put_raw(
                        party_statement_key(party, s.stated_time.at, pos),
                        s.statement_id.as_bytes(),
                    );
                }
                st.put(
                    key,
                    &StatementRow {
                        statement: s.clone(),
                        origin,
                        ended: None,
                        topics: Default::default(),
                        claims: Vec::new(),
                    },
                )?;
            }
        }
        Event::ClaimAsserted(c) => {
            let claim_key = uuid_key(CLAIM, &c.claim_id).to_vec();
            let st_key = uuid_key(STATEMENT, &c.statement_id).to_vec();
            // `decide` never asserts on an unknown statement; a foreign log that does is left out
            // rather than given an invented stated time, as in the pure fold.
            let statement = st.get::<StatementRow>(&st_key)?;
            let Some(mut statement) = statement.filter(|s| s.origin.position < pos) else {
                return Ok(());
            };
            if st.contains(&claim_key)? {
                return Ok(());
            }
            st.put(
                claim_key,
                &ClaimRow {
                    entry: ClaimEntry {
                        claim: c.clone(),
                        stated: statement.statement.stated_time,
                        position: pos,
                        ended: None,
                        statement_ended: statement.ended,
                    },
                    origin,
                },
            )?;
            st.put_raw(fact_key(&c.party_id, &c.topic, pos), c.claim_id.as_bytes());
            statement.topics.insert(c.topic.clone());
            if !statement.claims.contains(&c.claim_id) {
                statement.claims.push(c.claim_id);
            }
            st.put(st_key, &statement)?;
        }
        Event::ClaimReviewed(r) => {
            st.put(
                uuid_pos_key(REVIEW, &r.claim_id, pos).to_vec(),
                &ReviewRow {
                    review: r.clone(),
                    origin,
                },
            )?;
        }
        Event::CorrectionIssued(c) => {
            st.put(
                uuid_pos_key(CORRECTION, &c.target_id, pos).to_vec(),
                &CorrectionRow {
                    correction: c.clone(),
                    origin,
                },
            )?;
            let Some(ended) = ending_of(c, pos) else {
                return Ok(());
            };
            match c.target_kind {
                TargetKind::Statement => {
                    let key = uuid_key(STATEMENT, &c.target_id).to_vec();
                    // Only what existed when the correction was made: a replayed correction must
                    // not reach an entity recorded after it (the pure fold never sees one).
                    let target = st.get::<StatementRow>(&key)?;
                    if let Some(mut s) = target.filter(|s| s.origin.position < pos) {
                        s.ended.get_or_insert(ended);
                        for claim_id in &s.claims {
                            let ck = uuid_key(CLAIM, claim_id).to_vec();
                            if let Some(mut row) = st.get::<ClaimRow>(&ck)? {
                                row.entry.end_statement(ended);
                                st.put(ck, &row)?;
                            }
                        }
                        st.put(key, &s)?;
                    }
                }
                TargetKind::Claim => {
                    let key = uuid_key(CLAIM, &c.target_id).to_vec();
                    let target = st.get::<ClaimRow>(&key)?;
                    if let Some(mut row) = target.filter(|r| r.origin.position < pos) {
                        row.entry.end(ended);
                        st.put(key, &row)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn decode(rec: &RecordedEvent) -> Result<Event, ProjectionError> {
    Event::from_payload(
        &rec.event_type,
        rec.schema_version,
        rec.payload.get().as_bytes(),
    )
    .map_err(|e| ProjectionError::Undecodable {
        position: rec.position,
        reason: e.to_string(),
    })
}

/// Stages the row updates of `events` (consecutive, in log order) from position `from` on; events
/// below `from` are skipped, a gap is an error. Returns the writes and the checkpoint they lead to.
fn stage<E: Borrow<RecordedEvent>>(
    tree: &sled::Tree,
    from: Checkpoint,
    events: &[E],
) -> Result<(Writes, Checkpoint), ProjectionError> {
    let mut staged = Staged {
        tree,
        writes: BTreeMap::new(),
    };
    let mut next = from;
    for rec in events {
        let rec: &RecordedEvent = rec.borrow();
        if rec.position < next.applied {
            continue;
        }
        if rec.position != next.applied {
            return Err(ProjectionError::OutOfOrder {
                expected: next.applied,
                got: rec.position,
            });
        }
        // The log's own events (an accepted shorter log) change no read model.
        if !rec.is_system() {
            apply_event(&mut staged, rec, &decode(rec)?)?;
        }
        next = Checkpoint {
            applied: rec.position + 1,
            last_hash: rec.hash,
        };
    }
    Ok((staged.writes, next))
}

fn write_batch(
    tree: &sled::Tree,
    writes: Writes,
    checkpoint: Option<&Checkpoint>,
) -> Result<(), ProjectionError> {
    let mut batch = sled::Batch::default();
    for (k, v) in writes {
        batch.insert(k, v);
    }
    if let Some(c) = checkpoint {
        batch.insert(CHECKPOINT, checkpoint_value(c));
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// Applies `events` (consecutive, in log order) to `tree` in one atomic batch with its checkpoint.
/// Events below the checkpoint are skipped; a gap is an error.
fn apply_to_tree<E: Borrow<RecordedEvent>>(
    tree: &sled::Tree,
    checkpoint: &mut Checkpoint,
    events: &[E],
) -> Result<(), ProjectionError> {
    let (writes, next) = stage(tree, *checkpoint, events)?;
    if next == *checkpoint {
        return Ok(());
    }
    write_batch(tree, writes, Some(&next))?;
    *checkpoint = next;
    Ok(())
}

/// Applies events to `tree` from its checkpoint up to `end` (exclusive), reading them from `log`.
pub(super) fn catch_up_tree(
    log: &EventLog,
    tree: &sled::Tree,
    checkpoint: &mut Checkpoint,
    end: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ProjectionError> {
    while checkpoint.applied < end {
        let want = ((end - checkpoint.applied) as usize).min(BATCH);
        let events = log.read_all(checkpoint.applied, false, want)?;
        if events.is_empty() {
            break;
        }
        apply_to_tree(tree, checkpoint, &events)?;
        progress(checkpoint.applied);
    }
    Ok(())
}

impl Projections {
    /// Applies `events` (consecutive, in log order) to the serving generation.
    ///
    /// The rows are staged without holding the lock (the projector is the only writer of the serving
    /// tree, so what it reads cannot change under it); the exclusive lock covers only the batch write
    /// and the checkpoint, so queries wait for a sled write, not for JSON work.
    pub fn apply<E: Borrow<RecordedEvent>>(&self, events: &[E]) -> Result<(), ProjectionError> {
        let (generation, tree, checkpoint) = {
            let a = self.read();
            (a.generation, a.tree.clone(), a.checkpoint)
        };
        let (writes, next) = stage(&tree, checkpoint, events)?;
        if next == checkpoint {
            return Ok(());
        }
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        if active.generation == generation && active.checkpoint == checkpoint {
            write_batch(&active.tree, writes, Some(&next))?;
            active.checkpoint = next;
        } else {
            // A rebuild switched generations (or another caller applied) meanwhile: stage again
            // against what is serving now, under the lock.
            let Active {
                tree, checkpoint, ..
            } = &mut *active;
            apply_to_tree(tree, checkpoint, events)?;
        }
        self.applied_tx.send_replace(active.checkpoint.applied);
        Ok(())
    }

    /// Applies the row updates of `events` again, ignoring and keeping the checkpoint. Rows must not
    /// change: every update is idempotent. Exists so tests can check exactly that.
    #[doc(hidden)]
    pub fn reapply_rows<E: Borrow<RecordedEvent>>(
        &self,
        events: &[E],
    ) -> Result<(), ProjectionError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let active = self.active.write().unwrap_or_else(|p| p.into_inner());
        let from = Checkpoint {
            applied: first.borrow().position,
            last_hash: GENESIS_HASH,
        };
        let (writes, _) = stage(&active.tree, from, events)?;
        write_batch(&active.tree, writes, None)
    }

    /// Applies every durable event of `log` the serving generation has not seen, in atomic batches.
    pub fn catch_up(&self, log: &EventLog) -> Result<(), ProjectionError> {
        loop {
            let from = self.applied();
            let end = log.durable_count();
            if from >= end {
                return Ok(());
            }
            let want = ((end - from) as usize).min(BATCH);
            let events = log.read_all(from, false, want)?;
            if events.is_empty() {
                return Ok(());
            }
            self.apply(&events)?;
        }
    }
}
