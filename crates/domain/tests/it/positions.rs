//! The positions fold (pure): current stance by stated time, corrections, history with changes, both
//! as-of clocks; plus properties: folding in pieces equals folding at once, and replaying changes
//! nothing. The Istanbul dataset's positions are checked through the domain alone.
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

use claims_ledger_domain::event::{Claim, Correction, Event, Statement};
use claims_ledger_domain::model::{CorrectionKind, Mode, Precision, StatedTime, TargetKind};
use claims_ledger_domain::positions::{AsOf, Ended, Positions};
use claims_ledger_domain::{decide, Context, State};

fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn statement(n: u128, at: DateTime<Utc>) -> Event {
    Event::StatementRecorded(Statement {
        statement_id: id(n),
        speaker_id: "ukraine".into(),
        on_behalf_of_id: None,
        stated_time: StatedTime {
            at,
            precision: Precision::Day,
        },
        venue: None,
        mode: Mode::Paraphrase,
        attribution_verb: "said".into(),
        content: "c".into(),
        spans: vec![],
        reports_statement_id: None,
    })
}

fn claim(n: u128, statement: u128, stance: &str) -> Event {
    Event::ClaimAsserted(Claim {
        claim_id: id(n),
        statement_id: id(statement),
        party_id: "ukraine".into(),
        topic: "preconditions-for-talks".into(),
        stance: stance.into(),
        conditions: vec![],
    })
}

fn correct(n: u128, kind: TargetKind, target: u128, k: CorrectionKind, by: Option<u128>) -> Event {
    Event::CorrectionIssued(Correction {
        correction_id: id(n),
        target_kind: kind,
        target_id: id(target),
        kind: k,
        reason: "r".into(),
        replacement_id: by.map(id),
    })
}

fn fold(events: &[Event]) -> Positions {
    let mut p = Positions::default();
    for (i, e) in events.iter().enumerate() {
        p.apply(i as u64, e);
    }
    p
}

const TOPIC: &str = "preconditions-for-talks";

fn stance(p: &Positions, as_of: AsOf) -> Option<String> {
    p.current("ukraine", TOPIC, as_of)
        .map(|e| e.claim.stance.clone())
}

/// A position that changes over time, is then corrected: positions 0..=8.
fn scenario() -> Vec<Event> {
    vec![
        statement(1, day(2024, 1, 10)),                                    // 0
        claim(11, 1, "withdrawal first"),                                  // 1
        statement(2, day(2024, 3, 5)),                                     // 2
        claim(12, 2, "withdrawal and Crimea"),                             // 3
        statement(3, day(2024, 2, 1)), // 4: recorded late, stated in between
        claim(13, 3, "withdrawal first"), // 5
        statement(4, day(2024, 4, 1)), // 6
        claim(14, 4, "ceasefire first"), // 7
        correct(21, TargetKind::Claim, 14, CorrectionKind::Retract, None), // 8
    ]
}

#[test]
fn current_is_the_latest_stated_claim_in_force() {
    let p = fold(&scenario());
    // The retracted April claim drops out; March is the latest in force.
    assert_eq!(
        stance(&p, AsOf::default()).as_deref(),
        Some("withdrawal and Crimea")
    );
    let e = p.current("ukraine", TOPIC, AsOf::default()).unwrap();
    assert_eq!((e.claim.claim_id, e.position), (id(12), 3));
    assert_eq!(p.topics("ukraine"), vec![TOPIC]);
    assert!(p.current("russia", TOPIC, AsOf::default()).is_none());
}

#[test]
fn both_clocks_give_the_past_answers() {
    let p = fold(&scenario());
    // Valid time: what held on 15 February (the late-recorded February statement counts).
    let feb = AsOf {
        stated: Some(day(2024, 2, 15)),
        recorded: None,
    };
    assert_eq!(stance(&p, feb).as_deref(), Some("withdrawal first"));
    assert_eq!(
        p.current("ukraine", TOPIC, feb).unwrap().claim.claim_id,
        id(13)
    );
    // Transaction time: before the retraction (position 8) the April claim was current.
    let before_retraction = AsOf {
        stated: None,
        recorded: Some(8),
    };
    assert_eq!(
        stance(&p, before_retraction).as_deref(),
        Some("ceasefire first")
    );
    // Both: on 15 February as recorded before position 5, the February claim was not known yet.
    let both = AsOf {
        stated: Some(day(2024, 2, 15)),
        recorded: Some(5),
    };
    assert_eq!(
        p.current("ukraine", TOPIC, both).unwrap().claim.claim_id,
        id(11)
    );
    // Before anything was recorded.
    let nothing = AsOf {
        stated: None,
        recorded: Some(0),
    };
    assert_eq!(stance(&p, nothing), None);
}

#[test]
fn history_keeps_corrected_claims_and_marks_changes() {
    let p = fold(&scenario());
    let h = p.history("ukraine", TOPIC, AsOf::default());
    let rows: Vec<(u128, bool, bool)> = h
        .iter()
        .map(|r| (r.entry.claim.claim_id.as_u128(), r.changed, r.in_force))
        .collect();
    // Stated order: Jan (11), Feb (13, same stance as Jan), Mar (12), Apr (14, retracted).
    assert_eq!(
        rows,
        vec![
            (11, true, true),
            (13, false, true),
            (12, true, true),
            (14, true, false)
        ]
    );
    assert_eq!(h[3].entry.ended, Some(Ended::Retracted { at: 8 }));
    // As recorded before the retraction, the April claim was in force.
    let earlier = p.history(
        "ukraine",
        TOPIC,
        AsOf {
            stated: None,
            recorded: Some(8),
        },
    );
    assert!(earlier[3].in_force);
}

#[test]
fn supersede_and_statement_retraction() {
    let mut events = scenario();
    events.push(statement(5, day(2024, 5, 1))); // 9
    events.push(claim(15, 5, "talks only after withdrawal")); // 10
    events.push(correct(
        22,
        TargetKind::Claim,
        15,
        CorrectionKind::Supersede,
        Some(12),
    )); // 11
    let p = fold(&events);
    // The May claim is superseded by the March one, which stays current.
    assert_eq!(
        p.current("ukraine", TOPIC, AsOf::default())
            .unwrap()
            .claim
            .claim_id,
        id(12)
    );
    let before = AsOf {
        stated: None,
        recorded: Some(11),
    };
    assert_eq!(
        p.current("ukraine", TOPIC, before).unwrap().claim.claim_id,
        id(15)
    );
    // Retracting the March *statement* takes its claim out; February becomes current.
    events.push(correct(
        23,
        TargetKind::Statement,
        2,
        CorrectionKind::Retract,
        None,
    )); // 12
    let p = fold(&events);
    assert_eq!(
        p.current("ukraine", TOPIC, AsOf::default())
            .unwrap()
            .claim
            .claim_id,
        id(13)
    );
    // An erratum changes nothing.
    events.push(correct(
        24,
        TargetKind::Claim,
        13,
        CorrectionKind::Erratum,
        None,
    )); // 13
    assert_eq!(
        fold(&events)
            .current("ukraine", TOPIC, AsOf::default())
            .unwrap()
            .claim
            .claim_id,
        id(13)
    );
}

#[test]
fn the_istanbul_dataset_answers_its_questions() {
    let dataset =
        claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL).unwrap();
    let mut state = State::default();
    let mut positions = Positions::default();
    let ctx = Context {
        now: day(2026, 11, 27),
    };
    for (i, entry) in dataset.commands.iter().enumerate() {
        let d = decide(&state, &entry.command, &ctx).expect("dataset command is valid");
        state.apply(&d.event);
        positions.apply(i as u64, &d.event);
    }
    let now = AsOf::default();
    let venue = positions
        .current("russia", "negotiation-venue", now)
        .unwrap();
    assert!(venue.claim.stance.contains("Istanbul"), "{venue:?}");
    let pre = positions
        .current("ukraine", "preconditions-for-talks", now)
        .unwrap();
    assert!(pre.claim.stance.contains("Crimea"), "{pre:?}");
    assert!(positions
        .current("ukraine", "response-to-istanbul-proposal", now)
        .is_some());
    assert!(positions.current("turkey", "mediation", now).is_some());
    assert_eq!(positions.history("turkey", "mediation", now).len(), 2);
    assert!(!positions.topics("united-states").is_empty());
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    // Statements 1..=4 with days, claims 10..=19 on them with a few stances, corrections on both.
    let step = prop_oneof![
        (1u128..=4, 1u32..=28).prop_map(|(s, d)| statement(s, day(2024, 1, d))),
        (10u128..=19, 1u128..=4, 0usize..3).prop_map(|(c, s, k)| claim(c, s, ["a", "b", "c"][k])),
        (10u128..=19, prop::bool::ANY, 10u128..=19).prop_map(|(c, retract, by)| {
            if retract {
                correct(100 + c, TargetKind::Claim, c, CorrectionKind::Retract, None)
            } else {
                correct(
                    200 + c,
                    TargetKind::Claim,
                    c,
                    CorrectionKind::Supersede,
                    Some(by),
                )
            }
        }),
        (1u128..=4).prop_map(|s| correct(
            300 + s,
            TargetKind::Statement,
            s,
            CorrectionKind::Retract,
            None
        )),
    ];
    prop::collection::vec(step, 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Folding in pieces (as an incremental projection does) equals one fold from position 0, and
    /// replaying any prefix again changes nothing.
    #[test]
    fn incremental_equals_rebuild_and_replay_is_a_no_op(events in arb_events(), cut in 0usize..60, replay in 0usize..60) {
        let rebuilt = fold(&events);
        let cut = cut.min(events.len());
        let mut incremental = Positions::default();
        for (i, e) in events.iter().enumerate().take(cut) {
            incremental.apply(i as u64, e);
        }
        // Replay an earlier prefix in the middle: ignored.
        for (i, e) in events.iter().enumerate().take(replay.min(cut)) {
            incremental.apply(i as u64, e);
        }
        for (i, e) in events.iter().enumerate().skip(cut) {
            incremental.apply(i as u64, e);
        }
        prop_assert_eq!(&incremental, &rebuilt);
        // As-of-recorded answers equal a fold of the prefix, for every prefix.
        for p in 0..=events.len() {
            let prefix = fold(&events[..p]);
            let as_of = AsOf { stated: None, recorded: Some(p as u64) };
            prop_assert_eq!(
                rebuilt.current("ukraine", TOPIC, as_of).map(|e| e.claim.claim_id),
                prefix.current("ukraine", TOPIC, AsOf::default()).map(|e| e.claim.claim_id),
                "as of position {}", p
            );
        }
    }
}
