//! What the log reports about its own work (syncs, groups, acknowledgements, subscriber cursors), so
//! that the server can export it as metrics. The log names no metrics library and keeps no registry:
//! the host passes an implementation in [`LogOptions`](crate::LogOptions), and the default drops
//! everything.
use std::fmt;
use std::time::Duration;

/// Called on the log's own threads, some on the acknowledgement path: keep each call quick and
/// free of locks that an append could wait on.
pub trait LogMetrics: Send + Sync {
    /// The durable event count at open.
    fn opened(&self, _durable: u64) {}
    /// A named subscriber's stored position, at open and whenever it moves; `None` once deleted.
    fn cursor(&self, _name: &str, _position: Option<u64>) {}
    /// One sync covered this many events and appends.
    fn synced_group(&self, _events: usize, _appends: usize) {}
    /// Events became durable; the durable count is now `durable`.
    fn committed(&self, _events: usize, _durable: u64) {}
    /// An append was acknowledged this long after it reached the log.
    fn acknowledged(&self, _latency: Duration) {}
    /// One sync (the `fdatasync` of the write-ahead log segments a commit group is in) took this long.
    fn synced(&self, _took: Duration) {}
}

/// Reports nowhere.
pub struct NoMetrics;

impl LogMetrics for NoMetrics {}

impl fmt::Debug for dyn LogMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogMetrics")
    }
}
