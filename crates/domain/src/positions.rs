//! Positions: the pure fold from events to each party's stance on each topic, with the history of
//! earlier stances. Groundwork for the positions projection and the `Query` service: storage,
//! checkpoints and the transport will wrap this; the rules live here.
//!
//! Rules:
//! - a claim counts while it and its statement are in force (neither retracted nor superseded);
//! - the current stance of (party, topic) is the counting claim with the latest stated time, ties
//!   broken by log position;
//! - history lists every claim ever asserted on (party, topic) in stated-time order, corrected ones
//!   included and marked, each flagged `changed` when its stance differs from the previous entry's;
//! - two clocks: `as_of_stated` keeps claims stated at or before a moment (by the start of their stated
//!   period); `as_of_recorded` (a log position) answers with what the ledger knew before it, which
//!   needs no refold because every status change remembers the position that made it.
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::{Claim, Event};
use super::model::{CorrectionKind, StatedTime, TargetKind};

/// How and when (log position) a claim or statement stopped counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum Ended {
    Retracted { at: u64 },
    Superseded { at: u64, by: Uuid },
}

impl Ended {
    /// The log position of the correction that ended it.
    pub fn at(&self) -> u64 {
        match self {
            Ended::Retracted { at } | Ended::Superseded { at, .. } => *at,
        }
    }
}

/// One asserted claim, as the positions fold knows it. Self-contained: whether it counts under any
/// clock follows from this entry alone, so a store can keep entries as rows and answer from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimEntry {
    pub claim: Claim,
    /// The asserting statement's stated time.
    pub stated: StatedTime,
    /// Log position of the `ClaimAsserted` event.
    pub position: u64,
    /// When the claim itself stopped counting, if it did.
    pub ended: Option<Ended>,
    /// When its statement stopped counting, if it did.
    #[serde(default)]
    pub statement_ended: Option<Ended>,
}

impl ClaimEntry {
    /// Whether this entry was recorded before `as_of.recorded` and stated by `as_of.stated`.
    pub fn known(&self, as_of: AsOf) -> bool {
        as_of.recorded.is_none_or(|p| self.position < p)
            && as_of.stated.is_none_or(|t| self.stated.at <= t)
    }

    /// Whether this entry was known and in force at `as_of` (both clocks).
    pub fn in_force(&self, as_of: AsOf) -> bool {
        self.known(as_of)
            && counts_at(&self.ended, as_of.recorded)
            && counts_at(&self.statement_ended, as_of.recorded)
    }

    /// Records that the claim stopped counting; the first correction wins, so replays change nothing.
    pub fn end(&mut self, ended: Ended) {
        self.ended.get_or_insert(ended);
    }

    /// Records that its statement stopped counting; the first correction wins.
    pub fn end_statement(&mut self, ended: Ended) {
        self.statement_ended.get_or_insert(ended);
    }
}

/// What a correction does to the positions: `None` for an erratum, which leaves its target in force.
pub fn ending_of(c: &crate::event::Correction, position: u64) -> Option<Ended> {
    match (c.kind, c.replacement_id) {
        (CorrectionKind::Retract, _) => Some(Ended::Retracted { at: position }),
        (CorrectionKind::Supersede, Some(by)) => Some(Ended::Superseded { at: position, by }),
        _ => None,
    }
}

/// The current stance among `entries` (one party, one topic) at `as_of`: the counting claim with the
/// latest stated time, ties broken by log position.
pub fn current_of(entries: &[ClaimEntry], as_of: AsOf) -> Option<&ClaimEntry> {
    entries
        .iter()
        .filter(|e| e.in_force(as_of))
        .max_by_key(|e| (e.stated.at, e.position))
}

/// The history among `entries` (one party, one topic) known at `as_of`, in stated-time order (ties by
/// position), each flagged `changed` when its stance differs from the previous entry's.
pub fn history_of(entries: &[ClaimEntry], as_of: AsOf) -> Vec<HistoryEntry<'_>> {
    let mut known: Vec<&ClaimEntry> = entries.iter().filter(|e| e.known(as_of)).collect();
    known.sort_by_key(|e| (e.stated.at, e.position));
    let mut previous: Option<&str> = None;
    known
        .into_iter()
        .map(|entry| {
            let changed = previous != Some(entry.claim.stance.as_str());
            previous = Some(entry.claim.stance.as_str());
            HistoryEntry {
                entry,
                changed,
                in_force: entry.in_force(as_of),
            }
        })
        .collect()
}

/// One entry of a position's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry<'a> {
    pub entry: &'a ClaimEntry,
    /// The stance differs from the previous entry's (the first entry is a change).
    pub changed: bool,
    /// Counts at the moment asked about (not corrected, statement not corrected).
    pub in_force: bool,
}

/// The two clocks of a question; `None` means "now".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AsOf {
    /// Valid time: only claims stated at or before this moment.
    pub stated: Option<DateTime<Utc>>,
    /// Transaction time: only what was recorded before this log position.
    pub recorded: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StatementInfo {
    stated: StatedTime,
    position: u64,
    ended: Option<Ended>,
}

/// The fold. Apply events in log order; an event at or below the last applied position is ignored,
/// so replaying a prefix twice changes nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Positions {
    last_applied: Option<u64>,
    statements: HashMap<Uuid, StatementInfo>,
    /// (party, topic) → claims in assertion order.
    claims: BTreeMap<(String, String), Vec<ClaimEntry>>,
    claim_keys: HashMap<Uuid, (String, String)>,
    /// statement → its claims, so a statement's correction reaches them.
    statement_claims: HashMap<Uuid, Vec<Uuid>>,
}

fn counts_at(ended: &Option<Ended>, recorded: Option<u64>) -> bool {
    match (ended, recorded) {
        (None, _) => true,
        (Some(e), Some(before)) => e.at() >= before,
        (Some(_), None) => false,
    }
}

impl Positions {
    /// The last log position applied.
    pub fn last_applied(&self) -> Option<u64> {
        self.last_applied
    }

    /// Folds one event recorded at `position`.
    pub fn apply(&mut self, position: u64, event: &Event) {
        if self.last_applied.is_some_and(|last| position <= last) {
            return;
        }
        self.last_applied = Some(position);
        match event {
            // Ids are never reused by `decide`; should a foreign log reuse one, the first wins.
            Event::StatementRecorded(s) => {
                self.statements
                    .entry(s.statement_id)
                    .or_insert(StatementInfo {
                        stated: s.stated_time,
                        position,
                        ended: None,
                    });
            }
            Event::ClaimAsserted(c) => {
                // A claim on an unknown statement cannot come from `decide`; keep it out rather
                // than invent a time for it.
                let Some(st) = self.statements.get(&c.statement_id) else {
                    return;
                };
                if self.claim_keys.contains_key(&c.claim_id) {
                    return;
                }
                let key = (c.party_id.clone(), c.topic.clone());
                self.claim_keys.insert(c.claim_id, key.clone());
                self.statement_claims
                    .entry(c.statement_id)
                    .or_default()
                    .push(c.claim_id);
                self.claims.entry(key).or_default().push(ClaimEntry {
                    claim: c.clone(),
                    stated: st.stated,
                    position,
                    ended: None,
                    statement_ended: st.ended,
                });
            }
            Event::CorrectionIssued(c) => {
                let Some(ended) = ending_of(c, position) else {
                    return;
                };
                match c.target_kind {
                    TargetKind::Statement => {
                        if let Some(s) = self.statements.get_mut(&c.target_id) {
                            s.ended.get_or_insert(ended);
                        }
                        let claims = self
                            .statement_claims
                            .get(&c.target_id)
                            .cloned()
                            .unwrap_or_default();
                        for id in &claims {
                            if let Some(e) = self.entry_mut(id) {
                                e.end_statement(ended);
                            }
                        }
                    }
                    TargetKind::Claim => {
                        if let Some(e) = self.entry_mut(&c.target_id) {
                            e.end(ended);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn entry_mut(&mut self, claim_id: &Uuid) -> Option<&mut ClaimEntry> {
        let key = self.claim_keys.get(claim_id)?;
        self.claims
            .get_mut(key)?
            .iter_mut()
            .find(|e| e.claim.claim_id == *claim_id)
    }

    /// Every claim entry of (`party`, `topic`), in assertion order.
    pub fn entries(&self, party: &str, topic: &str) -> &[ClaimEntry] {
        self.claims
            .get(&(party.to_string(), topic.to_string()))
            .map_or(&[], |v| v.as_slice())
    }

    /// The current stance of `party` on `topic`, at `as_of`.
    pub fn current(&self, party: &str, topic: &str, as_of: AsOf) -> Option<&ClaimEntry> {
        current_of(self.entries(party, topic), as_of)
    }

    /// Every topic `party` has claims on, in order.
    pub fn topics(&self, party: &str) -> Vec<&str> {
        self.claims
            .keys()
            .filter(|(p, _)| p == party)
            .map(|(_, t)| t.as_str())
            .collect()
    }

    /// The history of `party` on `topic` known at `as_of`, in stated-time order (ties by position).
    pub fn history(&self, party: &str, topic: &str, as_of: AsOf) -> Vec<HistoryEntry<'_>> {
        history_of(self.entries(party, topic), as_of)
    }
}
