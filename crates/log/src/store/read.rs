//! Reads of durable events: one by position, runs of them in either direction across pages, and a
//! stream's events through the stream index. Every read checks the stored bytes against the hash
//! written with them, and reports a missing or cut page as corruption rather than skipping it.
use super::*;
use crate::layout::{frames, page_first, page_key};
use crate::record;

/// The page holding position `pos`, if any: its first position and its bytes.
pub(crate) fn page_of(db: &sled::Db, pos: u64) -> Result<Option<(u64, sled::IVec)>, LogError> {
    let Some(item) = db.range(page_key(0)..=page_key(pos)).next_back() else {
        return Ok(None);
    };
    let (k, v) = item?;
    let first = page_first(&k).ok_or_else(|| LogError::Corrupt {
        position: pos,
        reason: format!("malformed page key {k:?}"),
    })?;
    Ok(Some((first, v)))
}

/// An event below the head that is not stored.
fn missing(position: u64) -> LogError {
    LogError::Corrupt {
        position,
        reason: "missing below the head".into(),
    }
}

/// A page whose bytes stop in the middle of the frame of `position`.
fn cut(position: u64) -> LogError {
    LogError::Corrupt {
        position,
        reason: "truncated page".into(),
    }
}

/// Reads the event at `pos`, checking its bytes against the hash stored with them.
pub(super) fn read_event(db: &sled::Db, pos: u64) -> Result<RecordedEvent, LogError> {
    let (first, page) = page_of(db, pos)?.ok_or_else(|| missing(pos))?;
    let index = usize::try_from(pos - first).map_err(|_| missing(pos))?;
    let found = match frames(&page).nth(index) {
        Some(Some((hash, bytes))) => decode_frame(pos, hash, bytes),
        Some(None) => Err(cut(pos)),
        None => Err(missing(pos)),
    };
    found
}

/// Decodes one stored event, checking its bytes against the hash written with them.
pub(super) fn decode_frame(pos: u64, hash: Hash, bytes: &[u8]) -> Result<RecordedEvent, LogError> {
    let rec = record::decode(pos, bytes.to_vec())?;
    if rec.hash != hash {
        return Err(LogError::Corrupt {
            position: pos,
            reason: "stored bytes do not match the hash written with them".into(),
        });
    }
    Ok(rec)
}

/// Visits the stored events in `[from, end)` in position order (or `(.., from]` downwards when
/// `backwards`, ignoring `end`) until `visit` returns false. Pages must follow each other without
/// gaps; a missing or cut page is reported as corruption, never skipped.
pub(super) fn scan_events(
    db: &sled::Db,
    from: u64,
    end: u64,
    backwards: bool,
    mut visit: impl FnMut(RecordedEvent) -> bool,
) -> Result<(), LogError> {
    if backwards {
        // Each page must end where the page after it (seen just before) starts.
        let mut next_first: Option<u64> = None;
        for item in db.range(page_key(0)..=page_key(from)).rev() {
            let (k, v) = item?;
            let first = page_first(&k).ok_or_else(|| missing(from))?;
            let mut page = Vec::new();
            for (i, frame) in frames(&v).enumerate() {
                page.push(frame.ok_or_else(|| cut(first + i as u64))?);
            }
            let page_end = first + page.len() as u64;
            match next_first {
                Some(next) if page_end != next => return Err(missing(page_end)),
                None if page_end <= from => return Err(missing(from)),
                _ => {}
            }
            next_first = Some(first);
            for (i, (hash, bytes)) in page.into_iter().enumerate().rev() {
                let pos = first + i as u64;
                if pos <= from && !visit(decode_frame(pos, hash, bytes)?) {
                    return Ok(());
                }
            }
        }
        return match next_first {
            Some(0) | None => Ok(()),
            Some(first) => Err(missing(first - 1)),
        };
    }
    scan_frames(db, from, end, |pos, hash, bytes| {
        Ok(visit(decode_frame(pos, hash, bytes)?))
    })
}

/// Visits the stored frames (position, stored hash, record bytes) in `[from, end)` in position order
/// until `visit` returns false. A missing or cut page is reported as corruption, never skipped.
pub(super) fn scan_frames(
    db: &sled::Db,
    from: u64,
    end: u64,
    mut visit: impl FnMut(u64, Hash, &[u8]) -> Result<bool, LogError>,
) -> Result<(), LogError> {
    if from >= end {
        return Ok(());
    }
    let start = page_of(db, from)?.map_or(from, |(first, _)| first);
    let mut expected = start;
    for item in db.range(page_key(start)..page_key(end)) {
        let (k, v) = item?;
        let first = page_first(&k).ok_or_else(|| missing(expected))?;
        if first != expected {
            return Err(missing(expected));
        }
        for frame in frames(&v) {
            let (hash, bytes) = frame.ok_or_else(|| cut(expected))?;
            let pos = expected;
            expected += 1;
            if pos < from {
                continue;
            }
            if pos >= end || !visit(pos, hash, bytes)? {
                return Ok(());
            }
        }
    }
    if expected < end {
        return Err(missing(expected));
    }
    Ok(())
}

impl EventLog {
    /// Reads one durable event.
    pub fn get(&self, position: u64) -> Result<Option<RecordedEvent>, LogError> {
        if position >= self.durable_count() {
            return Ok(None);
        }
        read_event(&self.shared.db, position).map(Some)
    }

    /// Reads up to `max` durable events from `from` (inclusive), forwards or backwards.
    pub fn read_all(
        &self,
        from: u64,
        backwards: bool,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let end = self.durable_count();
        let mut out = Vec::new();
        if end == 0 || max == 0 {
            return Ok(out);
        }
        if !backwards && from >= end {
            return Ok(out);
        }
        scan_events(
            &self.shared.db,
            if backwards { from.min(end - 1) } else { from },
            end,
            backwards,
            |e| {
                out.push(e);
                out.len() < max
            },
        )?;
        Ok(out)
    }

    /// The positions of a stream's durable events, in revision order (index = revision).
    fn stream_positions(&self, stream: &str) -> Result<Vec<u64>, LogError> {
        let durable = self.durable_count();
        let mut positions = self
            .shared
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
            .cloned()
            .unwrap_or_default();
        // Events not yet synced are invisible; positions grow with revisions, so they form a tail.
        while positions.last().is_some_and(|p| *p >= durable) {
            positions.pop();
        }
        Ok(positions)
    }

    /// The last durable revision of a stream, if it exists.
    pub fn stream_revision(&self, stream: &str) -> Result<Option<u64>, LogError> {
        Ok((self.stream_positions(stream)?.len() as u64).checked_sub(1))
    }

    /// Reads up to `max` durable events of one stream from revision `from`.
    pub fn read_stream(
        &self,
        stream: &str,
        from: u64,
        backwards: bool,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let positions = self.stream_positions(stream)?;
        let Some(last) = (positions.len() as u64).checked_sub(1) else {
            return Ok(Vec::new());
        };
        let revs: Box<dyn Iterator<Item = u64>> = if backwards {
            Box::new((0..=from.min(last)).rev())
        } else {
            Box::new(from..=last)
        };
        revs.take(max)
            .map(|rev| {
                let position = positions[rev as usize];
                let rec = read_event(&self.shared.db, position)?;
                // The index is derived (possibly from a snapshot): never serve what it gets wrong.
                if rec.stream != stream || rec.stream_revision != rev {
                    return Err(LogError::Corrupt {
                        position,
                        reason: format!(
                            "the stream index maps {stream} revision {rev} here, but the event is \
                             {} revision {}; stop the server, delete {INDEX_SNAPSHOT} and restart",
                            rec.stream, rec.stream_revision
                        ),
                    });
                }
                Ok(rec)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages are found from any position inside them, and scans in both directions cross page
    /// boundaries without skipping or repeating an event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_found_inside_pages_in_both_directions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LogOptions {
            durability: Durability::Relaxed,
            ..LogOptions::default()
        };
        let log = EventLog::open(dir.path(), options, None).expect("open");
        // Appends of 1, 2, 3 ... events: pages of different lengths.
        let mut n = 0u64;
        for size in 1..=12u64 {
            let events = (0..size)
                .map(|i| NewEvent {
                    event_id: Uuid::new_v4(),
                    stream: format!("s-{}", (n + i) % 5),
                    event_type: "T".into(),
                    schema_version: 1,
                    payload: RawValue::from_string(format!("{{\"n\":{}}}", n + i)).expect("json"),
                })
                .collect();
            log.append(AppendRequest {
                events,
                expectations: Vec::new(),
                idempotency: None,
                recorded_by: "test".into(),
                correlation_id: None,
                causation_id: None,
            })
            .await
            .expect("append");
            n += size;
        }
        for pos in 0..n {
            let e = log.get(pos).expect("read").expect("present");
            assert_eq!(e.position, pos);
            assert_eq!(e.payload.get(), format!("{{\"n\":{pos}}}"));
        }
        let positions = |events: Result<Vec<RecordedEvent>, LogError>| -> Vec<u64> {
            events.expect("read").iter().map(|e| e.position).collect()
        };
        assert_eq!(
            positions(log.read_all(17, false, 30)),
            (17..47).collect::<Vec<_>>()
        );
        assert_eq!(
            positions(log.read_all(40, true, 25)),
            (16..=40).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            positions(log.read_stream("s-3", 0, false, 100)),
            (0..n).filter(|p| p % 5 == 3).collect::<Vec<_>>()
        );
    }
}
