//! The people-facing commands against the real binary: `positions`, `history` and `provenance` against a
//! `serve --demo` child process, then the offline `rebuild` on its stopped data directory (and its
//! refusal while the server holds the directory).
use crate::common;

use std::process::{Command, Output};

use common::*;

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run the binary")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn positions_history_provenance_and_offline_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ChildServer::start(&data, &["--demo"]);
    let addr = server.addr.clone();

    // Positions, as JSON: Russia on the venue is Istanbul, quoted from Lavrov.
    let pos = json_of(&run(&[
        "positions",
        "--party",
        "russia",
        "--topic",
        "negotiation-venue",
        "--json",
        "--server",
        &addr,
    ]));
    let current = &pos["positions"][0]["current"];
    assert_eq!(current["stance"], "Istanbul");
    assert_eq!(current["statement"]["speaker_id"], "sergey-lavrov");
    let applied = pos["stamp"]["applied_count"].as_u64().expect("stamp");
    assert!(applied > 50, "demo loaded before serving: {applied}");

    // Readable by default, with the quote in it.
    let text = run(&[
        "positions",
        "--party",
        "russia",
        "--topic",
        "negotiation-venue",
        "--server",
        &addr,
    ]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Istanbul") && text.contains("sergey-lavrov"),
        "{text}"
    );

    // As of a recorded position before anything about Russia: no positions.
    let early = json_of(&run(&[
        "positions",
        "--party",
        "russia",
        "--as-of-recorded",
        "1",
        "--json",
        "--server",
        &addr,
    ]));
    assert_eq!(early["positions"].as_array().map(Vec::len), Some(0));

    // History of Turkey on mediation: the offer, then silence, both changes.
    let hist = json_of(&run(&[
        "history",
        "--party",
        "turkey",
        "--topic",
        "mediation",
        "--json",
        "--server",
        &addr,
    ]));
    let entries = hist["position"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(entries.len(), 2, "{hist}");
    assert_eq!(
        entries[0]["claim"]["stance"],
        "willing to mediate between Russia and Ukraine"
    );

    // Provenance of that claim: down to the span, with the source text around it.
    let claim_id = current["claim_id"].as_str().expect("claim id").to_string();
    let prov = run(&["provenance", &claim_id, "--server", &addr]);
    assert!(
        prov.status.success(),
        "{}",
        String::from_utf8_lossy(&prov.stderr)
    );
    let prov = String::from_utf8_lossy(&prov.stdout);
    assert!(
        prov.contains("We are prepared to resume negotiations in Istanbul"),
        "{prov}"
    );
    assert!(prov.contains("Al Jazeera"), "{prov}");
    let unknown = run(&[
        "provenance",
        "00000000-0000-7000-8000-000000000000",
        "--server",
        &addr,
    ]);
    assert_eq!(unknown.status.code(), Some(1));

    // Offline rebuild refuses while the server holds the directory, then works once it stopped.
    let data_s = data.to_str().expect("utf-8 path");
    let locked = run(&["rebuild", "--data-dir", data_s, "--json"]);
    assert!(!locked.status.success());
    assert!(server.terminate(), "clean shutdown");
    let rebuilt = json_of(&run(&["rebuild", "--data-dir", data_s, "--json"]));
    assert_eq!(rebuilt["events_replayed"].as_u64(), Some(applied));

    // The restarted server answers the same from the rebuilt generation.
    let server = ChildServer::start(&data, &[]);
    let again = json_of(&run(&[
        "positions",
        "--party",
        "russia",
        "--topic",
        "negotiation-venue",
        "--json",
        "--server",
        &server.addr,
    ]));
    assert_eq!(again["positions"], pos["positions"]);
}
