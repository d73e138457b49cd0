//! `claims-ledger verify --server URL`: an auditor's check of a running ledger that trusts nothing it
//! is sent. It fetches the latest signed checkpoint and checks its signature with a pinned verifier
//! key; with a saved checkpoint it checks a consistency proof from it (a shrunk or forked log fails);
//! with `--event POS` it checks that event's stored bytes and inclusion proof against a signed
//! checkpoint. Every hash is recomputed on this side; the fields the server sends beside the signed note are
//! ignored in favour of the note itself.
//!
//! The checks themselves are the client library's auditor (`claims_ledger_client::audit`); this
//! module keeps the saved checkpoint file, the report and the exit codes.
use std::path::Path;

use anyhow::Context as _;

pub use claims_ledger_client::audit::{check_consistency, check_inclusion, Failed};
use claims_ledger_client::audit::{merkle, AuditError, Auditor, Verifier};

use super::connect::{call_error, connection};

/// What the auditor asked for.
pub struct AuditArgs<'a> {
    pub server: &'a str,
    /// The pinned verifier key (`name+keyid+base64`).
    pub key: &'a str,
    /// A checkpoint saved earlier (created on first use).
    pub checkpoint: Option<&'a Path>,
    pub event: Option<u64>,
    /// Replace the saved checkpoint with the newly verified one.
    pub update: bool,
    pub json: bool,
}

/// Splits an auditor's answer into "could not check" (the outer error) and "checked, failed".
fn checked<T>(r: Result<T, AuditError>) -> anyhow::Result<Result<T, Failed>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(AuditError::Failed(f)) => Ok(Err(f)),
        Err(AuditError::Unchecked(e)) => Err(call_error(e)),
    }
}

async fn audit(
    args: &AuditArgs<'_>,
    auditor: &Auditor,
) -> anyhow::Result<Result<serde_json::Value, Failed>> {
    let client = connection(args.server).await?.audit();
    let latest = match checked(auditor.latest(&client).await)? {
        Ok(v) => v,
        Err(f) => return Ok(Err(f)),
    };
    let new = &latest.checkpoint;
    let mut report = serde_json::json!({
        "ok": true, "origin": new.origin, "tree_size": new.size,
        "root": hex::encode(new.root), "timestamp": new.timestamp.to_rfc3339(),
    });
    if let Some(path) = args.checkpoint.filter(|p| p.exists()) {
        let saved =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let old = match auditor.open(&saved) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(Failed::new(format!(
                    "the saved checkpoint {} does not verify with this key: {e}",
                    path.display()
                ))))
            }
        };
        if let Err(f) = checked(auditor.check_extends(&client, &old, new).await)? {
            return Ok(Err(f));
        }
        report["consistent_with_saved"] = serde_json::json!(old.size);
    }
    if let Some(position) = args.event {
        let event = match checked(auditor.check_event(&client, new, position).await)? {
            Ok(e) => e,
            Err(f) => return Ok(Err(f)),
        };
        report["event"] = serde_json::json!({
            "position": position, "type": event.event_type, "stream": event.stream,
            "leaf_hash": hex::encode(merkle::leaf_hash(&event.stored_bytes)),
        });
    }
    if let Some(path) = args.checkpoint {
        if args.update || !path.exists() {
            save(path, &latest.note)?;
            report["saved"] = serde_json::json!(path.display().to_string());
        }
    }
    Ok(Ok(report))
}

/// Writes `note` to `path` so that a crash leaves the old file or the new one, never half of one.
fn save(path: &Path, note: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(note.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Exit code when the log was checked and does not verify.
pub const EXIT_FAILED: i32 = 1;
/// Exit code when it could not be checked at all (server unreachable, bad key, bad request).
pub const EXIT_ERROR: i32 = 2;

/// Runs the online audit: exit code 0 when everything verified, [`EXIT_FAILED`] when something did
/// not, [`EXIT_ERROR`] when the check could not be made — so a script can tell tampering from an outage.
pub async fn run(args: AuditArgs<'_>) -> anyhow::Result<i32> {
    let checked = match Verifier::from_public_key_string(args.key.trim()) {
        Ok(verifier) => {
            let name = verifier.name().to_string();
            audit(&args, &Auditor::new(verifier))
                .await
                .map(|r| (r, name))
        }
        Err(e) => Err(anyhow::anyhow!("--key is not a verifier key: {e}")),
    };
    let (result, key_name) = match checked {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": format!("{e:#}")})
                );
            } else {
                eprintln!("could not verify: {e:#}");
            }
            return Ok(EXIT_ERROR);
        }
    };
    match result {
        Ok(report) => {
            if args.json {
                println!("{report}");
            } else {
                println!(
                    "ok: checkpoint of {} events signed by {} verifies (root {}){}{}",
                    report["tree_size"],
                    key_name,
                    report["root"].as_str().unwrap_or_default(),
                    report
                        .get("consistent_with_saved")
                        .map_or(String::new(), |s| format!(
                            "; it extends the saved checkpoint of {s} events"
                        )),
                    report.get("event").map_or(String::new(), |e| format!(
                        "; event {} is included",
                        e["position"]
                    )),
                );
            }
            Ok(0)
        }
        Err(f) => {
            if args.json {
                println!("{}", serde_json::json!({"ok": false, "reason": f.reason()}));
            } else {
                eprintln!("VERIFICATION FAILED: {}", f.reason());
            }
            Ok(EXIT_FAILED)
        }
    }
}

/// `claims-ledger public-key`: the server's verifier key. Fetching it from the server you are about
/// to audit only helps on first contact; pin it, and compare it with one obtained out of band.
pub async fn public_key(server: &str) -> anyhow::Result<i32> {
    let r = connection(server)
        .await?
        .audit()
        .get_public_key()
        .await
        .map_err(call_error)?;
    println!("{}", r.verifier_key);
    Ok(0)
}
