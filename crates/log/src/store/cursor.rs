//! Subscriber cursors: the position each named subscriber has acknowledged, stored in the log's own
//! database under `CURSOR` keys. Each change is synced before it is answered, since a subscriber that
//! was told its acknowledgement is stored must not see those events again after a crash.
use super::*;
use crate::layout::cursor_key;

impl EventLog {
    /// The acknowledged position of a named subscriber, if it ever acknowledged.
    pub fn cursor(&self, name: &str) -> Result<Option<u64>, LogError> {
        Ok(self
            .shared
            .db
            .get(cursor_key(name))?
            .and_then(|v| be_u64(&v)))
    }

    /// Named subscribers and their acknowledged positions, in name order: those after `after`, at
    /// most `limit`.
    pub fn cursors(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, LogError> {
        let start = match after {
            // The smallest key above `after`'s own.
            Some(name) => {
                let mut k = cursor_key(name);
                k.push(0);
                k
            }
            None => vec![CURSOR],
        };
        let mut out = Vec::new();
        for item in self.shared.db.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if k.first() != Some(&CURSOR) {
                break;
            }
            let corrupt = |reason: String| LogError::Corrupt {
                position: 0,
                reason,
            };
            let name = String::from_utf8(k[1..].to_vec())
                .map_err(|_| corrupt(format!("a subscription cursor key {k:?} is not UTF-8")))?;
            let position = be_u64(&v)
                .ok_or_else(|| corrupt(format!("the cursor of {name:?} is unreadable")))?;
            out.push((name, position));
        }
        Ok(out)
    }

    /// Durably records that the named subscriber has processed everything before `position`.
    /// Cursors only move forward: an older acknowledgement (a retry, a reordered message) keeps the
    /// stored one. Returns the stored position. Syncs to disk before returning.
    pub async fn store_cursor(&self, name: &str, position: u64) -> Result<u64, LogError> {
        self.writer()?;
        let shared = self.shared.clone();
        let key = cursor_key(name);
        let durable = self.durable_count();
        if position > durable {
            return Err(LogError::CursorBeyondHead { position, durable });
        }
        let stored = tokio::task::spawn_blocking(move || {
            let stored = shared.db.update_and_fetch(&key, |old| {
                let old = old.and_then(be_u64).unwrap_or(0);
                Some(old.max(position).to_be_bytes().to_vec())
            })?;
            shared.db.flush()?;
            shared.data_file.sync_data()?;
            Ok(stored.and_then(|v| be_u64(&v)).unwrap_or(position))
        })
        .await
        .map_err(|_| LogError::Closed)?;
        if let Ok(p) = &stored {
            self.shared.metrics.cursor(name, Some(*p));
        }
        stored
    }

    /// Forgets a named subscriber's position. Returns whether it existed.
    pub async fn delete_cursor(&self, name: &str) -> Result<bool, LogError> {
        self.writer()?;
        let shared = self.shared.clone();
        let key = cursor_key(name);
        let existed = tokio::task::spawn_blocking(move || {
            let existed = shared.db.remove(&key)?.is_some();
            shared.db.flush()?;
            shared.data_file.sync_data()?;
            Ok(existed)
        })
        .await
        .map_err(|_| LogError::Closed)?;
        if existed.is_ok() {
            self.shared.metrics.cursor(name, None);
        }
        existed
    }
}
