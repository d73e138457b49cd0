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
use uuid::Uuid;

use super::event::{Claim, Event};
use super::model::{CorrectionKind, StatedTime, TargetKind};

/// How and when (log position) a claim or statement stopped counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Retracted { at: u64 },
    Superseded { at: u64, by: Uuid },
}

impl Ended {
    fn at(&self) -> u64 {
        match self {
            Ended::Retracted { at } | Ended::Superseded { at, .. } => *at,
        }
    }
}

/// One asserted claim, as the positions fold knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimEntry {
    pub claim: Claim,
    /// The asserting statement's stated time.
    pub stated: StatedTime,
    /// Log position of the `ClaimAsserted` event.
    pub position: u64,
    /// When the claim itself stopped counting, if it did.
    pub ended: Option<Ended>,
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
                self.claims.entry(key).or_default().push(ClaimEntry {
                    claim: c.clone(),
                    stated: st.stated,
                    position,
                    ended: None,
                });
            }
            Event::CorrectionIssued(c) => {
                let ended = match (c.kind, c.replacement_id) {
                    (CorrectionKind::Retract, _) => Ended::Retracted { at: position },
                    (CorrectionKind::Supersede, Some(by)) => Ended::Superseded { at: position, by },
                    // An erratum leaves the target in force.
                    _ => return,
                };
                match c.target_kind {
                    TargetKind::Statement => {
                        if let Some(s) = self.statements.get_mut(&c.target_id) {
                            s.ended.get_or_insert(ended);
                        }
                    }
                    TargetKind::Claim => {
                        let entry = self
                            .claim_keys
                            .get(&c.target_id)
                            .and_then(|k| self.claims.get_mut(k))
                            .and_then(|v| v.iter_mut().find(|e| e.claim.claim_id == c.target_id));
                        if let Some(e) = entry {
                            e.ended.get_or_insert(ended);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether `e` was known and in force at `as_of` (both clocks).
    fn in_force(&self, e: &ClaimEntry, as_of: AsOf) -> bool {
        let statement_ended = self
            .statements
            .get(&e.claim.statement_id)
            .and_then(|s| s.ended);
        self.known(e, as_of)
            && counts_at(&e.ended, as_of.recorded)
            && counts_at(&statement_ended, as_of.recorded)
    }

    /// Whether `e` was recorded before `as_of.recorded` and stated by `as_of.stated`.
    fn known(&self, e: &ClaimEntry, as_of: AsOf) -> bool {
        as_of.recorded.is_none_or(|p| e.position < p)
            && as_of.stated.is_none_or(|t| e.stated.at <= t)
    }

    /// The current stance of `party` on `topic`, at `as_of`.
    pub fn current(&self, party: &str, topic: &str, as_of: AsOf) -> Option<&ClaimEntry> {
        self.claims
            .get(&(party.to_string(), topic.to_string()))?
            .iter()
            .filter(|e| self.in_force(e, as_of))
            .max_by_key(|e| (e.stated.at, e.position))
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
        let Some(all) = self.claims.get(&(party.to_string(), topic.to_string())) else {
            return Vec::new();
        };
        let mut known: Vec<&ClaimEntry> = all.iter().filter(|e| self.known(e, as_of)).collect();
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
                    in_force: self.in_force(entry, as_of),
                }
            })
            .collect()
    }
}
