//! Properties of the stored projections over random event sequences in a real log on sled:
//! - applied incrementally in arbitrary batches (with overlapping re-deliveries) equals a rebuild
//!   from position 0, row for row;
//! - applying any run of events a second time, past the checkpoint guard, changes no row;
//! - the claim entries behind every position equal the pure fold's, so stored answers under both
//!   clocks are the domain's answers.
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

use claims_ledger_domain::event::{
    Claim, Correction, Event, Party, Review, Source, Statement, SCHEMA_VERSION,
};
use claims_ledger_domain::model::{
    CorrectionKind, Mode, PartyKind, Precision, Rating, StatedTime, TargetKind,
};
use claims_ledger_domain::positions::{AsOf, Positions};
use claims_ledger_log::{AppendRequest, Durability, EventLog, LogOptions, NewEvent, RecordedEvent};
use claims_ledger_server::projection::Projections;

const PARTIES: [&str; 2] = ["russia", "ukraine"];
const TOPICS: [&str; 2] = ["negotiation-venue", "preconditions-for-talks"];

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, d, 0, 0, 0)
        .single()
        .expect("valid day")
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn party(i: usize, updated: bool) -> Event {
    let p = Party {
        party_id: PARTIES[i].into(),
        kind: PartyKind::State,
        name: format!("{} {}", PARTIES[i], if updated { "(renamed)" } else { "" }),
        aliases: vec![],
        affiliations: vec![],
        description: String::new(),
    };
    if updated {
        Event::PartyUpdated(p)
    } else {
        Event::PartyRegistered(p)
    }
}

fn source() -> Event {
    Event::SourceRegistered(Source {
        source_id: id(900),
        publisher: "Wire".into(),
        url: "https://example.org".into(),
        title: "T".into(),
        published_at: day(1),
        retrieved_at: day(2),
        language: "en".into(),
        text: "Istanbul is acceptable.".into(),
        text_sha256: String::new(),
    })
}

fn statement(n: u128, speaker: usize, behalf: Option<usize>, d: u32, mode: Mode) -> Event {
    Event::StatementRecorded(Statement {
        statement_id: id(n),
        speaker_id: PARTIES[speaker].into(),
        on_behalf_of_id: behalf.map(|b| PARTIES[b].to_string()),
        stated_time: StatedTime {
            at: day(d),
            precision: Precision::Day,
        },
        venue: None,
        mode,
        attribution_verb: "said".into(),
        content: "c".into(),
        spans: vec![claims_ledger_domain::model::Span {
            source_id: id(900),
            start: 0,
            end: 8,
            exact: "Istanbul".into(),
        }],
        reports_statement_id: None,
    })
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0usize..2, any::<bool>()).prop_map(|(p, u)| party(p, u)),
        Just(source()),
        (
            1u128..=5,
            0usize..2,
            prop::option::of(0usize..2),
            1u32..=28,
            any::<bool>()
        )
            .prop_map(|(s, sp, b, d, q)| statement(
                s,
                sp,
                b,
                d,
                if q {
                    Mode::DirectQuote
                } else {
                    Mode::Paraphrase
                }
            )),
        (10u128..=19, 1u128..=5, 0usize..2, 0usize..2, 0usize..3).prop_map(|(c, s, p, t, k)| {
            Event::ClaimAsserted(Claim {
                claim_id: id(c),
                statement_id: id(s),
                party_id: PARTIES[p].into(),
                topic: TOPICS[t].into(),
                stance: ["a", "b", "c"][k].into(),
                conditions: vec![],
            })
        }),
        (10u128..=19, 0u128..1000).prop_map(|(c, r)| Event::ClaimReviewed(Review {
            review_id: id(5000 + r),
            claim_id: id(c),
            reviewer: "desk".into(),
            rating: Rating {
                label: "False".into(),
                value: 0,
                best: 0,
                worst: 0
            },
            explanation: "e".into(),
            url: None,
        })),
        (10u128..=19, 0u8..3, 10u128..=19, 0u128..1000).prop_map(|(c, k, by, n)| {
            let kind = [
                CorrectionKind::Retract,
                CorrectionKind::Supersede,
                CorrectionKind::Erratum,
            ][k as usize];
            Event::CorrectionIssued(Correction {
                correction_id: id(7000 + n),
                target_kind: TargetKind::Claim,
                target_id: id(c),
                kind,
                reason: "r".into(),
                replacement_id: (kind == CorrectionKind::Supersede).then(|| id(by)),
            })
        }),
        (1u128..=5, 0u128..1000).prop_map(|(s, n)| Event::CorrectionIssued(Correction {
            correction_id: id(8000 + n),
            target_kind: TargetKind::Statement,
            target_id: id(s),
            kind: CorrectionKind::Retract,
            reason: "r".into(),
            replacement_id: None,
        })),
    ]
}

/// Appends `events` in appends of `chunk` events and reads them back as recorded.
fn record(
    rt: &tokio::runtime::Runtime,
    log: &EventLog,
    events: &[Event],
    chunk: usize,
) -> Vec<RecordedEvent> {
    rt.block_on(async {
        for part in events.chunks(chunk.max(1)) {
            let req = AppendRequest {
                events: part
                    .iter()
                    .map(|e| NewEvent {
                        event_id: Uuid::new_v4(),
                        stream: e.stream(),
                        event_type: e.event_type().into(),
                        schema_version: SCHEMA_VERSION,
                        payload: e.payload_raw(),
                    })
                    .collect(),
                expectations: vec![],
                idempotency: None,
                recorded_by: "proptest".into(),
                correlation_id: None,
                causation_id: None,
            };
            log.append(req).await.expect("append");
        }
    });
    log.read_all(0, false, 10_000).expect("read back")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_rebuild_and_reapplying_changes_nothing(
        events in prop::collection::vec(arb_event(), 0..50),
        chunk in 1usize..8,
        cuts in prop::collection::vec(0usize..50, 0..6),
        again in (0usize..50, 0usize..50),
    ) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = rt.block_on(async {
            EventLog::open(&dir.path().join("log"), LogOptions { durability: Durability::Relaxed, ..LogOptions::default() }, None)
        }).expect("log");
        // Opened on the empty log: opening on a non-empty one would rebuild at once.
        let incremental = Projections::open(&dir.path().join("inc"), &log).expect("open");
        let recorded = record(&rt, &log, &events, chunk);
        prop_assert_eq!(recorded.len(), events.len());
        prop_assert_eq!(incremental.applied(), 0);

        // Incremental: batches cut at random places, each re-delivering the previous batch's tail.
        let mut bounds: Vec<usize> = cuts.iter().map(|c| (*c).min(recorded.len())).collect();
        bounds.push(recorded.len());
        bounds.sort_unstable();
        let mut start = 0usize;
        for end in bounds {
            let from = start.saturating_sub(2);
            incremental.apply(&recorded[from..end]).expect("apply");
            start = end;
        }
        prop_assert_eq!(incremental.applied(), recorded.len() as u64);

        // Rebuild from position 0.
        let rebuilt = Projections::open(&dir.path().join("reb"), &log).expect("open");
        rebuilt.rebuild(&log, &mut |_| {}).expect("rebuild");
        let dump = incremental.snapshot().dump().expect("dump");
        prop_assert_eq!(&dump, &rebuilt.snapshot().dump().expect("dump"));

        // A run of events applied twice, past the checkpoint guard: no row changes.
        let (a, b) = (again.0.min(recorded.len()), again.1.min(recorded.len()));
        let (a, b) = (a.min(b), a.max(b));
        incremental.reapply_rows(&recorded[a..b]).expect("reapply");
        prop_assert_eq!(&incremental.snapshot().dump().expect("dump"), &dump);

        // The stored claim entries are the pure fold's, for every party and topic.
        let mut fold = Positions::default();
        for (i, e) in events.iter().enumerate() {
            fold.apply(i as u64, e);
        }
        let snap = incremental.snapshot();
        for p in PARTIES {
            for t in TOPICS {
                let stored: Vec<_> = snap.claims_on(p, t).expect("claims").into_iter().map(|r| r.entry).collect();
                prop_assert_eq!(&stored[..], fold.entries(p, t), "{} {}", p, t);
                for at in [None, Some(recorded.len() as u64 / 2)] {
                    let as_of = AsOf { stated: None, recorded: at };
                    prop_assert_eq!(
                        claims_ledger_domain::positions::current_of(&stored, as_of).map(|e| e.claim.claim_id),
                        fold.current(p, t, as_of).map(|e| e.claim.claim_id)
                    );
                }
            }
        }
    }
}
