//! Raw access to a stopped log's stored events and Merkle tiles, below every invariant the writer
//! keeps. Reading is public: `verify` uses it, and benchmarks use it as their raw-scan baseline.
//! Writing (`replace_event`, `truncate_page_at`, `put_tile`, ...) exists only with the `tamper`
//! feature, for tests that play an attacker with write access to the disk; the product never builds
//! it. After such a change, `verify` should fail, unless the change was made consistently everywhere
//! (which is what a saved signed checkpoint is for). Open the database with [`super::open_db`] while
//! no server holds it.
use super::layout::{frames, idempotency_key, page_first, tile_key, EVENT};
#[cfg(feature = "tamper")]
use super::layout::{page_key, push_frame, FRONTIER_KEY, TILE};
use super::record::Hash;
#[cfg(feature = "tamper")]
use super::tiles::{stage_tree, Tiles};
use super::LogError;
#[cfg(feature = "tamper")]
use claims_ledger_core::merkle::{self, Frontier};

/// The page holding `pos`: its first position and frames (hash, record), if any.
#[allow(clippy::type_complexity)]
fn page(db: &sled::Db, pos: u64) -> Result<Option<(u64, Vec<(Hash, Vec<u8>)>)>, LogError> {
    let Some((first, v)) = super::store::page_of(db, pos)? else {
        return Ok(None);
    };
    let frames = frames(&v)
        .map_while(|f| f.map(|(h, r)| (h, r.to_vec())))
        .collect();
    Ok(Some((first, frames)))
}

#[cfg(feature = "tamper")]
fn write_page(db: &sled::Db, first: u64, frames: &[(Hash, Vec<u8>)]) -> Result<(), LogError> {
    if frames.is_empty() {
        db.remove(page_key(first))?;
    } else {
        let mut v = Vec::new();
        for (h, r) in frames {
            push_frame(&mut v, h, r);
        }
        db.insert(page_key(first), v)?;
    }
    Ok(())
}

/// The hash stored with the event at `pos`, and its record bytes.
pub fn stored_event(db: &sled::Db, pos: u64) -> Result<Option<(Hash, Vec<u8>)>, LogError> {
    Ok(page(db, pos)?.and_then(|(first, mut frames)| {
        let i = usize::try_from(pos - first).ok()?;
        (i < frames.len()).then(|| frames.swap_remove(i))
    }))
}

/// The stored idempotency record (JSON) of `key`, if any.
pub fn idempotency_record(db: &sled::Db, key: &str) -> Result<Option<Vec<u8>>, LogError> {
    Ok(db.get(idempotency_key(key))?.map(|v| v.to_vec()))
}

/// Writes (`Some`) or removes (`None`) the idempotency record of `key`.
#[cfg(feature = "tamper")]
pub fn put_idempotency_record(
    db: &sled::Db,
    key: &str,
    record: Option<&[u8]>,
) -> Result<(), LogError> {
    match record {
        Some(r) => db.insert(idempotency_key(key), r)?,
        None => db.remove(idempotency_key(key))?,
    };
    Ok(())
}

/// Overwrites the stored hash and record bytes of the event at `pos`, in place. Returns whether
/// there was such an event.
#[cfg(feature = "tamper")]
pub fn replace_event(
    db: &sled::Db,
    pos: u64,
    hash: &Hash,
    record: &[u8],
) -> Result<bool, LogError> {
    let Some((first, mut frames)) = page(db, pos)? else {
        return Ok(false);
    };
    let Some(frame) = usize::try_from(pos - first)
        .ok()
        .and_then(|i| frames.get_mut(i))
    else {
        return Ok(false);
    };
    *frame = (*hash, record.to_vec());
    write_page(db, first, &frames)?;
    Ok(true)
}

/// Deletes the event at `pos` and every later event of its page, as a torn or truncated write
/// would. Returns how many events were removed.
#[cfg(feature = "tamper")]
pub fn truncate_page_at(db: &sled::Db, pos: u64) -> Result<usize, LogError> {
    let Some((first, mut frames)) = page(db, pos)? else {
        return Ok(0);
    };
    let keep = usize::try_from(pos - first).unwrap_or(usize::MAX);
    if keep >= frames.len() {
        return Ok(0);
    }
    let removed = frames.len() - keep;
    frames.truncate(keep);
    write_page(db, first, &frames)?;
    Ok(removed)
}

/// The stored Merkle tile `(level, index)`: its hashes, 32 bytes each.
pub fn tile(db: &sled::Db, level: u8, index: u64) -> Result<Option<Vec<u8>>, LogError> {
    Ok(db.get(tile_key(level, index))?.map(|v| v.to_vec()))
}

/// Overwrites the stored Merkle tile `(level, index)`.
#[cfg(feature = "tamper")]
pub fn put_tile(db: &sled::Db, level: u8, index: u64, hashes: &[u8]) -> Result<(), LogError> {
    db.insert(tile_key(level, index), hashes)?;
    Ok(())
}

/// Recomputes the whole Merkle tree (tiles and frontier) from the stored events, as the writer
/// would have written it for this content, and returns its root. Does not touch the head.
#[cfg(feature = "tamper")]
pub fn rebuild_tree(db: &sled::Db) -> Result<Hash, LogError> {
    cut_tree(db, u64::MAX)
}

/// Replaces the Merkle tree (tiles and frontier) with the tree of the first `leaves` stored events
/// only, as an older binary that could append without the tree left it, and returns its root.
#[cfg(feature = "tamper")]
pub fn cut_tree(db: &sled::Db, leaves: u64) -> Result<Hash, LogError> {
    for k in db.scan_prefix([TILE]).keys() {
        db.remove(k?)?;
    }
    let take = usize::try_from(leaves).unwrap_or(usize::MAX);
    let mut leaves = Vec::new();
    for item in db.scan_prefix([EVENT]) {
        let (_, v) = item?;
        leaves.extend(frames(&v).map_while(|f| f.map(|(_, r)| merkle::leaf_hash(r))));
    }
    leaves.truncate(take);
    let mut batch = sled::Batch::default();
    let (frontier, _) = stage_tree(&Frontier::new(), &Tiles::default(), leaves, &mut batch);
    db.apply_batch(batch)?;
    debug_assert!(db.get(FRONTIER_KEY)?.is_some());
    Ok(frontier.root())
}

/// Every stored page in position order, as (first position, page bytes): a raw scan for
/// benchmarks and tools. Split a page with [`page_frames`].
pub fn pages(db: &sled::Db) -> impl Iterator<Item = Result<(u64, sled::IVec), LogError>> {
    db.scan_prefix([EVENT]).map(|item| {
        let (k, v) = item?;
        let first = page_first(&k).ok_or_else(|| LogError::Corrupt {
            position: 0,
            reason: format!("malformed page key {k:?}"),
        })?;
        Ok((first, v))
    })
}

/// The frames of a page: (stored hash, record bytes) each, or `None` where the page is cut.
pub fn page_frames(page: &[u8]) -> impl Iterator<Item = Option<(Hash, &[u8])>> + '_ {
    frames(page)
}
