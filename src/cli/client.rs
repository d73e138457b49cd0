//! Client subcommands for people and scripts: `load`, `head`, and the offline `verify`.
use std::path::Path;

use anyhow::Context as _;

use crate::grpc::convert::command_pb;
use crate::grpc::pb;
use crate::log::verify::verify_dir;

async fn connect_ledger(
    server: &str,
) -> anyhow::Result<pb::ledger_client::LedgerClient<tonic::transport::Channel>> {
    pb::ledger_client::LedgerClient::connect(server.to_string())
        .await
        .with_context(|| format!("connecting to {server}"))
}

pub async fn load(file: &Path, server: &str, json: bool) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let dataset = crate::dataset::parse(&text)?;
    let mut client = connect_ledger(server).await?;
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
        let mut req = tonic::Request::new(req);
        req.metadata_mut().insert(
            crate::grpc::RECORDED_BY_HEADER,
            tonic::metadata::MetadataValue::from_static("claims-ledger-load"),
        );
        let resp = client
            .submit_batch(req)
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "command {i} ({}): {}: {}",
                    entry.idempotency_key,
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
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
    let mut client = pb::events_client::EventsClient::connect(server.to_string())
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let h = client
        .get_head(pb::GetHeadRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
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

pub fn verify(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let result = verify_dir(data_dir).with_context(|| {
        format!(
            "opening {} (is a server still running on it?)",
            data_dir.display()
        )
    })?;
    match result {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "events": report.events, "streams": report.streams, "head_hash": hex::encode(report.head_hash)})
                );
            } else {
                println!(
                    "ok: {} events in {} streams, head hash {}",
                    report.events,
                    report.streams,
                    hex::encode(report.head_hash)
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
