//! Value types shared by commands and events: party kinds, stated times, spans, ratings, corrections.
//! Pure data with serde; no I/O and no transport types.
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What kind of actor a party is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartyKind {
    State,
    Government,
    Organisation,
    Person,
    Group,
}

/// A role held in another party for a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affiliation {
    pub organisation_id: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// How finely a stated time is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Instant,
    Day,
    Month,
    Year,
}

/// Valid time: when something was said or held true, with its precision. `at` is the start of the
/// period for coarse precisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatedTime {
    pub at: DateTime<Utc>,
    pub precision: Precision,
}

impl StatedTime {
    /// Truncates `at` to the start of its period (UTC), so equal periods compare equal.
    pub fn normalized(at: DateTime<Utc>, precision: Precision) -> StatedTime {
        let d = at.date_naive();
        let start = match precision {
            Precision::Instant => return StatedTime { at, precision },
            Precision::Day => d,
            Precision::Month => d.with_day(1).unwrap_or(d),
            Precision::Year => d.with_day(1).and_then(|d| d.with_month(1)).unwrap_or(d),
        };
        let at = Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).unwrap_or_default());
        StatedTime { at, precision }
    }
}

impl StatedTime {
    /// The end of the period `at` stands for (exclusive); `at` itself for an instant.
    pub fn period_end(&self) -> DateTime<Utc> {
        let d = self.at.date_naive();
        let next = match self.precision {
            Precision::Instant => return self.at,
            Precision::Day => d.succ_opt(),
            Precision::Month => d.checked_add_months(chrono::Months::new(1)),
            Precision::Year => d.checked_add_months(chrono::Months::new(12)),
        };
        next.and_then(|n| n.and_hms_opt(0, 0, 0))
            .map(|n| Utc.from_utc_datetime(&n))
            .unwrap_or(self.at)
    }
}

/// How a statement reached the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    DirectQuote,
    Paraphrase,
    Reported,
    OfficialDocument,
    ReportedNoComment,
}

/// A place in a source's text: code points `[start, end)` plus the exact text found there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub source_id: Uuid,
    pub start: u32,
    pub end: u32,
    pub exact: String,
}

/// A fact-checker's rating (schema.org reviewRating); `value`, `best`, `worst` are all 0 when there is
/// no numeric scale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rating {
    pub label: String,
    #[serde(default)]
    pub value: i32,
    #[serde(default)]
    pub best: i32,
    #[serde(default)]
    pub worst: i32,
}

/// What a correction does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionKind {
    Retract,
    Supersede,
    Erratum,
}

/// What kind of entity a correction targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Statement,
    Claim,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test fixture is valid")
            .with_timezone(&Utc)
    }

    #[test]
    fn stated_times_truncate_to_their_period_and_know_its_end() {
        let at = t("2024-06-05T17:45:10Z");
        let day = StatedTime::normalized(at, Precision::Day);
        assert_eq!(day.at, t("2024-06-05T00:00:00Z"));
        assert_eq!(day.period_end(), t("2024-06-06T00:00:00Z"));
        let month = StatedTime::normalized(at, Precision::Month);
        assert_eq!(month.at, t("2024-06-01T00:00:00Z"));
        assert_eq!(month.period_end(), t("2024-07-01T00:00:00Z"));
        let year = StatedTime::normalized(at, Precision::Year);
        assert_eq!(year.at, t("2024-01-01T00:00:00Z"));
        assert_eq!(year.period_end(), t("2025-01-01T00:00:00Z"));
        let instant = StatedTime::normalized(at, Precision::Instant);
        assert_eq!((instant.at, instant.period_end()), (at, at));
    }
}
