//! Compiles the repository's `proto/` in pure Rust (protox), so no system `protoc` is needed, and
//! writes the descriptor set to `OUT_DIR` for server reflection.
//!
//! It also derives `serde::Serialize` for the read-side answers the command line prints as JSON,
//! with one attribute per field chosen from the descriptor set by the rules of `src/json.rs`. The
//! rules are applied to whatever the messages contain, so a field added to a view shows in the JSON
//! without touching this file; a field of a kind no rule covers fails the build instead of printing
//! something unreviewed.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

const PACKAGE: &str = ".claimsledger.v1";

/// The answers the command line prints as JSON; they and every message inside them get `Serialize`.
const JSON_ROOTS: &[&str] = &[
    "GetPositionsResponse",
    "GetPositionHistoryResponse",
    "GetClaimResponse",
    "GetStatementResponse",
];

/// String fields whose empty value means "not there": optional in the write commands, or (a source's
/// text) left out of answers unless asked for. Proto3 has no absent string, so the JSON says `null`
/// for them, as it does for an absent message. Which strings these are is meaning, not structure, so
/// they are listed here rather than derived.
const OPTIONAL_STRINGS: &[&str] = &[
    "StatementRecordedPayload.on_behalf_of_id",
    "StatementRecordedPayload.venue",
    "StatementRecordedPayload.reports_statement_id",
    "SourceRegisteredPayload.text",
    "CorrectionIssuedPayload.replacement_id",
    "ClaimReviewedPayload.explanation",
    "ClaimReviewedPayload.url",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = [
        "claimsledger/v1/types.proto",
        "claimsledger/v1/ledger.proto",
        "claimsledger/v1/events.proto",
        "claimsledger/v1/query.proto",
        "claimsledger/v1/admin.proto",
        "claimsledger/v1/audit.proto",
    ]
    .map(|f| root.join(f));
    let fds = protox::compile(files, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("claimsledger_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    let json = JsonRules::new(&fds)?;
    std::fs::write(out_dir.join("claimsledger_json_enums.rs"), &json.enum_impls)?;
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true);
    for (path, attribute) in &json.type_attributes {
        builder = builder.type_attribute(path, attribute);
    }
    for (path, attribute) in &json.field_attributes {
        builder = builder.field_attribute(path, attribute);
    }
    builder.compile_fds(fds)?;
    Ok(())
}

/// The serde attributes for the messages reachable from [`JSON_ROOTS`], and the `ProtoEnum` impls of
/// the enums they use.
struct JsonRules {
    type_attributes: Vec<(String, String)>,
    /// A set: two views may flatten the same payload, and serde rejects a repeated attribute.
    field_attributes: BTreeSet<(String, String)>,
    enum_impls: String,
}

impl JsonRules {
    fn new(fds: &FileDescriptorSet) -> Result<Self, String> {
        let messages: BTreeMap<String, &DescriptorProto> = fds
            .file
            .iter()
            .filter(|f| f.package() == &PACKAGE[1..])
            .flat_map(|f| &f.message_type)
            .map(|m| (format!("{PACKAGE}.{}", m.name()), m))
            .collect();
        let enums: BTreeSet<String> = fds
            .file
            .iter()
            .filter(|f| f.package() == &PACKAGE[1..])
            .flat_map(|f| &f.enum_type)
            .map(|e| format!("{PACKAGE}.{}", e.name()))
            .collect();

        let mut reached = BTreeSet::new();
        let mut todo: Vec<String> = JSON_ROOTS
            .iter()
            .map(|r| format!("{PACKAGE}.{r}"))
            .collect();
        while let Some(name) = todo.pop() {
            if !reached.insert(name.clone()) {
                continue;
            }
            let m = messages
                .get(&name)
                .ok_or_else(|| format!("JSON: no message {name} in {PACKAGE}"))?;
            for f in &m.field {
                if f.r#type() == Type::Message && messages.contains_key(f.type_name()) {
                    todo.push(f.type_name().to_string());
                }
            }
        }

        let mut rules = JsonRules {
            type_attributes: Vec::new(),
            field_attributes: BTreeSet::new(),
            enum_impls: String::new(),
        };
        let mut used_enums = BTreeSet::new();
        for name in &reached {
            let m = messages[name];
            if !m.nested_type.is_empty() || !m.enum_type.is_empty() || !m.oneof_decl.is_empty() {
                return Err(format!(
                    "JSON: {name} has nested types or a oneof, which src/json.rs has no rule for"
                ));
            }
            rules
                .type_attributes
                .push((name.clone(), "#[derive(serde::Serialize)]".into()));
            let own: BTreeSet<&str> = m.field.iter().map(|f| f.name()).collect();
            for f in &m.field {
                let path = format!("{name}.{}", f.name());
                let short = format!("{}.{}", m.name(), f.name());
                let repeated = f.label() == Label::Repeated;
                let attribute = match f.r#type() {
                    Type::Message if f.type_name() == ".google.protobuf.Timestamp" && !repeated => {
                        Some(r#"#[serde(serialize_with = "crate::json::timestamp")]"#.to_string())
                    }
                    Type::Message if messages.contains_key(f.type_name()) => {
                        let inner = messages[f.type_name()];
                        if m.name().ends_with("View") && inner.name().ends_with("Payload") {
                            // A view is its payload plus what the read side adds about it.
                            for g in &inner.field {
                                if own.contains(g.name()) {
                                    // The view's own field of that name wins (the read side's
                                    // richer form, e.g. spans with their context).
                                    rules.field_attributes.insert((
                                        format!("{}.{}", f.type_name(), g.name()),
                                        "#[serde(skip)]".into(),
                                    ));
                                }
                            }
                            Some(
                                r#"#[serde(flatten, serialize_with = "crate::json::payload")]"#
                                    .to_string(),
                            )
                        } else {
                            None
                        }
                    }
                    Type::Enum if enums.contains(f.type_name()) && !repeated => {
                        let e = &f.type_name()[PACKAGE.len() + 1..];
                        used_enums.insert(e.to_string());
                        Some(format!(
                            r#"#[serde(serialize_with = "crate::json::enum_value::<crate::{e}, _>")]"#
                        ))
                    }
                    Type::String if OPTIONAL_STRINGS.contains(&short.as_str()) => Some(
                        r#"#[serde(serialize_with = "crate::json::empty_as_null")]"#.to_string(),
                    ),
                    Type::String
                    | Type::Bool
                    | Type::Int32
                    | Type::Uint32
                    | Type::Int64
                    | Type::Uint64 => None,
                    other => {
                        return Err(format!(
                            "JSON: {path} is a {}{other:?} ({}), which src/json.rs has no rule for",
                            if repeated { "repeated " } else { "" },
                            f.type_name()
                        ))
                    }
                };
                if let Some(a) = attribute {
                    rules.field_attributes.insert((path, a));
                }
            }
        }
        for listed in OPTIONAL_STRINGS {
            let found = reached.iter().any(|n| {
                let m = messages[n];
                listed.split_once('.').is_some_and(|(msg, field)| {
                    m.name() == msg && m.field.iter().any(|f| f.name() == field)
                })
            });
            if !found {
                return Err(format!(
                    "JSON: OPTIONAL_STRINGS names {listed}, which is not printed"
                ));
            }
        }
        for e in &used_enums {
            let _ = writeln!(
                rules.enum_impls,
                "impl crate::json::ProtoEnum for crate::{e} {{\n    \
                 const PREFIX: &'static str = \"{}_\";\n    \
                 fn proto_name(&self) -> &'static str {{\n        self.as_str_name()\n    }}\n}}",
                upper_snake(e)
            );
        }
        Ok(rules)
    }
}

/// `StatementMode` → `STATEMENT_MODE`: the prefix the protobuf style guide puts on enum values.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
