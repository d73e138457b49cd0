//! `claims-ledger verify --server URL`: an auditor's check of a running ledger that trusts nothing it
//! is sent. It fetches the latest signed checkpoint and checks its signature with a pinned verifier
//! key; with a saved checkpoint it checks a consistency proof from it (a shrunk or forked log fails);
//! with `--event POS` it checks that event's stored bytes and inclusion proof against a signed
//! checkpoint. Every hash is recomputed here; the fields the server sends beside the signed note are
//! ignored in favour of the note itself.
use std::path::Path;

use anyhow::Context as _;

use claims_ledger_core::checkpoint::{Checkpoint, Verifier};
use claims_ledger_core::merkle;
use claims_ledger_proto as pb;

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

/// A verification failure: the log is not what an earlier, signed view says it was.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(String);

fn hash32(bytes: &[u8], what: &str) -> Result<merkle::Hash, Failed> {
    bytes
        .try_into()
        .map_err(|_| Failed(format!("{what} is {} bytes, not 32", bytes.len())))
}

fn hashes(list: &[Vec<u8>], what: &str) -> Result<Vec<merkle::Hash>, Failed> {
    list.iter().map(|h| hash32(h, what)).collect()
}

/// Checks `proof` (as sent) for the event whose exact stored bytes are `stored`, at `position`, in
/// the tree of `cp`. Exposed so tests can feed it forged proofs.
pub fn check_inclusion(
    cp: &Checkpoint,
    position: u64,
    stored: &[u8],
    proof: &pb::InclusionProof,
) -> Result<(), Failed> {
    if proof.position != position || proof.tree_size != cp.size {
        return Err(Failed(format!(
            "the proof is for position {} in a tree of {}, not position {position} in the checkpoint's {}",
            proof.position, proof.tree_size, cp.size
        )));
    }
    let leaf = merkle::leaf_hash(stored);
    let path = hashes(&proof.hashes, "an inclusion proof hash")?;
    merkle::verify_inclusion(&leaf, position, cp.size, &path, &cp.root).map_err(|e| {
        Failed(format!(
            "event {position} is not in the signed tree of {} events: {e}",
            cp.size
        ))
    })
}

/// Checks that `new` extends `old` by `proof`; a smaller or forked log fails.
pub fn check_consistency(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &[Vec<u8>],
) -> Result<(), Failed> {
    if old.origin != new.origin {
        return Err(Failed(format!(
            "origin changed from {:?} to {:?}",
            old.origin, new.origin
        )));
    }
    if new.size < old.size {
        return Err(Failed(format!(
            "the log shrank: the saved checkpoint has {} events, the server now signs {}",
            old.size, new.size
        )));
    }
    let path = hashes(proof, "a consistency proof hash")?;
    merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &path).map_err(|e| {
        Failed(format!(
            "the log of {} events does not extend the saved one of {} (forked or rewritten): {e}",
            new.size, old.size
        ))
    })
}

/// The record's own idea of its position, from its stored JSON.
fn stored_position(stored: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(stored)
        .ok()?
        .get("position")?
        .as_u64()
}

async fn audit(
    args: &AuditArgs<'_>,
    verifier: &Verifier,
) -> anyhow::Result<Result<serde_json::Value, Failed>> {
    let mut client =
        pb::audit_client::AuditClient::new(super::connect::connect(args.server).await?);
    let status = |s: tonic::Status| anyhow::anyhow!("{}: {}", s.code(), s.message());
    let note = client
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: None })
        .await
        .map_err(status)?
        .into_inner()
        .checkpoint
        .map(|c| c.note)
        .unwrap_or_default();
    let new = match Checkpoint::open(&note, verifier) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Err(Failed(format!(
                "the server's checkpoint does not verify: {e}"
            ))))
        }
    };
    let mut report = serde_json::json!({
        "ok": true, "origin": new.origin, "tree_size": new.size,
        "root": hex::encode(new.root), "timestamp": new.timestamp.to_rfc3339(),
    });
    if let Some(path) = args.checkpoint.filter(|p| p.exists()) {
        let saved =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let old = match Checkpoint::open(&saved, verifier) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(Failed(format!(
                    "the saved checkpoint {} does not verify with this key: {e}",
                    path.display()
                ))))
            }
        };
        let proof = if new.size >= old.size {
            client
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    old_size: old.size,
                    new_size: Some(new.size),
                })
                .await
                .map_err(status)?
                .into_inner()
                .hashes
        } else {
            Vec::new()
        };
        if let Err(f) = check_consistency(&old, &new, &proof) {
            return Ok(Err(f));
        }
        report["consistent_with_saved"] = serde_json::json!(old.size);
    }
    if let Some(position) = args.event {
        let r = client
            .get_event_with_proof(pb::GetEventWithProofRequest {
                position,
                tree_size: Some(new.size),
            })
            .await
            .map_err(status)?
            .into_inner();
        let cp_note = r.checkpoint.map(|c| c.note).unwrap_or_default();
        let cp = match Checkpoint::open(&cp_note, verifier) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(Failed(format!(
                    "the event's checkpoint does not verify: {e}"
                ))))
            }
        };
        if cp.size != new.size || cp.root != new.root {
            return Ok(Err(Failed(format!(
                "the event was proven against a tree of {} events with another root than the checkpoint just verified",
                cp.size
            ))));
        }
        let event = r.event.unwrap_or_default();
        if stored_position(&event.stored_bytes) != Some(position) {
            return Ok(Err(Failed(format!(
                "the stored bytes sent for position {position} are not a record of that position"
            ))));
        }
        let proof = r.proof.unwrap_or_default();
        if let Err(f) = check_inclusion(&cp, position, &event.stored_bytes, &proof) {
            return Ok(Err(f));
        }
        report["event"] = serde_json::json!({
            "position": position, "type": event.event_type, "stream": event.stream,
            "leaf_hash": hex::encode(merkle::leaf_hash(&event.stored_bytes)),
        });
    }
    if let Some(path) = args.checkpoint {
        if args.update || !path.exists() {
            save(path, &note)?;
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
        Ok(verifier) => audit(&args, &verifier)
            .await
            .map(|r| (r, verifier.name().to_string())),
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
                println!("{}", serde_json::json!({"ok": false, "reason": f.0}));
            } else {
                eprintln!("VERIFICATION FAILED: {}", f.0);
            }
            Ok(EXIT_FAILED)
        }
    }
}

/// `claims-ledger public-key`: the server's verifier key. Fetching it from the server you are about
/// to audit only helps on first contact; pin it, and compare it with one obtained out of band.
pub async fn public_key(server: &str) -> anyhow::Result<i32> {
    let mut client = pb::audit_client::AuditClient::new(super::connect::connect(server).await?);
    let r = client
        .get_public_key(pb::GetPublicKeyRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    println!("{}", r.verifier_key);
    Ok(0)
}
