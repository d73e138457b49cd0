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
//! Idempotency records (`i` keys) are rebuilt from the records themselves: the first event of an
//! append made under a key carries the key, the request's content hash and the append's event count
//! (see `record`). After a restore, a retry of a write made before the backup gets the original
//! answer, and the same key with other content is refused, as on the original server. The importer
//! refuses a mark that opens while another append is still open, an append whose events differ in
//! `recorded_at`, a key seen twice, and a log that ends inside an append. Appends made before marks
//! existed carry none and get no `i` key.
//!
//! Subscription cursors (`c` keys) and their owners are written as the caller gives them
//! ([`Importer::put_owned_cursor`]), never beyond the events pushed.
//!
//! The projections (a separate database) are not imported either; they are rebuilt from the log on
//! the first start.
pub mod file;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::layout::{
    cursor_key, head_value, idempotency_key, tile_key, PageBuilder, FRONTIER_KEY, HEAD_KEY,
    LAYOUT_KEY, LAYOUT_VERSION,
};
use super::marks::Marks;
use super::record::{self, Hash, RecordedEvent, GENESIS_HASH, MAX_RECORD_BYTES};
use super::store::open_db;
use super::tiles::Tiles;
use super::LogError;
use claims_ledger_core::merkle::{self, Frontier};

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
    /// Idempotency records rebuilt from the events' marks.
    pub idempotency_records: u64,
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
    /// The keyed appends seen, whose answers become `i` records.
    marks: Marks,
}

impl Importer {
    /// Opens (creating it if needed) the sled database in `dir`, which must hold no data and no
    /// write-ahead log: the first open would replay its frames over the imported log.
    pub fn create(dir: &Path) -> Result<Importer, LogError> {
        let wal = crate::wal::wal_dir(dir);
        if std::fs::read_dir(&wal).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(LogError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} holds a write-ahead log ({}): restore only into an empty directory",
                    dir.display(),
                    wal.display()
                ),
            )));
        }
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
            marks: Marks::default(),
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
        if let Err(reason) = self.marks.check(rec) {
            return refuse(reason);
        }
        // Every check passed: stage it.
        if let Some(closed) = self.marks.push(rec) {
            self.batch
                .insert(idempotency_key(&closed.key), closed.answer.to_bytes()?);
        }
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

    /// Stores a named subscriber's acknowledged position, without an owner (an export from before
    /// owners); it may not lie beyond the events pushed.
    pub fn put_cursor(&mut self, name: &str, position: u64) -> Result<(), LogError> {
        self.put_owned_cursor(name, position, None)
    }

    /// Stores a named subscriber's acknowledged position and the identity that owns it (`None`:
    /// unowned); the position may not lie beyond the events pushed. Limits are not applied: a
    /// restore keeps what the exported server held.
    pub fn put_owned_cursor(
        &mut self,
        name: &str,
        position: u64,
        owner: Option<&str>,
    ) -> Result<(), LogError> {
        if position > self.count {
            return Err(LogError::CursorBeyondHead {
                position,
                durable: self.count,
            });
        }
        self.batch.insert(
            cursor_key(name),
            crate::store::cursor_value(position, owner),
        );
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
        if let Err(reason) = self.marks.check_end() {
            return Err(LogError::Corrupt {
                position: self.count,
                reason,
            });
        }
        self.apply()?;
        self.db.flush()?;
        sync_dir_files(&self.dir)?;
        let blobs = self.dir.join("blobs");
        if blobs.is_dir() {
            sync_dir_files(&blobs)?;
        }
        // From the first open on, a store that loses these events is refused (see `evidence`).
        crate::evidence::raise_durable(&self.dir, self.count, self.head_hash)?;
        Ok(ImportSummary {
            events: self.count,
            streams: self.revisions.len(),
            head_hash: self.head_hash,
            merkle_root: self.frontier.root(),
            idempotency_records: self.marks.count(),
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
    use super::*;
    use crate::record::{encode, Encode};
    use crate::store::{Appended, IdempotencyRecord};
    use crate::verify::verify_dir;
    use serde_json::value::RawValue;
    use uuid::Uuid;

    /// A chain of `n` records over `streams` streams, round robin.
    fn chain(n: u64, streams: u64) -> Vec<RecordedEvent> {
        marked_chain(n, streams, &[])
    }

    /// Like [`chain`], with `marks[i] = (position, mark)` put on those positions.
    fn marked_chain(
        n: u64,
        streams: u64,
        marks: &[(u64, record::IdempotencyMark)],
    ) -> Vec<RecordedEvent> {
        marked_chain_at(n, streams, marks, |_| 0)
    }

    /// Like [`marked_chain`], the event at position p recorded `seconds(p)` after a fixed time.
    fn marked_chain_at(
        n: u64,
        streams: u64,
        marks: &[(u64, record::IdempotencyMark)],
        seconds: impl Fn(u64) -> i64,
    ) -> Vec<RecordedEvent> {
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
                recorded_at: at + chrono::Duration::seconds(seconds(position)),
                recorded_by: "test",
                correlation_id: None,
                causation_id: None,
                idempotency: marks.iter().find(|(p, _)| *p == position).map(|(_, m)| m),
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

    fn mark(key: &str, events: u32) -> record::IdempotencyMark {
        record::IdempotencyMark {
            key: key.into(),
            content_hash: record::sha256(key.as_bytes()),
            events,
        }
    }

    #[test]
    fn idempotency_records_are_rebuilt_from_marks() {
        let dir = tempfile::tempdir().expect("tempdir");
        // An append of 3 events under "a" at 1..=3, one of 1 under "b" at 5; 0, 4 and 6 unmarked.
        let events = marked_chain(7, 2, &[(1, mark("a", 3)), (5, mark("b", 1))]);
        let mut imp = Importer::create(dir.path()).expect("create");
        for e in &events {
            imp.push(e).expect("push");
        }
        let summary = imp.finish().expect("finish");
        assert_eq!(summary.idempotency_records, 2);
        let db = open_db(dir.path()).expect("reopen");
        let read = |key: &str| -> IdempotencyRecord {
            let v = db
                .get(idempotency_key(key))
                .expect("get")
                .expect("an `i` record");
            serde_json::from_slice(&v).expect("decodes")
        };
        let a = read("a");
        assert_eq!(a.content_hash, record::sha256(b"a"));
        assert_eq!(a.recorded_at, events[1].recorded_at);
        assert_eq!(
            a.events,
            events[1..=3].iter().map(Appended::from).collect::<Vec<_>>()
        );
        let b = read("b");
        assert_eq!(b.events, vec![Appended::from(&events[5])]);
        let i_keys = db.scan_prefix([crate::layout::IDEMPOTENCY]).count();
        assert_eq!(i_keys, 2, "only marked appends get an `i` record");
    }

    #[test]
    fn broken_appends_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A second mark while the first append still lacks an event.
        let overlapping = marked_chain(3, 1, &[(0, mark("a", 2)), (1, mark("b", 1))]);
        let mut imp = Importer::create(dir.path()).expect("create");
        imp.push(&overlapping[0]).expect("push");
        let err = imp.push(&overlapping[1]).expect_err("overlap");
        assert!(err.to_string().contains("still lacks 1 event"), "{err}");
        assert_eq!(imp.count(), 1, "a refused event changes nothing");

        // The same key twice.
        let twice = marked_chain(2, 1, &[(0, mark("a", 1)), (1, mark("a", 1))]);
        let dir2 = tempfile::tempdir().expect("tempdir");
        let mut imp = Importer::create(dir2.path()).expect("create");
        imp.push(&twice[0]).expect("push");
        let err = imp.push(&twice[1]).expect_err("reused key");
        assert!(err.to_string().contains("a second time"), "{err}");

        // An append whose events were recorded at different times.
        let split = marked_chain_at(2, 1, &[(0, mark("a", 2))], |p| p as i64);
        let dir4 = tempfile::tempdir().expect("tempdir");
        let mut imp = Importer::create(dir4.path()).expect("create");
        imp.push(&split[0]).expect("push");
        let err = imp.push(&split[1]).expect_err("split append");
        assert!(err.to_string().contains("recorded_at differs"), "{err}");

        // The log ends inside an append.
        let short = marked_chain(2, 1, &[(1, mark("a", 2))]);
        let dir3 = tempfile::tempdir().expect("tempdir");
        let mut imp = Importer::create(dir3.path()).expect("create");
        for e in &short {
            imp.push(e).expect("push");
        }
        let err = imp.finish().expect_err("ends inside an append");
        assert!(err.to_string().contains("1 event(s) short"), "{err}");
    }

    #[test]
    fn a_directory_with_a_write_ahead_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = dir.path().join("wal");
        std::fs::create_dir(&wal).expect("mkdir");
        std::fs::write(wal.join("00000000.wal"), [1u8; 64]).expect("write");
        match Importer::create(dir.path()) {
            Err(e) => assert!(e.to_string().contains("write-ahead log"), "{e}"),
            Ok(_) => panic!("a directory with a write-ahead log was accepted"),
        }
        assert!(
            !dir.path().join("db").exists(),
            "nothing was created beside it"
        );
    }

    #[test]
    fn a_directory_with_data_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut imp = Importer::create(dir.path()).expect("create");
        imp.push(&chain(1, 1)[0]).expect("push");
        imp.finish().expect("finish");
        // `open_db` waits for the lock the finished import's threads are still releasing.
        match Importer::create(dir.path()) {
            Err(e) => assert!(e.to_string().contains("already holds a log"), "{e}"),
            Ok(_) => panic!("a directory with a log was accepted"),
        }
    }
}
