//! The read use cases: positions with full provenance under both clocks, position history, statement
//! history with filters and page tokens, and single entities with their reviews and corrections.
//!
//! Every answer is assembled from one projection snapshot, so it reflects exactly one log prefix and
//! says which. The rules of positions are `domain::positions`; this module only gathers rows and
//! applies the clocks to corrections and reviews (a correction recorded after `as_of_recorded` did not
//! exist yet). Answers are this layer's own views (`view`), never the projections' rows.
mod view;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{App, AppError};
use crate::projection::rows::{ClaimRow, SourceRow, StatementRow};
use crate::projection::{Snapshot, StatementScan};
use claims_ledger_domain::decide::is_slug;
use claims_ledger_domain::model::{Mode, Span};
use claims_ledger_domain::positions::{current_of, history_of, AsOf, ClaimEntry, Ended};
use claims_ledger_domain::FieldViolation;
pub use view::{
    ClaimView, CorrectionView, EntityStatus, HistoryView, Origin, Page, PartyView, PositionView,
    ReviewView, SourceView, SpanView, Stamped, StatementDetail, StatementView,
};

/// Default code points of context around a span.
pub const DEFAULT_CONTEXT: usize = 80;
/// Most code points of context around a span.
pub const MAX_CONTEXT: usize = 2000;
/// History entries per position in `positions` unless asked otherwise.
pub const DEFAULT_HISTORY_IN_POSITIONS: usize = 100;
/// History entries in `position_history` unless asked otherwise, and the most either may ask for.
pub const MAX_HISTORY: usize = 1000;
/// Longest a query waits for the projection to reach its `min_position`.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// The transaction-time clock as a client gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedClock {
    /// Events at positions below this one.
    Position(u64),
    /// Events recorded at or before this time.
    Time(DateTime<Utc>),
}

/// Both clocks as a client gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clocks {
    pub stated: Option<DateTime<Utc>>,
    pub recorded: Option<RecordedClock>,
}

fn status_at(ended: Option<Ended>, recorded: Option<u64>) -> EntityStatus {
    match ended {
        Some(e) if recorded.is_none_or(|r| e.at() < r) => match e {
            Ended::Retracted { .. } => EntityStatus::Retracted,
            Ended::Superseded { .. } => EntityStatus::Superseded,
        },
        _ => EntityStatus::Active,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PositionsQuery {
    pub party_id: String,
    pub topic: Option<String>,
    pub clocks: Clocks,
    pub context: Option<usize>,
    /// Most history entries per position; `None` for the default.
    pub history_limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryQuery {
    pub party_id: String,
    pub topic: String,
    pub clocks: Clocks,
    pub since: Option<DateTime<Utc>>,
    pub context: Option<usize>,
    /// Most history entries; `None` for the default.
    pub history_limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatementsQuery {
    pub party_id: String,
    pub topic: Option<String>,
    pub stated_from: Option<DateTime<Utc>>,
    pub stated_to: Option<DateTime<Utc>>,
    pub modes: Vec<Mode>,
    pub oldest_first: bool,
    pub page_size: usize,
    pub page_token: String,
    pub context: Option<usize>,
}

fn violation(field: &str, description: impl Into<String>) -> FieldViolation {
    FieldViolation {
        field: field.to_string(),
        description: description.into(),
    }
}

fn check_slug(v: &mut Vec<FieldViolation>, field: &str, value: &str, required: bool) {
    if value.is_empty() {
        if required {
            v.push(violation(field, "required"));
        }
    } else if !is_slug(value) {
        v.push(violation(
            field,
            "must be a slug: lowercase a-z, 0-9 and single hyphens, 1..64 characters",
        ));
    }
}

fn check_context(v: &mut Vec<FieldViolation>, field: &str, context: Option<usize>) -> usize {
    match context {
        Some(c) if c > MAX_CONTEXT => {
            v.push(violation(field, format!("at most {MAX_CONTEXT}")));
            0
        }
        Some(c) => c,
        None => DEFAULT_CONTEXT,
    }
}

fn check_history_limit(v: &mut Vec<FieldViolation>, limit: Option<usize>, default: usize) -> usize {
    match limit {
        Some(0) | None => default,
        Some(n) if n > MAX_HISTORY => {
            v.push(violation("history_limit", format!("at most {MAX_HISTORY}")));
            default
        }
        Some(n) => n,
    }
}

fn done(v: Vec<FieldViolation>) -> Result<(), AppError> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(AppError::Invalid(v))
    }
}

/// Parses a UUID field, naming it on failure.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, AppError> {
    if value.is_empty() {
        return Err(AppError::invalid(field, "required"));
    }
    Uuid::parse_str(value).map_err(|_| AppError::invalid(field, "must be a UUID"))
}

/// `context` code points before and after `[start, end)` of `text`.
fn context_around(text: &str, start: usize, end: usize, context: usize) -> (String, String) {
    let before_from = start.saturating_sub(context);
    let before: String = text
        .chars()
        .skip(before_from)
        .take(start - before_from)
        .collect();
    let after: String = text.chars().skip(end).take(context).collect();
    (before, after)
}

/// Gathers provenance from one snapshot, caching sources (a statement's spans often share one).
struct Assembler<'s> {
    snap: &'s Snapshot<'s>,
    recorded: Option<u64>,
    context: usize,
    sources: HashMap<Uuid, Option<SourceRow>>,
}

impl<'s> Assembler<'s> {
    fn new(snap: &'s Snapshot<'s>, recorded: Option<u64>, context: usize) -> Self {
        Assembler {
            snap,
            recorded,
            context,
            sources: HashMap::new(),
        }
    }

    fn known(&self, position: u64) -> bool {
        self.recorded.is_none_or(|r| position < r)
    }

    fn source(&mut self, id: &Uuid) -> Result<Option<&SourceRow>, AppError> {
        if !self.sources.contains_key(id) {
            let row = self.snap.source(id)?;
            self.sources.insert(*id, row);
        }
        Ok(self.sources.get(id).and_then(|r| r.as_ref()))
    }

    fn span(&mut self, span: &Span) -> Result<SpanView, AppError> {
        let context = self.context;
        let Some(row) = self.source(&span.source_id)? else {
            return Ok(SpanView {
                span: span.clone(),
                before: String::new(),
                after: String::new(),
                source: None,
            });
        };
        let text = &row.source.text;
        let (before, after) = context_around(text, span.start as usize, span.end as usize, context);
        Ok(SpanView {
            span: span.clone(),
            before,
            after,
            source: Some(source_view(row, false)),
        })
    }

    fn corrections(&self, target: &Uuid) -> Result<Vec<CorrectionView>, AppError> {
        let mut rows = self.snap.corrections(target)?;
        rows.retain(|c| self.known(c.origin.position));
        Ok(rows.into_iter().map(CorrectionView::from).collect())
    }

    fn statement(&mut self, row: StatementRow) -> Result<StatementView, AppError> {
        let spans = row
            .statement
            .spans
            .iter()
            .map(|s| self.span(s))
            .collect::<Result<Vec<_>, _>>()?;
        let corrections = self.corrections(&row.statement.statement_id)?;
        Ok(StatementView {
            status: status_at(row.ended, self.recorded),
            spans,
            corrections,
            origin: Origin::from(&row.origin),
            topics: row.topics,
            statement: row.statement,
        })
    }

    fn claim(&mut self, row: ClaimRow) -> Result<ClaimView, AppError> {
        let statement_id = row.claim().statement_id;
        let statement_row = self.snap.statement(&statement_id)?.ok_or_else(|| {
            AppError::Internal(format!("claim names missing statement {statement_id}"))
        })?;
        let statement = self.statement(statement_row)?;
        let claim_id = row.claim().claim_id;
        let mut reviews = self.snap.reviews(&claim_id)?;
        reviews.retain(|r| self.known(r.origin.position));
        Ok(ClaimView {
            status: status_at(row.entry.ended, self.recorded),
            corrections: self.corrections(&claim_id)?,
            reviews: reviews.into_iter().map(ReviewView::from).collect(),
            statement,
            origin: Origin::from(&row.origin),
            stated: row.entry.stated,
            claim: row.entry.claim,
        })
    }

    /// The position of (`party`, `topic`) from its claim rows; `None` if nothing is known under the clocks.
    fn position(
        &mut self,
        party: &str,
        topic: &str,
        rows: Vec<ClaimRow>,
        as_of: AsOf,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Option<PositionView>, AppError> {
        let entries: Vec<ClaimEntry> = rows.iter().map(|r| r.entry.clone()).collect();
        let by_id: HashMap<Uuid, &ClaimRow> =
            rows.iter().map(|r| (r.claim().claim_id, r)).collect();
        let history = history_of(&entries, as_of);
        if history.is_empty() {
            return Ok(None);
        }
        let current_id = current_of(&entries, as_of).map(|e| e.claim.claim_id);
        // The start of the current run of equal stances among claims in force.
        let mut changed_at = None;
        let mut last_stance: Option<&str> = None;
        for h in history.iter().filter(|h| h.in_force) {
            if last_stance != Some(h.entry.claim.stance.as_str()) {
                changed_at = Some(h.entry.stated);
                last_stance = Some(h.entry.claim.stance.as_str());
            }
        }
        let mut current = None;
        let mut out = Vec::new();
        let in_range = |h: &&claims_ledger_domain::positions::HistoryEntry<'_>| {
            since.is_none_or(|s| h.entry.stated.period_end() > s)
        };
        // Only the latest `limit` entries in range are assembled; the rest are counted.
        let first_shown = history
            .iter()
            .filter(in_range)
            .count()
            .saturating_sub(limit);
        let mut seen = 0usize;
        for h in &history {
            let id = h.entry.claim.claim_id;
            let Some(row) = by_id.get(&id) else { continue };
            let is_current = current_id == Some(id);
            let mut shown = in_range(&h);
            if shown {
                shown = seen >= first_shown;
                seen += 1;
            }
            if !shown && !is_current {
                continue;
            }
            let view = self.claim((*row).clone())?;
            if is_current {
                current = Some(view.clone());
            }
            if shown {
                out.push(HistoryView {
                    claim: view,
                    changed: h.changed,
                    in_force: h.in_force,
                });
            }
        }
        Ok(Some(PositionView {
            party_id: party.to_string(),
            topic: topic.to_string(),
            current,
            history: out,
            changed_at,
            history_omitted: first_shown,
        }))
    }
}

fn source_view(row: &SourceRow, include_text: bool) -> SourceView {
    let mut source = row.source.clone();
    let text_length = source.text.chars().count() as u64;
    if !include_text {
        source.text = String::new();
    }
    SourceView {
        source,
        text_length,
        origin: Origin::from(&row.origin),
    }
}

/// What a statement page token carries: the filters it was made for and where the page ended.
fn filter_fingerprint(q: &StatementsQuery) -> [u8; 8] {
    let canonical = format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{}",
        q.party_id, q.topic, q.stated_from, q.stated_to, q.modes, q.oldest_first
    );
    let h = claims_ledger_log::sha256(canonical.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h[..8]);
    out
}

pub(super) fn bad_token() -> AppError {
    AppError::invalid(
        "page_token",
        "not a token this server issued for these filters; start again with an empty token",
    )
}

impl App {
    /// Waits until the projections have applied every event below `min_position`, at most `timeout`.
    pub async fn wait_for_projection(
        &self,
        min_position: u64,
        timeout: Duration,
    ) -> Result<(), AppError> {
        let p = &self.projections;
        if p.applied() >= min_position {
            return Ok(());
        }
        let mut rx = p.watch_applied();
        self.projection_wanted.notify_one();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|a| *a >= min_position).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(AppError::Unavailable),
            Err(_) => Err(AppError::DeadlineExceeded(format!(
                "the projections reached position {} of the {min_position} asked for before the deadline",
                p.applied()
            ))),
        }
    }

    /// The log position bounding what was recorded at or before `t`: recorded times never go
    /// backwards in the log, so this is a binary search.
    pub fn position_recorded_by(&self, t: DateTime<Utc>) -> Result<u64, AppError> {
        let (mut lo, mut hi) = (0u64, self.log.durable_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let rec = self
                .log
                .get(mid)?
                .ok_or_else(|| AppError::Internal(format!("missing event {mid}")))?;
            if rec.recorded_at <= t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Resolves the clocks a client gave into the fold's `AsOf`.
    pub fn resolve_clocks(&self, clocks: &Clocks) -> Result<AsOf, AppError> {
        let recorded = match clocks.recorded {
            None => None,
            Some(RecordedClock::Position(p)) => {
                let end = self.log.durable_count();
                if p > end {
                    return Err(AppError::OutOfRange(format!(
                        "as_of_recorded.position {p} is beyond the end of the log ({end} events)"
                    )));
                }
                Some(p)
            }
            Some(RecordedClock::Time(t)) => Some(self.position_recorded_by(t)?),
        };
        Ok(AsOf {
            stated: clocks.stated,
            recorded,
        })
    }

    fn party_must_exist(snap: &Snapshot<'_>, party: &str) -> Result<PartyView, AppError> {
        snap.party(party)?
            .map(PartyView::from)
            .ok_or_else(|| AppError::NotFound(format!("party {party:?}")))
    }

    /// Parties in id order.
    pub fn list_parties(
        &self,
        page_size: usize,
        page_token: &str,
    ) -> Result<Stamped<Page<PartyView>>, AppError> {
        let after = if page_token.is_empty() {
            None
        } else {
            let bytes = hex::decode(page_token).map_err(|_| bad_token())?;
            let id = String::from_utf8(bytes).map_err(|_| bad_token())?;
            if !is_slug(&id) {
                return Err(bad_token());
            }
            Some(id)
        };
        let snap = self.projections.snapshot();
        let mut items: Vec<PartyView> = snap
            .parties(after.as_deref(), page_size + 1)?
            .into_iter()
            .map(PartyView::from)
            .collect();
        let next_page_token = if items.len() > page_size {
            items.truncate(page_size);
            items
                .last()
                .map(|p| hex::encode(p.party.party_id.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Stamped {
            applied: snap.applied(),
            value: Page {
                items,
                next_page_token,
            },
        })
    }

    /// One party.
    pub fn get_party(&self, party_id: &str) -> Result<Stamped<PartyView>, AppError> {
        let mut v = Vec::new();
        check_slug(&mut v, "party_id", party_id, true);
        done(v)?;
        let snap = self.projections.snapshot();
        Ok(Stamped {
            value: Self::party_must_exist(&snap, party_id)?,
            applied: snap.applied(),
        })
    }

    /// The positions of a party (every topic, or one) under both clocks.
    pub fn positions(&self, q: &PositionsQuery) -> Result<Stamped<Vec<PositionView>>, AppError> {
        let mut v = Vec::new();
        check_slug(&mut v, "party_id", &q.party_id, true);
        check_slug(&mut v, "topic", q.topic.as_deref().unwrap_or(""), false);
        let context = check_context(&mut v, "context_chars", q.context);
        let limit = check_history_limit(&mut v, q.history_limit, DEFAULT_HISTORY_IN_POSITIONS);
        done(v)?;
        let as_of = self.resolve_clocks(&q.clocks)?;
        let snap = self.projections.snapshot();
        Self::party_must_exist(&snap, &q.party_id)?;
        let topics = match &q.topic {
            Some(t) => vec![t.clone()],
            None => snap.topics(&q.party_id)?,
        };
        let mut asm = Assembler::new(&snap, as_of.recorded, context);
        let mut out = Vec::new();
        for topic in topics {
            let rows = snap.claims_on(&q.party_id, &topic)?;
            if let Some(p) = asm.position(&q.party_id, &topic, rows, as_of, None, limit)? {
                out.push(p);
            }
        }
        Ok(Stamped {
            value: out,
            applied: snap.applied(),
        })
    }

    /// The history of a party on one topic.
    pub fn position_history(&self, q: &HistoryQuery) -> Result<Stamped<PositionView>, AppError> {
        let mut v = Vec::new();
        check_slug(&mut v, "party_id", &q.party_id, true);
        check_slug(&mut v, "topic", &q.topic, true);
        let context = check_context(&mut v, "context_chars", q.context);
        let limit = check_history_limit(&mut v, q.history_limit, MAX_HISTORY);
        done(v)?;
        let as_of = self.resolve_clocks(&q.clocks)?;
        let snap = self.projections.snapshot();
        Self::party_must_exist(&snap, &q.party_id)?;
        let rows = snap.claims_on(&q.party_id, &q.topic)?;
        let mut asm = Assembler::new(&snap, as_of.recorded, context);
        let position = asm
            .position(&q.party_id, &q.topic, rows, as_of, q.since, limit)?
            .unwrap_or(PositionView {
                party_id: q.party_id.clone(),
                topic: q.topic.clone(),
                current: None,
                history: Vec::new(),
                changed_at: None,
                history_omitted: 0,
            });
        Ok(Stamped {
            value: position,
            applied: snap.applied(),
        })
    }

    /// A party's statements, filtered and paged.
    pub fn statements(
        &self,
        q: &StatementsQuery,
    ) -> Result<Stamped<Page<StatementView>>, AppError> {
        let mut v = Vec::new();
        check_slug(&mut v, "party_id", &q.party_id, true);
        check_slug(&mut v, "topic", q.topic.as_deref().unwrap_or(""), false);
        let context = check_context(&mut v, "context_chars", q.context);
        if let (Some(from), Some(to)) = (q.stated_from, q.stated_to) {
            if from >= to {
                v.push(violation("stated_to", "must be after stated_from"));
            }
        }
        done(v)?;
        let fingerprint = filter_fingerprint(q);
        let after = if q.page_token.is_empty() {
            None
        } else {
            let bytes = hex::decode(&q.page_token).map_err(|_| bad_token())?;
            let prefix = crate::projection::rows::party_statement_prefix(&q.party_id);
            if bytes.len() != 8 + prefix.len() + 16
                || bytes[..8] != fingerprint
                || !bytes[8..].starts_with(&prefix)
            {
                return Err(bad_token());
            }
            Some(bytes[8..].to_vec())
        };
        let snap = self.projections.snapshot();
        Self::party_must_exist(&snap, &q.party_id)?;
        let scan = StatementScan {
            party: &q.party_id,
            newest_first: !q.oldest_first,
            after: after.as_deref(),
        };
        let mut asm = Assembler::new(&snap, None, context);
        let mut items = Vec::new();
        let mut last_key = Vec::new();
        let mut more = false;
        for item in snap.party_statements(&scan)? {
            let (key, row) = item?;
            let at = row.statement.stated_time.at;
            // The index is in stated-time order: stop once past the range.
            if q.oldest_first && q.stated_to.is_some_and(|to| at >= to) {
                break;
            }
            if !q.oldest_first && q.stated_from.is_some_and(|from| at < from) {
                break;
            }
            let in_range =
                q.stated_from.is_none_or(|from| at >= from) && q.stated_to.is_none_or(|to| at < to);
            let topic_ok = q.topic.as_ref().is_none_or(|t| row.topics.contains(t));
            let mode_ok = q.modes.is_empty() || q.modes.contains(&row.statement.mode);
            if !(in_range && topic_ok && mode_ok) {
                continue;
            }
            if items.len() == q.page_size {
                more = true;
                break;
            }
            last_key = key;
            items.push(asm.statement(row)?);
        }
        let next_page_token = if more {
            let mut token = fingerprint.to_vec();
            token.extend_from_slice(&last_key);
            hex::encode(token)
        } else {
            String::new()
        };
        Ok(Stamped {
            value: Page {
                items,
                next_page_token,
            },
            applied: snap.applied(),
        })
    }

    /// One statement with its claims and the statement it reports.
    pub fn statement_detail(
        &self,
        id: &Uuid,
        context: Option<usize>,
    ) -> Result<Stamped<StatementDetail>, AppError> {
        let mut v = Vec::new();
        let context = check_context(&mut v, "context_chars", context);
        done(v)?;
        let snap = self.projections.snapshot();
        let row = snap
            .statement(id)?
            .ok_or_else(|| AppError::NotFound(format!("statement {id}")))?;
        let mut asm = Assembler::new(&snap, None, context);
        let mut claims = Vec::new();
        for claim_id in &row.claims {
            if let Some(c) = snap.claim(claim_id)? {
                claims.push(asm.claim(c)?);
            }
        }
        let reports = match row.statement.reports_statement_id {
            Some(r) => match snap.statement(&r)? {
                Some(rrow) => Some(asm.statement(rrow)?),
                None => None,
            },
            None => None,
        };
        let statement = asm.statement(row)?;
        Ok(Stamped {
            value: StatementDetail {
                statement,
                claims,
                reports,
            },
            applied: snap.applied(),
        })
    }

    /// One claim with full provenance.
    pub fn claim_detail(
        &self,
        id: &Uuid,
        context: Option<usize>,
    ) -> Result<Stamped<ClaimView>, AppError> {
        let mut v = Vec::new();
        let context = check_context(&mut v, "context_chars", context);
        done(v)?;
        let snap = self.projections.snapshot();
        let row = snap
            .claim(id)?
            .ok_or_else(|| AppError::NotFound(format!("claim {id}")))?;
        let mut asm = Assembler::new(&snap, None, context);
        Ok(Stamped {
            value: asm.claim(row)?,
            applied: snap.applied(),
        })
    }

    /// One source, with its text if asked.
    pub fn source_detail(
        &self,
        id: &Uuid,
        include_text: bool,
    ) -> Result<Stamped<SourceView>, AppError> {
        let snap = self.projections.snapshot();
        let row = snap
            .source(id)?
            .ok_or_else(|| AppError::NotFound(format!("source {id}")))?;
        Ok(Stamped {
            value: source_view(&row, include_text),
            applied: snap.applied(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_cut_at_code_points_and_text_edges() {
        let text = "ab\u{201c}cd\u{201d}ef";
        assert_eq!(
            context_around(text, 3, 5, 2),
            ("b\u{201c}".to_string(), "\u{201d}e".to_string())
        );
        assert_eq!(
            context_around(text, 0, 1, 5),
            (String::new(), "b\u{201c}cd\u{201d}".to_string())
        );
        assert_eq!(
            context_around(text, 6, 8, 10),
            ("ab\u{201c}cd\u{201d}".to_string(), String::new())
        );
    }

    #[test]
    fn status_follows_the_recorded_clock() {
        let ended = Some(Ended::Retracted { at: 10 });
        assert_eq!(status_at(ended, None), EntityStatus::Retracted);
        assert_eq!(status_at(ended, Some(10)), EntityStatus::Active);
        assert_eq!(status_at(ended, Some(11)), EntityStatus::Retracted);
        assert_eq!(status_at(None, None), EntityStatus::Active);
    }
}
