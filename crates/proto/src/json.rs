//! The JSON form of the read-side answers (`positions`, `history`, `provenance` with `--json`): the
//! serializers that `build.rs` attaches to their fields, and the enum naming that the readable output
//! shares with it. The rules, applied by `build.rs` to every field of those messages:
//!
//! - field names are the proto names (snake_case), and 64-bit integers are JSON numbers;
//! - an enum is its value's proto name without the enum's prefix, lowercased, as in the dataset
//!   format: `STATEMENT_MODE_DIRECT_QUOTE` is `direct_quote`; a number this build does not know (a
//!   newer server) stays visible as `unknown(7)`;
//! - a timestamp is RFC 3339 in UTC with `Z` and as many fractional digits as it needs (0, 3, 6
//!   or 9); an absent one is `null`, as is every absent message;
//! - a `…View` is flat: its `…Payload` (the entity as written) and what the read side adds about it
//!   (status, origin, spans in context) are one object; where both have a field of the same name,
//!   the view's wins;
//! - optional strings of the write commands (listed in `build.rs`) are `null` when empty.
use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::Timestamp;
use serde::{Serialize, Serializer};

/// A generated protobuf enum, with the prefix its values carry (`STATEMENT_MODE_` for
/// `StatementMode`). Implemented by `build.rs` for the enums of the JSON answers.
pub trait ProtoEnum: TryFrom<i32> {
    /// The enum's name in upper snake case and `_`, the protobuf style guide's value prefix.
    const PREFIX: &'static str;
    /// The value's name in the `.proto` file, e.g. `STATEMENT_MODE_DIRECT_QUOTE`.
    fn proto_name(&self) -> &'static str;
}

include!(concat!(env!("OUT_DIR"), "/claimsledger_json_enums.rs"));

/// An enum field's value as the JSON shows it: `direct_quote` for `STATEMENT_MODE_DIRECT_QUOTE`,
/// `unknown(7)` for a number this build does not know.
pub fn enum_name<E: ProtoEnum>(v: i32) -> String {
    match E::try_from(v) {
        Ok(e) => {
            let full = e.proto_name();
            full.strip_prefix(E::PREFIX)
                .unwrap_or(full)
                .to_ascii_lowercase()
        }
        Err(_) => format!("unknown({v})"),
    }
}

/// A timestamp as the JSON shows it (RFC 3339, UTC, `Z`, fractional digits only as needed), or
/// `None` when it is out of chrono's range or its nanoseconds are negative (not a valid Timestamp).
pub fn timestamp_text(t: &Timestamp) -> Option<String> {
    let t = DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)?;
    Some(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

pub(crate) fn enum_value<E: ProtoEnum, S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&enum_name::<E>(*v))
}

pub(crate) fn timestamp<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t.as_ref().and_then(timestamp_text) {
        Some(text) => s.serialize_str(&text),
        None => s.serialize_none(),
    }
}

pub(crate) fn empty_as_null<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        s.serialize_str(v)
    }
}

/// A view's payload, flattened into the view. A missing payload (never sent by our server) shows its
/// fields with their defaults, so the view's shape does not depend on it.
pub(crate) fn payload<T: Serialize + Default, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => v.serialize(s),
        None => T::default().serialize(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate as pb;
    use serde_json::{json, Value};

    #[test]
    fn enums_lose_their_prefix_and_unknown_numbers_stay_visible() {
        let mode = pb::StatementMode::DirectQuote as i32;
        assert_eq!(enum_name::<pb::StatementMode>(mode), "direct_quote");
        let status = pb::EntityStatus::Retracted as i32;
        assert_eq!(enum_name::<pb::EntityStatus>(status), "retracted");
        assert_eq!(enum_name::<pb::StatementMode>(99), "unknown(99)");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_needed_digits_only() {
        let t = |seconds, nanos| timestamp_text(&Timestamp { seconds, nanos });
        assert_eq!(t(1_717_545_600, 0).as_deref(), Some("2024-06-05T00:00:00Z"));
        assert_eq!(
            t(1_717_545_600, 500_000_000).as_deref(),
            Some("2024-06-05T00:00:00.500Z")
        );
        assert_eq!(
            t(1_717_545_600, 1).as_deref(),
            Some("2024-06-05T00:00:00.000000001Z")
        );
        assert_eq!(t(0, -1), None);
    }

    #[test]
    fn views_are_flat_with_nulls_for_absent_and_optional_fields() {
        let v = serde_json::to_value(pb::StatementView {
            statement: Some(pb::StatementRecordedPayload {
                statement_id: "s".into(),
                speaker_id: "sergey-lavrov".into(),
                mode: pb::StatementMode::Reported as i32,
                spans: vec![pb::Span::default()],
                ..Default::default()
            }),
            status: pb::EntityStatus::Active as i32,
            ..Default::default()
        })
        .expect("serializes");
        assert_eq!(v["statement_id"], "s");
        assert_eq!(v["mode"], "reported");
        assert_eq!(v["status"], "active");
        assert_eq!(v["on_behalf_of_id"], Value::Null);
        assert_eq!(v["stated_time"], Value::Null);
        assert_eq!(v["origin"], Value::Null);
        // The view's spans (with context), not the payload's.
        assert_eq!(v["spans"], json!([]));
        assert!(v.get("statement").is_none(), "{v}");
    }

    #[test]
    fn a_missing_payload_keeps_the_views_shape() {
        let v = serde_json::to_value(pb::CorrectionView::default()).expect("serializes");
        assert_eq!(
            v,
            json!({
                "correction_id": "", "target_kind": "unspecified", "target_id": "",
                "kind": "unspecified", "reason": "", "replacement_id": null, "origin": null,
            })
        );
    }

    #[test]
    fn sixty_four_bit_integers_are_numbers() {
        let v = serde_json::to_value(pb::ReadStamp {
            applied_count: u64::MAX,
        })
        .expect("serializes");
        assert_eq!(v, json!({"applied_count": u64::MAX}));
    }
}
