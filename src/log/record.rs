//! The stored form of one event: canonical JSON bytes holding the whole envelope, the link to the
//! previous event's hash, and the payload. The SHA-256 of exactly these bytes is the event's hash, so an
//! auditor can recompute it from what is on disk without knowing any Rust type.
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
    payload: &'a RawValue,
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
    /// The payload JSON, a slice of `stored`.
    pub payload: Box<RawValue>,
    /// The exact stored bytes.
    pub stored: Vec<u8>,
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
        payload: r.payload,
        stored,
    })
}
