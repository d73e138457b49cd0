//! Subscriber cursors: the position each named subscriber has acknowledged, and the identity that
//! owns it, stored in the log's own database under `CURSOR` keys. Each change is synced before it is
//! answered, since a subscriber that was told its acknowledgement is stored must not see those events
//! again after a crash.
//!
//! A cursor's value is its position (u64 BE) followed by its owner's name (UTF-8, possibly empty).
//! Cursors written before owners existed are the bare 8 bytes: they read as unowned, and a binary
//! from before owners still reads the position of an owned one. Ownership and the bounds on how many
//! cursors exist are checked here, under one lock with the write, so two concurrent first
//! acknowledgements can neither both claim a name nor both slip under a limit.
use super::*;
use crate::layout::cursor_key;

/// A stored subscriber cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub name: String,
    /// Everything before this position has been acknowledged.
    pub position: u64,
    /// The identity the cursor belongs to; `None` for one stored without an owner (before owners
    /// existed, or by an anonymous caller).
    pub owner: Option<String>,
}

/// Who changes a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorActor<'a> {
    /// The caller's identity: the owner of a cursor it creates, and of an unowned one it moves.
    /// `None` is an anonymous caller, which stores no owner.
    pub identity: Option<&'a str>,
    /// May change a cursor that belongs to someone else, and claims nothing (an administrator, or
    /// any caller when nobody authenticates).
    pub privileged: bool,
}

impl CursorActor<'_> {
    /// Whether this caller may move or resume a cursor owned by `owner`: its own, anyone's when
    /// privileged, and an unowned one (moving it claims it).
    pub fn may_use(&self, owner: Option<&str>) -> bool {
        self.privileged || owner.is_none() || owner == self.identity
    }
}

/// How many cursors may exist: per owner (unowned ones count as one owner's) and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorLimits {
    pub per_owner: usize,
    pub total: usize,
}

impl Default for CursorLimits {
    fn default() -> Self {
        CursorLimits {
            per_owner: 100,
            total: 10_000,
        }
    }
}

/// Serializes cursor changes (so that an ownership or limit check and its write are one step), and
/// holds the limits.
pub(super) struct CursorGuard {
    lock: Mutex<()>,
    limits: CursorLimits,
}

impl CursorGuard {
    pub(super) fn new(limits: CursorLimits) -> CursorGuard {
        CursorGuard {
            lock: Mutex::new(()),
            limits,
        }
    }
}

/// A cursor's stored value.
pub(crate) fn encode(position: u64, owner: Option<&str>) -> Vec<u8> {
    let owner = owner.unwrap_or("");
    let mut v = Vec::with_capacity(8 + owner.len());
    v.extend_from_slice(&position.to_be_bytes());
    v.extend_from_slice(owner.as_bytes());
    v
}

/// The position and owner of a stored value, `None` when unreadable.
fn decode(v: &[u8]) -> Option<(u64, Option<String>)> {
    let position = be_u64(v)?;
    let owner = std::str::from_utf8(&v[8..]).ok()?;
    Some((position, (!owner.is_empty()).then(|| owner.to_string())))
}

fn unreadable(name: &str) -> LogError {
    LogError::Corrupt {
        position: 0,
        reason: format!("the cursor of {name:?} is unreadable"),
    }
}

/// The stored value of `key` for the cursor `name`, decoded.
fn stored(
    db: &sled::Db,
    name: &str,
    key: &[u8],
) -> Result<Option<(u64, Option<String>)>, LogError> {
    match db.get(key)? {
        Some(v) => decode(&v).map(Some).ok_or_else(|| unreadable(name)),
        None => Ok(None),
    }
}

/// Refuses one more cursor for `owner` beyond the limits; `adds` says whether it is a new one (a claim
/// of an unowned cursor only counts against the owner's limit). Counts every stored cursor, since new
/// names are rare and bounded by `limits.total`.
fn check_room(
    db: &sled::Db,
    owner: Option<&str>,
    limits: CursorLimits,
    adds: bool,
) -> Result<(), LogError> {
    let (mut total, mut owned) = (0usize, 0usize);
    for item in db.scan_prefix([CURSOR]) {
        let (_, v) = item?;
        total += 1;
        let stored_owner = v.get(8..).unwrap_or_default();
        owned += usize::from(stored_owner == owner.unwrap_or("").as_bytes());
    }
    if adds && total >= limits.total {
        return Err(LogError::TooManyCursors {
            per_owner: false,
            limit: limits.total,
        });
    }
    if owned >= limits.per_owner {
        return Err(LogError::TooManyCursors {
            per_owner: true,
            limit: limits.per_owner,
        });
    }
    Ok(())
}

impl EventLog {
    /// The acknowledged position of a named subscriber, if it ever acknowledged.
    pub fn cursor(&self, name: &str) -> Result<Option<u64>, LogError> {
        Ok(self.cursor_entry(name)?.map(|c| c.position))
    }

    /// A named subscriber's cursor with its owner, if it ever acknowledged.
    pub fn cursor_entry(&self, name: &str) -> Result<Option<Cursor>, LogError> {
        Ok(
            stored(&self.shared.db, name, &cursor_key(name))?.map(|(position, owner)| Cursor {
                name: name.to_string(),
                position,
                owner,
            }),
        )
    }

    /// Named subscribers' cursors, in name order: those after `after`, at most `limit`.
    pub fn cursors(&self, after: Option<&str>, limit: usize) -> Result<Vec<Cursor>, LogError> {
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
            let name = String::from_utf8(k[1..].to_vec()).map_err(|_| LogError::Corrupt {
                position: 0,
                reason: format!("a subscription cursor key {k:?} is not UTF-8"),
            })?;
            let (position, owner) = decode(&v).ok_or_else(|| unreadable(&name))?;
            out.push(Cursor {
                name,
                position,
                owner,
            });
        }
        Ok(out)
    }

    /// Durably records that the named subscriber has processed everything before `position`, on
    /// behalf of `actor`. A new cursor belongs to the actor and must fit the limits; an existing one
    /// may be moved only by its owner or a privileged actor ([`LogError::CursorNotOwned`]), and an
    /// unowned one becomes the (unprivileged, identified) actor's. Cursors only move forward: an older
    /// acknowledgement (a retry, a reordered message) keeps the stored one. Returns the stored
    /// position. Syncs to disk before returning.
    pub async fn store_cursor(
        &self,
        name: &str,
        position: u64,
        actor: CursorActor<'_>,
    ) -> Result<u64, LogError> {
        self.writer()?;
        let durable = self.durable_count();
        if position > durable {
            return Err(LogError::CursorBeyondHead { position, durable });
        }
        let shared = self.shared.clone();
        let key = cursor_key(name);
        let (owned_name, identity) = (name.to_string(), actor.identity.map(str::to_string));
        let actor_privileged = actor.privileged;
        let stored_position = tokio::task::spawn_blocking(move || {
            let actor = CursorActor {
                identity: identity.as_deref(),
                privileged: actor_privileged,
            };
            let guard = &shared.cursors;
            let p = {
                let _held = guard.lock.lock().unwrap_or_else(|p| p.into_inner());
                let (p, owner) = match stored(&shared.db, &owned_name, &key)? {
                    None => {
                        check_room(&shared.db, actor.identity, guard.limits, true)?;
                        (position, actor.identity.map(str::to_string))
                    }
                    Some((_, owner)) if !actor.may_use(owner.as_deref()) => {
                        return Err(LogError::CursorNotOwned { name: owned_name });
                    }
                    Some((old, None)) if !actor.privileged && actor.identity.is_some() => {
                        // Claiming an unowned cursor gives the actor one more.
                        check_room(&shared.db, actor.identity, guard.limits, false)?;
                        (old.max(position), actor.identity.map(str::to_string))
                    }
                    Some((old, owner)) => (old.max(position), owner),
                };
                shared.db.insert(&key, encode(p, owner.as_deref()))?;
                p
            };
            // No lock needed: this sync makes this write durable whatever was written since.
            shared.db.flush()?;
            shared.data_file.sync_data()?;
            Ok(p)
        })
        .await
        .map_err(|_| LogError::Closed)?;
        if let Ok(p) = &stored_position {
            self.shared.metrics.cursor(name, Some(*p));
        }
        stored_position
    }

    /// Forgets a named subscriber's position, on behalf of `actor`: its owner, or a privileged actor
    /// (an unowned cursor only the latter). Returns whether it existed.
    pub async fn delete_cursor(
        &self,
        name: &str,
        actor: CursorActor<'_>,
    ) -> Result<bool, LogError> {
        self.writer()?;
        let shared = self.shared.clone();
        let key = cursor_key(name);
        let (owned_name, identity) = (name.to_string(), actor.identity.map(str::to_string));
        let privileged = actor.privileged;
        let existed = tokio::task::spawn_blocking(move || {
            let existed = {
                let _held = shared
                    .cursors
                    .lock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match stored(&shared.db, &owned_name, &key)? {
                    None => false,
                    Some((_, owner)) => {
                        if !privileged && (owner.is_none() || owner != identity) {
                            return Err(LogError::CursorNotOwned { name: owned_name });
                        }
                        shared.db.remove(&key)?.is_some()
                    }
                }
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_without_an_owner_read_as_unowned() {
        assert_eq!(decode(&7u64.to_be_bytes()), Some((7, None)));
        assert_eq!(decode(&encode(7, None)), Some((7, None)));
        assert_eq!(
            decode(&encode(9, Some("desk"))),
            Some((9, Some("desk".to_string())))
        );
        // What a binary from before owners reads of an owned cursor.
        assert_eq!(be_u64(&encode(9, Some("desk"))), Some(9));
        assert_eq!(decode(&[0, 1]), None);
    }
}
