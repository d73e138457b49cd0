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
//! The format (`claims-ledger/export/v2`), one JSON document per line:
//! - line 1, the header: `{"format":"claims-ledger/export/v2","event_count":N,"head_hash":"<hex>"}`;
//! - lines 2 ..= N+1, one event each, in position order: the envelope (`position`, `event_id`,
//!   `stream`, `stream_revision`, `event_type`, `schema_version`, `recorded_at` (RFC 3339),
//!   `recorded_by`, `correlation_id`, `causation_id` (null when absent), `prev_hash`, `hash`), the
//!   `payload` as JSON, and `stored`: the exact stored record as a JSON string. `stored` is what is
//!   restored, byte for byte; everything else must agree with it;
//! - then one line per named subscriber, in name order: `{"cursor":{"name":"…","position":P}}`, its
//!   acknowledged position from `Events.ListSubscriptions`, read after the events and lowered to N
//!   if the subscriber had acknowledged events beyond the export (after a restore those positions
//!   belong to new events, which it must receive);
//! - the last line, the trailer: `{"end":{"event_count":N,"head_hash":"<hex>","merkle_root":"<hex>",
//!   "cursors":K}}` (`merkle_root` null if the server would not give one; `cursors` the number of
//!   cursor lines).
//!
//! Restore also reads `claims-ledger/export/v1` files: the same without cursor lines and without
//! `cursors` in the trailer.
//!
//! **Restore** is offline: it refuses a data directory that already holds anything, reads the
//! export line by line, and stops at the first line that is wrong, naming it (1-based): not JSON,
//! an unknown format, a position out of sequence (a missing or repeated line), stored bytes that do
//! not hash to `hash`, a stored record that does not decode or whose fields differ from the
//! envelope's (`payload` included), a payload the domain cannot read, a `prev_hash` that does not
//! link, a stream revision out of sequence, time going backwards, a cursor line before the last
//! event, out of name order, with an invalid name or beyond the events, a missing trailer (a
//! truncated export) or one that disagrees with the count, the head hash, the recomputed Merkle
//! root or the number of cursor lines. It
//! writes through `log::import::Importer` into a temporary directory beside the target, fsyncs it,
//! runs `verify` on the result, compares its head hash and Merkle root with the export's, and only
//! then renames it into place (an existing empty directory is replaced, so a crash mid-restore
//! never leaves a partial log there). On any failure nothing is left behind.
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
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use claims_ledger_client::events::Events;
use claims_ledger_client::{pb, Code};
use claims_ledger_core::merkle::{self, Frontier};
use claims_ledger_log::import::Importer;
use claims_ledger_log::verify::verify_dir;
use claims_ledger_log::{self as log, Hash, LogError, RecordedEvent, GENESIS_HASH};

use super::connect::connection;

/// The format name in the header of the exports this version writes.
pub const FORMAT: &str = "claims-ledger/export/v2";
/// The earlier format, without subscription cursors, which restore still reads.
pub const FORMAT_V1: &str = "claims-ledger/export/v1";

/// Most events `Events.ReadAll` returns at once.
const MAX_PAGE: u32 = 1000;

/// Largest response the export accepts (an envelope is at most ~400 KB: a record of at most
/// `MAX_RECORD_BYTES` plus its typed payload). Pages are sized to a quarter of it by the largest
/// envelope seen; a page refused as too large anyway is asked for in halves.
const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    event_count: u64,
    head_hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    end: End,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    event_count: u64,
    head_hash: String,
    merkle_root: Option<String>,
    /// Cursor lines before the trailer (v2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursors: Option<u64>,
}

/// A named subscriber's acknowledged position.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorLine {
    cursor: Cursor,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    name: String,
    position: u64,
}

/// An event line as written.
#[derive(Serialize)]
struct EventOut<'a> {
    position: u64,
    event_id: Uuid,
    stream: &'a str,
    stream_revision: u64,
    event_type: &'a str,
    schema_version: u32,
    recorded_at: DateTime<Utc>,
    recorded_by: &'a str,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    prev_hash: String,
    hash: String,
    payload: &'a RawValue,
    stored: &'a str,
}

/// An event line as read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    position: u64,
    event_id: Uuid,
    stream: String,
    stream_revision: u64,
    event_type: String,
    schema_version: u32,
    recorded_at: DateTime<Utc>,
    recorded_by: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    prev_hash: String,
    hash: String,
    payload: Box<RawValue>,
    stored: String,
}

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
    let conn = connection(server).await?;
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

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub events: u64,
    pub streams: usize,
    pub head_hash: Hash,
    pub merkle_root: Hash,
    /// Whether the export carried a Merkle root to compare with (it did, and it matched).
    pub merkle_root_checked: bool,
    /// Idempotency records rebuilt from the events.
    pub idempotency_records: u64,
    /// Named subscribers' cursors restored.
    pub cursors: u64,
}

/// Why a restore failed: the 1-based line of the export at fault, when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RestoreError {
    pub line: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

fn at(line: u64, reason: impl Into<String>) -> RestoreError {
    RestoreError {
        line: Some(line),
        reason: reason.into(),
    }
}

fn general(reason: impl Into<String>) -> RestoreError {
    RestoreError {
        line: None,
        reason: reason.into(),
    }
}

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

/// Restores `from` into `data_dir` (absent or empty); see the module documentation. On failure
/// nothing is written to `data_dir` and nothing is left beside it.
pub fn restore_file(from: &Path, data_dir: &Path) -> Result<Restored, RestoreError> {
    let file =
        File::open(from).map_err(|e| general(format!("cannot open {}: {e}", from.display())))?;
    let target = Target::prepare(data_dir)?;
    let result = import(file, &target.work).and_then(|restored| {
        target.commit()?;
        Ok(restored)
    });
    if result.is_err() {
        target.discard();
    }
    result
}

/// Where a restore writes: a temporary directory beside the target, renamed onto it (absent, or an
/// empty directory, which `rename` replaces atomically) only once the log is complete, synced and
/// verified. A crash mid-restore therefore never leaves a partial log at the target.
struct Target {
    work: PathBuf,
    to: PathBuf,
}

impl Target {
    fn prepare(data_dir: &Path) -> Result<Target, RestoreError> {
        match std::fs::read_dir(data_dir) {
            Ok(mut entries) => {
                if let Some(entry) = entries.next() {
                    let name = entry
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let what = if data_dir.join("db").exists() {
                        "already holds a log (a `db` file)".to_string()
                    } else {
                        format!("is not empty (it holds {name:?})")
                    };
                    return Err(general(format!(
                        "refusing to restore into {}: it {what}; restore into a new directory",
                        data_dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(general(format!("cannot read {}: {e}", data_dir.display()))),
        }
        let work = temp_path(data_dir, "restoring").map_err(|e| general(e.to_string()))?;
        if work.exists() {
            std::fs::remove_dir_all(&work)
                .map_err(|e| general(format!("cannot remove the stale {}: {e}", work.display())))?;
        }
        std::fs::create_dir_all(&work)
            .map_err(|e| general(format!("cannot create {}: {e}", work.display())))?;
        Ok(Target {
            work,
            to: data_dir.to_path_buf(),
        })
    }

    fn commit(&self) -> Result<(), RestoreError> {
        std::fs::rename(&self.work, &self.to).map_err(|e| {
            general(format!(
                "cannot rename {} to {}: {e} (a mount point cannot be replaced: restore into a \
                 directory below it)",
                self.work.display(),
                self.to.display()
            ))
        })?;
        sync_parent(&self.to).map_err(|e| general(e.to_string()))
    }

    /// Removes everything the restore wrote. sled's threads may still write a file for a moment
    /// after the database is dropped, so this tries again until the directory is gone.
    fn discard(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::remove_dir_all(&self.work).is_err()
            && self.work.exists()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Reads and checks the export line by line, imports it into `dir`, and verifies the result.
fn import(file: File, dir: &Path) -> Result<Restored, RestoreError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    // Reads the next line into `buf` (without its newline): `None` at the end of the file, else
    // whether the line ended with a newline (the last one of a truncated file does not).
    let mut next_line =
        |buf: &mut Vec<u8>, line_no: &mut u64| -> Result<Option<bool>, RestoreError> {
            buf.clear();
            let n = reader
                .read_until(b'\n', buf)
                .map_err(|e| at(*line_no + 1, format!("cannot read: {e}")))?;
            if n == 0 {
                return Ok(None);
            }
            *line_no += 1;
            let complete = buf.last() == Some(&b'\n');
            if complete {
                buf.pop();
            }
            Ok(Some(complete))
        };

    if next_line(&mut buf, &mut line_no)?.is_none() {
        return Err(at(1, "the file is empty: no header"));
    }
    let header: Header =
        serde_json::from_slice(&buf).map_err(|e| at(1, format!("not an export header: {e}")))?;
    let with_cursors = match header.format.as_str() {
        FORMAT => true,
        FORMAT_V1 => false,
        other => {
            return Err(at(
                1,
                format!(
                    "unknown format {other:?} (this version reads {FORMAT:?} and {FORMAT_V1:?})"
                ),
            ))
        }
    };
    let header_head =
        parse_hash(&header.head_hash).map_err(|e| at(1, format!("head_hash: {e}")))?;

    let mut importer = Importer::create(dir)
        .map_err(|e| general(format!("cannot create a log in {}: {e}", dir.display())))?;
    let mut cursors = Cursors::default();
    let trailer = loop {
        let Some(complete) = next_line(&mut buf, &mut line_no)? else {
            return Err(at(
                line_no,
                format!(
                    "truncated export: the trailer is missing; this was the last line, after {} \
                     of the {} events the header announces",
                    importer.count(),
                    header.event_count
                ),
            ));
        };
        let event: EventIn = match serde_json::from_slice(&buf) {
            Ok(e) => e,
            Err(event_err) => {
                if let Ok(CursorLine { cursor }) = serde_json::from_slice(&buf) {
                    if !with_cursors {
                        return Err(at(
                            line_no,
                            format!("a cursor line in a {FORMAT_V1} export"),
                        ));
                    }
                    cursors
                        .push(&mut importer, cursor, header.event_count)
                        .map_err(|reason| at(line_no, reason))?;
                    continue;
                }
                match serde_json::from_slice::<Trailer>(&buf) {
                    Ok(t) => break t.end,
                    Err(trailer_err) => {
                        return Err(at(
                            line_no,
                            describe_bad_line(&buf, event_err, trailer_err, complete),
                        ));
                    }
                }
            }
        };
        if let Some(name) = &cursors.last {
            return Err(at(
                line_no,
                format!(
                    "an event after the cursor line of {name:?}; cursors follow the last event"
                ),
            ));
        }
        let expected = importer.count();
        if expected >= header.event_count {
            return Err(at(
                line_no,
                format!(
                    "an event (position {}) beyond the {} events the header announces",
                    event.position, header.event_count
                ),
            ));
        }
        let rec = check_event(event, expected).map_err(|reason| at(line_no, reason))?;
        importer
            .push(&rec)
            .map_err(|e| at(line_no, import_reason(e)))?;
    };

    // The trailer.
    let count = importer.count();
    if trailer.event_count != header.event_count || count != header.event_count {
        return Err(at(
            line_no,
            format!(
                "the trailer says {} events and the header {}, but {count} event lines came before it",
                trailer.event_count, header.event_count
            ),
        ));
    }
    let expected_cursors = with_cursors.then_some(cursors.count);
    if trailer.cursors != expected_cursors {
        return Err(at(
            line_no,
            format!(
                "the trailer counts {:?} cursor lines, the export holds {:?}",
                trailer.cursors, expected_cursors
            ),
        ));
    }
    let trailer_head = parse_hash(&trailer.head_hash)
        .map_err(|e| at(line_no, format!("trailer head_hash: {e}")))?;
    if trailer_head != header_head || importer.head_hash() != header_head {
        return Err(at(
            line_no,
            format!(
                "the last event's hash is {}, the header says {} and the trailer {}",
                hex::encode(importer.head_hash()),
                header.head_hash,
                trailer.head_hash
            ),
        ));
    }
    let trailer_root = match &trailer.merkle_root {
        Some(r) => Some(parse_hash(r).map_err(|e| at(line_no, format!("merkle_root: {e}")))?),
        None => None,
    };
    if let Some(root) = trailer_root {
        if root != importer.merkle_root() {
            return Err(at(
                line_no,
                format!(
                    "the events' Merkle root is {}, but the server's, in the trailer, is {}",
                    hex::encode(importer.merkle_root()),
                    hex::encode(root)
                ),
            ));
        }
    }
    let trailer_line = line_no;
    while next_line(&mut buf, &mut line_no)?.is_some() {
        if !buf.iter().all(u8::is_ascii_whitespace) {
            return Err(at(
                line_no,
                format!("data after the trailer (line {trailer_line})"),
            ));
        }
    }

    let summary = importer.finish().map_err(|e| match e {
        // The events ended inside an append: the trailer came too early.
        LogError::Corrupt { reason, .. } => at(trailer_line, reason),
        e => general(format!("writing {}: {e}", dir.display())),
    })?;
    // Read the written directory back from disk as `verify` does, and compare.
    let report = match verify_dir(dir) {
        Ok(Ok(r)) => r,
        Ok(Err(m)) => {
            return Err(at(
                m.position + 2,
                format!(
                    "the restored log does not verify at position {}: {}",
                    m.position, m.reason
                ),
            ))
        }
        Err(e) => return Err(general(format!("verifying {}: {e}", dir.display()))),
    };
    if report.events != count
        || report.head_hash != header_head
        || report.merkle_root != Some(summary.merkle_root)
    {
        return Err(general(format!(
            "the restored log verifies as {} events, head {}, root {}, not the export's {count}, {}, {}",
            report.events,
            hex::encode(report.head_hash),
            report.merkle_root.map_or("none".into(), hex::encode),
            header.head_hash,
            hex::encode(summary.merkle_root)
        )));
    }
    Ok(Restored {
        events: count,
        streams: report.streams,
        head_hash: report.head_hash,
        merkle_root: summary.merkle_root,
        merkle_root_checked: trailer_root.is_some(),
        idempotency_records: summary.idempotency_records,
        cursors: cursors.count,
    })
}

/// The cursor lines read so far.
#[derive(Default)]
struct Cursors {
    count: u64,
    /// The last name, to keep names in strictly increasing order.
    last: Option<String>,
}

impl Cursors {
    /// Checks a cursor line read after `importer`'s events and stores it.
    fn push(&mut self, importer: &mut Importer, c: Cursor, events: u64) -> Result<(), String> {
        if importer.count() != events {
            return Err(format!(
                "a cursor line after {} of the {events} events; cursors follow the last event",
                importer.count()
            ));
        }
        if !claims_ledger_server::app::valid_subscription_name(&c.name) {
            return Err(format!(
                "cursor name {:?} is not a valid subscription name",
                c.name
            ));
        }
        if self.last.as_ref().is_some_and(|last| *last >= c.name) {
            return Err(format!(
                "cursor {:?} is out of name order (or repeated)",
                c.name
            ));
        }
        importer
            .put_cursor(&c.name, c.position)
            .map_err(|e| format!("cursor {:?}: {e}", c.name))?;
        self.count += 1;
        self.last = Some(c.name);
        Ok(())
    }
}

/// Checks one event line against its own stored record; returns the record to import.
fn check_event(e: EventIn, expected: u64) -> Result<RecordedEvent, String> {
    if e.position != expected {
        return Err(if e.position == expected + 1 {
            format!(
                "position {} where {expected} was expected: the line of position {expected} is missing",
                e.position
            )
        } else if e.position > expected {
            format!(
                "position {} where {expected} was expected: the lines of positions {expected}..={} are missing",
                e.position,
                e.position - 1
            )
        } else {
            format!(
                "position {} where {expected} was expected: a repeated or out-of-order line",
                e.position
            )
        });
    }
    let hash = parse_hash(&e.hash).map_err(|r| format!("hash: {r}"))?;
    let stored = e.stored.into_bytes();
    let mismatch = |actual: &Hash| {
        format!(
            "the stored bytes do not match the hash: they hash to {}, the line says {}",
            hex::encode(actual),
            e.hash
        )
    };
    // `decode` hashes the bytes; only a record that does not decode is hashed here, to say which
    // is wrong.
    let rec = match log::decode(expected, stored.clone()) {
        Ok(rec) if rec.hash == hash => rec,
        Ok(rec) => return Err(mismatch(&rec.hash)),
        Err(err) => {
            let actual = log::sha256(&stored);
            return Err(if actual != hash {
                mismatch(&actual)
            } else {
                format!("the stored record does not decode: {err}")
            });
        }
    };
    let differs = |field: &str, line: String, stored: String| {
        Err(format!(
            "{field} is {} on the line but {} in the stored record",
            shorten(&line),
            shorten(&stored)
        ))
    };
    if rec.position != e.position {
        return differs("position", e.position.to_string(), rec.position.to_string());
    }
    if rec.event_id != e.event_id {
        return differs("event_id", e.event_id.to_string(), rec.event_id.to_string());
    }
    if rec.stream != e.stream {
        return differs(
            "stream",
            format!("{:?}", e.stream),
            format!("{:?}", rec.stream),
        );
    }
    if rec.stream_revision != e.stream_revision {
        return differs(
            "stream_revision",
            e.stream_revision.to_string(),
            rec.stream_revision.to_string(),
        );
    }
    if rec.event_type != e.event_type {
        return differs(
            "event_type",
            format!("{:?}", e.event_type),
            format!("{:?}", rec.event_type),
        );
    }
    if rec.schema_version != e.schema_version {
        return differs(
            "schema_version",
            e.schema_version.to_string(),
            rec.schema_version.to_string(),
        );
    }
    if rec.recorded_at != e.recorded_at {
        return differs(
            "recorded_at",
            e.recorded_at.to_rfc3339(),
            rec.recorded_at.to_rfc3339(),
        );
    }
    if rec.recorded_by != e.recorded_by {
        return differs(
            "recorded_by",
            format!("{:?}", e.recorded_by),
            format!("{:?}", rec.recorded_by),
        );
    }
    if rec.correlation_id != e.correlation_id {
        return differs(
            "correlation_id",
            format!("{:?}", e.correlation_id),
            format!("{:?}", rec.correlation_id),
        );
    }
    if rec.causation_id != e.causation_id {
        return differs(
            "causation_id",
            format!("{:?}", e.causation_id),
            format!("{:?}", rec.causation_id),
        );
    }
    if hex::encode(rec.prev_hash) != e.prev_hash {
        return differs("prev_hash", e.prev_hash, hex::encode(rec.prev_hash));
    }
    // The same text (as exported) is the same payload; otherwise compare the JSON values, so that a
    // reformatted but equal payload passes.
    if rec.payload.get() != e.payload.get() {
        let value = |raw: &RawValue| serde_json::from_str::<serde_json::Value>(raw.get());
        let stored =
            value(&rec.payload).map_err(|err| format!("the stored payload is not JSON: {err}"))?;
        let line = value(&e.payload).map_err(|err| format!("payload: {err}"))?;
        if let Some((path, ours, theirs)) = first_difference(&line, &stored) {
            return differs(&format!("payload{path}"), ours, theirs);
        }
    }
    claims_ledger_server::app::decode_event(&rec).map_err(|err| {
        format!(
            "the payload is not a valid {} v{} event: {err}",
            rec.event_type, rec.schema_version
        )
    })?;
    Ok(rec)
}

/// The first place where two JSON values differ: its path (`.key`, `[index]`) and both sides
/// there (`absent` where one side has nothing).
fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    let show = |v: Option<&Value>| v.map_or_else(|| "absent".to_string(), Value::to_string);
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => {
                    first_difference(p, q).map(|(path, l, r)| (format!(".{k}{path}"), l, r))
                }
                (p, q) => Some((format!(".{k}"), show(p), show(q))),
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            (0..x.len().max(y.len())).find_map(|i| match (x.get(i), y.get(i)) {
                (Some(p), Some(q)) => {
                    first_difference(p, q).map(|(path, l, r)| (format!("[{i}]{path}"), l, r))
                }
                (p, q) => Some((format!("[{i}]"), show(p), show(q))),
            })
        }
        _ if a == b => None,
        _ => Some((String::new(), a.to_string(), b.to_string())),
    }
}

/// An importer refusal, without the position the line number already says.
fn import_reason(e: LogError) -> String {
    match e {
        LogError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn describe_bad_line(
    buf: &[u8],
    event_err: serde_json::Error,
    trailer_err: serde_json::Error,
    complete: bool,
) -> String {
    // The last line of a file cut short: no newline, and the JSON ends early.
    if !complete && event_err.is_eof() {
        return format!(
            "truncated export: the line ends in the middle of a JSON document ({event_err})"
        );
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return "an empty line where an event or the trailer was expected".into();
    }
    if event_err.is_syntax() || event_err.is_eof() {
        return format!("not valid JSON: {event_err}");
    }
    // Valid JSON that is neither an event nor the trailer: say what it resembles more.
    let looks_like_trailer = serde_json::from_slice::<serde_json::Value>(buf)
        .ok()
        .is_some_and(|v| v.get("end").is_some());
    if looks_like_trailer {
        format!("not a valid trailer: {trailer_err}")
    } else {
        format!("not a valid event line: {event_err}")
    }
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

/// At most 200 characters of `s`, for messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes)", &s[..cut], s.len()),
        None => s.to_string(),
    }
}

/// A 64-digit lowercase hex SHA-256.
fn parse_hash(s: &str) -> Result<Hash, String> {
    let mut h = [0u8; 32];
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{s:?} is not 64 lowercase hex digits"));
    }
    hex::decode_to_slice(s, &mut h).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(h)
}

/// A hidden sibling of `path`: `.<name>.<what>-<pid>`.
fn temp_path(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    Ok(path.with_file_name(format!(
        ".{}.{what}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// fsyncs the directory holding `path`, so a rename into it survives a crash.
fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", parent.display()))
}
