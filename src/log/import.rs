//! Bulk import of a whole log into an empty data directory, for `claims-ledger restore`.
//!
//! The importer is given the events in position order, as decoded stored records (exactly the bytes
//! the original log stored), and writes the same layout the live writer does (see `layout`): pages of
//! (hash ‖ record) frames, `mhead`, and the Merkle tree (its tiles, leaf rule
//! `merkle::leaf_hash(stored)`, and the frontier). Each batch of
//! [`BATCH_EVENTS`] events is one atomic sled batch that also moves `mhead` and `mtree`, so the
//! directory always holds a consistent prefix. [`Importer::finish`] flushes sled and fsyncs its
//! files and the directory, so a successful import survives a crash.
//!
//! It refuses to break the log's invariants, whatever its caller checked: positions are gap-free
//! from 0, each record's `prev_hash` is the previous record's hash, its hash is the SHA-256 of its
//! bytes, stream revisions are consecutive per stream, recorded time never goes backwards, and no
//! record is larger than [`MAX_RECORD_BYTES`].
//!
//! What an import does NOT bring back, because an export does not carry it:
//! - Idempotency records (`i` keys). A client that retries, against the restored log, a write it
//!   made before the backup is not recognised as a retry: the write is decided again (appended a
//!   second time, or refused by the domain rules, e.g. a party that already exists).
//! - Subscription cursors (`c` keys). Named subscribers start again from the `from_position` they
//!   pass, as if they had never acknowledged anything.
//!
//! The projections (a separate database) are not imported either; they are rebuilt from the log on
//! the first start.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::layout::{
    head_value, tile_key, PageBuilder, FRONTIER_KEY, HEAD_KEY, LAYOUT_KEY, LAYOUT_VERSION,
};
use super::record::{self, Hash, RecordedEvent, GENESIS_HASH, MAX_RECORD_BYTES};
use super::store::open_db;
use super::tiles::Tiles;
use super::LogError;
use crate::merkle::{self, Frontier};

/// Events per sled batch.
pub const BATCH_EVENTS: usize = 1000;

/// Longest stream name the writer accepts (it refuses longer ones with `InvalidStream`).
const MAX_STREAM_NAME: usize = 256;

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub events: u64,
    pub streams: usize,
    /// Hash of the last event ([`GENESIS_HASH`] for an empty log).
    pub head_hash: Hash,
    /// The RFC 6962 root over every event.
    pub merkle_root: Hash,
}

/// Writes a log into an empty data directory, event by event. See the module documentation.
pub struct Importer {
    dir: PathBuf,
    db: sled::Db,
    batch: sled::Batch,
    /// Events staged in `batch`.
    staged: usize,
    /// The staged events, cut into pages.
    pages: PageBuilder,
    tiles: Tiles,
    /// The next revision of every stream seen.
    revisions: HashMap<String, u64>,
    count: u64,
    head_hash: Hash,
    frontier: Frontier,
    last_recorded: Option<DateTime<Utc>>,
}

impl Importer {
    /// Opens (creating it if needed) the sled database in `dir`, which must hold no data.
    pub fn create(dir: &Path) -> Result<Importer, LogError> {
        let db = open_db(dir)?;
        if !db.is_empty() {
            return Err(LogError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already holds a log", dir.display()),
            )));
        }
        Ok(Importer {
            dir: dir.to_path_buf(),
            db,
            batch: sled::Batch::default(),
            staged: 0,
            pages: PageBuilder::new(),
            tiles: Tiles::default(),
            revisions: HashMap::new(),
            count: 0,
            head_hash: GENESIS_HASH,
            frontier: Frontier::new(),
            last_recorded: None,
        })
    }

    /// Events pushed so far (the position the next one must have).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Hash of the last event pushed ([`GENESIS_HASH`] before the first).
    pub fn head_hash(&self) -> Hash {
        self.head_hash
    }

    /// The Merkle root over the events pushed so far.
    pub fn merkle_root(&self) -> Hash {
        self.frontier.root()
    }

    /// Appends the next event. `rec` must be what [`record::decode`] made of its stored bytes; the
    /// hash is recomputed here all the same. A refused event leaves the importer as it was, with
    /// [`LogError::Corrupt`] naming the position and the broken rule.
    pub fn push(&mut self, rec: &RecordedEvent) -> Result<(), LogError> {
        let position = self.count;
        let refuse = |reason: String| Err(LogError::Corrupt { position, reason });
        if rec.position != position {
            return refuse(format!(
                "record claims position {} where {position} was expected",
                rec.position
            ));
        }
        if rec.stored.len() > MAX_RECORD_BYTES {
            return refuse(format!(
                "record of {} bytes exceeds the limit of {MAX_RECORD_BYTES} bytes",
                rec.stored.len()
            ));
        }
        if record::sha256(&rec.stored) != rec.hash {
            return refuse("the record's hash is not the SHA-256 of its bytes".into());
        }
        if rec.prev_hash != self.head_hash {
            return refuse(format!(
                "prev_hash {} does not link to the previous event's hash {}",
                hex::encode(rec.prev_hash),
                hex::encode(self.head_hash)
            ));
        }
        if rec.stream.is_empty() || rec.stream.len() > MAX_STREAM_NAME || rec.stream.contains('\0')
        {
            return refuse(format!("invalid stream name {:?}", rec.stream));
        }
        let expected_revision = self
            .revisions
            .get(rec.stream.as_str())
            .copied()
            .unwrap_or(0);
        if rec.stream_revision != expected_revision {
            return refuse(format!(
                "stream {} revision {} where {expected_revision} was expected",
                rec.stream, rec.stream_revision
            ));
        }
        if let Some(last) = self.last_recorded.filter(|last| rec.recorded_at < *last) {
            return refuse(format!(
                "recorded_at {} is before the previous event's {}",
                rec.recorded_at.to_rfc3339(),
                last.to_rfc3339()
            ));
        }
        // Every check passed: stage it.
        self.pages.push(position, &rec.hash, &rec.stored);
        let batch = &mut self.batch;
        self.tiles.push(
            &mut self.frontier,
            merkle::leaf_hash(&rec.stored),
            &mut |level, index, hashes| batch.insert(&tile_key(level, index)[..], hashes),
        );
        match self.revisions.get_mut(rec.stream.as_str()) {
            Some(r) => *r += 1,
            None => {
                self.revisions.insert(rec.stream.clone(), 1);
            }
        }
        self.count += 1;
        self.head_hash = rec.hash;
        self.last_recorded = Some(rec.recorded_at);
        self.staged += 1;
        if self.staged >= BATCH_EVENTS {
            self.apply()?;
        }
        Ok(())
    }

    /// Applies the staged pages with the tiles they touched, the head and the frontier, atomically.
    fn apply(&mut self) -> Result<(), LogError> {
        let mut batch = std::mem::take(&mut self.batch);
        std::mem::replace(&mut self.pages, PageBuilder::new()).stage(&mut batch);
        for (key, hashes) in self.tiles.take_changed(self.count) {
            batch.insert(&key[..], hashes);
        }
        batch.insert(HEAD_KEY, head_value(self.count, &self.head_hash));
        batch.insert(FRONTIER_KEY, self.frontier.to_bytes());
        batch.insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes());
        self.db.apply_batch(batch)?;
        self.staged = 0;
        Ok(())
    }

    /// Applies what is staged, flushes sled and fsyncs its files and the directory.
    pub fn finish(mut self) -> Result<ImportSummary, LogError> {
        self.apply()?;
        self.db.flush()?;
        sync_dir_files(&self.dir)?;
        let blobs = self.dir.join("blobs");
        if blobs.is_dir() {
            sync_dir_files(&blobs)?;
        }
        Ok(ImportSummary {
            events: self.count,
            streams: self.revisions.len(),
            head_hash: self.head_hash,
            merkle_root: self.frontier.root(),
        })
    }
}

/// fsyncs every regular file in `dir` (sled's `db` and `conf`, any snapshot), then `dir` itself.
fn sync_dir_files(dir: &Path) -> Result<(), LogError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::record::{encode, Encode};
    use super::super::verify::verify_dir;
    use super::*;
    use serde_json::value::RawValue;
    use uuid::Uuid;

    /// A chain of `n` records over `streams` streams, round robin.
    fn chain(n: u64, streams: u64) -> Vec<RecordedEvent> {
        let mut prev = GENESIS_HASH;
        let mut revisions: HashMap<String, u64> = HashMap::new();
        let payload = RawValue::from_string(r#"{"x":1}"#.into()).expect("fixture");
        let at = DateTime::from_timestamp(1_717_545_600, 0).expect("fixture");
        let mut out = Vec::new();
        for position in 0..n {
            let stream = format!("s-{}", position % streams);
            let rev = revisions.entry(stream.clone()).or_default();
            let bytes = encode(&Encode {
                position,
                prev_hash: &prev,
                event_id: Uuid::now_v7(),
                stream: &stream,
                stream_revision: *rev,
                event_type: "T",
                schema_version: 1,
                recorded_at: at,
                recorded_by: "test",
                correlation_id: None,
                causation_id: None,
                payload: &payload,
            })
            .expect("fixture");
            *rev += 1;
            let rec = record::decode(position, bytes).expect("fixture");
            prev = rec.hash;
            out.push(rec);
        }
        out
    }

    #[test]
    fn an_import_verifies_across_batches_and_tiles() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 2500 events over 7 streams: three batches, with Merkle tiles that span batch boundaries.
        let events = chain(2500, 7);
        let mut imp = Importer::create(dir.path()).expect("create");
        for e in &events {
            imp.push(e).expect("push");
        }
        let summary = imp.finish().expect("finish");
        let leaves: Vec<Hash> = events
            .iter()
            .map(|e| merkle::leaf_hash(&e.stored))
            .collect();
        assert_eq!(summary.merkle_root, merkle::root(&leaves));
        assert_eq!(summary.streams, 7);
        let report = verify_dir(dir.path()).expect("open").expect("verifies");
        assert_eq!(report.events, 2500);
        assert_eq!(report.head_hash, summary.head_hash);
        assert_eq!(report.merkle_root, Some(summary.merkle_root));
    }

    #[test]
    fn broken_chains_are_refused_and_leave_the_importer_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = chain(4, 2);
        let mut imp = Importer::create(dir.path()).expect("create");
        imp.push(&events[0]).expect("push");
        // A gap.
        assert!(matches!(
            imp.push(&events[2]),
            Err(LogError::Corrupt { position: 1, .. })
        ));
        // A hash that is not of the bytes.
        let mut forged = events[1].clone();
        forged.hash[0] ^= 1;
        assert!(matches!(
            imp.push(&forged),
            Err(LogError::Corrupt { position: 1, .. })
        ));
        // A revision out of order.
        let mut skipped = events[1].clone();
        skipped.stream_revision = 1;
        assert!(imp.push(&skipped).is_err());
        assert_eq!(imp.count(), 1);
        imp.push(&events[1]).expect("the right one still fits");
        assert_eq!(imp.finish().expect("finish").events, 2);
    }

    #[test]
    fn a_directory_with_data_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut imp = Importer::create(dir.path()).expect("create");
        imp.push(&chain(1, 1)[0]).expect("push");
        imp.finish().expect("finish");
        // sled may take a moment to release its lock after the last handle is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Importer::create(dir.path()) {
                Err(e) if e.to_string().contains("lock") => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    assert!(e.to_string().contains("already holds a log"), "{e}");
                    break;
                }
                Ok(_) => panic!("a directory with a log was accepted"),
            }
        }
    }
}
