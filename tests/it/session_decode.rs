//! A message on `Ledger.AppendSession` that is not valid protobuf is the client's mistake: the session
//! ends with INVALID_ARGUMENT (as SubmitBatch and Subscribe answer), whether it is the first message
//! or a later one, the metrics count it as InvalidArgument and never as Internal, and nothing of it
//! is written. The messages are sent as raw bytes, with a pass-through codec.
use crate::common;

use crate::hostile_input::RawCodec;
use claims_ledger_proto as pb;
use common::*;
use prost::Message as _;
use tonic::{Code, Status};

/// Field 2 (`append`) declared 2^63 bytes long: no decoder can read it.
const UNDECODABLE: [u8; 11] = [
    0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00,
];

/// Runs one session of `messages`; returns the answers received and the status it ended with.
async fn session(server: &TestServer, messages: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Status) {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/claimsledger.v1.Ledger/AppendSession");
    let mut answers = Vec::new();
    let end = match grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            path,
            RawCodec,
        )
        .await
    {
        Err(s) => s,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(a)) => answers.push(a),
                    Ok(None) => break Status::ok("ended"),
                    Err(s) => break s,
                }
            }
        }
    };
    (answers, end)
}

fn append_of(i: usize) -> Vec<u8> {
    pb::AppendSessionRequest {
        request_id: i as u64,
        append: Some(batch_of(vec![pb::batch_command::Command::RegisterParty(
            party(&format!("p{i}"), pb::PartyKind::Group),
        )])),
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_session_messages_are_invalid_argument_not_internal() {
    let s = TestServer::start().await;

    // The first message.
    let (answers, end) = session(&s, vec![UNDECODABLE.to_vec()]).await;
    assert!(answers.is_empty());
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(end.message().contains("message 1"), "{}", end.message());
    assert_eq!(s.head().await.event_count, 0, "nothing written");

    // A later one: the appends before it stand, nothing after it is read.
    let (answers, end) = session(
        &s,
        vec![
            append_of(0),
            append_of(1),
            UNDECODABLE.to_vec(),
            append_of(3),
        ],
    )
    .await;
    assert_eq!(answers.len(), 2);
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(end.message().contains("message 3"), "{}", end.message());
    assert_eq!(s.head().await.event_count, 2);

    // Counted as the client's mistake.
    let text = s.app.metrics().render().expect("render");
    let series = |code: &str| {
        format!(
            "grpc_server_handled_total{{grpc_service=\"claimsledger.v1.Ledger\",grpc_method=\"AppendSession\",grpc_code=\"{code}\"}} "
        )
    };
    let count = |code: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&series(code)))
            .map_or(0.0, |v| v.trim().parse::<f64>().expect("number"))
    };
    assert_eq!(count("InvalidArgument"), 2.0, "{text}");
    assert_eq!(count("Internal"), 0.0, "{text}");
    s.stop().await;
}
