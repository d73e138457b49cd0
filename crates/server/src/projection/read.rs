//! Reads: one consistent view of the serving generation (a shared lock held for one query, so an
//! answer never mixes two checkpoints) and the lookups and scans the query use cases are built from.
use std::sync::RwLockReadGuard;

use uuid::Uuid;

use super::rows::*;
use super::{corrupt, get_row, Active, ProjectionError, Projections};

/// A raw row: key and value bytes.
pub type Row = (Vec<u8>, Vec<u8>);

/// One consistent view of the serving generation.
pub struct Snapshot<'a> {
    guard: RwLockReadGuard<'a, Active>,
}

/// Where a statement listing starts and which way it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementScan<'k> {
    pub party: &'k str,
    pub newest_first: bool,
    /// Continue after this index key (from a previous page).
    pub after: Option<&'k [u8]>,
}

impl Snapshot<'_> {
    fn tree(&self) -> &sled::Tree {
        &self.guard.tree
    }

    /// Events this view reflects: positions `[0, applied)`.
    pub fn applied(&self) -> u64 {
        self.guard.checkpoint.applied
    }

    pub fn party(&self, id: &str) -> Result<Option<PartyRow>, ProjectionError> {
        get_row(self.tree(), &party_key(id))
    }

    /// Up to `limit` parties with ids after `after`, in id order.
    pub fn parties(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PartyRow>, ProjectionError> {
        let start = match after {
            // The smallest key after `party_key(a)`.
            Some(a) => {
                let mut k = party_key(a);
                k.push(0);
                k
            }
            None => vec![PARTY],
        };
        let mut out = Vec::new();
        for item in self.tree().range(start..vec![PARTY + 1]).take(limit) {
            let (k, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?);
        }
        Ok(out)
    }

    pub fn source(&self, id: &Uuid) -> Result<Option<SourceRow>, ProjectionError> {
        get_row(self.tree(), &uuid_key(SOURCE, id))
    }

    pub fn statement(&self, id: &Uuid) -> Result<Option<StatementRow>, ProjectionError> {
        get_row(self.tree(), &uuid_key(STATEMENT, id))
    }

    pub fn claim(&self, id: &Uuid) -> Result<Option<ClaimRow>, ProjectionError> {
        get_row(self.tree(), &uuid_key(CLAIM, id))
    }

    fn rows_under<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<T>, ProjectionError> {
        let mut out = Vec::new();
        for item in self.tree().scan_prefix(prefix) {
            let (k, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?);
        }
        Ok(out)
    }

    /// Reviews of a claim, in log order.
    pub fn reviews(&self, claim: &Uuid) -> Result<Vec<ReviewRow>, ProjectionError> {
        self.rows_under(&uuid_key(REVIEW, claim))
    }

    /// Corrections targeting a statement or claim, in log order.
    pub fn corrections(&self, target: &Uuid) -> Result<Vec<CorrectionRow>, ProjectionError> {
        self.rows_under(&uuid_key(CORRECTION, target))
    }

    /// Topics `party` has claims on, in order: one seek per topic, not one read per claim.
    pub fn topics(&self, party: &str) -> Result<Vec<String>, ProjectionError> {
        let prefix = fact_prefix(party, None);
        let Some(end) = prefix_end(&prefix) else {
            return Ok(Vec::new());
        };
        let mut topics = Vec::new();
        let mut start = prefix.clone();
        while let Some(item) = self.tree().range(start.clone()..end.clone()).next() {
            let (k, _) = item?;
            let topic = fact_topic(&k, prefix.len())
                .ok_or_else(|| corrupt(&k, "malformed fact key"))?
                .to_string();
            // Past every key of this topic: its prefix ends in 0x00, so 0x01 sorts after them all.
            start = fact_prefix(party, Some(&topic));
            if let Some(last) = start.last_mut() {
                *last = 1;
            }
            topics.push(topic);
        }
        Ok(topics)
    }

    /// The claims behind (`party`, `topic`), in assertion order.
    pub fn claims_on(&self, party: &str, topic: &str) -> Result<Vec<ClaimRow>, ProjectionError> {
        let mut out = Vec::new();
        for item in self.tree().scan_prefix(fact_prefix(party, Some(topic))) {
            let (k, v) = item?;
            let id = Uuid::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            let row = self
                .claim(&id)?
                .ok_or_else(|| corrupt(&k, format!("fact names missing claim {id}")))?;
            out.push(row);
        }
        Ok(out)
    }

    /// A party's statements from its history index, in stated-time order (ties by position) or the
    /// reverse, after a previous page's last key. Each comes with its index key, for the next page.
    pub fn party_statements(
        &self,
        scan: &StatementScan<'_>,
    ) -> Result<
        impl Iterator<Item = Result<(Vec<u8>, StatementRow), ProjectionError>> + '_,
        ProjectionError,
    > {
        let prefix = party_statement_prefix(scan.party);
        let end = prefix_end(&prefix).unwrap_or_default();
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match (scan.newest_first, scan.after) {
                (false, None) => Box::new(self.tree().range(prefix.clone()..end)),
                (false, Some(a)) => {
                    let mut start = a.to_vec();
                    start.push(0);
                    Box::new(self.tree().range(start..end))
                }
                (true, None) => Box::new(self.tree().range(prefix.clone()..end).rev()),
                (true, Some(a)) => Box::new(self.tree().range(prefix.clone()..a.to_vec()).rev()),
            };
        Ok(iter.map(move |item| {
            let (k, v) = item?;
            let id = Uuid::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            let row = self
                .statement(&id)?
                .ok_or_else(|| corrupt(&k, format!("index names missing statement {id}")))?;
            Ok((k.to_vec(), row))
        }))
    }

    /// Every row of this generation except the checkpoint, in key order: for comparing generations.
    pub fn dump(&self) -> Result<Vec<Row>, ProjectionError> {
        let mut out = Vec::new();
        for item in self.tree().iter() {
            let (k, v) = item?;
            if k.as_ref() != CHECKPOINT {
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Projections {
    /// A consistent view for one query: the serving generation at one checkpoint.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { guard: self.read() }
    }
}
