//! Commands: what a client asks the ledger to record, as received. Fields are raw (strings, options)
//! so that validation can name each bad field; `decide` turns a valid command into one event.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{Affiliation, CorrectionKind, Mode, PartyKind, Rating, StatedTime, TargetKind};

/// Party details, for both registration and update (an update replaces all details).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartyDetails {
    pub party_id: String,
    pub kind: Option<PartyKind>,
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub affiliations: Vec<Affiliation>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterSource {
    #[serde(default)]
    pub source_id: Option<String>,
    pub publisher: String,
    pub url: String,
    pub title: String,
    pub published_at: Option<DateTime<Utc>>,
    pub retrieved_at: Option<DateTime<Utc>>,
    pub language: String,
    pub text: String,
}

/// A span as received: the source id is still a string to validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanInput {
    pub source_id: String,
    pub start: u32,
    pub end: u32,
    pub exact: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordStatement {
    #[serde(default)]
    pub statement_id: Option<String>,
    pub speaker_id: String,
    #[serde(default)]
    pub on_behalf_of_id: Option<String>,
    pub stated_time: Option<StatedTime>,
    #[serde(default)]
    pub venue: Option<String>,
    pub mode: Option<Mode>,
    pub attribution_verb: String,
    pub content: String,
    pub spans: Vec<SpanInput>,
    #[serde(default)]
    pub reports_statement_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssertClaim {
    #[serde(default)]
    pub claim_id: Option<String>,
    pub statement_id: String,
    pub party_id: String,
    pub topic: String,
    pub stance: String,
    #[serde(default)]
    pub conditions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewClaim {
    #[serde(default)]
    pub review_id: Option<String>,
    pub claim_id: String,
    pub reviewer: String,
    pub rating: Option<Rating>,
    #[serde(default)]
    pub explanation: String,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueCorrection {
    #[serde(default)]
    pub correction_id: Option<String>,
    pub target_kind: Option<TargetKind>,
    pub target_id: String,
    pub kind: Option<CorrectionKind>,
    pub reason: String,
    #[serde(default)]
    pub replacement_id: Option<String>,
}

/// One write command. Each valid command becomes exactly one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    RegisterParty(PartyDetails),
    UpdateParty(PartyDetails),
    RegisterSource(RegisterSource),
    RecordStatement(RecordStatement),
    AssertClaim(AssertClaim),
    ReviewClaim(ReviewClaim),
    IssueCorrection(IssueCorrection),
}

/// Empty optional strings mean "not given", whichever way a command arrived.
fn none_if_empty(o: &mut Option<String>) {
    if o.as_deref() == Some("") {
        *o = None;
    }
}

impl Command {
    /// Canonical form: empty optional strings become `None`, so the same command hashes the same
    /// whether it came from JSON or protobuf (idempotency compares content hashes).
    pub fn normalize(&mut self) {
        match self {
            Command::RegisterParty(_) | Command::UpdateParty(_) => {}
            Command::RegisterSource(c) => none_if_empty(&mut c.source_id),
            Command::RecordStatement(c) => {
                none_if_empty(&mut c.statement_id);
                none_if_empty(&mut c.on_behalf_of_id);
                none_if_empty(&mut c.venue);
                none_if_empty(&mut c.reports_statement_id);
            }
            Command::AssertClaim(c) => none_if_empty(&mut c.claim_id),
            Command::ReviewClaim(c) => {
                none_if_empty(&mut c.review_id);
                none_if_empty(&mut c.url);
            }
            Command::IssueCorrection(c) => {
                none_if_empty(&mut c.correction_id);
                none_if_empty(&mut c.replacement_id);
            }
        }
    }

    /// The command's name as in the proto oneof (`register_party`, ...), used in field paths.
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterParty(_) => "register_party",
            Command::UpdateParty(_) => "update_party",
            Command::RegisterSource(_) => "register_source",
            Command::RecordStatement(_) => "record_statement",
            Command::AssertClaim(_) => "assert_claim",
            Command::ReviewClaim(_) => "review_claim",
            Command::IssueCorrection(_) => "issue_correction",
        }
    }

    /// The client-chosen id of the entity this command creates, if the command creates one with a UUID
    /// and the client left it empty (the server must then assign one before `decide`).
    pub fn missing_generated_id(&mut self) -> Option<&mut Option<String>> {
        let slot = match self {
            Command::RegisterParty(_) | Command::UpdateParty(_) => return None,
            Command::RegisterSource(c) => &mut c.source_id,
            Command::RecordStatement(c) => &mut c.statement_id,
            Command::AssertClaim(c) => &mut c.claim_id,
            Command::ReviewClaim(c) => &mut c.review_id,
            Command::IssueCorrection(c) => &mut c.correction_id,
        };
        if slot.as_deref().is_none_or(str::is_empty) {
            Some(slot)
        } else {
            None
        }
    }
}
