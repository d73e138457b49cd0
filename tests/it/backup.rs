//! Backup and restore: an export taken while four writers write is exactly the prefix of the log at
//! the head it read, and restores byte for byte (same head hash, same Merkle root, same stored bytes,
//! a server starts on it and extends the chain). Every kind of damage to an export is refused at the
//! line that shows it, leaving no directory behind; a directory that holds anything is refused.
use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claims_ledger_cli::backup::{export, restore_file, RestoreError, FORMAT};
use claims_ledger_log::verify::verify_dir;
use claims_ledger_log::{sha256, LogOptions};
use claims_ledger_proto as pb;
use claims_ledger_server::app::App;
use common::*;
use serde_json::Value;

async fn load_demo(s: &TestServer) {
    let dataset = claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL)
        .expect("dataset");
    s.app
        .load_dataset(&dataset, "demo-loader")
        .await
        .expect("load demo");
}

/// The export's lines.
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read export")
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write export");
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).expect("JSON line")
}

/// Restores `from` into a new directory under `tmp`, expecting a failure; checks that nothing is
/// left behind (neither the target nor a temporary directory beside it).
fn restore_fails(tmp: &Path, from: &Path) -> RestoreError {
    let target = tmp.join("restored");
    let before: Vec<_> = entries(tmp);
    let err = restore_file(from, &target).expect_err("a damaged export must not restore");
    assert!(!target.exists(), "the failed restore left {target:?}");
    assert_eq!(entries(tmp), before, "the failed restore left files behind");
    err
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `verify_dir` (its open waits for a lock still being released); the log must verify.
fn verify(dir: &Path) -> claims_ledger_log::verify::VerifyReport {
    verify_dir(dir)
        .unwrap_or_else(|e| panic!("open {dir:?}: {e}"))
        .expect("the log verifies")
}

fn open_app(dir: &Path) -> App {
    App::open(dir, LogOptions::default()).unwrap_or_else(|e| panic!("open {dir:?}: {e}"))
}

/// Registers a speaker and a source to write statements against; returns the source id.
async fn seed_writers(s: &TestServer) -> String {
    let mut c = s.ledger().await;
    c.register_party(pb::RegisterPartyRequest {
        command: Some(party("backup-speaker", pb::PartyKind::Person)),
        ..Default::default()
    })
    .await
    .expect("speaker");
    c.register_source(pb::RegisterSourceRequest {
        command: Some(source()),
        ..Default::default()
    })
    .await
    .expect("source")
    .into_inner()
    .source_id
}

/// Writes until `stop`: new parties, updates of one shared party (a stream of many index chunks) and
/// statements. Returns the number of writes.
async fn writer(s_addr: String, i: usize, source_id: String, stop: Arc<AtomicBool>) -> u64 {
    let channel = tonic::transport::Endpoint::from_shared(s_addr)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut c = pb::ledger_client::LedgerClient::new(channel);
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match k % 3 {
            0 => {
                c.register_party(pb::RegisterPartyRequest {
                    command: Some(party(&format!("writer-{i}-{k}"), pb::PartyKind::Person)),
                    ..Default::default()
                })
                .await
                .expect("register party");
            }
            1 => {
                c.update_party(pb::UpdatePartyRequest {
                    command: Some(pb::UpdatePartyCommand {
                        party_id: "backup-speaker".into(),
                        kind: pb::PartyKind::Person as i32,
                        name: format!("Speaker {i}.{k}"),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .expect("update party");
            }
            _ => {
                c.record_statement(pb::RecordStatementRequest {
                    command: Some(statement("backup-speaker", &source_id, "wants Crimea back")),
                    ..Default::default()
                })
                .await
                .expect("record statement");
            }
        }
        k += 1;
    }
    k
}

async fn wait_for_count(s: &TestServer, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.head().await.event_count < at_least {
        assert!(Instant::now() < deadline, "writers too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_under_concurrent_writes_restores_byte_for_byte() {
    let s = TestServer::start().await;
    load_demo(&s).await;
    let demo = s.head().await.event_count;
    let source_id = seed_writers(&s).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(s.addr.clone(), i, source_id.clone(), stop.clone())))
        .collect();
    // A consumer that keeps acknowledging the head: by the time the export reads its cursor, it is
    // usually past the exported events, and must be lowered to their count.
    let acker = {
        let (addr, stop) = (s.addr.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ev = pb::events_client::EventsClient::connect(addr)
                .await
                .expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let head = ev
                    .get_head(pb::GetHeadRequest {})
                    .await
                    .expect("head")
                    .into_inner()
                    .event_count;
                ev.ack(pb::AckRequest {
                    subscription_name: "live-consumer".into(),
                    position: head,
                })
                .await
                .expect("ack");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // More than one ReadAll page and one import batch, and the shared party past one index chunk.
    wait_for_count(&s, 1100).await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("ledger.ndjson");
    assert_eq!(export(&s.addr, &out, false).await.expect("export"), 0);

    let text = lines(&out);
    let header = json(&text[0]);
    let n = header["event_count"].as_u64().expect("event_count");
    // The writers kept writing through the export and after it.
    wait_for_count(&s, n + 40).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.await.expect("writer") > 0);
    }
    acker.await.expect("acker");
    assert!(n >= 1100 && n > demo);
    // The consumer's cursor, never beyond the exported events, just before the trailer.
    let cursor = json(&text[n as usize + 1]);
    assert_eq!(cursor["cursor"]["name"], "live-consumer");
    assert!(cursor["cursor"]["position"].as_u64().expect("position") <= n);
    assert!(
        s.head().await.event_count > n,
        "writes continued after the head was read"
    );

    // The file: header, exactly positions 0..n, the one cursor, trailer; no temporary file beside it.
    assert_eq!(entries(tmp.path()), vec!["ledger.ndjson".to_string()]);
    assert_eq!(header["format"], FORMAT);
    assert_eq!(text.len() as u64, n + 3);
    for (i, line) in text[1..=n as usize].iter().enumerate() {
        assert_eq!(json(line)["position"].as_u64(), Some(i as u64));
    }
    let trailer = json(&text[n as usize + 2]);
    assert_eq!(trailer["end"]["cursors"], 1);
    let head_hash = header["head_hash"].as_str().expect("head_hash").to_string();
    assert_eq!(trailer["end"]["event_count"].as_u64(), Some(n));
    assert_eq!(
        trailer["end"]["head_hash"].as_str(),
        Some(head_hash.as_str())
    );
    let root = trailer["end"]["merkle_root"]
        .as_str()
        .expect("merkle_root")
        .to_string();

    // The source agrees: its event n-1 has the head hash, its signed tree of n events that root.
    let last = s
        .events()
        .await
        .read_all(pb::ReadAllRequest {
            from_position: n - 1,
            max_count: 1,
            ..Default::default()
        })
        .await
        .expect("read_all")
        .into_inner()
        .events
        .remove(0);
    assert_eq!(last.position, n - 1);
    assert_eq!(last.hash, head_hash);
    let checkpoint = pb::audit_client::AuditClient::new(s.channel().await)
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: Some(n) })
        .await
        .expect("checkpoint")
        .into_inner()
        .checkpoint
        .expect("checkpoint");
    assert_eq!(checkpoint.tree_size, n);
    assert_eq!(hex::encode(&checkpoint.root_hash), root);

    // Restore into an existing empty directory (a TempDir, so a server can start on it after).
    let restored_dir = tempfile::tempdir().expect("tempdir");
    let restored = tokio::task::spawn_blocking({
        let (out, dir) = (out.clone(), restored_dir.path().to_path_buf());
        move || restore_file(&out, &dir)
    })
    .await
    .expect("join")
    .expect("restore");
    assert_eq!(restored.events, n);
    assert!(restored.merkle_root_checked);
    assert_eq!(hex::encode(restored.head_hash), head_hash);
    assert_eq!(hex::encode(restored.merkle_root), root);
    let report = verify(restored_dir.path());
    assert_eq!(report.events, n);
    assert_eq!(hex::encode(report.head_hash), head_hash);
    assert_eq!(report.merkle_root.map(hex::encode), Some(root.clone()));

    // The restored log reads back the source's exact bytes at every position.
    let copy = open_app(restored_dir.path());
    assert_eq!(copy.log().durable_count(), n);
    let mut pos = 0;
    while pos < n {
        let ours = copy.log().read_all(pos, false, 500).expect("read restored");
        let theirs = s
            .app
            .log()
            .read_all(pos, false, ours.len())
            .expect("read source");
        assert!(!ours.is_empty());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.position, b.position);
            assert_eq!(a.stored, b.stored, "stored bytes differ at {}", a.position);
            assert_eq!(a.hash, b.hash);
        }
        pos += ours.len() as u64;
    }
    assert!(copy.log().get(n).expect("read past the end").is_none());
    // The index: the shared party's stream has the same revisions up to the export.
    let shared_revs = copy
        .log()
        .stream_revision("party-backup-speaker")
        .expect("revision")
        .expect("stream exists");
    assert!(shared_revs >= 64, "the shared stream spans index chunks");
    let theirs = s
        .app
        .log()
        .read_stream("party-backup-speaker", 0, false, shared_revs as usize + 1)
        .expect("source stream");
    let ours = copy
        .log()
        .read_stream("party-backup-speaker", 0, false, usize::MAX)
        .expect("restored stream");
    assert_eq!(ours.len() as u64, shared_revs + 1);
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.stored, b.stored);
    }
    copy.finish().await;
    drop(copy);
    s.stop().await;

    // A server on the restored directory serves it and extends its chain.
    let s2 = TestServer::start_in(restored_dir).await;
    let r = s2
        .ledger()
        .await
        .register_party(pb::RegisterPartyRequest {
            command: Some(party("after-restore", pb::PartyKind::State)),
            ..Default::default()
        })
        .await
        .expect("write after restore")
        .into_inner()
        .result
        .expect("result");
    assert_eq!(r.events[0].position, n);
    let next = s2.app.log().get(n).expect("read").expect("event n");
    assert_eq!(hex::encode(next.prev_hash), head_hash);
    let dir = s2.stop().await;
    let report = verify(dir.path());
    assert_eq!(report.events, n + 1);
}

/// A source log with the demo, a shared party and a few statements, exported; returns the server's
/// directory (kept alive) and the export's lines.
async fn exported(tmp: &Path) -> (TestServer, PathBuf, Vec<String>) {
    let s = TestServer::start().await;
    load_demo(&s).await;
    let source_id = seed_writers(&s).await;
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(s.addr.clone(), 0, source_id, stop.clone()));
    wait_for_count(&s, 90).await;
    stop.store(true, Ordering::Relaxed);
    w.await.expect("writer");
    let out = tmp.join("good.ndjson");
    assert_eq!(export(&s.addr, &out, true).await.expect("export"), 0);
    let text = lines(&out);
    (s, out, text)
}

/// Rewrites one field of an event line's JSON.
fn edit(line: &str, f: impl FnOnce(&mut Value)) -> String {
    let mut v = json(line);
    f(&mut v);
    serde_json::to_string(&v).expect("serialize")
}

fn assert_line(err: &RestoreError, line: u64, says: &str) {
    assert_eq!(err.line, Some(line), "{err}");
    assert!(
        err.reason.contains(says),
        "expected {says:?} in the reason: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_damaged_export_fails_at_its_line_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (s, good, text) = exported(tmp.path()).await;
    let n = text.len() - 2;
    assert!(n > 60);
    let bad = tmp.path().join("bad.ndjson");
    let fail = |lines: &[String]| {
        write_lines(&bad, lines);
        restore_fails(tmp.path(), &bad)
    };

    // The untouched export restores (and is reused below as the base for each kind of damage).
    let ok_dir = tmp.path().join("ok");
    let ok = restore_file(&good, &ok_dir).expect("the good export restores");
    assert_eq!(ok.events as usize, n);

    // One character flipped inside `stored` on line 10.
    let mut t = text.clone();
    t[9] = edit(&t[9], |v| {
        let stored = v["stored"].as_str().expect("stored").to_string();
        let flipped = stored.replacen("\"stream_revision\":0", "\"stream_revision\":1", 1);
        assert_ne!(stored, flipped);
        v["stored"] = Value::String(flipped);
    });
    assert_line(&fail(&t), 10, "do not match the hash");

    // A payload field changed on line 12 (not in `stored`): it must equal the stored record's.
    let mut t = text.clone();
    t[11] = edit(&t[11], |v| {
        let payload = v["payload"].as_object_mut().expect("payload object");
        payload.insert("injected".into(), Value::Bool(true));
    });
    assert_line(
        &fail(&t),
        12,
        "payload.injected is true on the line but absent",
    );

    // An envelope field changed on line 13.
    let mut t = text.clone();
    t[12] = edit(&t[12], |v| {
        v["recorded_by"] = Value::String("mallory".into())
    });
    assert_line(&fail(&t), 13, "recorded_by");

    // Line 20 deleted: the line now at 20 has the next position.
    let mut t = text.clone();
    t.remove(19);
    assert_line(&fail(&t), 20, "the line of position 18 is missing");

    // Line 20 repeated.
    let mut t = text.clone();
    t.insert(20, t[19].clone());
    assert_line(&fail(&t), 21, "repeated");

    // The trailer dropped: a truncated export, failing at the last line read.
    let t = text[..=n].to_vec();
    assert_line(
        &fail(&t),
        n as u64 + 1,
        "truncated export: the trailer is missing",
    );

    // The file cut in the middle of line 15.
    let mut cut = text[..14].join("\n");
    cut.push('\n');
    cut.push_str(&text[14][..text[14].len() / 2]);
    std::fs::write(&bad, cut).expect("write");
    assert_line(&restore_fails(tmp.path(), &bad), 15, "truncated");

    // Not JSON.
    let mut t = text.clone();
    t[30] = "{\"position\": 29,".into();
    assert_line(&fail(&t), 31, "not valid JSON");

    // An unknown format.
    let mut t = text.clone();
    t[0] = edit(&t[0], |v| {
        v["format"] = Value::String("claims-ledger/export/v9".into())
    });
    assert_line(&fail(&t), 1, "unknown format");

    // The trailer's head hash altered.
    let mut t = text.clone();
    t[n + 1] = edit(&t[n + 1], |v| {
        v["end"]["head_hash"] = Value::String("ab".repeat(32))
    });
    assert_line(&fail(&t), n as u64 + 2, "the trailer");

    // A line whose stored record was rewritten and rehashed consistently (prev_hash changed in the
    // record and the envelope): its own hash checks, but it no longer links to line 24.
    let mut t = text.clone();
    t[24] = edit(&t[24], |v| {
        let fake = "cd".repeat(32);
        let old = v["prev_hash"].as_str().expect("prev_hash").to_string();
        let stored = v["stored"].as_str().expect("stored").replace(&old, &fake);
        v["hash"] = Value::String(hex::encode(sha256(stored.as_bytes())));
        v["stored"] = Value::String(stored);
        v["prev_hash"] = Value::String(fake);
    });
    assert_line(&fail(&t), 25, "does not link");

    // The last event rewritten and rehashed, with header and trailer updated to match: only the
    // server's Merkle root in the trailer shows it.
    let mut t = text.clone();
    let mut new_head = String::new();
    t[n] = edit(&t[n], |v| {
        let by = v["recorded_by"].as_str().expect("recorded_by").to_string();
        let stored = v["stored"].as_str().expect("stored").replace(
            &format!("\"recorded_by\":\"{by}\""),
            "\"recorded_by\":\"mallory\"",
        );
        new_head = hex::encode(sha256(stored.as_bytes()));
        v["hash"] = Value::String(new_head.clone());
        v["stored"] = Value::String(stored);
        v["recorded_by"] = Value::String("mallory".into());
    });
    t[0] = edit(&t[0], |v| v["head_hash"] = Value::String(new_head.clone()));
    t[n + 1] = edit(&t[n + 1], |v| {
        v["end"]["head_hash"] = Value::String(new_head.clone())
    });
    assert_line(&fail(&t), n as u64 + 2, "Merkle root");

    // Something after the trailer.
    let mut t = text.clone();
    t.push(t[5].clone());
    assert_line(&fail(&t), n as u64 + 3, "after the trailer");

    // A failed restore into an existing empty directory leaves it empty.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let err = restore_file(&bad, &empty).expect_err("damaged");
    assert!(err.line.is_some(), "{err}");
    assert!(entries(&empty).is_empty(), "left {:?}", entries(&empty));

    // A target that holds a log, or anything at all, is refused and left as it was.
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).expect("mkdir");
    std::fs::write(full.join("db"), b"not mine").expect("write");
    let err = restore_file(&good, &full).expect_err("refused");
    assert_eq!(err.line, None);
    assert!(err.reason.contains("already holds a log"), "{err}");
    assert_eq!(std::fs::read(full.join("db")).expect("read"), b"not mine");
    std::fs::remove_file(full.join("db")).expect("rm");
    std::fs::write(full.join("notes.txt"), b"x").expect("write");
    let err = restore_file(&good, &full).expect_err("refused");
    assert!(err.reason.contains("is not empty"), "{err}");
    assert_eq!(entries(&full), vec!["notes.txt".to_string()]);

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_log_round_trips() {
    let s = TestServer::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("empty.ndjson");
    assert_eq!(export(&s.addr, &out, false).await.expect("export"), 0);
    let text = lines(&out);
    assert_eq!(text.len(), 2);
    assert_eq!(json(&text[0])["event_count"].as_u64(), Some(0));
    let dir = tmp.path().join("restored");
    let r = restore_file(&out, &dir).expect("restore");
    assert_eq!(r.events, 0);
    let report = verify(&dir);
    assert_eq!(report.events, 0);
    s.stop().await;
}

/// Runs the binary with `args` off the runtime; returns its exit code and stdout.
async fn run_bin(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(bin())
            .args(&args)
            .output()
            .expect("run the binary");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_restores_and_names_the_bad_line() {
    let s = TestServer::start().await;
    load_demo(&s).await;
    let n = s.head().await.event_count;
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("cli.ndjson");
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (code, stdout) = run_bin(vec![
        "export".into(),
        "--server".into(),
        s.addr.clone(),
        "--out".into(),
        path(&out),
        "--json".into(),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}");
    let summary = json(stdout.trim());
    assert_eq!(summary["events"].as_u64(), Some(n));

    let dir = tmp.path().join("restored");
    let (code, stdout) = run_bin(vec![
        "restore".into(),
        "--from".into(),
        path(&out),
        "--data-dir".into(),
        path(&dir),
        "--json".into(),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}");
    let r = json(stdout.trim());
    assert_eq!(r["ok"], true);
    assert_eq!(r["events"].as_u64(), Some(n));
    assert_eq!(r["head_hash"], summary["head_hash"]);
    assert_eq!(r["merkle_root"], summary["merkle_root"]);

    let mut t = lines(&out);
    t[7] = edit(&t[7], |v| {
        let stored = v["stored"].as_str().expect("stored").replacen('a', "b", 1);
        v["stored"] = Value::String(stored);
    });
    let bad = tmp.path().join("bad.ndjson");
    write_lines(&bad, &t);
    let dir2 = tmp.path().join("restored2");
    let (code, stdout) = run_bin(vec![
        "restore".into(),
        "--from".into(),
        path(&bad),
        "--data-dir".into(),
        path(&dir2),
        "--json".into(),
    ])
    .await;
    assert_eq!(code, 1, "{stdout}");
    let r = json(stdout.trim());
    assert_eq!(r["ok"], false);
    assert_eq!(r["line"].as_u64(), Some(8));
    assert!(!dir2.exists());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_are_exported_in_smaller_pages() {
    // 150 sources of ~62 KB: their envelopes (typed payload and stored bytes) come to about 19 MB,
    // above the 16 MiB the export accepts in one response, so they cannot come in one page.
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    let filler = "The delegations met again in Istanbul. ".repeat(1600);
    assert!(filler.len() > 60_000 && filler.len() <= 65_536);
    for batch in 0..5 {
        let commands = (0..30)
            .map(|i| pb::BatchCommand {
                expected_revision: None,
                command: Some(pb::batch_command::Command::RegisterSource(
                    pb::RegisterSourceCommand {
                        title: format!("Istanbul talks, part {batch}.{i}"),
                        text: filler.clone(),
                        ..source()
                    },
                )),
            })
            .collect();
        c.submit_batch(pb::SubmitBatchRequest {
            options: None,
            commands,
        })
        .await
        .expect("submit sources");
    }
    let n = s.head().await.event_count;
    assert_eq!(n, 150);
    let envelopes = s
        .app
        .log()
        .read_all(0, false, 150)
        .expect("read")
        .iter()
        .map(|rec| claims_ledger_server::grpc::convert::envelope_pb(rec).expect("envelope"))
        .map(|env| prost::Message::encoded_len(&env))
        .sum::<usize>();
    assert!(envelopes > 16 << 20, "{envelopes} bytes fit one response");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("large.ndjson");
    assert_eq!(export(&s.addr, &out, false).await.expect("export"), 0);
    assert_eq!(lines(&out).len(), 152);
    let dir = tmp.path().join("restored");
    let r = tokio::task::spawn_blocking(move || restore_file(&out, &dir))
        .await
        .expect("join")
        .expect("restore");
    assert_eq!(r.events, 150);
    assert!(r.merkle_root_checked);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_survives_a_restore() {
    let s = TestServer::start().await;
    load_demo(&s).await;
    let dataset = claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL)
        .expect("dataset");
    let mut c = s.ledger().await;
    // One append of three events under one key, then a write with no key.
    let keyed_batch = |name: &str| pb::SubmitBatchRequest {
        options: Some(pb::WriteOptions {
            idempotency_key: "batch-1".into(),
            ..Default::default()
        }),
        ..batch_of(vec![
            pb::batch_command::Command::RegisterParty(party("p-one", pb::PartyKind::Person)),
            pb::batch_command::Command::RegisterParty(pb::RegisterPartyCommand {
                name: name.into(),
                ..party("p-two", pb::PartyKind::Person)
            }),
            pb::batch_command::Command::RegisterParty(party("p-three", pb::PartyKind::Person)),
        ])
    };
    let original = c
        .submit_batch(keyed_batch("Two"))
        .await
        .expect("batch")
        .into_inner()
        .result
        .expect("result");
    assert_eq!(original.events.len(), 3);
    let unkeyed = pb::RegisterPartyRequest {
        command: Some(party("p-unkeyed", pb::PartyKind::Person)),
        ..Default::default()
    };
    c.register_party(unkeyed.clone()).await.expect("unkeyed");

    // The batch's first event names its key, in the envelope and in the hashed bytes; the others don't.
    let envelope = |events: &mut pb::events_client::EventsClient<_>, position| {
        let mut events = events.clone();
        async move {
            events
                .read_all(pb::ReadAllRequest {
                    from_position: position,
                    max_count: 1,
                    ..Default::default()
                })
                .await
                .expect("read_all")
                .into_inner()
                .events
                .remove(0)
        }
    };
    let mut events = s.events().await;
    let first = envelope(&mut events, original.events[0].position).await;
    assert_eq!(first.idempotency_key, "batch-1");
    assert!(String::from_utf8_lossy(&first.stored_bytes).contains(r#""key":"batch-1""#));
    let second = envelope(&mut events, original.events[1].position).await;
    assert_eq!(second.idempotency_key, "");

    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("ledger.ndjson");
    assert_eq!(export(&s.addr, &out, false).await.expect("export"), 0);
    s.stop().await;
    let restored = tempfile::tempdir().expect("tempdir");
    let r = restore_file(&out, restored.path()).expect("restore");
    assert_eq!(r.idempotency_records, dataset.commands.len() as u64 + 1);

    let r = TestServer::start_in(restored).await;
    let n = r.head().await.event_count;
    // Loading the demo again recognises every one of its writes.
    let report = r
        .app
        .load_dataset(&dataset, "demo-loader")
        .await
        .expect("reload");
    assert_eq!(
        (report.written, report.already_present),
        (0, dataset.commands.len())
    );
    // The batch again: the original answer, nothing written.
    let mut c = r.ledger().await;
    let again = c
        .submit_batch(keyed_batch("Two"))
        .await
        .expect("retry")
        .into_inner()
        .result
        .expect("result");
    assert!(again.deduplicated);
    assert_eq!(again.events, original.events);
    assert_eq!(again.recorded_at, original.recorded_at);
    // Other content under the same key is refused, as on the original server.
    let err = c
        .submit_batch(keyed_batch("Deux"))
        .await
        .expect_err("reused key");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let info = tonic_types::StatusExt::get_details_error_info(&err).expect("error info");
    assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
    // A write that had no key is decided again (and refused here: the party exists).
    let err = c.register_party(unkeyed).await.expect_err("taken id");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert_eq!(r.head().await.event_count, n, "no retry wrote anything");
    // A new key appends after the restored chain.
    let fresh = c
        .register_party(pb::RegisterPartyRequest {
            options: Some(pb::WriteOptions {
                idempotency_key: "after-restore".into(),
                ..Default::default()
            }),
            command: Some(party("p-four", pb::PartyKind::Person)),
            ..Default::default()
        })
        .await
        .expect("fresh")
        .into_inner()
        .result
        .expect("result");
    assert!(!fresh.deduplicated);
    assert_eq!(fresh.events[0].position, n);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_cursors_survive_a_restore_and_bad_cursor_lines_are_named() {
    let s = TestServer::start().await;
    load_demo(&s).await;
    let n = s.head().await.event_count;
    let mut ev = s.events().await;
    for (name, position) in [("omega.search", n), ("alpha-alerts", 5)] {
        ev.ack(pb::AckRequest {
            subscription_name: name.into(),
            position,
        })
        .await
        .expect("ack");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("ledger.ndjson");
    assert_eq!(export(&s.addr, &out, false).await.expect("export"), 0);
    s.stop().await;

    // Header, n events, the cursors in name order, then the trailer that counts them.
    let text = lines(&out);
    let n_us = n as usize;
    assert_eq!(text.len(), n_us + 4);
    assert_eq!(json(&text[n_us + 1])["cursor"]["name"], "alpha-alerts");
    assert_eq!(json(&text[n_us + 1])["cursor"]["position"], 5);
    assert_eq!(json(&text[n_us + 2])["cursor"]["name"], "omega.search");
    assert_eq!(json(&text[n_us + 3])["end"]["cursors"], 2);

    let restored = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        restore_file(&out, restored.path())
            .expect("restore")
            .cursors,
        2
    );
    let r = TestServer::start_in(restored).await;
    let listed = r
        .events()
        .await
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .subscriptions;
    let got: Vec<_> = listed
        .iter()
        .map(|s| (s.subscription_name.as_str(), s.acknowledged_position))
        .collect();
    assert_eq!(got, [("alpha-alerts", 5), ("omega.search", n)]);
    r.stop().await;

    // Damage, each named by its line.
    let bad = tmp.path().join("bad.ndjson");
    let fail = |lines: &[String]| {
        write_lines(&bad, lines);
        restore_fails(tmp.path(), &bad)
    };
    let cursor_at = n_us + 1;
    let trailer_at = n_us + 3;
    // A cursor line before the last event.
    let mut t = text.clone();
    let c = t.remove(cursor_at);
    t.insert(n_us, c);
    assert_line(&fail(&t), n as u64 + 1, "cursors follow the last event");
    // Out of name order.
    let mut t = text.clone();
    t.swap(cursor_at, cursor_at + 1);
    assert_line(&fail(&t), cursor_at as u64 + 2, "out of name order");
    // An invalid name; a position beyond the events.
    let mut t = text.clone();
    t[cursor_at] = edit(&t[cursor_at], |v| v["cursor"]["name"] = "no spaces".into());
    assert_line(
        &fail(&t),
        cursor_at as u64 + 1,
        "not a valid subscription name",
    );
    let mut t = text.clone();
    t[cursor_at] = edit(&t[cursor_at], |v| v["cursor"]["position"] = (n + 1).into());
    assert_line(&fail(&t), cursor_at as u64 + 1, "alpha-alerts");
    // A dropped cursor line: the trailer's count disagrees.
    let mut t = text.clone();
    t.remove(cursor_at);
    assert_line(&fail(&t), trailer_at as u64, "cursor lines");
    // A v1 export holds no cursor lines ...
    let mut t = text.clone();
    t[0] = edit(&t[0], |v| v["format"] = "claims-ledger/export/v1".into());
    assert_line(&fail(&t), cursor_at as u64 + 1, "a cursor line in a");
    // ... and without them (nor a count in the trailer) it still restores.
    t.drain(cursor_at..trailer_at);
    let last = t.len() - 1;
    t[last] = edit(&t[last], |v| {
        v["end"].as_object_mut().expect("end").remove("cursors");
    });
    write_lines(&bad, &t);
    let v1 = restore_file(&bad, &tmp.path().join("from-v1")).expect("a v1 export restores");
    assert_eq!((v1.events, v1.cursors), (n, 0));
}
