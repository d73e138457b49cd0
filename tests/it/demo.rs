//! The Istanbul dataset: loads through the API, loading twice changes nothing, every span is the exact
//! text at its code points, and the statements the article reports are all there.
use crate::common;

use std::collections::HashMap;
use std::process::Command;

use claims_ledger_proto as pb;
use claims_ledger_proto::event_payload::Kind;
use common::*;

const DATASET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/istanbul.json");

fn load(addr: &str) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["load", DATASET, "--json", "--server", addr])
        .output()
        .expect("run load");
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("load --json output")
}

async fn all_events(addr: &str) -> Vec<pb::EventEnvelope> {
    let mut ev = pb::events_client::EventsClient::connect(addr.to_string())
        .await
        .unwrap();
    ev.read_all(pb::ReadAllRequest {
        max_count: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istanbul_dataset_loads_once_with_verified_spans() {
    let s = TestServer::start().await;
    let first = load(&s.addr);
    let n = first["commands"].as_u64().unwrap();
    assert!(n >= 30, "dataset has {n} commands");
    assert_eq!(first["written"].as_u64(), Some(n));
    let events = all_events(&s.addr).await;
    assert_eq!(events.len() as u64, n);

    let second = load(&s.addr);
    assert_eq!(second["written"].as_u64(), Some(0));
    assert_eq!(second["already_present"].as_u64(), Some(n));
    assert_eq!(
        all_events(&s.addr).await.len() as u64,
        n,
        "loading twice changes nothing"
    );

    let mut sources = HashMap::new();
    let mut statements = HashMap::new();
    let mut claims = Vec::new();
    for e in &events {
        match e.payload.clone().unwrap().kind.unwrap() {
            Kind::SourceRegistered(src) => {
                sources.insert(src.source_id.clone(), src);
            }
            Kind::StatementRecorded(st) => {
                statements.insert(st.statement_id.clone(), st);
            }
            Kind::ClaimAsserted(c) => claims.push(c),
            _ => {}
        }
    }
    assert_eq!(sources.len(), 1);
    let src = sources.values().next().unwrap();
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/corpus/istanbul-talks-aljazeera.txt"
    );
    if let Ok(text) = std::fs::read_to_string(corpus) {
        assert_eq!(
            src.text, text,
            "the source is the corpus article, byte for byte"
        );
    }
    assert!(statements.len() >= 10, "{} statements", statements.len());

    // Independent re-check of every span against the stored source text, by code point.
    let chars: Vec<char> = src.text.chars().collect();
    for st in statements.values() {
        assert!(!st.spans.is_empty());
        for sp in &st.spans {
            let found: String = chars[sp.start as usize..sp.end as usize].iter().collect();
            assert_eq!(found, sp.exact, "statement {}", st.statement_id);
        }
    }

    let find = |party: &str, topic: &str| -> Vec<&pb::ClaimAssertedPayload> {
        claims
            .iter()
            .filter(|c| c.party_id == party && c.topic == topic)
            .collect()
    };
    let venue = find("russia", "negotiation-venue");
    assert!(venue.iter().any(|c| c.stance.contains("Istanbul")));
    let quote_statement = venue
        .iter()
        .map(|c| &statements[&c.statement_id])
        .find(|st| st.mode == pb::StatementMode::DirectQuote as i32)
        .expect("the venue claim rests on Lavrov's direct quote");
    assert_eq!(quote_statement.speaker_id, "sergey-lavrov");
    assert!(quote_statement.spans.iter().any(|s| s
        .exact
        .contains("We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace")));

    assert!(find("ukraine", "preconditions-for-talks")
        .iter()
        .any(|c| c.stance.contains("Crimea") && c.stance.to_lowercase().contains("withdrawal")));
    let no_response = find("ukraine", "response-to-istanbul-proposal");
    assert!(no_response
        .iter()
        .any(|c| statements[&c.statement_id].mode == pb::StatementMode::ReportedNoComment as i32));
    let turkey = find("turkey", "mediation");
    assert!(turkey
        .iter()
        .any(|c| statements[&c.statement_id].mode == pb::StatementMode::ReportedNoComment as i32));
    assert!(
        turkey.len() >= 2,
        "silence and the earlier offer to mediate"
    );
    assert!(claims
        .iter()
        .any(|c| c.party_id == "united-states" && c.stance.to_lowercase().contains("sovereignty")));
    assert!(claims
        .iter()
        .any(|c| c.party_id == "russia" && c.topic == "western-intentions"));
}

#[test]
fn serve_demo_twice_changes_nothing_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut counts = Vec::new();
    for _ in 0..2 {
        let mut server = ChildServer::start(&data, &["--demo"]);
        let events = rt.block_on(all_events(&server.addr));
        counts.push(events.len());
        assert!(server.terminate(), "clean shutdown on SIGTERM");
    }
    assert!(counts[0] >= 30);
    assert_eq!(counts[0], counts[1]);
    let out = Command::new(bin())
        .args(["verify", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["events"].as_u64(), Some(counts[0] as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_verify_commands_report_the_chain() {
    let s = TestServer::start().await;
    load(&s.addr);
    let out = Command::new(bin())
        .args(["head", "--json", "--server", &s.addr])
        .output()
        .unwrap();
    assert!(out.status.success());
    let head: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let events = all_events(&s.addr).await;
    assert_eq!(head["event_count"].as_u64(), Some(events.len() as u64));
    assert_eq!(head["hash"], events.last().unwrap().hash);

    let dir = s.stop().await;
    // The stopped server's threads let go of sled's lock a moment after it stops: retry briefly.
    let verify = |args: &[&str]| {
        for _ in 0..100 {
            let out = Command::new(bin())
                .arg("verify")
                .args(args)
                .arg("--data-dir")
                .arg(dir.path())
                .output()
                .unwrap();
            if !String::from_utf8_lossy(&out.stderr).contains("lock") {
                return out;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the data directory stayed locked");
    };
    let ok = verify(&[]);
    assert!(ok.status.success());
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.starts_with("ok: "), "{text}");
    assert!(text.contains(head["hash"].as_str().unwrap()), "{text}");

    // Flip one byte of one stored record, as someone with disk access could.
    {
        let db = claims_ledger_log::open_db(dir.path())
            .expect("open the stopped server's data directory");
        // The record's bytes change; the hash stored with them does not.
        let (hash, mut record) = claims_ledger_log::disk::stored_event(&db, 17)
            .unwrap()
            .unwrap();
        let last = record.len() - 2;
        record[last] ^= 0x01;
        assert!(claims_ledger_log::disk::replace_event(&db, 17, &hash, &record).unwrap());
        db.flush().unwrap();
    }
    let bad = verify(&["--json"]);
    assert_eq!(bad.status.code(), Some(1), "a failed verification exits 1");
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_position"].as_u64(), Some(17), "{v}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stored bytes do not match the hash written with them")),
        "{v}"
    );

    let missing = Command::new(bin())
        .args(["verify", "--data-dir", "/nonexistent/claims-ledger-data"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}
