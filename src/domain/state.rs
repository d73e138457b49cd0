//! The write model: the little `decide` needs to know about what exists (ids, status, stream
//! revisions, source texts), folded from events. `Overlay` layers a batch's own events over the committed
//! state without copying it, so later commands of a batch can refer to entities created earlier in it.
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::Event;
use super::model::{CorrectionKind, StatedTime, TargetKind};

/// Whether a statement or claim still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Active,
    Retracted,
    Superseded(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyState {
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    pub revision: u64,
    /// Shared so that overlays and readers never copy the text.
    pub text: Arc<str>,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementState {
    pub revision: u64,
    pub stated_time: StatedTime,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// The committed write model. Serializable so that `app` can snapshot it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl State {
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
