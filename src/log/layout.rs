//! The on-disk layout: one sled tree, keys prefixed by one byte, so that one `apply_batch` is atomic
//! across all of them. Two keys per event, because every sled key costs a node update:
//! - `e` + position (u64 BE) → SHA-256 of the record (32 bytes) ‖ the record bytes. The hash is of the
//!   record bytes exactly as stored; keeping it beside them lets `verify` tell altered bytes (it names
//!   that position) from a broken link (it names the next one).
//! - `s` + stream + 0x00 + chunk (u32 BE) → the positions (u64 BE each) of the stream's revisions
//!   `chunk * CHUNK ..`; a stream's revision count is implied by its chunks.
//! - `i` + idempotency key → JSON idempotency record.
//! - `mhead` → event count (u64 BE) ‖ hash of the last event.
//! - `c` + subscription name → the position up to which that named subscriber acknowledged (u64 BE).
//! - `n` + level (u8) + index (u64 BE) → the RFC 6962 hash of the perfect Merkle subtree over leaves
//!   `[index << level, (index + 1) << level)`; level 0 holds the leaf hashes `SHA-256(0x00 ‖ record)`.
//!   Written in the same batch as the events that complete them; about two per event.
//! - `mtree` → the Merkle frontier (size ‖ right-edge subtree hashes) after the last event.
use super::record::Hash;

pub(crate) const EVENT: u8 = b'e';
pub(crate) const STREAM: u8 = b's';
pub(crate) const IDEMPOTENCY: u8 = b'i';
pub(crate) const HEAD_KEY: &[u8] = b"mhead";
pub(crate) const CURSOR: u8 = b'c';
pub(crate) const NODE: u8 = b'n';
pub(crate) const FRONTIER_KEY: &[u8] = b"mtree";
/// Positions per stream-index chunk: small enough that rewriting the last chunk is cheap.
pub(crate) const CHUNK: u64 = 64;

pub(crate) fn event_key(pos: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT;
    k[1..].copy_from_slice(&pos.to_be_bytes());
    k
}

pub(crate) fn node_key(level: u32, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = NODE;
    // Levels never exceed 64 (a tree of at most 2^64 leaves).
    k[1] = level.min(255) as u8;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

pub(crate) fn event_value(hash: &Hash, record: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + record.len());
    v.extend_from_slice(hash);
    v.extend_from_slice(record);
    v
}

/// The stored hash and the record bytes of an event value.
pub(crate) fn split_event_value(v: &[u8]) -> Option<(Hash, &[u8])> {
    let hash: Hash = v.get(..32)?.try_into().ok()?;
    Some((hash, &v[32..]))
}

/// `s` + stream + 0x00: the prefix of all of a stream's chunks.
pub(crate) fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 6);
    k.push(STREAM);
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k
}

pub(crate) fn stream_chunk_key(stream: &str, chunk: u64) -> Vec<u8> {
    let mut k = stream_prefix(stream);
    k.extend_from_slice(&(chunk as u32).to_be_bytes());
    k
}

/// Splits a stream-chunk key into the stream name and the chunk number.
pub(crate) fn parse_stream_chunk_key(k: &[u8]) -> Option<(&str, u64)> {
    let body = k.strip_prefix(&[STREAM])?;
    let (name, chunk) = body.split_at(body.len().checked_sub(5)?);
    if chunk.first() != Some(&0) {
        return None;
    }
    let n = u32::from_be_bytes(chunk[1..].try_into().ok()?);
    Some((std::str::from_utf8(name).ok()?, u64::from(n)))
}

/// The positions listed in a chunk value.
pub(crate) fn chunk_positions(v: &[u8]) -> impl Iterator<Item = u64> + '_ {
    v.chunks_exact(8).filter_map(be_u64)
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
    fn stream_chunk_keys_round_trip_and_do_not_collide_with_longer_names() {
        let k = stream_chunk_key("party-a", 3);
        assert_eq!(parse_stream_chunk_key(&k), Some(("party-a", 3)));
        // "party-a" chunks must not be found under the prefix of "party-ab" or vice versa.
        assert!(!k.starts_with(&stream_prefix("party-ab")));
        assert!(!stream_chunk_key("party-ab", 0).starts_with(&stream_prefix("party-a")));
        assert_eq!(parse_stream_chunk_key(b"sx"), None);
    }

    #[test]
    fn event_values_keep_the_hash_apart_from_the_record() {
        let v = event_value(&[7u8; 32], b"{}");
        assert_eq!(split_event_value(&v), Some(([7u8; 32], &b"{}"[..])));
        assert_eq!(split_event_value(&v[..31]), None);
        assert_eq!(parse_head(&head_value(9, &[1u8; 32])), Some((9, [1u8; 32])));
        let positions: Vec<u64> =
            chunk_positions(&[0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1, 0]).collect();
        assert_eq!(positions, vec![5, 256]);
    }

    #[test]
    fn event_keys_sort_by_position() {
        assert!(event_key(255) < event_key(256));
        assert!(event_key(u64::MAX - 1) < event_key(u64::MAX));
    }
}
