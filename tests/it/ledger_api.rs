//! The `Ledger` and `Events` services over real gRPC: every error status, idempotency, batches,
//! expected revisions, corrections, and reading back the hash-chained log.
use crate::common;

use claims_ledger_proto as pb;
use common::*;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_types::StatusExt;

/// Registers russia, sergey-lavrov and a source; returns the source id.
async fn seed(c: &mut pb::ledger_client::LedgerClient<tonic::transport::Channel>) -> String {
    for p in [
        party("russia", pb::PartyKind::State),
        party("sergey-lavrov", pb::PartyKind::Person),
    ] {
        c.register_party(pb::RegisterPartyRequest {
            command: Some(p),
            ..Default::default()
        })
        .await
        .expect("register party");
    }
    c.register_source(pb::RegisterSourceRequest {
        command: Some(source()),
        ..Default::default()
    })
    .await
    .expect("register source")
    .into_inner()
    .source_id
}

#[tokio::test]
async fn register_party_records_envelope_and_refuses_duplicates() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let mut req = tonic::Request::new(pb::RegisterPartyRequest {
        options: Some(pb::WriteOptions {
            correlation_id: "corr-1".into(),
            causation_id: "cause-1".into(),
            ..Default::default()
        }),
        command: Some(pb::RegisterPartyCommand {
            aliases: vec!["Moscow".into()],
            ..party("russia", pb::PartyKind::State)
        }),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-recorded-by", "desk-editor".parse().unwrap());
    let r = c.register_party(req).await.unwrap().into_inner();
    assert_eq!(r.party_id, "russia");
    let res = r.result.unwrap();
    assert!(!res.deduplicated);
    assert_eq!(res.events.len(), 1);
    assert_eq!(res.events[0].stream, "party-russia");
    assert_eq!(res.events[0].stream_revision, 0);
    assert_eq!(res.events[0].position, 0);

    let ev = s
        .events()
        .await
        .read_stream(pb::ReadStreamRequest {
            stream: "party-russia".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .remove(0);
    assert_eq!(ev.recorded_by, "desk-editor");
    assert_eq!(ev.correlation_id, "corr-1");
    assert_eq!(ev.causation_id, "cause-1");
    assert_eq!(ev.event_type, "PartyRegistered");
    assert_eq!(ev.schema_version, 1);
    assert_eq!(ev.event_id, res.events[0].event_id);
    assert_eq!(ev.hash, res.events[0].hash);
    match ev.payload.unwrap().kind.unwrap() {
        pb::event_payload::Kind::PartyRegistered(p) => {
            assert_eq!(p.aliases, vec!["Moscow".to_string()]);
            assert_eq!(p.kind, pb::PartyKind::State as i32);
        }
        other => panic!("unexpected payload {other:?}"),
    }

    let err = c
        .register_party(pb::RegisterPartyRequest {
            command: Some(party("russia", pb::PartyKind::State)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(s.head().await.event_count, 1, "nothing written on error");
}

#[tokio::test]
async fn invalid_input_names_every_bad_field_and_writes_nothing() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let err = c
        .register_party(pb::RegisterPartyRequest {
            command: Some(pb::RegisterPartyCommand {
                party_id: "Not A Slug".into(),
                kind: 0,
                name: String::new(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = field_violations(&err);
    for f in ["command.party_id", "command.kind", "command.name"] {
        assert!(fields.contains(&f.to_string()), "{f} missing in {fields:?}");
    }

    let err = c
        .register_party(pb::RegisterPartyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&err), vec!["command".to_string()]);

    let err = c
        .register_party(pb::RegisterPartyRequest {
            options: Some(pb::WriteOptions {
                idempotency_key: "has space".into(),
                ..Default::default()
            }),
            command: Some(party("ok", pb::PartyKind::State)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&err),
        vec!["options.idempotency_key".to_string()]
    );
    assert_eq!(s.head().await.event_count, 0);
}

#[tokio::test]
async fn statements_need_exact_spans_and_known_references() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let source_id = seed(&mut c).await;
    let quote = "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace,";
    let ok = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(pb::RecordStatementCommand {
                on_behalf_of_id: "russia".into(),
                ..statement("sergey-lavrov", &source_id, quote)
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ok.result.unwrap().events[0].stream,
        format!("statement-{}", ok.statement_id)
    );
    let before = s.head().await.event_count;

    // Byte offsets instead of code points: the text before the quote has a curly quote (3 bytes).
    let mut bytes_span = statement("sergey-lavrov", &source_id, quote);
    let b = TEXT.find(quote).unwrap() as u32;
    bytes_span.spans[0].start = b;
    bytes_span.spans[0].end = b + quote.chars().count() as u32;
    let err = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(bytes_span),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        field_violations(&err),
        vec!["command.spans[0].exact".to_string()]
    );

    let mut past_end = statement("sergey-lavrov", &source_id, quote);
    past_end.spans[0].end = 10_000;
    let err = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(past_end),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&err),
        vec!["command.spans[0].end".to_string()]
    );

    let err = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(statement("nobody", &source_id, quote)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let info = err.get_details_resource_info().expect("resource info");
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("party", "nobody")
    );

    let err = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(statement(
                "sergey-lavrov",
                "0190a0a0-0000-7000-8000-000000000000",
                quote,
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut late = statement("sergey-lavrov", &source_id, quote);
    late.stated_time = Some(pb::StatedTime {
        at: ts(PUBLISHED + 10 * 86400),
        precision: pb::TimePrecision::Day as i32,
    });
    let err = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(late),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&err),
        vec!["command.stated_time.at".to_string()]
    );
    assert_eq!(
        s.head().await.event_count,
        before,
        "nothing written on error"
    );
}

#[tokio::test]
async fn idempotent_writes_replay_and_conflicting_reuse_is_refused() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let req = |name: &str| pb::RegisterPartyRequest {
        options: Some(pb::WriteOptions {
            idempotency_key: "key-1".into(),
            ..Default::default()
        }),
        command: Some(pb::RegisterPartyCommand {
            name: name.into(),
            ..party("ukraine", pb::PartyKind::State)
        }),
        ..Default::default()
    };
    let first = c.register_party(req("Ukraine")).await.unwrap().into_inner();
    let again = c.register_party(req("Ukraine")).await.unwrap().into_inner();
    let (a, b) = (first.result.unwrap(), again.result.unwrap());
    assert!(!a.deduplicated);
    assert!(b.deduplicated);
    assert_eq!(a.events, b.events);
    assert_eq!(a.recorded_at, b.recorded_at);
    assert_eq!(again.party_id, "ukraine");
    assert_eq!(s.head().await.event_count, 1);

    let err = c.register_party(req("Ukraina")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let info = err.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(s.head().await.event_count, 1);

    // Server-generated ids are part of the original answer, and replayed as such.
    let source_req = pb::RegisterSourceRequest {
        options: Some(pb::WriteOptions {
            idempotency_key: "src-1".into(),
            ..Default::default()
        }),
        command: Some(source()),
        ..Default::default()
    };
    let s1 = c
        .register_source(source_req.clone())
        .await
        .unwrap()
        .into_inner();
    let s2 = c.register_source(source_req).await.unwrap().into_inner();
    assert!(!s1.source_id.is_empty());
    assert_eq!(s1.source_id, s2.source_id);
    assert_eq!(s.head().await.event_count, 2);
}

#[tokio::test]
async fn expected_revisions_are_enforced_with_details() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    c.register_party(pb::RegisterPartyRequest {
        command: Some(party("russia", pb::PartyKind::State)),
        ..Default::default()
    })
    .await
    .unwrap();
    let update = |rev: u64| pb::UpdatePartyRequest {
        expected_revision: Some(pb::ExpectedRevision {
            kind: pb::ExpectedRevisionKind::Exact as i32,
            revision: rev,
        }),
        command: Some(pb::UpdatePartyCommand {
            party_id: "russia".into(),
            kind: pb::PartyKind::State as i32,
            name: "Russian Federation".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = c.update_party(update(7)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("party-russia"), "{}", err.message());
    assert!(err.message().contains("revision 7"), "{}", err.message());
    assert!(err.message().contains("revision 0"), "{}", err.message());
    let info = err.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "WRONG_EXPECTED_REVISION");
    assert_eq!(info.metadata["stream"], "party-russia");
    assert_eq!(info.metadata["actual"], "0");

    let ok = c.update_party(update(0)).await.unwrap().into_inner();
    assert_eq!(ok.result.unwrap().events[0].stream_revision, 1);
    assert_eq!(
        c.update_party(update(0)).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // NO_STREAM on a creation of an existing id, and EXACT on a creation, both fail.
    let err = c
        .register_party(pb::RegisterPartyRequest {
            expected_revision: Some(pb::ExpectedRevision {
                kind: pb::ExpectedRevisionKind::Exact as i32,
                revision: 0,
            }),
            command: Some(party("ukraine", pb::PartyKind::State)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c
        .update_party(pb::UpdatePartyRequest {
            command: Some(pb::UpdatePartyCommand {
                party_id: "nowhere".into(),
                kind: pb::PartyKind::State as i32,
                name: "Nowhere".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn batches_are_atomic_and_see_their_own_earlier_commands() {
    use pb::batch_command::Command as C;
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let source_id = "0190a0a0-0000-7000-8000-0000000000aa";
    let statement_id = "0190a0a0-0000-7000-8000-0000000000bb";
    let quote = "Zelenskyy\u{2019}s administration wants Crimea back.";
    let cmds = |bad: bool| {
        let mut st = statement("ukraine", source_id, quote);
        st.statement_id = statement_id.into();
        if bad {
            st.spans[0].exact = "something else".into();
        }
        vec![
            C::RegisterParty(party("ukraine", pb::PartyKind::State)),
            C::RegisterSource(pb::RegisterSourceCommand {
                source_id: source_id.into(),
                ..source()
            }),
            C::RecordStatement(st),
            C::AssertClaim(claim(
                statement_id,
                "ukraine",
                "preconditions-for-talks",
                "Crimea",
            )),
        ]
        .into_iter()
        .map(|c| pb::BatchCommand {
            expected_revision: None,
            command: Some(c),
        })
        .collect::<Vec<_>>()
    };
    let err = c
        .submit_batch(pb::SubmitBatchRequest {
            options: None,
            commands: cmds(true),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        field_violations(&err),
        vec!["commands[2].record_statement.spans[0].exact".to_string()]
    );
    assert_eq!(
        s.head().await.event_count,
        0,
        "a failed batch writes nothing"
    );

    let ok = c
        .submit_batch(pb::SubmitBatchRequest {
            options: None,
            commands: cmds(false),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results.len(), 4);
    assert_eq!(ok.results[0].entity_id, "ukraine");
    assert_eq!(ok.results[2].entity_id, statement_id);
    let positions: Vec<u64> = ok
        .results
        .iter()
        .map(|r| r.event.as_ref().unwrap().position)
        .collect();
    assert_eq!(positions, vec![0, 1, 2, 3]);

    let err = c
        .submit_batch(pb::SubmitBatchRequest {
            options: None,
            commands: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err), vec!["commands".to_string()]);
    let err = c
        .submit_batch(pb::SubmitBatchRequest {
            options: None,
            commands: vec![pb::BatchCommand::default()],
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err), vec!["commands[0]".to_string()]);
}

#[tokio::test]
async fn corrections_keep_the_target_and_follow_its_status() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let source_id = seed(&mut c).await;
    let quote = "Zelenskyy\u{2019}s administration wants Crimea back.";
    let st = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(statement("sergey-lavrov", &source_id, quote)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .statement_id;
    let mut claim_ids = Vec::new();
    for stance in ["Istanbul", "Istanbul, early-2022 format"] {
        claim_ids.push(
            c.assert_claim(pb::AssertClaimRequest {
                command: Some(claim(&st, "russia", "negotiation-venue", stance)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .claim_id,
        );
    }
    c.review_claim(pb::ReviewClaimRequest {
        command: Some(pb::ReviewClaimCommand {
            claim_id: claim_ids[0].clone(),
            reviewer: "Desk".into(),
            rating: Some(pb::Rating {
                label: "Accurate".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let correction = |kind: pb::CorrectionKind, replacement: &str| pb::IssueCorrectionRequest {
        command: Some(pb::IssueCorrectionCommand {
            target_kind: pb::TargetKind::Claim as i32,
            target_id: claim_ids[0].clone(),
            kind: kind as i32,
            reason: "more precise wording".into(),
            replacement_id: replacement.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = c
        .issue_correction(correction(pb::CorrectionKind::Supersede, ""))
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&err),
        vec!["command.replacement_id".to_string()]
    );
    let ok = c
        .issue_correction(correction(pb::CorrectionKind::Supersede, &claim_ids[1]))
        .await
        .unwrap()
        .into_inner();
    let ev = &ok.result.unwrap().events[0];
    assert_eq!(ev.stream, format!("claim-{}", claim_ids[0]));
    assert_eq!(ev.stream_revision, 2, "asserted, reviewed, superseded");
    let err = c
        .issue_correction(correction(pb::CorrectionKind::Retract, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A retracted statement cannot assert new claims, but stays readable in its stream.
    c.issue_correction(pb::IssueCorrectionRequest {
        command: Some(pb::IssueCorrectionCommand {
            target_kind: pb::TargetKind::Statement as i32,
            target_id: st.clone(),
            kind: pb::CorrectionKind::Retract as i32,
            reason: "misattributed".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .assert_claim(pb::AssertClaimRequest {
            command: Some(claim(&st, "russia", "negotiation-venue", "Ankara")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let stream = s
        .events()
        .await
        .read_stream(pb::ReadStreamRequest {
            stream: format!("statement-{st}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let types: Vec<_> = stream
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(types, vec!["StatementRecorded", "CorrectionIssued"]);
}

#[tokio::test]
async fn the_log_reads_back_with_verifiable_hashes() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    seed(&mut c).await;
    for i in 0..7 {
        c.register_party(pb::RegisterPartyRequest {
            command: Some(party(&format!("p{i}"), pb::PartyKind::Group)),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut ev = s.events().await;
    let h = ev
        .get_head(pb::GetHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.event_count, 10);

    // Page through forwards.
    let mut all = Vec::new();
    let mut from = Some(0);
    while let Some(p) = from {
        let page = ev
            .read_all(pb::ReadAllRequest {
                from_position: p,
                max_count: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 3);
        all.extend(page.events);
        from = page.next_position;
    }
    assert_eq!(all.len(), 10);
    let mut prev = "0".repeat(64);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64);
        assert_eq!(e.hash, hex::encode(Sha256::digest(&e.stored_bytes)));
        assert_eq!(e.prev_hash, prev);
        assert!(e.payload.as_ref().and_then(|p| p.kind.as_ref()).is_some());
        prev = e.hash.clone();
    }
    assert_eq!(h.hash, prev);

    let back = ev
        .read_all(pb::ReadAllRequest {
            from_end: true,
            direction: pb::Direction::Backwards as i32,
            max_count: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let positions: Vec<u64> = back.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![9, 8, 7, 6]);
    assert_eq!(back.next_position, Some(5));

    let err = ev
        .read_stream(pb::ReadStreamRequest {
            stream: "party-nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = ev
        .read_all(pb::ReadAllRequest {
            max_count: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err), vec!["max_count".to_string()]);
}

#[tokio::test]
async fn concurrent_creations_of_one_id_yield_one_winner() {
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = s.ledger().await;
        tasks.push(tokio::spawn(async move {
            c.register_party(pb::RegisterPartyRequest {
                command: Some(party("turkey", pb::PartyKind::State)),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.code())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(code) => assert_eq!(code, Code::AlreadyExists),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(s.head().await.event_count, 1);
}

#[tokio::test]
async fn oversized_and_out_of_range_input_is_refused_precisely() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let err = c
        .register_source(pb::RegisterSourceRequest {
            command: Some(pb::RegisterSourceCommand {
                text: "word ".repeat(14_000),
                ..source()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&err), vec!["command.text".to_string()]);

    // An enum number the proto does not define is treated like UNSPECIFIED: a missing value.
    let err = c
        .register_party(pb::RegisterPartyRequest {
            command: Some(pb::RegisterPartyCommand {
                kind: 99,
                ..party("russia", pb::PartyKind::State)
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err), vec!["command.kind".to_string()]);

    // A timestamp outside what protobuf allows is named, not mangled.
    let err = c
        .register_source(pb::RegisterSourceRequest {
            command: Some(pb::RegisterSourceCommand {
                published_at: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -5,
                }),
                ..source()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&err),
        vec!["command.published_at".to_string()]
    );

    let mut too_many = Vec::new();
    for i in 0..300 {
        too_many.push(pb::BatchCommand {
            expected_revision: None,
            command: Some(pb::batch_command::Command::RegisterParty(party(
                &format!("p{i}"),
                pb::PartyKind::Group,
            ))),
        });
    }
    let err = c
        .submit_batch(pb::SubmitBatchRequest {
            options: None,
            commands: too_many,
        })
        .await
        .unwrap_err();
    assert_eq!(field_violations(&err), vec!["commands".to_string()]);
    assert_eq!(s.head().await.event_count, 0, "nothing written");
}
