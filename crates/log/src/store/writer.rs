//! The writer thread: it owns all writes, so checking expected revisions, idempotency and the hash
//! chain needs no locks. It groups queued appends, checks each, writes the group's sled writes
//! (events, head, Merkle tiles and idempotency records) as one frame to the write-ahead log and
//! applies them to sled as one batch in memory, then hands the group to the syncer; nothing it
//! accepts is answered before that group's frame is synced.
use std::collections::HashMap;

use super::syncer::StagedGroup;
use super::*;
use crate::layout::{head_value, Ops, PageBuilder, Stage};
use crate::record::{self, Encode, IdempotencyMark};
use crate::tiles::stage_tree;
use claims_ledger_core::merkle;

const MAX_STREAM_NAME: usize = 256;

/// Longest a group waits for stragglers (see `Writer::run`).
const MAX_LINGER: Duration = Duration::from_micros(500);

/// Owns all writes. One thread, so validation of expected revisions and the hash chain needs no locks.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) db: sled::Db,
    pub(super) head: Head,
    /// The Merkle tree's right edge after the last staged event, and its partial tiles.
    pub(super) frontier: Frontier,
    pub(super) tiles: Tiles,
    pub(super) last_recorded: Option<DateTime<Utc>>,
    pub(super) options: LogOptions,
    /// Taken at shutdown, to be closed once sled is durable.
    pub(super) wal: Option<wal::Wal>,
    pub(super) flusher: Option<std::thread::JoinHandle<()>>,
}

/// Idempotency records of a group not yet written: consulted before sled, so a retry within the same
/// group sees its original.
#[derive(Default)]
struct Pending {
    idempotency: HashMap<String, IdempotencyRecord>,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>, syncer: Syncer) {
        // The syncer makes staged groups durable and answers them, in order, while this thread
        // stages the next group: applying to sled overlaps with the previous group's fdatasync.
        // At most one group waits for it: the writer then blocks, and requests pile up into the
        // next, larger group, which bounds memory and the number of syncs.
        let (to_syncer, staged) = std::sync::mpsc::sync_channel::<StagedGroup>(1);
        let syncer = std::thread::Builder::new()
            .name("log-syncer".into())
            .spawn(move || syncer.run(staged));
        let syncer = match syncer {
            Ok(handle) => handle,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the log syncer; refusing writes");
                self.shared.poisoned.store(true, Ordering::Release);
                while let Some(job) = rx.blocking_recv() {
                    let _ = job.reply.send(Err(LogError::Poisoned));
                }
                return;
            }
        };
        let mut last_group = 0usize;
        let mut last_cycle = Duration::ZERO;
        while let Some(first) = rx.blocking_recv() {
            let started = Instant::now();
            let mut jobs = vec![first];
            self.drain(&mut rx, &mut jobs);
            // Linger: when the previous group was large and this one is much smaller, the other
            // writers are most likely on their way back with their next request. Waiting a fraction
            // of a cycle for them makes one sync serve them all, instead of paying a whole sync for
            // a straggler. A lone writer (groups of 1) never waits.
            if last_group >= 4 && jobs.len() < last_group / 2 {
                let deadline = Instant::now() + (last_cycle / 2).min(MAX_LINGER);
                while jobs.len() < last_group / 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(20));
                    self.drain(&mut rx, &mut jobs);
                }
            }
            last_group = jobs.len();
            self.shared.staging.store(true, Ordering::Release);
            let group = self.stage_group(jobs);
            let sent = to_syncer.send(group);
            self.shared.staging.store(false, Ordering::Release);
            if sent.is_err() {
                break;
            }
            last_cycle = started.elapsed();
        }
        drop(to_syncer);
        let _ = syncer.join();
        self.close_wal();
    }

    /// At shutdown: stops the flusher, makes sled durable, and empties the write-ahead log, so a
    /// cleanly closed directory needs no replay. If sled cannot be made durable the segments stay,
    /// and the next open replays them.
    fn close_wal(&mut self) {
        let Some(wal) = self.wal.take() else { return };
        wal.pool.stop();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        if let Err(e) = make_sled_durable(&self.db, &self.shared.data_file, &self.shared.dir) {
            tracing::error!(error = %e, "final flush of the store failed; the write-ahead log is kept");
            return;
        }
        if self.shared.poisoned.load(Ordering::Acquire) {
            // sled may hold a group whose frame never became durable; keep the log as evidence.
            return;
        }
        if let Err(e) = wal.close() {
            tracing::error!(error = %e, "cannot empty the write-ahead log at shutdown");
        }
    }

    /// Moves every queued job into `jobs`, up to the group limit.
    fn drain(&self, rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
        while jobs.len() < self.options.max_group {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
    }

    /// Checks and applies a group to sled (visible to the writer, not yet to readers) and hands it
    /// to the syncer. Refused appends are answered here; nothing else is answered before its sync.
    fn stage_group(&mut self, jobs: Vec<Job>) -> StagedGroup {
        let mut group = StagedGroup {
            replies: Vec::with_capacity(jobs.len()),
            events: Vec::new(),
            head: self.head,
            wal_file: None,
        };
        if self.shared.poisoned.load(Ordering::Acquire) {
            for j in jobs {
                let _ = j.reply.send(Err(LogError::Poisoned));
            }
            return group;
        }
        let now = Utc::now();
        // Recorded time never goes backwards, so "as of recorded time" equals "as of position".
        let recorded_at = match self.last_recorded {
            Some(last) if last > now => last,
            _ => now,
        };
        let mut pending = Pending::default();
        let mut batch = Ops::default();
        let mut head = self.head;
        for job in jobs {
            match self.prepare(&job.req, recorded_at, &mut head, &mut pending, &mut batch) {
                Ok((outcome, events)) => {
                    group.events.extend(events);
                    group.replies.push((job.reply, outcome, job.received));
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        if !group.events.is_empty() {
            let mut pages = PageBuilder::new();
            for e in &group.events {
                pages.push(e.position, &e.hash, &e.stored);
            }
            pages.stage(&mut batch);
            let leaves = group.events.iter().map(|e| merkle::leaf_hash(&e.stored));
            let (frontier, tiles) = stage_tree(&self.frontier, &self.tiles, leaves, &mut batch);
            // The head goes last: see `apply`.
            batch.put(HEAD_KEY, &head_value(head.count, &head.hash));
            let frame = wal::Frame {
                first: self.head.count,
                count: head.count - self.head.count,
                last_hash: head.hash,
                ops: batch,
            };
            // The frame goes first: sled may write the batch out at any time, and whatever sled
            // holds durably must also be in the log's history (or be the unacknowledged tail).
            let applied = match self.wal.as_mut() {
                Some(w) => w.append(&frame),
                None => Err(LogError::Closed),
            }
            .and_then(|file| {
                apply(&self.db, &frame.ops)?;
                Ok(file)
            });
            let file = match applied {
                Ok(file) => file,
                Err(e) => {
                    self.shared.poison(&e);
                    for (reply, _, _) in group.replies.drain(..) {
                        let _ = reply.send(Err(LogError::Poisoned));
                    }
                    group.events.clear();
                    return group;
                }
            };
            group.wal_file = Some(file);
            self.head = head;
            self.frontier = frontier;
            self.tiles = tiles;
            self.last_recorded = Some(recorded_at);
            group.head = head;
        }
        group
    }

    /// The number of events of each of `streams` staged so far (durable or not).
    fn stream_counts<'a>(&self, streams: impl Iterator<Item = &'a str>) -> HashMap<&'a str, u64> {
        let index = self
            .shared
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner());
        streams
            .map(|s| (s, index.get(s).map_or(0, |p| p.len() as u64)))
            .collect()
    }

    /// Checks one append and stages it in `batch`. Touches `head`, `pending` and `batch` only once every
    /// check has passed, so a refused append leaves the group as it was.
    fn prepare(
        &self,
        req: &AppendRequest,
        recorded_at: DateTime<Utc>,
        head: &mut Head,
        pending: &mut Pending,
        batch: &mut Ops,
    ) -> Result<(AppendOutcome, Vec<RecordedEvent>), LogError> {
        if let Some(idem) = &req.idempotency {
            let rec = match pending.idempotency.get(&idem.key) {
                Some(r) => Some(r.clone()),
                None => match self.db.get(idempotency_key(&idem.key))? {
                    Some(v) => Some(serde_json::from_slice::<IdempotencyRecord>(&v).map_err(
                        |e| LogError::Corrupt {
                            position: 0,
                            reason: format!("unreadable idempotency record: {e}"),
                        },
                    )?),
                    None => None,
                },
            };
            if let Some(rec) = rec {
                if rec.content_hash != idem.content_hash {
                    return Err(LogError::IdempotencyConflict {
                        key: idem.key.clone(),
                    });
                }
                return Ok((rec.outcome(), Vec::new()));
            }
        }
        if req.events.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        // Each stream's event count before this append; events below advance it.
        let mut counts = self.stream_counts(
            req.expectations
                .iter()
                .map(|(s, _)| s.as_str())
                .chain(req.events.iter().map(|e| e.stream.as_str())),
        );
        for (stream, expected) in &req.expectations {
            let actual = counts.get(stream.as_str()).and_then(|c| c.checked_sub(1));
            let ok = match expected {
                ExpectedRevision::Any => true,
                ExpectedRevision::NoStream => actual.is_none(),
                ExpectedRevision::StreamExists => actual.is_some(),
                ExpectedRevision::Exact(r) => actual == Some(*r),
            };
            if !ok {
                return Err(LogError::WrongExpectedRevision {
                    stream: stream.clone(),
                    expected: *expected,
                    actual,
                });
            }
        }
        let mark = match &req.idempotency {
            Some(idem) => Some(IdempotencyMark {
                key: idem.key.clone(),
                content_hash: idem.content_hash,
                events: u32::try_from(req.events.len()).map_err(|_| {
                    LogError::Encode(format!("{} events in one append", req.events.len()))
                })?,
            }),
            None => None,
        };
        // Encode everything first; stage only if all records are acceptable.
        let mut staged = Vec::with_capacity(req.events.len());
        let mut prev = head.hash;
        for (i, ev) in req.events.iter().enumerate() {
            if ev.stream.is_empty() || ev.stream.len() > MAX_STREAM_NAME || ev.stream.contains('\0')
            {
                return Err(LogError::InvalidStream(ev.stream.clone()));
            }
            let position = head.count + i as u64;
            let count = counts.entry(ev.stream.as_str()).or_default();
            let revision = *count;
            *count += 1;
            // The append's idempotency goes with its first event only.
            let mark = if i == 0 { mark.as_ref() } else { None };
            let bytes = record::encode(&Encode {
                position,
                prev_hash: &prev,
                event_id: ev.event_id,
                stream: &ev.stream,
                stream_revision: revision,
                event_type: &ev.event_type,
                schema_version: ev.schema_version,
                recorded_at,
                recorded_by: &req.recorded_by,
                correlation_id: req.correlation_id.as_deref(),
                causation_id: req.causation_id.as_deref(),
                idempotency: mark,
                payload: &ev.payload,
            })?;
            let hash = record::sha256(&bytes);
            staged.push(RecordedEvent {
                position,
                prev_hash: prev,
                hash,
                event_id: ev.event_id,
                stream: ev.stream.clone(),
                stream_revision: revision,
                event_type: ev.event_type.clone(),
                schema_version: ev.schema_version,
                recorded_at,
                recorded_by: req.recorded_by.clone(),
                correlation_id: req.correlation_id.clone(),
                causation_id: req.causation_id.clone(),
                idempotency: mark.cloned(),
                payload: ev.payload.clone(),
                stored: bytes,
            });
            prev = hash;
        }
        let appended: Vec<Appended> = staged.iter().map(Appended::from).collect();
        let idempotency = match &req.idempotency {
            Some(idem) => {
                let rec = IdempotencyRecord {
                    content_hash: idem.content_hash,
                    recorded_at,
                    events: appended.clone(),
                };
                let bytes = rec.to_bytes()?;
                Some((idem.key.clone(), rec, bytes))
            }
            None => None,
        };
        // Accepted: later appends (of this group too) see these revisions. Readers see them only
        // once durable; if this group never becomes durable, the log is poisoned and stops.
        {
            let mut index = self
                .shared
                .streams
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for rec in &staged {
                match index.get_mut(rec.stream.as_str()) {
                    Some(positions) => positions.push(rec.position),
                    None => {
                        index.insert(rec.stream.clone(), vec![rec.position]);
                    }
                }
            }
        }
        head.count += staged.len() as u64;
        head.hash = prev;
        if let Some((k, rec, bytes)) = idempotency {
            batch.put(&idempotency_key(&k), &bytes);
            pending.idempotency.insert(k, rec);
        }
        Ok((
            AppendOutcome {
                events: appended,
                recorded_at,
                deduplicated: false,
            },
            staged,
        ))
    }
}

/// Applies a group's writes to sled one by one, in order, with the head last. Not `apply_batch`:
/// sled writes out and `sync_file_range`s its IO buffer twice for every batch (its batch manifest),
/// which cost more CPU than everything else in an append. Atomicity comes from the write-ahead log
/// instead: sled recovers a prefix of its writes, so a durable head implies the whole group is there,
/// and recovery re-applies (idempotently) every frame past the head. Readers see nothing of a group
/// before the syncer publishes it, and nothing else writes these keys.
fn apply(db: &sled::Db, ops: &Ops) -> Result<(), LogError> {
    for (k, v) in &ops.0 {
        db.insert(&k[..], &v[..])?;
    }
    Ok(())
}
