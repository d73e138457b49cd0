//! Offline verification of a data directory: recomputes every event's hash from its stored bytes,
//! checks the chain links, gap-free positions, stream revisions and the head, recomputes every
//! Merkle leaf and stored tile and the root, and names the first position that does not match.
//! It also checks the idempotency index against the log: each append's idempotency mark (see
//! `record`) must have an `i` record with exactly that append's answer, and an `i` record without a
//! mark (written before marks existed) must point at events that are in the log with those hashes;
//! a forged or stale record would otherwise answer a client's retry with a write it never made.
//! Reads sled directly, so the server must be stopped (sled locks the directory).
use std::collections::HashMap;
use std::path::Path;

use super::layout::{
    be_u64, frames, page_first, parse_head, FRONTIER_KEY, HEAD_KEY, IDEMPOTENCY, TILE, TILE_HEIGHT,
    TILE_WIDTH,
};
use super::marks::Marks;
use super::record::{self, Hash, GENESIS_HASH};
use super::store::{open_db, Appended, IdempotencyRecord, StreamIndex, INDEX_SNAPSHOT};
use super::tiles::Tiles;
use super::LogError;
use claims_ledger_core::merkle::{self, Frontier};

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub streams: usize,
    pub head_hash: Hash,
    /// The recomputed RFC 6962 root over every event; `None` for a log kept without its tree.
    pub merkle_root: Option<Hash>,
    /// Idempotency records checked against their append's mark.
    pub idempotency_marked: u64,
    /// Idempotency records without a mark (older appends), checked against the events they name.
    pub idempotency_unmarked: u64,
    /// Events covered by the stream index snapshot the server would start from, checked against the
    /// log (`None`: no snapshot it would use).
    pub index_snapshot: Option<u64>,
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
    super::store::check_wal(dir, &db)?;
    let count = match db.get(HEAD_KEY)? {
        Some(h) => parse_head(&h).map_or(0, |(count, _)| count),
        None => 0,
    };
    // A snapshot the server would not use is no concern of the log's integrity.
    let snapshot = super::store::read_index_snapshot(dir, &db, count)
        .ok()
        .flatten();
    check(&db, snapshot)
}

/// Verifies an open sled database holding a log.
pub fn verify_db(db: &sled::Db) -> Result<Result<VerifyReport, Mismatch>, LogError> {
    check(db, None)
}

/// Verifies the log in `db` and, if given, the stream index snapshot the server would start from.
fn check(
    db: &sled::Db,
    snapshot: Option<(StreamIndex, u64)>,
) -> Result<Result<VerifyReport, Mismatch>, LogError> {
    let fail = |position: u64, reason: String| Ok(Err(Mismatch { position, reason }));
    // Another layout cannot be checked, which is not the same as failing the check.
    if let Some(reason) = super::store::layout_mismatch(db)? {
        return Err(LogError::Corrupt {
            position: 0,
            reason,
        });
    }
    let mut expected_pos = 0u64;
    let mut prev: Hash = GENESIS_HASH;
    // Revisions of each stream, as the log itself says.
    let mut streams: HashMap<String, u64> = HashMap::new();
    // The tree is checked when the log keeps one: every stored tile against its recomputation.
    let stored_frontier = db.get(FRONTIER_KEY)?;
    let mut tree = stored_frontier
        .as_ref()
        .map(|_| (Frontier::new(), Tiles::default()));
    let mut tiles_checked = 0usize;
    // The stored level-0 tile holding the current position's leaf, by tile index.
    let mut leaf_tile: Option<(u64, Option<sled::IVec>)> = None;
    let mut marks = Marks::default();
    for item in db.scan_prefix([super::layout::EVENT]) {
        let (k, v) = item?;
        let Some(first) = page_first(&k) else {
            return fail(expected_pos, format!("malformed page key {k:?}"));
        };
        if first != expected_pos {
            return fail(
                expected_pos,
                format!("missing; the next page starts at {first}"),
            );
        }
        for frame in frames(&v) {
            let pos = expected_pos;
            let Some((stored_hash, bytes)) = frame else {
                return fail(pos, "truncated page".into());
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
            let revision = streams.entry(rec.stream.clone()).or_default();
            if rec.stream_revision != *revision {
                return fail(
                    pos,
                    format!(
                        "stream {} revision {} where {} was expected",
                        rec.stream, rec.stream_revision, revision
                    ),
                );
            }
            if let Some((index, covered)) = snapshot.as_ref().filter(|(_, c)| pos < *c) {
                let mapped = index
                    .get(rec.stream.as_str())
                    .and_then(|p| p.get(*revision as usize));
                if mapped != Some(&pos) {
                    return fail(
                        pos,
                        format!(
                            "the stream index snapshot ({INDEX_SNAPSHOT}, {covered} events), which \
                             the server would start from, maps {} revision {} to {mapped:?}; \
                             delete it",
                            rec.stream, revision
                        ),
                    );
                }
            }
            *revision += 1;
            if let Some((frontier, tiles)) = tree.as_mut() {
                // Each leaf is checked as it comes, so a rewritten event is named by its position
                // before the broken link after it.
                let leaf = merkle::leaf_hash(bytes);
                let tile = pos / TILE_WIDTH;
                if leaf_tile.as_ref().map(|(t, _)| *t) != Some(tile) {
                    leaf_tile = Some((tile, db.get(super::layout::tile_key(0, tile))?));
                }
                let slot = (pos % TILE_WIDTH) as usize * 32;
                let stored = leaf_tile
                    .as_ref()
                    .and_then(|(_, v)| v.as_ref())
                    .and_then(|v| v.get(slot..slot + 32));
                if stored != Some(leaf.as_slice()) {
                    return fail(
                        pos,
                        format!(
                            "Merkle leaf hash in tile (0, {tile}) {}",
                            if stored.is_some() {
                                "does not match the event"
                            } else {
                                "is missing"
                            }
                        ),
                    );
                }
                let mut bad: Option<(u64, String)> = None;
                tiles.push(frontier, leaf, &mut |level, index, computed| {
                    tiles_checked += 1;
                    if bad.is_none() {
                        bad = tile_mismatch(db, level, index, &computed);
                    }
                });
                if let Some((at, what)) = bad {
                    return fail(at, what);
                }
            }
            // After the tree: a rewritten event is named by its leaf before the record naming it.
            if let Err(reason) = marks.check(&rec) {
                return fail(pos, reason);
            }
            if let Some(closed) = marks.push(&rec) {
                let stored = db.get(super::layout::idempotency_key(&closed.key))?;
                let stored: Option<IdempotencyRecord> =
                    stored.and_then(|v| serde_json::from_slice(&v).ok());
                let key = &closed.key;
                match stored {
                    None => {
                        return fail(
                            closed.first,
                            format!(
                                "the idempotency record of key {key:?} is missing or unreadable"
                            ),
                        )
                    }
                    Some(s) if s != closed.answer => {
                        return fail(
                            closed.first,
                            format!(
                                "the idempotency record of key {key:?} does not match its append"
                            ),
                        )
                    }
                    Some(_) => {}
                }
            }
            prev = hash;
            expected_pos += 1;
        }
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
    if let Err(reason) = marks.check_end() {
        return fail(marks.open_since().unwrap_or(expected_pos), reason);
    }
    let mut unmarked = 0u64;
    for item in db.scan_prefix([IDEMPOTENCY]) {
        let (k, v) = item?;
        let key = String::from_utf8_lossy(&k[1..]).into_owned();
        if marks.marked(&key) {
            continue;
        }
        unmarked += 1;
        if let Err(m) = unmarked_record_matches(db, &key, &v, expected_pos)? {
            return Ok(Err(m));
        }
    }
    if let (Some((frontier, tiles)), Some(stored)) = (&tree, &stored_frontier) {
        if stored.as_ref() != frontier.to_bytes().as_slice() {
            return fail(
                expected_pos,
                "the stored Merkle frontier does not match the recomputed tree".into(),
            );
        }
        for (key, computed) in tiles.partials(expected_pos) {
            let (level, index) = (key[1], be_u64(&key[2..]).unwrap_or(u64::MAX));
            tiles_checked += 1;
            if let Some((at, what)) = tile_mismatch(db, level, index, computed) {
                return fail(at, what);
            }
        }
        // Any other tile was not made by this log.
        let stored_tiles = db.scan_prefix([TILE]).count();
        if stored_tiles != tiles_checked {
            return fail(
                expected_pos,
                format!(
                    "{stored_tiles} Merkle tiles are stored where the log makes {tiles_checked}"
                ),
            );
        }
    }
    Ok(Ok(VerifyReport {
        events: expected_pos,
        streams: streams.len(),
        head_hash: prev,
        merkle_root: tree.map(|(t, _)| t.root()),
        idempotency_marked: marks.count(),
        idempotency_unmarked: unmarked,
        index_snapshot: snapshot.map(|(_, covered)| covered),
    }))
}

/// Checks an idempotency record that no mark accounts for: it must name consecutive events below
/// `count` exactly as the log holds them.
fn unmarked_record_matches(
    db: &sled::Db,
    key: &str,
    value: &[u8],
    count: u64,
) -> Result<Result<(), Mismatch>, LogError> {
    let Ok(answer) = serde_json::from_slice::<IdempotencyRecord>(value) else {
        return Ok(Err(Mismatch {
            position: count,
            reason: format!("the idempotency record of key {key:?} is unreadable"),
        }));
    };
    let first = answer.events.first().map_or(count, |e| e.position);
    let bad = |reason: String| {
        Ok(Err(Mismatch {
            position: first,
            reason: format!("the idempotency record of key {key:?} {reason}"),
        }))
    };
    if answer.events.is_empty() {
        return bad("names no event".into());
    }
    for (i, e) in answer.events.iter().enumerate() {
        if e.position != first + i as u64 || e.position >= count {
            return bad(format!("names position {} out of its append", e.position));
        }
        let Some((hash, bytes)) = super::disk::stored_event(db, e.position)? else {
            return bad(format!(
                "names position {}, which is not stored",
                e.position
            ));
        };
        let rec = match record::decode(e.position, bytes) {
            Ok(r) => r,
            Err(err) => return bad(format!("names an unreadable event: {err}")),
        };
        if hash != e.hash || Appended::from(&rec) != *e || rec.recorded_at != answer.recorded_at {
            return bad(format!(
                "does not match the event at position {}",
                e.position
            ));
        }
        if rec.idempotency.is_some() {
            return bad(format!(
                "names position {}, which starts another keyed append",
                e.position
            ));
        }
    }
    Ok(Ok(()))
}

/// Where the stored tile `(level, index)` differs from `computed`, if it does: the first leaf
/// under the first differing hash, and what is wrong.
fn tile_mismatch(db: &sled::Db, level: u8, index: u64, computed: &[u8]) -> Option<(u64, String)> {
    let name = format!("Merkle tile ({level}, {index})");
    // The first leaf under hash `slot` of this tile.
    let leaf_of = |slot: usize| {
        index
            .saturating_mul(TILE_WIDTH)
            .saturating_add(slot as u64)
            .checked_shl(TILE_HEIGHT * u32::from(level))
            .unwrap_or(u64::MAX)
    };
    match db.get(super::layout::tile_key(level, index)) {
        Ok(Some(v)) if v.as_ref() == computed => None,
        Ok(Some(v)) => {
            let slot = v
                .chunks(32)
                .zip(computed.chunks(32))
                .position(|(a, b)| a != b)
                .unwrap_or(v.len().min(computed.len()) / 32);
            Some((
                leaf_of(slot),
                format!("{name} does not match the recomputed tree at hash {slot}"),
            ))
        }
        Ok(None) => Some((leaf_of(0), format!("{name} is missing"))),
        Err(e) => Some((leaf_of(0), format!("{name} is unreadable: {e}"))),
    }
}
