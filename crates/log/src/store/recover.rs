//! Recovery at open: the write-ahead log's frames past sled's durable head are applied to sled, in
//! order, as the same batches the writer applied; frames sled already holds must agree with it. A
//! writable open then makes sled durable and recycles every segment, so the log starts each run with
//! an empty write-ahead log whose first frame continues sled's head.
use super::read::read_event;
use super::*;
use crate::wal::{self, Scan};
use std::os::unix::fs::DirBuilderExt as _;

/// How a frame relates to sled's head as replay reaches it.
enum Step {
    /// sled holds it durably: only checked.
    Held,
    /// It continues sled's head: applied (or, read-only, counted).
    Next,
}

/// Checks every frame of `scan` against sled and applies those past its head (when `apply`).
/// Returns the head after replay. Refuses a frame that disagrees with sled, that overlaps sled's
/// head, or that leaves a gap after it.
pub(super) fn replay(db: &sled::Db, scan: &Scan, apply: bool) -> Result<Head, LogError> {
    let durable = stored_head(db)?;
    let mut head = durable;
    for (path, offset, frame) in scan.frames() {
        let step = if frame.end() <= durable.count {
            Step::Held
        } else if frame.first == head.count {
            Step::Next
        } else if frame.first < head.count {
            return Err(wal::corrupt(
                path,
                offset,
                frame.first,
                &format!(
                    "the frame for positions {}..{} overlaps the store's head at {}",
                    frame.first,
                    frame.end(),
                    head.count
                ),
            ));
        } else {
            return Err(wal::corrupt(
                path,
                offset,
                head.count,
                &format!(
                    "the frame starts at position {} but the store ends at {}: events are missing",
                    frame.first, head.count
                ),
            ));
        };
        match step {
            Step::Held => {
                let stored = read_event(db, frame.end() - 1)?;
                if stored.hash != frame.last_hash {
                    return Err(wal::corrupt(
                        path,
                        offset,
                        frame.end() - 1,
                        "the event logged here differs from the one the store holds",
                    ));
                }
            }
            Step::Next => {
                if apply {
                    db.apply_batch(frame.ops.to_batch())?;
                }
                head = Head {
                    count: frame.end(),
                    hash: frame.last_hash,
                };
            }
        }
    }
    if apply && head != durable {
        let stored = stored_head(db)?;
        if stored != head {
            return Err(LogError::Corrupt {
                position: stored.count,
                reason: format!(
                    "replaying the write-ahead log left the head at {} instead of {}",
                    stored.count, head.count
                ),
            });
        }
    }
    Ok(head)
}

/// The writable open's recovery: replays the write-ahead log into sled, makes sled durable, and
/// starts a fresh write-ahead log at the head.
pub(super) fn recover(
    dir: &Path,
    db: &sled::Db,
    data_file: &File,
    segment_bytes: u64,
) -> Result<wal::Wal, LogError> {
    let wal_dir = wal::wal_dir(dir);
    if !wal_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&wal_dir)?;
        // The directory entry itself must survive a crash, or its frames would vanish with it.
        File::open(dir)?.sync_all()?;
    }
    let scan = wal::scan(&wal_dir)?;
    if let Some((path, offset)) = &scan.torn {
        tracing::warn!(
            segment = %path.display(),
            offset,
            "the write-ahead log ends in a torn frame (a write cut by a crash, never acknowledged); it is cut off"
        );
    }
    let before = stored_head(db)?.count;
    let head = replay(db, &scan, true)?;
    if head.count > before {
        tracing::info!(
            from = before,
            to = head.count,
            "events replayed from the write-ahead log"
        );
    }
    // The layout mark goes with this flush: from here on the directory has a write-ahead log.
    db.insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes())?;
    db.flush()?;
    data_file.sync_data()?;
    sync_blobs(dir)?;
    let last_seq = scan.last_seq();
    let mut free = scan.free;
    for found in scan.in_use {
        let mut s = found.segment;
        s.recycle()?;
        free.push(s);
    }
    let wal = wal::Wal::start(&wal_dir, segment_bytes, last_seq, head.count, free)?;
    File::open(&wal_dir)?.sync_all()?;
    Ok(wal)
}

/// sled writes values it deems too big to separate blob files and never syncs them. Records are
/// bounded so this should not happen; if it does, the blobs are synced with sled's data file.
pub(super) fn sync_blobs(dir: &Path) -> Result<(), LogError> {
    let blobs = dir.join("blobs");
    let entries = match std::fs::read_dir(&blobs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut any = false;
    for entry in entries {
        File::open(entry?.path())?.sync_all()?;
        any = true;
    }
    if any {
        File::open(&blobs)?.sync_all()?;
    }
    Ok(())
}
