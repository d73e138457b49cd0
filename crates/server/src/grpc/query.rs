//! `claimsledger.v1.Query` and `claimsledger.v1.Admin`: convert requests to `app::query` calls and
//! views back to messages. Each query first waits (bounded by the call's deadline) for the projection
//! to reach the request's `min_position`, then runs on a blocking thread, since sled reads are
//! synchronous.
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert::{
    claim_payload, correction_payload, from_ts, mode, party_payload, review_payload,
    source_payload, stated_time_pb, statement_payload, ts,
};
use super::{on_blocking_thread, page_size, pb};
use crate::app::query::{
    parse_id, ClaimView, Clocks, CorrectionView, EntityStatus, HistoryQuery, Origin, PartyView,
    PositionView, PositionsQuery, RecordedClock, ReviewView, SourceView, SpanView, StatementView,
    StatementsQuery, MAX_WAIT,
};
use crate::app::{App, AppError};
use claims_ledger_domain::model::Span;

const DEFAULT_PARTIES: u32 = 100;
const MAX_PARTIES: u32 = 500;
const DEFAULT_STATEMENTS: u32 = 50;
const MAX_STATEMENTS: u32 = 200;

pub struct QueryService {
    app: App,
}

impl QueryService {
    pub fn new(app: App) -> Self {
        QueryService { app }
    }
}

/// The call's deadline from `grpc-timeout` (e.g. `500m`, `2S`), capped at [`MAX_WAIT`].
fn wait_budget<T>(req: &Request<T>) -> Duration {
    let parsed = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
            let n: u64 = digits.parse().ok()?;
            Some(match unit {
                "H" => Duration::from_secs(n.saturating_mul(3600)),
                "M" => Duration::from_secs(n.saturating_mul(60)),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                "n" => Duration::from_nanos(n),
                _ => return None,
            })
        });
    parsed.map_or(MAX_WAIT, |d| d.min(MAX_WAIT))
}

/// Waits for the request's `min_position`, then runs `f` on a blocking thread.
async fn answer<T, R>(
    app: &App,
    req: &Request<T>,
    consistency: Option<&pb::ReadConsistency>,
    f: impl FnOnce(&App) -> Result<R, AppError> + Send + 'static,
) -> Result<R, Status>
where
    R: Send + 'static,
{
    let min = consistency.map_or(0, |c| c.min_position);
    app.wait_for_projection(min, wait_budget(req)).await?;
    on_blocking_thread(app, f).await
}

fn stamp(applied: u64) -> Option<pb::ReadStamp> {
    Some(pb::ReadStamp {
        applied_count: applied,
    })
}

fn origin_pb(o: &Origin) -> pb::Origin {
    pb::Origin {
        event_id: o.event_id.to_string(),
        position: o.position,
        stream: o.stream.clone(),
        stream_revision: o.stream_revision,
        recorded_at: Some(ts(&o.recorded_at)),
        recorded_by: o.recorded_by.clone(),
    }
}

fn party_pb(p: &PartyView) -> pb::PartyView {
    pb::PartyView {
        party: Some(party_payload(&p.party)),
        registered: Some(origin_pb(&p.registered)),
        last_updated: p.last_updated.as_ref().map(origin_pb),
    }
}

fn source_pb(s: &SourceView) -> pb::SourceView {
    pb::SourceView {
        source: Some(source_payload(&s.source)),
        text_length: s.text_length,
        origin: Some(origin_pb(&s.origin)),
    }
}

fn span_pb(s: &Span) -> pb::Span {
    pb::Span {
        source_id: s.source_id.to_string(),
        start: s.start,
        end: s.end,
        exact: s.exact.clone(),
    }
}

fn span_view_pb(s: &SpanView) -> pb::SpanView {
    pb::SpanView {
        span: Some(span_pb(&s.span)),
        before: s.before.clone(),
        after: s.after.clone(),
        source: s.source.as_ref().map(source_pb),
    }
}

fn status_pb(s: EntityStatus) -> i32 {
    match s {
        EntityStatus::Active => pb::EntityStatus::Active,
        EntityStatus::Retracted => pb::EntityStatus::Retracted,
        EntityStatus::Superseded => pb::EntityStatus::Superseded,
    }
    .into()
}

fn correction_pb(c: &CorrectionView) -> pb::CorrectionView {
    pb::CorrectionView {
        correction: Some(correction_payload(&c.correction)),
        origin: Some(origin_pb(&c.origin)),
    }
}

fn review_pb(r: &ReviewView) -> pb::ReviewView {
    pb::ReviewView {
        review: Some(review_payload(&r.review)),
        origin: Some(origin_pb(&r.origin)),
    }
}

fn statement_pb(s: &StatementView) -> pb::StatementView {
    pb::StatementView {
        statement: Some(statement_payload(&s.statement)),
        origin: Some(origin_pb(&s.origin)),
        spans: s.spans.iter().map(span_view_pb).collect(),
        status: status_pb(s.status),
        corrections: s.corrections.iter().map(correction_pb).collect(),
        topics: s.topics.iter().cloned().collect(),
    }
}

fn claim_pb(c: &ClaimView) -> pb::ClaimView {
    pb::ClaimView {
        claim: Some(claim_payload(&c.claim)),
        origin: Some(origin_pb(&c.origin)),
        statement: Some(statement_pb(&c.statement)),
        status: status_pb(c.status),
        reviews: c.reviews.iter().map(review_pb).collect(),
        corrections: c.corrections.iter().map(correction_pb).collect(),
    }
}

fn position_pb(p: &PositionView) -> pb::Position {
    pb::Position {
        party_id: p.party_id.clone(),
        topic: p.topic.clone(),
        current: p.current.as_ref().map(claim_pb),
        history: p
            .history
            .iter()
            .map(|h| pb::HistoryEntry {
                claim: Some(claim_pb(&h.claim)),
                changed: h.changed,
                changed_at: Some(stated_time_pb(&h.claim.stated)),
                in_force: h.in_force,
            })
            .collect(),
        changed_at: p.changed_at.as_ref().map(stated_time_pb),
        history_omitted: u32::try_from(p.history_omitted).unwrap_or(u32::MAX),
    }
}

fn clocks(
    stated: &Option<prost_types::Timestamp>,
    recorded: &Option<pb::AsOfRecorded>,
) -> Result<Clocks, AppError> {
    let recorded = match recorded.as_ref().and_then(|r| r.at.as_ref()) {
        None => None,
        Some(pb::as_of_recorded::At::Position(p)) => Some(RecordedClock::Position(*p)),
        Some(pb::as_of_recorded::At::Time(t)) => {
            from_ts(&Some(*t), "as_of_recorded.time")?.map(RecordedClock::Time)
        }
    };
    Ok(Clocks {
        stated: from_ts(stated, "as_of_stated")?,
        recorded,
    })
}

/// A numeric option where 0 means "the default".
fn nonzero(c: u32) -> Option<usize> {
    (c != 0).then_some(c as usize)
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[tonic::async_trait]
impl pb::query_server::Query for QueryService {
    async fn list_parties(
        &self,
        req: Request<pb::ListPartiesRequest>,
    ) -> Result<Response<pb::ListPartiesResponse>, Status> {
        let r = req.get_ref().clone();
        let size = page_size("page_size", r.page_size, DEFAULT_PARTIES, MAX_PARTIES)?;
        let out = answer(&self.app, &req, r.consistency.as_ref(), move |app| {
            app.list_parties(size, &r.page_token)
        })
        .await?;
        Ok(Response::new(pb::ListPartiesResponse {
            parties: out.value.items.iter().map(party_pb).collect(),
            next_page_token: out.value.next_page_token,
            stamp: stamp(out.applied),
        }))
    }

    async fn get_party(
        &self,
        req: Request<pb::GetPartyRequest>,
    ) -> Result<Response<pb::GetPartyResponse>, Status> {
        let r = req.get_ref().clone();
        let out = answer(&self.app, &req, r.consistency.as_ref(), move |app| {
            app.get_party(&r.party_id)
        })
        .await?;
        Ok(Response::new(pb::GetPartyResponse {
            party: Some(party_pb(&out.value)),
            stamp: stamp(out.applied),
        }))
    }

    async fn get_positions(
        &self,
        req: Request<pb::GetPositionsRequest>,
    ) -> Result<Response<pb::GetPositionsResponse>, Status> {
        let r = req.get_ref().clone();
        let q = PositionsQuery {
            party_id: r.party_id,
            topic: opt(&r.topic),
            clocks: clocks(&r.as_of_stated, &r.as_of_recorded)?,
            context: nonzero(r.context_chars),
            history_limit: nonzero(r.history_limit),
        };
        let out = answer(&self.app, &req, r.consistency.as_ref(), move |app| {
            app.positions(&q)
        })
        .await?;
        Ok(Response::new(pb::GetPositionsResponse {
            positions: out.value.iter().map(position_pb).collect(),
            stamp: stamp(out.applied),
        }))
    }

    async fn get_position_history(
        &self,
        req: Request<pb::GetPositionHistoryRequest>,
    ) -> Result<Response<pb::GetPositionHistoryResponse>, Status> {
        let r = req.get_ref().clone();
        let q = HistoryQuery {
            party_id: r.party_id,
            topic: r.topic,
            clocks: clocks(&r.as_of_stated, &r.as_of_recorded)?,
            since: from_ts(&r.since, "since")?,
            context: nonzero(r.context_chars),
            history_limit: nonzero(r.history_limit),
        };
        let out = answer(&self.app, &req, r.consistency.as_ref(), move |app| {
            app.position_history(&q)
        })
        .await?;
        Ok(Response::new(pb::GetPositionHistoryResponse {
            position: Some(position_pb(&out.value)),
            stamp: stamp(out.applied),
        }))
    }

    async fn list_statements(
        &self,
        req: Request<pb::ListStatementsRequest>,
    ) -> Result<Response<pb::ListStatementsResponse>, Status> {
        let r = req.get_ref().clone();
        let mut modes = Vec::new();
        for (i, m) in r.modes.iter().enumerate() {
            modes.push(mode(*m).ok_or_else(|| {
                AppError::invalid(
                    format!("modes[{i}]"),
                    format!("unknown or unspecified mode {m}"),
                )
            })?);
        }
        let oldest_first = match pb::Order::try_from(r.order) {
            Ok(pb::Order::OldestFirst) => true,
            Ok(_) => false,
            Err(_) => {
                return Err(AppError::invalid("order", format!("unknown order {}", r.order)).into())
            }
        };
        let q = StatementsQuery {
            party_id: r.party_id,
            topic: opt(&r.topic),
            stated_from: from_ts(&r.stated_from, "stated_from")?,
            stated_to: from_ts(&r.stated_to, "stated_to")?,
            modes,
            oldest_first,
            page_size: page_size("page_size", r.page_size, DEFAULT_STATEMENTS, MAX_STATEMENTS)?,
            page_token: r.page_token,
            context: nonzero(r.context_chars),
        };
        let out = answer(&self.app, &req, r.consistency.as_ref(), move |app| {
            app.statements(&q)
        })
        .await?;
        Ok(Response::new(pb::ListStatementsResponse {
            statements: out.value.items.iter().map(statement_pb).collect(),
            next_page_token: out.value.next_page_token,
            stamp: stamp(out.applied),
        }))
    }

    async fn get_statement(
        &self,
        req: Request<pb::GetStatementRequest>,
    ) -> Result<Response<pb::GetStatementResponse>, Status> {
        let r = req.get_ref().clone();
        let id = parse_id("statement_id", &r.statement_id)?;
        let out = answer(&self.app, &req, r.consistency.as_ref(), move |app| {
            app.statement_detail(&id, nonzero(r.context_chars))
        })
        .await?;
        Ok(Response::new(pb::GetStatementResponse {
            statement: Some(statement_pb(&out.value.statement)),
            claims: out.value.claims.iter().map(claim_pb).collect(),
            reports: out.value.reports.as_ref().map(statement_pb),
            stamp: stamp(out.applied),
        }))
    }

    async fn get_claim(
        &self,
        req: Request<pb::GetClaimRequest>,
    ) -> Result<Response<pb::GetClaimResponse>, Status> {
        let r = req.get_ref().clone();
        let id = parse_id("claim_id", &r.claim_id)?;
        let out = answer(&self.app, &req, r.consistency.as_ref(), move |app| {
            app.claim_detail(&id, nonzero(r.context_chars))
        })
        .await?;
        Ok(Response::new(pb::GetClaimResponse {
            claim: Some(claim_pb(&out.value)),
            stamp: stamp(out.applied),
        }))
    }

    async fn get_source(
        &self,
        req: Request<pb::GetSourceRequest>,
    ) -> Result<Response<pb::GetSourceResponse>, Status> {
        let r = req.get_ref().clone();
        let id = parse_id("source_id", &r.source_id)?;
        let out = answer(&self.app, &req, r.consistency.as_ref(), move |app| {
            app.source_detail(&id, r.include_text)
        })
        .await?;
        Ok(Response::new(pb::GetSourceResponse {
            source: Some(source_pb(&out.value)),
            stamp: stamp(out.applied),
        }))
    }
}

pub struct AdminService {
    app: App,
}

impl AdminService {
    pub fn new(app: App) -> Self {
        AdminService { app }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn rebuild_projections(
        &self,
        _req: Request<pb::RebuildProjectionsRequest>,
    ) -> Result<Response<pb::RebuildProjectionsResponse>, Status> {
        let done = self.app.rebuild_projections().await?;
        Ok(Response::new(pb::RebuildProjectionsResponse {
            events_replayed: done.events,
            generation: done.generation,
            took: prost_types::Duration::try_from(done.took).ok(),
        }))
    }

    async fn get_projection_status(
        &self,
        _req: Request<pb::GetProjectionStatusRequest>,
    ) -> Result<Response<pb::GetProjectionStatusResponse>, Status> {
        let s = self.app.projection_status();
        Ok(Response::new(pb::GetProjectionStatusResponse {
            applied_count: s.applied,
            log_count: s.log_count,
            generation: s.generation,
            rebuilding: s.rebuilding,
        }))
    }
}
