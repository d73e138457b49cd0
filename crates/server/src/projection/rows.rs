//! Rows of the read models and their keys. Every row is JSON (like the log's records) so that a dump of
//! two generations can be compared byte for byte, and keys sort the way the queries scan them.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

use claims_ledger_domain::event::{Claim, Correction, Party, Review, Source, Statement};
use claims_ledger_domain::positions::{ClaimEntry, Ended};
use claims_ledger_log::RecordedEvent;

/// Where a row's fact came from in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub event_id: Uuid,
    pub position: u64,
    pub stream: String,
    pub stream_revision: u64,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: String,
}

impl Origin {
    pub fn of(rec: &RecordedEvent) -> Origin {
        Origin {
            event_id: rec.event_id,
            position: rec.position,
            stream: rec.stream.clone(),
            stream_revision: rec.stream_revision,
            recorded_at: rec.recorded_at,
            recorded_by: rec.recorded_by.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartyRow {
    pub party: Party,
    pub registered: Origin,
    pub last_updated: Option<Origin>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRow {
    pub source: Source,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementRow {
    pub statement: Statement,
    pub origin: Origin,
    pub ended: Option<Ended>,
    /// Topics of the claims it asserts.
    pub topics: BTreeSet<String>,
    /// The claims it asserts, in log order.
    pub claims: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRow {
    /// The claim with its stated time and the corrections that ended it or its statement.
    pub entry: ClaimEntry,
    pub origin: Origin,
}

impl ClaimRow {
    pub fn claim(&self) -> &Claim {
        &self.entry.claim
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewRow {
    pub review: Review,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectionRow {
    pub correction: Correction,
    pub origin: Origin,
}

// Key prefixes. Slugs are [a-z0-9-], so 0x00 separates them unambiguously.
pub(crate) const CHECKPOINT: &[u8] = b"!checkpoint";
pub(crate) const PARTY: u8 = b'p';
pub(crate) const SOURCE: u8 = b'o';
pub(crate) const STATEMENT: u8 = b't';
pub(crate) const CLAIM: u8 = b'c';
pub(crate) const REVIEW: u8 = b'r';
pub(crate) const CORRECTION: u8 = b'k';
/// party, topic, assertion position → claim id: the claims behind a position.
pub(crate) const FACT: u8 = b'f';
/// party, stated time, position → statement id: a party's statement history.
pub(crate) const PARTY_STATEMENT: u8 = b'h';

pub(crate) fn party_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(PARTY);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn uuid_key(prefix: u8, id: &Uuid) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..].copy_from_slice(id.as_bytes());
    k
}

pub(crate) fn uuid_pos_key(prefix: u8, id: &Uuid, pos: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..17].copy_from_slice(&uuid_key(prefix, id));
    k[17..].copy_from_slice(&pos.to_be_bytes());
    k
}

pub(crate) fn fact_prefix(party: &str, topic: Option<&str>) -> Vec<u8> {
    let mut k = vec![FACT];
    k.extend_from_slice(party.as_bytes());
    k.push(0);
    if let Some(t) = topic {
        k.extend_from_slice(t.as_bytes());
        k.push(0);
    }
    k
}

pub(crate) fn fact_key(party: &str, topic: &str, pos: u64) -> Vec<u8> {
    let mut k = fact_prefix(party, Some(topic));
    k.extend_from_slice(&pos.to_be_bytes());
    k
}

/// Topic of a fact key under `fact_prefix(party, None)`.
pub(crate) fn fact_topic(key: &[u8], prefix_len: usize) -> Option<&str> {
    let rest = key.get(prefix_len..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

pub(crate) fn party_statement_prefix(party: &str) -> Vec<u8> {
    let mut k = vec![PARTY_STATEMENT];
    k.extend_from_slice(party.as_bytes());
    k.push(0);
    k
}

/// Microseconds since the epoch, offset so that byte order is time order (negative times included).
pub(crate) fn time_key(t: DateTime<Utc>) -> [u8; 8] {
    ((t.timestamp_micros() as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn party_statement_key(party: &str, stated: DateTime<Utc>, pos: u64) -> Vec<u8> {
    let mut k = party_statement_prefix(party);
    k.extend_from_slice(&time_key(stated));
    k.extend_from_slice(&pos.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn time_keys_sort_like_times_across_the_epoch() {
        let times = [
            Utc.with_ymd_and_hms(1900, 1, 1, 0, 0, 0).single(),
            Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).single(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).single(),
            Utc.with_ymd_and_hms(2022, 3, 29, 0, 0, 0).single(),
        ];
        let keys: Vec<[u8; 8]> = times
            .iter()
            .map(|t| time_key(t.expect("valid fixture")))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn fact_topics_read_back_from_keys() {
        let prefix = fact_prefix("russia", None);
        let key = fact_key("russia", "negotiation-venue", 7);
        assert_eq!(fact_topic(&key, prefix.len()), Some("negotiation-venue"));
    }
}
