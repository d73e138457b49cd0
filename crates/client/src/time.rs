//! Protobuf timestamps and chrono: the contract carries `google.protobuf.Timestamp`, programs
//! usually hold `DateTime<Utc>`.
use chrono::{DateTime, Utc};

pub use prost_types::Timestamp;

/// `t` as a protobuf timestamp (nanosecond precision kept).
pub fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        // Always below 2e9 (a leap second reaches 1e9..2e9), so it fits.
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
    }
}

/// `t` as a UTC time; `None` for a timestamp outside chrono's range or with nanos out of
/// `0..1e9` (which the protobuf contract forbids).
pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    DateTime::from_timestamp(t.seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = DateTime::from_timestamp(1_717_632_000, 123_456_789).expect("time");
        let ts = to_timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_717_632_000, 123_456_789));
        assert_eq!(from_timestamp(&ts), Some(t));
    }

    #[test]
    fn invalid_nanos_are_refused() {
        for nanos in [-1, 1_000_000_000] {
            let ts = Timestamp { seconds: 0, nanos };
            assert_eq!(from_timestamp(&ts), None, "{nanos}");
        }
    }
}
