//! Offline verification of a data directory: recomputes every event's hash from its stored bytes,
//! checks the chain links, gap-free positions, stream revisions and the head, and names the first
//! position that does not match. Reads sled directly, so the server must be stopped (sled locks the
//! directory).
use std::collections::HashMap;
use std::path::Path;

use super::record::{self, Hash, GENESIS_HASH};
use super::store::{be_u64, key, open_db, pos_key, HEAD_KEY};
use super::LogError;

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub streams: usize,
    pub head_hash: Hash,
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
    let mut streams: HashMap<String, u64> = HashMap::new();
    for item in db.scan_prefix([b'e']) {
        let (k, v) = item?;
        let Some(pos) = be_u64(&k[1..]).filter(|_| k.len() == 9) else {
            return fail(expected_pos, format!("malformed event key {k:?}"));
        };
        if pos != expected_pos {
            return fail(expected_pos, format!("missing; next event found is {pos}"));
        }
        let hash = record::sha256(&v);
        match db.get(pos_key(b'h', pos))? {
            Some(h) if h.as_ref() == hash.as_slice() => {}
            Some(_) => {
                return fail(
                    pos,
                    "stored bytes do not match the hash written with them".into(),
                )
            }
            None => return fail(pos, "no hash was written with this event".into()),
        }
        let rec = match record::decode(pos, v.to_vec()) {
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
        let next_rev = streams.entry(rec.stream.clone()).or_insert(0);
        if rec.stream_revision != *next_rev {
            return fail(
                pos,
                format!(
                    "stream {} revision {} where {} was expected",
                    rec.stream, rec.stream_revision, next_rev
                ),
            );
        }
        let mut rk = key(b'r', rec.stream.as_bytes());
        rk.push(0);
        rk.extend_from_slice(&rec.stream_revision.to_be_bytes());
        if db.get(&rk)?.and_then(|p| be_u64(&p)) != Some(pos) {
            return fail(pos, "stream index does not point at this event".into());
        }
        *next_rev += 1;
        prev = hash;
        expected_pos += 1;
    }
    match db.get(HEAD_KEY)? {
        Some(h) if be_u64(&h) != Some(expected_pos) || h.get(8..40) != Some(prev.as_slice()) => {
            return fail(
                expected_pos,
                format!(
                    "head record says {} events, hash {}; the log has {expected_pos}, hash {}",
                    be_u64(&h).unwrap_or(0),
                    hex::encode(h.get(8..40).unwrap_or_default()),
                    hex::encode(prev)
                ),
            );
        }
        None if expected_pos > 0 => return fail(expected_pos, "head record is missing".into()),
        _ => {}
    }
    for (stream, next) in &streams {
        let last = db
            .get(key(b's', stream.as_bytes()))?
            .and_then(|v| be_u64(&v));
        if last != Some(next - 1) {
            return fail(
                expected_pos,
                format!(
                    "stream {stream} records last revision {last:?}, the log has {}",
                    next - 1
                ),
            );
        }
    }
    Ok(Ok(VerifyReport {
        events: expected_pos,
        streams: streams.len(),
        head_hash: prev,
    }))
}
