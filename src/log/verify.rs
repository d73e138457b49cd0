//! Offline verification of a data directory: recomputes every event's hash from its stored bytes,
//! checks the chain links, gap-free positions, stream revisions and the head, recomputes every
//! Merkle leaf and stored subtree hash and the root, and names the first position that does not
//! match. Reads sled directly, so the server must be stopped (sled locks the
//! directory).
use std::collections::HashMap;
use std::path::Path;

use super::layout::{
    be_u64, chunk_positions, node_key, parse_head, parse_stream_chunk_key, split_event_value,
    CHUNK, EVENT, FRONTIER_KEY, HEAD_KEY, STREAM,
};
use super::record::{self, Hash, GENESIS_HASH};
use super::store::open_db;
use super::LogError;
use crate::merkle::{self, Frontier};

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub streams: usize,
    pub head_hash: Hash,
    /// The recomputed RFC 6962 root over every event; `None` for a log kept without its tree.
    pub merkle_root: Option<Hash>,
}

/// The first mismatch found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {reason}")]
pub struct Mismatch {
    pub position: u64,
    pub reason: String,
}

/// Verifies the log in `dir`. `Ok(Err(m))` is a log that opened but does not verify.
pub fn verify_dir(dir: &Path) -> Result<Result<VerifyReport, Mismatch>, LogError> {
    if !dir.join("db").exists() {
        return Err(LogError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no claims-ledger data in {}", dir.display()),
        )));
    }
    let db = open_db(dir)?;
    verify_db(&db)
}

/// Verifies an open sled database holding a log.
pub fn verify_db(db: &sled::Db) -> Result<Result<VerifyReport, Mismatch>, LogError> {
    let fail = |position: u64, reason: String| Ok(Err(Mismatch { position, reason }));
    let mut expected_pos = 0u64;
    let mut prev: Hash = GENESIS_HASH;
    // Positions of each stream's events, as the log itself says (index = revision).
    let mut streams: HashMap<String, Vec<u64>> = HashMap::new();
    // The tree is checked when the log keeps one: every stored subtree hash against its recomputation.
    let stored_frontier = db.get(FRONTIER_KEY)?;
    let mut tree = stored_frontier.as_ref().map(|_| Frontier::new());
    for item in db.scan_prefix([EVENT]) {
        let (k, v) = item?;
        let Some(pos) = be_u64(&k[1..]).filter(|_| k.len() == 9) else {
            return fail(expected_pos, format!("malformed event key {k:?}"));
        };
        if pos != expected_pos {
            return fail(expected_pos, format!("missing; next event found is {pos}"));
        }
        let Some((stored_hash, bytes)) = split_event_value(&v) else {
            return fail(pos, "truncated event value".into());
        };
        let hash = record::sha256(bytes);
        if hash != stored_hash {
            return fail(
                pos,
                "stored bytes do not match the hash written with them".into(),
            );
        }
        let rec = match record::decode(pos, bytes.to_vec()) {
            Ok(r) => r,
            Err(e) => return fail(pos, e.to_string()),
        };
        if rec.position != pos {
            return fail(pos, format!("record claims position {}", rec.position));
        }
        if rec.prev_hash != prev {
            return fail(
                pos,
                format!(
                    "prev_hash {} does not link to the previous event's hash {}",
                    hex::encode(rec.prev_hash),
                    hex::encode(prev)
                ),
            );
        }
        let positions = streams.entry(rec.stream.clone()).or_default();
        if rec.stream_revision != positions.len() as u64 {
            return fail(
                pos,
                format!(
                    "stream {} revision {} where {} was expected",
                    rec.stream,
                    rec.stream_revision,
                    positions.len()
                ),
            );
        }
        positions.push(pos);
        if let Some(t) = tree.as_mut() {
            let mut bad: Option<(u32, u64, String)> = None;
            let _ = t.push_with(merkle::leaf_hash(bytes), |level, index, computed| {
                if bad.is_some() {
                    return;
                }
                match db.get(node_key(level, index)) {
                    Ok(Some(v)) if v.as_ref() == computed.as_slice() => {}
                    Ok(Some(_)) => bad = Some((level, index, "does not match".into())),
                    Ok(None) => bad = Some((level, index, "is missing".into())),
                    Err(e) => bad = Some((level, index, format!("is unreadable: {e}"))),
                }
            });
            if let Some((level, index, what)) = bad {
                // A subtree over leaves [index << level, ...): name its first leaf.
                return fail(
                    index << level,
                    format!("Merkle subtree hash ({level}, {index}) {what}"),
                );
            }
        }
        prev = hash;
        expected_pos += 1;
    }
    match db.get(HEAD_KEY)? {
        Some(h) if parse_head(&h) != Some((expected_pos, prev)) => {
            let (count, hash) = parse_head(&h).unwrap_or((0, GENESIS_HASH));
            return fail(
                expected_pos.min(count),
                format!(
                    "head record says {count} events, hash {}; the log has {expected_pos}, hash {}",
                    hex::encode(hash),
                    hex::encode(prev)
                ),
            );
        }
        None if expected_pos > 0 => return fail(expected_pos, "head record is missing".into()),
        _ => {}
    }
    if let (Some(t), Some(stored)) = (&tree, &stored_frontier) {
        if stored.as_ref() != t.to_bytes().as_slice() {
            return fail(
                expected_pos,
                "the stored Merkle frontier does not match the recomputed tree".into(),
            );
        }
    }
    // The stream index must list exactly the positions found above.
    let mut indexed: HashMap<String, Vec<u64>> = HashMap::new();
    for item in db.scan_prefix([STREAM]) {
        let (k, v) = item?;
        let Some((stream, chunk)) = parse_stream_chunk_key(&k) else {
            return fail(expected_pos, format!("malformed stream index key {k:?}"));
        };
        let list = indexed.entry(stream.to_string()).or_default();
        if list.len() as u64 != chunk * CHUNK {
            return fail(
                expected_pos,
                format!("stream {stream}: index chunk {chunk} out of place"),
            );
        }
        list.extend(chunk_positions(&v));
    }
    for (stream, positions) in &streams {
        let listed = indexed.remove(stream).unwrap_or_default();
        if let Some(i) =
            (0..positions.len().max(listed.len())).find(|i| positions.get(*i) != listed.get(*i))
        {
            let at = positions
                .get(i)
                .or(listed.get(i))
                .copied()
                .unwrap_or(expected_pos);
            return fail(
                at,
                format!("stream {stream}: index disagrees with the log at revision {i}"),
            );
        }
    }
    if let Some(stream) = indexed.keys().next() {
        return fail(
            expected_pos,
            format!("stream index lists {stream}, which has no events"),
        );
    }
    Ok(Ok(VerifyReport {
        events: expected_pos,
        streams: streams.len(),
        head_hash: prev,
        merkle_root: tree.map(|t| t.root()),
    }))
}
