//! Conversions between the wire types (prost) and the domain, at this one boundary. Proto enums'
//! `..._UNSPECIFIED` becomes `None`, which the domain reports as a missing field.
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::pb;
use crate::app::AppError;
use claims_ledger_domain::command::{
    AssertClaim, IssueCorrection, PartyDetails, RecordStatement, RegisterSource, ReviewClaim,
    SpanInput,
};
use claims_ledger_domain::event::{Claim, Correction, Party, Review, Source, Statement};
use claims_ledger_domain::model::{
    Affiliation, CorrectionKind, Mode, PartyKind, Precision, Rating, Span, StatedTime, TargetKind,
};
use claims_ledger_domain::{Command, Event};
use claims_ledger_log::{Appended, ExpectedRevision, RecordedEvent};

pub fn ts(t: &DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn ts_opt(t: &Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.as_ref().map(ts)
}

/// A wire timestamp as a time; an out-of-range one is a field violation.
pub(super) fn from_ts(
    t: &Option<Timestamp>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, AppError> {
    match t {
        None => Ok(None),
        Some(t) => u32::try_from(t.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)
            .and_then(|n| DateTime::from_timestamp(t.seconds, n))
            .map(Some)
            .ok_or_else(|| AppError::invalid(field, "is not a valid timestamp")),
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn party_kind(v: i32) -> Option<PartyKind> {
    match pb::PartyKind::try_from(v).ok()? {
        pb::PartyKind::Unspecified => None,
        pb::PartyKind::State => Some(PartyKind::State),
        pb::PartyKind::Government => Some(PartyKind::Government),
        pb::PartyKind::Organisation => Some(PartyKind::Organisation),
        pb::PartyKind::Person => Some(PartyKind::Person),
        pb::PartyKind::Group => Some(PartyKind::Group),
    }
}

fn party_kind_pb(k: PartyKind) -> pb::PartyKind {
    match k {
        PartyKind::State => pb::PartyKind::State,
        PartyKind::Government => pb::PartyKind::Government,
        PartyKind::Organisation => pb::PartyKind::Organisation,
        PartyKind::Person => pb::PartyKind::Person,
        PartyKind::Group => pb::PartyKind::Group,
    }
}

fn precision(v: i32) -> Option<Precision> {
    match pb::TimePrecision::try_from(v).ok()? {
        pb::TimePrecision::Unspecified => None,
        pb::TimePrecision::Instant => Some(Precision::Instant),
        pb::TimePrecision::Day => Some(Precision::Day),
        pb::TimePrecision::Month => Some(Precision::Month),
        pb::TimePrecision::Year => Some(Precision::Year),
    }
}

fn precision_pb(p: Precision) -> pb::TimePrecision {
    match p {
        Precision::Instant => pb::TimePrecision::Instant,
        Precision::Day => pb::TimePrecision::Day,
        Precision::Month => pb::TimePrecision::Month,
        Precision::Year => pb::TimePrecision::Year,
    }
}

pub(super) fn mode(v: i32) -> Option<Mode> {
    match pb::StatementMode::try_from(v).ok()? {
        pb::StatementMode::Unspecified => None,
        pb::StatementMode::DirectQuote => Some(Mode::DirectQuote),
        pb::StatementMode::Paraphrase => Some(Mode::Paraphrase),
        pb::StatementMode::Reported => Some(Mode::Reported),
        pb::StatementMode::OfficialDocument => Some(Mode::OfficialDocument),
        pb::StatementMode::ReportedNoComment => Some(Mode::ReportedNoComment),
    }
}

pub(super) fn mode_pb(m: Mode) -> pb::StatementMode {
    match m {
        Mode::DirectQuote => pb::StatementMode::DirectQuote,
        Mode::Paraphrase => pb::StatementMode::Paraphrase,
        Mode::Reported => pb::StatementMode::Reported,
        Mode::OfficialDocument => pb::StatementMode::OfficialDocument,
        Mode::ReportedNoComment => pb::StatementMode::ReportedNoComment,
    }
}

fn correction_kind(v: i32) -> Option<CorrectionKind> {
    match pb::CorrectionKind::try_from(v).ok()? {
        pb::CorrectionKind::Unspecified => None,
        pb::CorrectionKind::Retract => Some(CorrectionKind::Retract),
        pb::CorrectionKind::Supersede => Some(CorrectionKind::Supersede),
        pb::CorrectionKind::Erratum => Some(CorrectionKind::Erratum),
    }
}

fn correction_kind_pb(k: CorrectionKind) -> pb::CorrectionKind {
    match k {
        CorrectionKind::Retract => pb::CorrectionKind::Retract,
        CorrectionKind::Supersede => pb::CorrectionKind::Supersede,
        CorrectionKind::Erratum => pb::CorrectionKind::Erratum,
    }
}

fn target_kind(v: i32) -> Option<TargetKind> {
    match pb::TargetKind::try_from(v).ok()? {
        pb::TargetKind::Unspecified => None,
        pb::TargetKind::Statement => Some(TargetKind::Statement),
        pb::TargetKind::Claim => Some(TargetKind::Claim),
    }
}

fn target_kind_pb(k: TargetKind) -> pb::TargetKind {
    match k {
        TargetKind::Statement => pb::TargetKind::Statement,
        TargetKind::Claim => pb::TargetKind::Claim,
    }
}

/// A wire expected revision as the log's.
pub fn expected_revision(e: Option<&pb::ExpectedRevision>) -> ExpectedRevision {
    let Some(e) = e else {
        return ExpectedRevision::Any;
    };
    match pb::ExpectedRevisionKind::try_from(e.kind).unwrap_or_default() {
        pb::ExpectedRevisionKind::Unspecified | pb::ExpectedRevisionKind::Any => {
            ExpectedRevision::Any
        }
        pb::ExpectedRevisionKind::NoStream => ExpectedRevision::NoStream,
        pb::ExpectedRevisionKind::StreamExists => ExpectedRevision::StreamExists,
        pb::ExpectedRevisionKind::Exact => ExpectedRevision::Exact(e.revision),
    }
}

fn affiliations(a: Vec<pb::Affiliation>, prefix: &str) -> Result<Vec<Affiliation>, AppError> {
    a.into_iter()
        .enumerate()
        .map(|(i, a)| {
            Ok(Affiliation {
                organisation_id: a.organisation_id,
                role: a.role,
                since: from_ts(&a.since, &format!("{prefix}affiliations[{i}].since"))?,
                until: from_ts(&a.until, &format!("{prefix}affiliations[{i}].until"))?,
            })
        })
        .collect()
}

fn affiliations_pb(a: &[Affiliation]) -> Vec<pb::Affiliation> {
    a.iter()
        .map(|a| pb::Affiliation {
            organisation_id: a.organisation_id.clone(),
            role: a.role.clone(),
            since: ts_opt(&a.since),
            until: ts_opt(&a.until),
        })
        .collect()
}

pub fn register_party(c: pb::RegisterPartyCommand, prefix: &str) -> Result<Command, AppError> {
    Ok(Command::RegisterParty(PartyDetails {
        kind: party_kind(c.kind),
        affiliations: affiliations(c.affiliations, prefix)?,
        party_id: c.party_id,
        name: c.name,
        aliases: c.aliases,
        description: c.description,
    }))
}

pub fn update_party(c: pb::UpdatePartyCommand, prefix: &str) -> Result<Command, AppError> {
    Ok(Command::UpdateParty(PartyDetails {
        kind: party_kind(c.kind),
        affiliations: affiliations(c.affiliations, prefix)?,
        party_id: c.party_id,
        name: c.name,
        aliases: c.aliases,
        description: c.description,
    }))
}

pub fn register_source(c: pb::RegisterSourceCommand, prefix: &str) -> Result<Command, AppError> {
    Ok(Command::RegisterSource(RegisterSource {
        source_id: opt(c.source_id),
        published_at: from_ts(&c.published_at, &format!("{prefix}published_at"))?,
        retrieved_at: from_ts(&c.retrieved_at, &format!("{prefix}retrieved_at"))?,
        publisher: c.publisher,
        url: c.url,
        title: c.title,
        language: c.language,
        text: c.text,
    }))
}

pub fn record_statement(c: pb::RecordStatementCommand, prefix: &str) -> Result<Command, AppError> {
    let stated_time = match c.stated_time {
        None => None,
        Some(t) => {
            let at = from_ts(&t.at, &format!("{prefix}stated_time.at"))?;
            match (at, precision(t.precision)) {
                (Some(at), Some(precision)) => Some(StatedTime { at, precision }),
                (None, _) => {
                    return Err(AppError::invalid(
                        format!("{prefix}stated_time.at"),
                        "is required",
                    ))
                }
                (_, None) => {
                    return Err(AppError::invalid(
                        format!("{prefix}stated_time.precision"),
                        "is required",
                    ))
                }
            }
        }
    };
    Ok(Command::RecordStatement(RecordStatement {
        statement_id: opt(c.statement_id),
        speaker_id: c.speaker_id,
        on_behalf_of_id: opt(c.on_behalf_of_id),
        stated_time,
        venue: opt(c.venue),
        mode: mode(c.mode),
        attribution_verb: c.attribution_verb,
        content: c.content,
        spans: c
            .spans
            .into_iter()
            .map(|s| SpanInput {
                source_id: s.source_id,
                start: s.start,
                end: s.end,
                exact: s.exact,
            })
            .collect(),
        reports_statement_id: opt(c.reports_statement_id),
    }))
}

pub fn assert_claim(c: pb::AssertClaimCommand) -> Command {
    Command::AssertClaim(AssertClaim {
        claim_id: opt(c.claim_id),
        statement_id: c.statement_id,
        party_id: c.party_id,
        topic: c.topic,
        stance: c.stance,
        conditions: c.conditions,
    })
}

pub fn review_claim(c: pb::ReviewClaimCommand) -> Command {
    Command::ReviewClaim(ReviewClaim {
        review_id: opt(c.review_id),
        claim_id: c.claim_id,
        reviewer: c.reviewer,
        rating: c.rating.map(|r| Rating {
            label: r.label,
            value: r.value,
            best: r.best,
            worst: r.worst,
        }),
        explanation: c.explanation,
        url: opt(c.url),
    })
}

pub fn issue_correction(c: pb::IssueCorrectionCommand) -> Command {
    Command::IssueCorrection(IssueCorrection {
        correction_id: opt(c.correction_id),
        target_kind: target_kind(c.target_kind),
        target_id: c.target_id,
        kind: correction_kind(c.kind),
        reason: c.reason,
        replacement_id: opt(c.replacement_id),
    })
}

/// One batch entry as a domain command; `prefix` is `commands[i].<kind>.`.
pub fn batch_command(c: pb::batch_command::Command, prefix: &str) -> Result<Command, AppError> {
    use pb::batch_command::Command as C;
    match c {
        C::RegisterParty(c) => register_party(c, prefix),
        C::UpdateParty(c) => update_party(c, prefix),
        C::RegisterSource(c) => register_source(c, prefix),
        C::RecordStatement(c) => record_statement(c, prefix),
        C::AssertClaim(c) => Ok(assert_claim(c)),
        C::ReviewClaim(c) => Ok(review_claim(c)),
        C::IssueCorrection(c) => Ok(issue_correction(c)),
    }
}

/// The proto oneof name of a batch entry, for field paths.
pub fn batch_command_name(c: &pb::batch_command::Command) -> &'static str {
    use pb::batch_command::Command as C;
    match c {
        C::RegisterParty(_) => "register_party",
        C::UpdateParty(_) => "update_party",
        C::RegisterSource(_) => "register_source",
        C::RecordStatement(_) => "record_statement",
        C::AssertClaim(_) => "assert_claim",
        C::ReviewClaim(_) => "review_claim",
        C::IssueCorrection(_) => "issue_correction",
    }
}

/// A domain command on the wire, for clients that load datasets.
pub fn command_pb(c: &Command) -> pb::batch_command::Command {
    use pb::batch_command::Command as C;
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    let party = |p: &PartyDetails| pb::RegisterPartyCommand {
        party_id: p.party_id.clone(),
        kind: p.kind.map_or(pb::PartyKind::Unspecified, party_kind_pb) as i32,
        name: p.name.clone(),
        aliases: p.aliases.clone(),
        affiliations: affiliations_pb(&p.affiliations),
        description: p.description.clone(),
    };
    match c {
        Command::RegisterParty(p) => C::RegisterParty(party(p)),
        Command::UpdateParty(p) => {
            let r = party(p);
            C::UpdateParty(pb::UpdatePartyCommand {
                party_id: r.party_id,
                kind: r.kind,
                name: r.name,
                aliases: r.aliases,
                affiliations: r.affiliations,
                description: r.description,
            })
        }
        Command::RegisterSource(c) => C::RegisterSource(pb::RegisterSourceCommand {
            source_id: s(&c.source_id),
            publisher: c.publisher.clone(),
            url: c.url.clone(),
            title: c.title.clone(),
            published_at: ts_opt(&c.published_at),
            retrieved_at: ts_opt(&c.retrieved_at),
            language: c.language.clone(),
            text: c.text.clone(),
        }),
        Command::RecordStatement(c) => C::RecordStatement(pb::RecordStatementCommand {
            statement_id: s(&c.statement_id),
            speaker_id: c.speaker_id.clone(),
            on_behalf_of_id: s(&c.on_behalf_of_id),
            stated_time: c.stated_time.as_ref().map(stated_time_pb),
            venue: s(&c.venue),
            mode: c.mode.map_or(pb::StatementMode::Unspecified, mode_pb) as i32,
            attribution_verb: c.attribution_verb.clone(),
            content: c.content.clone(),
            spans: c
                .spans
                .iter()
                .map(|x| pb::Span {
                    source_id: x.source_id.clone(),
                    start: x.start,
                    end: x.end,
                    exact: x.exact.clone(),
                })
                .collect(),
            reports_statement_id: s(&c.reports_statement_id),
        }),
        Command::AssertClaim(c) => C::AssertClaim(pb::AssertClaimCommand {
            claim_id: s(&c.claim_id),
            statement_id: c.statement_id.clone(),
            party_id: c.party_id.clone(),
            topic: c.topic.clone(),
            stance: c.stance.clone(),
            conditions: c.conditions.clone(),
        }),
        Command::ReviewClaim(c) => C::ReviewClaim(pb::ReviewClaimCommand {
            review_id: s(&c.review_id),
            claim_id: c.claim_id.clone(),
            reviewer: c.reviewer.clone(),
            rating: c.rating.as_ref().map(rating_pb),
            explanation: c.explanation.clone(),
            url: s(&c.url),
        }),
        Command::IssueCorrection(c) => C::IssueCorrection(pb::IssueCorrectionCommand {
            correction_id: s(&c.correction_id),
            target_kind: c
                .target_kind
                .map_or(pb::TargetKind::Unspecified, target_kind_pb)
                as i32,
            target_id: c.target_id.clone(),
            kind: c
                .kind
                .map_or(pb::CorrectionKind::Unspecified, correction_kind_pb)
                as i32,
            reason: c.reason.clone(),
            replacement_id: s(&c.replacement_id),
        }),
    }
}

pub(super) fn stated_time_pb(t: &StatedTime) -> pb::StatedTime {
    pb::StatedTime {
        at: Some(ts(&t.at)),
        precision: precision_pb(t.precision) as i32,
    }
}

fn rating_pb(r: &Rating) -> pb::Rating {
    pb::Rating {
        label: r.label.clone(),
        value: r.value,
        best: r.best,
        worst: r.worst,
    }
}

pub(super) fn spans_pb(spans: &[Span]) -> Vec<pb::Span> {
    spans
        .iter()
        .map(|x| pb::Span {
            source_id: x.source_id.to_string(),
            start: x.start,
            end: x.end,
            exact: x.exact.clone(),
        })
        .collect()
}

pub(super) fn party_payload(p: &Party) -> pb::PartyPayload {
    pb::PartyPayload {
        party_id: p.party_id.clone(),
        kind: party_kind_pb(p.kind) as i32,
        name: p.name.clone(),
        aliases: p.aliases.clone(),
        affiliations: affiliations_pb(&p.affiliations),
        description: p.description.clone(),
    }
}

pub(super) fn source_payload(s: &Source) -> pb::SourceRegisteredPayload {
    pb::SourceRegisteredPayload {
        source_id: s.source_id.to_string(),
        publisher: s.publisher.clone(),
        url: s.url.clone(),
        title: s.title.clone(),
        published_at: Some(ts(&s.published_at)),
        retrieved_at: Some(ts(&s.retrieved_at)),
        language: s.language.clone(),
        text: s.text.clone(),
        text_sha256: s.text_sha256.clone(),
    }
}

pub(super) fn statement_payload(s: &Statement) -> pb::StatementRecordedPayload {
    pb::StatementRecordedPayload {
        statement_id: s.statement_id.to_string(),
        speaker_id: s.speaker_id.clone(),
        on_behalf_of_id: s.on_behalf_of_id.clone().unwrap_or_default(),
        stated_time: Some(stated_time_pb(&s.stated_time)),
        venue: s.venue.clone().unwrap_or_default(),
        mode: mode_pb(s.mode) as i32,
        attribution_verb: s.attribution_verb.clone(),
        content: s.content.clone(),
        spans: spans_pb(&s.spans),
        reports_statement_id: s
            .reports_statement_id
            .map(|u| u.to_string())
            .unwrap_or_default(),
    }
}

pub(super) fn claim_payload(c: &Claim) -> pb::ClaimAssertedPayload {
    pb::ClaimAssertedPayload {
        claim_id: c.claim_id.to_string(),
        statement_id: c.statement_id.to_string(),
        party_id: c.party_id.clone(),
        topic: c.topic.clone(),
        stance: c.stance.clone(),
        conditions: c.conditions.clone(),
    }
}

pub(super) fn review_payload(r: &Review) -> pb::ClaimReviewedPayload {
    pb::ClaimReviewedPayload {
        review_id: r.review_id.to_string(),
        claim_id: r.claim_id.to_string(),
        reviewer: r.reviewer.clone(),
        rating: Some(rating_pb(&r.rating)),
        explanation: r.explanation.clone(),
        url: r.url.clone().unwrap_or_default(),
    }
}

pub(super) fn correction_payload(c: &Correction) -> pb::CorrectionIssuedPayload {
    pb::CorrectionIssuedPayload {
        correction_id: c.correction_id.to_string(),
        target_kind: target_kind_pb(c.target_kind) as i32,
        target_id: c.target_id.to_string(),
        kind: correction_kind_pb(c.kind) as i32,
        reason: c.reason.clone(),
        replacement_id: c.replacement_id.map(|u| u.to_string()).unwrap_or_default(),
    }
}

/// A domain event as a typed wire payload.
pub fn payload_pb(e: &Event) -> pb::EventPayload {
    use pb::event_payload::Kind as K;
    let kind = match e {
        Event::PartyRegistered(p) => K::PartyRegistered(party_payload(p)),
        Event::PartyUpdated(p) => K::PartyUpdated(party_payload(p)),
        Event::SourceRegistered(s) => K::SourceRegistered(source_payload(s)),
        Event::StatementRecorded(s) => K::StatementRecorded(statement_payload(s)),
        Event::ClaimAsserted(c) => K::ClaimAsserted(claim_payload(c)),
        Event::ClaimReviewed(r) => K::ClaimReviewed(review_payload(r)),
        Event::CorrectionIssued(c) => K::CorrectionIssued(correction_payload(c)),
    };
    pb::EventPayload { kind: Some(kind) }
}

/// The payload of one of the log's own events (see `RecordedEvent::is_system`).
fn system_payload_pb(rec: &RecordedEvent) -> Result<pb::EventPayload, AppError> {
    let s = crate::app::decode_system_event(rec)
        .map_err(|e| AppError::Internal(format!("log event at position {}: {e}", rec.position)))?;
    let kind = pb::event_payload::Kind::ShorterLogAccepted(pb::ShorterLogAcceptedPayload {
        recovered: s.recovered,
        expected: s.expected(),
        evidence: s
            .evidence
            .iter()
            .map(|e| pb::LogEvidence {
                source: e.source.clone(),
                count: e.count,
            })
            .collect(),
        unreadable: s.unreadable.clone(),
    });
    Ok(pb::EventPayload { kind: Some(kind) })
}

/// A stored event as the wire envelope, with its typed payload and exact stored bytes.
pub fn envelope_pb(rec: &RecordedEvent) -> Result<pb::EventEnvelope, AppError> {
    let payload = if rec.is_system() {
        system_payload_pb(rec)?
    } else {
        let event = crate::app::decode_event(rec)
            .map_err(|e| AppError::Internal(format!("event at position {}: {e}", rec.position)))?;
        payload_pb(&event)
    };
    Ok(pb::EventEnvelope {
        event_id: rec.event_id.to_string(),
        stream: rec.stream.clone(),
        stream_revision: rec.stream_revision,
        position: rec.position,
        event_type: rec.event_type.clone(),
        schema_version: rec.schema_version,
        recorded_at: Some(ts(&rec.recorded_at)),
        recorded_by: rec.recorded_by.clone(),
        correlation_id: rec.correlation_id.clone().unwrap_or_default(),
        causation_id: rec.causation_id.clone().unwrap_or_default(),
        prev_hash: hex::encode(rec.prev_hash),
        hash: hex::encode(rec.hash),
        payload: Some(payload),
        stored_bytes: rec.stored.clone(),
        idempotency_key: rec
            .idempotency
            .as_ref()
            .map(|m| m.key.clone())
            .unwrap_or_default(),
    })
}

pub fn appended_pb(a: &Appended) -> pb::AppendedEvent {
    pb::AppendedEvent {
        event_id: a.event_id.to_string(),
        stream: a.stream.clone(),
        stream_revision: a.stream_revision,
        position: a.position,
        hash: hex::encode(a.hash),
    }
}
