//! The `Query` and `Admin` services over real gRPC: the Istanbul demo's questions with full provenance,
//! a position that changes and is corrected under both clocks, statement history with filters and
//! page tokens, read-your-writes through `min_position`, precise errors, rebuild and restart.
use crate::common;

use claims_ledger_proto as pb;
use common::*;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::Code;

type Query = pb::query_client::QueryClient<Channel>;
type Ledger = pb::ledger_client::LedgerClient<Channel>;

fn fresh(min: u64) -> Option<pb::ReadConsistency> {
    Some(pb::ReadConsistency { min_position: min })
}

async fn positions(q: &mut Query, party: &str, topic: &str, min: u64) -> Vec<pb::Position> {
    q.get_positions(pb::GetPositionsRequest {
        party_id: party.into(),
        topic: topic.into(),
        consistency: fresh(min),
        ..Default::default()
    })
    .await
    .expect("positions")
    .into_inner()
    .positions
}

fn stance(p: &pb::Position) -> &str {
    p.current
        .as_ref()
        .and_then(|c| c.claim.as_ref())
        .map_or("", |c| c.stance.as_str())
}

fn statement_of(c: &pb::ClaimView) -> &pb::StatementRecordedPayload {
    c.statement
        .as_ref()
        .and_then(|s| s.statement.as_ref())
        .expect("statement in provenance")
}

async fn demo() -> (TestServer, u64) {
    let s = TestServer::start().await;
    let dataset = claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL)
        .expect("dataset");
    s.app
        .load_dataset(&dataset, "demo-loader")
        .await
        .expect("load");
    let n = s.head().await.event_count;
    (s, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_istanbul_demo_answers_with_full_provenance() {
    let (s, n) = demo().await;
    let mut q = s.query().await;

    // Russia on the negotiation venue: Istanbul, with Lavrov's quote and its span.
    let venue = positions(&mut q, "russia", "negotiation-venue", n).await;
    assert_eq!(venue.len(), 1);
    assert_eq!(stance(&venue[0]), "Istanbul");
    let current = venue[0].current.as_ref().expect("current");
    let st = current.statement.as_ref().expect("statement view");
    let payload = statement_of(current);
    assert_eq!(payload.speaker_id, "sergey-lavrov");
    assert_eq!(
        payload.mode,
        pb::StatementMode::DirectQuote as i32,
        "the later, direct quote wins the tie"
    );
    let span = &st.spans[0];
    let exact = &span.span.as_ref().expect("span").exact;
    assert!(exact.contains("Istanbul"), "{exact}");
    // The span is where it says, in the source it names, whose hash is the hash of its text.
    let source_id = &span.span.as_ref().expect("span").source_id;
    let src = q
        .get_source(pb::GetSourceRequest {
            source_id: source_id.clone(),
            include_text: true,
            consistency: fresh(n),
        })
        .await
        .expect("source")
        .into_inner()
        .source
        .expect("source view");
    let payload_src = src.source.as_ref().expect("payload");
    assert_eq!(
        hex::encode(Sha256::digest(payload_src.text.as_bytes())),
        payload_src.text_sha256
    );
    let sp = span.span.as_ref().expect("span");
    let at: String = payload_src
        .text
        .chars()
        .skip(sp.start as usize)
        .take((sp.end - sp.start) as usize)
        .collect();
    assert_eq!(&at, exact);
    let before: String = payload_src
        .text
        .chars()
        .skip((sp.start as usize).saturating_sub(80))
        .take((sp.start as usize).min(80))
        .collect();
    assert_eq!(
        span.before, before,
        "context before the span is the source's text"
    );
    assert!(!span.after.is_empty());
    let meta = span
        .source
        .as_ref()
        .and_then(|s| s.source.as_ref())
        .expect("source meta");
    assert!(
        meta.text.is_empty(),
        "span sources carry metadata, not the text"
    );
    assert_eq!(meta.text_sha256, payload_src.text_sha256);
    assert!(!meta.publisher.is_empty() && meta.url.starts_with("http"));
    // Every step names the event and position it came from, and who recorded it.
    let origin = current.origin.as_ref().expect("claim origin");
    let st_origin = st.origin.as_ref().expect("statement origin");
    assert!(st_origin.position < origin.position);
    assert_eq!(origin.recorded_by, "demo-loader");
    assert!(origin.stream.starts_with("claim-"));
    assert!(!origin.event_id.is_empty());

    // ... in the early-2022 Turkey-mediated format.
    let format = positions(&mut q, "russia", "negotiation-format", n).await;
    assert!(stance(&format[0]).contains("early-2022 Turkey-mediated format"));

    // Ukraine on preconditions: withdrawal and territorial integrity including Crimea.
    let pre = positions(&mut q, "ukraine", "preconditions-for-talks", n).await;
    assert!(
        stance(&pre[0]).contains("withdrawal of Russian troops"),
        "{}",
        stance(&pre[0])
    );
    assert!(stance(&pre[0]).contains("Crimea"), "{}", stance(&pre[0]));

    // Ukraine on the Istanbul proposal: no response yet, recorded as a reported no-comment.
    let resp = positions(&mut q, "ukraine", "response-to-istanbul-proposal", n).await;
    let c = resp[0].current.as_ref().expect("current");
    assert_eq!(
        statement_of(c).mode,
        pb::StatementMode::ReportedNoComment as i32
    );
    assert!(resp[0].history.iter().any(|h| h
        .claim
        .as_ref()
        .and_then(|c| c.claim.as_ref())
        .is_some_and(|c| c.stance == "no response yet")));

    // Turkey: silence now, an offer to mediate earlier; the history shows the change.
    let med = positions(&mut q, "turkey", "mediation", n).await;
    assert!(stance(&med[0]).contains("no official comment"));
    let hist: Vec<(&str, bool)> = med[0]
        .history
        .iter()
        .map(|h| {
            (
                h.claim
                    .as_ref()
                    .and_then(|c| c.claim.as_ref())
                    .map_or("", |c| c.stance.as_str()),
                h.changed,
            )
        })
        .collect();
    assert_eq!(hist.len(), 2);
    assert_eq!(
        hist[0],
        ("willing to mediate between Russia and Ukraine", true)
    );
    assert!(hist[1].0.contains("no official comment") && hist[1].1);

    // The US and Western stance on sovereignty.
    let us = positions(&mut q, "united-states", "", n).await;
    let topics: Vec<&str> = us.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, vec!["peace-terms", "sovereignty"]);
    assert!(stance(&us[1]).contains("sovereignty"));
    assert!(stance(&us[0]).contains("determined by Ukraine"));

    // Every answer says which log prefix it reflects.
    let r = q
        .get_positions(pb::GetPositionsRequest {
            party_id: "russia".into(),
            consistency: fresh(n),
            ..Default::default()
        })
        .await
        .expect("all russia")
        .into_inner();
    assert_eq!(r.stamp.expect("stamp").applied_count, n);
    assert!(r.positions.len() >= 6);
    s.stop().await;
}

struct Scenario {
    statements: Vec<String>,
    claims: Vec<String>,
    /// Log count after each step.
    counts: Vec<u64>,
    retraction: u64,
}

fn last_position(r: &Option<pb::WriteResult>) -> u64 {
    r.as_ref()
        .and_then(|r| r.events.last())
        .map(|e| e.position)
        .expect("written")
}

/// Ukraine's stance: January "withdrawal first", March "withdrawal and Crimea", April "ceasefire
/// first" (retracted afterwards). Stated days are the 10th of each month in 2024.
async fn scenario(c: &mut Ledger) -> Scenario {
    c.register_party(pb::RegisterPartyRequest {
        command: Some(party("ukraine", pb::PartyKind::State)),
        ..Default::default()
    })
    .await
    .expect("party");
    let source_id = c
        .register_source(pb::RegisterSourceRequest {
            command: Some(source()),
            ..Default::default()
        })
        .await
        .expect("source")
        .into_inner()
        .source_id;
    let mut sc = Scenario {
        statements: vec![],
        claims: vec![],
        counts: vec![],
        retraction: 0,
    };
    let months = [
        (1, "withdrawal first"),
        (3, "withdrawal and Crimea"),
        (4, "ceasefire first"),
    ];
    for (month, text) in months {
        let at = chrono::NaiveDate::from_ymd_opt(2024, month, 10)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("date")
            .and_utc()
            .timestamp();
        let st = c
            .record_statement(pb::RecordStatementRequest {
                command: Some(pb::RecordStatementCommand {
                    stated_time: Some(pb::StatedTime {
                        at: ts(at),
                        precision: pb::TimePrecision::Day as i32,
                    }),
                    mode: if month == 3 {
                        pb::StatementMode::Paraphrase as i32
                    } else {
                        pb::StatementMode::DirectQuote as i32
                    },
                    ..statement("ukraine", &source_id, "wants Crimea back")
                }),
                ..Default::default()
            })
            .await
            .expect("statement")
            .into_inner();
        let cl = c
            .assert_claim(pb::AssertClaimRequest {
                command: Some(claim(
                    &st.statement_id,
                    "ukraine",
                    "preconditions-for-talks",
                    text,
                )),
                ..Default::default()
            })
            .await
            .expect("claim")
            .into_inner();
        sc.counts.push(last_position(&cl.result) + 1);
        sc.statements.push(st.statement_id);
        sc.claims.push(cl.claim_id);
    }
    let r = c
        .issue_correction(pb::IssueCorrectionRequest {
            command: Some(pb::IssueCorrectionCommand {
                target_kind: pb::TargetKind::Claim as i32,
                target_id: sc.claims[2].clone(),
                kind: pb::CorrectionKind::Retract as i32,
                reason: "misattributed".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("retract")
        .into_inner();
    sc.retraction = last_position(&r.result);
    sc.counts.push(sc.retraction + 1);
    sc
}

fn claim_id(h: &pb::HistoryEntry) -> &str {
    h.claim
        .as_ref()
        .and_then(|c| c.claim.as_ref())
        .map_or("", |c| c.claim_id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changing_then_corrected_position_answers_under_both_clocks() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let sc = scenario(&mut c).await;
    let mut q = s.query().await;
    let end = *sc.counts.last().expect("counts");
    let topic = "preconditions-for-talks";

    // Now: the April claim is retracted, March is current; history keeps all three.
    let now = positions(&mut q, "ukraine", topic, end).await;
    assert_eq!(stance(&now[0]), "withdrawal and Crimea");
    let h = &now[0].history;
    assert_eq!(
        h.iter().map(claim_id).collect::<Vec<_>>(),
        sc.claims.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(
        h.iter().map(|e| e.changed).collect::<Vec<_>>(),
        vec![true, true, true]
    );
    assert_eq!(
        h.iter().map(|e| e.in_force).collect::<Vec<_>>(),
        vec![true, true, false]
    );
    let retracted = h[2].claim.as_ref().expect("claim");
    assert_eq!(retracted.status, pb::EntityStatus::Retracted as i32);
    assert_eq!(retracted.corrections.len(), 1);
    assert_eq!(
        retracted.corrections[0].origin.as_ref().map(|o| o.position),
        Some(sc.retraction)
    );
    // changed_at is March 10, when the current stance began.
    let changed_at = now[0]
        .changed_at
        .as_ref()
        .and_then(|t| t.at)
        .expect("changed_at");
    assert_eq!(
        chrono::DateTime::from_timestamp(changed_at.seconds, 0).map(|d| d.date_naive().to_string()),
        Some("2024-03-10".to_string())
    );

    // Valid time: on 1 February the January stance held.
    let feb = q
        .get_positions(pb::GetPositionsRequest {
            party_id: "ukraine".into(),
            topic: topic.into(),
            as_of_stated: ts(1_706_745_600), // 2024-02-01
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("as of stated")
        .into_inner();
    assert_eq!(stance(&feb.positions[0]), "withdrawal first");
    assert_eq!(feb.positions[0].history.len(), 1);

    // Transaction time, by position: before the retraction, April's stance was current.
    let before = q
        .get_positions(pb::GetPositionsRequest {
            party_id: "ukraine".into(),
            topic: topic.into(),
            as_of_recorded: Some(pb::AsOfRecorded {
                at: Some(pb::as_of_recorded::At::Position(sc.retraction)),
            }),
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("as of recorded")
        .into_inner();
    assert_eq!(stance(&before.positions[0]), "ceasefire first");
    let april = before.positions[0].history[2]
        .claim
        .as_ref()
        .expect("claim");
    assert_eq!(april.status, pb::EntityStatus::Active as i32);
    assert!(
        april.corrections.is_empty(),
        "the correction was not recorded yet"
    );

    // Transaction time, by timestamp: the recorded time of the March claim's event.
    let mut ev = s.events().await;
    let march_event = ev
        .read_all(pb::ReadAllRequest {
            from_position: sc.counts[1] - 1,
            max_count: 1,
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner()
        .events
        .remove(0);
    let by_time = q
        .get_positions(pb::GetPositionsRequest {
            party_id: "ukraine".into(),
            topic: topic.into(),
            as_of_recorded: Some(pb::AsOfRecorded {
                at: Some(pb::as_of_recorded::At::Time(
                    march_event.recorded_at.expect("time"),
                )),
            }),
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("as of recorded time")
        .into_inner();
    let known: Vec<&str> = by_time.positions[0].history.iter().map(claim_id).collect();
    assert!(known.contains(&sc.claims[1].as_str()));
    assert!(
        !known.contains(&sc.claims[2].as_str()),
        "April was recorded later"
    );

    // Both clocks together: stated by 1 April, known before the retraction → March.
    let both = q
        .get_positions(pb::GetPositionsRequest {
            party_id: "ukraine".into(),
            topic: topic.into(),
            as_of_stated: ts(1_711_929_600), // 2024-04-01
            as_of_recorded: Some(pb::AsOfRecorded {
                at: Some(pb::as_of_recorded::At::Position(sc.retraction)),
            }),
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("both clocks")
        .into_inner();
    assert_eq!(stance(&both.positions[0]), "withdrawal and Crimea");

    // Before anything on the topic was recorded, there is no position at all.
    let early = q
        .get_positions(pb::GetPositionsRequest {
            party_id: "ukraine".into(),
            as_of_recorded: Some(pb::AsOfRecorded {
                at: Some(pb::as_of_recorded::At::Position(sc.counts[0] - 1)),
            }),
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("early")
        .into_inner();
    assert!(early.positions.is_empty());

    // Position history with `since` keeps later entries only.
    let hist = q
        .get_position_history(pb::GetPositionHistoryRequest {
            party_id: "ukraine".into(),
            topic: topic.into(),
            since: ts(1_709_251_200), // 2024-03-01
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .position
        .expect("position");
    assert_eq!(
        hist.history.iter().map(claim_id).collect::<Vec<_>>(),
        vec![sc.claims[1].as_str(), sc.claims[2].as_str()]
    );

    // Retracting the March *statement* takes its claim out as well: January is current again.
    let r = c
        .issue_correction(pb::IssueCorrectionRequest {
            command: Some(pb::IssueCorrectionCommand {
                target_kind: pb::TargetKind::Statement as i32,
                target_id: sc.statements[1].clone(),
                kind: pb::CorrectionKind::Retract as i32,
                reason: "wrong speaker".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("retract statement")
        .into_inner();
    let after = positions(&mut q, "ukraine", topic, last_position(&r.result) + 1).await;
    assert_eq!(stance(&after[0]), "withdrawal first");
    let march = after[0].history[1].claim.as_ref().expect("march");
    assert_eq!(
        march.status,
        pb::EntityStatus::Active as i32,
        "the claim itself was not corrected"
    );
    assert_eq!(
        march.statement.as_ref().map(|s| s.status),
        Some(pb::EntityStatus::Retracted as i32)
    );
    assert!(!after[0].history[1].in_force);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_history_filters_orders_and_pages() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let sc = scenario(&mut c).await;
    let end = *sc.counts.last().expect("counts");
    let mut q = s.query().await;
    let list = |order: pb::Order, size: u32, token: String| pb::ListStatementsRequest {
        party_id: "ukraine".into(),
        order: order as i32,
        page_size: size,
        page_token: token,
        consistency: fresh(end),
        ..Default::default()
    };
    let ids = |r: &pb::ListStatementsResponse| -> Vec<String> {
        r.statements
            .iter()
            .map(|s| {
                s.statement
                    .as_ref()
                    .map(|p| p.statement_id.clone())
                    .unwrap_or_default()
            })
            .collect()
    };
    // Newest first by default, oldest first on request.
    let all = q
        .list_statements(list(pb::Order::Unspecified, 0, String::new()))
        .await
        .expect("list")
        .into_inner();
    let mut expected = sc.statements.clone();
    expected.reverse();
    assert_eq!(ids(&all), expected);
    assert!(all.next_page_token.is_empty());
    let oldest = q
        .list_statements(list(pb::Order::OldestFirst, 0, String::new()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ids(&oldest), sc.statements);
    assert!(all.statements[0]
        .topics
        .contains(&"preconditions-for-talks".to_string()));

    // One per page, following tokens, gives the same sequence.
    for order in [pb::Order::NewestFirst, pb::Order::OldestFirst] {
        let mut token = String::new();
        let mut paged = Vec::new();
        loop {
            let r = q
                .list_statements(list(order, 1, token.clone()))
                .await
                .expect("page")
                .into_inner();
            paged.extend(ids(&r));
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        let whole = q
            .list_statements(list(order, 0, String::new()))
            .await
            .expect("whole")
            .into_inner();
        assert_eq!(paged, ids(&whole), "{order:?}");
    }

    // Filters: mode, stated-time range, topic.
    let para = q
        .list_statements(pb::ListStatementsRequest {
            modes: vec![pb::StatementMode::Paraphrase as i32],
            ..list(pb::Order::NewestFirst, 0, String::new())
        })
        .await
        .expect("mode filter")
        .into_inner();
    assert_eq!(ids(&para), vec![sc.statements[1].clone()]);
    let range = q
        .list_statements(pb::ListStatementsRequest {
            stated_from: ts(1_706_745_600), // 2024-02-01
            stated_to: ts(1_711_929_600),   // 2024-04-01
            ..list(pb::Order::OldestFirst, 0, String::new())
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(ids(&range), vec![sc.statements[1].clone()]);
    let other_topic = q
        .list_statements(pb::ListStatementsRequest {
            topic: "negotiation-venue".into(),
            ..list(pb::Order::NewestFirst, 0, String::new())
        })
        .await
        .expect("topic")
        .into_inner();
    assert!(other_topic.statements.is_empty());

    // A token from other filters, or a forged one, is refused with the field named.
    let page = q
        .list_statements(list(pb::Order::NewestFirst, 1, String::new()))
        .await
        .expect("page")
        .into_inner();
    for (req, what) in [
        (
            list(pb::Order::OldestFirst, 1, page.next_page_token.clone()),
            "other order",
        ),
        (list(pb::Order::NewestFirst, 1, "zz".into()), "not hex"),
        (list(pb::Order::NewestFirst, 1, "00ff".into()), "too short"),
    ] {
        let err = q.list_statements(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        assert_eq!(field_violations(&err), vec!["page_token"], "{what}");
    }
    let err = q
        .list_statements(pb::ListStatementsRequest {
            modes: vec![0],
            stated_from: ts(1_711_929_600),
            stated_to: ts(1_706_745_600),
            ..list(pb::Order::NewestFirst, 0, String::new())
        })
        .await
        .expect_err("bad filters");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&err), vec!["modes[0]"]);
    let err = q
        .list_statements(pb::ListStatementsRequest {
            stated_from: ts(1_711_929_600),
            stated_to: ts(1_706_745_600),
            page_size: 5000,
            ..list(pb::Order::NewestFirst, 0, String::new())
        })
        .await
        .expect_err("bad range");
    assert_eq!(field_violations(&err), vec!["page_size"]);
    let err = q
        .list_statements(pb::ListStatementsRequest {
            stated_from: ts(1_711_929_600),
            stated_to: ts(1_706_745_600),
            ..list(pb::Order::NewestFirst, 0, String::new())
        })
        .await
        .expect_err("bad range");
    assert_eq!(field_violations(&err), vec!["stated_to"]);

    // Parties page in id order.
    let parties = q
        .list_parties(pb::ListPartiesRequest {
            page_size: 1,
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("parties")
        .into_inner();
    assert_eq!(parties.parties.len(), 1);
    assert!(parties.next_page_token.is_empty(), "one party only");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_bad_input_and_unreachable_positions_get_precise_statuses() {
    let (s, n) = demo().await;
    let mut q = s.query().await;
    let unknown = "00000000-0000-7000-8000-000000000000".to_string();
    let cases: Vec<(tonic::Status, Code, Vec<&str>)> = vec![
        (
            q.get_party(pb::GetPartyRequest {
                party_id: "atlantis".into(),
                consistency: fresh(n),
            })
            .await
            .expect_err("party"),
            Code::NotFound,
            vec![],
        ),
        (
            q.get_party(pb::GetPartyRequest {
                party_id: "Bad Slug".into(),
                consistency: None,
            })
            .await
            .expect_err("slug"),
            Code::InvalidArgument,
            vec!["party_id"],
        ),
        (
            q.get_claim(pb::GetClaimRequest {
                claim_id: unknown.clone(),
                ..Default::default()
            })
            .await
            .expect_err("claim"),
            Code::NotFound,
            vec![],
        ),
        (
            q.get_statement(pb::GetStatementRequest {
                statement_id: unknown.clone(),
                ..Default::default()
            })
            .await
            .expect_err("statement"),
            Code::NotFound,
            vec![],
        ),
        (
            q.get_source(pb::GetSourceRequest {
                source_id: unknown.clone(),
                ..Default::default()
            })
            .await
            .expect_err("source"),
            Code::NotFound,
            vec![],
        ),
        (
            q.get_claim(pb::GetClaimRequest {
                claim_id: "not-a-uuid".into(),
                ..Default::default()
            })
            .await
            .expect_err("uuid"),
            Code::InvalidArgument,
            vec!["claim_id"],
        ),
        (
            q.get_positions(pb::GetPositionsRequest {
                party_id: "russia".into(),
                topic: "Not_A_Slug".into(),
                context_chars: 5000,
                ..Default::default()
            })
            .await
            .expect_err("topic"),
            Code::InvalidArgument,
            vec!["topic", "context_chars"],
        ),
        (
            q.get_positions(pb::GetPositionsRequest {
                party_id: "russia".into(),
                as_of_stated: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            })
            .await
            .expect_err("timestamp"),
            Code::InvalidArgument,
            vec!["as_of_stated"],
        ),
        (
            q.get_positions(pb::GetPositionsRequest {
                party_id: "atlantis".into(),
                consistency: fresh(n),
                ..Default::default()
            })
            .await
            .expect_err("unknown party"),
            Code::NotFound,
            vec![],
        ),
        (
            q.get_positions(pb::GetPositionsRequest {
                party_id: "russia".into(),
                as_of_recorded: Some(pb::AsOfRecorded {
                    at: Some(pb::as_of_recorded::At::Position(n + 10)),
                }),
                ..Default::default()
            })
            .await
            .expect_err("beyond the log"),
            Code::OutOfRange,
            vec![],
        ),
        (
            q.get_position_history(pb::GetPositionHistoryRequest {
                party_id: "russia".into(),
                ..Default::default()
            })
            .await
            .expect_err("topic required"),
            Code::InvalidArgument,
            vec!["topic"],
        ),
    ];
    for (status, code, fields) in cases {
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(field_violations(&status), fields, "{status:?}");
    }
    // A position nobody has written yet: the server waits until the call's deadline, then says so.
    let mut req = tonic::Request::new(pb::GetPartyRequest {
        party_id: "russia".into(),
        consistency: fresh(n + 1000),
    });
    req.set_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = q.get_party(req).await.expect_err("unreachable");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(s.head().await.event_count, n, "queries write nothing");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_readable_at_once_through_min_position() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let mut q = s.query().await;
    for i in 0..20 {
        let id = format!("party-{i}");
        let r = c
            .register_party(pb::RegisterPartyRequest {
                command: Some(party(&id, pb::PartyKind::Person)),
                ..Default::default()
            })
            .await
            .expect("write")
            .into_inner();
        let pos = last_position(&r.result);
        let got = q
            .get_party(pb::GetPartyRequest {
                party_id: id.clone(),
                consistency: fresh(pos + 1),
            })
            .await
            .expect("read your write")
            .into_inner();
        assert_eq!(
            got.party.and_then(|p| p.party).map(|p| p.party_id),
            Some(id)
        );
        assert!(got.stamp.expect("stamp").applied_count > pos);
    }
    s.stop().await;
}

async fn all_answers(q: &mut Query, n: u64) -> Vec<String> {
    let mut out = Vec::new();
    let parties = q
        .list_parties(pb::ListPartiesRequest {
            page_size: 500,
            consistency: fresh(n),
            ..Default::default()
        })
        .await
        .expect("parties")
        .into_inner();
    for p in parties.parties {
        let id = p
            .party
            .as_ref()
            .map(|p| p.party_id.clone())
            .unwrap_or_default();
        out.push(format!("{p:?}"));
        let r = q
            .get_positions(pb::GetPositionsRequest {
                party_id: id.clone(),
                consistency: fresh(n),
                ..Default::default()
            })
            .await
            .expect("positions")
            .into_inner();
        out.push(format!("{:?}", r.positions));
        let l = q
            .list_statements(pb::ListStatementsRequest {
                party_id: id,
                page_size: 200,
                consistency: fresh(n),
                ..Default::default()
            })
            .await
            .expect("statements")
            .into_inner();
        out.push(format!("{:?}", l.statements));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_switches_to_an_identical_generation_and_restarts_resume() {
    let (s, n) = demo().await;
    let mut q = s.query().await;
    let before = all_answers(&mut q, n).await;
    assert!(before.len() > 30);
    let mut admin = s.admin().await;
    let status = admin
        .get_projection_status(pb::GetProjectionStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        (status.applied_count, status.log_count, status.rebuilding),
        (n, n, false)
    );
    let r = admin
        .rebuild_projections(pb::RebuildProjectionsRequest {})
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(r.events_replayed, n);
    assert_eq!(r.generation, status.generation + 1);
    assert_eq!(
        all_answers(&mut q, n).await,
        before,
        "the rebuilt generation answers the same"
    );

    // A restart resumes from the checkpoint: same generation, same answers.
    let generation = r.generation;
    let dir = s.stop().await;
    let s = TestServer::start_in(dir).await;
    let mut admin = s.admin().await;
    let status = admin
        .get_projection_status(pb::GetProjectionStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.generation, generation, "no rebuild at restart");
    let mut q = s.query().await;
    assert_eq!(all_answers(&mut q, n).await, before);

    // Projections deleted while stopped: rebuilt at open from the log.
    let dir = s.stop().await;
    std::fs::remove_dir_all(claims_ledger_server::app::projections_dir(dir.path()))
        .expect("remove projections");
    let s = TestServer::start_in(dir).await;
    let mut q = s.query().await;
    assert_eq!(all_answers(&mut q, n).await, before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_histories_are_cut_to_the_latest_entries_and_say_so() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let sc = scenario(&mut c).await;
    let end = *sc.counts.last().expect("counts");
    let mut q = s.query().await;
    let topic = "preconditions-for-talks";
    let cut = q
        .get_position_history(pb::GetPositionHistoryRequest {
            party_id: "ukraine".into(),
            topic: topic.into(),
            history_limit: 2,
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .position
        .expect("position");
    assert_eq!(cut.history_omitted, 1);
    assert_eq!(
        cut.history.iter().map(claim_id).collect::<Vec<_>>(),
        vec![sc.claims[1].as_str(), sc.claims[2].as_str()],
        "the latest two"
    );
    assert!(
        cut.history[0].changed,
        "flags are those of the full history"
    );
    let one = q
        .get_positions(pb::GetPositionsRequest {
            party_id: "ukraine".into(),
            history_limit: 1,
            consistency: fresh(end),
            ..Default::default()
        })
        .await
        .expect("positions")
        .into_inner();
    assert_eq!(one.positions[0].history.len(), 1);
    assert_eq!(one.positions[0].history_omitted, 2);
    assert_eq!(
        stance(&one.positions[0]),
        "withdrawal and Crimea",
        "current is always there"
    );
    let err = q
        .get_positions(pb::GetPositionsRequest {
            party_id: "ukraine".into(),
            history_limit: 5000,
            ..Default::default()
        })
        .await
        .expect_err("too many");
    assert_eq!(field_violations(&err), vec!["history_limit"]);
    s.stop().await;
}

/// Query health is NOT_SERVING while the projections are behind the log at start, SERVING once they
/// have caught up (here through an Admin rebuild, since no projector runs for an App opened outside a
/// runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_health_waits_for_projections_to_catch_up() {
    let (s, n) = demo().await;
    let dir = s.stop().await;
    std::fs::remove_dir_all(claims_ledger_server::app::projections_dir(dir.path()))
        .expect("remove");
    let path = dir.path().to_path_buf();
    let app = std::thread::spawn(move || {
        // Retry while the stopped server's threads release the directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match claims_ledger_server::app::App::open(
                &path,
                claims_ledger_log::LogOptions::default(),
            ) {
                Ok(app) => break app,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("open: {e}"),
            }
        }
    })
    .join()
    .expect("open thread");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let serve_app = app.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(claims_ledger_server::grpc::server::serve(
        listener,
        serve_app,
        async {
            let _ = rx.await;
        },
    ));
    let ch = tonic::transport::Endpoint::from_shared(addr)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    let query = health
        .check(status("claimsledger.v1.Query"))
        .await
        .expect("check")
        .into_inner()
        .status;
    assert_eq!(
        query,
        ServingStatus::NotServing as i32,
        "projections are behind"
    );
    let ledger = health
        .check(status("claimsledger.v1.Ledger"))
        .await
        .expect("check")
        .into_inner()
        .status;
    assert_eq!(
        ledger,
        ServingStatus::Serving as i32,
        "writes are served meanwhile"
    );
    pb::admin_client::AdminClient::new(ch.clone())
        .rebuild_projections(pb::RebuildProjectionsRequest {})
        .await
        .expect("rebuild");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let q = health
            .check(status("claimsledger.v1.Query"))
            .await
            .expect("check")
            .into_inner()
            .status;
        if q == ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Query never became SERVING"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.projection_status().applied, n);
    let _ = tx.send(());
    let _ = server.await;
}
