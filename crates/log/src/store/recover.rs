//! Recovery at open: the write-ahead log's frames past sled's durable head are applied to sled, in
//! order, as the same batches the writer applied, each only if its events continue the hash chain
//! from the head; frames sled already holds must agree with it. A writable open then makes sled
//! durable, raises the mark of durable events (see `evidence`) and recycles every segment, so the
//! log starts each run with an empty write-ahead log whose first frame continues sled's head.
use super::read::read_event;
use super::*;
use crate::layout::{frames, page_first};
use crate::record;
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
/// head, that leaves a gap after it, or whose events do not link to the head's hash.
pub(super) fn replay(db: &sled::Db, scan: &Scan, apply: bool) -> Result<Head, LogError> {
    let durable = stored_head(db)?;
    scan.check_chain(durable.count)?;
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
                check_links(frame, &head)
                    .map_err(|why| wal::corrupt(path, offset, frame.first, &why))?;
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
    if let Some(torn) = &scan.torn {
        tracing::warn!(
            segment = %torn.path.display(),
            offset = torn.offset,
            later_frames = torn.later_frames,
            "the write-ahead log ends in a frame that was never synced (a write cut by a crash, \
             never acknowledged): it and the frames written after it are cut off"
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
    crate::evidence::raise_durable(dir, head.count, head.hash)?;
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

/// Checks that the events `frame` would append continue the log at `head`: its pages follow each
/// other from its first position, each record's bytes match the hash stored with them and link to
/// the event before, and the last is the frame's last hash. A frame of another log, or one written
/// after a gap, could otherwise pass every other check.
fn check_links(frame: &wal::Frame, head: &Head) -> Result<(), String> {
    let mut pages: Vec<(u64, &[u8])> = frame
        .ops
        .0
        .iter()
        .filter_map(|(k, v)| page_first(k).map(|first| (first, v.as_slice())))
        .collect();
    pages.sort_by_key(|(first, _)| *first);
    let (mut position, mut prev) = (frame.first, head.hash);
    for (first, page) in pages {
        if first != position {
            return Err(format!(
                "the frame holds a page from position {first} where {position} was expected"
            ));
        }
        for item in frames(page) {
            let (hash, bytes) = item.ok_or("the frame holds a cut page")?;
            let rec = record::decode(position, bytes.to_vec()).map_err(|e| e.to_string())?;
            if rec.hash != hash || rec.position != position {
                return Err(format!(
                    "the event for position {position} in the frame does not match its hash"
                ));
            }
            if rec.prev_hash != prev {
                return Err(format!(
                    "the event at position {position} does not link to the hash before it ({}): \
                     the frame does not continue this log",
                    hex::encode(prev)
                ));
            }
            prev = rec.hash;
            position += 1;
        }
    }
    if position != frame.end() || prev != frame.last_hash {
        return Err(format!(
            "the frame's events end at position {position}, not at its last hash and position {}",
            frame.end()
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{Frame, Header};
    use std::os::unix::fs::FileExt as _;

    fn event(i: u64) -> AppendRequest {
        AppendRequest {
            events: vec![NewEvent {
                event_id: Uuid::new_v4(),
                stream: format!("s-{}", i % 3),
                event_type: "Noted".into(),
                schema_version: 1,
                payload: RawValue::from_string(format!(r#"{{"i":{i}}}"#)).expect("json"),
            }],
            expectations: Vec::new(),
            idempotency: None,
            recorded_by: "tester".into(),
            correlation_id: None,
            causation_id: None,
        }
    }

    fn copy_files(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("ls") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
            }
        }
    }

    /// A data directory whose write-ahead log the previous binary wrote (segment format 1) opens,
    /// replays those frames, and goes on in format 2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_written_by_the_previous_format_are_replayed() {
        let root = tempfile::tempdir().expect("tempdir");
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        let log = EventLog::open(&a, LogOptions::default(), None).expect("open");
        for i in 0..10 {
            log.append(event(i)).await.expect("append");
        }
        log.checkpoint().await.expect("checkpoint");
        // sled as of that sync, without the write-ahead log.
        copy_files(&a, &b);
        for i in 10..25 {
            log.append(event(i)).await.expect("append");
        }
        let acked = log.read_all(0, false, usize::MAX).expect("read");
        // The same frames, as the previous binary wrote them.
        let scan = wal::scan(&wal::wal_dir(&a)).expect("scan");
        let frames: Vec<Frame> = scan
            .frames()
            .map(|(_, _, f)| f.clone())
            .filter(|f| f.end() > 10)
            .collect();
        assert!(frames.len() >= 2);
        drop(log);
        let dir = wal::wal_dir(&b);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = File::create(dir.join("00000000.wal")).expect("create");
        file.set_len(1 << 20).expect("size");
        let header = Header {
            state: wal::ACTIVE,
            seq: 7,
            base: frames[0].first,
            version: 1,
        };
        file.write_all_at(&header.encode(), 0).expect("header");
        let mut at = wal::HEADER_BYTES;
        for f in &frames {
            let bytes = f.encode_v1();
            file.write_all_at(&bytes, at).expect("frame");
            at += bytes.len() as u64;
        }
        drop(file);
        let log = EventLog::open(&b, LogOptions::default(), None).expect("recover");
        let recovered = log.read_all(0, false, usize::MAX).expect("read");
        assert_eq!(
            recovered.iter().map(|e| e.hash).collect::<Vec<_>>(),
            acked.iter().map(|e| e.hash).collect::<Vec<_>>()
        );
        log.append(event(99)).await.expect("append after");
        drop(log);
        let scan = wal::scan(&dir).expect("scan");
        assert!(scan.in_use.is_empty(), "closed clean");
        assert!(crate::verify::verify_dir(&b).expect("verify").is_ok());
    }
}
