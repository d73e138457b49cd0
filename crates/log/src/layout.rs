//! The on-disk layout: one sled tree, keys prefixed by one byte, so that one `apply_batch` is atomic
//! across all of them. Every sled key written costs a node update, a log message and, sooner or later,
//! a leaf rewrite, whatever its size; so a commit group writes a few large keys, not several per event:
//! - `e` + first position (u64 BE) → a page: the events of one commit group (split at
//!   [`PAGE_TARGET_BYTES`]), in position order, each framed as record length (u32 BE) ‖ SHA-256 of the
//!   record ‖ the record bytes. The hash is of the record bytes exactly as stored; keeping it beside
//!   them lets `verify` tell altered bytes (it names that position) from a broken link (it names the
//!   next one). An event is found through the page with the greatest first position at or below it.
//! - `t` + tile level (u8) + tile index (u64 BE) → a Merkle tile as in C2SP tlog-tiles: the hashes
//!   (32 bytes each, at most [`TILE_WIDTH`]) of the perfect subtrees at tree level
//!   `TILE_HEIGHT * tile level` with indexes `[index * TILE_WIDTH, ...)`. Level 0 holds the leaf
//!   hashes `SHA-256(0x00 ‖ record)`. The last tile of each level is partial and grows with the log.
//!   Nodes between tile levels are recomputed from a tile when a proof needs them.
//! - `i` + idempotency key → JSON idempotency record.
//! - `mhead` → event count (u64 BE) ‖ hash of the last event.
//! - `mtree` → the Merkle frontier (size ‖ right-edge subtree hashes) after the last event.
//! - `mlayout` → [`LAYOUT_VERSION`] (u32 BE), so a binary never misreads another layout.
//! - `c` + subscription name → the position up to which that named subscriber acknowledged (u64 BE)
//!   ‖ the name of the identity that owns it (UTF-8; empty, or absent as written before owners: none).
//!
//! Beside sled, `<data-dir>/wal/` holds the write-ahead log's segments (format in `wal`): every
//! group's writes above, logged and synced before the group is acknowledged; and `durable.hwm` and
//! `signed.hwm` hold the high-water marks an open compares the log with (format in `evidence`).
//!
//! There is no stream index on disk: the writer keeps each stream's positions in memory and rebuilds
//! them from the records' own `stream` and `stream_revision` when the log opens.
use super::record::{Hash, MAX_RECORD_BYTES};

pub(crate) const EVENT: u8 = b'e';
pub(crate) const TILE: u8 = b't';
pub(crate) const IDEMPOTENCY: u8 = b'i';
pub(crate) const HEAD_KEY: &[u8] = b"mhead";
pub(crate) const CURSOR: u8 = b'c';
pub(crate) const FRONTIER_KEY: &[u8] = b"mtree";
pub(crate) const LAYOUT_KEY: &[u8] = b"mlayout";
/// 1 was one key per event with a stream index on disk; 2 is pages and tiles; 3 adds the
/// write-ahead log in `wal/` (a layout-2 directory is migrated in place: it gets an empty one).
pub(crate) const LAYOUT_VERSION: u32 = 3;
/// The layout this binary migrates in place (same keys, no write-ahead log yet).
pub(crate) const LAYOUT_MIGRATES: u32 = 2;

/// Somewhere a commit group's keys are staged: a sled batch, or the list of writes that also goes
/// to the write-ahead log (so recovery replays exactly what the writer applied).
pub(crate) trait Stage {
    fn put(&mut self, key: &[u8], value: &[u8]);
}

impl Stage for sled::Batch {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.insert(key, value);
    }
}

/// The writes of one commit group, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Ops(pub(crate) Vec<(Vec<u8>, Vec<u8>)>);

impl Stage for Ops {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.0.push((key.to_vec(), value.to_vec()));
    }
}

impl Ops {
    pub(crate) fn to_batch(&self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in &self.0 {
            batch.insert(&k[..], &v[..]);
        }
        batch
    }
}

/// A page is closed once it holds this many bytes. sled splits a leaf past 16 entries, so a leaf of
/// pages stays far below sled's 4 MiB blob threshold even when single records are as large as
/// [`MAX_RECORD_BYTES`] (a page then holds just that record).
pub(crate) const PAGE_TARGET_BYTES: usize = 64 * 1024;
/// Bytes a page spends on each event besides its record.
pub(crate) const FRAME_OVERHEAD: usize = 4 + 32;
const _: () = assert!(17 * (MAX_RECORD_BYTES + FRAME_OVERHEAD) < 4 << 20);

/// Tree levels per tile level, and hashes per full tile.
pub(crate) const TILE_HEIGHT: u32 = 8;
pub(crate) const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// The key of the page whose first event is at `first`.
pub(crate) fn page_key(first: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT;
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

/// The first position of a page key.
pub(crate) fn page_first(k: &[u8]) -> Option<u64> {
    match k {
        [EVENT, rest @ ..] if rest.len() == 8 => be_u64(rest),
        _ => None,
    }
}

pub(crate) fn tile_key(level: u8, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = TILE;
    k[1] = level;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Appends one event's frame to a page.
pub(crate) fn push_frame(page: &mut Vec<u8>, hash: &Hash, record: &[u8]) {
    // Records are bounded by MAX_RECORD_BYTES, far below u32::MAX.
    page.extend_from_slice(&(record.len() as u32).to_be_bytes());
    page.extend_from_slice(hash);
    page.extend_from_slice(record);
}

/// The frames of a page in order: `Some((hash, record))`, or one `None` where the bytes stop
/// making a whole frame (and nothing after it).
pub(crate) fn frames(page: &[u8]) -> impl Iterator<Item = Option<(Hash, &[u8])>> + '_ {
    let mut rest = page;
    let mut broken = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || broken {
            return None;
        }
        let frame = (|| {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let hash: Hash = rest.get(4..36)?.try_into().ok()?;
            let record = rest.get(36..36usize.checked_add(len)?)?;
            Some((hash, record, 36 + len))
        })();
        match frame {
            Some((hash, record, used)) => {
                rest = &rest[used..];
                Some(Some((hash, record)))
            }
            None => {
                broken = true;
                Some(None)
            }
        }
    })
}

/// Cuts events into pages: a page is closed before an event that would take it past
/// [`PAGE_TARGET_BYTES`], so every page holds at least one event.
pub(crate) struct PageBuilder {
    pages: Vec<(u64, Vec<u8>)>,
}

impl PageBuilder {
    pub(crate) fn new() -> Self {
        PageBuilder { pages: Vec::new() }
    }

    pub(crate) fn push(&mut self, position: u64, hash: &Hash, record: &[u8]) {
        let size = FRAME_OVERHEAD + record.len();
        match self.pages.last_mut() {
            Some((_, page)) if page.len() + size <= PAGE_TARGET_BYTES => {
                push_frame(page, hash, record)
            }
            _ => {
                let mut page = Vec::with_capacity(size.max(PAGE_TARGET_BYTES.min(size * 64)));
                push_frame(&mut page, hash, record);
                self.pages.push((position, page));
            }
        }
    }

    /// Stages every page in `batch`.
    pub(crate) fn stage(self, batch: &mut impl Stage) {
        for (first, page) in self.pages {
            batch.put(&page_key(first)[..], &page);
        }
    }
}

pub(crate) fn idempotency_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(IDEMPOTENCY);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn cursor_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(CURSOR);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn head_value(count: u64, hash: &Hash) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(hash);
    v
}

pub(crate) fn parse_head(v: &[u8]) -> Option<(u64, Hash)> {
    Some((be_u64(v)?, v.get(8..40)?.try_into().ok()?))
}

pub(crate) fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_each_hash_apart_from_its_record_and_stop_at_broken_frames() {
        let mut page = Vec::new();
        push_frame(&mut page, &[7u8; 32], b"{}");
        push_frame(&mut page, &[8u8; 32], b"[1]");
        let all: Vec<_> = frames(&page).collect();
        assert_eq!(
            all,
            vec![
                Some(([7u8; 32], &b"{}"[..])),
                Some(([8u8; 32], &b"[1]"[..]))
            ]
        );
        let cut: Vec<_> = frames(&page[..page.len() - 1]).collect();
        assert_eq!(cut, vec![Some(([7u8; 32], &b"{}"[..])), None]);
        assert_eq!(parse_head(&head_value(9, &[1u8; 32])), Some((9, [1u8; 32])));
    }

    #[test]
    fn page_builder_closes_pages_at_the_target_and_never_leaves_one_empty() {
        let big = vec![b'x'; PAGE_TARGET_BYTES / 3];
        let mut b = PageBuilder::new();
        for pos in 10..15 {
            b.push(pos, &[0u8; 32], &big);
        }
        // A huge record gets a page of its own.
        let huge = vec![b'y'; PAGE_TARGET_BYTES * 2];
        b.push(15, &[0u8; 32], &huge);
        let firsts: Vec<u64> = b.pages.iter().map(|(f, _)| *f).collect();
        assert_eq!(firsts, vec![10, 12, 14, 15]);
        assert!(b.pages.iter().all(|(_, p)| frames(p).count() >= 1));
    }

    #[test]
    fn page_keys_sort_by_position_and_parse_back() {
        assert!(page_key(255) < page_key(256));
        assert!(page_key(u64::MAX - 1) < page_key(u64::MAX));
        assert_eq!(page_first(&page_key(42)), Some(42));
        assert_eq!(page_first(b"mhead"), None);
        assert!(tile_key(0, 1) < tile_key(1, 0));
    }
}
