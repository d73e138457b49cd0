//! Fuzzing that stays in the tree (proptest, stable Rust), next to `hostile_input`:
//!
//! - per request type of `Ledger`, protobuf bytes go through the server's own path in process:
//!   decode (prost), convert (`grpc::convert`), validate and decide and append (`App::write`). Inputs
//!   are mutations of the committed corpus in `tests/fuzz-corpus/<type>/` (every file there is also
//!   replayed as it is, as a regression case). Whatever the bytes: no panic, no `AppError::Internal`,
//!   and either exactly the reported events are appended or nothing is;
//! - the rest of the gRPC surface (every unary and server-streaming method of `Events`, `Query`,
//!   `Admin` and `Audit`, read from the descriptor set, so a new method is fuzzed without a change
//!   here) gets random bytes and random well-formed protobuf fields over the wire against a real
//!   server, and the corpus is replayed over the wire to `Ledger`: no panic, no `INTERNAL` or
//!   `UNKNOWN`, the log unchanged by anything that is not a write, and afterwards the stopped
//!   server's directory passes `verify`. `AppendSession` gets sessions of one to three messages,
//!   each a mutated corpus batch or random bytes: neither the session's status nor any append's
//!   refusal may be `INTERNAL`. (`hostile_input` covers malformed bodies of each write RPC.)
//!
//! Counts are small so CI stays fast; `FUZZ_CASES` raises them (each test's count), and `FUZZ_SEED`
//! (any string) replays a run: every test prints the seed it used, random unless given.
//! `FUZZ_WRITE_CORPUS=1` with `--ignored` regenerates the seed corpus after a proto change.
use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use claims_ledger_log::{Durability, LogOptions};
use claims_ledger_proto as pb;
use claims_ledger_server::app::{App, AppError, ClientCommand, Shape, WriteContext};
use claims_ledger_server::grpc::convert;
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::hostile_input::RawCodec;

const SOURCE_ID: &str = "0190a0a0-0000-7000-8000-00000000a001";
const STATEMENT_ID: &str = "0190a0a0-0000-7000-8000-00000000b001";
const CLAIM_ID: &str = "0190a0a0-0000-7000-8000-00000000c001";
const QUOTE: &str =
    "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace,";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

/// A seeded runner; prints the seed so that a failure can be replayed with `FUZZ_SEED`.
fn runner(test: &str, default_cases: u32) -> TestRunner {
    let seed_text = std::env::var("FUZZ_SEED").unwrap_or_else(|_| {
        use std::hash::{BuildHasher as _, Hasher as _};
        // Randomly keyed by the standard library: a fresh seed each run.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("{random:016x}")
    });
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    eprintln!("{test}: {cases} cases, seed {seed_text:?} (replay: FUZZ_SEED={seed_text})");
    let seed = Sha256::digest(seed_text.as_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        max_shrink_time: 30_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------------
// Request types and the seed corpus.
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Req {
    RegisterParty,
    UpdateParty,
    RegisterSource,
    RecordStatement,
    AssertClaim,
    ReviewClaim,
    IssueCorrection,
    SubmitBatch,
}

const REQS: [Req; 8] = [
    Req::RegisterParty,
    Req::UpdateParty,
    Req::RegisterSource,
    Req::RecordStatement,
    Req::AssertClaim,
    Req::ReviewClaim,
    Req::IssueCorrection,
    Req::SubmitBatch,
];

type Write = (WriteContext, Vec<ClientCommand>, Shape);

fn context(options: Option<pb::WriteOptions>) -> WriteContext {
    let o = options.unwrap_or_default();
    let opt = |s: String| (!s.is_empty()).then_some(s);
    WriteContext {
        recorded_by: "fuzz".into(),
        idempotency_key: opt(o.idempotency_key),
        correlation_id: opt(o.correlation_id),
        causation_id: opt(o.causation_id),
    }
}

fn required<T>(c: Option<T>) -> Result<T, AppError> {
    c.ok_or_else(|| AppError::invalid("command", "is required"))
}

fn single(
    options: Option<pb::WriteOptions>,
    expected: Option<pb::ExpectedRevision>,
    command: Result<claims_ledger_domain::Command, AppError>,
) -> Result<Write, AppError> {
    Ok((
        context(options),
        vec![ClientCommand {
            command: command?,
            expected: convert::expected_revision(expected.as_ref()),
        }],
        Shape::Single,
    ))
}

impl Req {
    fn dir(self) -> &'static str {
        match self {
            Req::RegisterParty => "register_party",
            Req::UpdateParty => "update_party",
            Req::RegisterSource => "register_source",
            Req::RecordStatement => "record_statement",
            Req::AssertClaim => "assert_claim",
            Req::ReviewClaim => "review_claim",
            Req::IssueCorrection => "issue_correction",
            Req::SubmitBatch => "submit_batch",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Req::RegisterParty => "/claimsledger.v1.Ledger/RegisterParty",
            Req::UpdateParty => "/claimsledger.v1.Ledger/UpdateParty",
            Req::RegisterSource => "/claimsledger.v1.Ledger/RegisterSource",
            Req::RecordStatement => "/claimsledger.v1.Ledger/RecordStatement",
            Req::AssertClaim => "/claimsledger.v1.Ledger/AssertClaim",
            Req::ReviewClaim => "/claimsledger.v1.Ledger/ReviewClaim",
            Req::IssueCorrection => "/claimsledger.v1.Ledger/IssueCorrection",
            Req::SubmitBatch => "/claimsledger.v1.Ledger/SubmitBatch",
        }
    }

    /// Decode, then convert as the transport does: `Err` when the bytes do not decode (the
    /// transport's INVALID_ARGUMENT), else the write or the conversion's refusal.
    fn decode(self, bytes: &[u8]) -> Result<Result<Write, AppError>, prost::DecodeError> {
        Ok(match self {
            Req::RegisterParty => {
                let r = pb::RegisterPartyRequest::decode(bytes)?;
                let c = required(r.command).and_then(|c| convert::register_party(c, "command."));
                single(r.options, r.expected_revision, c)
            }
            Req::UpdateParty => {
                let r = pb::UpdatePartyRequest::decode(bytes)?;
                let c = required(r.command).and_then(|c| convert::update_party(c, "command."));
                single(r.options, r.expected_revision, c)
            }
            Req::RegisterSource => {
                let r = pb::RegisterSourceRequest::decode(bytes)?;
                let c = required(r.command).and_then(|c| convert::register_source(c, "command."));
                single(r.options, r.expected_revision, c)
            }
            Req::RecordStatement => {
                let r = pb::RecordStatementRequest::decode(bytes)?;
                let c = required(r.command).and_then(|c| convert::record_statement(c, "command."));
                single(r.options, r.expected_revision, c)
            }
            Req::AssertClaim => {
                let r = pb::AssertClaimRequest::decode(bytes)?;
                let c = required(r.command).map(convert::assert_claim);
                single(r.options, r.expected_revision, c)
            }
            Req::ReviewClaim => {
                let r = pb::ReviewClaimRequest::decode(bytes)?;
                let c = required(r.command).map(convert::review_claim);
                single(r.options, r.expected_revision, c)
            }
            Req::IssueCorrection => {
                let r = pb::IssueCorrectionRequest::decode(bytes)?;
                let c = required(r.command).map(convert::issue_correction);
                single(r.options, r.expected_revision, c)
            }
            Req::SubmitBatch => {
                let r = pb::SubmitBatchRequest::decode(bytes)?;
                let commands: Result<Vec<ClientCommand>, AppError> = r
                    .commands
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let command = required(c.command)
                            .and_then(|k| convert::batch_command(k, &format!("commands[{i}].")))?;
                        Ok(ClientCommand {
                            command,
                            expected: convert::expected_revision(c.expected_revision.as_ref()),
                        })
                    })
                    .collect();
                commands.map(|c| (context(r.options), c, Shape::BATCH))
            }
        })
    }

    /// Requests the seeded server accepts (at least once), for the corpus.
    fn seeds(self) -> Vec<(&'static str, Vec<u8>)> {
        let options = |key: &str| {
            Some(pb::WriteOptions {
                idempotency_key: key.into(),
                correlation_id: "corr".into(),
                ..Default::default()
            })
        };
        let statement_cmd = || statement("sergey-lavrov", SOURCE_ID, QUOTE);
        match self {
            Req::RegisterParty => vec![
                (
                    "group",
                    pb::RegisterPartyRequest {
                        options: options("k-party"),
                        expected_revision: None,
                        command: Some(pb::RegisterPartyCommand {
                            aliases: vec!["Mutants".into()],
                            affiliations: vec![pb::Affiliation {
                                organisation_id: "russia".into(),
                                role: "Member".into(),
                                since: ts(WEDNESDAY),
                                until: None,
                            }],
                            ..party("mutant-party", pb::PartyKind::Group)
                        }),
                    }
                    .encode_to_vec(),
                ),
                ("empty", Vec::new()),
            ],
            Req::UpdateParty => vec![(
                "rename",
                pb::UpdatePartyRequest {
                    options: None,
                    expected_revision: None,
                    command: Some(pb::UpdatePartyCommand {
                        party_id: "russia".into(),
                        kind: pb::PartyKind::State as i32,
                        name: "Russian Federation".into(),
                        ..Default::default()
                    }),
                }
                .encode_to_vec(),
            )],
            Req::RegisterSource => vec![(
                "article",
                pb::RegisterSourceRequest {
                    options: options("k-source"),
                    expected_revision: None,
                    command: Some(source()),
                }
                .encode_to_vec(),
            )],
            Req::RecordStatement => vec![(
                "quote",
                pb::RecordStatementRequest {
                    options: None,
                    expected_revision: None,
                    command: Some(statement_cmd()),
                }
                .encode_to_vec(),
            )],
            Req::AssertClaim => vec![(
                "venue",
                pb::AssertClaimRequest {
                    options: None,
                    expected_revision: None,
                    command: Some(claim(STATEMENT_ID, "russia", "venue", "Istanbul")),
                }
                .encode_to_vec(),
            )],
            Req::ReviewClaim => vec![(
                "accurate",
                pb::ReviewClaimRequest {
                    options: None,
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
                        ..Default::default()
                    }),
                }
                .encode_to_vec(),
            )],
            Req::IssueCorrection => vec![(
                "erratum",
                pb::IssueCorrectionRequest {
                    options: None,
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
            )],
            Req::SubmitBatch => {
                use pb::batch_command::Command as C;
                vec![(
                    "party-statement-claim",
                    batch_of(vec![
                        C::RegisterParty(party("batch-mutant", pb::PartyKind::Group)),
                        C::RecordStatement(statement_cmd()),
                        C::AssertClaim(claim(STATEMENT_ID, "batch-mutant", "venue", "Istanbul")),
                    ])
                    .encode_to_vec(),
                )]
            }
        }
    }
}

/// The committed corpus of one request type: (file name, bytes).
fn corpus(req: Req) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir().join(req.dir());
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, std::fs::read(&path).expect("corpus file"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// Writes the seed corpus (`FUZZ_WRITE_CORPUS=1 cargo test ... fuzz -- --ignored`). Files found by
/// fuzzing that once failed belong beside them, under a name saying what they caught.
#[test]
#[ignore = "regenerates tests/fuzz-corpus; run by hand after a proto change"]
fn write_the_seed_corpus() {
    if std::env::var("FUZZ_WRITE_CORPUS").as_deref() != Ok("1") {
        return;
    }
    for req in REQS {
        let dir = corpus_dir().join(req.dir());
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, bytes) in req.seeds() {
            std::fs::write(dir.join(format!("{name}.bin")), bytes).expect("write corpus");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// In process: decode → validate → decide → append.
// ---------------------------------------------------------------------------------------------------

/// The well-known entities the corpus refers to, as one batch.
fn seed_batch() -> pb::SubmitBatchRequest {
    use pb::batch_command::Command as C;
    let mut st = statement("sergey-lavrov", SOURCE_ID, QUOTE);
    st.statement_id = STATEMENT_ID.into();
    st.on_behalf_of_id = "russia".into();
    let mut cl = claim(STATEMENT_ID, "russia", "negotiation-venue", "Istanbul");
    cl.claim_id = CLAIM_ID.into();
    batch_of(vec![
        C::RegisterParty(party("russia", pb::PartyKind::State)),
        C::RegisterParty(party("sergey-lavrov", pb::PartyKind::Person)),
        C::RegisterSource(pb::RegisterSourceCommand {
            source_id: SOURCE_ID.into(),
            ..source()
        }),
        C::RecordStatement(st),
        C::AssertClaim(cl),
    ])
}

/// An app with the well-known entities written, on a fast (unsynced) log.
fn seeded_app(dir: &Path) -> App {
    let app = App::open(
        dir,
        LogOptions {
            durability: Durability::Relaxed,
            ..LogOptions::default()
        },
    )
    .expect("open");
    let (ctx, commands, shape) = Req::SubmitBatch
        .decode(&seed_batch().encode_to_vec())
        .expect("decodes")
        .expect("converts");
    runtime()
        .block_on(app.write(ctx, commands, shape))
        .expect("seed");
    app
}

/// Runs `bytes` as a `req` through the write path; checks the outcome against the log.
async fn run_in_process(app: &App, req: Req, bytes: &[u8]) -> Result<&'static str, String> {
    let before = app.log().head();
    let write = match req.decode(bytes) {
        Err(_) => return Ok("undecodable"),
        Ok(w) => w,
    };
    let result = match write {
        Err(e) => Err(e),
        Ok((ctx, commands, shape)) => {
            let n = commands.len();
            app.write(ctx, commands, shape).await.map(|w| (w, n))
        }
    };
    let after = app.log().head();
    match result {
        Err(AppError::Internal(m)) => Err(format!("{req:?}: INTERNAL for a client's bytes: {m}")),
        Err(e) => {
            if after != before {
                return Err(format!(
                    "{req:?}: refused ({e}), yet the log went from {before:?} to {after:?}"
                ));
            }
            Ok("refused")
        }
        Ok((w, n)) => {
            let events = &w.outcome.events;
            if w.outcome.deduplicated {
                return if after == before {
                    Ok("deduplicated")
                } else {
                    Err(format!("{req:?}: deduplicated, yet the log changed"))
                };
            }
            if events.len() != n || after.count != before.count + n as u64 {
                return Err(format!(
                    "{req:?}: {n} command(s), {} event(s) reported, log {} -> {}",
                    events.len(),
                    before.count,
                    after.count
                ));
            }
            for (i, e) in events.iter().enumerate() {
                if e.position != before.count + i as u64 {
                    return Err(format!("{req:?}: event {i} at {}", e.position));
                }
            }
            if events.last().map(|e| e.hash) != Some(after.hash) {
                return Err(format!("{req:?}: head hash is not the last event's"));
            }
            Ok("written")
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mangle {
    AsIs,
    RandomBytes,
    Truncated,
    FlippedByte,
    TrailingGarbage,
    Spliced,
    Doubled,
}

const MANGLES: [Mangle; 7] = [
    Mangle::AsIs,
    Mangle::RandomBytes,
    Mangle::Truncated,
    Mangle::FlippedByte,
    Mangle::TrailingGarbage,
    Mangle::Spliced,
    Mangle::Doubled,
];

fn mangle(base: &[u8], other: &[u8], m: Mangle, random: Vec<u8>, at: Index, mask: u8) -> Vec<u8> {
    match m {
        Mangle::AsIs => base.to_vec(),
        Mangle::RandomBytes => random,
        Mangle::Truncated => base[..at.index(base.len() + 1)].to_vec(),
        Mangle::FlippedByte if !base.is_empty() => {
            let mut v = base.to_vec();
            let i = at.index(v.len());
            v[i] ^= mask;
            v
        }
        Mangle::FlippedByte => random,
        Mangle::TrailingGarbage => [base, &random].concat(),
        Mangle::Spliced => {
            let cut = at.index(base.len() + 1);
            let from = at.index(other.len() + 1);
            [&base[..cut], &other[from..]].concat()
        }
        // Protobuf merges a repeated message: fields appear twice, repeated ones grow.
        Mangle::Doubled => [base, base].concat(),
    }
}

#[test]
fn the_committed_corpus_replays_through_decode_validate_decide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = seeded_app(dir.path());
    let rt = runtime();
    for req in REQS {
        for (name, bytes) in corpus(req) {
            rt.block_on(run_in_process(&app, req, &bytes))
                .unwrap_or_else(|e| panic!("corpus {}/{name}: {e}", req.dir()));
        }
    }
    rt.block_on(app.finish());
}

#[test]
fn each_request_type_survives_mutated_bytes_in_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = seeded_app(dir.path());
    let rt = runtime();
    for req in REQS {
        let test = format!("fuzz {}", req.dir());
        let seeds: Vec<Vec<u8>> = corpus(req).into_iter().map(|(_, b)| b).collect();
        let strategy = (
            prop::sample::select(seeds.clone()),
            prop::sample::select(seeds),
            prop::sample::select(MANGLES.to_vec()),
            prop::collection::vec(any::<u8>(), 0..200),
            any::<Index>(),
            1u8..=255,
        );
        let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<&str, usize>::new());
        let result = runner(&test, 150).run(&strategy, |(base, other, m, random, at, mask)| {
            let bytes = mangle(&base, &other, m, random, at, mask);
            let outcome = rt
                .block_on(run_in_process(&app, req, &bytes))
                .map_err(TestCaseError::fail)?;
            *outcomes.borrow_mut().entry(outcome).or_default() += 1;
            Ok(())
        });
        eprintln!("{test}: {:?}", outcomes.borrow());
        if let Err(e) = result {
            panic!("{test}: {e}");
        }
    }
    rt.block_on(app.finish());
    // Let go of the directory (the open in verify waits for sled's lock to be released).
    drop(app);
    drop(rt);
    match claims_ledger_log::verify::verify_dir(dir.path()) {
        Ok(Ok(_)) => {}
        other => panic!("the log does not verify after the fuzz: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// Over the wire: the whole surface of a real server.
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Method {
    path: String,
    server_streaming: bool,
}

/// Every unary and server-streaming method outside `Ledger`, from the descriptor set.
fn surface() -> Vec<Method> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut out = Vec::new();
    for file in &set.file {
        if file.package() != "claimsledger.v1" {
            continue;
        }
        for service in &file.service {
            if service.name() == "Ledger" {
                continue;
            }
            for m in &service.method {
                if m.client_streaming() {
                    continue;
                }
                out.push(Method {
                    path: format!("/claimsledger.v1.{}/{}", service.name(), m.name()),
                    server_streaming: m.server_streaming(),
                });
            }
        }
    }
    out
}

/// A value for a random protobuf field: varints at the edges, and strings the handlers look up.
fn field_value() -> BoxedStrategy<(u8, Vec<u8>)> {
    let varint = prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u32::MAX as u64),
        Just(i64::MAX as u64),
        any::<u64>(),
    ]
    .prop_map(|v| (0u8, encode_varint(v)));
    let text = prop_oneof![
        Just(String::new()),
        Just("russia".to_string()),
        Just(SOURCE_ID.to_string()),
        Just(CLAIM_ID.to_string()),
        Just("party-russia".to_string()),
        Just("indexer".to_string()),
        "[ -~]{0,40}",
        "\\PC{0,20}",
    ]
    .prop_map(|s| (2u8, s.into_bytes()));
    let bytes = prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| (2u8, b));
    prop_oneof![varint, text, bytes].boxed()
}

fn encode_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Well-formed protobuf with random fields 1..12, or random bytes.
fn body() -> BoxedStrategy<Vec<u8>> {
    let fields = prop::collection::vec((1u32..12, field_value()), 0..6).prop_map(|fs| {
        let mut out = Vec::new();
        for (n, (wire, value)) in fs {
            out.extend(encode_varint(u64::from(n << 3 | u32::from(wire))));
            if wire == 2 {
                out.extend(encode_varint(value.len() as u64));
            }
            out.extend(value);
        }
        out
    });
    prop_oneof![3 => fields, 1 => prop::collection::vec(any::<u8>(), 0..120)].boxed()
}

/// Sends `body` to `path` and returns the status (OK when a unary call or the stream's first
/// message succeeded).
async fn call(channel: &tonic::transport::Channel, m: &Method, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(format!("not ready: {e}"));
    }
    let path = http::uri::PathAndQuery::try_from(m.path.as_str()).expect("path");
    let mut req = tonic::Request::new(body);
    // Queries may wait for projections; the client gives up first.
    req.set_timeout(Duration::from_secs(5));
    if m.server_streaming {
        match grpc.server_streaming(req, path, RawCodec).await {
            Err(s) => s,
            Ok(r) => {
                let mut stream = r.into_inner();
                match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                    Ok(Err(s)) => s,
                    _ => tonic::Status::ok(""),
                }
            }
        }
    } else {
        match grpc.unary(req, path, RawCodec).await {
            Err(s) => s,
            Ok(_) => tonic::Status::ok(""),
        }
    }
}

fn server_fault(code: Code) -> bool {
    matches!(code, Code::Internal | Code::Unknown | Code::DataLoss)
}

#[test]
fn the_grpc_surface_survives_raw_protobuf_and_the_log_verifies_afterwards() {
    const TEST: &str = "fuzz grpc surface";
    let rt = runtime();
    let s = rt.block_on(TestServer::start());
    let channel = rt.block_on(s.channel());
    rt.block_on(async {
        // The well-known entities, then the corpus replayed to Ledger over the wire.
        let seeded = call(
            &channel,
            &Method {
                path: Req::SubmitBatch.path().into(),
                server_streaming: false,
            },
            seed_batch().encode_to_vec(),
        )
        .await;
        assert_eq!(seeded.code(), Code::Ok, "{seeded:?}");
        for req in REQS {
            for (name, bytes) in corpus(req) {
                let before = s.app.log().head();
                let m = Method {
                    path: req.path().into(),
                    server_streaming: false,
                };
                let status = call(&channel, &m, bytes).await;
                assert!(
                    !server_fault(status.code()),
                    "corpus {}/{name} over the wire: {status:?}",
                    req.dir()
                );
                if status.code() != Code::Ok {
                    assert_eq!(s.app.log().head(), before, "{name}: refused but written");
                }
            }
        }
    });
    let methods = surface();
    assert!(methods.len() >= 15, "{methods:?}");
    let codes = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    let strategy = (prop::sample::select(methods), body());
    let result = runner(TEST, 800).run(&strategy, |(m, body)| {
        rt.block_on(async {
            let before = s.app.log().head();
            let status = call(&channel, &m, body).await;
            *codes
                .borrow_mut()
                .entry(format!("{:?}", status.code()))
                .or_default() += 1;
            prop_assert!(
                !server_fault(status.code()),
                "{} answered {:?}",
                m.path,
                status
            );
            prop_assert_eq!(s.app.log().head(), before, "{} changed the log", m.path);
            Ok(())
        })
    });
    eprintln!("{TEST}: {:?}", codes.borrow());
    if let Err(e) = result {
        panic!("{TEST}: {e}");
    }
    session_fuzz(&rt, &channel);
    let dir = rt.block_on(async {
        s.events()
            .await
            .get_head(pb::GetHeadRequest {})
            .await
            .expect("the server still answers");
        s.stop().await
    });
    match claims_ledger_log::verify::verify_dir(dir.path()) {
        Ok(Ok(report)) => assert!(report.events >= 5, "{report:?}"),
        other => panic!("the log does not verify after the fuzz: {other:?}"),
    }
}

/// Sessions of mutated appends and random bytes on `Ledger.AppendSession`.
fn session_fuzz(rt: &tokio::runtime::Runtime, channel: &tonic::transport::Channel) {
    const TEST: &str = "fuzz append session";
    let seeds: Vec<Vec<u8>> = corpus(Req::SubmitBatch)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let message = (
        any::<bool>(),
        prop::sample::select(seeds.clone()),
        prop::sample::select(seeds),
        prop::sample::select(MANGLES.to_vec()),
        prop::collection::vec(any::<u8>(), 0..120),
        any::<Index>(),
        1u8..=255,
        any::<u64>(),
    )
        .prop_map(|(raw, base, other, m, random, at, mask, id)| {
            if raw {
                return random;
            }
            let append = mangle(&base, &other, m, random, at, mask);
            // `append` (field 2) as a length-delimited field, whatever its bytes.
            let mut out = vec![0x08];
            out.extend(encode_varint(id));
            out.push(0x12);
            out.extend(encode_varint(append.len() as u64));
            out.extend(append);
            out
        });
    let codes = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    let strategy = prop::collection::vec(message, 1..4);
    let result = runner(TEST, 100).run(&strategy, |messages| {
        rt.block_on(async {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready()
                .await
                .map_err(|e| TestCaseError::fail(format!("not ready: {e}")))?;
            let path =
                http::uri::PathAndQuery::from_static("/claimsledger.v1.Ledger/AppendSession");
            let outgoing = tokio_stream::iter(messages);
            let mut req = tonic::Request::new(outgoing);
            req.set_timeout(Duration::from_secs(10));
            let status = match grpc.streaming(req, path, RawCodec).await {
                Err(s) => s,
                Ok(r) => {
                    let mut answers = r.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(bytes)) => {
                                let a = pb::AppendSessionResponse::decode(bytes.as_slice())
                                    .map_err(|e| TestCaseError::fail(format!("answer: {e}")))?;
                                if let Some(pb::append_session_response::Result::Refused(r)) =
                                    a.result
                                {
                                    prop_assert!(
                                        !server_fault(Code::from(r.code)),
                                        "an append refused with {:?}",
                                        r
                                    );
                                }
                            }
                            Ok(None) => break tonic::Status::ok(""),
                            Err(s) => break s,
                        }
                    }
                }
            };
            *codes
                .borrow_mut()
                .entry(format!("{:?}", status.code()))
                .or_default() += 1;
            prop_assert!(
                !server_fault(status.code()),
                "the session ended with {:?}",
                status
            );
            Ok(())
        })
    });
    eprintln!("{TEST}: {:?}", codes.borrow());
    if let Err(e) = result {
        panic!("{TEST}: {e}");
    }
}
