//! Given/when/then tests of the domain rules. Given: events folded into a `State`. When: one command
//! decided against it. Then: the exact `Decision` (event and stream expectation) or the exact
//! `DomainError` and the field paths it names. Pure: no I/O, fixed ids, fixed times.
use std::collections::BTreeSet;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use claims_ledger_domain::command::{
    AssertClaim, IssueCorrection, PartyDetails, RecordStatement, RegisterSource, ReviewClaim,
    SpanInput,
};
use claims_ledger_domain::decide::{is_slug, slice_code_points};
use claims_ledger_domain::event::{
    Claim, Correction, DecodeError, Party, Review, Source, Statement, SCHEMA_VERSION,
};
use claims_ledger_domain::limits::{MAX_SLUG, MAX_SOURCE_TEXT_BYTES, MAX_SPANS};
use claims_ledger_domain::model::{
    Affiliation, CorrectionKind, Mode, PartyKind, Precision, Rating, Span, StatedTime, TargetKind,
};
use claims_ledger_domain::state::Status;
use claims_ledger_domain::{
    decide, Command, Context, Decision, DomainError, Event, FieldViolation, Overlay, State,
    StreamExpectation, View,
};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Paragraphs of the Al Jazeera report (shared/corpus), verbatim. Curly quotes are 3 bytes in UTF-8,
/// so code-point offsets and byte offsets diverge after the first one.
const TEXT: &str = concat!(
    "Russia has proposed a renewed round of peace talks with Ukraine in Istanbul, citing the Turkish city’s previous role as a host for negotiations between the two sides. However, Ukraine has yet to respond to the proposal, Russian Foreign Minister Sergey Lavrov said on Wednesday.\n\n",
    "Lavrov announced the offer during a press briefing in Moscow, stating that Russia remains open to diplomatic channels to resolve the ongoing conflict. “We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace,” Lavrov told reporters. He emphasized that the format used in early 2022 talks, which were mediated by Turkey, remains acceptable to Moscow.\n\n",
    "The Turkish government has not officially commented on Russia’s renewed suggestion, though Ankara has previously expressed its willingness to mediate between the two countries.\n\n",
    "Ukraine’s government has not released any formal statement in response to Lavrov’s remarks. President Volodymyr Zelenskyy’s administration has maintained that any peace talks must include the withdrawal of Russian troops from occupied territories and restoration of Ukraine’s territorial integrity, including Crimea.\n",
);

const QUOTE: &str =
    "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace";
const ZELENSKYY: &str = "President Volodymyr Zelenskyy’s administration has maintained that any peace talks must include the withdrawal of Russian troops from occupied territories and restoration of Ukraine’s territorial integrity, including Crimea";

const SOURCE_ID: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
const UNKNOWN_SOURCE: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00ff);
const STATEMENT_ID: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0101);
const STATEMENT_2: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0102);
const CLAIM_ID: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0201);
const CLAIM_2: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0202);
const REVIEW_ID: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0301);
const CORRECTION_ID: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0401);
const CORRECTION_2: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0402);

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

/// Wednesday 15 May 2024, 14:30 UTC: the report is published.
fn published() -> DateTime<Utc> {
    at(2024, 5, 15, 14, 30, 0)
}
fn retrieved() -> DateTime<Utc> {
    at(2024, 5, 16, 9, 0, 0)
}
/// When Lavrov spoke, the morning of the publication day.
fn said() -> DateTime<Utc> {
    at(2024, 5, 15, 10, 0, 0)
}
fn now() -> DateTime<Utc> {
    at(2024, 5, 16, 12, 0, 0)
}
fn ctx() -> Context {
    Context { now: now() }
}

/// Given: the write model folded from `events`.
fn given(events: &[Event]) -> State {
    let mut state = State::default();
    for e in events {
        state.apply(e);
    }
    state
}

/// When: `cmd` is decided against the state folded from `events`.
fn when(events: &[Event], cmd: Command) -> Result<Decision, DomainError> {
    decide(&given(events), &cmd, &ctx())
}

/// The event of a command that must succeed (used to build up history).
fn decided(events: &[Event], cmd: Command) -> Event {
    match when(events, cmd.clone()) {
        Ok(d) => d.event,
        Err(e) => panic!("fixture command {cmd:?} failed: {e}"),
    }
}

fn then_invalid(r: Result<Decision, DomainError>) -> Vec<String> {
    match r {
        Err(DomainError::Invalid(v)) => v.into_iter().map(|f| f.field).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn then_precondition(r: Result<Decision, DomainError>) -> String {
    match r {
        Err(DomainError::FailedPrecondition { field, .. }) => field,
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
}

fn not_found(field: &str, what: &'static str, id: impl ToString) -> Result<Decision, DomainError> {
    Err(DomainError::NotFound {
        field: field.to_string(),
        what,
        id: id.to_string(),
    })
}

fn already_exists(
    field: &str,
    what: &'static str,
    id: impl ToString,
) -> Result<Decision, DomainError> {
    Err(DomainError::AlreadyExists {
        field: field.to_string(),
        what,
        id: id.to_string(),
    })
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn some_id(u: Uuid) -> Option<String> {
    Some(u.to_string())
}

fn details(id: &str, kind: PartyKind, name: &str) -> PartyDetails {
    PartyDetails {
        party_id: id.to_string(),
        kind: Some(kind),
        name: name.to_string(),
        aliases: vec![],
        affiliations: vec![],
        description: String::new(),
    }
}

fn lavrov_details() -> PartyDetails {
    PartyDetails {
        aliases: vec!["Sergei Lavrov".into(), "Сергей Лавров".into()],
        affiliations: vec![Affiliation {
            organisation_id: "russia".into(),
            role: "Foreign Minister".into(),
            since: Some(at(2004, 3, 9, 0, 0, 0)),
            until: None,
        }],
        description: "Foreign Minister of Russia".into(),
        ..details("sergey-lavrov", PartyKind::Person, "Sergey Lavrov")
    }
}

fn party_event(d: &PartyDetails) -> Party {
    Party {
        party_id: d.party_id.clone(),
        kind: d.kind.unwrap(),
        name: d.name.clone(),
        aliases: d.aliases.clone(),
        affiliations: d.affiliations.clone(),
        description: d.description.clone(),
    }
}

fn registered(id: &str, kind: PartyKind, name: &str) -> Event {
    Event::PartyRegistered(party_event(&details(id, kind, name)))
}

fn source_cmd() -> RegisterSource {
    RegisterSource {
        source_id: some_id(SOURCE_ID),
        publisher: "Al Jazeera".into(),
        url: "https://www.aljazeera.com/news/2024/5/15/russia-proposes-peace-talks-in-istanbul"
            .into(),
        title: "Russia proposes renewed peace talks with Ukraine in Istanbul".into(),
        published_at: Some(published()),
        retrieved_at: Some(retrieved()),
        language: "en".into(),
        text: TEXT.into(),
    }
}

fn source_event() -> Event {
    Event::SourceRegistered(Source {
        source_id: SOURCE_ID,
        publisher: "Al Jazeera".into(),
        url: "https://www.aljazeera.com/news/2024/5/15/russia-proposes-peace-talks-in-istanbul"
            .into(),
        title: "Russia proposes renewed peace talks with Ukraine in Istanbul".into(),
        published_at: published(),
        retrieved_at: retrieved(),
        language: "en".into(),
        text: TEXT.into(),
        text_sha256: sha256_hex(TEXT),
    })
}

/// Russia, Ukraine, Lavrov (affiliated with Russia) and the source.
fn world() -> Vec<Event> {
    vec![
        registered("russia", PartyKind::State, "Russia"),
        registered("ukraine", PartyKind::State, "Ukraine"),
        Event::PartyRegistered(party_event(&lavrov_details())),
        source_event(),
    ]
}

/// Code-point offsets of `needle` in `text` (the first occurrence).
fn code_points_of(text: &str, needle: &str) -> (u32, u32) {
    let byte = text.find(needle).expect("needle is in the text");
    let start = text[..byte].chars().count();
    let end = start + needle.chars().count();
    (start as u32, end as u32)
}

fn span(source: Uuid, start: u32, end: u32, exact: &str) -> SpanInput {
    SpanInput {
        source_id: source.to_string(),
        start,
        end,
        exact: exact.to_string(),
    }
}

fn span_of(needle: &str) -> SpanInput {
    let (start, end) = code_points_of(TEXT, needle);
    span(SOURCE_ID, start, end, needle)
}

fn statement_cmd() -> RecordStatement {
    RecordStatement {
        statement_id: some_id(STATEMENT_ID),
        speaker_id: "sergey-lavrov".into(),
        on_behalf_of_id: Some("russia".into()),
        stated_time: Some(StatedTime {
            at: said(),
            precision: Precision::Instant,
        }),
        venue: Some("press briefing in Moscow".into()),
        mode: Some(Mode::DirectQuote),
        attribution_verb: "told reporters".into(),
        content: QUOTE.into(),
        spans: vec![span_of(QUOTE)],
        reports_statement_id: None,
    }
}

fn with_statement() -> Vec<Event> {
    let mut h = world();
    h.push(decided(&h, Command::RecordStatement(statement_cmd())));
    h
}

fn claim_cmd(id: Uuid) -> AssertClaim {
    AssertClaim {
        claim_id: some_id(id),
        statement_id: STATEMENT_ID.to_string(),
        party_id: "russia".into(),
        topic: "negotiation-venue".into(),
        stance: "Istanbul, in the early-2022 Turkey-mediated format".into(),
        conditions: vec!["Kyiv is genuinely interested in peace".into()],
    }
}

fn with_claim() -> Vec<Event> {
    let mut h = with_statement();
    h.push(decided(&h, Command::AssertClaim(claim_cmd(CLAIM_ID))));
    h
}

fn with_two_claims() -> Vec<Event> {
    let mut h = with_claim();
    h.push(decided(&h, Command::AssertClaim(claim_cmd(CLAIM_2))));
    h
}

fn review_cmd() -> ReviewClaim {
    ReviewClaim {
        review_id: some_id(REVIEW_ID),
        claim_id: CLAIM_ID.to_string(),
        reviewer: "Example Fact Check".into(),
        rating: Some(Rating {
            label: "Accurately quoted".into(),
            value: 5,
            best: 5,
            worst: 1,
        }),
        explanation: "Matches the reporter’s transcript of the briefing.".into(),
        url: Some("https://factcheck.example.org/lavrov-istanbul".into()),
    }
}

fn correction_cmd(
    id: Uuid,
    target_kind: TargetKind,
    target: Uuid,
    kind: CorrectionKind,
    replacement: Option<Uuid>,
) -> IssueCorrection {
    IssueCorrection {
        correction_id: some_id(id),
        target_kind: Some(target_kind),
        target_id: target.to_string(),
        kind: Some(kind),
        reason: "Misattributed in the first recording".into(),
        replacement_id: replacement.map(|u| u.to_string()),
    }
}

fn retract_claim(id: Uuid, target: Uuid) -> Command {
    Command::IssueCorrection(correction_cmd(
        id,
        TargetKind::Claim,
        target,
        CorrectionKind::Retract,
        None,
    ))
}

// ---------------------------------------------------------------------------------------------
// Register / update party
// ---------------------------------------------------------------------------------------------

#[test]
fn register_party_creates_its_stream() {
    let d = lavrov_details();
    let decision = when(
        &[registered("russia", PartyKind::State, "Russia")],
        Command::RegisterParty(d.clone()),
    )
    .unwrap();
    assert_eq!(
        decision,
        Decision {
            event: Event::PartyRegistered(party_event(&d)),
            expectation: StreamExpectation::NoStream,
        }
    );
    assert_eq!(decision.event.stream(), "party-sergey-lavrov");
    assert_eq!(decision.event.entity_id(), "sergey-lavrov");
}

#[test]
fn register_party_twice_is_already_exists() {
    assert_eq!(
        when(
            &[registered("russia", PartyKind::State, "Russia")],
            Command::RegisterParty(details("russia", PartyKind::State, "Russian Federation")),
        ),
        already_exists("party_id", "party", "russia")
    );
}

#[test]
fn register_party_rejects_ids_that_are_not_slugs() {
    let too_long = "a".repeat(MAX_SLUG + 1);
    for bad in [
        "Russia",
        "a--b",
        "-x",
        "x-",
        "a_b",
        "a b",
        "rüssia",
        "",
        too_long.as_str(),
    ] {
        let r = when(
            &[],
            Command::RegisterParty(details(bad, PartyKind::State, "Russia")),
        );
        assert_eq!(then_invalid(r), ["party_id"], "party id {bad:?}");
    }
    let longest = "a".repeat(MAX_SLUG);
    for good in [
        "russia",
        "a-b",
        "x",
        "un-security-council",
        "g7",
        longest.as_str(),
    ] {
        assert!(
            when(
                &[],
                Command::RegisterParty(details(good, PartyKind::State, "Russia"))
            )
            .is_ok(),
            "party id {good:?}"
        );
    }
}

#[test]
fn register_party_collects_every_violation() {
    let d = PartyDetails {
        kind: None,
        name: String::new(),
        ..details("russia", PartyKind::State, "")
    };
    assert_eq!(
        then_invalid(when(&[], Command::RegisterParty(d))),
        ["kind", "name"]
    );
    // Validation comes before any lookup: a bad slug and an unknown affiliation report only the slug.
    let d = PartyDetails {
        party_id: "Sergey Lavrov".into(),
        kind: None,
        name: "  ".into(),
        ..lavrov_details()
    };
    assert_eq!(
        then_invalid(when(&[], Command::RegisterParty(d))),
        ["party_id", "kind", "name"]
    );
}

#[test]
fn register_party_affiliated_with_an_unknown_party_is_not_found() {
    assert_eq!(
        when(&[], Command::RegisterParty(lavrov_details())),
        not_found("affiliations[0].organisation_id", "party", "russia")
    );
}

#[test]
fn register_party_affiliated_with_itself_is_invalid() {
    let d = PartyDetails {
        affiliations: vec![Affiliation {
            organisation_id: "sergey-lavrov".into(),
            role: "Himself".into(),
            since: None,
            until: None,
        }],
        ..lavrov_details()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RegisterParty(d))),
        ["affiliations[0].organisation_id"]
    );
}

#[test]
fn register_party_affiliation_ending_before_it_starts_is_invalid() {
    let d = PartyDetails {
        affiliations: vec![
            lavrov_details().affiliations[0].clone(),
            Affiliation {
                organisation_id: "russia".into(),
                role: "Ambassador to the UN".into(),
                since: Some(at(2004, 1, 1, 0, 0, 0)),
                until: Some(at(1994, 1, 1, 0, 0, 0)),
            },
        ],
        ..lavrov_details()
    };
    let state = [registered("russia", PartyKind::State, "Russia")];
    assert_eq!(
        then_invalid(when(&state, Command::RegisterParty(d))),
        ["affiliations[1].until"]
    );
}

#[test]
fn update_unknown_party_is_not_found() {
    assert_eq!(
        when(
            &[],
            Command::UpdateParty(details("russia", PartyKind::State, "Russia"))
        ),
        not_found("party_id", "party", "russia")
    );
}

#[test]
fn update_party_replaces_its_details_on_the_existing_stream() {
    let d = PartyDetails {
        aliases: vec!["Russian Federation".into()],
        ..details("russia", PartyKind::State, "Russia")
    };
    let history = [registered("russia", PartyKind::State, "Russia")];
    let decision = when(&history, Command::UpdateParty(d.clone())).unwrap();
    assert_eq!(
        decision,
        Decision {
            event: Event::PartyUpdated(party_event(&d)),
            expectation: StreamExpectation::Exists,
        }
    );
    let mut state = given(&history);
    assert_eq!(state.party("russia").unwrap().revision, 0);
    state.apply(&decision.event);
    assert_eq!(state.party("russia").unwrap().revision, 1);
}

// ---------------------------------------------------------------------------------------------
// Register source
// ---------------------------------------------------------------------------------------------

#[test]
fn register_source_computes_the_sha256_of_its_text() {
    let decision = when(&[], Command::RegisterSource(source_cmd())).unwrap();
    assert_eq!(
        decision,
        Decision {
            event: source_event(),
            expectation: StreamExpectation::NoStream,
        }
    );
    let Event::SourceRegistered(s) = &decision.event else {
        unreachable!()
    };
    assert_eq!(s.text_sha256, sha256_hex(TEXT));
    assert_eq!(s.text_sha256.len(), 64);
    assert_eq!(decision.event.stream(), format!("source-{SOURCE_ID}"));

    // Known answer (FIPS 180-2, "abc").
    let abc = RegisterSource {
        text: "abc".into(),
        ..source_cmd()
    };
    let Event::SourceRegistered(s) = decided(&[], Command::RegisterSource(abc)) else {
        unreachable!()
    };
    assert_eq!(
        s.text_sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn register_source_twice_is_already_exists() {
    assert_eq!(
        when(&[source_event()], Command::RegisterSource(source_cmd())),
        already_exists("source_id", "source", SOURCE_ID)
    );
}

#[test]
fn register_source_text_is_bounded_in_utf8_bytes() {
    // 21,846 code points but 65,538 bytes: the limit is on bytes.
    let text = "’".repeat(MAX_SOURCE_TEXT_BYTES / 3 + 1);
    assert!(text.chars().count() < MAX_SOURCE_TEXT_BYTES);
    let cmd = RegisterSource {
        text,
        ..source_cmd()
    };
    assert_eq!(
        then_invalid(when(&[], Command::RegisterSource(cmd))),
        ["text"]
    );
    let exactly = RegisterSource {
        text: "a".repeat(MAX_SOURCE_TEXT_BYTES),
        ..source_cmd()
    };
    assert!(when(&[], Command::RegisterSource(exactly)).is_ok());
    for blank in ["", " \n\t "] {
        let cmd = RegisterSource {
            text: blank.into(),
            ..source_cmd()
        };
        assert_eq!(
            then_invalid(when(&[], Command::RegisterSource(cmd))),
            ["text"]
        );
    }
}

#[test]
fn register_source_retrieved_before_published_is_invalid() {
    let cmd = RegisterSource {
        retrieved_at: Some(published() - Duration::seconds(1)),
        ..source_cmd()
    };
    assert_eq!(
        then_invalid(when(&[], Command::RegisterSource(cmd))),
        ["retrieved_at"]
    );
}

#[test]
fn register_source_published_in_the_future_is_invalid_beyond_the_clock_skew() {
    let within = RegisterSource {
        published_at: Some(now() + Duration::seconds(299)),
        retrieved_at: Some(now() + Duration::seconds(299)),
        ..source_cmd()
    };
    assert!(when(&[], Command::RegisterSource(within)).is_ok());

    let beyond = RegisterSource {
        published_at: Some(now() + Duration::seconds(301)),
        retrieved_at: Some(now() + Duration::seconds(301)),
        ..source_cmd()
    };
    assert_eq!(
        then_invalid(when(&[], Command::RegisterSource(beyond))),
        ["published_at", "retrieved_at"]
    );

    let missing = RegisterSource {
        published_at: None,
        retrieved_at: None,
        ..source_cmd()
    };
    assert_eq!(
        then_invalid(when(&[], Command::RegisterSource(missing))),
        ["published_at", "retrieved_at"]
    );

    let ancient = RegisterSource {
        published_at: Some(at(1799, 12, 31, 23, 59, 59)),
        ..source_cmd()
    };
    assert_eq!(
        then_invalid(when(&[], Command::RegisterSource(ancient))),
        ["published_at"]
    );
}

#[test]
fn register_source_url_must_be_absolute_http() {
    for bad in [
        "ftp://x",
        "https://",
        "http://",
        "https:///path",
        "https://?q=1",
        "not a url",
        "www.aljazeera.com/news",
        "https://www.aljazeera.com/a b",
        "",
    ] {
        let cmd = RegisterSource {
            url: bad.into(),
            ..source_cmd()
        };
        assert_eq!(
            then_invalid(when(&[], Command::RegisterSource(cmd))),
            ["url"],
            "url {bad:?}"
        );
    }
    for good in ["http://x", "https://example.org/path?q=1#frag"] {
        let cmd = RegisterSource {
            url: good.into(),
            ..source_cmd()
        };
        assert!(
            when(&[], Command::RegisterSource(cmd)).is_ok(),
            "url {good:?}"
        );
    }
}

#[test]
fn register_source_language_must_be_a_language_tag() {
    for bad in [
        "",
        "e",
        "english",
        "en-",
        "en_GB",
        "12",
        "en-toolongsubtag",
        "-en",
    ] {
        let cmd = RegisterSource {
            language: bad.into(),
            ..source_cmd()
        };
        assert_eq!(
            then_invalid(when(&[], Command::RegisterSource(cmd))),
            ["language"],
            "language {bad:?}"
        );
    }
    for good in ["en", "en-GB", "uk", "zh-Hant-TW", "tr"] {
        let cmd = RegisterSource {
            language: good.into(),
            ..source_cmd()
        };
        assert!(
            when(&[], Command::RegisterSource(cmd)).is_ok(),
            "language {good:?}"
        );
    }
}

#[test]
fn register_source_needs_a_non_nil_uuid() {
    for bad in [
        None,
        Some(String::new()),
        Some("not-a-uuid".to_string()),
        Some(Uuid::nil().to_string()),
    ] {
        let cmd = RegisterSource {
            source_id: bad.clone(),
            ..source_cmd()
        };
        assert_eq!(
            then_invalid(when(&[], Command::RegisterSource(cmd))),
            ["source_id"],
            "source_id {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Record statement
// ---------------------------------------------------------------------------------------------

#[test]
fn record_statement_with_a_code_point_span() {
    let (start, end) = code_points_of(TEXT, QUOTE);
    // One curly apostrophe and one opening quote precede the quote: 4 extra bytes.
    assert_eq!(TEXT.find(QUOTE).unwrap(), start as usize + 4);
    let decision = when(&world(), Command::RecordStatement(statement_cmd())).unwrap();
    assert_eq!(
        decision,
        Decision {
            event: Event::StatementRecorded(Statement {
                statement_id: STATEMENT_ID,
                speaker_id: "sergey-lavrov".into(),
                on_behalf_of_id: Some("russia".into()),
                stated_time: StatedTime {
                    at: said(),
                    precision: Precision::Instant,
                },
                venue: Some("press briefing in Moscow".into()),
                mode: Mode::DirectQuote,
                attribution_verb: "told reporters".into(),
                content: QUOTE.into(),
                spans: vec![Span {
                    source_id: SOURCE_ID,
                    start,
                    end,
                    exact: QUOTE.into(),
                }],
                reports_statement_id: None,
            }),
            expectation: StreamExpectation::NoStream,
        }
    );
    assert_eq!(decision.event.stream(), format!("statement-{STATEMENT_ID}"));
}

#[test]
fn record_statement_span_after_many_curly_quotes_and_containing_one() {
    let (start, end) = code_points_of(TEXT, ZELENSKYY);
    let byte = TEXT.find(ZELENSKYY).unwrap();
    assert_eq!(
        byte - start as usize,
        2 * 6,
        "six 3-byte characters precede it"
    );
    assert_eq!(
        ZELENSKYY.len() - ZELENSKYY.chars().count(),
        2 * 2,
        "two inside it"
    );
    let cmd = RecordStatement {
        speaker_id: "ukraine".into(),
        on_behalf_of_id: None,
        venue: None,
        mode: Some(Mode::Paraphrase),
        attribution_verb: "has maintained".into(),
        content: "Any peace talks must include the withdrawal of Russian troops.".into(),
        spans: vec![span(SOURCE_ID, start, end, ZELENSKYY)],
        stated_time: Some(StatedTime {
            at: at(2024, 5, 15, 0, 0, 0),
            precision: Precision::Day,
        }),
        ..statement_cmd()
    };
    let Event::StatementRecorded(s) = decided(&world(), Command::RecordStatement(cmd)) else {
        unreachable!()
    };
    assert_eq!(
        s.spans,
        [Span {
            source_id: SOURCE_ID,
            start,
            end,
            exact: ZELENSKYY.into()
        }]
    );
    // The exact text is what the code points select.
    assert_eq!(
        slice_code_points(TEXT, start as usize, end as usize),
        Some(ZELENSKYY)
    );
}

#[test]
fn record_statement_span_given_in_bytes_does_not_match() {
    let byte = TEXT.find(QUOTE).unwrap() as u32;
    let cmd = RecordStatement {
        spans: vec![span(SOURCE_ID, byte, byte + QUOTE.len() as u32, QUOTE)],
        ..statement_cmd()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        ["spans[0].exact"]
    );
}

#[test]
fn record_statement_span_with_other_text_does_not_match() {
    let mut s = span_of(QUOTE);
    s.exact =
        "We are ready to resume negotiations in Istanbul if Kyiv is genuinely interested in peace"
            .into();
    let cmd = RecordStatement {
        spans: vec![span_of(QUOTE), s],
        ..statement_cmd()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        ["spans[1].exact"]
    );
}

#[test]
fn record_statement_span_past_the_end_is_invalid() {
    let len = TEXT.chars().count() as u32;
    // The byte length is past the end too, though it is inside the text in bytes.
    assert!(TEXT.len() as u32 > len);
    for (start, end) in [
        (len - 3, len + 1),
        (len, len + 1),
        (len - 2, TEXT.len() as u32),
    ] {
        let cmd = RecordStatement {
            spans: vec![span(SOURCE_ID, start, end, "a.\n")],
            ..statement_cmd()
        };
        assert_eq!(
            then_invalid(when(&world(), Command::RecordStatement(cmd))),
            ["spans[0].end"],
            "[{start}, {end})"
        );
    }
    // The very end is fine: end is exclusive.
    let cmd = RecordStatement {
        spans: vec![span(SOURCE_ID, len - 8, len, "Crimea.\n")],
        ..statement_cmd()
    };
    assert!(when(&world(), Command::RecordStatement(cmd)).is_ok());
}

#[test]
fn record_statement_empty_or_reversed_span_is_invalid() {
    for (start, end) in [(10, 10), (10, 5), (0, 0)] {
        let cmd = RecordStatement {
            spans: vec![span(SOURCE_ID, start, end, "x")],
            ..statement_cmd()
        };
        assert_eq!(
            then_invalid(when(&world(), Command::RecordStatement(cmd))),
            ["spans[0].end"],
            "[{start}, {end})"
        );
    }
}

#[test]
fn record_statement_by_an_unknown_speaker_is_not_found() {
    let cmd = RecordStatement {
        speaker_id: "recep-tayyip-erdogan".into(),
        ..statement_cmd()
    };
    assert_eq!(
        when(&world(), Command::RecordStatement(cmd)),
        not_found("speaker_id", "party", "recep-tayyip-erdogan")
    );
    let cmd = RecordStatement {
        speaker_id: "Lavrov".into(),
        ..statement_cmd()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        ["speaker_id"]
    );
}

#[test]
fn record_statement_on_behalf_of_an_unknown_party_is_not_found() {
    let cmd = RecordStatement {
        on_behalf_of_id: Some("turkey".into()),
        ..statement_cmd()
    };
    assert_eq!(
        when(&world(), Command::RecordStatement(cmd)),
        not_found("on_behalf_of_id", "party", "turkey")
    );
    // An empty on_behalf_of means none.
    let cmd = RecordStatement {
        on_behalf_of_id: Some(String::new()),
        ..statement_cmd()
    };
    let Event::StatementRecorded(s) = decided(&world(), Command::RecordStatement(cmd)) else {
        unreachable!()
    };
    assert_eq!(s.on_behalf_of_id, None);
}

#[test]
fn record_statement_citing_an_unknown_source_is_not_found() {
    let (start, end) = code_points_of(TEXT, QUOTE);
    let cmd = RecordStatement {
        spans: vec![span(UNKNOWN_SOURCE, start, end, QUOTE)],
        ..statement_cmd()
    };
    assert_eq!(
        when(&world(), Command::RecordStatement(cmd)),
        not_found("spans[0].source_id", "source", UNKNOWN_SOURCE)
    );
    let cmd = RecordStatement {
        spans: vec![span_of(QUOTE), span(UNKNOWN_SOURCE, start, end, QUOTE)],
        ..statement_cmd()
    };
    assert_eq!(
        when(&world(), Command::RecordStatement(cmd)),
        not_found("spans[1].source_id", "source", UNKNOWN_SOURCE)
    );
}

#[test]
fn record_statement_said_after_its_source_was_published_is_invalid() {
    let cmd = RecordStatement {
        stated_time: Some(StatedTime {
            at: published() + Duration::hours(1),
            precision: Precision::Instant,
        }),
        ..statement_cmd()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        ["stated_time.at"]
    );
    // Exactly at publication is fine.
    let cmd = RecordStatement {
        stated_time: Some(StatedTime {
            at: published(),
            precision: Precision::Instant,
        }),
        ..statement_cmd()
    };
    assert!(when(&world(), Command::RecordStatement(cmd)).is_ok());
}

#[test]
fn record_statement_said_in_the_future_is_invalid() {
    let cmd = RecordStatement {
        stated_time: Some(StatedTime {
            at: now() + Duration::days(2),
            precision: Precision::Instant,
        }),
        ..statement_cmd()
    };
    let fields = then_invalid(when(&world(), Command::RecordStatement(cmd)));
    assert_eq!(fields, ["stated_time.at"]);
}

#[test]
fn record_statement_day_precision_truncates_to_midnight_utc() {
    // "said on Wednesday": 18:00 is after the 14:30 publication, but the day is the same day.
    let cmd = RecordStatement {
        stated_time: Some(StatedTime {
            at: at(2024, 5, 15, 18, 0, 0),
            precision: Precision::Day,
        }),
        ..statement_cmd()
    };
    let Event::StatementRecorded(s) = decided(&world(), Command::RecordStatement(cmd)) else {
        unreachable!()
    };
    assert_eq!(
        s.stated_time,
        StatedTime {
            at: at(2024, 5, 15, 0, 0, 0),
            precision: Precision::Day
        }
    );
}

#[test]
fn record_statement_month_and_year_precision_truncate_to_the_first() {
    for (precision, expected) in [
        (Precision::Month, at(2024, 5, 1, 0, 0, 0)),
        (Precision::Year, at(2024, 1, 1, 0, 0, 0)),
    ] {
        let cmd = RecordStatement {
            stated_time: Some(StatedTime {
                at: at(2024, 5, 15, 10, 17, 42),
                precision,
            }),
            ..statement_cmd()
        };
        let Event::StatementRecorded(s) = decided(&world(), Command::RecordStatement(cmd)) else {
            unreachable!()
        };
        assert_eq!(
            s.stated_time,
            StatedTime {
                at: expected,
                precision
            }
        );
    }
}

#[test]
fn record_statement_needs_between_one_and_max_spans() {
    let cmd = RecordStatement {
        spans: vec![],
        ..statement_cmd()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        ["spans"]
    );
    let cmd = RecordStatement {
        spans: vec![span_of(QUOTE); MAX_SPANS + 1],
        ..statement_cmd()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        ["spans"]
    );
    let cmd = RecordStatement {
        spans: vec![span_of(QUOTE); MAX_SPANS],
        ..statement_cmd()
    };
    assert!(when(&world(), Command::RecordStatement(cmd)).is_ok());
}

#[test]
fn record_statement_collects_every_violation() {
    let cmd = RecordStatement {
        statement_id: None,
        stated_time: None,
        mode: None,
        attribution_verb: String::new(),
        content: "   ".into(),
        spans: vec![span(SOURCE_ID, 5, 5, ""), span(SOURCE_ID, 0, 1, "R")],
        ..statement_cmd()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        [
            "statement_id",
            "stated_time",
            "mode",
            "attribution_verb",
            "content",
            "spans[0].end",
            "spans[0].exact",
        ]
    );
}

#[test]
fn record_statement_twice_is_already_exists() {
    assert_eq!(
        when(&with_statement(), Command::RecordStatement(statement_cmd())),
        already_exists("statement_id", "statement", STATEMENT_ID)
    );
}

#[test]
fn record_statement_reporting_an_unknown_statement_is_not_found() {
    let cmd = RecordStatement {
        reports_statement_id: some_id(STATEMENT_2),
        ..statement_cmd()
    };
    assert_eq!(
        when(&world(), Command::RecordStatement(cmd)),
        not_found("reports_statement_id", "statement", STATEMENT_2)
    );
}

#[test]
fn record_statement_reporting_itself_is_invalid() {
    let cmd = RecordStatement {
        reports_statement_id: some_id(STATEMENT_ID),
        ..statement_cmd()
    };
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        ["reports_statement_id"]
    );
}

#[test]
fn record_statement_reporting_a_known_statement() {
    let cmd = RecordStatement {
        statement_id: some_id(STATEMENT_2),
        speaker_id: "russia".into(),
        on_behalf_of_id: None,
        mode: Some(Mode::Reported),
        attribution_verb: "said".into(),
        content: "Ukraine has yet to respond to the proposal.".into(),
        spans: vec![span_of(
            "Ukraine has yet to respond to the proposal, Russian Foreign Minister Sergey Lavrov said on Wednesday",
        )],
        reports_statement_id: some_id(STATEMENT_ID),
        ..statement_cmd()
    };
    let decision = when(&with_statement(), Command::RecordStatement(cmd)).unwrap();
    assert_eq!(decision.expectation, StreamExpectation::NoStream);
    let Event::StatementRecorded(s) = decision.event else {
        unreachable!()
    };
    assert_eq!(s.reports_statement_id, Some(STATEMENT_ID));
}

// ---------------------------------------------------------------------------------------------
// Assert claim
// ---------------------------------------------------------------------------------------------

#[test]
fn assert_claim_creates_its_stream() {
    let c = claim_cmd(CLAIM_ID);
    let decision = when(&with_statement(), Command::AssertClaim(c.clone())).unwrap();
    assert_eq!(
        decision,
        Decision {
            event: Event::ClaimAsserted(Claim {
                claim_id: CLAIM_ID,
                statement_id: STATEMENT_ID,
                party_id: "russia".into(),
                topic: "negotiation-venue".into(),
                stance: c.stance.clone(),
                conditions: c.conditions.clone(),
            }),
            expectation: StreamExpectation::NoStream,
        }
    );
    assert_eq!(decision.event.stream(), format!("claim-{CLAIM_ID}"));
}

#[test]
fn assert_claim_twice_is_already_exists() {
    assert_eq!(
        when(&with_claim(), Command::AssertClaim(claim_cmd(CLAIM_ID))),
        already_exists("claim_id", "claim", CLAIM_ID)
    );
}

#[test]
fn assert_claim_on_an_unknown_statement_is_not_found() {
    assert_eq!(
        when(&world(), Command::AssertClaim(claim_cmd(CLAIM_ID))),
        not_found("statement_id", "statement", STATEMENT_ID)
    );
}

#[test]
fn assert_claim_for_an_unknown_party_is_not_found() {
    let c = AssertClaim {
        party_id: "turkey".into(),
        ..claim_cmd(CLAIM_ID)
    };
    assert_eq!(
        when(&with_statement(), Command::AssertClaim(c)),
        not_found("party_id", "party", "turkey")
    );
}

#[test]
fn assert_claim_on_a_retracted_statement_fails_its_precondition() {
    let mut history = with_statement();
    history.push(Event::CorrectionIssued(Correction {
        correction_id: CORRECTION_ID,
        target_kind: TargetKind::Statement,
        target_id: STATEMENT_ID,
        kind: CorrectionKind::Retract,
        reason: "Quote was from 2022".into(),
        replacement_id: None,
    }));
    assert_eq!(
        then_precondition(when(&history, Command::AssertClaim(claim_cmd(CLAIM_ID)))),
        "statement_id"
    );
}

#[test]
fn assert_claim_topic_must_be_a_slug() {
    for bad in ["Negotiation Venue", "negotiation_venue", "venue-", ""] {
        let c = AssertClaim {
            topic: bad.into(),
            ..claim_cmd(CLAIM_ID)
        };
        assert_eq!(
            then_invalid(when(&with_statement(), Command::AssertClaim(c))),
            ["topic"],
            "topic {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Review claim
// ---------------------------------------------------------------------------------------------

#[test]
fn review_claim_appends_to_the_existing_claim_stream() {
    let decision = when(&with_claim(), Command::ReviewClaim(review_cmd())).unwrap();
    let r = review_cmd();
    assert_eq!(
        decision,
        Decision {
            event: Event::ClaimReviewed(Review {
                review_id: REVIEW_ID,
                claim_id: CLAIM_ID,
                reviewer: r.reviewer,
                rating: r.rating.unwrap(),
                explanation: r.explanation,
                url: r.url,
            }),
            expectation: StreamExpectation::Exists,
        }
    );
    assert_eq!(decision.event.stream(), format!("claim-{CLAIM_ID}"));
    assert_eq!(decision.event.entity_id(), REVIEW_ID.to_string());
}

#[test]
fn review_of_an_unknown_claim_is_not_found() {
    assert_eq!(
        when(&with_statement(), Command::ReviewClaim(review_cmd())),
        not_found("claim_id", "claim", CLAIM_ID)
    );
}

#[test]
fn review_rating_value_must_be_within_the_scale() {
    for value in [0, 6, -1] {
        let cmd = ReviewClaim {
            rating: Some(Rating {
                label: "Accurately quoted".into(),
                value,
                best: 5,
                worst: 1,
            }),
            ..review_cmd()
        };
        assert_eq!(
            then_invalid(when(&with_claim(), Command::ReviewClaim(cmd))),
            ["rating.value"],
            "value {value}"
        );
    }
    // A reversed scale names worst; a value without a scale names best.
    let reversed = ReviewClaim {
        rating: Some(Rating {
            label: "x".into(),
            value: 3,
            best: 1,
            worst: 5,
        }),
        ..review_cmd()
    };
    assert_eq!(
        then_invalid(when(&with_claim(), Command::ReviewClaim(reversed))),
        ["rating.worst"]
    );
    let unscaled = ReviewClaim {
        rating: Some(Rating {
            label: "x".into(),
            value: 3,
            best: 0,
            worst: 0,
        }),
        ..review_cmd()
    };
    assert_eq!(
        then_invalid(when(&with_claim(), Command::ReviewClaim(unscaled))),
        ["rating.best"]
    );
    let label_only = ReviewClaim {
        rating: Some(Rating {
            label: "Missing context".into(),
            value: 0,
            best: 0,
            worst: 0,
        }),
        ..review_cmd()
    };
    assert!(when(&with_claim(), Command::ReviewClaim(label_only)).is_ok());
}

#[test]
fn review_id_already_used_is_already_exists() {
    let mut history = with_claim();
    history.push(decided(&history, Command::ReviewClaim(review_cmd())));
    assert_eq!(
        when(&history, Command::ReviewClaim(review_cmd())),
        already_exists("review_id", "review", REVIEW_ID)
    );
    // Reviews and corrections share one id space.
    let cmd = ReviewClaim {
        review_id: some_id(CORRECTION_ID),
        ..review_cmd()
    };
    history.push(decided(&history, retract_claim(CORRECTION_ID, CLAIM_ID)));
    assert_eq!(
        when(&history, Command::ReviewClaim(cmd)),
        already_exists("review_id", "review", CORRECTION_ID)
    );
}

// ---------------------------------------------------------------------------------------------
// Issue correction
// ---------------------------------------------------------------------------------------------

#[test]
fn retracting_a_fresh_claim_expects_revision_zero() {
    let decision = when(&with_claim(), retract_claim(CORRECTION_ID, CLAIM_ID)).unwrap();
    assert_eq!(
        decision,
        Decision {
            event: Event::CorrectionIssued(Correction {
                correction_id: CORRECTION_ID,
                target_kind: TargetKind::Claim,
                target_id: CLAIM_ID,
                kind: CorrectionKind::Retract,
                reason: "Misattributed in the first recording".into(),
                replacement_id: None,
            }),
            expectation: StreamExpectation::Exact(0),
        }
    );
    assert_eq!(decision.event.stream(), format!("claim-{CLAIM_ID}"));
}

#[test]
fn retracting_a_reviewed_claim_expects_the_current_revision() {
    let mut history = with_claim();
    history.push(decided(&history, Command::ReviewClaim(review_cmd())));
    assert_eq!(
        when(&history, retract_claim(CORRECTION_ID, CLAIM_ID))
            .unwrap()
            .expectation,
        StreamExpectation::Exact(1)
    );
    // An erratum does not change the status but moves the revision.
    history.push(decided(
        &history,
        Command::IssueCorrection(correction_cmd(
            CORRECTION_2,
            TargetKind::Claim,
            CLAIM_ID,
            CorrectionKind::Erratum,
            None,
        )),
    ));
    assert_eq!(
        when(&history, retract_claim(CORRECTION_ID, CLAIM_ID))
            .unwrap()
            .expectation,
        StreamExpectation::Exact(2)
    );
}

#[test]
fn retracting_a_statement_targets_the_statement_stream() {
    let cmd = Command::IssueCorrection(correction_cmd(
        CORRECTION_ID,
        TargetKind::Statement,
        STATEMENT_ID,
        CorrectionKind::Retract,
        None,
    ));
    let decision = when(&with_claim(), cmd).unwrap();
    assert_eq!(decision.expectation, StreamExpectation::Exact(0));
    assert_eq!(decision.event.stream(), format!("statement-{STATEMENT_ID}"));
    // A claim id is not a statement id.
    let cmd = Command::IssueCorrection(correction_cmd(
        CORRECTION_ID,
        TargetKind::Statement,
        CLAIM_ID,
        CorrectionKind::Retract,
        None,
    ));
    assert_eq!(
        when(&with_claim(), cmd),
        not_found("target_id", "statement", CLAIM_ID)
    );
}

#[test]
fn retracting_twice_fails_its_precondition() {
    let mut history = with_claim();
    history.push(decided(&history, retract_claim(CORRECTION_ID, CLAIM_ID)));
    assert_eq!(
        then_precondition(when(&history, retract_claim(CORRECTION_2, CLAIM_ID))),
        "target_id"
    );
    // The same correction id again is already used.
    assert_eq!(
        when(&history, retract_claim(CORRECTION_ID, CLAIM_ID)),
        already_exists("correction_id", "correction", CORRECTION_ID)
    );
}

#[test]
fn supersede_needs_a_replacement() {
    let cmd = correction_cmd(
        CORRECTION_ID,
        TargetKind::Claim,
        CLAIM_ID,
        CorrectionKind::Supersede,
        None,
    );
    assert_eq!(
        then_invalid(when(
            &with_two_claims(),
            Command::IssueCorrection(cmd.clone())
        )),
        ["replacement_id"]
    );
    let empty = IssueCorrection {
        replacement_id: Some(String::new()),
        ..cmd
    };
    assert_eq!(
        then_invalid(when(&with_two_claims(), Command::IssueCorrection(empty))),
        ["replacement_id"]
    );
}

#[test]
fn retract_must_not_name_a_replacement() {
    let cmd = correction_cmd(
        CORRECTION_ID,
        TargetKind::Claim,
        CLAIM_ID,
        CorrectionKind::Retract,
        Some(CLAIM_2),
    );
    assert_eq!(
        then_invalid(when(&with_two_claims(), Command::IssueCorrection(cmd))),
        ["replacement_id"]
    );
}

#[test]
fn supersede_by_an_unknown_replacement_is_not_found() {
    let cmd = correction_cmd(
        CORRECTION_ID,
        TargetKind::Claim,
        CLAIM_ID,
        CorrectionKind::Supersede,
        Some(CLAIM_2),
    );
    assert_eq!(
        when(&with_claim(), Command::IssueCorrection(cmd)),
        not_found("replacement_id", "claim", CLAIM_2)
    );
}

#[test]
fn supersede_by_itself_is_invalid() {
    let cmd = correction_cmd(
        CORRECTION_ID,
        TargetKind::Claim,
        CLAIM_ID,
        CorrectionKind::Supersede,
        Some(CLAIM_ID),
    );
    assert_eq!(
        then_invalid(when(&with_claim(), Command::IssueCorrection(cmd))),
        ["replacement_id"]
    );
}

#[test]
fn a_superseded_claim_cannot_be_corrected_again() {
    let mut history = with_two_claims();
    let supersede = Command::IssueCorrection(correction_cmd(
        CORRECTION_ID,
        TargetKind::Claim,
        CLAIM_ID,
        CorrectionKind::Supersede,
        Some(CLAIM_2),
    ));
    let decision = when(&history, supersede).unwrap();
    assert_eq!(decision.expectation, StreamExpectation::Exact(0));
    history.push(decision.event);

    let state = given(&history);
    assert_eq!(
        state.claim(&CLAIM_ID).unwrap().status,
        Status::Superseded(CLAIM_2)
    );
    assert_eq!(state.claim(&CLAIM_ID).unwrap().revision, 1);
    assert_eq!(state.claim(&CLAIM_2).unwrap().status, Status::Active);

    for kind in [CorrectionKind::Retract, CorrectionKind::Erratum] {
        let cmd = correction_cmd(CORRECTION_2, TargetKind::Claim, CLAIM_ID, kind, None);
        assert_eq!(
            then_precondition(decide(&state, &Command::IssueCorrection(cmd), &ctx())),
            "target_id",
            "{kind:?}"
        );
    }
    // The superseded claim cannot replace anything either ...
    let back = correction_cmd(
        CORRECTION_2,
        TargetKind::Claim,
        CLAIM_2,
        CorrectionKind::Supersede,
        Some(CLAIM_ID),
    );
    assert_eq!(
        then_precondition(decide(&state, &Command::IssueCorrection(back), &ctx())),
        "replacement_id"
    );
    // ... while its replacement is still open to correction.
    assert_eq!(
        decide(&state, &retract_claim(CORRECTION_2, CLAIM_2), &ctx())
            .unwrap()
            .expectation,
        StreamExpectation::Exact(0)
    );
}

#[test]
fn correction_with_missing_fields_collects_every_violation() {
    let cmd = IssueCorrection {
        correction_id: None,
        target_kind: None,
        target_id: "claim-1".into(),
        kind: None,
        reason: String::new(),
        replacement_id: None,
    };
    assert_eq!(
        then_invalid(when(&with_claim(), Command::IssueCorrection(cmd))),
        [
            "correction_id",
            "target_kind",
            "target_id",
            "kind",
            "reason"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Overlay: a batch sees its own earlier events, the committed state does not
// ---------------------------------------------------------------------------------------------

#[test]
fn a_batch_can_refer_to_a_party_registered_earlier_in_it() {
    let base = given(&[]);
    let first = Command::RegisterParty(details("russia", PartyKind::State, "Russia"));
    let second = Command::RegisterParty(lavrov_details());

    let mut overlay = Overlay::new(&base);
    let d1 = decide(&overlay, &first, &ctx()).unwrap();
    overlay.apply(&d1.event);
    let d2 = decide(&overlay, &second, &ctx()).unwrap();
    assert_eq!(
        d2,
        Decision {
            event: Event::PartyRegistered(party_event(&lavrov_details())),
            expectation: StreamExpectation::NoStream,
        }
    );
    // Registering the first one again inside the batch is caught too.
    assert_eq!(
        decide(&overlay, &first, &ctx()),
        already_exists("party_id", "party", "russia")
    );

    // Against the bare committed state, the second command alone fails.
    assert_eq!(
        decide(&base, &second, &ctx()),
        not_found("affiliations[0].organisation_id", "party", "russia")
    );
    assert!(overlay.party("russia").is_some());
    assert!(base.party("russia").is_none());
}

#[test]
fn an_overlay_does_not_mutate_the_committed_state() {
    let base = given(&with_claim());
    let mut overlay = Overlay::new(&base);
    let review = decide(&overlay, &Command::ReviewClaim(review_cmd()), &ctx()).unwrap();
    overlay.apply(&review.event);
    let retract_statement = decide(
        &overlay,
        &Command::IssueCorrection(correction_cmd(
            CORRECTION_ID,
            TargetKind::Statement,
            STATEMENT_ID,
            CorrectionKind::Retract,
            None,
        )),
        &ctx(),
    )
    .unwrap();
    overlay.apply(&retract_statement.event);

    assert_eq!(overlay.claim(&CLAIM_ID).unwrap().revision, 1);
    assert!(overlay.has_annotation(&REVIEW_ID));
    assert_eq!(
        overlay.statement(&STATEMENT_ID).unwrap().status,
        Status::Retracted
    );
    assert_eq!(base.claim(&CLAIM_ID).unwrap().revision, 0);
    assert!(!base.has_annotation(&REVIEW_ID));
    assert_eq!(
        base.statement(&STATEMENT_ID).unwrap().status,
        Status::Active
    );

    // Decisions see the layer they are made against.
    let retract = retract_claim(CORRECTION_2, CLAIM_ID);
    assert_eq!(
        decide(&overlay, &retract, &ctx()).unwrap().expectation,
        StreamExpectation::Exact(1)
    );
    assert_eq!(
        decide(&base, &retract, &ctx()).unwrap().expectation,
        StreamExpectation::Exact(0)
    );
    assert_eq!(
        then_precondition(decide(
            &overlay,
            &Command::AssertClaim(claim_cmd(CLAIM_2)),
            &ctx()
        )),
        "statement_id"
    );
    assert!(decide(&base, &Command::AssertClaim(claim_cmd(CLAIM_2)), &ctx()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn prefixed_prefixes_every_field_path() {
    const P: &str = "commands[2].record_statement.";
    let invalid = DomainError::Invalid(vec![
        FieldViolation {
            field: "spans[0].exact".into(),
            description: "does not match".into(),
        },
        FieldViolation {
            field: "stated_time.at".into(),
            description: "is after the publication".into(),
        },
    ]);
    assert_eq!(
        invalid.prefixed(P),
        DomainError::Invalid(vec![
            FieldViolation {
                field: "commands[2].record_statement.spans[0].exact".into(),
                description: "does not match".into(),
            },
            FieldViolation {
                field: "commands[2].record_statement.stated_time.at".into(),
                description: "is after the publication".into(),
            },
        ])
    );
    assert_eq!(
        not_found("speaker_id", "party", "turkey")
            .unwrap_err()
            .prefixed(P),
        DomainError::NotFound {
            field: "commands[2].record_statement.speaker_id".into(),
            what: "party",
            id: "turkey".into(),
        }
    );
    assert_eq!(
        already_exists("statement_id", "statement", STATEMENT_ID)
            .unwrap_err()
            .prefixed(P),
        DomainError::AlreadyExists {
            field: "commands[2].record_statement.statement_id".into(),
            what: "statement",
            id: STATEMENT_ID.to_string(),
        }
    );
    assert_eq!(
        DomainError::FailedPrecondition {
            field: "target_id".into(),
            message: "already Retracted".into(),
        }
        .prefixed(P),
        DomainError::FailedPrecondition {
            field: "commands[2].record_statement.target_id".into(),
            message: "already Retracted".into(),
        }
    );
    // And on a real decision with several violations.
    let cmd = RecordStatement {
        mode: None,
        spans: vec![],
        ..statement_cmd()
    };
    let err = when(&world(), Command::RecordStatement(cmd))
        .unwrap_err()
        .prefixed(P);
    assert_eq!(
        then_invalid(Err(err)),
        [
            "commands[2].record_statement.mode",
            "commands[2].record_statement.spans"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers: slugs and code-point slices
// ---------------------------------------------------------------------------------------------

#[test]
fn slice_code_points_edge_cases() {
    let s = "Zelenskyy’s “peace”";
    assert_eq!(slice_code_points(s, 0, 9), Some("Zelenskyy"));
    assert_eq!(slice_code_points(s, 9, 10), Some("’"));
    assert_eq!(slice_code_points(s, 9, 11), Some("’s"));
    let n = s.chars().count();
    assert_eq!(n, 19);
    assert_eq!(slice_code_points(s, 12, n), Some("“peace”"));
    assert_eq!(slice_code_points(s, n - 1, n), Some("”"));
    assert_eq!(slice_code_points(s, 0, n), Some(s));
    assert_eq!(slice_code_points(s, 0, n + 1), None);
    assert_eq!(slice_code_points(s, n, n + 1), None);
    assert_eq!(slice_code_points(s, 5, 5), None);
    assert_eq!(slice_code_points(s, 6, 5), None);
    assert_eq!(slice_code_points(s, usize::MAX - 1, usize::MAX), None);
    assert_eq!(slice_code_points("", 0, 0), None);
    assert_eq!(slice_code_points("", 0, 1), None);
    // Combining characters count separately: "é" as e + U+0301 is two code points.
    assert_eq!(slice_code_points("e\u{301}", 0, 1), Some("e"));
    assert_eq!(slice_code_points("🇺🇦", 0, 1), Some("🇺"));
}

#[test]
fn is_slug_edge_cases() {
    for good in [
        "a",
        "0",
        "russia",
        "a-b",
        "a1-b2-c3",
        "2022-talks",
        "z".repeat(MAX_SLUG).as_str(),
    ] {
        assert!(is_slug(good), "{good:?}");
    }
    for bad in [
        "",
        "-",
        "-a",
        "a-",
        "a--b",
        "A",
        "Russia",
        "a_b",
        "a b",
        "a.b",
        "ü",
        "a\n",
        "z".repeat(MAX_SLUG + 1).as_str(),
    ] {
        assert!(!is_slug(bad), "{bad:?}");
    }
}

proptest! {
    #[test]
    fn slice_code_points_agrees_with_chars(s in "(?s).{0,24}", a in 0usize..30, b in 0usize..30) {
        let len = s.chars().count();
        let expected: Option<String> =
            (a < b && b <= len).then(|| s.chars().skip(a).take(b - a).collect());
        prop_assert_eq!(slice_code_points(&s, a, b).map(str::to_string), expected);
    }

    #[test]
    fn every_code_point_range_of_the_source_is_a_valid_span(a in 0usize..1000, n in 1usize..200) {
        let len = TEXT.chars().count();
        let start = a % len;
        let end = (start + n).min(len);
        prop_assume!(start < end);
        let exact: String = TEXT.chars().skip(start).take(end - start).collect();
        prop_assume!(!exact.trim().is_empty());
        let cmd = RecordStatement {
            spans: vec![span(SOURCE_ID, start as u32, end as u32, &exact)],
            ..statement_cmd()
        };
        prop_assert!(when(&world(), Command::RecordStatement(cmd)).is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Event payloads
// ---------------------------------------------------------------------------------------------

/// One event of every variant, built by deciding a small history.
fn every_event() -> Vec<Event> {
    let mut h = with_two_claims();
    let updated = PartyDetails {
        affiliations: vec![Affiliation {
            organisation_id: "russia".into(),
            role: "Permanent Representative to the UN".into(),
            since: Some(at(1994, 1, 1, 0, 0, 0)),
            until: Some(at(2004, 3, 9, 0, 0, 0)),
        }],
        ..lavrov_details()
    };
    h.push(decided(&h, Command::UpdateParty(updated)));
    h.push(decided(&h, Command::ReviewClaim(review_cmd())));
    h.push(decided(
        &h,
        Command::IssueCorrection(correction_cmd(
            CORRECTION_ID,
            TargetKind::Claim,
            CLAIM_ID,
            CorrectionKind::Supersede,
            Some(CLAIM_2),
        )),
    ));
    let day = RecordStatement {
        statement_id: some_id(STATEMENT_2),
        on_behalf_of_id: None,
        venue: None,
        stated_time: Some(StatedTime {
            at: at(2024, 5, 15, 0, 0, 0),
            precision: Precision::Day,
        }),
        reports_statement_id: some_id(STATEMENT_ID),
        ..statement_cmd()
    };
    h.push(decided(&h, Command::RecordStatement(day)));
    h
}

#[test]
fn every_event_payload_round_trips() {
    let events = every_event();
    let types: BTreeSet<&str> = events.iter().map(Event::event_type).collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        [
            "ClaimAsserted",
            "ClaimReviewed",
            "CorrectionIssued",
            "PartyRegistered",
            "PartyUpdated",
            "SourceRegistered",
            "StatementRecorded",
        ]
    );
    for e in &events {
        let back = Event::from_payload(e.event_type(), SCHEMA_VERSION, &e.payload_json())
            .unwrap_or_else(|err| panic!("{} did not decode: {err}", e.event_type()));
        assert_eq!(&back, e);
    }
}

#[test]
fn unknown_event_types_and_versions_do_not_decode() {
    let e = registered("russia", PartyKind::State, "Russia");
    let payload = e.payload_json();
    assert!(matches!(
        Event::from_payload("PartyDeleted", SCHEMA_VERSION, &payload),
        Err(DecodeError::UnknownType(t)) if t == "PartyDeleted"
    ));
    for version in [0, SCHEMA_VERSION + 1] {
        assert!(matches!(
            Event::from_payload("PartyRegistered", version, &payload),
            Err(DecodeError::UnknownVersion { event_type, version: v })
                if event_type == "PartyRegistered" && v == version
        ));
    }
    assert!(matches!(
        Event::from_payload("SourceRegistered", SCHEMA_VERSION, &payload),
        Err(DecodeError::Malformed { event_type, .. }) if event_type == "SourceRegistered"
    ));
    assert!(matches!(
        Event::from_payload("ClaimAsserted", SCHEMA_VERSION, b"not json"),
        Err(DecodeError::Malformed { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Rules added after review
// ---------------------------------------------------------------------------------------------

#[test]
fn a_report_cannot_predate_the_statement_it_reports() {
    let h = with_statement();
    let mut cmd = statement_cmd();
    cmd.statement_id = some_id(STATEMENT_2);
    cmd.reports_statement_id = Some(STATEMENT_ID.to_string());
    cmd.stated_time = Some(StatedTime {
        at: at(2020, 1, 1, 0, 0, 0),
        precision: Precision::Day,
    });
    assert_eq!(
        then_invalid(when(&h, Command::RecordStatement(cmd.clone()))),
        vec!["stated_time.at"]
    );
    // Day precision covers the whole day, so a report "on that day" is fine even though its
    // period starts at midnight, before the reported instant.
    cmd.stated_time = Some(StatedTime {
        at: said(),
        precision: Precision::Day,
    });
    assert!(when(&h, Command::RecordStatement(cmd)).is_ok());
}

#[test]
fn a_statement_after_publication_is_reported_once_per_source() {
    let mut cmd = statement_cmd();
    cmd.spans = vec![span_of(QUOTE), span_of(ZELENSKYY)];
    cmd.stated_time = Some(StatedTime {
        at: published() + Duration::days(3),
        precision: Precision::Instant,
    });
    assert_eq!(
        then_invalid(when(&world(), Command::RecordStatement(cmd))),
        vec!["stated_time.at"]
    );
}

#[test]
fn registering_an_existing_party_is_already_exists_before_reference_checks() {
    let mut d = details("russia", PartyKind::State, "Russia");
    d.affiliations = vec![Affiliation {
        organisation_id: "nowhere".into(),
        role: "Member".into(),
        since: None,
        until: None,
    }];
    assert_eq!(
        when(&world(), Command::RegisterParty(d)),
        already_exists("party_id", "party", "russia")
    );
}

#[test]
fn affiliation_end_dates_are_checked_without_a_start() {
    let mut d = details("new-party", PartyKind::Group, "New");
    d.affiliations = vec![Affiliation {
        organisation_id: "russia".into(),
        role: "Member".into(),
        since: None,
        until: Some(at(1066, 10, 14, 0, 0, 0)),
    }];
    assert_eq!(
        then_invalid(when(&world(), Command::RegisterParty(d))),
        vec!["affiliations[0].until"]
    );
}

#[test]
fn url_schemes_are_case_insensitive() {
    let mut cmd = source_cmd();
    cmd.url = "HTTPS://www.aljazeera.com/news".into();
    assert!(when(&world()[..3], Command::RegisterSource(cmd)).is_ok());
}

#[test]
fn a_supersede_pins_the_replacement_at_the_revision_it_saw() {
    use claims_ledger_domain::decide::related_expectations;
    let mut h = with_two_claims();
    h.push(decided(
        &h,
        Command::ReviewClaim(ReviewClaim {
            claim_id: CLAIM_2.to_string(),
            ..review_cmd()
        }),
    ));
    let state = given(&h);
    let d = decide(
        &state,
        &Command::IssueCorrection(correction_cmd(
            CORRECTION_ID,
            TargetKind::Claim,
            CLAIM_ID,
            CorrectionKind::Supersede,
            Some(CLAIM_2),
        )),
        &ctx(),
    )
    .unwrap();
    assert_eq!(d.expectation, StreamExpectation::Exact(0));
    assert_eq!(
        related_expectations(&state, &d.event),
        vec![(format!("claim-{CLAIM_2}"), 1)]
    );
    let retract = decide(&state, &retract_claim(CORRECTION_2, CLAIM_ID), &ctx()).unwrap();
    assert!(related_expectations(&state, &retract.event).is_empty());
}
