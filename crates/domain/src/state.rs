//! The write model: the little `decide` needs to know about what exists (ids, status, stream
//! revisions, source texts), folded from events. `Overlay` layers a batch's own events over the committed
//! state without copying it, so later commands of a batch can refer to entities created earlier in it.
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::event::Event;
use super::model::{CorrectionKind, Precision, StatedTime, TargetKind};
use claims_ledger_core::codec::{Put as _, Reader};

/// Whether a statement or claim still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Retracted,
    Superseded(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyState {
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceState {
    pub revision: u64,
    /// Shared so that overlays and readers never copy the text.
    pub text: Arc<str>,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementState {
    pub revision: u64,
    pub stated_time: StatedTime,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimState {
    pub revision: u64,
    pub statement_id: Uuid,
    pub status: Status,
}

/// Read access to the write model; implemented by [`State`] and [`Overlay`].
pub trait View {
    fn party(&self, id: &str) -> Option<&PartyState>;
    fn source(&self, id: &Uuid) -> Option<&SourceState>;
    fn statement(&self, id: &Uuid) -> Option<&StatementState>;
    fn claim(&self, id: &Uuid) -> Option<&ClaimState>;
    /// Whether a review or correction id is already used.
    fn has_annotation(&self, id: &Uuid) -> bool;
}

/// The committed write model ([`State::to_bytes`] for snapshots).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    parties: HashMap<String, PartyState>,
    sources: HashMap<Uuid, SourceState>,
    statements: HashMap<Uuid, StatementState>,
    claims: HashMap<Uuid, ClaimState>,
    annotations: HashSet<Uuid>,
}

impl View for State {
    fn party(&self, id: &str) -> Option<&PartyState> {
        self.parties.get(id)
    }
    fn source(&self, id: &Uuid) -> Option<&SourceState> {
        self.sources.get(id)
    }
    fn statement(&self, id: &Uuid) -> Option<&StatementState> {
        self.statements.get(id)
    }
    fn claim(&self, id: &Uuid) -> Option<&ClaimState> {
        self.claims.get(id)
    }
    fn has_annotation(&self, id: &Uuid) -> bool {
        self.annotations.contains(id)
    }
}

/// Tags of [`Status`] and [`Precision`] in [`State::to_bytes`].
const ACTIVE: u8 = 0;
const RETRACTED: u8 = 1;
const SUPERSEDED: u8 = 2;
const PRECISIONS: [Precision; 4] = [
    Precision::Instant,
    Precision::Day,
    Precision::Month,
    Precision::Year,
];

fn put_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    out.put_i64(t.timestamp());
    out.put_u32(t.timestamp_subsec_nanos());
}

fn time(r: &mut Reader<'_>) -> Result<DateTime<Utc>, String> {
    let (secs, nanos) = (r.i64()?, r.u32()?);
    DateTime::from_timestamp(secs, nanos).ok_or_else(|| format!("time {secs}.{nanos} out of range"))
}

fn put_status(out: &mut Vec<u8>, s: &Status) {
    match s {
        Status::Active => out.put_u8(ACTIVE),
        Status::Retracted => out.put_u8(RETRACTED),
        Status::Superseded(by) => {
            out.put_u8(SUPERSEDED);
            out.extend_from_slice(by.as_bytes());
        }
    }
}

fn status(r: &mut Reader<'_>) -> Result<Status, String> {
    match r.u8()? {
        ACTIVE => Ok(Status::Active),
        RETRACTED => Ok(Status::Retracted),
        SUPERSEDED => Ok(Status::Superseded(Uuid::from_bytes(r.bytes16()?))),
        t => Err(format!("unknown status tag {t}")),
    }
}

impl State {
    /// A compact binary form for snapshots (see `codec`); [`State::from_bytes`] reads it back.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u32(self.parties.len() as u32);
        for (id, p) in &self.parties {
            out.put_str16(id);
            out.put_u64(p.revision);
        }
        out.put_u32(self.sources.len() as u32);
        for (id, src) in &self.sources {
            out.extend_from_slice(id.as_bytes());
            out.put_u64(src.revision);
            put_time(&mut out, &src.published_at);
            out.put_str32(&src.text);
        }
        out.put_u32(self.statements.len() as u32);
        for (id, st) in &self.statements {
            out.extend_from_slice(id.as_bytes());
            out.put_u64(st.revision);
            put_time(&mut out, &st.stated_time.at);
            let precision = PRECISIONS
                .iter()
                .position(|p| *p == st.stated_time.precision);
            out.put_u8(precision.unwrap_or(0) as u8);
            put_status(&mut out, &st.status);
        }
        out.put_u32(self.claims.len() as u32);
        for (id, c) in &self.claims {
            out.extend_from_slice(id.as_bytes());
            out.put_u64(c.revision);
            out.extend_from_slice(c.statement_id.as_bytes());
            put_status(&mut out, &c.status);
        }
        out.put_u32(self.annotations.len() as u32);
        for id in &self.annotations {
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    /// Reads what [`State::to_bytes`] wrote; refuses anything else.
    pub fn from_bytes(bytes: &[u8]) -> Result<State, String> {
        let mut r = Reader::new(bytes);
        // Counts are bounded by the bytes left, so a damaged one cannot ask for a huge allocation.
        let cap = |n: u32| (n as usize).min(bytes.len() / 16);
        let mut state = State::default();
        let n = r.u32()?;
        state.parties.reserve(cap(n));
        for _ in 0..n {
            let id = r.str16()?.to_string();
            state.parties.insert(id, PartyState { revision: r.u64()? });
        }
        let n = r.u32()?;
        state.sources.reserve(cap(n));
        for _ in 0..n {
            let id = Uuid::from_bytes(r.bytes16()?);
            let revision = r.u64()?;
            let published_at = time(&mut r)?;
            let text = Arc::from(r.str32()?);
            state.sources.insert(
                id,
                SourceState {
                    revision,
                    text,
                    published_at,
                },
            );
        }
        let n = r.u32()?;
        state.statements.reserve(cap(n));
        for _ in 0..n {
            let id = Uuid::from_bytes(r.bytes16()?);
            let revision = r.u64()?;
            let at = time(&mut r)?;
            let tag = r.u8()?;
            let precision = *PRECISIONS
                .get(usize::from(tag))
                .ok_or_else(|| format!("unknown precision tag {tag}"))?;
            let status = status(&mut r)?;
            state.statements.insert(
                id,
                StatementState {
                    revision,
                    stated_time: StatedTime { at, precision },
                    status,
                },
            );
        }
        let n = r.u32()?;
        state.claims.reserve(cap(n));
        for _ in 0..n {
            let id = Uuid::from_bytes(r.bytes16()?);
            let revision = r.u64()?;
            let statement_id = Uuid::from_bytes(r.bytes16()?);
            let status = status(&mut r)?;
            state.claims.insert(
                id,
                ClaimState {
                    revision,
                    statement_id,
                    status,
                },
            );
        }
        let n = r.u32()?;
        state.annotations.reserve(cap(n));
        for _ in 0..n {
            state.annotations.insert(Uuid::from_bytes(r.bytes16()?));
        }
        if !r.is_empty() {
            return Err("data after the write model".into());
        }
        Ok(state)
    }

    /// Folds one event in. Events arrive in log order and were valid when appended, so a missing
    /// entity here can only mean the event is foreign; it is then ignored rather than invented.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::PartyRegistered(p) => {
                self.parties
                    .insert(p.party_id.clone(), PartyState { revision: 0 });
            }
            Event::PartyUpdated(p) => {
                if let Some(s) = self.parties.get_mut(&p.party_id) {
                    s.revision += 1;
                }
            }
            Event::SourceRegistered(s) => {
                self.sources.insert(
                    s.source_id,
                    SourceState {
                        revision: 0,
                        text: Arc::from(s.text.as_str()),
                        published_at: s.published_at,
                    },
                );
            }
            Event::StatementRecorded(s) => {
                self.statements.insert(
                    s.statement_id,
                    StatementState {
                        revision: 0,
                        stated_time: s.stated_time,
                        status: Status::Active,
                    },
                );
            }
            Event::ClaimAsserted(c) => {
                self.claims.insert(
                    c.claim_id,
                    ClaimState {
                        revision: 0,
                        statement_id: c.statement_id,
                        status: Status::Active,
                    },
                );
            }
            Event::ClaimReviewed(r) => {
                self.annotations.insert(r.review_id);
                if let Some(c) = self.claims.get_mut(&r.claim_id) {
                    c.revision += 1;
                }
            }
            Event::CorrectionIssued(c) => {
                self.annotations.insert(c.correction_id);
                let status = match (c.kind, c.replacement_id) {
                    (CorrectionKind::Retract, _) => Some(Status::Retracted),
                    (CorrectionKind::Supersede, Some(r)) => Some(Status::Superseded(r)),
                    _ => None,
                };
                let (revision, old) = match c.target_kind {
                    TargetKind::Statement => match self.statements.get_mut(&c.target_id) {
                        Some(s) => (&mut s.revision, &mut s.status),
                        None => return,
                    },
                    TargetKind::Claim => match self.claims.get_mut(&c.target_id) {
                        Some(s) => (&mut s.revision, &mut s.status),
                        None => return,
                    },
                };
                *revision += 1;
                if let Some(status) = status {
                    *old = status;
                }
            }
        }
    }

    /// Copies into `self` the entity `event` changes, taken from `base`, unless `self` has it already.
    fn copy_target_from(&mut self, base: &State, event: &Event) {
        match event {
            Event::PartyUpdated(p) => copy_entry(&mut self.parties, &base.parties, &p.party_id),
            Event::ClaimReviewed(r) => copy_entry(&mut self.claims, &base.claims, &r.claim_id),
            Event::CorrectionIssued(c) => match c.target_kind {
                TargetKind::Statement => {
                    copy_entry(&mut self.statements, &base.statements, &c.target_id)
                }
                TargetKind::Claim => copy_entry(&mut self.claims, &base.claims, &c.target_id),
            },
            _ => {}
        }
    }
}

fn copy_entry<K: Eq + Hash + Clone, T: Clone>(
    local: &mut HashMap<K, T>,
    base: &HashMap<K, T>,
    id: &K,
) {
    if let (Entry::Vacant(slot), Some(v)) = (local.entry(id.clone()), base.get(id)) {
        slot.insert(v.clone());
    }
}

/// A batch's pending events over the committed state (copy-on-write per touched entity).
pub struct Overlay<'a> {
    base: &'a State,
    local: State,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a State) -> Self {
        Overlay {
            base,
            local: State::default(),
        }
    }

    pub fn apply(&mut self, event: &Event) {
        self.local.copy_target_from(self.base, event);
        self.local.apply(event);
    }
}

impl View for Overlay<'_> {
    fn party(&self, id: &str) -> Option<&PartyState> {
        self.local.party(id).or_else(|| self.base.party(id))
    }
    fn source(&self, id: &Uuid) -> Option<&SourceState> {
        self.local.source(id).or_else(|| self.base.source(id))
    }
    fn statement(&self, id: &Uuid) -> Option<&StatementState> {
        self.local.statement(id).or_else(|| self.base.statement(id))
    }
    fn claim(&self, id: &Uuid) -> Option<&ClaimState> {
        self.local.claim(id).or_else(|| self.base.claim(id))
    }
    fn has_annotation(&self, id: &Uuid) -> bool {
        self.local.has_annotation(id) || self.base.has_annotation(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_form_round_trips_every_kind_of_entry_and_refuses_damage() {
        let at = |s: i64, n: u32| DateTime::from_timestamp(s, n).expect("time");
        let id = |b: u8| Uuid::from_bytes([b; 16]);
        let mut s = State::default();
        s.parties
            .insert("russia".into(), PartyState { revision: 3 });
        s.parties
            .insert("Росси́я-x".into(), PartyState { revision: 0 });
        s.sources.insert(
            id(1),
            SourceState {
                revision: 1,
                text: Arc::from("“We are prepared” — Lavrov"),
                published_at: at(1_717_545_600, 5),
            },
        );
        for (i, (precision, status)) in PRECISIONS
            .iter()
            .zip([
                Status::Active,
                Status::Retracted,
                Status::Superseded(id(9)),
                Status::Active,
            ])
            .enumerate()
        {
            s.statements.insert(
                id(10 + i as u8),
                StatementState {
                    revision: i as u64,
                    stated_time: StatedTime {
                        at: at(-86_400 * i as i64, 0),
                        precision: *precision,
                    },
                    status,
                },
            );
        }
        s.claims.insert(
            id(20),
            ClaimState {
                revision: 2,
                statement_id: id(10),
                status: Status::Superseded(id(21)),
            },
        );
        s.annotations.extend([id(30), id(31)]);

        let bytes = s.to_bytes();
        assert_eq!(State::from_bytes(&bytes), Ok(s.clone()));
        assert_eq!(
            State::from_bytes(&State::default().to_bytes()),
            Ok(State::default())
        );
        // Cut short, or with a byte more: refused, never a partial model.
        assert!(State::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(State::from_bytes(&longer).is_err());
    }
}
