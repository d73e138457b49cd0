//! The write-ahead log: the log's own record of every commit group, made durable with one
//! `fdatasync` before the group is acknowledged, so that sled can be written in memory and flushed
//! in the background. It knows sled only through the frames it replays; the store decides when
//! segments may be recycled.
//!
//! On disk, `wal/` holds segment files (`NNNNNNNN.wal`), each preallocated and filled with zeros
//! before first use, so that writing into it and `fdatasync` never change file metadata:
//! - a header of [`HEADER_BYTES`]: magic (whose last byte is the format version), state ([`ACTIVE`]
//!   or [`RETIRED`]), the segment's sequence number, the position of its first event, and a CRC32
//!   of those; an all-zero header marks a free segment, whose body must be all zeros too;
//! - then frames, back to back. Version 2: [`FRAME_MAGIC`] ‖ body length (u32 LE) ‖ CRC32 of the
//!   magic, the length and the body (u32 LE) ‖ body; the body is the group's first position and
//!   event count (u64 LE each), the hash of its last event, the *synced offset* (u64 LE: how much
//!   of this segment was known to be on disk when the frame was written), and the sled writes of
//!   the group (count, then key and value, each with a u32 LE length) exactly as the writer applied
//!   them; four zero bytes end the frames. Version 1 (written by earlier binaries, still read)
//!   has no magic and no synced offset.
//!
//! A segment's header is synced before any frame is written into it, a full segment is synced
//! before the next one is activated, and a recycled segment is marked retired (synced), then its
//! body zeroed (synced), then its header zeroed (synced); so at every crash point each file reads
//! as free, retired, or in use, and a zero header with data behind it can only be damage.
//!
//! The writer writes a group's frame while the previous group's sync may still be running, so a
//! power loss can keep frame k+1 and lose frame k. The synced offset tells the two cases apart:
//! a frame that fails its check is damage only if a later frame records that the bytes beyond it
//! were already synced when it was written; otherwise nothing from it on was ever acknowledged (an
//! acknowledgement waits for a sync covering its frame, which would have covered the bad one) and
//! it is an unacknowledged tail, cut at open.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::layout::Ops;
use crate::record::Hash;
use crate::LogError;

/// Bytes at the start of a segment before its first frame.
pub(crate) const HEADER_BYTES: u64 = 64;
/// The header magic without its last byte, the format version.
const MAGIC: &[u8; 7] = b"CLWAL\0\0";
/// The format this binary writes; version 1 is still read.
const VERSION: u8 = 2;
/// The first bytes of every version-2 frame, so that a scan can find the frames after a damaged
/// one without knowing its length.
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"\xF7WF2";
/// The header of a segment that holds frames.
pub(crate) const ACTIVE: u32 = 1;
/// The header of a segment being recycled: its frames are no longer needed.
pub(crate) const RETIRED: u32 = 2;
/// Magic, length and CRC before each version-2 frame body.
const FRAME_PREFIX: usize = 12;
/// Length and CRC before each version-1 frame body.
const FRAME_PREFIX_V1: usize = 8;
/// Fixed part of a frame body: first position, count, last hash, synced offset, number of writes.
const FRAME_FIXED: usize = 8 + 8 + 32 + 8 + 4;
/// The size of new segments unless a group needs more.
pub const DEFAULT_SEGMENT_BYTES: u64 = 4 << 20;
/// Zeros written at a time.
const ZERO_CHUNK: usize = 1 << 20;

/// One commit group as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) first: u64,
    pub(crate) count: u64,
    /// Hash of the group's last event.
    pub(crate) last_hash: Hash,
    pub(crate) ops: Ops,
}

impl Frame {
    /// The position after the group.
    pub(crate) fn end(&self) -> u64 {
        self.first + self.count
    }

    fn body_len(&self) -> usize {
        FRAME_FIXED
            + self
                .ops
                .0
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>()
    }

    /// The frame as written (version 2): prefix and body, recording that the first `synced` bytes
    /// of its segment were on disk when it was written.
    pub(crate) fn encode(&self, synced: u64) -> Vec<u8> {
        let body_len = self.body_len();
        let mut out = Vec::with_capacity(FRAME_PREFIX + body_len);
        out.extend_from_slice(&FRAME_MAGIC);
        // Groups are bounded far below 4 GiB by the writer's group limit and record limit.
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        self.put_body(&mut out, Some(synced));
        let crc = frame_crc(&out[..8], &out[FRAME_PREFIX..]);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The frame as an earlier binary wrote it (version 1), for tests of reading old segments.
    #[cfg(test)]
    pub(crate) fn encode_v1(&self) -> Vec<u8> {
        let body_len = self.body_len() - 8;
        let mut out = Vec::with_capacity(FRAME_PREFIX_V1 + body_len);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        self.put_body(&mut out, None);
        let crc = frame_crc(&out[..4], &out[FRAME_PREFIX_V1..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn put_body(&self, out: &mut Vec<u8>, synced: Option<u64>) {
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.last_hash);
        if let Some(s) = synced {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&(self.ops.0.len() as u32).to_le_bytes());
        for (k, v) in &self.ops.0 {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }

    /// The frame and its synced offset (`None` in version 1, which has none).
    fn decode_body(body: &[u8], version: u8) -> Option<(Frame, Option<u64>)> {
        let mut r = Reader(body);
        let first = r.u64()?;
        let count = r.u64()?;
        let last_hash: Hash = r.take(32)?.try_into().ok()?;
        let synced = if version >= 2 { Some(r.u64()?) } else { None };
        let n = r.u32()?;
        let mut ops = Vec::with_capacity((n as usize).min(1024));
        for _ in 0..n {
            let k = r.take(r.clone().u32()? as usize + 4)?[4..].to_vec();
            let v = r.take(r.clone().u32()? as usize + 4)?[4..].to_vec();
            ops.push((k, v));
        }
        if !r.0.is_empty() || count == 0 {
            return None;
        }
        first.checked_add(count)?;
        let frame = Frame {
            first,
            count,
            last_hash,
            ops: Ops(ops),
        };
        Some((frame, synced))
    }
}

fn frame_crc(prefix: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(prefix);
    h.update(body);
    h.finalize()
}

/// What a scan reads at one offset of a segment.
enum Parsed {
    /// Zeros where a frame would start: the frames end here (if nothing follows).
    End,
    /// A frame that passes its checks, its synced offset, and where the next one starts.
    Frame(Frame, Option<u64>, usize),
    /// Bytes that are not a frame; a frame's length, if readable, says where it would have ended.
    Bad { claimed_end: usize },
}

fn parse(bytes: &[u8], at: usize, version: u8) -> Parsed {
    let Some(head) = bytes.get(at..at + 4) else {
        return Parsed::End;
    };
    if head == [0u8; 4] {
        return Parsed::End;
    }
    let (prefix, len_at) = if version >= 2 {
        if head != FRAME_MAGIC {
            return Parsed::Bad {
                claimed_end: at + FRAME_PREFIX,
            };
        }
        (FRAME_PREFIX, at + 4)
    } else {
        (FRAME_PREFIX_V1, at)
    };
    let Some(len) = bytes.get(len_at..len_at + 4) else {
        return Parsed::Bad {
            claimed_end: bytes.len(),
        };
    };
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let end = at + prefix + len;
    let Some(f) = bytes.get(at..end) else {
        // The length itself is not one the writer could have written.
        return Parsed::Bad {
            claimed_end: at + prefix,
        };
    };
    let crc = u32::from_le_bytes(f[prefix - 4..prefix].try_into().expect("4 bytes"));
    if crc != frame_crc(&f[..prefix - 4], &f[prefix..]) {
        return Parsed::Bad { claimed_end: end };
    }
    match Frame::decode_body(&f[prefix..], version) {
        Some((frame, synced)) => Parsed::Frame(frame, synced, end),
        None => Parsed::Bad { claimed_end: end },
    }
}

#[derive(Clone)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// A segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) state: u32,
    pub(crate) seq: u64,
    /// The position of the segment's first event.
    pub(crate) base: u64,
    /// The format of the segment's frames.
    pub(crate) version: u8,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut h = [0u8; HEADER_BYTES as usize];
        h[..7].copy_from_slice(MAGIC);
        h[7] = self.version;
        h[8..12].copy_from_slice(&self.state.to_le_bytes());
        h[12..20].copy_from_slice(&self.seq.to_le_bytes());
        h[20..28].copy_from_slice(&self.base.to_le_bytes());
        let crc = crc32fast::hash(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// `Ok(None)` for an all-zero header (a free segment).
    fn decode(h: &[u8]) -> Result<Option<Header>, &'static str> {
        if h.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        if h.len() < HEADER_BYTES as usize || &h[..7] != MAGIC {
            return Err("not a write-ahead log segment header");
        }
        let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&h[..28]) || h[32..].iter().any(|b| *b != 0) {
            return Err("segment header fails its checksum");
        }
        let version = h[7];
        if !(1..=VERSION).contains(&version) {
            return Err("a segment format this binary does not know");
        }
        let state = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if state != ACTIVE && state != RETIRED {
            return Err("unknown segment state");
        }
        Ok(Some(Header {
            state,
            seq: u64::from_le_bytes(h[12..20].try_into().expect("8 bytes")),
            base: u64::from_le_bytes(h[20..28].try_into().expect("8 bytes")),
            version,
        }))
    }
}

/// How much of one activation of a segment was written and synced. Replaced at each activation,
/// so that a late sync of the file's previous use never counts for the next one.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    written: AtomicU64,
    synced: AtomicU64,
}

/// A segment's file as the syncer sees it: a sync records how much of the segment is on disk, which
/// the frames written after it carry (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct SyncHandle {
    file: Arc<File>,
    progress: Arc<Progress>,
}

impl SyncHandle {
    /// `fdatasync`; then everything written before it is known to be on disk.
    pub(crate) fn sync_data(&self) -> std::io::Result<()> {
        let written = self.progress.written.load(Ordering::Acquire);
        self.file.sync_data()?;
        self.progress.synced.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }

    /// Whether both are the same activation of the same segment (one sync serves both).
    pub(crate) fn same_segment(&self, other: &SyncHandle) -> bool {
        Arc::ptr_eq(&self.progress, &other.progress)
    }

    /// Bytes of the segment known to be on disk.
    #[cfg(test)]
    pub(crate) fn synced(&self) -> u64 {
        self.progress.synced.load(Ordering::Acquire)
    }
}

/// One segment file.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// The file's size.
    pub(crate) len: u64,
    /// Bytes from the start that may be other than zero.
    pub(crate) used: u64,
    progress: Arc<Progress>,
}

impl Segment {
    fn open(path: &Path) -> Result<Segment, LogError> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Segment {
            path: path.to_path_buf(),
            file: Arc::new(file),
            len,
            used: len,
            progress: Arc::default(),
        })
    }

    /// Creates a zero-filled segment of `len` bytes, durable with its directory entry.
    pub(crate) fn create(dir: &Path, len: u64) -> Result<Segment, LogError> {
        let mut n = 0u64;
        let path = loop {
            let p = dir.join(format!("{n:08}.wal"));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let tmp = dir.join(format!("{n:08}.wal.new"));
        // Private from the first byte, whatever the umask: the ledger's data is the service's alone.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(ZERO_CHUNK as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        // Only a whole, zeroed file ever carries a segment's name.
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(Segment {
            path,
            file: Arc::new(file),
            len,
            used: 0,
            progress: Arc::default(),
        })
    }

    /// The handle the syncer syncs this activation of the segment through.
    pub(crate) fn handle(&self) -> SyncHandle {
        SyncHandle {
            file: self.file.clone(),
            progress: self.progress.clone(),
        }
    }

    /// Writes an active header and syncs it, before any frame goes in.
    pub(crate) fn activate(&mut self, seq: u64, base: u64) -> Result<(), LogError> {
        let h = Header {
            state: ACTIVE,
            seq,
            base,
            version: VERSION,
        }
        .encode();
        self.file.write_all_at(&h, 0)?;
        self.file.sync_data()?;
        self.used = HEADER_BYTES;
        self.progress = Arc::new(Progress {
            written: AtomicU64::new(HEADER_BYTES),
            synced: AtomicU64::new(HEADER_BYTES),
        });
        Ok(())
    }

    /// Makes the segment free again: retired header, zeroed body, zeroed header, each synced (see
    /// the module's crash argument). Only for a segment whose frames sled holds durably.
    pub(crate) fn recycle(&mut self) -> Result<(), LogError> {
        if self.used == 0 {
            return Ok(());
        }
        let h = Header {
            state: RETIRED,
            seq: 0,
            base: 0,
            version: VERSION,
        }
        .encode();
        self.file.write_all_at(&h, 0)?;
        self.file.sync_data()?;
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = HEADER_BYTES;
        while at < self.used {
            let n = (self.used - at).min(ZERO_CHUNK as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_data()?;
        self.file.write_all_at(&[0u8; HEADER_BYTES as usize], 0)?;
        self.file.sync_data()?;
        self.used = 0;
        Ok(())
    }

    /// Appends an encoded frame at `self.used`; the caller checked that it fits.
    pub(crate) fn write_frame(&mut self, frame: &[u8]) -> Result<(), LogError> {
        self.file.write_all_at(frame, self.used)?;
        self.used += frame.len() as u64;
        self.progress.written.store(self.used, Ordering::Release);
        Ok(())
    }

    pub(crate) fn fits(&self, frame_len: usize) -> bool {
        // Room for the frame and for four zero bytes after it, so the frames always end.
        self.used + frame_len as u64 + 4 <= self.len
    }
}

/// A segment in use found at open, with its frames.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) segment: Segment,
    pub(crate) header: Header,
    /// Each with its offset in the file.
    pub(crate) frames: Vec<(u64, Frame)>,
}

impl Found {
    /// The position after its last frame (its base when it has none).
    pub(crate) fn end(&self) -> u64 {
        self.frames
            .last()
            .map_or(self.header.base, |(_, f)| f.end())
    }
}

/// Where a scan cut an unacknowledged tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Torn {
    pub(crate) path: PathBuf,
    /// The offset of the first frame that failed its check.
    pub(crate) offset: u64,
    /// Frames that passed their checks after it, cut with it (written before it was synced).
    pub(crate) later_frames: usize,
}

/// What an open found in `wal/`.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Segments in use, by sequence number.
    pub(crate) in_use: Vec<Found>,
    /// Free and retired segments (to be zeroed before reuse where `used > 0`).
    pub(crate) free: Vec<Segment>,
    /// Where an unacknowledged tail was cut, if one was.
    pub(crate) torn: Option<Torn>,
}

impl Scan {
    /// Every frame, in order.
    pub(crate) fn frames(&self) -> impl Iterator<Item = (&Path, u64, &Frame)> {
        self.in_use.iter().flat_map(|f| {
            f.frames
                .iter()
                .map(move |(off, fr)| (f.segment.path.as_path(), *off, fr))
        })
    }

    /// The highest sequence number in use.
    pub(crate) fn last_seq(&self) -> u64 {
        self.in_use.last().map_or(0, |f| f.header.seq)
    }

    /// Checks that the segments sled does not fully hold follow each other (sequence numbers and
    /// positions). A segment whose frames all end at or below `held`, sled's durable head, is left
    /// out: a recycle that failed half-way can leave one in use behind later ones, and replay still
    /// checks its frames against sled.
    pub(crate) fn check_chain(&self, held: u64) -> Result<(), LogError> {
        let mut prev: Option<&Found> = None;
        for found in self.in_use.iter().filter(|f| f.end() > held) {
            if let Some(p) = prev {
                let (seq, end) = (p.header.seq, p.end());
                if found.header.seq != seq + 1 || found.header.base != end {
                    return Err(corrupt(
                        &found.segment.path,
                        0,
                        end,
                        &format!(
                            "segment {} starts at position {} but the previous one ({seq}) ends at {end}",
                            found.header.seq, found.header.base
                        ),
                    ));
                }
            }
            prev = Some(found);
        }
        Ok(())
    }
}

pub(crate) fn corrupt(path: &Path, offset: u64, position: u64, what: &str) -> LogError {
    LogError::Corrupt {
        position,
        reason: format!(
            "write-ahead log segment {} at byte offset {offset}: {what}; the log cannot tell which \
             acknowledged events are lost, so it refuses to open: restore from a backup",
            path.display()
        ),
    }
}

/// The directory of the segments.
pub(crate) fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// Reads every segment in `dir` (which may be missing) without changing anything, and checks the
/// frames: their CRCs, and that each segment's frames continue from its base without gaps (how
/// segments follow each other is [`Scan::check_chain`]'s, once sled's head is known). An
/// unacknowledged tail of the newest segment (see the module documentation) is left out and
/// reported in [`Scan::torn`]; anything else that fails is [`LogError::Corrupt`] naming the file
/// and offset.
pub(crate) fn scan(dir: &Path) -> Result<Scan, LogError> {
    let mut out = Scan::default();
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    names.sort();
    let mut loaded = Vec::new();
    for path in names {
        let mut segment = Segment::open(&path)?;
        let bytes = read_all(&segment)?;
        let header = Header::decode(&bytes[..bytes.len().min(HEADER_BYTES as usize)])
            .map_err(|why| corrupt(&path, 0, 0, why))?;
        let last_nonzero = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1) as u64;
        match header {
            None if last_nonzero > 0 => {
                return Err(corrupt(
                    &path,
                    HEADER_BYTES,
                    0,
                    "a free segment (zero header) holds data: its header was lost",
                ))
            }
            Some(h) if h.state == ACTIVE => loaded.push((segment, h, bytes, last_nonzero)),
            _ => {
                segment.used = last_nonzero;
                out.free.push(segment);
            }
        }
    }
    loaded.sort_by_key(|(_, h, _, _)| h.seq);
    let newest = loaded.len().checked_sub(1);
    for (i, (mut segment, header, bytes, last_nonzero)) in loaded.into_iter().enumerate() {
        let (frames, end, torn) = scan_frames(
            &segment.path,
            &bytes,
            header,
            last_nonzero,
            Some(i) == newest,
        )?;
        if torn.is_some() {
            out.torn = torn;
        }
        segment.used = last_nonzero.max(end);
        out.in_use.push(Found {
            segment,
            header,
            frames,
        });
    }
    Ok(out)
}

/// Why the frames of a segment stopped before its last non-zero byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Checksum,
    Zeroed,
}

impl Stop {
    fn what(self) -> &'static str {
        match self {
            Stop::Checksum => "a frame fails its checksum",
            Stop::Zeroed => "the frames stop (zero length) where data follows: a zeroed range",
        }
    }
}

type Frames = (Vec<(u64, Frame)>, u64, Option<Torn>);

/// The frames of one segment in use, the offset after the last one, and the tail cut, if any.
fn scan_frames(
    path: &Path,
    bytes: &[u8],
    header: Header,
    last_nonzero: u64,
    newest: bool,
) -> Result<Frames, LogError> {
    let mut frames = Vec::new();
    let mut at = HEADER_BYTES as usize;
    let mut position = header.base;
    let (stop, claimed_end) = loop {
        match parse(bytes, at, header.version) {
            Parsed::End if (at as u64) < last_nonzero => break (Stop::Zeroed, at),
            Parsed::End => return Ok((frames, at as u64, None)),
            Parsed::Frame(f, synced, next) => {
                if f.first != position {
                    return Err(corrupt(
                        path,
                        at as u64,
                        position,
                        &format!(
                            "a frame for positions from {} where {position} was expected",
                            f.first
                        ),
                    ));
                }
                if synced.is_some_and(|s| s > at as u64 || s < HEADER_BYTES) {
                    return Err(corrupt(
                        path,
                        at as u64,
                        position,
                        "a frame records a synced offset that cannot be right",
                    ));
                }
                position = f.end();
                frames.push((at as u64, f));
                at = next;
            }
            Parsed::Bad { claimed_end } => break (Stop::Checksum, claimed_end),
        }
    };
    let damage =
        |why: String| -> Result<Frames, LogError> { Err(corrupt(path, at as u64, position, &why)) };
    // In an older segment nothing is unacknowledged: it was synced whole before the next one
    // was activated.
    if !newest {
        return damage(format!("{} and data follows it", stop.what()));
    }
    if header.version < 2 {
        // No synced offsets: only a cut last frame with nothing but zeros after it is a torn write.
        if stop == Stop::Checksum && last_nonzero <= claimed_end as u64 {
            return Ok((frames, at as u64, Some(torn(path, at, 0))));
        }
        return damage(format!("{} and data follows it", stop.what()));
    }
    let later = later_frames(bytes, at, last_nonzero as usize);
    if let Some((q, synced)) = later.iter().find(|(_, s)| *s > at as u64) {
        return damage(format!(
            "{}, yet the frame at offset {q}, written once the first {synced} bytes were synced, \
             shows it was on disk",
            stop.what()
        ));
    }
    Ok((frames, at as u64, Some(torn(path, at, later.len()))))
}

fn torn(path: &Path, at: usize, later_frames: usize) -> Torn {
    Torn {
        path: path.to_path_buf(),
        offset: at as u64,
        later_frames,
    }
}

/// The version-2 frames that pass their checks after offset `bad` (found by their magic), each
/// with its offset and synced offset.
fn later_frames(bytes: &[u8], bad: usize, last_nonzero: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut q = bad + 1;
    let end = last_nonzero.min(bytes.len());
    while q + FRAME_PREFIX <= end {
        let Some(found) = bytes[q..end]
            .windows(FRAME_MAGIC.len())
            .position(|w| w == FRAME_MAGIC)
        else {
            break;
        };
        let p = q + found;
        match parse(bytes, p, VERSION) {
            Parsed::Frame(_, synced, next) => {
                out.push((p as u64, synced.unwrap_or(0)));
                q = next;
            }
            _ => q = p + 1,
        }
    }
    out
}

fn read_all(segment: &Segment) -> Result<Vec<u8>, LogError> {
    let mut bytes = vec![0u8; segment.len as usize];
    segment.file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Segments waiting for recycling, and recycled ones ready for reuse; shared by the writer and
/// the background flusher.
#[derive(Default)]
pub(crate) struct Pool {
    inner: Mutex<PoolInner>,
    wake: Condvar,
    /// Held while a segment file is created, so two threads never pick the same name.
    creating: Mutex<()>,
    /// Where new segments go, and their size.
    dir: PathBuf,
    segment_bytes: u64,
}

#[derive(Default)]
struct PoolInner {
    free: Vec<Segment>,
    /// Full segments whose frames sled may not hold durably yet.
    retired: Vec<Segment>,
    stop: bool,
    /// A flush of sled failed once: the kernel may have dropped its dirty pages, so a later flush
    /// that succeeds proves nothing. No segment is recycled again in this process; the next open
    /// replays them.
    flush_failed: bool,
    /// A segment could not be recycled: the flusher waits before it tries again.
    recycle_failed: bool,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Segments retired so far (for tests and shutdown).
    pub(crate) fn retired_count(&self) -> usize {
        self.lock().retired.len()
    }

    pub(crate) fn free_count(&self) -> usize {
        self.lock().free.len()
    }

    /// Recycles every retired segment, after `make_durable` has made sled durable past them.
    /// Segments retired while `make_durable` runs wait for the next call. With none retired,
    /// `make_durable` runs only if `always`.
    pub(crate) fn recycle_retired(
        &self,
        always: bool,
        make_durable: &dyn Fn() -> Result<(), LogError>,
    ) -> Result<usize, LogError> {
        let retired = {
            let mut g = self.lock();
            if g.flush_failed {
                return Ok(0);
            }
            std::mem::take(&mut g.retired)
        };
        if retired.is_empty() {
            return if always {
                make_durable().map(|()| 0)
            } else {
                Ok(0)
            };
        }
        // Every frame of a retired segment was applied to sled before it was retired, so this
        // flush covers them all.
        if let Err(e) = make_durable() {
            let mut g = self.lock();
            g.retired.extend(retired);
            g.flush_failed = true;
            return Err(e);
        }
        let mut n = 0;
        for mut s in retired {
            match s.recycle() {
                Ok(()) => {
                    self.lock().free.push(s);
                    n += 1;
                }
                Err(e) => {
                    // Kept retired, to be tried again: dropped, it would stay in use on disk
                    // behind newer segments. An open skips it, since sled holds its frames.
                    tracing::error!(segment = %s.path.display(), error = %e, "cannot recycle a write-ahead log segment");
                    let mut g = self.lock();
                    g.retired.push(s);
                    g.recycle_failed = true;
                }
            }
        }
        Ok(n)
    }

    /// The background flusher: waits for retired segments (or `interval`), makes sled durable and
    /// recycles them, until [`Pool::stop`].
    pub(crate) fn run_flusher(
        &self,
        interval: Duration,
        make_durable: &dyn Fn() -> Result<(), LogError>,
    ) {
        loop {
            {
                let mut g = self.lock();
                // After a failed flush nothing more is recycled, and after a failed recycle the
                // next try waits: wait instead of spinning on either.
                if (g.retired.is_empty() || g.flush_failed || g.recycle_failed) && !g.stop {
                    g.recycle_failed = false;
                    g = self
                        .wake
                        .wait_timeout(g, interval)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if g.stop {
                    return;
                }
            }
            if let Err(e) = self.recycle_retired(false, make_durable) {
                tracing::error!(error = %e, "background flush of the store failed; segments kept");
            }
            // A spare, so the writer rarely has to zero a new file while appends wait.
            if self.lock().free.is_empty() {
                match self.create() {
                    Ok(s) => self.lock().free.push(s),
                    Err(e) => tracing::warn!(error = %e, "cannot create a spare segment"),
                }
            }
        }
    }

    fn create(&self) -> Result<Segment, LogError> {
        self.create_sized(self.segment_bytes)
    }

    fn create_sized(&self, len: u64) -> Result<Segment, LogError> {
        let _one_at_a_time = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        Segment::create(&self.dir, len)
    }

    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }
}

/// The writer's side of the write-ahead log: the active segment.
pub(crate) struct Wal {
    active: Segment,
    seq: u64,
    pub(crate) pool: Arc<Pool>,
}

impl Wal {
    /// Starts a new segment for positions from `base`, after `scan`'s segments were all recycled
    /// (their frames are in sled, durably) and are handed over in `free`.
    pub(crate) fn start(
        dir: &Path,
        segment_bytes: u64,
        last_seq: u64,
        base: u64,
        free: Vec<Segment>,
    ) -> Result<Wal, LogError> {
        let pool = Arc::new(Pool {
            dir: dir.to_path_buf(),
            segment_bytes,
            ..Pool::default()
        });
        pool.lock().free = free;
        let active = take_free(&pool, 0)?;
        let mut wal = Wal {
            active,
            seq: last_seq + 1,
            pool,
        };
        wal.active.activate(wal.seq, base)?;
        Ok(wal)
    }

    /// Writes `frame` (not synced); returns the segment to sync before acknowledging it.
    pub(crate) fn append(&mut self, frame: &Frame) -> Result<SyncHandle, LogError> {
        let len = FRAME_PREFIX + frame.body_len();
        if !self.active.fits(len) {
            let next = take_free(&self.pool, len)?;
            // The full segment goes to disk whole before any frame goes into the next one, so a
            // frame that fails its check in an older segment is always damage.
            self.active.handle().sync_data()?;
            let full = std::mem::replace(&mut self.active, next);
            self.seq += 1;
            self.active.activate(self.seq, frame.first)?;
            self.pool.lock().retired.push(full);
            self.pool.wake.notify_all();
        }
        let bytes = frame.encode(self.active.progress.synced.load(Ordering::Acquire));
        self.active.write_frame(&bytes)?;
        Ok(self.active.handle())
    }

    /// At shutdown, once sled is durable: recycles every segment, so a cleanly closed log has an
    /// empty write-ahead log.
    pub(crate) fn close(mut self) -> Result<(), LogError> {
        self.pool.stop();
        self.pool.recycle_retired(false, &|| Ok(()))?;
        self.active.recycle()
    }
}

/// A free segment with room for a frame of `frame_len` bytes (zeroed if it needs it), or a new one.
fn take_free(pool: &Pool, frame_len: usize) -> Result<Segment, LogError> {
    let need = HEADER_BYTES + frame_len as u64 + 4;
    let found = {
        let mut g = pool.lock();
        let i = g.free.iter().position(|s| s.len >= need);
        i.map(|i| g.free.swap_remove(i))
    };
    match found {
        Some(mut s) => {
            s.recycle()?;
            Ok(s)
        }
        None => pool.create_sized(pool.segment_bytes.max(need)),
    }
}

#[cfg(test)]
mod tests;
