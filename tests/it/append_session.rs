//! `Ledger.AppendSession` over real gRPC, against the contract in
//! `proto/claimsledger/v1/ledger.proto`: a session applies its appends one after another in the
//! order sent (so later appends may depend on earlier ones, even when the client sends them without
//! waiting), answers them in request order with the echoed `request_id`, reports positions that
//! read back from the log, answers a refused append in the stream with the status `SubmitBatch`
//! would have failed with (code, message and google.rpc details, with field violations named
//! relative to the session message, and re-parsable as a google.rpc.Status) while writing nothing
//! and going on with the next append, deduplicates by idempotency key, serves several concurrent
//! sessions without losing or sharing positions, ends its response stream cleanly when the client
//! closes its side, and ends it with UNAVAILABLE when the server shuts down.
use crate::common;

use std::collections::BTreeSet;

use claims_ledger_proto as pb;
use common::*;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_types::StatusExt;

use pb::append_session_response::Result as Answer;
use pb::batch_command::Command as C;

const BAD_REQUEST_TYPE_URL: &str = "type.googleapis.com/google.rpc.BadRequest";
const SOURCE_ID: &str = "0190a0a0-0000-7000-8000-0000000000aa";
const STATEMENT_ID: &str = "0190a0a0-0000-7000-8000-0000000000bb";
const CLAIM_ID: &str = "0190a0a0-0000-7000-8000-0000000000cc";
const QUOTE: &str =
    "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace,";

/// One open session: the request side (a channel) and the response stream.
struct Session {
    tx: Option<mpsc::Sender<pb::AppendSessionRequest>>,
    answers: tonic::Streaming<pb::AppendSessionResponse>,
}

impl Session {
    async fn open(server: &TestServer) -> Session {
        let (tx, rx) = mpsc::channel(256);
        let answers = server
            .ledger()
            .await
            .append_session(ReceiverStream::new(rx))
            .await
            .expect("open session")
            .into_inner();
        Session {
            tx: Some(tx),
            answers,
        }
    }

    /// Sends one append (or a message without one) without waiting for its answer.
    async fn send(&self, request_id: u64, append: Option<pb::SubmitBatchRequest>) {
        self.tx
            .as_ref()
            .expect("request side still open")
            .send(pb::AppendSessionRequest { request_id, append })
            .await
            .expect("send append");
    }

    /// The next answer; fails the test if the stream failed or ended.
    async fn next(&mut self) -> pb::AppendSessionResponse {
        self.answers
            .message()
            .await
            .expect("the session must not fail")
            .expect("the session ended before answering")
    }

    /// Sends one append and waits for the answer, which must carry the same request id.
    async fn call(
        &mut self,
        request_id: u64,
        append: Option<pb::SubmitBatchRequest>,
    ) -> pb::AppendSessionResponse {
        self.send(request_id, append).await;
        let answer = self.next().await;
        assert_eq!(answer.request_id, request_id, "answer to another append");
        answer
    }

    /// Closes the request side.
    fn close(&mut self) {
        self.tx.take();
    }

    /// The response stream ends without error and without further answers.
    async fn assert_ended_cleanly(&mut self) {
        let end = self.answers.message().await.expect("clean end");
        assert!(end.is_none(), "an answer after the end: {end:?}");
    }
}

fn keyed(key: &str, commands: Vec<C>) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        options: Some(pb::WriteOptions {
            idempotency_key: key.into(),
            ..Default::default()
        }),
        ..batch_of(commands)
    }
}

fn register(id: &str) -> C {
    C::RegisterParty(party(id, pb::PartyKind::Group))
}

fn source_with_id(id: &str) -> C {
    C::RegisterSource(pb::RegisterSourceCommand {
        source_id: id.into(),
        ..source()
    })
}

fn accepted(a: &pb::AppendSessionResponse) -> &pb::SubmitBatchResponse {
    match &a.result {
        Some(Answer::Accepted(ok)) => ok,
        other => panic!("append {} not accepted: {other:?}", a.request_id),
    }
}

fn refused(a: &pb::AppendSessionResponse) -> &pb::AppendRefusal {
    match &a.result {
        Some(Answer::Refused(r)) => r,
        other => panic!("append {} not refused: {other:?}", a.request_id),
    }
}

/// The positions of an accepted append's events; checks that `results` and `result` agree.
fn positions(ok: &pb::SubmitBatchResponse) -> Vec<u64> {
    let result = ok.result.as_ref().expect("write result");
    let from_results: Vec<&pb::AppendedEvent> = ok
        .results
        .iter()
        .map(|r| r.event.as_ref().expect("event of a command"))
        .collect();
    assert_eq!(
        from_results,
        result.events.iter().collect::<Vec<_>>(),
        "per-command events and the write's events differ"
    );
    result.events.iter().map(|e| e.position).collect()
}

/// The refusal's BadRequest, decoded straight from its `details`.
fn bad_request(r: &pb::AppendRefusal) -> tonic_types::pb::BadRequest {
    let any = r
        .details
        .iter()
        .find(|d| d.type_url == BAD_REQUEST_TYPE_URL)
        .unwrap_or_else(|| {
            panic!(
                "no google.rpc.BadRequest among {:?}",
                r.details.iter().map(|d| &d.type_url).collect::<Vec<_>>()
            )
        });
    tonic_types::pb::BadRequest::decode(any.value.as_slice()).expect("decode BadRequest")
}

fn violation_fields(r: &pb::AppendRefusal) -> Vec<String> {
    bad_request(r)
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// The refusal re-parsed from its bytes as a google.rpc.Status (the contract promises the same
/// field numbers), and as the `tonic::Status` a unary call would have failed with, for `StatusExt`.
fn as_status(r: &pb::AppendRefusal) -> tonic::Status {
    let bytes = r.encode_to_vec();
    let status =
        tonic_types::pb::Status::decode(bytes.as_slice()).expect("parse as google.rpc.Status");
    assert_eq!(status.code, r.code);
    assert_eq!(status.message, r.message);
    assert_eq!(status.details, r.details);
    assert_ne!(status.code, 0, "a refusal's code is never OK");
    assert!(!status.message.is_empty(), "a refusal carries a message");
    tonic::Status::with_details(Code::from(r.code), r.message.clone(), bytes.into())
}

/// The stored event at `position`.
async fn event_at(server: &TestServer, position: u64) -> pb::EventEnvelope {
    let page = server
        .events()
        .await
        .read_all(pb::ReadAllRequest {
            from_position: position,
            max_count: 1,
            ..Default::default()
        })
        .await
        .expect("read all")
        .into_inner();
    assert_eq!(page.events.len(), 1, "no event at position {position}");
    page.events.into_iter().next().unwrap()
}

/// Checks that an appended event reads back at its reported position as the same event.
async fn assert_stored(server: &TestServer, e: &pb::AppendedEvent, event_type: &str) {
    let stored = event_at(server, e.position).await;
    assert_eq!(stored.position, e.position);
    assert_eq!(stored.event_id, e.event_id, "position {}", e.position);
    assert_eq!(stored.stream, e.stream, "position {}", e.position);
    assert_eq!(stored.stream_revision, e.stream_revision);
    assert_eq!(stored.hash, e.hash);
    assert_eq!(stored.event_type, event_type, "position {}", e.position);
}

#[tokio::test]
async fn dependent_appends_sent_back_to_back_are_applied_in_order() {
    let s = TestServer::start().await;
    let mut session = Session::open(&s).await;

    let mut st = statement("sergey-lavrov", SOURCE_ID, QUOTE);
    st.statement_id = STATEMENT_ID.into();
    let mut cl = claim(
        STATEMENT_ID,
        "sergey-lavrov",
        "negotiation-venue",
        "Istanbul",
    );
    cl.claim_id = CLAIM_ID.into();
    // Each append refers to what the one before it created, and all are sent before any answer is
    // read: they can only succeed if the session decides each after the previous one is applied.
    let sent: Vec<(u64, C, &str, String, &str)> = vec![
        (
            7,
            C::RegisterParty(party("sergey-lavrov", pb::PartyKind::Person)),
            "sergey-lavrov",
            "party-sergey-lavrov".to_string(),
            "PartyRegistered",
        ),
        (
            3,
            source_with_id(SOURCE_ID),
            SOURCE_ID,
            format!("source-{SOURCE_ID}"),
            "SourceRegistered",
        ),
        (
            u64::MAX,
            C::RecordStatement(st),
            STATEMENT_ID,
            format!("statement-{STATEMENT_ID}"),
            "StatementRecorded",
        ),
        (
            12,
            C::AssertClaim(cl),
            CLAIM_ID,
            format!("claim-{CLAIM_ID}"),
            "ClaimAsserted",
        ),
    ];
    for (id, command, ..) in &sent {
        session
            .send(*id, Some(batch_of(vec![command.clone()])))
            .await;
    }

    let mut all_positions = Vec::new();
    for (id, _, entity, stream, event_type) in &sent {
        let answer = session.next().await;
        assert_eq!(answer.request_id, *id, "answers come in request order");
        let ok = accepted(&answer);
        assert_eq!(ok.results.len(), 1);
        assert_eq!(ok.results[0].entity_id, *entity);
        let result = ok.result.as_ref().unwrap();
        assert!(!result.deduplicated);
        assert!(result.recorded_at.is_some());
        let e = &result.events[0];
        assert_eq!(&e.stream, stream);
        assert_eq!(e.stream_revision, 0);
        all_positions.extend(positions(ok));
        assert_stored(&s, e, event_type).await;
    }
    assert!(
        all_positions.windows(2).all(|w| w[0] < w[1]),
        "positions must increase in send order: {all_positions:?}"
    );
    assert_eq!(s.head().await.event_count, sent.len() as u64);

    // The statement really is Lavrov's, from the source registered in the same session.
    let stored = event_at(&s, all_positions[2]).await;
    match stored.payload.and_then(|p| p.kind) {
        Some(pb::event_payload::Kind::StatementRecorded(p)) => {
            assert_eq!(p.speaker_id, "sergey-lavrov");
            assert_eq!(p.spans.len(), 1);
            assert_eq!(p.spans[0].source_id, SOURCE_ID);
            assert_eq!(p.spans[0].exact, QUOTE);
        }
        other => panic!("unexpected payload {other:?}"),
    }

    // The same session goes on with a multi-command append; its events are consecutive.
    let answer = session
        .call(
            99,
            Some(batch_of(vec![register("group-a"), register("group-b")])),
        )
        .await;
    let ok = accepted(&answer);
    let ids: Vec<&str> = ok.results.iter().map(|r| r.entity_id.as_str()).collect();
    assert_eq!(ids, vec!["group-a", "group-b"]);
    let more = positions(ok);
    let last = *all_positions.last().unwrap();
    assert_eq!(more, vec![last + 1, last + 2]);
    assert_eq!(s.head().await.event_count, sent.len() as u64 + 2);

    session.close();
    session.assert_ended_cleanly().await;
}

#[tokio::test]
async fn refusals_are_answered_in_the_stream_write_nothing_and_the_session_goes_on() {
    let s = TestServer::start().await;
    let mut session = Session::open(&s).await;
    let a = session
        .call(
            1,
            Some(batch_of(vec![
                C::RegisterParty(party("sergey-lavrov", pb::PartyKind::Person)),
                source_with_id(SOURCE_ID),
            ])),
        )
        .await;
    assert_eq!(positions(accepted(&a)), vec![0, 1]);
    let mut next_position = 2;
    let mut next_party = 0;
    // After every refusal: nothing was written, and the next valid append is accepted at the very
    // next position.
    let mut after_refusal = async |session: &mut Session, what: &str| {
        assert_eq!(
            s.head().await.event_count,
            next_position,
            "the refused {what} wrote something"
        );
        let id = 1000 + next_party;
        let answer = session
            .call(
                id,
                Some(batch_of(vec![register(&format!("after-{next_party}"))])),
            )
            .await;
        let got = positions(accepted(&answer));
        assert_eq!(
            got,
            vec![next_position],
            "the append after the refused {what}"
        );
        assert_stored(
            &s,
            accepted(&answer).results[0].event.as_ref().unwrap(),
            "PartyRegistered",
        )
        .await;
        next_position += 1;
        next_party += 1;
    };

    // A span whose text does not match the source.
    let mut bad_span = statement("sergey-lavrov", SOURCE_ID, QUOTE);
    bad_span.spans[0].exact = "something else".into();
    let answer = session
        .call(2, Some(batch_of(vec![C::RecordStatement(bad_span)])))
        .await;
    let span_refusal = refused(&answer).clone();
    assert_eq!(span_refusal.code, Code::InvalidArgument as i32);
    let span_fields = violation_fields(&span_refusal);
    assert_eq!(span_fields.len(), 1, "{span_fields:?}");
    assert!(
        span_fields[0].ends_with("commands[0].record_statement.spans[0].exact"),
        "{span_fields:?}"
    );
    let violations = bad_request(&span_refusal).field_violations;
    assert!(!violations[0].description.is_empty());
    let status = as_status(&span_refusal);
    assert_eq!(status.code(), Code::InvalidArgument);
    let via_status = status.get_details_bad_request().expect("bad request");
    assert_eq!(
        via_status
            .field_violations
            .iter()
            .map(|v| (&v.field, &v.description))
            .collect::<Vec<_>>(),
        violations
            .iter()
            .map(|v| (&v.field, &v.description))
            .collect::<Vec<_>>()
    );
    after_refusal(&mut session, "bad span").await;

    // A message without an append.
    let answer = session.call(3, None).await;
    let r = refused(&answer);
    assert_eq!(r.code, Code::InvalidArgument as i32);
    assert_eq!(violation_fields(r), vec!["append".to_string()]);
    as_status(r);
    after_refusal(&mut session, "missing append").await;

    // An exact expected revision that does not match (party-sergey-lavrov is at revision 0).
    let update = pb::SubmitBatchRequest {
        options: None,
        commands: vec![pb::BatchCommand {
            expected_revision: Some(pb::ExpectedRevision {
                kind: pb::ExpectedRevisionKind::Exact as i32,
                revision: 7,
            }),
            command: Some(C::UpdateParty(pb::UpdatePartyCommand {
                party_id: "sergey-lavrov".into(),
                kind: pb::PartyKind::Person as i32,
                name: "Sergey V. Lavrov".into(),
                ..Default::default()
            })),
        }],
    };
    let answer = session.call(4, Some(update)).await;
    let r = refused(&answer);
    assert_eq!(r.code, Code::FailedPrecondition as i32);
    let status = as_status(r);
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "WRONG_EXPECTED_REVISION");
    assert_eq!(info.metadata["stream"], "party-sergey-lavrov");
    assert_eq!(info.metadata["actual"], "0");
    assert!(status.get_details_precondition_failure().is_some());
    after_refusal(&mut session, "wrong expected revision").await;

    // A statement by a speaker nobody registered.
    let answer = session
        .call(
            5,
            Some(batch_of(vec![C::RecordStatement(statement(
                "nobody", SOURCE_ID, QUOTE,
            ))])),
        )
        .await;
    let r = refused(&answer);
    assert_eq!(r.code, Code::NotFound as i32);
    let info = as_status(r)
        .get_details_resource_info()
        .expect("resource info");
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("party", "nobody")
    );
    after_refusal(&mut session, "unknown speaker").await;

    // A batch is refused as a whole: a good first command is not written when the second fails.
    let answer = session
        .call(
            6,
            Some(batch_of(vec![
                register("half-batch"),
                C::RecordStatement(statement("nobody", SOURCE_ID, QUOTE)),
            ])),
        )
        .await;
    assert_eq!(refused(&answer).code, Code::NotFound as i32);
    after_refusal(&mut session, "half-good batch").await;
    let answer = session
        .call(7, Some(batch_of(vec![register("half-batch")])))
        .await;
    assert!(
        !accepted(&answer).result.as_ref().unwrap().deduplicated,
        "the refused batch's party was not registered, so registering it now is new"
    );

    session.close();
    session.assert_ended_cleanly().await;

    // Checked last, so that the checks above run even if the name is wrong.
    assert!(
        span_fields[0].starts_with("append.commands[0].record_statement."),
        "a violation is named relative to AppendSessionRequest, got {span_fields:?}"
    );
}

#[tokio::test]
async fn field_violations_are_named_relative_to_the_session_message() {
    let s = TestServer::start().await;
    let mut session = Session::open(&s).await;
    accepted(
        &session
            .call(
                1,
                Some(batch_of(vec![
                    C::RegisterParty(party("sergey-lavrov", pb::PartyKind::Person)),
                    source_with_id(SOURCE_ID),
                ])),
            )
            .await,
    );

    // (what is wrong, the append, the violation SubmitBatch names, relative to SubmitBatchRequest)
    let mut bad_span = statement("sergey-lavrov", SOURCE_ID, QUOTE);
    bad_span.spans[0].exact = "something else".into();
    let mut late = statement("sergey-lavrov", SOURCE_ID, QUOTE);
    late.stated_time = Some(pb::StatedTime {
        at: ts(PUBLISHED + 10 * 86400),
        precision: pb::TimePrecision::Day as i32,
    });
    let mut bad_time = source();
    bad_time.published_at = Some(prost_types::Timestamp {
        seconds: 0,
        nanos: -5,
    });
    let cases: Vec<(&str, pb::SubmitBatchRequest)> = vec![
        (
            "commands[1].record_statement.spans[0].exact",
            batch_of(vec![register("fine"), C::RecordStatement(bad_span)]),
        ),
        (
            "commands[0].record_statement.stated_time.at",
            batch_of(vec![C::RecordStatement(late)]),
        ),
        (
            "commands[0].register_source.published_at",
            batch_of(vec![C::RegisterSource(bad_time)]),
        ),
        (
            "commands[0].register_party.party_id",
            batch_of(vec![C::RegisterParty(party(
                "Not A Slug",
                pb::PartyKind::State,
            ))]),
        ),
        (
            "commands[1]",
            pb::SubmitBatchRequest {
                options: None,
                commands: vec![
                    pb::BatchCommand {
                        expected_revision: None,
                        command: Some(register("fine")),
                    },
                    pb::BatchCommand::default(),
                ],
            },
        ),
        ("commands", batch_of(vec![])),
        (
            "options.idempotency_key",
            keyed("has space", vec![register("fine")]),
        ),
    ];

    let mut wrong = Vec::new();
    for (i, (field, request)) in cases.into_iter().enumerate() {
        // What SubmitBatch says about the same request, as the reference.
        let unary = s
            .ledger()
            .await
            .submit_batch(request.clone())
            .await
            .expect_err("SubmitBatch refuses it");
        assert_eq!(unary.code(), Code::InvalidArgument, "case {field}");
        let unary_fields: Vec<String> = unary
            .get_details_bad_request()
            .expect("bad request")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert!(
            unary_fields.contains(&field.to_string()),
            "SubmitBatch names {unary_fields:?} for case {field}"
        );

        let answer = session.call(10 + i as u64, Some(request)).await;
        let r = refused(&answer);
        assert_eq!(r.code, Code::InvalidArgument as i32, "case {field}");
        as_status(r);
        let fields = violation_fields(r);
        let want: Vec<String> = unary_fields.iter().map(|f| format!("append.{f}")).collect();
        if fields != want {
            wrong.push(format!("{field}: got {fields:?}, want {want:?}"));
        }
    }
    assert_eq!(
        s.head().await.event_count,
        2,
        "refused appends wrote nothing"
    );
    assert!(
        wrong.is_empty(),
        "violations not named relative to AppendSessionRequest:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn idempotency_keys_replay_in_a_session_and_conflicting_reuse_is_refused() {
    let s = TestServer::start().await;
    let mut session = Session::open(&s).await;
    let ukraine = |name: &str| {
        C::RegisterParty(pb::RegisterPartyCommand {
            name: name.into(),
            ..party("ukraine", pb::PartyKind::State)
        })
    };
    let first = session
        .call(
            1,
            Some(keyed("key-1", vec![ukraine("Ukraine"), register("kyiv")])),
        )
        .await;
    let first = accepted(&first).clone();
    let first_result = first.result.clone().unwrap();
    assert!(!first_result.deduplicated);
    let first_positions = positions(&first);
    assert_eq!(s.head().await.event_count, 2);

    let again = session
        .call(
            2,
            Some(keyed("key-1", vec![ukraine("Ukraine"), register("kyiv")])),
        )
        .await;
    let again = accepted(&again).clone();
    let again_result = again.result.clone().unwrap();
    assert!(
        again_result.deduplicated,
        "the replay is marked deduplicated"
    );
    assert_eq!(positions(&again), first_positions);
    assert_eq!(again_result.events, first_result.events);
    assert_eq!(again_result.recorded_at, first_result.recorded_at);
    assert_eq!(again.results, first.results);
    assert_eq!(s.head().await.event_count, 2, "a replay writes nothing");

    // The same key on SubmitBatch: the same write, so the same answer.
    let unary = s
        .ledger()
        .await
        .submit_batch(keyed("key-1", vec![ukraine("Ukraine"), register("kyiv")]))
        .await
        .expect("unary replay")
        .into_inner();
    assert!(unary.result.as_ref().unwrap().deduplicated);
    assert_eq!(positions(&unary), first_positions);

    let conflict = session
        .call(
            3,
            Some(keyed("key-1", vec![ukraine("Ukraina"), register("kyiv")])),
        )
        .await;
    let r = refused(&conflict);
    assert_eq!(r.code, Code::AlreadyExists as i32);
    let info = as_status(r).get_details_error_info().expect("error info");
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(info.metadata["idempotency_key"], "key-1");
    assert_eq!(
        s.head().await.event_count,
        2,
        "a conflicting reuse writes nothing"
    );

    // A key first used in the session replays there too, and the session goes on.
    let other = session
        .call(4, Some(keyed("key-2", vec![register("lviv")])))
        .await;
    let other_positions = positions(accepted(&other));
    assert_eq!(other_positions, vec![2]);
    let replay = session
        .call(5, Some(keyed("key-2", vec![register("lviv")])))
        .await;
    assert!(accepted(&replay).result.as_ref().unwrap().deduplicated);
    assert_eq!(positions(accepted(&replay)), other_positions);
    assert_eq!(s.head().await.event_count, 3);
}

#[tokio::test]
async fn concurrent_sessions_all_get_answers_at_distinct_positions() {
    const SESSIONS: u64 = 8;
    const APPENDS: u64 = 20;
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let mut session = Session::open(&s).await;
        tasks.push(tokio::spawn(async move {
            // All appends go out before any answer is read.
            for j in 0..APPENDS {
                let id = i * 1000 + j;
                session
                    .send(id, Some(batch_of(vec![register(&format!("s{i}-a{j}"))])))
                    .await;
            }
            session.close();
            let mut got = Vec::new();
            for j in 0..APPENDS {
                let answer = session.next().await;
                assert_eq!(answer.request_id, i * 1000 + j, "answers in request order");
                let ok = accepted(&answer);
                assert_eq!(ok.results[0].entity_id, format!("s{i}-a{j}"));
                let p = positions(ok);
                assert_eq!(p.len(), 1);
                got.push((p[0], ok.results[0].event.clone().unwrap()));
            }
            assert!(
                session
                    .answers
                    .message()
                    .await
                    .expect("clean end")
                    .is_none(),
                "one answer per append"
            );
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let got = t.await.expect("session task");
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "a session's positions increase in send order: {:?}",
            got.iter().map(|g| g.0).collect::<Vec<_>>()
        );
        all.extend(got);
    }
    let total = SESSIONS * APPENDS;
    assert_eq!(all.len() as u64, total);
    let distinct: BTreeSet<u64> = all.iter().map(|(p, _)| *p).collect();
    assert_eq!(distinct.len() as u64, total, "positions must be distinct");
    assert_eq!(s.head().await.event_count, total);
    assert_eq!(
        distinct.into_iter().collect::<Vec<_>>(),
        (0..total).collect::<Vec<_>>(),
        "the log is gap-free"
    );
    for (_, e) in &all {
        assert_stored(&s, e, "PartyRegistered").await;
    }
}

#[tokio::test]
async fn closing_the_request_side_ends_the_session_cleanly() {
    let s = TestServer::start().await;

    // No appends at all.
    let mut session = Session::open(&s).await;
    session.close();
    session.assert_ended_cleanly().await;

    // After answered appends, including a refused one.
    let mut session = Session::open(&s).await;
    accepted(&session.call(1, Some(batch_of(vec![register("one")]))).await);
    refused(&session.call(2, None).await);
    session.close();
    session.assert_ended_cleanly().await;

    // Closed right after sending: the pending appends are still answered, then the stream ends.
    let mut session = Session::open(&s).await;
    session.send(3, Some(batch_of(vec![register("two")]))).await;
    session
        .send(4, Some(batch_of(vec![register("three")])))
        .await;
    session.close();
    let a = session.next().await;
    assert_eq!(a.request_id, 3);
    let b = session.next().await;
    assert_eq!(b.request_id, 4);
    assert_eq!(positions(accepted(&a)), vec![1]);
    assert_eq!(positions(accepted(&b)), vec![2]);
    session.assert_ended_cleanly().await;
    assert_eq!(s.head().await.event_count, 3);
}

#[tokio::test]
async fn shutdown_ends_an_open_session_with_unavailable_and_keeps_its_answered_appends() {
    let s = TestServer::start().await;
    let mut session = Session::open(&s).await;
    accepted(
        &session
            .call(1, Some(batch_of(vec![register("kept")])))
            .await,
    );
    // The client keeps its side open: the server must not wait for it to stop.
    let stopping = tokio::spawn(s.stop());
    let end = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        session.answers.message(),
    )
    .await
    .expect("the session must end at shutdown, not wait for the client")
    .expect_err("the session must end with a status at shutdown");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("append session"), "{end:?}");
    let dir = tokio::time::timeout(std::time::Duration::from_secs(30), stopping)
        .await
        .expect("the server must stop while a session is open")
        .expect("stop");
    session.close();
    let again = TestServer::start_in(dir).await;
    assert_eq!(
        again.head().await.event_count,
        1,
        "the answered append is on disk"
    );
    again.stop().await;
}
