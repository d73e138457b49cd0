//! Signed checkpoints against an operator (or intruder) with disk access, end to end through the real
//! binary: `serve --demo`, `public-key`, `verify --server --key --checkpoint` to save a checkpoint, a
//! stopped server, then the stored events and Merkle tiles changed directly on disk (through
//! `claims_ledger_log::disk`) and the server restarted on it.
//!
//! - A naive rewrite of one event (hash prefix recomputed) is named by the offline `verify`, and the
//!   online auditor's inclusion check of that event fails.
//! - A thorough rewrite (the suffix re-chained, the Merkle tree and head rebuilt) passes the offline
//!   `verify`: the log is self-consistent, and only the saved, signed checkpoint exposes it.
//! - A log rolled back to an older backup passes the offline `verify` too, and the saved checkpoint
//!   says it shrank.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use claims_ledger_core::checkpoint::{Checkpoint, Verifier};
use claims_ledger_core::merkle;
use claims_ledger_log::{disk, open_db, sha256, Hash};
use claims_ledger_proto as pb;
use common::*;
use serde_json::Value;
use tempfile::TempDir;

/// The position both attackers go after.
const TARGET: u64 = 5;

// ---- the binary -------------------------------------------------------------------------------

/// Runs `claims-ledger ARGS` with no configuration leaking in from the environment.
fn cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for var in [
        "CLAIMS_LEDGER_DATA_DIR",
        "CLAIMS_LEDGER_SERVER",
        "CLAIMS_LEDGER_VERIFIER_KEY",
        "CLAIMS_LEDGER_SIGNING_KEY",
        "CLAIMS_LEDGER_DEMO",
        "CLAIMS_LEDGER_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn");
    cmd.output().expect("run claims-ledger")
}

/// Exit code and the one JSON document printed on stdout.
fn cli_json(args: &[&str]) -> (i32, Value) {
    let out = cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code().expect("exited, not killed");
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{args:?} exited {code} without one JSON document on stdout ({e}):\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

fn public_key(server: &ChildServer) -> String {
    let out = cli(&["public-key", "--server", &server.addr]);
    assert!(out.status.success(), "public-key: {out:?}");
    let key = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    Verifier::from_public_key_string(&key).unwrap_or_else(|e| panic!("{key:?} is not a key: {e}"));
    key
}

/// `verify --server --key --checkpoint FILE --json` plus `extra`.
fn verify_online(
    server: &ChildServer,
    key: &str,
    checkpoint: &Path,
    extra: &[&str],
) -> (i32, Value) {
    let cp = checkpoint.to_str().expect("utf-8 path");
    let mut args = vec![
        "verify",
        "--server",
        &server.addr,
        "--key",
        key,
        "--checkpoint",
        cp,
        "--json",
    ];
    args.extend_from_slice(extra);
    cli_json(&args)
}

/// `verify --data-dir DIR --json` (offline; the server must be stopped).
fn verify_offline(dir: &Path) -> (i32, Value) {
    cli_json(&[
        "verify",
        "--data-dir",
        dir.to_str().expect("utf-8 path"),
        "--json",
    ])
}

#[track_caller]
fn assert_ok(what: &str, (code, json): &(i32, Value)) {
    assert_eq!(*code, 0, "{what}: {json}");
    assert_eq!(json["ok"], true, "{what}: {json}");
}

/// The failure reason of a verification that must fail (exit 1, `{"ok": false, ...}`).
#[track_caller]
fn failure(what: &str, (code, json): &(i32, Value)) -> String {
    assert_eq!(*code, 1, "{what} must fail: {json}");
    assert_eq!(json["ok"], false, "{what} must fail: {json}");
    json["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no reason in {json}"))
        .to_string()
}

fn stop(server: &mut ChildServer) {
    assert!(server.terminate(), "the server stops cleanly on SIGTERM");
}

/// A stopped demo server's data directory with a checkpoint saved by the auditor.
struct Scenario {
    _tmp: TempDir,
    data: PathBuf,
    checkpoint: PathBuf,
    key: String,
    /// Events in the log when the checkpoint was saved.
    size: u64,
}

impl Scenario {
    /// `serve --demo`; `public-key`; `verify --checkpoint FILE` saves the checkpoint; the event under
    /// attack verifies too (so that every later failure is the attack's doing); stop.
    fn new() -> Scenario {
        let tmp = TempDir::new().expect("tempdir");
        let data = tmp.path().join("data");
        let checkpoint = tmp.path().join("saved.checkpoint");
        let mut server = ChildServer::start(&data, &["--demo"]);
        let key = public_key(&server);
        let first = verify_online(&server, &key, &checkpoint, &[]);
        assert_ok("first verification", &first);
        assert_eq!(
            first.1["saved"],
            checkpoint.display().to_string(),
            "{}",
            first.1
        );
        let size = first.1["tree_size"].as_u64().expect("tree_size");
        assert!(size > TARGET + 10, "the demo log holds {size} events");
        let saved = read_checkpoint(&checkpoint, &key);
        assert_eq!(
            saved.size, size,
            "the file holds the checkpoint just verified"
        );
        let again = verify_online(
            &server,
            &key,
            &checkpoint,
            &["--event", &TARGET.to_string()],
        );
        assert_ok(
            "honest log against its own checkpoint, with the target event",
            &again,
        );
        assert_eq!(again.1["consistent_with_saved"], size, "{}", again.1);
        assert_eq!(again.1["event"]["position"], TARGET, "{}", again.1);
        stop(&mut server);
        assert_ok("offline verify of the honest log", &verify_offline(&data));
        Scenario {
            _tmp: tmp,
            data,
            checkpoint,
            key,
            size,
        }
    }

    fn saved_note(&self) -> String {
        std::fs::read_to_string(&self.checkpoint).expect("saved checkpoint")
    }
}

fn read_checkpoint(path: &Path, key: &str) -> Checkpoint {
    let note = std::fs::read_to_string(path).expect("saved checkpoint");
    let v = Verifier::from_public_key_string(key).expect("key");
    Checkpoint::open(&note, &v).unwrap_or_else(|e| panic!("saved checkpoint does not open: {e}"))
}

// ---- the disk by hand -------------------------------------------------------------------------

/// The record bytes stored at `pos`, checked against the hash stored with them.
fn record(db: &sled::Db, pos: u64) -> Vec<u8> {
    let (hash, bytes) = disk::stored_event(db, pos)
        .expect("read")
        .unwrap_or_else(|| panic!("event {pos}"));
    assert_eq!(
        hash,
        sha256(&bytes),
        "event {pos} is intact before the attack"
    );
    bytes
}

/// Overwrites the event at `pos` with `bytes` and their recomputed hash; returns the hash.
fn store_record(db: &sled::Db, pos: u64, bytes: &[u8]) -> Hash {
    let hash = sha256(bytes);
    assert!(
        disk::replace_event(db, pos, &hash, bytes).expect("write"),
        "event {pos} present"
    );
    hash
}

fn head(db: &sled::Db) -> (u64, Hash) {
    let v = db.get(b"mhead").expect("read").expect("head record");
    (
        u64::from_be_bytes(v[..8].try_into().expect("count")),
        v[8..40].try_into().expect("hash"),
    )
}

/// Rebuilds the whole Merkle tree (tiles and frontier) and the head from the events on disk, as
/// the log would have written them for this content; returns the new root.
fn rebuild_tree_and_head(db: &sled::Db) -> Hash {
    assert!(
        disk::tile(db, 0, 0).expect("read tile").is_some(),
        "the log keeps a tree"
    );
    let root = disk::rebuild_tree(db).expect("rebuild the tree");
    // The head: count and hash of the last event, over gap-free positions.
    let mut last = [0u8; 32];
    let mut count = 0u64;
    while let Some((hash, bytes)) = disk::stored_event(db, count).expect("read") {
        assert_eq!(hash, sha256(&bytes), "event {count} hash");
        last = hash;
        count += 1;
    }
    let mut h = count.to_be_bytes().to_vec();
    h.extend_from_slice(&last);
    db.insert(b"mhead", h).expect("head");
    root
}

/// The payload's `name` (event 5 of the demo is a party registration).
fn payload_name(rec: &Value) -> &str {
    rec["payload"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("event {TARGET} has a payload name: {rec}"))
}

// ---- scenarios --------------------------------------------------------------------------------

#[test]
fn a_naive_rewrite_is_named_offline_and_fails_the_inclusion_check() {
    let sc = Scenario::new();
    let original;
    {
        let db = open_db(&sc.data).expect("open the db");
        let bytes = record(&db, TARGET);
        original = bytes.clone();
        let rec: Value = serde_json::from_slice(&bytes).expect("record JSON");
        let name = payload_name(&rec).to_string();
        // One byte inside the payload text: the first letter of the name, case flipped.
        let needle = format!("\"name\":\"{name}\"");
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .expect("name in the stored bytes")
            + "\"name\":\"".len();
        let mut forged = bytes.clone();
        assert!(forged[at].is_ascii_alphabetic(), "{}", forged[at] as char);
        forged[at] ^= 0x20;
        let parsed: Value = serde_json::from_slice(&forged).expect("still JSON");
        assert_ne!(payload_name(&parsed), name);
        // The per-event hash is recomputed, so the record matches the hash stored with it.
        store_record(&db, TARGET, &forged);
        db.flush().expect("flush");
    }

    let offline = verify_offline(&sc.data);
    let reason = failure("offline verify of the naive rewrite", &offline);
    assert_eq!(offline.1["first_bad_position"], TARGET, "{}", offline.1);
    assert!(
        reason.contains("Merkle leaf hash in tile (0, 0) does not match the event"),
        "{reason}"
    );

    let mut server = ChildServer::start(&sc.data, &[]);
    // The tree was not touched, so the log still extends the saved checkpoint ...
    assert_ok(
        "the untouched tree still extends the saved checkpoint",
        &verify_online(&server, &sc.key, &sc.checkpoint, &[]),
    );
    // ... but the event's bytes are not the ones in the signed tree.
    let result = verify_online(&server, &sc.key, &sc.checkpoint, &["--event", "5"]);
    let reason = failure("online verify of the rewritten event", &result);
    assert!(
        reason.contains("event 5 is not in the signed tree") && reason.contains("different root"),
        "{reason}"
    );
    // Its neighbours are still fine: the failure is specific to the rewritten event.
    for pos in ["4", "6"] {
        assert_ok(
            &format!("event {pos} next to the rewrite"),
            &verify_online(&server, &sc.key, &sc.checkpoint, &["--event", pos]),
        );
    }
    stop(&mut server);
    assert_ne!(original, {
        let db = open_db(&sc.data).expect("open the db");
        disk::stored_event(&db, TARGET)
            .expect("read")
            .expect("event")
            .1
    });
}

#[test]
fn a_thorough_rewrite_passes_offline_verify_but_not_the_saved_checkpoint() {
    let sc = Scenario::new();
    let saved_before = sc.saved_note();
    let forged_name;
    let forged_target_bytes;
    let rebuilt_root;
    {
        let db = open_db(&sc.data).expect("open the db");
        let (count, _) = head(&db);
        assert_eq!(count, sc.size);
        let mut prev = sha256(&record(&db, TARGET - 1));
        let mut target_bytes = Vec::new();
        // The idempotency key of the append being rewritten (its first event carries it).
        let mut key: Option<String> = None;
        for pos in TARGET..count {
            let mut rec: Value = serde_json::from_slice(&record(&db, pos)).expect("record JSON");
            assert_eq!(rec["position"], pos, "record {pos}");
            if pos == TARGET {
                let name = format!("{} (rewritten)", payload_name(&rec));
                rec["payload"]["name"] = Value::String(name);
            }
            rec["prev_hash"] = Value::String(hex::encode(prev));
            let bytes = serde_json::to_vec(&rec).expect("serialize");
            prev = store_record(&db, pos, &bytes);
            if pos == TARGET {
                target_bytes = bytes;
            }
            // A thorough attacker also rewrites the idempotency record that names the event.
            if let Some(k) = rec["idempotency"]["key"].as_str() {
                key = Some(k.to_string());
            }
            if let Some(k) = &key {
                let stored = disk::idempotency_record(&db, k)
                    .expect("read")
                    .expect("an idempotency record for a keyed append");
                let mut answer: Value = serde_json::from_slice(&stored).expect("JSON");
                for e in answer["events"].as_array_mut().expect("events") {
                    if e["position"] == pos {
                        e["hash"] = Value::String(hex::encode(prev));
                    }
                }
                let bytes = serde_json::to_vec(&answer).expect("serialize");
                disk::put_idempotency_record(&db, k, Some(&bytes)).expect("write");
            }
        }
        rebuilt_root = rebuild_tree_and_head(&db);
        db.flush().expect("flush");
        assert_eq!(head(&db), (count, prev));
        forged_name =
            payload_name(&serde_json::from_slice(&target_bytes).expect("json")).to_string();
        forged_target_bytes = target_bytes;
    }
    assert!(forged_name.ends_with("(rewritten)"));
    // The mark of durable events names the last event's hash, which the rewrite changed: a thorough
    // attacker removes it too (or rewrites it; it is checksummed, not signed).
    std::fs::remove_file(sc.data.join(claims_ledger_log::evidence::DURABLE_MARK))
        .expect("remove the durable mark");

    // The forged log is self-consistent: chain, hashes, tree and head all agree.
    let offline = verify_offline(&sc.data);
    assert_ok("offline verify of the thoroughly rewritten log", &offline);
    assert_eq!(offline.1["events"], sc.size, "{}", offline.1);
    let old_root = hex::encode(read_checkpoint(&sc.checkpoint, &sc.key).root);
    assert_ne!(
        offline.1["merkle_root"],
        old_root.as_str(),
        "a new root: {}",
        offline.1
    );
    assert_eq!(
        offline.1["merkle_root"],
        hex::encode(rebuilt_root),
        "{}",
        offline.1
    );

    std::fs::remove_dir_all(sc.data.join("projections")).expect("remove the projections");
    let mut server = ChildServer::start(&sc.data, &[]);

    // The server now signs the forged log, and an auditor without a saved checkpoint sees nothing
    // wrong, even for the forged event: this is why auditors keep checkpoints.
    let fresh = TempDir::new().expect("tempdir");
    let fresh_cp = fresh.path().join("fresh.checkpoint");
    let naive = verify_online(&server, &sc.key, &fresh_cp, &["--event", "5"]);
    assert_ok("a first-time auditor of the forged log", &naive);
    assert_eq!(naive.1["root"], offline.1["merkle_root"], "{}", naive.1);
    assert_eq!(
        naive.1["event"]["leaf_hash"],
        hex::encode(merkle::leaf_hash(&forged_target_bytes)),
        "the server serves the forged event: {}",
        naive.1
    );

    // The auditor who saved a checkpoint of the honest log is not fooled.
    let result = verify_online(&server, &sc.key, &sc.checkpoint, &[]);
    let reason = failure("the saved checkpoint against the rewritten log", &result);
    assert!(
        reason.contains(&format!(
            "the log of {0} events does not extend the saved one of {0} (forked or rewritten)",
            sc.size
        )),
        "{reason}"
    );
    assert!(
        reason.contains("two different roots for the same tree size"),
        "{reason}"
    );
    // With --update and --event too: still a failure, and the saved checkpoint is kept.
    let result = verify_online(
        &server,
        &sc.key,
        &sc.checkpoint,
        &["--update", "--event", "5"],
    );
    let reason = failure(
        "the saved checkpoint against the rewritten log, --update",
        &result,
    );
    assert!(reason.contains("forked or rewritten"), "{reason}");
    assert_eq!(
        sc.saved_note(),
        saved_before,
        "a failed verification never replaces the saved checkpoint"
    );

    // The operator keeps writing on top of the forgery: the log grows, and still does not extend
    // the saved checkpoint (the consistency proof is checked, not just the sizes).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = pb::ledger_client::LedgerClient::connect(server.addr.clone())
            .await
            .expect("connect");
        for i in 0..3 {
            c.register_party(pb::RegisterPartyRequest {
                command: Some(party(&format!("later-{i}"), pb::PartyKind::Person)),
                ..Default::default()
            })
            .await
            .expect("write on the forged log");
        }
    });
    // Closes the client's connection (its task lives on this runtime): a connection left open
    // and unpolled would hold up the server's graceful shutdown.
    drop(rt);
    let result = verify_online(&server, &sc.key, &sc.checkpoint, &[]);
    let reason = failure(
        "the saved checkpoint against the grown rewritten log",
        &result,
    );
    assert!(
        reason.contains(&format!(
            "the log of {} events does not extend the saved one of {} (forked or rewritten)",
            sc.size + 3,
            sc.size
        )),
        "{reason}"
    );
    assert!(
        reason.contains("consistency proof leads to a different old root"),
        "{reason}"
    );
    stop(&mut server);
}

#[test]
fn a_log_rolled_back_to_a_backup_fails_as_shrunk() {
    let sc = Scenario::new();
    // The operator keeps a backup of the stopped server's directory (log, key and all) ...
    let backup = sc.data.with_file_name("backup");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&sc.data)
        .arg(&backup)
        .status()
        .expect("cp");
    assert!(status.success());

    // ... the log grows, and the auditor follows it honestly with --update.
    let mut server = ChildServer::start(&sc.data, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = pb::ledger_client::LedgerClient::connect(server.addr.clone())
            .await
            .expect("connect");
        for i in 0..4 {
            c.register_party(pb::RegisterPartyRequest {
                command: Some(party(&format!("grown-{i}"), pb::PartyKind::Person)),
                ..Default::default()
            })
            .await
            .expect("write");
        }
    });
    drop(rt);
    let grown = verify_online(&server, &sc.key, &sc.checkpoint, &["--update"]);
    assert_ok("the grown log extends the saved checkpoint", &grown);
    assert_eq!(grown.1["consistent_with_saved"], sc.size, "{}", grown.1);
    assert_eq!(grown.1["tree_size"], sc.size + 4, "{}", grown.1);
    assert_eq!(
        read_checkpoint(&sc.checkpoint, &sc.key).size,
        sc.size + 4,
        "--update saved it"
    );
    stop(&mut server);
    let saved_grown = sc.saved_note();

    // The operator rolls the directory back to the backup: the four events are gone.
    std::fs::remove_dir_all(&sc.data).expect("remove data");
    std::fs::rename(&backup, &sc.data).expect("restore the backup");
    // Nothing offline can tell: the older log is perfectly valid on its own.
    let offline = verify_offline(&sc.data);
    assert_ok("offline verify of the rolled-back log", &offline);
    assert_eq!(offline.1["events"], sc.size, "{}", offline.1);

    let mut server = ChildServer::start(&sc.data, &[]);
    assert_eq!(public_key(&server), sc.key, "same key after the rollback");
    let result = verify_online(&server, &sc.key, &sc.checkpoint, &[]);
    let reason = failure("the saved checkpoint against the rolled-back log", &result);
    assert_eq!(
        reason,
        format!(
            "the log shrank: the saved checkpoint has {} events, the server now signs {}",
            sc.size + 4,
            sc.size
        )
    );
    let result = verify_online(&server, &sc.key, &sc.checkpoint, &["--update"]);
    assert!(failure("rolled back, --update", &result).contains("shrank"));
    assert_eq!(
        sc.saved_note(),
        saved_grown,
        "a failed verification never replaces the saved checkpoint"
    );
    stop(&mut server);
}

/// A script must tell "tampered" (exit 1) from "could not check" (exit 2): an unreachable server, a
/// malformed key or a position past the log is an error, not a verdict.
#[test]
fn errors_are_not_verdicts() {
    let key =
        claims_ledger_core::checkpoint::Signer::from_seed("claims-ledger.local/log", &[7; 32])
            .expect("signer")
            .verifier()
            .public_key_string();
    let (code, json) = cli_json(&[
        "verify",
        "--server",
        "http://127.0.0.1:1",
        "--key",
        &key,
        "--json",
    ]);
    assert_eq!(code, 2, "{json}");
    assert_eq!(json["ok"], false, "{json}");
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("connecting")),
        "{json}"
    );
    let (code, json) = cli_json(&[
        "verify",
        "--server",
        "http://127.0.0.1:1",
        "--key",
        "not-a-key",
        "--json",
    ]);
    assert_eq!(code, 2, "{json}");
    assert!(
        json["error"].as_str().is_some_and(|e| e.contains("--key")),
        "{json}"
    );
}
