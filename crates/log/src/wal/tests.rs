//! Tests of the write-ahead log's format and recovery rules: what a scan keeps, what it cuts as a
//! torn tail, and what it refuses as damage (naming the file and offset).
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

/// A write-ahead log in `dir` holding `frames` (each continuing the last), with its offsets.
fn write(dir: &Path, segment_bytes: u64, frames: &[Frame]) -> (Wal, Vec<(PathBuf, u64)>) {
    let mut wal = Wal::start(dir, segment_bytes, 0, frames[0].first, Vec::new()).expect("start");
    let mut at = Vec::new();
    for f in frames {
        wal.append(f).expect("append");
        at.push((
            wal.active.path.clone(),
            wal.active.used - f.encode().len() as u64,
        ));
    }
    (wal, at)
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
    let len = frames[4].encode().len() as u64;
    patch(
        path.as_path(),
        last + len / 2,
        &vec![0u8; (len - len / 2) as usize],
    );
    let s = scan(dir.path()).expect("a torn tail is not damage");
    let read: Vec<Frame> = s.frames().map(|(_, _, f)| f.clone()).collect();
    assert_eq!(read, frames[..4]);
    assert_eq!(s.torn, Some((path, last)));
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
    let len = frames[1].encode().len();
    patch(&path, off, &vec![0u8; len]);
    let err = refusal(dir.path());
    assert!(err.contains(&format!("offset {off}")), "{err}");
    assert!(err.contains("zeroed range"), "{err}");
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
