//! Hostile input against a real server: random well-typed commands and batches, malformed protobuf
//! bytes, and every size bound (batch, source text, spans per statement, encoded event, message size,
//! concurrent streams per connection). Whatever comes in, the server answers with a status, never
//! panics, and either writes exactly what its answer reports or writes nothing at all; after the
//! random runs the stopped server's directory passes `verify`. (`fuzz` covers the rest of the gRPC
//! surface and the in-process decode → decide path with a committed corpus.)
//!
//! The random cases are reproducible: they come from a fixed seed, which `HOSTILE_INPUT_SEED` (any
//! string) replaces; `PROPTEST_CASES` replaces each random test's number of cases. Run with
//! `--nocapture` to see the statuses each random test met.
use crate::common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use claims_ledger_domain::limits::{MAX_BATCH, MAX_SOURCE_TEXT_BYTES, MAX_SPANS, MAX_SPAN_TEXT};
use claims_ledger_proto as pb;
use claims_ledger_server::app::App;
use claims_ledger_server::grpc::server::{MAX_MESSAGE_BYTES, MAX_STREAMS_PER_CONNECTION};
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use prost::bytes::{Buf, BufMut};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

type Ledger = pb::ledger_client::LedgerClient<Channel>;
type Events = pb::events_client::EventsClient<Channel>;

/// Ids of the seeded entities, so that random commands can refer to them.
const SOURCE_ID: &str = "0190a0a0-0000-7000-8000-00000000a001";
const STATEMENT_ID: &str = "0190a0a0-0000-7000-8000-00000000b001";
const CLAIM_ID: &str = "0190a0a0-0000-7000-8000-00000000c001";
/// Ids random commands may create and then refer to.
const POOL: [&str; 4] = [
    "0190a0a0-0000-7000-8000-00000000d001",
    "0190a0a0-0000-7000-8000-00000000d002",
    "0190a0a0-0000-7000-8000-00000000d003",
    "0190a0a0-0000-7000-8000-00000000d004",
];
const QUOTE: &str =
    "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace,";

/// What a well-typed command may answer when it is refused.
const REFUSALS: [Code; 5] = [
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    Code::OutOfRange,
];

// ---------------------------------------------------------------------------------------------------
// Harness: a server, its head, and the "no write on error / exact write on success" invariant.
// ---------------------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A seeded runner: reproducible, no regression files, bounded shrinking.
fn runner(cases: u32) -> TestRunner {
    let seed_text =
        std::env::var("HOSTILE_INPUT_SEED").unwrap_or_else(|_| "claims-ledger hostile".into());
    let seed = Sha256::digest(seed_text.as_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        max_shrink_time: 30_000,
        ..Config::default()
    };
    // `Config::default()` honours PROPTEST_CASES; let it scale ours.
    let config = match std::env::var("PROPTEST_CASES") {
        Ok(_) => Config {
            cases: Config::default().cases,
            ..config
        },
        Err(_) => config,
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

/// The log as seen by the app (durable count) and by a client (GetHead).
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    durable: u64,
    count: u64,
    hash: String,
}

async fn snapshot(app: &App, events: &Events) -> Result<Snapshot, String> {
    let head = events
        .clone()
        .get_head(pb::GetHeadRequest {})
        .await
        .map_err(|e| format!("GetHead failed: {e:?}"))?
        .into_inner();
    Ok(Snapshot {
        durable: app.log().durable_count(),
        count: head.event_count,
        hash: head.hash,
    })
}

/// After a refusal: nothing was written.
async fn expect_unchanged(
    app: &App,
    events: &Events,
    before: &Snapshot,
    case: &str,
) -> Result<(), String> {
    let after = snapshot(app, events).await?;
    if &after != before {
        return Err(format!(
            "{case}: refused, yet the log changed from {before:?} to {after:?}"
        ));
    }
    Ok(())
}

/// After a success: the log grew by exactly the events the answer reports, at the reported
/// positions, and they read back.
async fn expect_grown_by(
    app: &App,
    events: &Events,
    before: &Snapshot,
    result: Option<&pb::WriteResult>,
    commands: usize,
    case: &str,
) -> Result<(), String> {
    let result = result.ok_or_else(|| format!("{case}: OK without a write result"))?;
    let after = snapshot(app, events).await?;
    if result.deduplicated {
        return if &after == before {
            Ok(())
        } else {
            Err(format!(
                "{case}: deduplicated, yet the log changed from {before:?} to {after:?}"
            ))
        };
    }
    let n = result.events.len() as u64;
    if n != commands as u64 {
        return Err(format!(
            "{case}: {commands} command(s) accepted but {n} event(s) reported"
        ));
    }
    if after.count != before.count + n || after.durable != before.durable + n {
        return Err(format!(
            "{case}: {n} event(s) reported, but the log went from {before:?} to {after:?}"
        ));
    }
    for (i, e) in result.events.iter().enumerate() {
        if e.position != before.count + i as u64 {
            return Err(format!(
                "{case}: event {i} reported at position {} after a head of {}",
                e.position, before.count
            ));
        }
    }
    let last = result.events.last().map(|e| e.hash.clone());
    if last.as_ref() != Some(&after.hash) {
        return Err(format!(
            "{case}: head hash {} is not the last reported event's {last:?}",
            after.hash
        ));
    }
    let read = events
        .clone()
        .read_all(pb::ReadAllRequest {
            from_position: before.count,
            max_count: n as u32,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("{case}: the written events do not read back: {e:?}"))?
        .into_inner();
    if read.events.len() as u64 != n {
        return Err(format!(
            "{case}: {n} event(s) written, {} read back",
            read.events.len()
        ));
    }
    for (got, want) in read.events.iter().zip(&result.events) {
        if got.hash != want.hash || got.payload.is_none() {
            return Err(format!(
                "{case}: event at {} reads back as {got:?}, reported as {want:?}",
                want.position
            ));
        }
    }
    Ok(())
}

/// The server still answers reads and health checks, and the projections caught up.
async fn expect_alive(s: &TestServer, case: &str) {
    let head = s
        .events()
        .await
        .get_head(pb::GetHeadRequest {})
        .await
        .unwrap_or_else(|e| panic!("{case}: GetHead after the run failed: {e:?}"))
        .into_inner();
    assert_eq!(
        head.event_count,
        s.app.log().durable_count(),
        "{case}: GetHead and the durable count disagree"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "claimsledger.v1.Ledger".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{case}: health check after the run failed: {e:?}"))
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
        "{case}: Ledger is not SERVING after the run"
    );
    let mut applied = s.app.watch_projection();
    let target = head.event_count;
    tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|a| *a >= target))
        .await
        .unwrap_or_else(|_| {
            panic!("{case}: projections did not catch up with {target} events within 30 s")
        })
        .unwrap_or_else(|_| panic!("{case}: the projector stopped"));
}

/// After a run, the stopped server's directory passes the offline check (hash chain, Merkle tree,
/// idempotency records, snapshots).
fn expect_verifies(dir: &std::path::Path, test: &str) {
    match claims_ledger_log::verify::verify_dir(dir) {
        Ok(Ok(_)) => {}
        other => panic!("{test}: the log does not verify afterwards: {other:?}"),
    }
}

/// A connection that accepts response headers up to 16 MiB (grpc-go's default), so that the random
/// tests see every status the server sends. With hyper's default of 16 KiB, refusals that echo a long
/// value never reach the client: see `a_refusal_echoing_a_long_value_reaches_a_default_client`.
async fn roomy_channel(s: &TestServer) -> Channel {
    tonic::transport::Endpoint::from_shared(s.addr.clone())
        .expect("endpoint")
        .http2_max_header_list_size(16 << 20)
        .connect()
        .await
        .expect("connect")
}

/// Seeds two parties, a source, a statement and a claim with the well-known ids.
async fn seed(ledger: &mut Ledger) {
    use pb::batch_command::Command as C;
    let mut st = statement("sergey-lavrov", SOURCE_ID, QUOTE);
    st.statement_id = STATEMENT_ID.into();
    st.on_behalf_of_id = "russia".into();
    let mut cl = claim(STATEMENT_ID, "russia", "negotiation-venue", "Istanbul");
    cl.claim_id = CLAIM_ID.into();
    let commands = vec![
        C::RegisterParty(party("russia", pb::PartyKind::State)),
        C::RegisterParty(party("sergey-lavrov", pb::PartyKind::Person)),
        C::RegisterSource(pb::RegisterSourceCommand {
            source_id: SOURCE_ID.into(),
            ..source()
        }),
        C::RecordStatement(st),
        C::AssertClaim(cl),
    ];
    ledger
        .submit_batch(batch_of(commands))
        .await
        .expect("seed batch");
}

fn bump(stats: &RefCell<BTreeMap<String, usize>>, key: String) {
    *stats.borrow_mut().entry(key).or_default() += 1;
}

fn print_stats(title: &str, stats: &RefCell<BTreeMap<String, usize>>) {
    eprintln!("{title}:");
    for (k, n) in stats.borrow().iter() {
        eprintln!("  {n:5}  {k}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Strategies for well-typed but hostile commands.
// ---------------------------------------------------------------------------------------------------

/// Characters that tend to break things: controls, bidi overrides, BOM, replacement, astral, combining.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '\0',
            '\u{1}',
            '\u{8}',
            '\t',
            '\n',
            '\r',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{a0}',
            '\u{200b}',
            '\u{200d}',
            '\u{202e}',
            '\u{2028}',
            '\u{feff}',
            '\u{fffd}',
            '\u{10ffff}',
            '\u{301}',
            '"',
            '\\',
            '/',
            '<',
            '%',
            'é',
            '\u{1f600}',
            ' ',
        ]),
        any::<char>(),
    ]
}

fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("   ".to_string()),
        "[a-zA-Z0-9 .,'-]{1,40}",
        any::<String>(),
        prop::collection::vec(nasty_char(), 1..40).prop_map(String::from_iter),
        prop::collection::vec(any::<char>(), 0..1500).prop_map(String::from_iter),
        (nasty_char(), 1..5000usize).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

/// Mostly `good`, sometimes hostile.
fn text_or(good: &'static str) -> BoxedStrategy<String> {
    prop_oneof![3 => Just(good.to_string()), 1 => hostile_string()].boxed()
}

fn optional_text() -> BoxedStrategy<String> {
    prop_oneof![2 => Just(String::new()), 1 => hostile_string()].boxed()
}

/// A party id: a seeded one, a fresh slug, a slug at or over its bound, or garbage.
fn party_ref() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec!["russia", "sergey-lavrov"]).prop_map(String::from),
        3 => "[a-z0-9]{1,6}(-[a-z0-9]{1,6}){0,2}",
        1 => prop::sample::select(vec![64usize, 65]).prop_map(|n| "a".repeat(n)),
        1 => "[A-Za-z0-9 _-]{0,12}",
        1 => hostile_string(),
    ]
    .boxed()
}

/// A UUID reference: a seeded or pooled one (in several spellings), a random one, or garbage.
fn uuid_ref() -> BoxedStrategy<String> {
    let known: Vec<&'static str> = [SOURCE_ID, STATEMENT_ID, CLAIM_ID]
        .into_iter()
        .chain(POOL)
        .collect();
    prop_oneof![
        5 => prop::sample::select(known.clone()).prop_map(String::from),
        1 => (prop::sample::select(known), 0..4usize).prop_map(|(id, form)| match form {
            0 => id.to_uppercase(),
            1 => format!("{{{id}}}"),
            2 => format!("urn:uuid:{id}"),
            _ => id.replace('-', ""),
        }),
        1 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        1 => prop::sample::select(vec![
            "",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "not-a-uuid",
            "0190a0a0-0000-7000-8000-00000000a00",
            "0190a0a0-0000-7000-8000-00000000a0011",
        ])
        .prop_map(String::from),
        1 => hostile_string(),
    ]
    .boxed()
}

/// The id of an entity to create: empty (server-generated) or client-chosen.
fn new_id() -> BoxedStrategy<String> {
    prop_oneof![2 => Just(String::new()), 3 => uuid_ref()].boxed()
}

/// An enum field: mostly defined values in 1..=max, sometimes UNSPECIFIED, undefined or negative.
fn enum_value(max: i32) -> BoxedStrategy<i32> {
    prop_oneof![
        6 => 1..=max,
        1 => Just(0),
        1 => prop::sample::select(vec![max + 1, -1, 99, i32::MIN, i32::MAX]),
        1 => any::<i32>(),
    ]
    .boxed()
}

/// A timestamp: mostly plausible, sometimes missing, at an edge of protobuf's or chrono's range, or
/// anything at all (negative or overflowing nanos included).
fn timestamp() -> BoxedStrategy<Option<prost_types::Timestamp>> {
    let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
    let edge_seconds = prop::sample::select(vec![
        i64::MIN,
        -8_334_601_228_800, // around chrono's earliest date
        -62_135_596_801,    // just before 0001-01-01
        -5_364_662_401,     // 1799-12-31T23:59:59Z
        -5_364_662_400,     // 1800-01-01T00:00:00Z
        -1,
        0,
        253_402_300_799, // 9999-12-31T23:59:59Z
        253_402_300_800, // 10000-01-01T00:00:00Z
        8_210_266_876_799,
        8_210_266_876_800,
        i64::MAX,
    ]);
    let edge_nanos =
        prop::sample::select(vec![i32::MIN, -1, 0, 999_999_999, 1_000_000_000, i32::MAX]);
    prop_oneof![
        4 => (PUBLISHED - 400_000_000..=PUBLISHED, 0..1_000_000_000i32)
            .prop_map(move |(s, n)| at(s, n)),
        1 => Just(None),
        2 => (edge_seconds, edge_nanos).prop_map(move |(s, n)| at(s, n)),
        1 => (any::<i64>(), any::<i32>()).prop_map(move |(s, n)| at(s, n)),
    ]
    .boxed()
}

fn stated_time() -> BoxedStrategy<Option<pb::StatedTime>> {
    let at = prop_oneof![
        3 => (WEDNESDAY - 86_400 * 400..=WEDNESDAY + 5_000)
            .prop_map(|s| Some(prost_types::Timestamp { seconds: s, nanos: 0 })),
        1 => timestamp(),
    ];
    prop_oneof![
        1 => Just(None),
        6 => (at, enum_value(4)).prop_map(|(at, precision)| Some(pb::StatedTime { at, precision })),
    ]
    .boxed()
}

fn offset() -> BoxedStrategy<u32> {
    prop_oneof![4 => 0u32..200, 1 => any::<u32>(), 1 => Just(u32::MAX)].boxed()
}

/// A span of the seeded source whose `exact` matches.
fn valid_span() -> BoxedStrategy<pb::Span> {
    let n = TEXT.chars().count();
    (0..n)
        .prop_flat_map(move |start| (Just(start), 1..=(n - start).min(60)))
        .prop_map(|(start, len)| pb::Span {
            source_id: SOURCE_ID.into(),
            start: start as u32,
            end: (start + len) as u32,
            exact: TEXT.chars().skip(start).take(len).collect(),
        })
        .boxed()
}

fn span() -> BoxedStrategy<pb::Span> {
    prop_oneof![
        4 => valid_span(),
        // Off by one, or counted in bytes rather than code points.
        1 => (valid_span(), 0..3usize).prop_map(|(mut s, how)| {
            match how {
                0 => s.end += 1,
                1 => s.start = s.start.saturating_sub(1),
                _ => {
                    let byte = TEXT
                        .char_indices()
                        .nth(s.start as usize)
                        .map_or(0, |(b, _)| b as u32);
                    let len = s.end - s.start;
                    s.start = byte;
                    s.end = byte + len;
                }
            }
            s
        }),
        2 => (uuid_ref(), offset(), offset(), text_or("Istanbul")).prop_map(
            |(source_id, start, end, exact)| pb::Span {
                source_id,
                start,
                end,
                exact,
            }
        ),
    ]
    .boxed()
}

fn spans() -> BoxedStrategy<Vec<pb::Span>> {
    prop_oneof![
        8 => prop::collection::vec(span(), 1..=3),
        1 => Just(Vec::new()),
        1 => prop::collection::vec(valid_span(), MAX_SPANS - 1..=MAX_SPANS + 2),
    ]
    .boxed()
}

fn affiliation() -> BoxedStrategy<pb::Affiliation> {
    (
        party_ref(),
        text_or("Foreign Minister"),
        timestamp(),
        timestamp(),
    )
        .prop_map(|(organisation_id, role, since, until)| pb::Affiliation {
            organisation_id,
            role,
            since,
            until,
        })
        .boxed()
}

fn list<T: std::fmt::Debug + Clone + 'static>(
    item: BoxedStrategy<T>,
    max: usize,
) -> BoxedStrategy<Vec<T>> {
    prop_oneof![
        6 => prop::collection::vec(item.clone(), 0..=2),
        1 => prop::collection::vec(item, max..=max + 1),
    ]
    .boxed()
}

#[allow(clippy::type_complexity)]
fn party_fields() -> BoxedStrategy<(
    String,
    i32,
    String,
    Vec<String>,
    Vec<pb::Affiliation>,
    String,
)> {
    (
        party_ref(),
        enum_value(5),
        text_or("Sergey Lavrov"),
        list(text_or("Moscow"), 32),
        list(affiliation(), 32),
        optional_text(),
    )
        .boxed()
}

fn register_party() -> BoxedStrategy<pb::RegisterPartyCommand> {
    party_fields()
        .prop_map(
            |(party_id, kind, name, aliases, affiliations, description)| pb::RegisterPartyCommand {
                party_id,
                kind,
                name,
                aliases,
                affiliations,
                description,
            },
        )
        .boxed()
}

fn update_party() -> BoxedStrategy<pb::UpdatePartyCommand> {
    party_fields()
        .prop_map(
            |(party_id, kind, name, aliases, affiliations, description)| pb::UpdatePartyCommand {
                party_id,
                kind,
                name,
                aliases,
                affiliations,
                description,
            },
        )
        .boxed()
}

fn url() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just("https://example.org/istanbul".to_string()),
        1 => prop::sample::select(vec![
            "http://",
            "https://",
            "https:///path",
            "ftp://example.org",
            "HTTPS://EXAMPLE.ORG",
            "https://ex ample.org",
            "https://\u{e9}.org/\u{fc}",
            "http://x?#",
            "javascript:alert(1)",
        ])
        .prop_map(String::from),
        1 => prop::sample::select(vec![2020usize, 2021, 5000])
            .prop_map(|n| format!("https://e.org/{}", "a".repeat(n))),
        1 => hostile_string(),
    ]
    .boxed()
}

fn register_source() -> BoxedStrategy<pb::RegisterSourceCommand> {
    let published = prop_oneof![3 => Just(ts(PUBLISHED)), 1 => timestamp()];
    let retrieved = prop_oneof![3 => Just(ts(PUBLISHED + 3600)), 1 => timestamp()];
    (
        new_id(),
        text_or("Test Wire"),
        url(),
        text_or("Istanbul talks"),
        published,
        retrieved,
        prop_oneof![
            3 => Just("en".to_string()),
            1 => prop::sample::select(vec!["en-GB", "zh-Hant-TW", "e", "english", "EN", "en_GB"])
                .prop_map(String::from),
            1 => hostile_string(),
        ],
        prop_oneof![3 => Just(TEXT.to_string()), 2 => hostile_string()],
    )
        .prop_map(
            |(source_id, publisher, url, title, published_at, retrieved_at, language, text)| {
                pb::RegisterSourceCommand {
                    source_id,
                    publisher,
                    url,
                    title,
                    published_at,
                    retrieved_at,
                    language,
                    text,
                }
            },
        )
        .boxed()
}

fn record_statement() -> BoxedStrategy<pb::RecordStatementCommand> {
    (
        new_id(),
        party_ref(),
        prop_oneof![2 => Just(String::new()), 1 => party_ref()],
        stated_time(),
        optional_text(),
        enum_value(5),
        text_or("told reporters"),
        text_or("Russia is ready for talks in Istanbul."),
        spans(),
        prop_oneof![3 => Just(String::new()), 1 => uuid_ref()],
    )
        .prop_map(
            |(
                statement_id,
                speaker_id,
                on_behalf_of_id,
                stated_time,
                venue,
                mode,
                attribution_verb,
                content,
                spans,
                reports_statement_id,
            )| pb::RecordStatementCommand {
                statement_id,
                speaker_id,
                on_behalf_of_id,
                stated_time,
                venue,
                mode,
                attribution_verb,
                content,
                spans,
                reports_statement_id,
            },
        )
        .boxed()
}

fn assert_claim() -> BoxedStrategy<pb::AssertClaimCommand> {
    (
        new_id(),
        uuid_ref(),
        party_ref(),
        prop_oneof![3 => Just("negotiation-venue".to_string()), 1 => party_ref()],
        text_or("Istanbul"),
        list(text_or("if Kyiv is genuinely interested in peace"), 16),
    )
        .prop_map(
            |(claim_id, statement_id, party_id, topic, stance, conditions)| {
                pb::AssertClaimCommand {
                    claim_id,
                    statement_id,
                    party_id,
                    topic,
                    stance,
                    conditions,
                }
            },
        )
        .boxed()
}

fn rating() -> BoxedStrategy<Option<pb::Rating>> {
    let int = || {
        prop_oneof![
            3 => Just(0),
            2 => -5..=5,
            1 => prop::sample::select(vec![i32::MIN, i32::MAX, -1]),
        ]
    };
    prop_oneof![
        1 => Just(None),
        4 => (text_or("Accurate"), int(), int(), int()).prop_map(|(label, value, best, worst)| {
            Some(pb::Rating {
                label,
                value,
                best,
                worst,
            })
        }),
    ]
    .boxed()
}

fn review_claim() -> BoxedStrategy<pb::ReviewClaimCommand> {
    (
        new_id(),
        uuid_ref(),
        text_or("Fact Desk"),
        rating(),
        optional_text(),
        prop_oneof![2 => Just(String::new()), 1 => url()],
    )
        .prop_map(
            |(review_id, claim_id, reviewer, rating, explanation, url)| pb::ReviewClaimCommand {
                review_id,
                claim_id,
                reviewer,
                rating,
                explanation,
                url,
            },
        )
        .boxed()
}

fn issue_correction() -> BoxedStrategy<pb::IssueCorrectionCommand> {
    (
        new_id(),
        enum_value(2),
        uuid_ref(),
        enum_value(3),
        text_or("misattributed"),
        prop_oneof![2 => Just(String::new()), 1 => uuid_ref()],
    )
        .prop_map(
            |(correction_id, target_kind, target_id, kind, reason, replacement_id)| {
                pb::IssueCorrectionCommand {
                    correction_id,
                    target_kind,
                    target_id,
                    kind,
                    reason,
                    replacement_id,
                }
            },
        )
        .boxed()
}

fn write_options() -> BoxedStrategy<Option<pb::WriteOptions>> {
    let key = prop_oneof![
        2 => Just(String::new()),
        2 => prop::sample::select(vec!["k1", "k2"]).prop_map(String::from),
        1 => "[!-~]{1,130}",
        1 => hostile_string(),
    ];
    prop_oneof![
        3 => Just(None),
        1 => (key, optional_text(), optional_text()).prop_map(
            |(idempotency_key, correlation_id, causation_id)| Some(pb::WriteOptions {
                idempotency_key,
                correlation_id,
                causation_id,
            })
        ),
    ]
    .boxed()
}

fn expected_revision() -> BoxedStrategy<Option<pb::ExpectedRevision>> {
    prop_oneof![
        3 => Just(None),
        1 => (
            prop_oneof![4 => 0..=4i32, 1 => any::<i32>()],
            prop_oneof![3 => 0u64..3, 1 => Just(u64::MAX)],
        )
            .prop_map(|(kind, revision)| Some(pb::ExpectedRevision { kind, revision })),
    ]
    .boxed()
}

/// Any command, each field mostly plausible and sometimes hostile.
fn hostile_command() -> BoxedStrategy<pb::batch_command::Command> {
    use pb::batch_command::Command as C;
    prop_oneof![
        3 => register_party().prop_map(C::RegisterParty),
        1 => update_party().prop_map(C::UpdateParty),
        2 => register_source().prop_map(C::RegisterSource),
        3 => record_statement().prop_map(C::RecordStatement),
        2 => assert_claim().prop_map(C::AssertClaim),
        2 => review_claim().prop_map(C::ReviewClaim),
        2 => issue_correction().prop_map(C::IssueCorrection),
    ]
    .boxed()
}

/// A command that is valid unless an id it creates is taken or an entity it refers to is missing
/// or in the wrong state (pooled ids make those outcomes common too). A `clean` one lets the server
/// generate ids and refers only to the seeded entities, so it is accepted.
fn valid_command(clean: bool) -> BoxedStrategy<pb::batch_command::Command> {
    use pb::batch_command::Command as C;
    let pooled = || prop::sample::select(POOL.to_vec()).prop_map(String::from);
    let new_id = move || -> BoxedStrategy<String> {
        if clean {
            Just(String::new()).boxed()
        } else {
            prop_oneof![4 => Just(String::new()), 1 => pooled()].boxed()
        }
    };
    let seeded_or_pooled = move |seeded: &'static str| -> BoxedStrategy<String> {
        if clean {
            Just(seeded.to_string()).boxed()
        } else {
            prop_oneof![Just(seeded.to_string()), pooled()].boxed()
        }
    };
    let erratum = new_id()
        .prop_map(|correction_id| {
            C::IssueCorrection(pb::IssueCorrectionCommand {
                correction_id,
                target_kind: pb::TargetKind::Claim as i32,
                target_id: CLAIM_ID.into(),
                kind: pb::CorrectionKind::Erratum as i32,
                reason: "Typo in the stance.".into(),
                replacement_id: String::new(),
            })
        })
        .boxed();
    let pooled_correction = if clean {
        erratum.clone()
    } else {
        (new_id(), pooled(), 1..=2i32, 1..=3i32)
            .prop_map(|(correction_id, target_id, target_kind, kind)| {
                C::IssueCorrection(pb::IssueCorrectionCommand {
                    correction_id,
                    target_kind,
                    target_id,
                    kind,
                    reason: "Misattributed.".into(),
                    replacement_id: if kind == pb::CorrectionKind::Supersede as i32 {
                        POOL[0].into()
                    } else {
                        String::new()
                    },
                })
            })
            .boxed()
    };
    prop_oneof![
        3 => ("[a-z]{2,8}(-[a-z0-9]{1,6}){0,2}", 1..=5i32).prop_map(|(id, kind)| {
            C::RegisterParty(pb::RegisterPartyCommand {
                kind,
                ..party(&id, pb::PartyKind::Group)
            })
        }),
        1 => Just(C::UpdateParty(pb::UpdatePartyCommand {
            party_id: "russia".into(),
            kind: pb::PartyKind::State as i32,
            name: "Russian Federation".into(),
            ..Default::default()
        })),
        2 => new_id().prop_map(|source_id| C::RegisterSource(pb::RegisterSourceCommand {
            source_id,
            ..source()
        })),
        3 => (new_id(), prop::collection::vec(valid_span(), 1..=3), 1..=4i32).prop_map(
            |(statement_id, spans, precision)| {
                C::RecordStatement(pb::RecordStatementCommand {
                    statement_id,
                    spans,
                    stated_time: Some(pb::StatedTime {
                        at: ts(WEDNESDAY + 5000),
                        precision,
                    }),
                    ..statement("sergey-lavrov", SOURCE_ID, QUOTE)
                })
            }
        ),
        2 => (new_id(), seeded_or_pooled(STATEMENT_ID)).prop_map(|(claim_id, statement_id)| {
            C::AssertClaim(pb::AssertClaimCommand {
                claim_id,
                ..claim(&statement_id, "russia", "negotiation-venue", "Istanbul")
            })
        }),
        2 => (new_id(), seeded_or_pooled(CLAIM_ID)).prop_map(|(review_id, claim_id)| {
            C::ReviewClaim(pb::ReviewClaimCommand {
                review_id,
                claim_id,
                reviewer: "Fact Desk".into(),
                rating: Some(pb::Rating {
                    label: "Accurate".into(),
                    value: 4,
                    best: 5,
                    worst: 1,
                }),
                ..Default::default()
            })
        }),
        2 => pooled_correction,
        1 => erratum,
    ]
    .boxed()
}

/// A batch entry without an expected revision.
fn plain_entry(
    command: BoxedStrategy<pb::batch_command::Command>,
) -> BoxedStrategy<pb::BatchCommand> {
    command
        .prop_map(|c| pb::BatchCommand {
            expected_revision: None,
            command: Some(c),
        })
        .boxed()
}

/// A batch entry with a random expected revision, sometimes without its command.
fn batch_entry(
    command: BoxedStrategy<pb::batch_command::Command>,
) -> BoxedStrategy<pb::BatchCommand> {
    (
        expected_revision(),
        prop_oneof![1 => Just(None), 15 => command.prop_map(Some)],
    )
        .prop_map(|(expected_revision, command)| pb::BatchCommand {
            expected_revision,
            command,
        })
        .boxed()
}

/// One call to the Ledger service.
#[derive(Debug, Clone)]
enum Call {
    RegisterParty(pb::RegisterPartyRequest),
    UpdateParty(pb::UpdatePartyRequest),
    RegisterSource(pb::RegisterSourceRequest),
    RecordStatement(pb::RecordStatementRequest),
    AssertClaim(pb::AssertClaimRequest),
    ReviewClaim(pb::ReviewClaimRequest),
    IssueCorrection(pb::IssueCorrectionRequest),
    SubmitBatch(pb::SubmitBatchRequest),
}

impl Call {
    fn name(&self) -> &'static str {
        match self {
            Call::RegisterParty(_) => "RegisterParty",
            Call::UpdateParty(_) => "UpdateParty",
            Call::RegisterSource(_) => "RegisterSource",
            Call::RecordStatement(_) => "RecordStatement",
            Call::AssertClaim(_) => "AssertClaim",
            Call::ReviewClaim(_) => "ReviewClaim",
            Call::IssueCorrection(_) => "IssueCorrection",
            Call::SubmitBatch(_) => "SubmitBatch",
        }
    }
}

/// A single-command call: a hostile or valid command (or none) with random options.
fn single_call() -> BoxedStrategy<Call> {
    use pb::batch_command::Command as C;
    let command = prop_oneof![
        1 => Just(None),
        12 => hostile_command().prop_map(Some),
        6 => valid_command(false).prop_map(Some),
    ];
    (write_options(), expected_revision(), command, 0..7usize)
        .prop_map(|(options, expected_revision, command, rpc)| {
            macro_rules! call {
                ($variant:ident, $request:ident, $command:expr) => {
                    Call::$variant(pb::$request {
                        options,
                        expected_revision,
                        command: $command,
                    })
                };
            }
            match (command, rpc) {
                (Some(C::RegisterParty(c)), _) => {
                    call!(RegisterParty, RegisterPartyRequest, Some(c))
                }
                (Some(C::UpdateParty(c)), _) => call!(UpdateParty, UpdatePartyRequest, Some(c)),
                (Some(C::RegisterSource(c)), _) => {
                    call!(RegisterSource, RegisterSourceRequest, Some(c))
                }
                (Some(C::RecordStatement(c)), _) => {
                    call!(RecordStatement, RecordStatementRequest, Some(c))
                }
                (Some(C::AssertClaim(c)), _) => call!(AssertClaim, AssertClaimRequest, Some(c)),
                (Some(C::ReviewClaim(c)), _) => call!(ReviewClaim, ReviewClaimRequest, Some(c)),
                (Some(C::IssueCorrection(c)), _) => {
                    call!(IssueCorrection, IssueCorrectionRequest, Some(c))
                }
                (None, 0) => call!(RegisterParty, RegisterPartyRequest, None),
                (None, 1) => call!(UpdateParty, UpdatePartyRequest, None),
                (None, 2) => call!(RegisterSource, RegisterSourceRequest, None),
                (None, 3) => call!(RecordStatement, RecordStatementRequest, None),
                (None, 4) => call!(AssertClaim, AssertClaimRequest, None),
                (None, 5) => call!(ReviewClaim, ReviewClaimRequest, None),
                (None, _) => call!(IssueCorrection, IssueCorrectionRequest, None),
            }
        })
        .boxed()
}

/// A batch of up to 20 commands: all valid, all valid-looking, valid with one hostile command
/// somewhere, all hostile, or empty.
fn batch_call() -> BoxedStrategy<Call> {
    let commands = prop_oneof![
        1 => Just(Vec::new()),
        3 => prop::collection::vec(plain_entry(valid_command(true)), 1..=20),
        3 => prop::collection::vec(batch_entry(valid_command(false)), 1..=20),
        4 => (
            prop::collection::vec(plain_entry(valid_command(true)), 0..=19),
            batch_entry(hostile_command()),
            any::<Index>(),
        )
            .prop_map(|(mut commands, hostile, at)| {
                let at = at.index(commands.len() + 1);
                commands.insert(at, hostile);
                commands
            }),
        3 => prop::collection::vec(batch_entry(hostile_command()), 1..=20),
    ];
    (write_options(), commands)
        .prop_map(|(options, commands)| {
            Call::SubmitBatch(pb::SubmitBatchRequest { options, commands })
        })
        .boxed()
}

/// Sends `call`; on success returns the write result and how many commands it carried.
async fn send(
    ledger: &mut Ledger,
    call: Call,
) -> Result<(Option<pb::WriteResult>, usize, Option<usize>), Status> {
    Ok(match call {
        Call::RegisterParty(r) => (ledger.register_party(r).await?.into_inner().result, 1, None),
        Call::UpdateParty(r) => (ledger.update_party(r).await?.into_inner().result, 1, None),
        Call::RegisterSource(r) => (
            ledger.register_source(r).await?.into_inner().result,
            1,
            None,
        ),
        Call::RecordStatement(r) => (
            ledger.record_statement(r).await?.into_inner().result,
            1,
            None,
        ),
        Call::AssertClaim(r) => (ledger.assert_claim(r).await?.into_inner().result, 1, None),
        Call::ReviewClaim(r) => (ledger.review_claim(r).await?.into_inner().result, 1, None),
        Call::IssueCorrection(r) => (
            ledger.issue_correction(r).await?.into_inner().result,
            1,
            None,
        ),
        Call::SubmitBatch(r) => {
            let n = r.commands.len();
            let resp = ledger.submit_batch(r).await?.into_inner();
            (resp.result, n, Some(resp.results.len()))
        }
    })
}

/// Runs `cases` random calls from `strategy` against one seeded server, checking after each that a
/// refusal has an expected code and wrote nothing, and that a success wrote exactly what it reports.
fn run_random_calls(test: &str, cases: u32, strategy: BoxedStrategy<Call>) {
    let rt = runtime();
    let s = rt.block_on(TestServer::start());
    let (ledger, events) = rt.block_on(async {
        let mut ledger = pb::ledger_client::LedgerClient::new(roomy_channel(&s).await);
        seed(&mut ledger).await;
        (ledger, s.events().await)
    });
    let stats = RefCell::new(BTreeMap::new());
    let mut runner = runner(cases);
    let outcome = runner.run(&strategy, |call| {
        rt.block_on(async {
            let name = call.name();
            let fail = |m: String| TestCaseError::fail(format!("{test}: {m}"));
            let before = snapshot(&s.app, &events).await.map_err(fail)?;
            match send(&mut ledger.clone(), call).await {
                Ok((result, commands, results)) => {
                    bump(&stats, format!("{name}: OK"));
                    if let Some(r) = results {
                        prop_assert_eq!(
                            r,
                            commands,
                            "{}: {} returned {} results for {} commands",
                            test,
                            name,
                            r,
                            commands
                        );
                    }
                    expect_grown_by(
                        &s.app,
                        &events,
                        &before,
                        result.as_ref(),
                        commands,
                        &format!("{name} accepted"),
                    )
                    .await
                    .map_err(fail)?;
                }
                Err(status) => {
                    bump(&stats, format!("{name}: {:?}", status.code()));
                    prop_assert!(
                        REFUSALS.contains(&status.code()),
                        "{}: {} refused with an unexpected status {:?}",
                        test,
                        name,
                        status
                    );
                    expect_unchanged(&s.app, &events, &before, &format!("{name} refused"))
                        .await
                        .map_err(fail)?;
                }
            }
            Ok(())
        })
    });
    print_stats(test, &stats);
    if let Err(e) = outcome {
        panic!("{test}: {e}");
    }
    let dir = rt.block_on(async {
        expect_alive(&s, test).await;
        s.stop().await
    });
    expect_verifies(dir.path(), test);
}

#[test]
fn random_well_typed_commands_are_answered_and_never_partly_written() {
    run_random_calls("random_well_typed_commands", 2500, single_call());
}

#[test]
fn random_batches_are_written_whole_or_not_at_all() {
    run_random_calls("random_batches", 600, batch_call());
}

// ---------------------------------------------------------------------------------------------------
// Malformed protobuf bytes, sent with a pass-through codec.
// ---------------------------------------------------------------------------------------------------

/// Sends and receives message bodies as they are (also used by `fuzz` and `session_decode`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCodec;
#[derive(Debug)]
pub(crate) struct RawEncoder;
#[derive(Debug)]
pub(crate) struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_unary(
    channel: &Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static(path);
    Ok(grpc
        .unary(tonic::Request::new(body), path, RawCodec)
        .await?
        .into_inner())
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    RegisterParty,
    UpdateParty,
    RegisterSource,
    RecordStatement,
    AssertClaim,
    ReviewClaim,
    IssueCorrection,
    SubmitBatch,
}

const RPCS: [Rpc; 8] = [
    Rpc::RegisterParty,
    Rpc::UpdateParty,
    Rpc::RegisterSource,
    Rpc::RecordStatement,
    Rpc::AssertClaim,
    Rpc::ReviewClaim,
    Rpc::IssueCorrection,
    Rpc::SubmitBatch,
];

impl Rpc {
    fn path(self) -> &'static str {
        match self {
            Rpc::RegisterParty => "/claimsledger.v1.Ledger/RegisterParty",
            Rpc::UpdateParty => "/claimsledger.v1.Ledger/UpdateParty",
            Rpc::RegisterSource => "/claimsledger.v1.Ledger/RegisterSource",
            Rpc::RecordStatement => "/claimsledger.v1.Ledger/RecordStatement",
            Rpc::AssertClaim => "/claimsledger.v1.Ledger/AssertClaim",
            Rpc::ReviewClaim => "/claimsledger.v1.Ledger/ReviewClaim",
            Rpc::IssueCorrection => "/claimsledger.v1.Ledger/IssueCorrection",
            Rpc::SubmitBatch => "/claimsledger.v1.Ledger/SubmitBatch",
        }
    }

    /// A request that the seeded server would accept (at least the first time).
    fn valid_request(self) -> Vec<u8> {
        let options = Some(pb::WriteOptions {
            correlation_id: "corr".into(),
            ..Default::default()
        });
        match self {
            Rpc::RegisterParty => pb::RegisterPartyRequest {
                options,
                expected_revision: None,
                command: Some(pb::RegisterPartyCommand {
                    aliases: vec!["Mutants".into()],
                    affiliations: vec![pb::Affiliation {
                        organisation_id: "russia".into(),
                        role: "Member".into(),
                        since: ts(WEDNESDAY),
                        until: None,
                    }],
                    description: "A party made to be mangled.".into(),
                    ..party("mutant-party", pb::PartyKind::Group)
                }),
            }
            .encode_to_vec(),
            Rpc::UpdateParty => pb::UpdatePartyRequest {
                options,
                expected_revision: None,
                command: Some(pb::UpdatePartyCommand {
                    party_id: "russia".into(),
                    kind: pb::PartyKind::State as i32,
                    name: "Russian Federation".into(),
                    aliases: vec!["Moscow".into()],
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
            Rpc::RegisterSource => pb::RegisterSourceRequest {
                options,
                expected_revision: None,
                command: Some(source()),
            }
            .encode_to_vec(),
            Rpc::RecordStatement => pb::RecordStatementRequest {
                options,
                expected_revision: None,
                command: Some(statement("sergey-lavrov", SOURCE_ID, QUOTE)),
            }
            .encode_to_vec(),
            Rpc::AssertClaim => pb::AssertClaimRequest {
                options,
                expected_revision: None,
                command: Some(claim(STATEMENT_ID, "russia", "venue", "Istanbul")),
            }
            .encode_to_vec(),
            Rpc::ReviewClaim => pb::ReviewClaimRequest {
                options,
                expected_revision: None,
                command: Some(pb::ReviewClaimCommand {
                    claim_id: CLAIM_ID.into(),
                    reviewer: "Fact Desk".into(),
                    rating: Some(pb::Rating {
                        label: "Accurate".into(),
                        value: 4,
                        best: 5,
                        worst: 1,
                    }),
                    explanation: "Matches the transcript.".into(),
                    url: "https://example.org/review".into(),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
            Rpc::IssueCorrection => pb::IssueCorrectionRequest {
                options,
                expected_revision: None,
                command: Some(pb::IssueCorrectionCommand {
                    target_kind: pb::TargetKind::Claim as i32,
                    target_id: CLAIM_ID.into(),
                    kind: pb::CorrectionKind::Erratum as i32,
                    reason: "Typo in the stance.".into(),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
            Rpc::SubmitBatch => {
                use pb::batch_command::Command as C;
                pb::SubmitBatchRequest {
                    options,
                    commands: [
                        C::RegisterParty(party("batch-mutant", pb::PartyKind::Group)),
                        C::RecordStatement(statement("sergey-lavrov", SOURCE_ID, QUOTE)),
                        C::AssertClaim(claim(STATEMENT_ID, "batch-mutant", "venue", "Istanbul")),
                    ]
                    .into_iter()
                    .map(|c| pb::BatchCommand {
                        expected_revision: None,
                        command: Some(c),
                    })
                    .collect(),
                }
                .encode_to_vec()
            }
        }
    }

    /// Decodes a successful answer: its write result and how many commands the request carried
    /// (for a batch, the number of per-command results).
    fn decode_answer(self, bytes: &[u8]) -> Result<(Option<pb::WriteResult>, usize), String> {
        let e = |e: prost::DecodeError| format!("undecodable answer: {e}");
        Ok(match self {
            Rpc::RegisterParty => (
                pb::RegisterPartyResponse::decode(bytes).map_err(e)?.result,
                1,
            ),
            Rpc::UpdateParty => (pb::UpdatePartyResponse::decode(bytes).map_err(e)?.result, 1),
            Rpc::RegisterSource => (
                pb::RegisterSourceResponse::decode(bytes).map_err(e)?.result,
                1,
            ),
            Rpc::RecordStatement => (
                pb::RecordStatementResponse::decode(bytes)
                    .map_err(e)?
                    .result,
                1,
            ),
            Rpc::AssertClaim => (pb::AssertClaimResponse::decode(bytes).map_err(e)?.result, 1),
            Rpc::ReviewClaim => (pb::ReviewClaimResponse::decode(bytes).map_err(e)?.result, 1),
            Rpc::IssueCorrection => (
                pb::IssueCorrectionResponse::decode(bytes)
                    .map_err(e)?
                    .result,
                1,
            ),
            Rpc::SubmitBatch => {
                let r = pb::SubmitBatchResponse::decode(bytes).map_err(e)?;
                let n = r.results.len();
                (r.result, n)
            }
        })
    }
}

/// How a malformed body is made.
#[derive(Debug, Clone, Copy)]
enum Mangle {
    RandomBytes,
    Truncated,
    FlippedByte,
    TrailingGarbage,
    OtherMethodsMessage,
    DeepGroups,
    HugeLength,
}

const MANGLES: [Mangle; 7] = [
    Mangle::RandomBytes,
    Mangle::Truncated,
    Mangle::FlippedByte,
    Mangle::TrailingGarbage,
    Mangle::OtherMethodsMessage,
    Mangle::DeepGroups,
    Mangle::HugeLength,
];

#[derive(Debug, Clone)]
struct RawCase {
    rpc: Rpc,
    mangle: Mangle,
    body: Vec<u8>,
}

fn raw_case() -> impl Strategy<Value = RawCase> {
    (
        prop::sample::select(RPCS.to_vec()),
        prop::sample::select(MANGLES.to_vec()),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<Index>(),
        any::<Index>(),
        1u8..=255,
        1usize..4000,
    )
        .prop_map(|(rpc, mangle, random, at, other, mask, depth)| {
            let valid = rpc.valid_request();
            let body = match mangle {
                Mangle::RandomBytes => random,
                Mangle::Truncated => valid[..at.index(valid.len())].to_vec(),
                Mangle::FlippedByte => {
                    let mut v = valid;
                    let i = at.index(v.len());
                    v[i] ^= mask;
                    v
                }
                Mangle::TrailingGarbage => {
                    let mut v = valid;
                    v.extend_from_slice(&random);
                    v
                }
                Mangle::OtherMethodsMessage => other.get(&RPCS).valid_request(),
                Mangle::DeepGroups => {
                    // Unknown field 15 as nested start-group / end-group tags.
                    let mut v = valid[..at.index(valid.len())].to_vec();
                    v.extend(std::iter::repeat_n(0x7b, depth));
                    v.extend(std::iter::repeat_n(0x7c, depth));
                    v
                }
                Mangle::HugeLength => {
                    // Field 3 (the command) announced with an absurd length.
                    let mut v = valid[..at.index(valid.len())].to_vec();
                    v.extend_from_slice(&[0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
                    v.extend_from_slice(&random);
                    v
                }
            };
            RawCase { rpc, mangle, body }
        })
}

/// The gist of a prost decode error, without the field path and numbers, for the summary.
fn decode_reason(message: &str) -> String {
    let parts: Vec<&str> = message.rsplit(": ").collect();
    match parts.as_slice() {
        [last, before, ..] if last.chars().all(|c| c.is_ascii_digit()) => {
            format!("{before}: N")
        }
        [last, ..] => last.to_string(),
        [] => String::new(),
    }
}

#[test]
fn malformed_protobuf_bytes_get_a_status_and_write_nothing_partly() {
    const TEST: &str = "malformed_protobuf_bytes";
    let rt = runtime();
    let s = rt.block_on(TestServer::start());
    let (channel, events) = rt.block_on(async {
        seed(&mut s.ledger().await).await;
        (roomy_channel(&s).await, s.events().await)
    });
    let stats = RefCell::new(BTreeMap::new());
    let mut runner = runner(1500);
    let outcome = runner.run(&raw_case(), |case| {
        rt.block_on(async {
            let what = format!("{:?} body to {:?}", case.mangle, case.rpc);
            let fail = |m: String| TestCaseError::fail(format!("{TEST}: {m}"));
            let before = snapshot(&s.app, &events).await.map_err(fail)?;
            match raw_unary(&channel, case.rpc.path(), case.body).await {
                Ok(answer) => {
                    bump(&stats, format!("{:?}: OK (decoded as valid)", case.mangle));
                    let (result, commands) = case
                        .rpc
                        .decode_answer(&answer)
                        .map_err(|e| fail(format!("{what}: {e}")))?;
                    expect_grown_by(
                        &s.app,
                        &events,
                        &before,
                        result.as_ref(),
                        commands,
                        &format!("{what} accepted"),
                    )
                    .await
                    .map_err(fail)?;
                }
                Err(status) => {
                    let code = status.code();
                    prop_assert!(
                        code != Code::Internal,
                        "{}: {} answered INTERNAL: {:?}",
                        TEST,
                        what,
                        status
                    );
                    let decode_error = code == Code::InvalidArgument
                        && status
                            .message()
                            .contains("failed to decode Protobuf message");
                    let key = if decode_error {
                        format!(
                            "{:?}: InvalidArgument ({})",
                            case.mangle,
                            decode_reason(status.message())
                        )
                    } else {
                        format!("{:?}: {code:?}", case.mangle)
                    };
                    bump(&stats, key);
                    prop_assert!(
                        decode_error || REFUSALS.contains(&code),
                        "{}: {} answered an unexpected status {:?}",
                        TEST,
                        what,
                        status
                    );
                    expect_unchanged(&s.app, &events, &before, &format!("{what} refused"))
                        .await
                        .map_err(fail)?;
                }
            }
            Ok(())
        })
    });
    print_stats(TEST, &stats);
    if let Err(e) = outcome {
        panic!("{TEST}: {e}");
    }
    let dir = rt.block_on(async {
        expect_alive(&s, TEST).await;
        s.stop().await
    });
    expect_verifies(dir.path(), TEST);
}

// ---------------------------------------------------------------------------------------------------
// Bounds: each refused with its exact status, nothing written; the bound itself is accepted.
// ---------------------------------------------------------------------------------------------------

async fn head_of(s: &TestServer) -> Snapshot {
    snapshot(&s.app, &s.events().await)
        .await
        .expect("GetHead answers")
}

#[tokio::test]
async fn a_batch_over_max_batch_is_refused_whole() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let parties = |n: usize| {
        (0..n)
            .map(|i| {
                pb::batch_command::Command::RegisterParty(party(
                    &format!("p{i}"),
                    pb::PartyKind::Group,
                ))
            })
            .collect::<Vec<_>>()
    };
    let before = head_of(&s).await;
    let err = c
        .submit_batch(batch_of(parties(MAX_BATCH + 1)))
        .await
        .expect_err("MAX_BATCH + 1 commands: refused");
    assert_eq!(err.code(), Code::InvalidArgument, "MAX_BATCH + 1: {err:?}");
    assert_eq!(
        field_violations(&err),
        vec!["commands".to_string()],
        "MAX_BATCH + 1: the violation names the commands"
    );
    assert_eq!(head_of(&s).await, before, "MAX_BATCH + 1: nothing written");

    let ok = c
        .submit_batch(batch_of(parties(MAX_BATCH)))
        .await
        .expect("MAX_BATCH commands: accepted")
        .into_inner();
    assert_eq!(ok.results.len(), MAX_BATCH, "MAX_BATCH: one result each");
    assert_eq!(
        head_of(&s).await.count,
        before.count + MAX_BATCH as u64,
        "MAX_BATCH: every command written"
    );
    expect_alive(&s, "batch bound").await;
}

#[tokio::test]
async fn a_source_text_over_max_source_text_bytes_is_refused() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let register = |text: String| pb::RegisterSourceRequest {
        command: Some(pb::RegisterSourceCommand { text, ..source() }),
        ..Default::default()
    };
    let before = head_of(&s).await;
    for (case, text) in [
        (
            "MAX_SOURCE_TEXT_BYTES + 1 ASCII bytes",
            "a".repeat(MAX_SOURCE_TEXT_BYTES + 1),
        ),
        (
            "MAX_SOURCE_TEXT_BYTES + 1 bytes in half as many code points",
            "\u{e9}".repeat(MAX_SOURCE_TEXT_BYTES / 2) + "a",
        ),
    ] {
        let err = c
            .register_source(register(text))
            .await
            .expect_err("over the text bound: refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        assert_eq!(
            field_violations(&err),
            vec!["command.text".to_string()],
            "{case}: the violation names the text"
        );
        assert_eq!(head_of(&s).await, before, "{case}: nothing written");
    }

    // A batch whose last command is over the bound writes none of the earlier ones.
    let err = c
        .submit_batch(batch_of(vec![
            pb::batch_command::Command::RegisterParty(party("ukraine", pb::PartyKind::State)),
            pb::batch_command::Command::RegisterSource(pb::RegisterSourceCommand {
                text: "a".repeat(MAX_SOURCE_TEXT_BYTES + 1),
                ..source()
            }),
        ]))
        .await
        .expect_err("batch with an oversized source: refused");
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "oversized source in a batch"
    );
    assert_eq!(
        field_violations(&err),
        vec!["commands[1].register_source.text".to_string()],
        "oversized source in a batch: the violation names it"
    );
    assert_eq!(
        head_of(&s).await,
        before,
        "oversized source in a batch: nothing written, not even the party"
    );

    // At the bound, even with the worst JSON escaping the text allows (every byte a quote, stored
    // as two), the source is accepted.
    for (case, text) in [
        (
            "MAX_SOURCE_TEXT_BYTES ASCII bytes",
            "a".repeat(MAX_SOURCE_TEXT_BYTES),
        ),
        (
            "MAX_SOURCE_TEXT_BYTES quotes",
            "\"".repeat(MAX_SOURCE_TEXT_BYTES),
        ),
        (
            "MAX_SOURCE_TEXT_BYTES line breaks and a word",
            "\n".repeat(MAX_SOURCE_TEXT_BYTES - 1) + "a",
        ),
    ] {
        let before = head_of(&s).await;
        c.register_source(register(text))
            .await
            .unwrap_or_else(|e| panic!("{case}: accepted, got {e:?}"));
        assert_eq!(head_of(&s).await.count, before.count + 1, "{case}: written");
    }
    expect_alive(&s, "source text bound").await;
}

#[tokio::test]
async fn a_statement_over_max_spans_is_refused() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    seed(&mut c).await;
    let with_spans = |n: usize| pb::RecordStatementRequest {
        command: Some(pb::RecordStatementCommand {
            spans: vec![span_of(SOURCE_ID, QUOTE); n],
            ..statement("sergey-lavrov", SOURCE_ID, QUOTE)
        }),
        ..Default::default()
    };
    let before = head_of(&s).await;
    let err = c
        .record_statement(with_spans(MAX_SPANS + 1))
        .await
        .expect_err("MAX_SPANS + 1 spans: refused");
    assert_eq!(err.code(), Code::InvalidArgument, "MAX_SPANS + 1: {err:?}");
    assert_eq!(
        field_violations(&err),
        vec!["command.spans".to_string()],
        "MAX_SPANS + 1: the violation names the spans"
    );
    assert_eq!(head_of(&s).await, before, "MAX_SPANS + 1: nothing written");

    let err = c
        .record_statement(with_spans(0))
        .await
        .expect_err("no span: refused");
    assert_eq!(
        field_violations(&err),
        vec!["command.spans".to_string()],
        "no span: the violation names the spans"
    );
    assert_eq!(head_of(&s).await, before, "no span: nothing written");

    c.record_statement(with_spans(MAX_SPANS))
        .await
        .expect("MAX_SPANS spans: accepted");
    assert_eq!(
        head_of(&s).await.count,
        before.count + 1,
        "MAX_SPANS: written"
    );
    expect_alive(&s, "spans bound").await;
}

/// Every field within its own bound, yet the event is over the log's record limit: refused whole with
/// a clear status, alone or in a batch.
#[tokio::test]
async fn a_statement_within_field_bounds_but_over_the_record_limit_is_refused_whole() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    seed(&mut c).await;
    // A source of MAX_SPAN_TEXT four-byte code points (16 KiB, well under the text bound).
    let wide = "\u{1f600}".repeat(MAX_SPAN_TEXT);
    let wide_source = "0190a0a0-0000-7000-8000-00000000a0ff";
    c.register_source(pb::RegisterSourceRequest {
        command: Some(pb::RegisterSourceCommand {
            source_id: wide_source.into(),
            text: wide.clone(),
            ..source()
        }),
        ..Default::default()
    })
    .await
    .expect("wide source accepted");
    let span = pb::Span {
        source_id: wide_source.into(),
        start: 0,
        end: MAX_SPAN_TEXT as u32,
        exact: wide,
    };
    let huge = pb::RecordStatementCommand {
        spans: vec![span.clone(); MAX_SPANS],
        content: "\u{1f600}".repeat(4000),
        ..statement("sergey-lavrov", SOURCE_ID, QUOTE)
    };
    let before = head_of(&s).await;
    let err = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(huge.clone()),
            ..Default::default()
        })
        .await
        .expect_err("statement over the record limit: refused");
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "statement over the record limit: {err:?}"
    );
    assert_eq!(
        field_violations(&err),
        vec!["command".to_string()],
        "statement over the record limit: the violation names the command ({})",
        err.message()
    );
    assert_eq!(
        head_of(&s).await,
        before,
        "statement over the record limit: nothing written"
    );

    let err = c
        .submit_batch(batch_of(vec![
            pb::batch_command::Command::RegisterParty(party("ukraine", pb::PartyKind::State)),
            pb::batch_command::Command::RecordStatement(huge),
        ]))
        .await
        .expect_err("batch with a statement over the record limit: refused");
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "batch over the record limit: {err:?}"
    );
    assert_eq!(
        field_violations(&err),
        vec!["commands[1]".to_string()],
        "record limit in a batch names the command that made it ({})",
        err.message()
    );
    assert_eq!(
        head_of(&s).await,
        before,
        "batch over the record limit: nothing written, not even the party"
    );

    // The single bounded span of the same width fits.
    c.record_statement(pb::RecordStatementRequest {
        command: Some(pb::RecordStatementCommand {
            spans: vec![span],
            ..statement("sergey-lavrov", SOURCE_ID, QUOTE)
        }),
        ..Default::default()
    })
    .await
    .expect("one span of MAX_SPAN_TEXT code points: accepted");
    expect_alive(&s, "record limit").await;
}

/// A refusal must reach the client even when it concerns a long value. Clients built on hyper
/// (tonic) and gRPC C-core accept at most 16 KiB of response headers by default, and the status
/// message and its BadRequest details travel in headers.
#[tokio::test]
async fn a_refusal_echoing_a_long_value_reaches_a_default_client() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    seed(&mut c).await;
    let long_source = "0190a0a0-0000-7000-8000-00000000a0ee";
    let words = "word ".repeat(13_000);
    c.register_source(pb::RegisterSourceRequest {
        command: Some(pb::RegisterSourceCommand {
            source_id: long_source.into(),
            text: words.clone(),
            ..source()
        }),
        ..Default::default()
    })
    .await
    .expect("a 65,000-byte source: accepted");
    // `len` code points of the source with the last one wrong.
    let off_by_one_char = |len: usize| {
        let mut exact: String = words.chars().take(len).collect();
        exact.pop();
        exact.push('X');
        pb::Span {
            source_id: long_source.into(),
            start: 0,
            end: len as u32,
            exact,
        }
    };
    let statement_with = |spans: Vec<pb::Span>| pb::RecordStatementRequest {
        command: Some(pb::RecordStatementCommand {
            spans,
            ..statement("sergey-lavrov", SOURCE_ID, QUOTE)
        }),
        ..Default::default()
    };
    let before = head_of(&s).await;
    let mut unreadable = Vec::new();
    let cases: Vec<(&str, &str, Result<(), Status>)> = vec![
        (
            "one span of MAX_SPAN_TEXT code points, one character wrong",
            "command.spans[0].exact",
            c.record_statement(statement_with(vec![off_by_one_char(MAX_SPAN_TEXT)]))
                .await
                .map(drop),
        ),
        (
            "MAX_SPANS spans of 500 code points, each one character wrong",
            "command.spans[0].exact",
            c.record_statement(statement_with(vec![off_by_one_char(500); MAX_SPANS]))
                .await
                .map(drop),
        ),
        (
            "a 5,000-character party id",
            "command.party_id",
            c.register_party(pb::RegisterPartyRequest {
                command: Some(party(&"A".repeat(5_000), pb::PartyKind::Group)),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "a 5,000-character span source id",
            "command.spans[0].source_id",
            c.record_statement(statement_with(vec![pb::Span {
                source_id: "x".repeat(5_000),
                ..span_of(SOURCE_ID, QUOTE)
            }]))
            .await
            .map(drop),
        ),
        (
            "a 5,000-character language tag",
            "command.language",
            c.register_source(pb::RegisterSourceRequest {
                command: Some(pb::RegisterSourceCommand {
                    language: "e".repeat(5_000),
                    ..source()
                }),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
    ];
    for (case, field, outcome) in cases {
        match outcome {
            Err(e)
                if e.code() == Code::InvalidArgument
                    && field_violations(&e).contains(&field.to_string()) => {}
            Err(e) => unreadable.push(format!(
                "{case}: expected INVALID_ARGUMENT naming {field}, got {:?} {:?}",
                e.code(),
                e.message()
            )),
            Ok(()) => unreadable.push(format!("{case}: accepted")),
        }
        assert_eq!(head_of(&s).await, before, "{case}: nothing written");
    }
    assert!(
        unreadable.is_empty(),
        "refusals a default client cannot read (the server echoes the whole value into the \
         grpc-message and grpc-status-details-bin headers, over 16 KiB):\n{}",
        unreadable.join("\n")
    );
    expect_alive(&s, "long refusals").await;
}

/// A RegisterParty request whose encoding is exactly `size` bytes (the description takes the slack).
fn party_request_of_size(size: usize) -> pb::RegisterPartyRequest {
    let mut req = pb::RegisterPartyRequest {
        command: Some(party("oversized", pb::PartyKind::Group)),
        ..Default::default()
    };
    let mut description_len = size.saturating_sub(64);
    for _ in 0..8 {
        if let Some(cmd) = req.command.as_mut() {
            cmd.description = "a".repeat(description_len);
        }
        let len = req.encoded_len();
        if len == size {
            return req;
        }
        description_len = (description_len + size).saturating_sub(len);
    }
    panic!("no RegisterParty request of exactly {size} bytes");
}

#[tokio::test]
async fn a_message_over_max_message_bytes_is_refused_by_the_transport() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let before = head_of(&s).await;
    for (case, size) in [
        ("MAX_MESSAGE_BYTES + 1", MAX_MESSAGE_BYTES + 1),
        ("9 MiB", 9 << 20),
    ] {
        let err = c
            .register_party(party_request_of_size(size))
            .await
            .expect_err("oversized message: refused");
        eprintln!("{case}: {:?} {:?}", err.code(), err.message());
        assert!(
            matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{case}: expected OUT_OF_RANGE or RESOURCE_EXHAUSTED, got {err:?}"
        );
        assert_eq!(head_of(&s).await, before, "{case}: nothing written");
    }
    // At the bound the message reaches validation, which refuses the description by name.
    let err = c
        .register_party(party_request_of_size(MAX_MESSAGE_BYTES))
        .await
        .expect_err("MAX_MESSAGE_BYTES message with a huge description: refused");
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "MAX_MESSAGE_BYTES: reaches validation, {:?}",
        err.message()
    );
    assert_eq!(
        field_violations(&err),
        vec!["command.description".to_string()],
        "MAX_MESSAGE_BYTES: the violation names the description"
    );
    assert_eq!(
        head_of(&s).await,
        before,
        "MAX_MESSAGE_BYTES: nothing written"
    );
    // The connection that carried the oversized messages still works.
    c.register_party(pb::RegisterPartyRequest {
        command: Some(party("after-oversize", pb::PartyKind::Group)),
        ..Default::default()
    })
    .await
    .expect("a normal write on the same connection after oversized messages");
    expect_alive(&s, "message size bound").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_stream_limit_wait_for_a_free_stream() {
    let s = TestServer::start().await;
    // One channel is one HTTP/2 connection.
    let channel = s.channel().await;
    let events = pb::events_client::EventsClient::new(channel.clone());

    // One call first, so the server's SETTINGS (with its stream limit) have surely arrived.
    events
        .clone()
        .get_head(pb::GetHeadRequest {})
        .await
        .expect("first GetHead");
    // 300 concurrent calls on the one connection: all succeed.
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let mut e = events.clone();
            tokio::spawn(async move { (i, e.get_head(pb::GetHeadRequest {}).await) })
        })
        .collect();
    for call in calls {
        let (i, r) = call.await.expect("GetHead task");
        r.unwrap_or_else(|e| panic!("concurrent GetHead #{i} on one connection failed: {e:?}"));
    }

    // Hold every stream open with subscriptions; one more call waits instead of failing, and runs
    // as soon as a stream is free.
    let mut held = Vec::new();
    for i in 0..MAX_STREAMS_PER_CONNECTION {
        let stream = events
            .clone()
            .subscribe(pb::SubscribeRequest {
                from_end: true,
                heartbeat_ms: 60_000,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("subscription #{i} on one connection failed: {e:?}"))
            .into_inner();
        held.push(stream);
    }
    let mut e = events.clone();
    let waiting = tokio::spawn(async move { e.get_head(pb::GetHeadRequest {}).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a call beyond {MAX_STREAMS_PER_CONNECTION} open streams should wait for a free stream, \
         but it finished: the limit is not enforced"
    );
    held.pop();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call runs once a stream is free")
        .expect("GetHead task")
        .expect("the waiting call succeeds");
    drop(held);
    expect_alive(&s, "stream limit").await;
}
