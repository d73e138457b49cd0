//! Failing closed at open: every durable record of how long the log was, compared with what the
//! open recovered. A log shorter than any of them has lost acknowledged events (or its store was
//! swapped for an older copy), and is refused rather than served, since a write accepted at a
//! position such a record already covered would fork the ledger.
//!
//! The records:
//! - the write-ahead log's frames (checked by `store::recover` as it replays them);
//! - every snapshot file (`*.snap`) of the data directory, whatever its kind: each names the
//!   event count it covers;
//! - subscriber cursors (`c` keys): a subscriber never acknowledges past the durable head;
//! - two high-water mark files kept here: `durable.hwm`, the event count (and last hash) sled held
//!   durably, raised after each background flush of sled and each open; and `signed.hwm`, the
//!   largest tree size (and root) ever signed, raised *before* a checkpoint of a larger size is
//!   handed out;
//! - whatever the caller adds ([`crate::LogOptions::evidence`]): the server's projection
//!   checkpoint.
//!
//! Each mark file holds two checksummed slots written in turn, each with a sequence number, and is
//! `fdatasync`ed after each write: a torn write leaves the other slot, an older and so smaller
//! mark, which is never evidence of events that were not there.
//!
//! An operator may accept a shorter log knowingly ([`crate::LogOptions::accept_shorter_log`]): the
//! open then appends a [`SHORTER_LOG_ACCEPTED`] event to the [`SYSTEM_STREAM`] with the evidence
//! and the counts in its payload, and only once that is durable resets what no longer fits (cursors
//! to the recovered count, stale snapshots removed, the marks rewritten), so the next open is clean.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::layout::{be_u64, CURSOR};
use crate::record::{Hash, GENESIS_HASH};
use crate::snapshot;
use crate::LogError;

/// The stream of the log's own events; the writer refuses it to callers.
pub const SYSTEM_STREAM: &str = "$log";
/// The type of the event that records an accepted shorter log. Its payload is a [`ShorterLog`]
/// as JSON.
pub const SHORTER_LOG_ACCEPTED: &str = "ShorterLogAccepted";

/// The mark of durable events, in the data directory.
pub const DURABLE_MARK: &str = "durable.hwm";
/// The mark of the largest checkpoint signed, in the data directory.
pub const SIGNED_MARK: &str = "signed.hwm";

/// One durable record of how long the log was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// What recorded it, for people (a file, a cursor's name, the projection checkpoint).
    pub source: String,
    /// The event count it shows the log had.
    pub count: u64,
}

/// What an open found against the log it recovered: records of a longer log, or of another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShorterLog {
    /// The events the open recovered.
    pub recovered: u64,
    /// Each record that shows more events than that (or another event at a position the log
    /// holds), largest count first.
    pub evidence: Vec<Evidence>,
    /// Records that could not be read, so cannot show that the log is whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

impl ShorterLog {
    /// The largest count any record shows (the recovered count if none does).
    pub fn expected(&self) -> u64 {
        self.evidence
            .iter()
            .map(|e| e.count)
            .max()
            .unwrap_or(self.recovered)
            .max(self.recovered)
    }
}

impl std::fmt::Display for ShorterLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the log holds {} events", self.recovered)?;
        if !self.evidence.is_empty() {
            if self.expected() > self.recovered {
                write!(f, ", but durable records show {} events: ", self.expected())?;
            } else {
                write!(f, ", but durable records show other events: ")?;
            }
            let list: Vec<String> = self
                .evidence
                .iter()
                .map(|e| format!("{} ({} events)", e.source, e.count))
                .collect();
            write!(f, "{}", list.join("; "))?;
        }
        if !self.unreadable.is_empty() {
            write!(
                f,
                "; and these records cannot be read, so nothing shows the log is whole: {}",
                self.unreadable.join("; ")
            )?;
        }
        write!(
            f,
            ". Acknowledged events are missing, or the store was replaced by an older or another \
             copy; restore the data directory from a backup (export/restore), or accept the \
             shorter log knowingly with the operator override, which records that choice in the log"
        )
    }
}

/// A mark file's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) count: u64,
    /// The hash of event `count - 1` (durable), or the tree root at `count` (signed).
    pub(crate) hash: Hash,
}

const MARK_MAGIC: &[u8; 8] = b"CLHWM\0\0\x01";
/// Magic, sequence number, count, hash, CRC32.
const SLOT: usize = 8 + 8 + 8 + 32 + 4;
const MARK_FILE: usize = 2 * SLOT;

/// Serializes writes of the mark files: the flusher, the syncer's checkpoint and the server's
/// signing may raise them at once.
static MARKS: Mutex<()> = Mutex::new(());

fn encode_slot(seq: u64, mark: Mark) -> [u8; SLOT] {
    let mut s = [0u8; SLOT];
    s[..8].copy_from_slice(MARK_MAGIC);
    s[8..16].copy_from_slice(&seq.to_le_bytes());
    s[16..24].copy_from_slice(&mark.count.to_le_bytes());
    s[24..56].copy_from_slice(&mark.hash);
    let crc = crc32fast::hash(&s[..56]);
    s[56..60].copy_from_slice(&crc.to_le_bytes());
    s
}

fn decode_slot(s: &[u8]) -> Option<(u64, Mark)> {
    if s.len() < SLOT || &s[..8] != MARK_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(s[56..60].try_into().ok()?);
    if crc != crc32fast::hash(&s[..56]) {
        return None;
    }
    let seq = u64::from_le_bytes(s[8..16].try_into().ok()?);
    let count = u64::from_le_bytes(s[16..24].try_into().ok()?);
    let hash = s[24..56].try_into().ok()?;
    Some((seq, Mark { count, hash }))
}

/// The mark at `path`: `Ok(None)` when there is no file, `Err(why)` when neither slot reads.
fn read_slots(path: &Path) -> Result<Option<(u64, Mark)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let newest = bytes
        .chunks(SLOT)
        .filter_map(decode_slot)
        .max_by_key(|(seq, _)| *seq);
    match newest {
        Some(found) => Ok(Some(found)),
        None => Err(format!(
            "{}: neither copy of the mark passes its checksum",
            path.display()
        )),
    }
}

pub(crate) fn read_mark(path: &Path) -> Result<Option<Mark>, String> {
    Ok(read_slots(path)?.map(|(_, m)| m))
}

/// Writes `mark` into the slot after the newest, durably; creates the file (whole, then renamed
/// into place) where there is none or it is unreadable. `raise`: only if it is larger.
fn write_mark(path: &Path, mark: Mark, raise: bool) -> Result<(), LogError> {
    let _one_at_a_time = MARKS.lock().unwrap_or_else(|p| p.into_inner());
    let current = read_slots(path);
    if let (true, Ok(Some((_, m)))) = (raise, &current) {
        if m.count >= mark.count {
            return Ok(());
        }
    }
    let whole = std::fs::metadata(path).is_ok_and(|m| m.len() == MARK_FILE as u64);
    match current {
        Ok(Some((seq, _))) if whole => {
            let next = seq + 1;
            let file = OpenOptions::new().write(true).open(path)?;
            file.write_all_at(&encode_slot(next, mark), (next % 2) * SLOT as u64)?;
            file.sync_data()?;
        }
        _ => {
            let mut bytes = [0u8; MARK_FILE];
            bytes[SLOT..].copy_from_slice(&encode_slot(1, mark));
            let tmp = path.with_extension("hwm.new");
            {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all_at(&bytes, 0)?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            let dir = path.parent().unwrap_or_else(|| Path::new("."));
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// Raises the mark of durable events to `count` events ending in `hash`; only for a count sled
/// holds durably.
pub(crate) fn raise_durable(dir: &Path, count: u64, hash: Hash) -> Result<(), LogError> {
    if count == 0 {
        return Ok(());
    }
    write_mark(&dir.join(DURABLE_MARK), Mark { count, hash }, true)
}

/// Raises the mark of signed checkpoints to a tree of `size` with `root`.
pub(crate) fn raise_signed(dir: &Path, size: u64, root: Hash) -> Result<(), LogError> {
    if size == 0 {
        return Ok(());
    }
    write_mark(
        &dir.join(SIGNED_MARK),
        Mark {
            count: size,
            hash: root,
        },
        true,
    )
}

/// What the open compares: the head it recovered, and how to read an event's hash.
pub(crate) struct Recovered<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) db: &'a sled::Db,
    pub(crate) count: u64,
    /// The hash of the event at a position below `count`; `None` where the caller leaves an
    /// unreadable event to its own check (`verify` names it).
    pub(crate) hash_at: &'a dyn Fn(u64) -> Result<Option<Hash>, LogError>,
}

/// Compares every durable record with the recovered log; `Ok(None)` when none shows more.
pub(crate) fn gather(
    r: &Recovered<'_>,
    external: &[Evidence],
) -> Result<Option<ShorterLog>, LogError> {
    let mut out = ShorterLog {
        recovered: r.count,
        evidence: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut longer = |source: String, count: u64| {
        if count > r.count {
            out.evidence.push(Evidence { source, count });
        }
    };
    for e in external {
        longer(e.source.clone(), e.count);
    }
    for (path, kind, count) in snapshots(r.dir)? {
        longer(format!("the snapshot {} ({kind})", file_name(&path)), count);
    }
    for item in r.db.scan_prefix([CURSOR]) {
        let (k, v) = item?;
        // An unreadable cursor is refused where it is used; it shows nothing here.
        if let Some(p) = be_u64(&v) {
            longer(
                format!(
                    "the cursor of subscription {:?}",
                    String::from_utf8_lossy(&k[1..])
                ),
                p,
            );
        }
    }
    let signed = r.dir.join(SIGNED_MARK);
    match read_mark(&signed) {
        Ok(Some(m)) => longer(
            format!(
                "the largest signed checkpoint issued ({}, tree size {}, root {})",
                SIGNED_MARK,
                m.count,
                hex::encode(m.hash)
            ),
            m.count,
        ),
        Ok(None) => {}
        Err(why) => out.unreadable.push(why),
    }
    let durable = r.dir.join(DURABLE_MARK);
    match read_mark(&durable) {
        Ok(Some(m)) if m.count > r.count => out.evidence.push(Evidence {
            source: format!("the high-water mark of durable events ({DURABLE_MARK})"),
            count: m.count,
        }),
        Ok(Some(m)) if m.count > 0 && (r.hash_at)(m.count - 1)?.is_some_and(|h| h != m.hash) => {
            out.evidence.push(Evidence {
                source: format!(
                    "the high-water mark of durable events ({DURABLE_MARK}), which records \
                     another event at position {} (hash {})",
                    m.count - 1,
                    hex::encode(m.hash)
                ),
                count: m.count,
            })
        }
        Ok(_) => {}
        Err(why) => out.unreadable.push(why),
    }
    if out.evidence.is_empty() && out.unreadable.is_empty() {
        return Ok(None);
    }
    out.evidence.sort_by_key(|e| std::cmp::Reverse(e.count));
    Ok(Some(out))
}

/// Every snapshot file of `dir` that reads (a damaged one shows nothing: it is a cache), with its
/// kind and count.
fn snapshots(dir: &Path) -> Result<Vec<(PathBuf, String, u64)>, LogError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "snap") {
            continue;
        }
        if let Ok(Some((kind, snap))) = snapshot::read_any(&path) {
            out.push((path, kind, snap.count));
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// After an accepted shorter log (its event durable at `recovered`): cursors past the recovered
/// count go back to it (so their subscribers read the acceptance next), snapshots longer than the
/// log are removed, the mark of durable events is set to `head` (the caller made sled durable
/// through it), and a signed mark past the recovered count is reset. Returns what it changed.
pub(crate) fn reset_after_acceptance(
    dir: &Path,
    db: &sled::Db,
    recovered: u64,
    head: (u64, Hash),
) -> Result<Vec<String>, LogError> {
    let mut changed = Vec::new();
    for item in db.scan_prefix([CURSOR]) {
        let (k, v) = item?;
        if let Some(p) = be_u64(&v).filter(|p| *p > recovered) {
            let mut value = v.to_vec();
            value[..8].copy_from_slice(&recovered.to_be_bytes());
            db.insert(&k, value)?;
            changed.push(format!(
                "cursor {:?} moved from {p} to {recovered}",
                String::from_utf8_lossy(&k[1..])
            ));
        }
    }
    for (path, _, count) in snapshots(dir)? {
        if count > recovered {
            std::fs::remove_file(&path)?;
            changed.push(format!("snapshot {} removed", file_name(&path)));
        }
    }
    let reset = |name: &str, mark: Mark| write_mark(&dir.join(name), mark, false);
    reset(
        DURABLE_MARK,
        Mark {
            count: head.0,
            hash: head.1,
        },
    )?;
    changed.push(format!("{DURABLE_MARK} set to {}", head.0));
    let signed = read_mark(&dir.join(SIGNED_MARK));
    if !matches!(signed, Ok(None)) && !matches!(&signed, Ok(Some(m)) if m.count <= recovered) {
        reset(
            SIGNED_MARK,
            Mark {
                count: 0,
                hash: GENESIS_HASH,
            },
        )?;
        changed.push(format!("{SIGNED_MARK} reset"));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_keeps_the_previous_value_when_its_newest_slot_is_damaged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DURABLE_MARK);
        assert_eq!(read_mark(&path), Ok(None));
        raise_durable(dir.path(), 5, [5; 32]).expect("raise");
        raise_durable(dir.path(), 9, [9; 32]).expect("raise");
        // Raising never lowers it.
        raise_durable(dir.path(), 7, [7; 32]).expect("raise");
        assert_eq!(
            read_mark(&path),
            Ok(Some(Mark {
                count: 9,
                hash: [9; 32]
            }))
        );
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            MARK_FILE as u64
        );
        // The newest slot torn: the older, smaller mark is read, never a larger one.
        let mut bytes = std::fs::read(&path).expect("read");
        let newest = bytes
            .chunks(SLOT)
            .position(|s| decode_slot(s).is_some_and(|(_, m)| m.count == 9))
            .expect("slot");
        bytes[newest * SLOT + 20] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(
            read_mark(&path),
            Ok(Some(Mark {
                count: 5,
                hash: [5; 32]
            }))
        );
        // Both slots damaged: unreadable, and said so.
        std::fs::write(&path, vec![0xAAu8; MARK_FILE]).expect("write");
        assert!(read_mark(&path).is_err_and(|e| e.contains(DURABLE_MARK)));
        // A write after that starts the file over.
        raise_durable(dir.path(), 3, [3; 32]).expect("raise");
        assert_eq!(read_mark(&path).expect("read").map(|m| m.count), Some(3));
    }

    #[test]
    fn the_refusal_names_each_record_and_both_counts() {
        let short = ShorterLog {
            recovered: 14,
            evidence: vec![
                Evidence {
                    source: "the snapshot state.snap (write-model/v2)".into(),
                    count: 59,
                },
                Evidence {
                    source: "the cursor of subscription \"x\"".into(),
                    count: 40,
                },
            ],
            unreadable: Vec::new(),
        };
        let text = short.to_string();
        for part in [
            "14 events",
            "show 59 events",
            "state.snap",
            "\"x\" (40 events)",
            "backup",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        assert_eq!(short.expected(), 59);
    }
}
