//! The stream index: each stream's positions by revision, held in memory so that expected-revision
//! checks and stream reads never scan the log. It is derived state: an open rebuilds it from the
//! records, starting from the snapshot a graceful shutdown saved (`streams.snap`) when that snapshot
//! names exactly a prefix of this log.
use std::collections::HashMap;

use super::read::scan_frames;
use super::*;
use crate::record;
use claims_ledger_core::codec::{Put as _, Reader};

/// Each stream's positions, by revision.
pub(crate) type StreamIndex = HashMap<String, Vec<u64>>;

/// File name of the stream index snapshot in the data directory.
pub const INDEX_SNAPSHOT: &str = "streams.snap";

/// v2: the binary body of [`encode_index`] (v1 was JSON, and is ignored: the open indexes the log).
pub const INDEX_SNAPSHOT_KIND: &str = "stream-index/v2";

/// The number of streams (u32), then each stream as its name (u16 length), its number of events
/// (u32) and their positions (u64 each).
fn encode_index<'a>(streams: impl ExactSizeIterator<Item = (&'a str, &'a [u64])>) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_u32(streams.len() as u32);
    for (name, positions) in streams {
        out.put_str16(name);
        out.put_u32(positions.len() as u32);
        for p in positions {
            out.put_u64(*p);
        }
    }
    out
}

fn decode_index(body: &[u8]) -> Result<StreamIndex, String> {
    let mut r = Reader::new(body);
    let streams = r.u32()? as usize;
    // Bounded by what is left (a stream takes at least 14 bytes), so a damaged count cannot ask for
    // a huge allocation.
    let mut index = StreamIndex::with_capacity(streams.min(body.len() / 14));
    for _ in 0..streams {
        let name = r.str16()?.to_string();
        let n = r.u32()? as usize;
        // Bounded by what is left, so a damaged count cannot ask for a huge allocation.
        let mut positions = Vec::with_capacity(n.min(body.len() / 8));
        for _ in 0..n {
            positions.push(r.u64()?);
        }
        if index.insert(name, positions).is_some() {
            return Err("a stream listed twice".into());
        }
    }
    if !r.is_empty() {
        return Err("data after the last stream".into());
    }
    Ok(index)
}

/// The stream index of the snapshot in `dir` and the event count it covers, if it is usable for the
/// log in `db` of `count` events (see `snapshot`); an empty index and 0 otherwise.
pub(super) fn index_snapshot(dir: &Path, db: &sled::Db, count: u64) -> (StreamIndex, u64) {
    match read_index_snapshot(dir, db, count) {
        Ok(Some(found)) => found,
        Ok(None) => (HashMap::new(), 0),
        Err(reason) => {
            tracing::warn!(%reason, "stream index snapshot ignored; indexing the whole log");
            (HashMap::new(), 0)
        }
    }
}

/// The stream index snapshot in `dir` with the event count it covers: `Ok(None)` if there is none,
/// `Err(why)` if the log in `db` of `count` events cannot use it. `verify` checks what it maps.
pub(crate) fn read_index_snapshot(
    dir: &Path,
    db: &sled::Db,
    count: u64,
) -> Result<Option<(StreamIndex, u64)>, String> {
    let Some(snap) = matching_snapshot(dir, db, count, INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND)? else {
        return Ok(None);
    };
    let index = decode_index(&snap.body).map_err(|e| format!("undecodable: {e}"))?;
    // Every position below its count, once: a cheap check that it is what it claims to be.
    let total: usize = index.values().map(Vec::len).sum();
    if total as u64 != snap.count || index.values().flatten().any(|p| *p >= snap.count) {
        return Err("its positions do not cover its count".into());
    }
    Ok(Some((index, snap.count)))
}

/// Extends `streams`, the index of the first `from` events, to the first `count`, from the records
/// themselves. Reads only each record's stream and revision: hashes and links are `verify`'s to check.
pub(super) fn index_streams(
    db: &sled::Db,
    mut streams: StreamIndex,
    from: u64,
    count: u64,
) -> Result<StreamIndex, LogError> {
    scan_frames(db, from, count, |pos, _, bytes| {
        let (stream, revision) = record::stream_of(pos, bytes)?;
        let positions = streams.entry(stream).or_default();
        if revision != positions.len() as u64 {
            return Err(LogError::Corrupt {
                position: pos,
                reason: format!(
                    "stream revision {revision} where {} was expected",
                    positions.len()
                ),
            });
        }
        positions.push(pos);
        Ok(true)
    })?;
    Ok(streams)
}

impl EventLog {
    /// Writes the stream index of the durable events to the data directory, so that the next open
    /// indexes only the events after them. Returns the event count it covers. Correct at any time;
    /// meant for shutdown, since it holds the index for the writer for the length of the encoding.
    pub fn save_index_snapshot(&self) -> Result<u64, LogError> {
        self.writer()?;
        let count = self.durable_count();
        let body = {
            let index = self
                .shared
                .streams
                .read()
                .unwrap_or_else(|p| p.into_inner());
            // Positions at or past `count` belong to groups not yet durable.
            let durable: Vec<(&str, &[u64])> = index
                .iter()
                .filter_map(|(s, p)| {
                    let n = p.partition_point(|pos| *pos < count);
                    (n > 0).then(|| (s.as_str(), &p[..n]))
                })
                .collect();
            encode_index(durable.into_iter())
        };
        self.save_snapshot(INDEX_SNAPSHOT, INDEX_SNAPSHOT_KIND, count, body)?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_index_body_round_trips_and_refuses_damage() {
        let index: StreamIndex = [
            ("party-p", vec![0, 4, 9]),
            ("Росси́я", vec![1]),
            ("e", vec![]),
        ]
        .into_iter()
        .map(|(s, p)| (s.to_string(), p))
        .collect();
        let body = encode_index(index.iter().map(|(s, p)| (s.as_str(), p.as_slice())));
        assert_eq!(decode_index(&body), Ok(index));
        assert!(decode_index(&body[..body.len() - 1]).is_err());
        let mut more = body.clone();
        more.push(0);
        assert!(decode_index(&more).is_err());
        // A count of streams far beyond the bytes: refused, without allocating for it.
        let mut huge = body.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_index(&huge).is_err());
    }
}
