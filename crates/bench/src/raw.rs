//! The baseline's storage: what the log's write-ahead log does on the acknowledgement path with
//! nothing else — the group's record bytes written into a preallocated, zero-filled file, then one
//! `fdatasync`. This is the best this storage design can do for the same writes, so the benchmarks
//! compare against it rather than against a key-value store.
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// Size of the file; writes wrap around to its start, over blocks already allocated.
const SEGMENT_BYTES: u64 = 64 << 20;

/// A preallocated, zero-filled file written sequentially.
pub(crate) struct RawSegment {
    file: File,
    offset: u64,
    buf: Vec<u8>,
}

impl RawSegment {
    /// Creates `dir/raw.seg`, zero-filled and synced, like a fresh write-ahead log segment.
    pub(crate) fn create(dir: &Path) -> anyhow::Result<RawSegment> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("raw.seg");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(RawSegment {
            file,
            offset: 0,
            buf: Vec::new(),
        })
    }

    /// Writes `count` copies of `record` as one group and makes them durable with one `fdatasync`.
    pub(crate) fn write_group(&mut self, count: usize, record: &[u8]) -> std::io::Result<()> {
        self.buf.clear();
        for _ in 0..count {
            self.buf.extend_from_slice(record);
        }
        let len = self.buf.len() as u64;
        if self.offset + len > SEGMENT_BYTES {
            self.offset = 0;
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        self.offset += len;
        self.file.sync_data()
    }
}
