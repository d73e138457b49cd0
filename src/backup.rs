//! `claims-ledger export` and `claims-ledger restore`: backup of a running server's log to one NDJSON
//! file, and restore of such a file into a new data directory.
//!
//! **Export** is online and consistent while writers write: it reads the head once, and exports
//! exactly the positions `[0, event_count)` of that head. A prefix of an append-only, hash-chained
//! log is consistent by construction; events appended meanwhile are simply not in this export. It
//! pages through `Events.ReadAll`, checks every event's hash and chain link as it goes, and gets
//! the Merkle root of that prefix from `Audit.GetCheckpoint(tree_size = event_count)`. The file is
//! written beside `--out` under a temporary name, fsynced, and renamed, so `--out` is either the old
//! file or a complete new one.
//!
//! The format (`claims-ledger/export/v3`), one JSON document per line:
//! - line 1, the header: `{"format":"claims-ledger/export/v3","event_count":N,"head_hash":"<hex>"}`;
//! - lines 2 ..= N+1, one event each, in position order: the envelope (`position`, `event_id`,
//!   `stream`, `stream_revision`, `event_type`, `schema_version`, `recorded_at` (RFC 3339),
//!   `recorded_by`, `correlation_id`, `causation_id` (null when absent), `prev_hash`, `hash`), the
//!   `payload` as JSON, and `stored`: the exact stored record as a JSON string. `stored` is what is
//!   restored, byte for byte; everything else must agree with it;
//! - then one line per named subscriber, in name order:
//!   `{"cursor":{"name":"…","position":P,"owner":"…"}}` (`owner` absent when it has none), its
//!   acknowledged position from `Events.ListSubscriptions`, read after the events and lowered to N
//!   if the subscriber had acknowledged events beyond the export (after a restore those positions
//!   belong to new events, which it must receive);
//! - the last line, the trailer: `{"end":{"event_count":N,"head_hash":"<hex>","merkle_root":"<hex>",
//!   "cursors":K}}` (`merkle_root` null if the server would not give one; `cursors` the number of
//!   cursor lines).
//!
//! Restore also reads `claims-ledger/export/v2` files (cursors without owners) and
//! `claims-ledger/export/v1` files (no cursor lines, and no `cursors` in the trailer).
//!
//! **Restore** is offline: it refuses a data directory that already holds anything, reads the
//! export line by line, and stops at the first line that is wrong, naming it (1-based): not JSON,
//! an unknown format, a position out of sequence (a missing or repeated line), stored bytes that do
//! not hash to `hash`, a stored record that does not decode or whose fields differ from the
//! envelope's (`payload` included), a payload the domain cannot read, a `prev_hash` that does not
//! link, a stream revision out of sequence, time going backwards, a cursor line before the last
//! event, out of name order, with an invalid name or beyond the events, a missing trailer (a
//! truncated export) or one that disagrees with the count, the head hash, the recomputed Merkle
//! root or the number of cursor lines. The reading and these checks live beside the importer, in
//! `claims_ledger_log::import::file`; this module adds the rules the log does not know (payloads the
//! domain reads, the server's subscription names). The restore writes into a temporary directory
//! beside the target, fsyncs it, runs `verify` on the result, compares its head hash and Merkle root
//! with the export's, and only then renames it into place (an existing empty directory is replaced,
//! so a crash mid-restore never leaves a partial log there). On any failure nothing is left behind.
//!
//! Idempotency survives a restore: the first event of an append made under an idempotency key
//! records the key in its stored bytes, and the import rebuilds the idempotency records from those
//! (see `log::import`). A retry against the restored server of a write made before the backup gets
//! the original answer, `deduplicated`.
//!
//! Not in an export, so not restored: the projections (rebuilt from the log on the first start), the
//! snapshots (the first start folds the whole log and saves them at its stop), and the checkpoint
//! signing key (copy `signing.key` into the restored
//! directory to keep signing as the same log).
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;

use anyhow::Context as _;

use claims_ledger_client::events::Events;
use claims_ledger_client::{pb, Code};
use claims_ledger_core::merkle::{self, Frontier};
use claims_ledger_log::{self as log, Hash, RecordedEvent, GENESIS_HASH};

use super::connect::connection;

use claims_ledger_log::import::file::{
    parse_hash, sync_parent, temp_path, Cursor, CursorLine, End, EventOut, Header, RestoreChecks,
    Trailer,
};
pub use claims_ledger_log::import::file::{RestoreError, Restored, FORMAT, FORMAT_V1, FORMAT_V2};

/// Most events `Events.ReadAll` returns at once.
const MAX_PAGE: u32 = 1000;

/// Largest response the export accepts (an envelope is at most ~400 KB: a record of at most
/// `MAX_RECORD_BYTES` plus its typed payload). Pages are sized to a quarter of it by the largest
/// envelope seen; a page refused as too large anyway is asked for in halves.
const MAX_MESSAGE: usize = 16 << 20;

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub events: u64,
    /// Size of the export file.
    pub bytes: u64,
    pub head_hash: Hash,
    /// The server's Merkle root of the exported prefix, if it gave one.
    pub merkle_root: Option<Hash>,
    /// Named subscribers' cursors written, and how many of them were lowered to the event count.
    pub cursors: u64,
    pub cursors_lowered: u64,
}

/// `claims-ledger export --server URL --out FILE`: see the module documentation. Exit code 0.
pub async fn export(server: &str, out: &Path, json: bool) -> anyhow::Result<i32> {
    let s = export_to(server, out).await?;
    let root = s.merkle_root.map(hex::encode);
    if json {
        println!(
            "{}",
            serde_json::json!({"out": out.display().to_string(), "events": s.events, "bytes": s.bytes, "head_hash": hex::encode(s.head_hash), "merkle_root": root, "cursors": s.cursors, "cursors_lowered": s.cursors_lowered})
        );
    } else {
        println!(
            "exported {} events ({} bytes) to {}\nhead hash: {}\nMerkle root: {}\nsubscription cursors: {} ({} lowered to the event count)",
            s.events,
            s.bytes,
            out.display(),
            hex::encode(s.head_hash),
            root.as_deref().unwrap_or("(not given by the server)"),
            s.cursors,
            s.cursors_lowered
        );
    }
    Ok(0)
}

/// Writes the export and returns what it wrote; `out` is replaced only once the new file is
/// complete and synced.
pub async fn export_to(server: &str, out: &Path) -> anyhow::Result<ExportSummary> {
    export_with(&connection(server).await?, out).await
}

/// [`export_to`] over a connection the caller made (with its own token, CA and timeouts).
pub async fn export_with(
    conn: &claims_ledger_client::Connection,
    out: &Path,
) -> anyhow::Result<ExportSummary> {
    let events = conn.events().max_decoding_message_size(MAX_MESSAGE);
    let audit = conn.audit();
    let head = events
        .get_head()
        .await
        .map_err(|e| anyhow::anyhow!("Events.GetHead: {}", call_text(&e)))?;
    let head_hash = parse_hash(&head.hash)
        .map_err(|e| anyhow::anyhow!("Events.GetHead returned a bad hash: {e}"))?;
    let count = head.event_count;

    let tmp = temp_path(out, "tmp")?;
    let written = async {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let header = Header {
            format: FORMAT.to_string(),
            event_count: count,
            head_hash: head.hash.clone(),
        };
        serde_json::to_writer(&mut w, &header)?;
        w.write_all(b"\n")?;
        let frontier = write_events(&events, &mut w, count, &head_hash).await?;
        let merkle_root = match audit.get_checkpoint(Some(count)).await {
            Ok(r) => {
                let root = r.checkpoint.map(|c| c.root_hash).unwrap_or_default();
                let root: Hash = root.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "Audit.GetCheckpoint returned a root of {} bytes",
                        root.len()
                    )
                })?;
                anyhow::ensure!(
                    root == frontier.root(),
                    "the server's Merkle root of {count} events is {}, but its events hash to {}",
                    hex::encode(root),
                    hex::encode(frontier.root())
                );
                Some(root)
            }
            Err(e) => {
                eprintln!(
                    "warning: Audit.GetCheckpoint failed ({}); the export carries no Merkle root",
                    call_text(&e)
                );
                None
            }
        };
        let (cursors, lowered) = write_cursors(&events, &mut w, count).await?;
        let trailer = Trailer {
            end: End {
                event_count: count,
                head_hash: head.hash.clone(),
                merkle_root: merkle_root.map(hex::encode),
                cursors: Some(cursors),
            },
        };
        serde_json::to_writer(&mut w, &trailer)?;
        w.write_all(b"\n")?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        let tmp = tmp.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            file.sync_all()
                .with_context(|| format!("syncing {}", tmp.display()))?;
            Ok(file.metadata()?.len())
        })
        .await?
        .map(|bytes| (bytes, merkle_root, cursors, lowered))
    }
    .await;
    let (bytes, merkle_root, cursors, cursors_lowered) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()));
    }
    sync_parent(out)?;
    Ok(ExportSummary {
        events: count,
        bytes,
        head_hash,
        merkle_root,
        cursors,
        cursors_lowered,
    })
}

/// Writes every named subscriber's cursor, in name order, lowered to `count`; returns how many were
/// written and how many lowered.
async fn write_cursors(
    events: &Events,
    w: &mut impl std::io::Write,
    count: u64,
) -> anyhow::Result<(u64, u64)> {
    let (mut written, mut lowered) = (0u64, 0u64);
    let mut token = String::new();
    loop {
        let page = match events
            .list_subscriptions(pb::ListSubscriptionsRequest {
                page_size: MAX_PAGE,
                page_token: token,
            })
            .await
        {
            Ok(page) => page,
            // A server from before named subscribers could be listed: its events still export.
            Err(e) if e.code() == Some(Code::Unimplemented) && written == 0 => {
                eprintln!(
                    "warning: the server cannot list subscriptions; the export carries no cursors"
                );
                return Ok((0, 0));
            }
            Err(e) => anyhow::bail!("Events.ListSubscriptions: {}", call_text(&e)),
        };
        for sub in page.subscriptions {
            let position = sub.acknowledged_position.min(count);
            lowered += u64::from(position < sub.acknowledged_position);
            let line = CursorLine {
                cursor: Cursor {
                    name: sub.subscription_name,
                    position,
                    owner: (!sub.owner.is_empty()).then_some(sub.owner),
                },
            };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
            written += 1;
        }
        if page.next_page_token.is_empty() {
            return Ok((written, lowered));
        }
        token = page.next_page_token;
    }
}

/// Pages through positions `[0, count)`, checking each event's hash and chain link, writing one line
/// each. Returns the Merkle frontier over them; fails unless the last hash is `head_hash`.
async fn write_events(
    events: &Events,
    w: &mut impl std::io::Write,
    count: u64,
    head_hash: &Hash,
) -> anyhow::Result<Frontier> {
    let mut frontier = Frontier::new();
    let mut prev = GENESIS_HASH;
    let mut pos = 0u64;
    // Pages are sized to stay well under MAX_MESSAGE by the largest envelope seen so far, and never
    // above `cap`, which a page the client refused as too large halves.
    let mut cap = MAX_PAGE;
    let mut largest = 0usize;
    while pos < count {
        let by_size = MAX_MESSAGE / 4 / largest.max(1);
        let page = cap.min(u32::try_from(by_size).unwrap_or(MAX_PAGE)).max(1);
        let want = (count - pos).min(u64::from(page)) as u32;
        let resp = match events
            .read_all(pb::ReadAllRequest {
                from_position: pos,
                max_count: want,
                ..Default::default()
            })
            .await
        {
            Ok(r) => r,
            // A page too large for one message: ask for fewer events at once.
            Err(e)
                if want > 1
                    && e.status().is_some_and(|s| {
                        matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted)
                            && s.message().contains("too large")
                    }) =>
            {
                cap = want / 2;
                continue;
            }
            Err(e) => anyhow::bail!("Events.ReadAll from position {pos}: {}", call_text(&e)),
        };
        anyhow::ensure!(
            !resp.events.is_empty(),
            "Events.ReadAll returned nothing at position {pos}, below the head's {count} events"
        );
        for env in resp.events.into_iter().take((count - pos) as usize) {
            largest = largest.max(claims_ledger_client::Message::encoded_len(&env));
            anyhow::ensure!(
                env.position == pos,
                "Events.ReadAll returned position {} where {pos} was expected",
                env.position
            );
            let rec = log::decode(pos, env.stored_bytes)
                .with_context(|| format!("the stored record of position {pos}"))?;
            anyhow::ensure!(
                hex::encode(rec.hash) == env.hash,
                "position {pos}: the stored bytes hash to {}, the server says {}",
                hex::encode(rec.hash),
                env.hash
            );
            anyhow::ensure!(
                rec.position == pos && rec.prev_hash == prev,
                "position {pos}: the record does not link to position {} (a broken chain on the server; run verify)",
                pos.wrapping_sub(1)
            );
            let stored = std::str::from_utf8(&rec.stored)
                .with_context(|| format!("position {pos}: the stored record is not UTF-8"))?;
            let line = EventOut {
                position: rec.position,
                event_id: rec.event_id,
                stream: &rec.stream,
                stream_revision: rec.stream_revision,
                event_type: &rec.event_type,
                schema_version: rec.schema_version,
                recorded_at: rec.recorded_at,
                recorded_by: &rec.recorded_by,
                correlation_id: rec.correlation_id.as_deref(),
                causation_id: rec.causation_id.as_deref(),
                prev_hash: hex::encode(rec.prev_hash),
                hash: hex::encode(rec.hash),
                payload: &rec.payload,
                stored,
            };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
            frontier.push(merkle::leaf_hash(&rec.stored))?;
            prev = rec.hash;
            pos += 1;
        }
    }
    anyhow::ensure!(
        prev == *head_hash,
        "the log's event {} hashes to {}, but the head read at the start said {} (was the log rewritten?)",
        count.wrapping_sub(1),
        hex::encode(prev),
        hex::encode(head_hash)
    );
    Ok(frontier)
}

// ---------------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------------

/// `claims-ledger restore --from FILE --data-dir DIR`: see the module documentation. Exit code 0,
/// or 1 with the line at fault (and nothing written).
pub fn restore(from: &Path, data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    match restore_file(from, data_dir) {
        Ok(r) => {
            let root = hex::encode(r.merkle_root);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "data_dir": data_dir.display().to_string(), "events": r.events, "streams": r.streams, "head_hash": hex::encode(r.head_hash), "merkle_root": root, "merkle_root_checked": r.merkle_root_checked, "idempotency_records": r.idempotency_records, "cursors": r.cursors})
                );
            } else {
                println!(
                    "restored {} events in {} streams into {}\nhead hash: {}\nMerkle root: {root} ({})\nidempotency records rebuilt: {}\nsubscription cursors restored: {}\nnot restored: the signing key; projections and snapshots are rebuilt on the first start",
                    r.events,
                    r.streams,
                    data_dir.display(),
                    hex::encode(r.head_hash),
                    if r.merkle_root_checked {
                        "matches the export's"
                    } else {
                        "the export carries none to compare with"
                    },
                    r.idempotency_records,
                    r.cursors
                );
            }
            Ok(0)
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "line": e.line, "reason": e.reason})
                );
            } else {
                println!("restore FAILED: {e}");
            }
            Ok(1)
        }
    }
}

/// Restores `from` into `data_dir` (absent or empty) with the server's rules for payloads and
/// subscription names; see `claims_ledger_log::import::file`.
pub fn restore_file(from: &Path, data_dir: &Path) -> Result<Restored, RestoreError> {
    let payload = |rec: &RecordedEvent| {
        if rec.is_system() {
            // The log's own record of an accepted shorter log: kept, as auditors must see it.
            return claims_ledger_server::app::decode_system_event(rec).map(|_| ());
        }
        claims_ledger_server::app::decode_event(rec)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let checks = RestoreChecks {
        cursor_name: &claims_ledger_server::app::valid_subscription_name,
        payload: &payload,
    };
    claims_ledger_log::import::file::restore_file(from, data_dir, &checks)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A failed call as `code: message`, as the export has always named them.
fn call_text(e: &claims_ledger_client::Error) -> String {
    match e.status() {
        Some(s) => format!("{}: {}", s.code(), s.message()),
        None => e.to_string(),
    }
}
