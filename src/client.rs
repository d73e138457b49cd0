//! Client subcommands for people and scripts: `load`, `head`, `subscriptions`, `tail`, and the
//! offline `verify`. The network side goes through the client library: `load` writes under the
//! dataset's idempotency keys with its safe retries, and `tail` follows with its resumable
//! subscription.
use std::path::Path;

use anyhow::Context as _;

use super::connect::{call_error, connection};
use claims_ledger_client::{pb, Item};
use claims_ledger_log::verify::verify_dir;
use claims_ledger_server::grpc::convert::command_pb;

pub async fn load(file: &Path, server: &str, json: bool) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let dataset = claims_ledger_domain::dataset::parse(&text)?;
    let ledger = connection(server)
        .await?
        .ledger()
        .recorded_by("claims-ledger-load")?;
    let (mut written, mut present) = (0usize, 0usize);
    for (i, entry) in dataset.commands.iter().enumerate() {
        let req = pb::SubmitBatchRequest {
            options: Some(pb::WriteOptions {
                idempotency_key: entry.idempotency_key.clone(),
                correlation_id: format!("dataset:{}", dataset.name),
                causation_id: String::new(),
            }),
            commands: vec![pb::BatchCommand {
                expected_revision: None,
                command: Some(command_pb(&entry.command)),
            }],
        };
        let resp = ledger
            .submit_batch(req)
            .await
            .map_err(|e| match e.status() {
                Some(s) => anyhow::anyhow!(
                    "command {i} ({}): {}: {}",
                    entry.idempotency_key,
                    s.code(),
                    s.message()
                ),
                None => anyhow::anyhow!("command {i} ({}): {e}", entry.idempotency_key),
            })?
            .response;
        if resp.result.is_some_and(|r| r.deduplicated) {
            present += 1;
        } else {
            written += 1;
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"dataset": dataset.name, "commands": dataset.commands.len(), "written": written, "already_present": present})
        );
    } else {
        println!(
            "dataset {}: {} commands, {written} written, {present} already present",
            dataset.name,
            dataset.commands.len()
        );
    }
    Ok(0)
}

pub async fn head(server: &str, json: bool) -> anyhow::Result<i32> {
    let h = connection(server)
        .await?
        .events()
        .get_head()
        .await
        .map_err(call_error)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"event_count": h.event_count, "position": h.position, "hash": h.hash})
        );
    } else {
        println!(
            "events: {}\nlast position: {}\nhead hash: {}",
            h.event_count, h.position, h.hash
        );
    }
    Ok(0)
}

/// Every named subscriber, a page of `ListSubscriptions` at a time: one line (or JSON document)
/// each, in name order, then a summary line.
pub async fn subscriptions(server: &str, json: bool) -> anyhow::Result<i32> {
    let events = connection(server).await?.events();
    let mut token = String::new();
    let (mut count, mut worst) = (0u64, 0u64);
    if !json {
        println!(
            "{:<40} {:>14} {:>12}",
            "subscription", "acknowledged", "lag"
        );
    }
    loop {
        let page = events
            .list_subscriptions(pb::ListSubscriptionsRequest {
                page_size: 1000,
                page_token: token,
            })
            .await
            .map_err(call_error)?;
        for s in &page.subscriptions {
            count += 1;
            worst = worst.max(s.lag);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"subscription": s.subscription_name, "acknowledged_position": s.acknowledged_position, "lag": s.lag, "event_count": page.event_count})
                );
            } else {
                println!(
                    "{:<40} {:>14} {:>12}",
                    s.subscription_name, s.acknowledged_position, s.lag
                );
            }
        }
        if page.next_page_token.is_empty() {
            if !json {
                println!("{count} named subscriber(s); the furthest behind lags {worst} event(s)");
            }
            return Ok(0);
        }
        token = page.next_page_token;
    }
}

pub fn verify(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let result = match verify_dir(data_dir) {
        // Records of a longer log: the log fails, at the position where it ends.
        Err(claims_ledger_log::LogError::ShorterLog(s)) => {
            Ok(Err(claims_ledger_log::verify::Mismatch {
                position: s.recovered,
                reason: s.to_string(),
            }))
        }
        other => other,
    }
    .with_context(|| {
        format!(
            "opening {} (is a server still running on it?)",
            data_dir.display()
        )
    })?;
    // The log verified: the write model snapshot is checked against it (the open waits for the
    // lock the verification's handle is still releasing).
    let result = match result {
        Ok(report) => match claims_ledger_server::app::verify_state_snapshot(data_dir)
            .with_context(|| format!("opening {}", data_dir.display()))?
        {
            Ok(state) => Ok((report, state)),
            Err(reason) => Err(claims_ledger_log::verify::Mismatch {
                position: report.events,
                reason,
            }),
        },
        Err(m) => Err(m),
    };
    match result {
        Ok((report, state_snapshot)) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "events": report.events, "streams": report.streams, "head_hash": hex::encode(report.head_hash), "merkle_root": report.merkle_root.map(hex::encode), "idempotency_marked": report.idempotency_marked, "idempotency_unmarked": report.idempotency_unmarked, "index_snapshot_events": report.index_snapshot, "state_snapshot_events": state_snapshot})
                );
            } else {
                println!(
                    "ok: {} events in {} streams, head hash {}, Merkle root {}\nidempotency records: {} match their appends, {} older ones match the events they name\nstream index snapshot: {}\nwrite model snapshot: {}",
                    report.events,
                    report.streams,
                    hex::encode(report.head_hash),
                    report
                        .merkle_root
                        .map_or("(no tree kept)".to_string(), hex::encode),
                    report.idempotency_marked,
                    report.idempotency_unmarked,
                    snapshot_line(report.index_snapshot),
                    snapshot_line(state_snapshot)
                );
            }
            Ok(0)
        }
        Err(m) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "first_bad_position": m.position, "reason": m.reason})
                );
            } else {
                println!("FAILED at position {}: {}", m.position, m.reason);
            }
            Ok(1)
        }
    }
}

/// What `verify` says of a snapshot: the events it covers, checked, if the server would use it.
fn snapshot_line(covered: Option<u64>) -> String {
    covered.map_or("none the server would use".to_string(), |n| {
        format!("matches the log's first {n} events")
    })
}

/// One readable line per event: position, time, stream@revision, type, a short summary.
fn event_line(e: &pb::EventEnvelope) -> String {
    use pb::event_payload::Kind;
    let summary = match e.payload.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::PartyRegistered(p)) | Some(Kind::PartyUpdated(p)) => p.name.clone(),
        Some(Kind::SourceRegistered(s)) => format!("{} — {}", s.publisher, s.title),
        Some(Kind::StatementRecorded(s)) => {
            format!("{} {}: {}", s.speaker_id, s.attribution_verb, s.content)
        }
        Some(Kind::ClaimAsserted(c)) => format!("{} on {}: {}", c.party_id, c.topic, c.stance),
        Some(Kind::ClaimReviewed(r)) => format!(
            "{}: {}",
            r.reviewer,
            r.rating.as_ref().map(|x| x.label.as_str()).unwrap_or("")
        ),
        Some(Kind::CorrectionIssued(c)) => format!(
            "{} {}: {}",
            c.target_id,
            pb::CorrectionKind::try_from(c.kind)
                .map(|k| k.as_str_name())
                .unwrap_or("?"),
            c.reason
        ),
        Some(Kind::ShorterLogAccepted(s)) => format!(
            "an operator accepted a log of {} events where records showed {}",
            s.recovered, s.expected
        ),
        None => String::new(),
    };
    let at = e
        .recorded_at
        .as_ref()
        .and_then(claims_ledger_client::time::from_timestamp)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    format!(
        "{:>8}  {at}  {}@{}  {}  {summary}",
        e.position, e.stream, e.stream_revision, e.event_type
    )
}

/// The envelope as one JSON object (payload as the stored JSON), for NDJSON output.
fn event_json(e: &pb::EventEnvelope) -> serde_json::Value {
    let stored: serde_json::Value =
        serde_json::from_slice(&e.stored_bytes).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "position": e.position, "event_id": e.event_id, "stream": e.stream,
        "stream_revision": e.stream_revision, "event_type": e.event_type,
        "schema_version": e.schema_version, "recorded_by": e.recorded_by,
        "recorded_at": stored.get("recorded_at"), "correlation_id": e.correlation_id,
        "causation_id": e.causation_id, "idempotency_key": e.idempotency_key,
        "prev_hash": e.prev_hash, "hash": e.hash, "payload": stored.get("payload"),
    })
}

pub async fn tail(
    server: &str,
    from: &str,
    stream_prefixes: Vec<String>,
    event_types: Vec<String>,
    json: bool,
    limit: u64,
) -> anyhow::Result<i32> {
    let (from_position, from_end) = match from {
        "start" => (0, false),
        "end" => (0, true),
        p => (
            p.parse::<u64>()
                .with_context(|| format!("--from takes a position, start or end, not {p:?}"))?,
            false,
        ),
    };
    // The library's subscription: `--from end` is fixed to a position before the first event, and
    // a dropped connection is resumed from the last event printed, without a gap or a repeat.
    let mut sub = connection(server)
        .await?
        .events()
        .subscribe(pb::SubscribeRequest {
            from_position,
            from_end,
            stream_prefixes,
            event_types,
            ..Default::default()
        })
        .await
        .map_err(call_error)?;
    let mut seen = 0u64;
    loop {
        if let Item::Event(e) = sub.next().await.map_err(call_error)? {
            if json {
                println!("{}", event_json(&e));
            } else {
                println!("{}", event_line(&e));
            }
            seen += 1;
            if limit > 0 && seen >= limit {
                return Ok(0);
            }
        }
    }
}
