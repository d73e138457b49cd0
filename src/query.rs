//! Read-side client subcommands for people and scripts: `positions`, `history` and `provenance` ask a
//! running server's `claimsledger.v1.Query` service and print either aligned plain text or one JSON
//! document. The JSON is the answers' own serde form (derived in the proto crate, whose `json` module
//! gives its rules: proto field names, flat views, `null` for absent, enum values as the short
//! lowercase names of the dataset format such as `direct_quote`), plus the few fields that say what
//! was asked. Nothing here touches the log or projections.
use std::fmt::Write as _;

use super::connect::Conn;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use claims_ledger_client::time::Timestamp;
use serde::Serialize;
use serde_json::{json, Value};

use claims_ledger_client::pb;
use pb::json::enum_name;

/// Readable output is wrapped at this many columns.
const WIDTH: usize = 100;

/// Labels of `label: value` lines are padded to this many characters (`on behalf of:` + 1).
const LABEL: usize = 14;

/// Statements per page when listing; the most the server allows, to keep round trips few.
const PAGE_SIZE: u32 = 200;

// ----- parsing of command-line values -----

/// Parses a moment given as RFC 3339, a date `YYYY-MM-DD` or a month `YYYY-MM` (start of the day or
/// month, UTC). Used as a clap value parser, hence the `String` error.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        // chrono cannot parse a date without its day, so a month gets day 1 appended.
        .or_else(|| NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").ok());
    day.and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!("{s:?} is not an RFC 3339 time, a date YYYY-MM-DD or a month YYYY-MM")
        })
}

/// The transaction-time clock as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOfRecorded {
    /// Only events below this log position (an event count).
    Position(u64),
    /// Only events recorded at or before this moment.
    Time(DateTime<Utc>),
}

/// Parses `--as-of-recorded`: an integer is a log position, anything else a moment as in
/// [`parse_time`].
pub fn parse_as_of_recorded(s: &str) -> Result<AsOfRecorded, String> {
    match s.trim().parse::<u64>() {
        Ok(p) => Ok(AsOfRecorded::Position(p)),
        Err(_) => parse_time(s)
            .map(AsOfRecorded::Time)
            .map_err(|e| format!("{e}, nor a log position")),
    }
}

impl AsOfRecorded {
    fn pb(self) -> pb::AsOfRecorded {
        let at = match self {
            AsOfRecorded::Position(p) => pb::as_of_recorded::At::Position(p),
            AsOfRecorded::Time(t) => pb::as_of_recorded::At::Time(ts(t)),
        };
        pb::AsOfRecorded { at: Some(at) }
    }
}

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

// ----- small conversions shared by text and JSON -----

fn to_dt(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn fmt_dt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A timestamp for people: RFC 3339 to the millisecond at most (recording times carry nanoseconds
/// nobody reads), or `-` when absent or out of range.
fn fmt_ts(t: Option<&Timestamp>) -> String {
    t.and_then(to_dt).map_or_else(
        || "-".into(),
        |t| {
            let f = if t.timestamp_subsec_nanos() == 0 {
                SecondsFormat::Secs
            } else {
                SecondsFormat::Millis
            };
            t.to_rfc3339_opts(f, true)
        },
    )
}

// The enum names of the text are the JSON's (`direct_quote`, `retracted`), from the proto crate.

fn precision_name(v: i32) -> String {
    enum_name::<pb::TimePrecision>(v)
}

fn mode_name(v: i32) -> String {
    enum_name::<pb::StatementMode>(v)
}

fn status_name(v: i32) -> String {
    enum_name::<pb::EntityStatus>(v)
}

fn correction_kind_name(v: i32) -> String {
    enum_name::<pb::CorrectionKind>(v)
}

/// For text: `direct_quote` reads better as `direct quote`.
fn words(name: String) -> String {
    name.replace('_', " ")
}

/// A stated time as precisely as it is known: `2024-06-05T14:30:00Z`, `2024-06-05 (day)`,
/// `2024-06 (month)`, `2024 (year)`.
fn fmt_stated(s: Option<&pb::StatedTime>) -> String {
    let Some(s) = s else { return "-".into() };
    let Some(at) = s.at.as_ref().and_then(to_dt) else {
        return "-".into();
    };
    match pb::TimePrecision::try_from(s.precision) {
        Ok(pb::TimePrecision::Day) => format!("{} (day)", at.format("%Y-%m-%d")),
        Ok(pb::TimePrecision::Month) => format!("{} (month)", at.format("%Y-%m")),
        Ok(pb::TimePrecision::Year) => format!("{} (year)", at.format("%Y")),
        Ok(pb::TimePrecision::Instant) => fmt_dt(at),
        _ => format!("{} ({})", fmt_dt(at), precision_name(s.precision)),
    }
}

fn fmt_stamp(s: Option<&pb::ReadStamp>) -> String {
    match s {
        Some(s) => format!("reflects log positions [0, {})", s.applied_count),
        None => "no read stamp".into(),
    }
}

/// `speaker, on behalf of party` or just the speaker.
fn fmt_speaker(s: &pb::StatementRecordedPayload) -> String {
    if s.on_behalf_of_id.is_empty() || s.on_behalf_of_id == s.speaker_id {
        s.speaker_id.clone()
    } else {
        format!("{}, on behalf of {}", s.speaker_id, s.on_behalf_of_id)
    }
}

/// Why an entry does not count: the claim's own status, else its statement's.
fn ended_label(c: &pb::ClaimView) -> Option<String> {
    let active = pb::EntityStatus::Active as i32;
    if c.status != active {
        return Some(status_name(c.status));
    }
    match &c.statement {
        Some(s) if s.status != active => Some(format!("statement {}", status_name(s.status))),
        _ => None,
    }
}

// ----- readable text -----

/// Greedy word wrap to `width` columns (counted in chars); runs of whitespace, newlines included,
/// become one space. A word longer than the width gets a line of its own.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut len = 0usize;
    for word in text.split_whitespace() {
        let wlen = word.chars().count();
        if len > 0 && len + 1 + wlen > width {
            lines.push(std::mem::take(&mut line));
            len = 0;
        }
        if len > 0 {
            line.push(' ');
            len += 1;
        }
        line.push_str(word);
        len += wlen;
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Appends `label: value` at `indent`, the value wrapped and its continuation lines aligned under it.
fn kv(out: &mut String, indent: usize, label: &str, value: &str) {
    kv_hanging(out, indent, label, "", value);
}

/// As [`kv`], with `prefix` kept verbatim (its spacing survives wrapping) before the value and the
/// value's continuation lines aligned after it.
fn kv_hanging(out: &mut String, indent: usize, label: &str, prefix: &str, value: &str) {
    let pad = " ".repeat(indent);
    let hang = prefix.chars().count();
    let width = WIDTH.saturating_sub(indent + LABEL + hang).max(20);
    for (i, line) in wrap(value, width).iter().enumerate() {
        // An empty label continues the previous line's value.
        let head = if i == 0 && !label.is_empty() {
            format!("{label}:")
        } else {
            String::new()
        };
        let lead = if i == 0 {
            prefix.to_string()
        } else {
            " ".repeat(hang)
        };
        // Trailing spaces of an empty value are trimmed so the output diffs cleanly.
        let row = format!("{pad}{head:<LABEL$}{lead}{line}");
        let _ = writeln!(out, "{}", row.trim_end());
    }
}

/// Rows under a header, every column but the last padded to its widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(n) {
            if i + 1 < n {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            } else {
                line.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A span shown in its source: `…before[exact]after…`, the ellipses marking text left out.
fn in_context(v: &pb::SpanView) -> String {
    let Some(span) = &v.span else {
        return String::new();
    };
    let before_cut = (v.before.chars().count() as u64) < u64::from(span.start);
    let text_length = v.source.as_ref().map_or(0, |s| s.text_length);
    let after_cut = u64::from(span.end) + (v.after.chars().count() as u64) < text_length;
    format!(
        "{}{}[{}]{}{}",
        if before_cut { "…" } else { "" },
        v.before,
        span.exact,
        v.after,
        if after_cut { "…" } else { "" }
    )
}

/// `Publisher, “Title”` for a source view.
fn source_line(v: Option<&pb::SourceView>) -> Option<(String, String)> {
    let s = v?.source.as_ref()?;
    Some((format!("{}, “{}”", s.publisher, s.title), s.url.clone()))
}

/// Each span's exact text, and its source after the last of a run of spans into the same source.
fn quote_lines(out: &mut String, indent: usize, spans: &[pb::SpanView]) {
    let source_id = |sv: &pb::SpanView| sv.span.as_ref().map(|s| s.source_id.clone());
    for (i, sv) in spans.iter().enumerate() {
        let label = if i == 0 { "quote" } else { "" };
        let exact = sv.span.as_ref().map_or("", |s| s.exact.as_str());
        kv(out, indent, label, &format!("“{exact}”"));
        let run_ends = spans
            .get(i + 1)
            .is_none_or(|next| source_id(next) != source_id(sv));
        if !run_ends {
            continue;
        }
        if let Some((title, url)) = source_line(sv.source.as_ref()) {
            kv(out, indent, "", &format!("— {title}"));
            kv(out, indent, "", &url);
        }
    }
}

fn position_text(p: &pb::Position) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", p.topic);
    match &p.current {
        Some(c) => {
            let claim = c.claim.clone().unwrap_or_default();
            kv(&mut out, 2, "stance", &claim.stance);
            if !claim.conditions.is_empty() {
                kv(&mut out, 2, "conditions", &claim.conditions.join("; "));
            }
            if let Some(sv) = &c.statement {
                let s = sv.statement.clone().unwrap_or_default();
                kv(&mut out, 2, "said by", &fmt_speaker(&s));
                kv(&mut out, 2, "stated", &fmt_stated(s.stated_time.as_ref()));
                kv(
                    &mut out,
                    2,
                    "how",
                    &format!("{}, “{}”", words(mode_name(s.mode)), s.attribution_verb),
                );
                if !s.venue.is_empty() {
                    kv(&mut out, 2, "venue", &s.venue);
                }
                quote_lines(&mut out, 2, &sv.spans);
            }
            for r in &c.reviews {
                if let Some(r) = &r.review {
                    let label = r.rating.as_ref().map_or("", |x| x.label.as_str());
                    kv(&mut out, 2, "reviewed", &format!("{}: {label}", r.reviewer));
                }
            }
            kv(&mut out, 2, "claim", &claim.claim_id);
        }
        None => kv(
            &mut out,
            2,
            "stance",
            "none in force (every claim on this topic has been retracted)",
        ),
    }
    // The moments the stance changed, plus entries that no longer count so a reader sees what was
    // withdrawn; repeats of an unchanged stance are left to `history`.
    let shown: Vec<&pb::HistoryEntry> = p
        .history
        .iter()
        .filter(|e| e.changed || !e.in_force)
        .collect();
    let dates: Vec<String> = shown
        .iter()
        .map(|e| fmt_stated(e.changed_at.as_ref()))
        .collect();
    let w = dates.iter().map(|d| d.chars().count()).max().unwrap_or(0);
    for (i, (e, date)) in shown.iter().zip(&dates).enumerate() {
        let c = e.claim.as_ref();
        let stance = c
            .and_then(|c| c.claim.as_ref())
            .map_or("", |c| c.stance.as_str());
        let mut line = stance.to_string();
        if !e.in_force {
            let why = c.and_then(ended_label).unwrap_or_else(|| "ended".into());
            let _ = write!(line, "  [{why}, not in force]");
        }
        let label = if i == 0 { "changed" } else { "" };
        kv_hanging(&mut out, 2, label, &format!("{date:<w$}  "), &line);
    }
    out
}

fn history_text(
    party: &str,
    topic: &str,
    p: &pb::Position,
    stamp: Option<&pb::ReadStamp>,
) -> String {
    let mut out = String::new();
    let n = p.history.len();
    if n == 0 {
        // An empty table under "current stance: none in force" would suggest retractions.
        let _ = writeln!(
            out,
            "{party} on {topic}: no claims in range ({})",
            fmt_stamp(stamp)
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{party} on {}: {n} {} ({})",
        p.topic,
        if n == 1 { "entry" } else { "entries" },
        fmt_stamp(stamp)
    );
    let current = p
        .current
        .as_ref()
        .and_then(|c| c.claim.as_ref())
        .map_or("none in force".to_string(), |c| {
            format!("{} (claim {})", c.stance, c.claim_id)
        });
    let _ = writeln!(out, "current stance: {current}\n");
    let rows: Vec<Vec<String>> = p
        .history
        .iter()
        .map(|e| {
            let c = e.claim.as_ref();
            let claim = c.and_then(|c| c.claim.clone()).unwrap_or_default();
            let speaker = c
                .and_then(|c| c.statement.as_ref())
                .and_then(|s| s.statement.as_ref())
                .map_or(String::new(), |s| s.speaker_id.clone());
            let in_force = if e.in_force {
                "yes".to_string()
            } else {
                let why = c.and_then(ended_label).unwrap_or_else(|| "ended".into());
                format!("no ({why})")
            };
            vec![
                fmt_stated(e.changed_at.as_ref()),
                if e.changed { "changed" } else { "-" }.to_string(),
                in_force,
                speaker,
                claim.claim_id,
                claim.stance,
            ]
        })
        .collect();
    out.push_str(&table(
        &["STATED", "CHANGE", "IN FORCE", "SPEAKER", "CLAIM", "STANCE"],
        &rows,
    ));
    out
}

fn statement_summary_text(v: &pb::StatementView) -> String {
    let mut out = String::new();
    let s = v.statement.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "{}  statement {}",
        fmt_stated(s.stated_time.as_ref()),
        s.statement_id
    );
    kv(&mut out, 2, "speaker", &fmt_speaker(&s));
    kv(
        &mut out,
        2,
        "mode",
        &format!("{}, “{}”", words(mode_name(s.mode)), s.attribution_verb),
    );
    kv(&mut out, 2, "status", &status_name(v.status));
    let topics = if v.topics.is_empty() {
        "-".to_string()
    } else {
        v.topics.join(", ")
    };
    kv(&mut out, 2, "topics", &topics);
    kv(&mut out, 2, "content", &s.content);
    out
}

fn origin_text(o: Option<&pb::Origin>) -> String {
    match o {
        Some(o) => format!(
            "event {} at log position {} ({}@{}), recorded {} by {}",
            o.event_id,
            o.position,
            o.stream,
            o.stream_revision,
            fmt_ts(o.recorded_at.as_ref()),
            o.recorded_by
        ),
        None => "-".into(),
    }
}

fn corrections_text(out: &mut String, indent: usize, cs: &[pb::CorrectionView]) {
    if cs.is_empty() {
        kv(out, indent, "corrections", "none");
    }
    for (i, cv) in cs.iter().enumerate() {
        let c = cv.correction.clone().unwrap_or_default();
        let mut line = format!("{}: {}", correction_kind_name(c.kind), c.reason);
        if !c.replacement_id.is_empty() {
            let _ = write!(line, " (replaced by {})", c.replacement_id);
        }
        let pos = cv
            .origin
            .as_ref()
            .map_or(String::new(), |o| format!(" [log position {}]", o.position));
        kv(
            out,
            indent,
            if i == 0 { "corrections" } else { "" },
            &format!("{line}{pos}"),
        );
    }
}

fn claim_text(out: &mut String, c: &pb::ClaimView) {
    let claim = c.claim.clone().unwrap_or_default();
    let _ = writeln!(out, "claim {}  [{}]", claim.claim_id, status_name(c.status));
    kv(out, 2, "party", &claim.party_id);
    kv(out, 2, "topic", &claim.topic);
    kv(out, 2, "stance", &claim.stance);
    if !claim.conditions.is_empty() {
        kv(out, 2, "conditions", &claim.conditions.join("; "));
    }
    kv(out, 2, "asserted", &origin_text(c.origin.as_ref()));
    if c.reviews.is_empty() {
        kv(out, 2, "reviews", "none");
    }
    for (i, rv) in c.reviews.iter().enumerate() {
        let r = rv.review.clone().unwrap_or_default();
        let rating = r.rating.unwrap_or_default();
        let mut line = format!("{}: {}", r.reviewer, rating.label);
        if rating.best != rating.worst {
            let _ = write!(
                line,
                " ({} on {}..{})",
                rating.value, rating.worst, rating.best
            );
        }
        if !r.explanation.is_empty() {
            let _ = write!(line, " — {}", r.explanation);
        }
        if !r.url.is_empty() {
            let _ = write!(line, " {}", r.url);
        }
        kv(out, 2, if i == 0 { "reviews" } else { "" }, &line);
    }
    corrections_text(out, 2, &c.corrections);
}

/// A statement, then each span in its source text, then each source once.
fn statement_chain_text(out: &mut String, v: &pb::StatementView) {
    let s = v.statement.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "statement {}  [{}]",
        s.statement_id,
        status_name(v.status)
    );
    kv(out, 2, "speaker", &s.speaker_id);
    if !s.on_behalf_of_id.is_empty() {
        kv(out, 2, "on behalf of", &s.on_behalf_of_id);
    }
    kv(out, 2, "stated", &fmt_stated(s.stated_time.as_ref()));
    if !s.venue.is_empty() {
        kv(out, 2, "venue", &s.venue);
    }
    kv(out, 2, "mode", &words(mode_name(s.mode)));
    kv(out, 2, "verb", &s.attribution_verb);
    kv(out, 2, "content", &s.content);
    if !s.reports_statement_id.is_empty() {
        kv(out, 2, "reports", &s.reports_statement_id);
    }
    if let Some(o) = &v.origin {
        kv(out, 2, "recorded by", &o.recorded_by);
        kv(out, 2, "recorded at", &fmt_ts(o.recorded_at.as_ref()));
        kv(out, 2, "event", &o.event_id);
        kv(
            out,
            2,
            "log position",
            &format!("{} ({}@{})", o.position, o.stream, o.stream_revision),
        );
    }
    corrections_text(out, 2, &v.corrections);
    let mut shown_sources: Vec<String> = Vec::new();
    let n = v.spans.len();
    for (i, sv) in v.spans.iter().enumerate() {
        let span = sv.span.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "\nspan {} of {n}: code points {}..{} of source {}",
            i + 1,
            span.start,
            span.end,
            span.source_id
        );
        kv(out, 2, "exact", &span.exact);
        kv(out, 2, "in context", &in_context(sv));
        let Some(src) = &sv.source else { continue };
        let meta = src.source.clone().unwrap_or_default();
        if shown_sources.contains(&span.source_id) {
            continue;
        }
        shown_sources.push(span.source_id.clone());
        let _ = writeln!(out, "\nsource {}", meta.source_id);
        kv(out, 2, "publisher", &meta.publisher);
        kv(out, 2, "title", &meta.title);
        kv(out, 2, "url", &meta.url);
        kv(out, 2, "published", &fmt_ts(meta.published_at.as_ref()));
        kv(out, 2, "retrieved", &fmt_ts(meta.retrieved_at.as_ref()));
        kv(
            out,
            2,
            "text",
            &format!(
                "{} code points, language {}",
                src.text_length, meta.language
            ),
        );
        kv(out, 2, "sha-256", &meta.text_sha256);
        kv(out, 2, "registered", &origin_text(src.origin.as_ref()));
    }
}

// ----- JSON -----

/// The answer's JSON with the command's own fields added: what was asked (the party, the topic, the
/// kind of entity found) is not part of the answer, and a script reading the document wants it.
fn document(answer: &impl Serialize, asked: Value) -> anyhow::Result<Value> {
    let mut doc = serde_json::to_value(answer)?;
    if let (Some(doc), Value::Object(asked)) = (doc.as_object_mut(), asked) {
        doc.extend(asked);
    }
    Ok(doc)
}

/// Writes `text` to stdout. A reader that went away (`| head`) is not an error: `print!` would
/// panic there.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    emit(&text)
}

// ----- the commands -----

/// A Query client, and the consistency that makes its answers include every write acknowledged
/// before the command started (the log's head at connect time), so a person never sees a lagging
/// projection right after a write.
async fn connect(
    server: &str,
) -> anyhow::Result<(
    pb::query_client::QueryClient<Conn>,
    Option<pb::ReadConsistency>,
)> {
    let channel = super::connect::connect(server).await?;
    let head = pb::events_client::EventsClient::new(channel.clone())
        .get_head(pb::GetHeadRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    Ok((
        pb::query_client::QueryClient::new(channel),
        Some(pb::ReadConsistency {
            min_position: head.event_count,
        }),
    ))
}

/// The same `code: message` the other client commands print.
fn status_error(s: claims_ledger_client::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

/// `claims-ledger positions`: the current stance of a party per topic, with provenance.
pub async fn positions(
    server: &str,
    party: &str,
    topic: Option<&str>,
    as_of_stated: Option<DateTime<Utc>>,
    as_of_recorded: Option<AsOfRecorded>,
    json: bool,
) -> anyhow::Result<i32> {
    let (mut client, fresh) = connect(server).await?;
    let resp = client
        .get_positions(pb::GetPositionsRequest {
            party_id: party.to_string(),
            topic: topic.unwrap_or_default().to_string(),
            as_of_stated: as_of_stated.map(ts),
            as_of_recorded: as_of_recorded.map(AsOfRecorded::pb),
            consistency: fresh,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        print_json(&document(&resp, json!({"party_id": party}))?)?;
        return Ok(0);
    }
    let mut clocks = Vec::new();
    if let Some(t) = as_of_stated {
        clocks.push(format!("as of stated time {}", fmt_dt(t)));
    }
    match as_of_recorded {
        Some(AsOfRecorded::Position(p)) => clocks.push(format!("as recorded below position {p}")),
        Some(AsOfRecorded::Time(t)) => clocks.push(format!("as recorded by {}", fmt_dt(t))),
        None => {}
    }
    let n = resp.positions.len();
    let mut out = format!(
        "{party}: {n} {}{}{} ({})\n",
        if n == 1 { "position" } else { "positions" },
        if clocks.is_empty() { "" } else { ", " },
        clocks.join(", "),
        fmt_stamp(resp.stamp.as_ref())
    );
    for p in &resp.positions {
        out.push('\n');
        out.push_str(&position_text(p));
    }
    emit(&out)?;
    Ok(0)
}

/// `claims-ledger history`: one topic's stances over time, or every statement of the party.
pub async fn history(
    server: &str,
    party: &str,
    topic: Option<&str>,
    since: Option<DateTime<Utc>>,
    json: bool,
) -> anyhow::Result<i32> {
    let (mut client, fresh) = connect(server).await?;
    if let Some(topic) = topic {
        let mut resp = client
            .get_position_history(pb::GetPositionHistoryRequest {
                party_id: party.to_string(),
                topic: topic.to_string(),
                since: since.map(ts),
                consistency: fresh,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        // Shown (empty) even if the server sent none, so `position.history` is always there to read.
        let position = resp.position.get_or_insert_default();
        if json {
            let asked = json!({"party_id": party, "topic": topic, "since": since.map(fmt_dt)});
            print_json(&document(&resp, asked)?)?;
        } else {
            emit(&history_text(party, topic, position, resp.stamp.as_ref()))?;
        }
        return Ok(0);
    }

    let mut statements = Vec::new();
    let mut stamps: Vec<u64> = Vec::new();
    let mut token = String::new();
    loop {
        let resp = client
            .list_statements(pb::ListStatementsRequest {
                party_id: party.to_string(),
                stated_from: since.map(ts),
                order: pb::Order::NewestFirst as i32,
                page_size: PAGE_SIZE,
                page_token: token.clone(),
                // Later pages must not come from an older projection than the first one.
                consistency: stamps
                    .first()
                    .map(|&min_position| pb::ReadConsistency { min_position })
                    .or(fresh),
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        statements.extend(resp.statements);
        stamps.push(resp.stamp.map_or(0, |s| s.applied_count));
        // A server that hands back the token it was given would otherwise loop forever.
        if resp.next_page_token.is_empty() || resp.next_page_token == token {
            break;
        }
        token = resp.next_page_token;
    }
    let lo = stamps.iter().copied().min().unwrap_or(0);
    let hi = stamps.iter().copied().max().unwrap_or(0);
    if json {
        // Written by hand: the listing is several answers (pages) joined, so its stamp is the oldest
        // page's, plus the newest page's when they differ; no one answer holds that.
        let mut stamp = json!({"applied_count": lo});
        if hi != lo {
            stamp["applied_count_last_page"] = json!(hi);
        }
        print_json(&json!({
            "party_id": party, "since": since.map(fmt_dt), "order": "newest_first",
            "statements": serde_json::to_value(&statements)?,
            "stamp": stamp,
        }))?;
        return Ok(0);
    }
    let reflects = if lo == hi {
        format!("reflects log positions [0, {lo})")
    } else {
        format!("pages reflect log positions [0, {lo}) to [0, {hi})")
    };
    let n = statements.len();
    let mut out = format!(
        "{party}: {n} {}{}, newest first ({reflects})\n",
        if n == 1 { "statement" } else { "statements" },
        since.map_or(String::new(), |t| format!(" since {}", fmt_dt(t)))
    );
    for s in &statements {
        out.push('\n');
        out.push_str(&statement_summary_text(s));
    }
    emit(&out)?;
    Ok(0)
}

/// `claims-ledger provenance`: a claim or statement traced down to its quoted spans and sources.
pub async fn provenance(server: &str, id: &str, context: u32, json: bool) -> anyhow::Result<i32> {
    // Checked here so a typo gets a plain message instead of INVALID_ARGUMENT from two calls.
    let id = uuid::Uuid::parse_str(id.trim())
        .map_err(|e| anyhow::anyhow!("{id:?} is not a claim or statement id (a UUID): {e}"))?
        .to_string();
    let (mut client, fresh) = connect(server).await?;
    match client
        .get_claim(pb::GetClaimRequest {
            claim_id: id.clone(),
            context_chars: context,
            consistency: fresh,
        })
        .await
    {
        Ok(resp) => {
            let resp = resp.into_inner();
            if json {
                print_json(&document(&resp, json!({"kind": "claim"}))?)?;
                return Ok(0);
            }
            let mut out = String::new();
            if let Some(c) = &resp.claim {
                claim_text(&mut out, c);
                if let Some(s) = &c.statement {
                    out.push('\n');
                    statement_chain_text(&mut out, s);
                }
            }
            let _ = writeln!(out, "\n({})", fmt_stamp(resp.stamp.as_ref()));
            emit(&out)?;
            return Ok(0);
        }
        Err(s) if s.code() == claims_ledger_client::Code::NotFound => {}
        Err(s) => return Err(status_error(s)),
    }
    match client
        .get_statement(pb::GetStatementRequest {
            statement_id: id.clone(),
            context_chars: context,
            consistency: fresh,
        })
        .await
    {
        Ok(resp) => {
            let resp = resp.into_inner();
            if json {
                print_json(&document(&resp, json!({"kind": "statement"}))?)?;
                return Ok(0);
            }
            let mut out = String::new();
            if let Some(s) = &resp.statement {
                statement_chain_text(&mut out, s);
            }
            if let Some(r) = &resp.reports {
                out.push_str("\nreports this statement:\n");
                out.push_str(&statement_summary_text(r));
            }
            let n = resp.claims.len();
            let _ = writeln!(
                out,
                "\nasserts {n} {}",
                if n == 1 { "claim" } else { "claims" }
            );
            for c in &resp.claims {
                out.push('\n');
                claim_text(&mut out, c);
            }
            let _ = writeln!(out, "\n({})", fmt_stamp(resp.stamp.as_ref()));
            emit(&out)?;
            Ok(0)
        }
        Err(s) if s.code() == claims_ledger_client::Code::NotFound => {
            eprintln!("no claim or statement with id {id}");
            Ok(1)
        }
        Err(s) => Err(status_error(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test times are valid RFC 3339")
            .with_timezone(&Utc)
    }

    #[test]
    fn times_parse_as_rfc3339_day_or_month() {
        assert_eq!(
            parse_time("2024-06-05T14:30:00+02:00"),
            Ok(t("2024-06-05T12:30:00Z"))
        );
        assert_eq!(parse_time("2024-06-05"), Ok(t("2024-06-05T00:00:00Z")));
        assert_eq!(parse_time("2024-06"), Ok(t("2024-06-01T00:00:00Z")));
        assert!(parse_time("2024").is_err());
        assert!(parse_time("2024-13").is_err());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn as_of_recorded_is_a_position_or_a_time() {
        assert_eq!(parse_as_of_recorded("42"), Ok(AsOfRecorded::Position(42)));
        assert_eq!(
            parse_as_of_recorded("2026-11-01"),
            Ok(AsOfRecorded::Time(t("2026-11-01T00:00:00Z")))
        );
        assert!(parse_as_of_recorded("-1").is_err());
    }

    #[test]
    fn stated_times_show_their_precision() {
        let st = |at: &str, p: pb::TimePrecision| pb::StatedTime {
            at: Some(ts(t(at))),
            precision: p as i32,
        };
        let day = st("2024-06-05T00:00:00Z", pb::TimePrecision::Day);
        assert_eq!(fmt_stated(Some(&day)), "2024-06-05 (day)");
        let month = st("2024-06-01T00:00:00Z", pb::TimePrecision::Month);
        assert_eq!(fmt_stated(Some(&month)), "2024-06 (month)");
        let year = st("2024-01-01T00:00:00Z", pb::TimePrecision::Year);
        assert_eq!(fmt_stated(Some(&year)), "2024 (year)");
        let instant = st("2024-06-05T14:30:00Z", pb::TimePrecision::Instant);
        assert_eq!(fmt_stated(Some(&instant)), "2024-06-05T14:30:00Z");
        assert_eq!(fmt_stated(None), "-");
    }

    #[test]
    fn enum_names_lose_their_prefix() {
        assert_eq!(
            mode_name(pb::StatementMode::DirectQuote as i32),
            "direct_quote"
        );
        assert_eq!(status_name(pb::EntityStatus::Retracted as i32), "retracted");
        assert_eq!(mode_name(99), "unknown(99)");
    }

    #[test]
    fn wrap_breaks_between_words_and_keeps_long_words() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("abcdefghij x", 4), vec!["abcdefghij", "x"]);
        assert_eq!(wrap("", 4), vec![""]);
        assert_eq!(wrap("one\n\ntwo", 80), vec!["one two"]);
    }

    #[test]
    fn kv_aligns_continuation_lines() {
        let mut out = String::new();
        kv(&mut out, 2, "stance", "x");
        kv(&mut out, 2, "", "y");
        assert_eq!(out, "  stance:       x\n                y\n");
        let mut out = String::new();
        kv_hanging(&mut out, 0, "changed", "2024  ", &"word ".repeat(30));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("changed:      2024  word"));
        assert!(lines[1].starts_with(&format!("{}word", " ".repeat(LABEL + 6))));
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let rows = vec![
            vec!["a".to_string(), "long cell".to_string(), "end".to_string()],
            vec!["bbb".to_string(), "c".to_string(), "x".to_string()],
        ];
        assert_eq!(
            table(&["H1", "H2", "H3"], &rows),
            "H1   H2         H3\na    long cell  end\nbbb  c          x\n"
        );
    }

    #[test]
    fn spans_show_in_context_with_cuts_marked() {
        let view = |before: &str, start, end, after: &str, len| pb::SpanView {
            span: Some(pb::Span {
                source_id: String::new(),
                start,
                end,
                exact: "said".into(),
            }),
            before: before.into(),
            after: after.into(),
            source: Some(pb::SourceView {
                source: None,
                text_length: len,
                origin: None,
            }),
        };
        // The whole text: nothing cut.
        assert_eq!(
            in_context(&view("Lavrov ", 7, 11, " so.", 15)),
            "Lavrov [said] so."
        );
        // Context shorter than the text on both sides.
        assert_eq!(in_context(&view("rov ", 7, 11, " s", 15)), "…rov [said] s…");
    }

    #[test]
    fn documents_are_the_answer_plus_what_was_asked() {
        let answer = pb::GetClaimResponse {
            claim: None,
            stamp: Some(pb::ReadStamp { applied_count: 7 }),
        };
        let doc = document(&answer, json!({"kind": "claim"})).expect("serializes");
        assert_eq!(
            doc,
            json!({"kind": "claim", "claim": null, "stamp": {"applied_count": 7}})
        );
    }
}
