//! What the query use cases answer with: views assembled from the projections but owned by this
//! layer, so that the transport depends on the use cases and the domain, never on how the read
//! models store their rows. Each view carries the domain values and where they came from in the log.
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::projection::rows;
use claims_ledger_domain::event::{Claim, Correction, Party, Review, Source, Statement};
use claims_ledger_domain::model::{Span, StatedTime};

/// Where a fact came from in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub event_id: Uuid,
    pub position: u64,
    pub stream: String,
    pub stream_revision: u64,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: String,
}

impl From<&rows::Origin> for Origin {
    fn from(o: &rows::Origin) -> Origin {
        Origin {
            event_id: o.event_id,
            position: o.position,
            stream: o.stream.clone(),
            stream_revision: o.stream_revision,
            recorded_at: o.recorded_at,
            recorded_by: o.recorded_by.clone(),
        }
    }
}

/// Whether a statement or claim counts under the clock asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityStatus {
    Active,
    Retracted,
    Superseded,
}

/// A party as registered, with its latest update.
#[derive(Debug, Clone, PartialEq)]
pub struct PartyView {
    pub party: Party,
    pub registered: Origin,
    pub last_updated: Option<Origin>,
}

impl From<rows::PartyRow> for PartyView {
    fn from(row: rows::PartyRow) -> PartyView {
        PartyView {
            registered: Origin::from(&row.registered),
            last_updated: row.last_updated.as_ref().map(Origin::from),
            party: row.party,
        }
    }
}

/// A review of a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewView {
    pub review: Review,
    pub origin: Origin,
}

impl From<rows::ReviewRow> for ReviewView {
    fn from(row: rows::ReviewRow) -> ReviewView {
        ReviewView {
            origin: Origin::from(&row.origin),
            review: row.review,
        }
    }
}

/// A correction of a statement or claim.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrectionView {
    pub correction: Correction,
    pub origin: Origin,
}

impl From<rows::CorrectionRow> for CorrectionView {
    fn from(row: rows::CorrectionRow) -> CorrectionView {
        CorrectionView {
            origin: Origin::from(&row.origin),
            correction: row.correction,
        }
    }
}

/// A source's metadata; the text only when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceView {
    pub source: Source,
    pub text_length: u64,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpanView {
    pub span: Span,
    pub before: String,
    pub after: String,
    pub source: Option<SourceView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatementView {
    pub statement: Statement,
    pub origin: Origin,
    /// Topics of the claims it asserts.
    pub topics: BTreeSet<String>,
    pub spans: Vec<SpanView>,
    pub status: EntityStatus,
    pub corrections: Vec<CorrectionView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimView {
    pub claim: Claim,
    /// When the statement asserting it was made.
    pub stated: StatedTime,
    pub origin: Origin,
    pub statement: StatementView,
    pub status: EntityStatus,
    pub reviews: Vec<ReviewView>,
    pub corrections: Vec<CorrectionView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryView {
    pub claim: ClaimView,
    pub changed: bool,
    pub in_force: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PositionView {
    pub party_id: String,
    pub topic: String,
    pub current: Option<ClaimView>,
    pub history: Vec<HistoryView>,
    pub changed_at: Option<StatedTime>,
    /// Older history entries left out by the limit.
    pub history_omitted: usize,
}

/// A statement with the claims it asserts and the one it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementDetail {
    pub statement: StatementView,
    pub claims: Vec<ClaimView>,
    pub reports: Option<StatementView>,
}

/// An answer and the log prefix it reflects.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped<T> {
    pub value: T,
    /// Events applied: positions `[0, applied)`.
    pub applied: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}
