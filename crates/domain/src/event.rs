//! Events: the immutable facts the ledger stores. Each event belongs to exactly one stream, named after
//! the entity it is about (`party-russia`, `statement-<uuid>`, ...). The payload is stored as JSON; its
//! type name and schema version travel in the envelope so old versions can be upcast on read.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{
    Affiliation, CorrectionKind, Mode, PartyKind, Rating, Span, StatedTime, TargetKind,
};

/// Current schema version of every payload type.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Party {
    pub party_id: String,
    pub kind: PartyKind,
    pub name: String,
    pub aliases: Vec<String>,
    pub affiliations: Vec<Affiliation>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub source_id: Uuid,
    pub publisher: String,
    pub url: String,
    pub title: String,
    pub published_at: DateTime<Utc>,
    pub retrieved_at: DateTime<Utc>,
    pub language: String,
    pub text: String,
    /// Lowercase hex SHA-256 of the UTF-8 text, computed by the server.
    pub text_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub statement_id: Uuid,
    pub speaker_id: String,
    pub on_behalf_of_id: Option<String>,
    pub stated_time: StatedTime,
    pub venue: Option<String>,
    pub mode: Mode,
    pub attribution_verb: String,
    pub content: String,
    pub spans: Vec<Span>,
    pub reports_statement_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub claim_id: Uuid,
    pub statement_id: Uuid,
    pub party_id: String,
    pub topic: String,
    pub stance: String,
    pub conditions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub review_id: Uuid,
    pub claim_id: Uuid,
    pub reviewer: String,
    pub rating: Rating,
    pub explanation: String,
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    pub correction_id: Uuid,
    pub target_kind: TargetKind,
    pub target_id: Uuid,
    pub kind: CorrectionKind,
    pub reason: String,
    pub replacement_id: Option<Uuid>,
}

/// A domain event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    PartyRegistered(Party),
    PartyUpdated(Party),
    SourceRegistered(Source),
    StatementRecorded(Statement),
    ClaimAsserted(Claim),
    ClaimReviewed(Review),
    CorrectionIssued(Correction),
}

/// Stream of a party.
pub fn party_stream(id: &str) -> String {
    format!("party-{id}")
}
/// Stream of a source.
pub fn source_stream(id: &Uuid) -> String {
    format!("source-{id}")
}
/// Stream of a statement.
pub fn statement_stream(id: &Uuid) -> String {
    format!("statement-{id}")
}
/// Stream of a claim.
pub fn claim_stream(id: &Uuid) -> String {
    format!("claim-{id}")
}

/// Why a stored payload could not be read back as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unsupported schema version {version} for {event_type}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("malformed {event_type} payload: {source}")]
    Malformed {
        event_type: String,
        source: serde_json::Error,
    },
}

impl Event {
    /// The event type name stored in the envelope.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::PartyRegistered(_) => "PartyRegistered",
            Event::PartyUpdated(_) => "PartyUpdated",
            Event::SourceRegistered(_) => "SourceRegistered",
            Event::StatementRecorded(_) => "StatementRecorded",
            Event::ClaimAsserted(_) => "ClaimAsserted",
            Event::ClaimReviewed(_) => "ClaimReviewed",
            Event::CorrectionIssued(_) => "CorrectionIssued",
        }
    }

    /// The stream this event belongs to.
    pub fn stream(&self) -> String {
        match self {
            Event::PartyRegistered(p) | Event::PartyUpdated(p) => party_stream(&p.party_id),
            Event::SourceRegistered(s) => source_stream(&s.source_id),
            Event::StatementRecorded(s) => statement_stream(&s.statement_id),
            Event::ClaimAsserted(c) => claim_stream(&c.claim_id),
            Event::ClaimReviewed(r) => claim_stream(&r.claim_id),
            Event::CorrectionIssued(c) => match c.target_kind {
                TargetKind::Statement => statement_stream(&c.target_id),
                TargetKind::Claim => claim_stream(&c.target_id),
            },
        }
    }

    /// Id of the entity the event created or changed (slug or UUID), as answered to the writer.
    pub fn entity_id(&self) -> String {
        match self {
            Event::PartyRegistered(p) | Event::PartyUpdated(p) => p.party_id.clone(),
            Event::SourceRegistered(s) => s.source_id.to_string(),
            Event::StatementRecorded(s) => s.statement_id.to_string(),
            Event::ClaimAsserted(c) => c.claim_id.to_string(),
            Event::ClaimReviewed(r) => r.review_id.to_string(),
            Event::CorrectionIssued(c) => c.correction_id.to_string(),
        }
    }

    /// The payload as JSON (the envelope carries type and version).
    pub fn payload_raw(&self) -> Box<serde_json::value::RawValue> {
        use serde_json::value::to_raw_value as raw;
        let r = match self {
            Event::PartyRegistered(p) | Event::PartyUpdated(p) => raw(p),
            Event::SourceRegistered(s) => raw(s),
            Event::StatementRecorded(s) => raw(s),
            Event::ClaimAsserted(c) => raw(c),
            Event::ClaimReviewed(r) => raw(r),
            Event::CorrectionIssued(c) => raw(c),
        };
        r.expect("domain payloads always serialize to JSON")
    }

    /// The payload as JSON bytes.
    pub fn payload_json(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no custom impls.
        let r = match self {
            Event::PartyRegistered(p) | Event::PartyUpdated(p) => serde_json::to_vec(p),
            Event::SourceRegistered(s) => serde_json::to_vec(s),
            Event::StatementRecorded(s) => serde_json::to_vec(s),
            Event::ClaimAsserted(c) => serde_json::to_vec(c),
            Event::ClaimReviewed(r) => serde_json::to_vec(r),
            Event::CorrectionIssued(c) => serde_json::to_vec(c),
        };
        r.expect("domain payloads always serialize to JSON")
    }

    /// Reads a stored payload back. This is where older schema versions would be upcast.
    pub fn from_payload(event_type: &str, version: u32, json: &[u8]) -> Result<Event, DecodeError> {
        if version != SCHEMA_VERSION {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.to_string(),
                version,
            });
        }
        fn parse<T: serde::de::DeserializeOwned>(t: &str, j: &[u8]) -> Result<T, DecodeError> {
            serde_json::from_slice(j).map_err(|source| DecodeError::Malformed {
                event_type: t.to_string(),
                source,
            })
        }
        Ok(match event_type {
            "PartyRegistered" => Event::PartyRegistered(parse(event_type, json)?),
            "PartyUpdated" => Event::PartyUpdated(parse(event_type, json)?),
            "SourceRegistered" => Event::SourceRegistered(parse(event_type, json)?),
            "StatementRecorded" => Event::StatementRecorded(parse(event_type, json)?),
            "ClaimAsserted" => Event::ClaimAsserted(parse(event_type, json)?),
            "ClaimReviewed" => Event::ClaimReviewed(parse(event_type, json)?),
            "CorrectionIssued" => Event::CorrectionIssued(parse(event_type, json)?),
            other => return Err(DecodeError::UnknownType(other.to_string())),
        })
    }
}
