//! The stored form of one event: canonical JSON bytes holding the whole envelope, the link to the
//! previous event's hash, and the payload. The SHA-256 of exactly these bytes is the event's hash, so an
//! auditor can recompute it from what is on disk without knowing any Rust type.
//!
//! The first event of an append made under an idempotency key also records that key, the hash of
//! the request's content and how many events the append holds. The log itself is then the source of
//! truth for idempotency: the `i` index is derived from it, and a restore rebuilds it from the
//! export (see `import`). The field is absent otherwise, so records written before it existed keep
//! their bytes and hashes.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::LogError;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash that position 0 links to.
pub const GENESIS_HASH: Hash = [0u8; 32];

/// Largest stored record. Keeps every sled leaf under its blob threshold (see `store`), because sled
/// never syncs blob files.
pub const MAX_RECORD_BYTES: usize = 192 * 1024;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// Field order here is the canonical order of the stored JSON; changing it changes every hash.
#[derive(Serialize)]
struct RecordOut<'a> {
    position: u64,
    prev_hash: String,
    event_id: Uuid,
    stream: &'a str,
    stream_revision: u64,
    event_type: &'a str,
    schema_version: u32,
    recorded_at: DateTime<Utc>,
    recorded_by: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency: Option<MarkOut<'a>>,
    payload: &'a RawValue,
}

#[derive(Serialize)]
struct MarkOut<'a> {
    key: &'a str,
    content_hash: String,
    events: u32,
}

#[derive(Deserialize)]
struct MarkIn {
    key: String,
    content_hash: String,
    events: u32,
}

/// Carried by the first event of an append made under an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyMark {
    /// The client's idempotency key.
    pub key: String,
    /// Hash of the request's content, to refuse the same key with other content.
    pub content_hash: Hash,
    /// Events in the append, this one included; they hold consecutive positions.
    pub events: u32,
}

#[derive(Deserialize)]
struct RecordIn {
    position: u64,
    prev_hash: String,
    event_id: Uuid,
    stream: String,
    stream_revision: u64,
    event_type: String,
    schema_version: u32,
    recorded_at: DateTime<Utc>,
    recorded_by: String,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
    #[serde(default)]
    idempotency: Option<MarkIn>,
    payload: Box<RawValue>,
}

/// An event as read back from the log, with its stored bytes and their hash.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub position: u64,
    pub prev_hash: Hash,
    pub hash: Hash,
    pub event_id: Uuid,
    pub stream: String,
    pub stream_revision: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    /// Present on the first event of an append made under an idempotency key.
    pub idempotency: Option<IdempotencyMark>,
    /// The payload JSON, a slice of `stored`.
    pub payload: Box<RawValue>,
    /// The exact stored bytes.
    pub stored: Vec<u8>,
}

impl RecordedEvent {
    /// Whether it is one of the log's own events (its stream starts with `$`, which the log
    /// refuses to callers; see [`crate::evidence::SYSTEM_STREAM`]) rather than one of the caller's.
    pub fn is_system(&self) -> bool {
        self.stream.starts_with('$')
    }
}

/// Everything needed to encode one record.
pub(crate) struct Encode<'a> {
    pub position: u64,
    pub prev_hash: &'a Hash,
    pub event_id: Uuid,
    pub stream: &'a str,
    pub stream_revision: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: &'a str,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    /// Only on the first event of an append made under an idempotency key.
    pub idempotency: Option<&'a IdempotencyMark>,
    pub payload: &'a RawValue,
}

pub(crate) fn encode(e: &Encode<'_>) -> Result<Vec<u8>, LogError> {
    let out = RecordOut {
        position: e.position,
        prev_hash: hex::encode(e.prev_hash),
        event_id: e.event_id,
        stream: e.stream,
        stream_revision: e.stream_revision,
        event_type: e.event_type,
        schema_version: e.schema_version,
        recorded_at: e.recorded_at,
        recorded_by: e.recorded_by,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        idempotency: e.idempotency.map(|m| MarkOut {
            key: &m.key,
            content_hash: hex::encode(m.content_hash),
            events: m.events,
        }),
        payload: e.payload,
    };
    let bytes = serde_json::to_vec(&out).map_err(|e| LogError::Encode(e.to_string()))?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(LogError::RecordTooLarge {
            size: bytes.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    Ok(bytes)
}

/// Parses stored bytes; `position` is where they were found, for error messages.
pub fn decode(position: u64, stored: Vec<u8>) -> Result<RecordedEvent, LogError> {
    let corrupt = |reason: String| LogError::Corrupt { position, reason };
    let r: RecordIn =
        serde_json::from_slice(&stored).map_err(|e| corrupt(format!("unreadable record: {e}")))?;
    let mut prev_hash = [0u8; 32];
    hex::decode_to_slice(&r.prev_hash, &mut prev_hash)
        .map_err(|e| corrupt(format!("bad prev_hash: {e}")))?;
    let idempotency = match r.idempotency {
        Some(m) => {
            let mut content_hash = [0u8; 32];
            hex::decode_to_slice(&m.content_hash, &mut content_hash)
                .map_err(|e| corrupt(format!("bad idempotency content_hash: {e}")))?;
            if m.events == 0 {
                return Err(corrupt("an idempotency mark over 0 events".into()));
            }
            Some(IdempotencyMark {
                key: m.key,
                content_hash,
                events: m.events,
            })
        }
        None => None,
    };
    Ok(RecordedEvent {
        position: r.position,
        prev_hash,
        hash: sha256(&stored),
        event_id: r.event_id,
        stream: r.stream,
        stream_revision: r.stream_revision,
        event_type: r.event_type,
        schema_version: r.schema_version,
        recorded_at: r.recorded_at,
        recorded_by: r.recorded_by,
        correlation_id: r.correlation_id,
        causation_id: r.causation_id,
        idempotency,
        payload: r.payload,
        stored,
    })
}

/// Only the stream and revision of stored bytes, skipping the rest unchecked: enough to rebuild the
/// stream index at open without decoding every payload.
pub(crate) fn stream_of(position: u64, stored: &[u8]) -> Result<(String, u64), LogError> {
    #[derive(Deserialize)]
    struct StreamOnly {
        stream: String,
        stream_revision: u64,
    }
    let r: StreamOnly = serde_json::from_slice(stored).map_err(|e| LogError::Corrupt {
        position,
        reason: format!("unreadable record: {e}"),
    })?;
    Ok((r.stream, r.stream_revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(payload: &RawValue, prev: &Hash) -> Result<Vec<u8>, LogError> {
        encode(&Encode {
            position: 4,
            prev_hash: prev,
            event_id: Uuid::nil(),
            stream: "party-russia",
            stream_revision: 1,
            event_type: "PartyUpdated",
            schema_version: 1,
            recorded_at: DateTime::from_timestamp(1_717_545_600, 5).expect("valid time"),
            recorded_by: "tester",
            correlation_id: Some("c"),
            causation_id: None,
            idempotency: None,
            payload,
        })
    }

    #[test]
    fn records_round_trip_and_hash_their_exact_bytes() {
        let payload = RawValue::from_string(r#"{"name":"Росси́я “quoted”"}"#.into())
            .expect("test fixture is valid");
        let bytes = sample(&payload, &[3u8; 32]).expect("test fixture is valid");
        let rec = decode(4, bytes.clone()).expect("test fixture is valid");
        assert_eq!(rec.hash, sha256(&bytes));
        assert_eq!(rec.prev_hash, [3u8; 32]);
        assert_eq!(rec.payload.get(), payload.get());
        assert_eq!((rec.position, rec.stream_revision), (4, 1));
        assert_eq!(rec.correlation_id.as_deref(), Some("c"));
        assert_eq!(rec.causation_id, None);
        assert_eq!(
            stream_of(4, &bytes).expect("readable"),
            ("party-russia".to_string(), 1)
        );
        // Canonical: encoding the same content again gives the same bytes.
        assert_eq!(
            sample(&payload, &[3u8; 32]).expect("test fixture is valid"),
            bytes
        );
        // The previous hash is part of the bytes, so the chain is in the hash.
        assert_ne!(
            sha256(&sample(&payload, &[4u8; 32]).expect("test fixture is valid")),
            rec.hash
        );
    }

    #[test]
    fn an_idempotency_mark_round_trips_and_is_absent_otherwise() {
        let payload = RawValue::from_string(r#"{"x":1}"#.into()).expect("fixture");
        let plain = sample(&payload, &GENESIS_HASH).expect("fixture");
        assert!(!String::from_utf8_lossy(&plain).contains("idempotency"));
        assert_eq!(decode(4, plain).expect("readable").idempotency, None);

        let mark = IdempotencyMark {
            key: "retry-me".into(),
            content_hash: [7u8; 32],
            events: 3,
        };
        let marked = encode(&Encode {
            position: 4,
            prev_hash: &GENESIS_HASH,
            event_id: Uuid::nil(),
            stream: "s",
            stream_revision: 0,
            event_type: "T",
            schema_version: 1,
            recorded_at: DateTime::from_timestamp(1_717_545_600, 0).expect("fixture"),
            recorded_by: "tester",
            correlation_id: None,
            causation_id: None,
            idempotency: Some(&mark),
            payload: &payload,
        })
        .expect("fixture");
        assert_eq!(
            decode(4, marked.clone()).expect("readable").idempotency,
            Some(mark)
        );
        // A mark over no events can't be made by the writer, so it is corruption.
        let zero = String::from_utf8(marked)
            .expect("utf-8")
            .replace("\"events\":3", "\"events\":0");
        assert!(matches!(
            decode(4, zero.into_bytes()),
            Err(LogError::Corrupt { position: 4, .. })
        ));
    }

    #[test]
    fn oversized_records_and_garbage_are_refused() {
        let big = RawValue::from_string(format!("\"{}\"", "x".repeat(MAX_RECORD_BYTES)))
            .expect("test fixture is valid");
        assert!(matches!(
            sample(&big, &GENESIS_HASH),
            Err(LogError::RecordTooLarge { .. })
        ));
        assert!(matches!(
            decode(9, b"not json".to_vec()),
            Err(LogError::Corrupt { position: 9, .. })
        ));
    }
}
