//! The people-facing commands against the real binary: `positions`, `history` and `provenance` against a
//! `serve --demo` child process, then the offline `rebuild` on its stopped data directory (and its
//! refusal while the server holds the directory); and the field names and value formats of every
//! `--json` document of those commands.
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

/// The names of an object's fields, sorted.
fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn assert_keys(v: &serde_json::Value, what: &str, expected: &[&str]) {
    assert_eq!(keys(v), expected, "fields of {what}: {v:#}");
}

/// An RFC 3339 time in UTC as the JSON writes it: `2024-06-05T00:00:00Z`, fractions only as needed.
fn assert_utc(v: &serde_json::Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(
        s.len() >= 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T',
        "{what}: {s}"
    );
}

const ORIGIN: &[&str] = &[
    "event_id",
    "position",
    "recorded_at",
    "recorded_by",
    "stream",
    "stream_revision",
];

fn check_origin(o: &serde_json::Value, what: &str) {
    assert_keys(o, what, ORIGIN);
    assert!(
        o["position"].is_u64(),
        "{what}: 64-bit integers are numbers"
    );
    assert!(o["stream_revision"].is_u64(), "{what}");
    assert_utc(&o["recorded_at"], what);
}

fn check_stated(t: &serde_json::Value, what: &str) {
    assert_keys(t, what, &["at", "precision"]);
    assert_utc(&t["at"], what);
    let p = t["precision"].as_str().unwrap_or_default();
    assert!(
        ["instant", "day", "month", "year"].contains(&p),
        "{what}: {p}"
    );
}

fn check_statement(s: &serde_json::Value) {
    assert_keys(
        s,
        "statement",
        &[
            "attribution_verb",
            "content",
            "corrections",
            "mode",
            "on_behalf_of_id",
            "origin",
            "reports_statement_id",
            "spans",
            "speaker_id",
            "stated_time",
            "statement_id",
            "status",
            "topics",
            "venue",
        ],
    );
    assert_eq!(s["status"], "active");
    let mode = s["mode"].as_str().unwrap_or_default();
    assert!(
        [
            "direct_quote",
            "paraphrase",
            "reported",
            "official_document",
            "reported_no_comment"
        ]
        .contains(&mode),
        "mode {mode}"
    );
    // Optional strings are null when not given, never "".
    for f in ["on_behalf_of_id", "venue", "reports_statement_id"] {
        assert!(
            s[f].is_null() || s[f].as_str().is_some_and(|v| !v.is_empty()),
            "{f}: {s}"
        );
    }
    check_origin(&s["origin"], "statement origin");
    check_stated(&s["stated_time"], "stated_time");
    let spans = s["spans"].as_array().expect("spans");
    assert!(!spans.is_empty());
    for sv in spans {
        assert_keys(sv, "span view", &["after", "before", "source", "span"]);
        assert_keys(&sv["span"], "span", &["end", "exact", "source_id", "start"]);
        let src = &sv["source"];
        assert_keys(
            src,
            "source",
            &[
                "language",
                "origin",
                "published_at",
                "publisher",
                "retrieved_at",
                "source_id",
                "text",
                "text_length",
                "text_sha256",
                "title",
                "url",
            ],
        );
        assert!(src["text"].is_null(), "the text is not asked for");
        assert!(src["text_length"].is_u64());
        assert_utc(&src["published_at"], "published_at");
        check_origin(&src["origin"], "source origin");
    }
}

fn check_claim(c: &serde_json::Value) {
    assert_keys(
        c,
        "claim",
        &[
            "claim_id",
            "conditions",
            "corrections",
            "origin",
            "party_id",
            "reviews",
            "stance",
            "statement",
            "statement_id",
            "status",
            "topic",
        ],
    );
    check_origin(&c["origin"], "claim origin");
    check_statement(&c["statement"]);
}

/// The `--json` documents' field names and value formats, level by level, so that renaming or dropping
/// a field (in the proto or in how it is serialized) fails here before it breaks a script.
#[test]
fn json_documents_keep_their_field_names_and_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = ChildServer::start(&data, &["--demo"]);
    let addr = server.addr.clone();

    // A review and a correction of a demo claim (Lavrov's proposal of renewed talks), so their
    // fields are printed too.
    let claim_id = "6c1dab87-981c-510a-bc13-f138070a1131";
    let extra = dir.path().join("extra.json");
    std::fs::write(
        &extra,
        serde_json::json!({
            "format": "claims-ledger/dataset/v1", "name": "json-fields",
            "commands": [
                {"idempotency_key": "json-fields/review", "command": {
                    "type": "review_claim", "claim_id": claim_id, "reviewer": "Example Check",
                    "rating": {"label": "Misleading", "value": 2, "best": 5, "worst": 1},
                    "explanation": "Partly.", "url": "https://example.org/review/1"}},
                {"idempotency_key": "json-fields/erratum", "command": {
                    "type": "issue_correction", "target_kind": "claim", "target_id": claim_id,
                    "kind": "erratum", "reason": "Wording."}},
            ],
        })
        .to_string(),
    )
    .expect("write the dataset");
    let extra = extra.to_str().expect("utf-8 path");
    let loaded = run(&["load", extra, "--server", &addr]);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );

    let pos = json_of(&run(&[
        "positions",
        "--party",
        "russia",
        "--json",
        "--server",
        &addr,
    ]));
    assert_keys(&pos, "positions", &["party_id", "positions", "stamp"]);
    assert_keys(&pos["stamp"], "stamp", &["applied_count"]);
    assert!(pos["stamp"]["applied_count"].is_u64());
    let positions = pos["positions"].as_array().expect("positions");
    assert!(!positions.is_empty());
    for p in positions {
        assert_keys(
            p,
            "position",
            &[
                "changed_at",
                "current",
                "history",
                "history_omitted",
                "party_id",
                "topic",
            ],
        );
        check_stated(&p["changed_at"], "changed_at");
        check_claim(&p["current"]);
        for e in p["history"].as_array().expect("history") {
            assert_keys(
                e,
                "history entry",
                &["changed", "changed_at", "claim", "in_force"],
            );
            assert!(e["changed"].is_boolean() && e["in_force"].is_boolean());
            check_claim(&e["claim"]);
        }
    }

    let hist = json_of(&run(&[
        "history",
        "--party",
        "ukraine",
        "--topic",
        "preconditions-for-talks",
        "--json",
        "--server",
        &addr,
    ]));
    assert_keys(
        &hist,
        "history of a topic",
        &["party_id", "position", "since", "stamp", "topic"],
    );
    assert!(hist["since"].is_null());

    let listed = json_of(&run(&[
        "history", "--party", "russia", "--since", "2024-01", "--json", "--server", &addr,
    ]));
    assert_keys(
        &listed,
        "statement listing",
        &["order", "party_id", "since", "stamp", "statements"],
    );
    assert_eq!(listed["order"], "newest_first");
    assert_eq!(listed["since"], "2024-01-01T00:00:00Z");
    for s in listed["statements"].as_array().expect("statements") {
        check_statement(s);
    }

    let claim = json_of(&run(&["provenance", claim_id, "--json", "--server", &addr]));
    assert_keys(&claim, "claim provenance", &["claim", "kind", "stamp"]);
    assert_eq!(claim["kind"], "claim");
    let c = &claim["claim"];
    check_claim(c);
    let review = &c["reviews"][0];
    assert_keys(
        review,
        "review",
        &[
            "claim_id",
            "explanation",
            "origin",
            "rating",
            "review_id",
            "reviewer",
            "url",
        ],
    );
    assert_keys(
        &review["rating"],
        "rating",
        &["best", "label", "value", "worst"],
    );
    assert_eq!(review["rating"]["value"], 2);
    check_origin(&review["origin"], "review origin");
    let correction = &c["corrections"][0];
    assert_keys(
        correction,
        "correction",
        &[
            "correction_id",
            "kind",
            "origin",
            "reason",
            "replacement_id",
            "target_id",
            "target_kind",
        ],
    );
    assert_eq!(correction["kind"], "erratum");
    assert_eq!(correction["target_kind"], "claim");
    assert!(correction["replacement_id"].is_null());
    check_origin(&correction["origin"], "correction origin");

    let statement_id = c["statement_id"].as_str().expect("statement id");
    let st = json_of(&run(&[
        "provenance",
        statement_id,
        "--json",
        "--server",
        &addr,
    ]));
    assert_keys(
        &st,
        "statement provenance",
        &["claims", "kind", "reports", "stamp", "statement"],
    );
    assert_eq!(st["kind"], "statement");
    check_statement(&st["statement"]);
    assert!(st["reports"].is_null());
    for c in st["claims"].as_array().expect("claims") {
        check_claim(c);
    }
}
