//! Snapshot files of state derived from the log (the stream index here, the write model in `app`),
//! so that opening a data directory folds in only the events after them instead of the whole log.
//!
//! A snapshot is a cache, never a source of truth. It names the log prefix it was made from: the
//! event count and the hash of the last event of that prefix. It is used only if the log in the
//! directory holds that exact prefix; otherwise, or if the file is unreadable, of another kind or
//! format version, or fails its checksum, the caller logs why and replays from position 0. Deleting
//! the files is always safe.
//!
//! File: the magic `CLSNAP1\n`, the kind (one length byte, then its bytes), the count (u64 BE), the
//! head hash (32 bytes), the body length (u64 BE), the body, and the SHA-256 of everything before it.
//! It is written to a temporary file beside the target, fsynced, renamed over the old one, and the
//! directory is fsynced, so a crash leaves either the old snapshot or the new one. The file is mode
//! 0600 from before its first byte, like every file of the data directory.
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::record::{sha256, Hash};
use super::store::PRIVATE_FILE_MODE;
use super::LogError;
use claims_ledger_core::codec::{Put as _, Reader};

const MAGIC: &[u8; 8] = b"CLSNAP1\n";

/// State derived from the first `count` events of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Events folded in.
    pub count: u64,
    /// Hash of event `count - 1` (the genesis hash when `count` is 0).
    pub head_hash: Hash,
    /// The derived state, in the caller's encoding.
    pub body: Vec<u8>,
}

/// Writes `snap` to `path` atomically and durably.
pub fn write(path: &Path, kind: &str, snap: &Snapshot) -> Result<(), LogError> {
    let kind_len = u8::try_from(kind.len())
        .map_err(|_| LogError::Encode(format!("snapshot kind {kind:?} is too long")))?;
    let mut bytes = Vec::with_capacity(snap.body.len() + 128);
    bytes.extend_from_slice(MAGIC);
    bytes.put_u8(kind_len);
    bytes.extend_from_slice(kind.as_bytes());
    bytes.put_u64(snap.count);
    bytes.extend_from_slice(&snap.head_hash);
    bytes.put_u64(snap.body.len() as u64);
    bytes.extend_from_slice(&snap.body);
    let sum = sha256(&bytes);
    bytes.extend_from_slice(&sum);

    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = path.with_extension("snap.tmp");
    {
        let mut f = File::create(&tmp)?;
        // Private before it holds anything, whatever the umask (or a stale temporary's mode) gave it.
        f.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reads the snapshot at `path`: `Ok(None)` when there is none, `Err(reason)` when there is one that
/// cannot be used. Whether it matches the log is the caller's check (see the module documentation).
pub fn read(path: &Path, kind: &str) -> Result<Option<Snapshot>, String> {
    match read_any(path)? {
        Some((found, _)) if found != kind => Err(format!("a snapshot of {found:?}, not {kind:?}")),
        Some((_, snap)) => Ok(Some(snap)),
        None => Ok(None),
    }
}

/// Reads the snapshot at `path` whatever its kind, with that kind: for the open's check that no
/// snapshot covers more events than the log holds (see `evidence`).
pub fn read_any(path: &Path) -> Result<Option<(String, Snapshot)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    if bytes.len() < 32 {
        return Err("too short".into());
    }
    let (content, sum) = bytes.split_at(bytes.len() - 32);
    if sha256(content) != sum {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader::new(content);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a snapshot of this format version".into());
    }
    let kind_len = usize::from(r.u8()?);
    let found = String::from_utf8_lossy(r.take(kind_len)?).into_owned();
    let count = r.u64()?;
    let head_hash = r.bytes32()?;
    let len = usize::try_from(r.u64()?).map_err(|_| "body length overflows".to_string())?;
    let body = r.take(len)?.to_vec();
    if !r.is_empty() {
        return Err("data after the body".into());
    }
    Ok(Some((
        found,
        Snapshot {
            count,
            head_hash,
            body,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            count: 42,
            head_hash: [7u8; 32],
            body: b"{\"x\":1}".to_vec(),
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.snap");
        assert_eq!(read(&path, "t"), Ok(None));
        write(&path, "t", &sample()).expect("write");
        let newer = Snapshot {
            count: 43,
            ..sample()
        };
        write(&path, "t", &newer).expect("write");
        assert_eq!(read(&path, "t"), Ok(Some(newer)));
        // Only the snapshot is left; no temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
        // Private whatever the umask: a stale, world-readable temporary does not lend its mode.
        let tmp = path.with_extension("snap.tmp");
        std::fs::write(&tmp, b"stale").expect("write");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write(&path, "t", &sample()).expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "snapshot mode {mode:o}");
    }

    #[test]
    fn damaged_or_foreign_snapshots_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.snap");
        write(&path, "t", &sample()).expect("write");
        assert!(read(&path, "other").is_err_and(|e| e.contains("not \"other\"")));
        let good = std::fs::read(&path).expect("read");
        for (at, what) in [
            (0, "checksum"),
            (20, "checksum"),
            (good.len() - 1, "checksum"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            std::fs::write(&path, &bad).expect("write");
            assert!(
                read(&path, "t").is_err_and(|e| e.contains(what)),
                "byte {at}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 5]).expect("write");
        assert!(read(&path, "t").is_err());
    }
}
