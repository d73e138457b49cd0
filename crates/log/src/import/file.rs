//! The export file (`claims-ledger/export/v2`; v1 is still read) and its restore. The line types
//! are shared by both directions: `claims-ledger export` writes them from a running server, and
//! [`restore_file`] reads them back into a new data directory.
//!
//! Restore reads the file line by line and stops at the first line that is wrong, naming it
//! (1-based); see the checks in `import`. It writes through [`Importer`] into a temporary directory
//! beside the target, runs `verify` on the result, compares its head hash and Merkle root with the
//! export's, and only then renames it into place, so a failed or interrupted restore leaves nothing
//! behind. Two checks need knowledge the log does not have, the domain's event schemas and the
//! server's subscription naming rule, so the caller passes them in [`RestoreChecks`].
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::Importer;
use crate::verify::verify_dir;
use crate::{Hash, LogError, RecordedEvent};

/// The format name in the header of the exports this version writes. v3 added each cursor's owner;
/// an older binary refuses v3 files (its cursor lines allow no unknown field), which the new name
/// makes plain instead of a puzzling line error.
pub const FORMAT: &str = "claims-ledger/export/v3";
/// The format before cursor owners, which restore still reads.
pub const FORMAT_V2: &str = "claims-ledger/export/v2";
/// The earliest format, without subscription cursors, which restore still reads.
pub const FORMAT_V1: &str = "claims-ledger/export/v1";

/// Longest owner identity a cursor line may name (token names are shorter).
const MAX_OWNER: usize = 128;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub event_count: u64,
    pub head_hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    pub end: End,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub event_count: u64,
    pub head_hash: String,
    pub merkle_root: Option<String>,
    /// Cursor lines before the trailer (v2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursors: Option<u64>,
}

/// A named subscriber's acknowledged position.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorLine {
    pub cursor: Cursor,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub name: String,
    pub position: u64,
    /// The identity that owns the subscription (v3); absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// An event line as written.
#[derive(Serialize)]
pub struct EventOut<'a> {
    pub position: u64,
    pub event_id: Uuid,
    pub stream: &'a str,
    pub stream_revision: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: &'a str,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    pub prev_hash: String,
    pub hash: String,
    pub payload: &'a RawValue,
    pub stored: &'a str,
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

/// What a restore must ask of the layers above the log.
pub struct RestoreChecks<'a> {
    /// Whether a cursor line's name is one the server would accept for a named subscription.
    pub cursor_name: &'a dyn Fn(&str) -> bool,
    /// Whether a record's payload is an event the domain can read (`Err` says why not).
    pub payload: &'a dyn Fn(&RecordedEvent) -> Result<(), String>,
}

/// Restores `from` into `data_dir` (absent or empty); see the module documentation. On failure
/// nothing is written to `data_dir` and nothing is left beside it.
pub fn restore_file(
    from: &Path,
    data_dir: &Path,
    checks: &RestoreChecks<'_>,
) -> Result<Restored, RestoreError> {
    let file =
        File::open(from).map_err(|e| general(format!("cannot open {}: {e}", from.display())))?;
    let target = Target::prepare(data_dir)?;
    let result = import(file, &target.work, checks).and_then(|restored| {
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
fn import(file: File, dir: &Path, checks: &RestoreChecks<'_>) -> Result<Restored, RestoreError> {
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
    let (with_cursors, with_owners) = match header.format.as_str() {
        FORMAT => (true, true),
        FORMAT_V2 => (true, false),
        FORMAT_V1 => (false, false),
        other => {
            return Err(at(
                1,
                format!(
                    "unknown format {other:?} (this version reads {FORMAT:?}, {FORMAT_V2:?} and \
                     {FORMAT_V1:?})"
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
                    if cursor.owner.is_some() && !with_owners {
                        return Err(at(
                            line_no,
                            format!("a cursor owner in a {FORMAT_V2} export"),
                        ));
                    }
                    cursors
                        .push(&mut importer, cursor, header.event_count, checks)
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
        let rec = check_event(event, expected, checks).map_err(|reason| at(line_no, reason))?;
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
    fn push(
        &mut self,
        importer: &mut Importer,
        c: Cursor,
        events: u64,
        checks: &RestoreChecks<'_>,
    ) -> Result<(), String> {
        if importer.count() != events {
            return Err(format!(
                "a cursor line after {} of the {events} events; cursors follow the last event",
                importer.count()
            ));
        }
        if !(checks.cursor_name)(&c.name) {
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
        if let Some(owner) = &c.owner {
            if owner.is_empty() || owner.chars().count() > MAX_OWNER {
                return Err(format!(
                    "cursor {:?}: its owner must be 1 to {MAX_OWNER} characters",
                    c.name
                ));
            }
        }
        importer
            .put_owned_cursor(&c.name, c.position, c.owner.as_deref())
            .map_err(|e| format!("cursor {:?}: {e}", c.name))?;
        self.count += 1;
        self.last = Some(c.name);
        Ok(())
    }
}

/// Checks one event line against its own stored record; returns the record to import.
fn check_event(
    e: EventIn,
    expected: u64,
    checks: &RestoreChecks<'_>,
) -> Result<RecordedEvent, String> {
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
    let rec = match crate::decode(expected, stored.clone()) {
        Ok(rec) if rec.hash == hash => rec,
        Ok(rec) => return Err(mismatch(&rec.hash)),
        Err(err) => {
            let actual = crate::sha256(&stored);
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
    (checks.payload)(&rec).map_err(|err| {
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

/// At most 200 characters of `s`, for messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes)", &s[..cut], s.len()),
        None => s.to_string(),
    }
}

/// A 64-digit lowercase hex SHA-256.
pub fn parse_hash(s: &str) -> Result<Hash, String> {
    let mut h = [0u8; 32];
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{s:?} is not 64 lowercase hex digits"));
    }
    hex::decode_to_slice(s, &mut h).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(h)
}

/// A hidden sibling of `path`: `.<name>.<what>-<pid>`.
pub fn temp_path(path: &Path, what: &str) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    Ok(path.with_file_name(format!(
        ".{}.{what}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// fsyncs the directory holding `path`, so a rename into it survives a crash.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| std::io::Error::new(e.kind(), format!("syncing {}: {e}", parent.display())))
}
