//! Dataset files: a documented JSON list of write commands, each with its idempotency key, applied in
//! order. Keys make loading idempotent: loading the same file twice writes nothing the second time.
//!
//! ```json
//! {"format": "claims-ledger/dataset/v1", "name": "...", "description": "...",
//!  "commands": [{"idempotency_key": "...", "command": {"type": "register_party", ...}}]}
//! ```
//! Each `command` is a [`Command`] in its serde form (snake_case types and enum values, RFC 3339
//! times). Pure: parsing only; the app and the CLI apply it.
use std::collections::HashSet;

use serde::Deserialize;

use crate::Command;

pub const FORMAT: &str = "claims-ledger/dataset/v1";

/// The Istanbul talks dataset (Al Jazeera article in the corpus), built into the binary for `--demo`.
pub const ISTANBUL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../datasets/istanbul.json"
));

#[derive(Debug, Clone, Deserialize)]
pub struct Dataset {
    pub format: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub commands: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub idempotency_key: String,
    pub command: Command,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("not a dataset: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported format {0:?}, expected {FORMAT:?}")]
    Format(String),
    #[error("command {index}: idempotency key {key:?} is empty or repeated")]
    Key { index: usize, key: String },
}

/// Parses and checks a dataset file's text.
pub fn parse(text: &str) -> Result<Dataset, DatasetError> {
    let d: Dataset = serde_json::from_str(text)?;
    if d.format != FORMAT {
        return Err(DatasetError::Format(d.format));
    }
    let mut seen = HashSet::new();
    for (index, e) in d.commands.iter().enumerate() {
        if e.idempotency_key.is_empty() || !seen.insert(e.idempotency_key.as_str()) {
            return Err(DatasetError::Key {
                index,
                key: e.idempotency_key.clone(),
            });
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_dataset_parses() {
        let d = parse(ISTANBUL).expect("test fixture is valid");
        assert_eq!(d.name, "istanbul-talks");
        assert!(d.commands.len() > 30);
    }

    #[test]
    fn wrong_format_and_repeated_keys_are_refused() {
        assert!(matches!(
            parse(r#"{"format":"other","name":"x","commands":[]}"#),
            Err(DatasetError::Format(_))
        ));
        let cmd = r#"{"type":"register_party","party_id":"a","kind":"state","name":"A"}"#;
        let twice = format!(
            r#"{{"format":"{FORMAT}","name":"x","commands":[{{"idempotency_key":"k","command":{cmd}}},{{"idempotency_key":"k","command":{cmd}}}]}}"#
        );
        assert!(matches!(
            parse(&twice),
            Err(DatasetError::Key { index: 1, .. })
        ));
    }
}
