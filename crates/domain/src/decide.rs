//! The business rules: `decide(view, command, context)` validates a command against the current write
//! model and returns the one event it produces, plus what the event's stream must look like when it is
//! appended. Pure: ids and the clock come in through the command and [`Context`].
use chrono::{DateTime, Duration, TimeZone, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::command::{
    AssertClaim, Command, IssueCorrection, PartyDetails, RecordStatement, RegisterSource,
    ReviewClaim,
};
use super::error::{DomainError, FieldViolation};
use super::event::{Claim, Correction, Event, Party, Review, Source, Statement};
use super::limits::*;
use super::model::{CorrectionKind, Span, StatedTime, TargetKind};
use super::state::{Status, View};

/// What the decision needs from outside: the clock.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now: DateTime<Utc>,
}

/// What the event's stream must look like at append time; the log enforces it atomically, which
/// closes the race between two writers deciding on the same state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamExpectation {
    /// The command creates the stream.
    NoStream,
    /// The stream exists (it never stops existing, so the check in `decide` is enough).
    Exists,
    /// The stream is at exactly this revision (used where the decision depends on the entity's status).
    Exact(u64),
}

/// The outcome of a valid command.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub event: Event,
    pub expectation: StreamExpectation,
}

/// Validates `cmd` against `view` and returns its event.
pub fn decide(view: &impl View, cmd: &Command, ctx: &Context) -> Result<Decision, DomainError> {
    match cmd {
        Command::RegisterParty(c) => register_party(view, c),
        Command::UpdateParty(c) => update_party(view, c),
        Command::RegisterSource(c) => register_source(view, c, ctx),
        Command::RecordStatement(c) => record_statement(view, c, ctx),
        Command::AssertClaim(c) => assert_claim(view, c),
        Command::ReviewClaim(c) => review_claim(view, c),
        Command::IssueCorrection(c) => issue_correction(view, c),
    }
}

/// Collects every field violation of a command before anything is looked up.
#[derive(Default)]
struct Checker {
    errors: Vec<FieldViolation>,
}

impl Checker {
    fn fail(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.errors.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// A bounded text. `single_line` texts may not contain control characters.
    fn text(&mut self, field: &str, value: &str, min: usize, max: usize, single_line: bool) {
        let n = value.chars().count();
        if n < min {
            if min == 1 {
                self.fail(field, "is required");
            } else {
                self.fail(field, format!("must be at least {min} characters"));
            }
        } else if n > max {
            self.fail(field, format!("must be at most {max} characters, got {n}"));
        } else if single_line && value.chars().any(char::is_control) {
            self.fail(field, "must not contain control characters");
        } else if min > 0 && value.trim().is_empty() {
            self.fail(field, "must not be blank");
        }
    }

    fn slug(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.fail(field, "is required");
        } else if !is_slug(value) {
            self.fail(
                field,
                format!(
                    "must be a slug (lowercase a-z and 0-9 in groups joined by single hyphens, at most {MAX_SLUG} characters), got {value:?}"
                ),
            );
        }
    }

    fn uuid(&mut self, field: &str, value: &str) -> Option<Uuid> {
        if value.is_empty() {
            self.fail(field, "is required");
            return None;
        }
        match Uuid::parse_str(value) {
            Ok(u) if !u.is_nil() => Some(u),
            _ => {
                self.fail(field, format!("must be a UUID, got {value:?}"));
                None
            }
        }
    }

    fn url(&mut self, field: &str, value: &str) {
        let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
        let ok = (lower.starts_with("https://") || lower.starts_with("http://"))
            && value.len() <= MAX_URL
            && !value.chars().any(|c| c.is_whitespace() || c.is_control())
            && value.split("://").nth(1).is_some_and(|rest| {
                rest.split(['/', '?', '#'])
                    .next()
                    .is_some_and(|h| !h.is_empty())
            });
        if !ok {
            self.fail(
                field,
                format!("must be an absolute http(s) URL of at most {MAX_URL} bytes"),
            );
        }
    }

    fn time(&mut self, field: &str, t: &DateTime<Utc>, now: Option<DateTime<Utc>>) {
        if *t < earliest() {
            self.fail(field, "must not be before the year 1800");
        } else if let Some(now) = now {
            if *t > now + Duration::seconds(MAX_CLOCK_SKEW_SECS) {
                self.fail(field, format!("must not be in the future (now is {now})"));
            }
        }
    }

    fn count<T>(&mut self, field: &str, items: &[T], min: usize, max: usize) {
        if items.len() < min {
            self.fail(field, format!("needs at least {min} item(s)"));
        } else if items.len() > max {
            self.fail(
                field,
                format!("has {} items, at most {max} allowed", items.len()),
            );
        }
    }

    fn finish(self) -> Result<(), DomainError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(self.errors))
        }
    }
}

fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1800, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `^[a-z0-9]+(-[a-z0-9]+)*$`, at most [`MAX_SLUG`] characters.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SLUG
        && s.split('-').all(|g| {
            !g.is_empty()
                && g.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// The text at code points `[start, end)`, if the range is inside the text.
pub fn slice_code_points(text: &str, start: usize, end: usize) -> Option<&str> {
    if start >= end {
        return None;
    }
    let mut indices = text.char_indices().map(|(i, _)| i).chain([text.len()]);
    let from = indices.nth(start)?;
    let to = indices.nth(end - start - 1)?;
    text.get(from..to)
}

fn not_found(field: &str, what: &'static str, id: impl ToString) -> DomainError {
    DomainError::NotFound {
        field: field.to_string(),
        what,
        id: id.to_string(),
    }
}

fn already_exists(field: &str, what: &'static str, id: impl ToString) -> DomainError {
    DomainError::AlreadyExists {
        field: field.to_string(),
        what,
        id: id.to_string(),
    }
}

fn precondition(field: &str, message: String) -> DomainError {
    DomainError::FailedPrecondition {
        field: field.to_string(),
        message,
    }
}

/// Validates party details; the party must exist (update) or must not (registration).
fn check_party_details(
    view: &impl View,
    c: &PartyDetails,
    must_exist: bool,
) -> Result<Party, DomainError> {
    let mut v = Checker::default();
    v.slug("party_id", &c.party_id);
    if c.kind.is_none() {
        v.fail("kind", "is required");
    }
    v.text("name", &c.name, 1, MAX_NAME, true);
    v.count("aliases", &c.aliases, 0, MAX_ALIASES);
    for (i, a) in c.aliases.iter().enumerate() {
        v.text(&format!("aliases[{i}]"), a, 1, MAX_NAME, true);
    }
    v.count("affiliations", &c.affiliations, 0, MAX_AFFILIATIONS);
    for (i, a) in c.affiliations.iter().enumerate() {
        let f = format!("affiliations[{i}]");
        v.slug(&format!("{f}.organisation_id"), &a.organisation_id);
        if a.organisation_id == c.party_id {
            v.fail(
                format!("{f}.organisation_id"),
                "a party cannot be affiliated with itself",
            );
        }
        v.text(&format!("{f}.role"), &a.role, 1, MAX_NAME, true);
        if let Some(s) = &a.since {
            v.time(&format!("{f}.since"), s, None);
        }
        if let Some(u) = &a.until {
            v.time(&format!("{f}.until"), u, None);
        }
        if let (Some(s), Some(u)) = (a.since, a.until) {
            if u < s {
                v.fail(format!("{f}.until"), "must not be before since");
            }
        }
    }
    v.text("description", &c.description, 0, MAX_DESCRIPTION, false);
    v.finish()?;
    if must_exist != view.party(&c.party_id).is_some() {
        return Err(if must_exist {
            not_found("party_id", "party", &c.party_id)
        } else {
            already_exists("party_id", "party", &c.party_id)
        });
    }
    for (i, a) in c.affiliations.iter().enumerate() {
        if view.party(&a.organisation_id).is_none() {
            return Err(not_found(
                &format!("affiliations[{i}].organisation_id"),
                "party",
                &a.organisation_id,
            ));
        }
    }
    Ok(Party {
        party_id: c.party_id.clone(),
        kind: c.kind.expect("checked above"),
        name: c.name.clone(),
        aliases: c.aliases.clone(),
        affiliations: c.affiliations.clone(),
        description: c.description.clone(),
    })
}

fn register_party(view: &impl View, c: &PartyDetails) -> Result<Decision, DomainError> {
    let party = check_party_details(view, c, false)?;
    Ok(Decision {
        event: Event::PartyRegistered(party),
        expectation: StreamExpectation::NoStream,
    })
}

fn update_party(view: &impl View, c: &PartyDetails) -> Result<Decision, DomainError> {
    let party = check_party_details(view, c, true)?;
    Ok(Decision {
        event: Event::PartyUpdated(party),
        expectation: StreamExpectation::Exists,
    })
}

fn is_language_tag(s: &str) -> bool {
    let mut parts = s.split('-');
    let primary_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    primary_ok
        && s.len() <= 35
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn register_source(
    view: &impl View,
    c: &RegisterSource,
    ctx: &Context,
) -> Result<Decision, DomainError> {
    let mut v = Checker::default();
    let id = v.uuid("source_id", c.source_id.as_deref().unwrap_or(""));
    v.text("publisher", &c.publisher, 1, MAX_NAME, true);
    v.url("url", &c.url);
    v.text("title", &c.title, 1, MAX_TITLE, true);
    match &c.published_at {
        Some(t) => v.time("published_at", t, Some(ctx.now)),
        None => v.fail("published_at", "is required"),
    }
    match &c.retrieved_at {
        Some(t) => v.time("retrieved_at", t, Some(ctx.now)),
        None => v.fail("retrieved_at", "is required"),
    }
    if let (Some(p), Some(r)) = (c.published_at, c.retrieved_at) {
        if r < p {
            v.fail("retrieved_at", "must not be before published_at");
        }
    }
    if !is_language_tag(&c.language) {
        v.fail(
            "language",
            format!(
                "must be a BCP 47 language tag such as \"en\", got {:?}",
                c.language
            ),
        );
    }
    if c.text.trim().is_empty() {
        v.fail("text", "is required");
    } else if c
        .text
        .chars()
        .any(|ch| ch.is_control() && !matches!(ch, '\n' | '\r' | '\t'))
    {
        // Keeps the stored JSON at most twice the text's size (see limits).
        v.fail(
            "text",
            "must not contain control characters other than tab and line breaks",
        );
    } else if c.text.len() > MAX_SOURCE_TEXT_BYTES {
        v.fail(
            "text",
            format!(
                "is {} bytes, at most {MAX_SOURCE_TEXT_BYTES} allowed",
                c.text.len()
            ),
        );
    }
    v.finish()?;
    let id = id.expect("checked above");
    if view.source(&id).is_some() {
        return Err(already_exists("source_id", "source", id));
    }
    Ok(Decision {
        event: Event::SourceRegistered(Source {
            source_id: id,
            publisher: c.publisher.clone(),
            url: c.url.clone(),
            title: c.title.clone(),
            published_at: c.published_at.expect("checked above"),
            retrieved_at: c.retrieved_at.expect("checked above"),
            language: c.language.clone(),
            text: c.text.clone(),
            text_sha256: hex::encode(Sha256::digest(c.text.as_bytes())),
        }),
        expectation: StreamExpectation::NoStream,
    })
}

fn record_statement(
    view: &impl View,
    c: &RecordStatement,
    ctx: &Context,
) -> Result<Decision, DomainError> {
    let mut v = Checker::default();
    let id = v.uuid("statement_id", c.statement_id.as_deref().unwrap_or(""));
    v.slug("speaker_id", &c.speaker_id);
    let on_behalf = c.on_behalf_of_id.as_deref().filter(|s| !s.is_empty());
    if let Some(p) = on_behalf {
        v.slug("on_behalf_of_id", p);
    }
    let stated = match &c.stated_time {
        Some(t) => {
            let n = StatedTime::normalized(t.at, t.precision);
            v.time("stated_time.at", &n.at, Some(ctx.now));
            Some(n)
        }
        None => {
            v.fail("stated_time", "is required");
            None
        }
    };
    let venue = c.venue.as_deref().filter(|s| !s.is_empty());
    if let Some(venue) = venue {
        v.text("venue", venue, 1, MAX_VENUE, true);
    }
    if c.mode.is_none() {
        v.fail("mode", "is required");
    }
    v.text("attribution_verb", &c.attribution_verb, 1, MAX_VERB, true);
    v.text("content", &c.content, 1, MAX_CONTENT, false);
    v.count("spans", &c.spans, 1, MAX_SPANS);
    let mut span_sources = Vec::with_capacity(c.spans.len());
    for (i, s) in c.spans.iter().enumerate() {
        let f = format!("spans[{i}]");
        span_sources.push(v.uuid(&format!("{f}.source_id"), &s.source_id));
        if s.end <= s.start {
            v.fail(format!("{f}.end"), "must be greater than start");
        }
        v.text(&format!("{f}.exact"), &s.exact, 1, MAX_SPAN_TEXT, false);
    }
    let reports = match c.reports_statement_id.as_deref().filter(|s| !s.is_empty()) {
        Some(r) => v.uuid("reports_statement_id", r),
        None => None,
    };
    if reports.is_some() && reports == id {
        v.fail("reports_statement_id", "a statement cannot report itself");
    }
    v.finish()?;
    let id = id.expect("checked above");
    let stated = stated.expect("checked above");

    if view.statement(&id).is_some() {
        return Err(already_exists("statement_id", "statement", id));
    }
    if view.party(&c.speaker_id).is_none() {
        return Err(not_found("speaker_id", "party", &c.speaker_id));
    }
    if let Some(p) = on_behalf {
        if view.party(p).is_none() {
            return Err(not_found("on_behalf_of_id", "party", p));
        }
    }
    if let Some(r) = reports {
        let Some(reported) = view.statement(&r) else {
            return Err(not_found("reports_statement_id", "statement", r));
        };
        // A report cannot end before what it reports was said.
        if stated.period_end() < reported.stated_time.at {
            return Err(DomainError::invalid(
                "stated_time.at",
                format!(
                    "is before the reported statement {r} was made ({})",
                    reported.stated_time.at
                ),
            ));
        }
    }
    // Span contents are checked only once every source is known, and reported all at once.
    let mut spans = Vec::with_capacity(c.spans.len());
    let mut late_sources = Vec::new();
    let mut v = Checker::default();
    for (i, (s, source_id)) in c.spans.iter().zip(span_sources).enumerate() {
        let source_id = source_id.expect("checked above");
        let Some(source) = view.source(&source_id) else {
            return Err(not_found(
                &format!("spans[{i}].source_id"),
                "source",
                source_id,
            ));
        };
        match slice_code_points(&source.text, s.start as usize, s.end as usize) {
            None => v.fail(
                format!("spans[{i}].end"),
                format!(
                    "[{}, {}) is outside the source text ({} code points)",
                    s.start,
                    s.end,
                    source.text.chars().count()
                ),
            ),
            Some(found) if found != s.exact => v.fail(
                format!("spans[{i}].exact"),
                format!(
                    "does not match the source text at [{}, {}), which is {found:?}",
                    s.start, s.end
                ),
            ),
            Some(_) => {}
        }
        if stated.at > source.published_at && !late_sources.contains(&source_id) {
            late_sources.push(source_id);
            v.fail(
                "stated_time.at",
                format!(
                    "{} is after the publication of source {source_id} ({})",
                    stated.at, source.published_at
                ),
            );
        }
        spans.push(Span {
            source_id,
            start: s.start,
            end: s.end,
            exact: s.exact.clone(),
        });
    }
    v.finish()?;
    Ok(Decision {
        event: Event::StatementRecorded(Statement {
            statement_id: id,
            speaker_id: c.speaker_id.clone(),
            on_behalf_of_id: on_behalf.map(str::to_string),
            stated_time: stated,
            venue: venue.map(str::to_string),
            mode: c.mode.expect("checked above"),
            attribution_verb: c.attribution_verb.clone(),
            content: c.content.clone(),
            spans,
            reports_statement_id: reports,
        }),
        expectation: StreamExpectation::NoStream,
    })
}

fn assert_claim(view: &impl View, c: &AssertClaim) -> Result<Decision, DomainError> {
    let mut v = Checker::default();
    let id = v.uuid("claim_id", c.claim_id.as_deref().unwrap_or(""));
    let statement_id = v.uuid("statement_id", &c.statement_id);
    v.slug("party_id", &c.party_id);
    v.slug("topic", &c.topic);
    v.text("stance", &c.stance, 1, MAX_STANCE, false);
    v.count("conditions", &c.conditions, 0, MAX_CONDITIONS);
    for (i, x) in c.conditions.iter().enumerate() {
        v.text(&format!("conditions[{i}]"), x, 1, MAX_CONDITION, false);
    }
    v.finish()?;
    let (id, statement_id) = (id.expect("checked"), statement_id.expect("checked"));
    if view.claim(&id).is_some() {
        return Err(already_exists("claim_id", "claim", id));
    }
    let Some(statement) = view.statement(&statement_id) else {
        return Err(not_found("statement_id", "statement", statement_id));
    };
    if statement.status != Status::Active {
        return Err(precondition(
            "statement_id",
            format!(
                "statement {statement_id} is {:?} and cannot assert new claims",
                statement.status
            ),
        ));
    }
    if view.party(&c.party_id).is_none() {
        return Err(not_found("party_id", "party", &c.party_id));
    }
    Ok(Decision {
        event: Event::ClaimAsserted(Claim {
            claim_id: id,
            statement_id,
            party_id: c.party_id.clone(),
            topic: c.topic.clone(),
            stance: c.stance.clone(),
            conditions: c.conditions.clone(),
        }),
        // Exact(0) on the statement is not needed: a claim on a statement retracted concurrently
        // is still a faithful record of what was asserted, and the retraction shows in provenance.
        expectation: StreamExpectation::NoStream,
    })
}

fn review_claim(view: &impl View, c: &ReviewClaim) -> Result<Decision, DomainError> {
    let mut v = Checker::default();
    let id = v.uuid("review_id", c.review_id.as_deref().unwrap_or(""));
    let claim_id = v.uuid("claim_id", &c.claim_id);
    v.text("reviewer", &c.reviewer, 1, MAX_NAME, true);
    match &c.rating {
        None => v.fail("rating", "is required"),
        Some(r) => {
            v.text("rating.label", &r.label, 1, MAX_RATING_LABEL, true);
            let scaled = r.best != 0 || r.worst != 0;
            if scaled && r.worst >= r.best {
                v.fail("rating.worst", "must be less than best");
            } else if scaled && !(r.worst..=r.best).contains(&r.value) {
                v.fail(
                    "rating.value",
                    format!("must be within [{}, {}]", r.worst, r.best),
                );
            } else if !scaled && r.value != 0 {
                v.fail("rating.best", "is required when value is set");
            }
        }
    }
    v.text("explanation", &c.explanation, 0, MAX_CONTENT, false);
    let url = c.url.as_deref().filter(|s| !s.is_empty());
    if let Some(u) = url {
        v.url("url", u);
    }
    v.finish()?;
    let (id, claim_id) = (id.expect("checked"), claim_id.expect("checked"));
    if view.has_annotation(&id) {
        return Err(already_exists("review_id", "review", id));
    }
    if view.claim(&claim_id).is_none() {
        return Err(not_found("claim_id", "claim", claim_id));
    }
    Ok(Decision {
        event: Event::ClaimReviewed(Review {
            review_id: id,
            claim_id,
            reviewer: c.reviewer.clone(),
            rating: c.rating.clone().expect("checked above"),
            explanation: c.explanation.clone(),
            url: url.map(str::to_string),
        }),
        expectation: StreamExpectation::Exists,
    })
}

fn issue_correction(view: &impl View, c: &IssueCorrection) -> Result<Decision, DomainError> {
    let mut v = Checker::default();
    let id = v.uuid("correction_id", c.correction_id.as_deref().unwrap_or(""));
    if c.target_kind.is_none() {
        v.fail("target_kind", "is required");
    }
    let target = v.uuid("target_id", &c.target_id);
    if c.kind.is_none() {
        v.fail("kind", "is required");
    }
    v.text("reason", &c.reason, 1, MAX_REASON, false);
    let replacement = match c.replacement_id.as_deref().filter(|s| !s.is_empty()) {
        Some(r) => v.uuid("replacement_id", r),
        None => None,
    };
    match (
        c.kind,
        c.replacement_id.as_deref().filter(|s| !s.is_empty()),
    ) {
        (Some(CorrectionKind::Supersede), None) => {
            v.fail("replacement_id", "is required to supersede")
        }
        (Some(CorrectionKind::Retract), Some(_)) => v.fail(
            "replacement_id",
            "must be empty for a retraction (use SUPERSEDE to replace)",
        ),
        _ => {}
    }
    if replacement.is_some() && replacement == target {
        v.fail("replacement_id", "must differ from target_id");
    }
    v.finish()?;
    let (id, target) = (id.expect("checked"), target.expect("checked"));
    let (target_kind, kind) = (c.target_kind.expect("checked"), c.kind.expect("checked"));
    if view.has_annotation(&id) {
        return Err(already_exists("correction_id", "correction", id));
    }
    let lookup = |id: &Uuid| match target_kind {
        TargetKind::Statement => view.statement(id).map(|s| (s.revision, s.status)),
        TargetKind::Claim => view.claim(id).map(|s| (s.revision, s.status)),
    };
    let what = match target_kind {
        TargetKind::Statement => "statement",
        TargetKind::Claim => "claim",
    };
    let Some((revision, status)) = lookup(&target) else {
        return Err(not_found("target_id", what, target));
    };
    if status != Status::Active {
        return Err(precondition(
            "target_id",
            format!("{what} {target} is already {status:?}"),
        ));
    }
    if let Some(r) = replacement {
        match lookup(&r) {
            None => return Err(not_found("replacement_id", what, r)),
            Some((_, s)) if s != Status::Active => {
                return Err(precondition(
                    "replacement_id",
                    format!("replacement {what} {r} is {s:?}"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(Decision {
        event: Event::CorrectionIssued(Correction {
            correction_id: id,
            target_kind,
            target_id: target,
            kind,
            reason: c.reason.clone(),
            replacement_id: replacement,
        }),
        // The decision depends on the target's status, so the target must not have moved since.
        expectation: StreamExpectation::Exact(revision),
    })
}

/// Streams other than the event's own whose state the decision relied on, with the revision it saw.
/// A supersede relies on its replacement still being in force: a concurrent retraction of the
/// replacement must make the supersede fail rather than point at a retracted entity.
pub fn related_expectations(view: &impl View, event: &Event) -> Vec<(String, u64)> {
    match event {
        Event::CorrectionIssued(Correction {
            target_kind,
            replacement_id: Some(r),
            ..
        }) => match target_kind {
            TargetKind::Statement => view
                .statement(r)
                .map(|s| (super::event::statement_stream(r), s.revision)),
            TargetKind::Claim => view
                .claim(r)
                .map(|s| (super::event::claim_stream(r), s.revision)),
        }
        .into_iter()
        .collect(),
        _ => Vec::new(),
    }
}
