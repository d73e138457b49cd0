//! Tests of the write-ahead log's format and recovery rules: what a scan keeps, what it cuts as an
//! unacknowledged tail, and what it refuses as damage (naming the file and offset).
use super::*;

fn frame(first: u64, count: u64, tag: u8) -> Frame {
    Frame {
        first,
        count,
        last_hash: [tag; 32],
        ops: Ops(vec![
            (vec![b'e', tag], vec![tag; 100 + tag as usize]),
            (b"mhead".to_vec(), vec![tag; 40]),
        ]),
    }
}

/// A write-ahead log in `dir` holding `frames` (each continuing the last), each synced before the
/// next is written (as when each group's acknowledgement came before the next group), with its
/// offsets.
fn write(dir: &Path, segment_bytes: u64, frames: &[Frame]) -> (Wal, Vec<(PathBuf, u64)>) {
    write_synced(dir, segment_bytes, frames, |_| true)
}

/// Like [`write`], syncing after frame `i` only if `sync(i)`.
fn write_synced(
    dir: &Path,
    segment_bytes: u64,
    frames: &[Frame],
    sync: impl Fn(usize) -> bool,
) -> (Wal, Vec<(PathBuf, u64)>) {
    let mut wal = Wal::start(dir, segment_bytes, 0, frames[0].first, Vec::new()).expect("start");
    let mut at = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let handle = wal.append(f).expect("append");
        at.push((
            wal.active.path.clone(),
            wal.active.used - (FRAME_PREFIX + f.body_len()) as u64,
        ));
        if sync(i) {
            handle.sync_data().expect("sync");
        }
    }
    (wal, at)
}

fn read(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .expect("open")
        .read_exact_at(&mut b, offset)
        .expect("read");
    b
}

fn frames_of(n: u64) -> Vec<Frame> {
    (0..n).map(|i| frame(i * 2, 2, i as u8 + 1)).collect()
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(bytes, offset).expect("patch");
}

fn refusal(dir: &Path) -> String {
    match scan(dir) {
        Ok(s) => panic!(
            "damage was accepted: {} frames, torn {:?}",
            s.frames().count(),
            s.torn
        ),
        Err(e) => e.to_string(),
    }
}

#[test]
fn frames_read_back_in_order_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(40);
    // Small segments: the frames spread over several.
    let (_wal, at) = write(dir.path(), 1024, &frames);
    assert!(
        at.iter()
            .map(|(p, _)| p)
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 3
    );
    let s = scan(dir.path()).expect("scan");
    let read: Vec<Frame> = s.frames().map(|(_, _, f)| f.clone()).collect();
    assert_eq!(read, frames);
    assert!(s.torn.is_none());
    assert_eq!(s.in_use.len(), s.last_seq() as usize);
}

#[test]
fn a_torn_last_frame_is_cut_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(5);
    let (_wal, at) = write(dir.path(), 1 << 16, &frames);
    let (path, last) = at.last().expect("frames").clone();
    // The tail of the last frame never reached the disk: zeros, as the file was before.
    let len = (FRAME_PREFIX + frames[4].body_len()) as u64;
    patch(
        path.as_path(),
        last + len / 2,
        &vec![0u8; (len - len / 2) as usize],
    );
    let s = scan(dir.path()).expect("a torn tail is not damage");
    let read: Vec<Frame> = s.frames().map(|(_, _, f)| f.clone()).collect();
    assert_eq!(read, frames[..4]);
    assert_eq!(
        s.torn,
        Some(Torn {
            path,
            offset: last,
            later_frames: 0
        })
    );
}

/// A power loss kept frame k+1 but not frame k, written before k's sync returned: nothing from k
/// on was acknowledged, so it is a tail to cut, whether k reads as zeros, as garbage or half
/// written.
#[test]
fn a_lost_frame_with_a_later_unsynced_frame_behind_it_is_an_unacknowledged_tail() {
    let frames = frames_of(6);
    for damage in ["zeros", "garbage", "half"] {
        let dir = tempfile::tempdir().expect("tempdir");
        // Frames 0..=2 were acknowledged one by one; 3 and 4 were written while 3's sync ran.
        let (_wal, at) = write_synced(dir.path(), 1 << 16, &frames[..5], |i| i < 3);
        let (path, off) = at[3].clone();
        let len = FRAME_PREFIX + frames[3].body_len();
        let bytes = match damage {
            "zeros" => vec![0u8; len],
            "garbage" => (0..len).map(|i| (i * 7 + 3) as u8).collect(),
            _ => {
                let mut b = read(&path, off, len);
                b[len / 2..].fill(0);
                b
            }
        };
        patch(&path, off, &bytes);
        let s = scan(dir.path()).unwrap_or_else(|e| panic!("{damage}: refused: {e}"));
        let kept: Vec<Frame> = s.frames().map(|(_, _, f)| f.clone()).collect();
        assert_eq!(kept, frames[..3], "{damage}");
        assert_eq!(
            s.torn,
            Some(Torn {
                path: path.clone(),
                offset: off,
                later_frames: 1
            }),
            "{damage}"
        );
    }
}

/// The same damage where a later frame was written once the damaged one was synced: it was on
/// disk, so it is damage, and the scan refuses.
#[test]
fn a_lost_frame_that_a_later_frame_shows_was_synced_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(5);
    let (_wal, at) = write(dir.path(), 1 << 16, &frames);
    let (path, off) = at[3].clone();
    patch(&path, off, &vec![0u8; FRAME_PREFIX + frames[3].body_len()]);
    let err = refusal(dir.path());
    assert!(err.contains(&format!("offset {off}")), "{err}");
    assert!(err.contains("zeroed range"), "{err}");
    assert!(err.contains(&format!("offset {}", at[4].1)), "{err}");
}

/// A full segment is synced before the next one is activated, so the frames of an older segment
/// are all on disk once a newer one holds any.
#[test]
fn a_full_segment_is_synced_before_the_next_one_is_activated() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing syncs between frames: only the roll does.
    let (wal, _) = write_synced(dir.path(), 1024, &frames_of(20), |_| false);
    let g = wal.pool.lock();
    assert!(g.retired.len() > 2, "small segments fill and retire");
    for s in &g.retired {
        assert_eq!(s.handle().synced(), s.used, "{}", s.path.display());
    }
    assert_eq!(wal.active.handle().synced(), HEADER_BYTES);
}

#[test]
fn a_flipped_byte_in_the_middle_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(5);
    let (_wal, at) = write(dir.path(), 1 << 16, &frames);
    let (path, off) = at[2].clone();
    let mut b = [0u8; 1];
    std::fs::File::open(&path)
        .expect("open")
        .read_exact_at(&mut b, off + 30)
        .expect("read");
    patch(&path, off + 30, &[b[0] ^ 0x20]);
    let err = refusal(dir.path());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(&format!("offset {off}")), "{err}");
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn a_flipped_byte_in_the_last_frame_of_an_older_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(30);
    let (_wal, at) = write(dir.path(), 1024, &frames);
    // The last frame of the first segment: a cut there cannot be a torn write.
    let first = &at[0].0;
    let (path, off) = at
        .iter()
        .rev()
        .find(|(p, _)| p == first)
        .expect("frame")
        .clone();
    patch(&path, off + 20, &[0xff]);
    let err = refusal(dir.path());
    assert!(err.contains(&format!("offset {off}")), "{err}");
}

#[test]
fn a_zeroed_range_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(5);
    let (_wal, at) = write(dir.path(), 1 << 16, &frames);
    let (path, off) = at[1].clone();
    let len = FRAME_PREFIX + frames[1].body_len();
    patch(&path, off, &vec![0u8; len]);
    let err = refusal(dir.path());
    assert!(err.contains(&format!("offset {off}")), "{err}");
    assert!(err.contains("zeroed range"), "{err}");
}

/// Segments written by the previous binary (format 1: no frame magic, no synced offsets) still
/// read, and keep its rule: only a cut last frame followed by zeros is a torn write.
#[test]
fn segments_of_format_1_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(5);
    let path = dir.path().join("00000000.wal");
    let mut bytes = vec![0u8; 1 << 16];
    let header = Header {
        state: ACTIVE,
        seq: 1,
        base: 0,
        version: 1,
    };
    bytes[..HEADER_BYTES as usize].copy_from_slice(&header.encode());
    let mut offsets = Vec::new();
    let mut at = HEADER_BYTES as usize;
    for f in &frames {
        let b = f.encode_v1();
        bytes[at..at + b.len()].copy_from_slice(&b);
        offsets.push(at as u64);
        at += b.len();
    }
    std::fs::write(&path, &bytes).expect("write");
    let s = scan(dir.path()).expect("scan");
    let read: Vec<Frame> = s.frames().map(|(_, _, f)| f.clone()).collect();
    assert_eq!(read, frames);
    assert_eq!(s.in_use[0].header.version, 1);
    // A flipped byte in the middle, with frames after it: damage, as before.
    patch(&path, offsets[2] + 30, &[0xEE]);
    let err = refusal(dir.path());
    assert!(err.contains(&format!("offset {}", offsets[2])), "{err}");
    // The last frame cut with zeros after it: a torn write, cut.
    std::fs::write(&path, &bytes).expect("rewrite");
    let last = offsets[4] as usize;
    patch(&path, (last + 20) as u64, &vec![0u8; at - last - 20]);
    let s = scan(dir.path()).expect("a torn tail");
    assert_eq!(s.frames().count(), 4);
    assert_eq!(s.torn.map(|t| t.offset), Some(offsets[4]));
}

/// A recycle that failed before it marked its segment retired leaves it in use behind newer
/// segments. sled holds its frames, so the chain check skips it; only where sled does not hold
/// them is the gap refused.
#[test]
fn a_stale_segment_left_in_use_by_a_failed_recycle_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(30);
    let (wal, _) = write(dir.path(), 1024, &frames);
    let (stale_path, stale_bytes) = {
        let g = wal.pool.lock();
        let s = &g.retired[0];
        (s.path.clone(), read(&s.path, 0, s.len as usize))
    };
    wal.pool
        .recycle_retired(false, &|| Ok(()))
        .expect("recycle");
    // The state a recycle that failed at its first write leaves: the old frames, still in use.
    std::fs::write(&stale_path, &stale_bytes).expect("write back");
    let s = scan(dir.path()).expect("scan");
    assert_eq!(s.in_use.len(), 2);
    let stale_end = s.in_use[0].end();
    let active_base = s.in_use[1].header.base;
    assert!(stale_end < active_base, "a gap between them");
    // sled durably holds everything before the active segment: the stale one is skipped.
    s.check_chain(active_base).expect("stale segment skipped");
    // sled holds less than the stale segment: the gap is real, and refused.
    let err = s.check_chain(0).expect_err("a real gap").to_string();
    assert!(err.contains("starts at position"), "{err}");
}

/// A segment that cannot be recycled stays retired in the pool, to be tried again, instead of
/// being dropped while its file is still in use on disk.
#[test]
fn a_segment_that_cannot_be_recycled_stays_retired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = write(dir.path(), 1024, &frames_of(30));
    let retired = wal.pool.retired_count();
    assert!(retired > 1);
    let victim = {
        let mut g = wal.pool.lock();
        let s = &mut g.retired[0];
        // Writes through a read-only handle fail, as on a failing disk.
        s.file = Arc::new(std::fs::File::open(&s.path).expect("open read-only"));
        s.path.clone()
    };
    let recycled = wal
        .pool
        .recycle_retired(false, &|| Ok(()))
        .expect("the flush succeeded");
    assert_eq!(recycled, retired - 1);
    assert_eq!(wal.pool.retired_count(), 1);
    let s = scan(dir.path()).expect("scan");
    assert!(s.in_use.iter().any(|f| f.segment.path == victim));
}

#[test]
fn a_lost_header_with_frames_behind_it_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_wal, at) = write(dir.path(), 1 << 16, &frames_of(3));
    patch(&at[0].0, 0, &[0u8; HEADER_BYTES as usize]);
    let err = refusal(dir.path());
    assert!(err.contains("header"), "{err}");
}

#[test]
fn after_a_failed_flush_nothing_is_recycled_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(30);
    let (wal, _) = write(dir.path(), 1024, &frames);
    let retired = wal.pool.retired_count();
    assert!(retired > 0, "small segments fill and retire");
    // A failed flush of the store recycles nothing: every frame still reads back.
    let failed = wal.pool.recycle_retired(false, &|| Err(LogError::Closed));
    assert!(failed.is_err());
    assert_eq!(wal.pool.retired_count(), retired);
    // Nor does a later flush that succeeds: the failed one may have lost pages it never rewrites.
    let later = wal.pool.recycle_retired(false, &|| Ok(()));
    assert_eq!(later.expect("no error"), 0);
    assert_eq!(wal.pool.retired_count(), retired);
    assert_eq!(
        scan(dir.path()).expect("scan").frames().count(),
        frames.len()
    );
}

#[test]
fn segments_are_recycled_only_after_the_store_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(30);
    let (wal, _) = write(dir.path(), 1024, &frames);
    let retired = wal.pool.retired_count();
    assert!(retired > 0, "small segments fill and retire");
    // The frames are still there while the store is being made durable, and gone after.
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let recycled = wal
        .pool
        .recycle_retired(false, &|| {
            let n = scan(dir.path()).expect("scan").frames().count();
            seen.store(n, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .expect("recycle");
    assert_eq!(recycled, retired);
    assert_eq!(seen.into_inner(), frames.len());
    assert_eq!(wal.pool.retired_count(), 0);
    assert_eq!(wal.pool.free_count(), retired);
    let s = scan(dir.path()).expect("scan");
    assert_eq!(s.in_use.len(), 1, "only the active segment is left in use");
    // Its frames continue from the base the active segment recorded, so a scan still checks them.
    let first = s.frames().next().map(|(_, _, f)| f.first);
    assert_eq!(first, Some(s.in_use[0].header.base));
    assert!(
        s.free.iter().all(|f| f.used == 0),
        "recycled segments are all zeros"
    );
}

#[test]
fn a_free_segment_is_reused_for_new_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = frames_of(60);
    let (mut wal, _) = write(dir.path(), 1024, &frames[..30]);
    wal.pool
        .recycle_retired(false, &|| Ok(()))
        .expect("recycle");
    let files = std::fs::read_dir(dir.path()).expect("dir").count();
    for f in &frames[30..] {
        wal.append(f).expect("append");
        wal.pool
            .recycle_retired(false, &|| Ok(()))
            .expect("recycle");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), files);
    let s = scan(dir.path()).expect("scan");
    let last = s.frames().last().map(|(_, _, f)| f.clone());
    assert_eq!(last.as_ref(), frames.last());
}
