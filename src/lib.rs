//! The `claims-ledger` command line: `serve` runs the service; `load`, `head` and `tail` are clients
//! of a running server's write and event services, and `positions`, `history` and `provenance` of its
//! query service; `verify` checks and `rebuild` rebuilds the projections of a stopped server's data
//! directory offline. The benchmarks are another binary (`claims-ledger-bench`), outside the product.
pub mod audit_verify;
pub mod backup;
pub mod client;
pub mod connect;
mod query;
mod rebuild;
pub mod serve;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "claims-ledger",
    version,
    about = "Event-sourced claims ledger: who said what, when, where, according to which source"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// fdatasync before every acknowledgement (shared by concurrent writers).
    Fsync,
    /// Acknowledge before the sync; a power loss can lose acknowledged writes not yet written out.
    Relaxed,
}

/// `--server`: a running server's URL, for the commands that talk to one.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerUrl {
    /// The server's URL (`https://` for TLS; see `CLAIMS_LEDGER_CA_CERT`).
    #[arg(
        long = "server",
        env = "CLAIMS_LEDGER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub url: String,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the gRPC service on an embedded sled store.
    Serve(serve::ServeArgs),
    /// Submit a dataset file (claims-ledger/dataset/v1 JSON) through the API; idempotent.
    Load {
        /// The dataset file.
        file: PathBuf,
        #[command(flatten)]
        server: ServerUrl,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow a running server's log: catch up, then print events as they come.
    Tail {
        #[command(flatten)]
        server: ServerUrl,
        /// Where to start: a position, `start` or `end`.
        #[arg(long, default_value = "end")]
        from: String,
        /// Only streams starting with this prefix (repeatable).
        #[arg(long = "stream-prefix")]
        stream_prefixes: Vec<String>,
        /// Only events of this type (repeatable).
        #[arg(long = "type")]
        event_types: Vec<String>,
        /// Print NDJSON (one event per line) instead of readable lines.
        #[arg(long)]
        json: bool,
        /// Stop after this many events (for scripts); 0 follows forever.
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
    /// Print the head of a running server's log (event count and last hash).
    Head {
        #[command(flatten)]
        server: ServerUrl,
        #[arg(long)]
        json: bool,
    },
    /// List a running server's named subscribers, with each one's acknowledged position and lag.
    Subscriptions {
        #[command(flatten)]
        server: ServerUrl,
        #[arg(long)]
        json: bool,
    },
    /// Recompute the hash chain of a data directory (server stopped) and name the first bad position.
    Verify {
        /// Offline: the data directory to check (server stopped).
        #[arg(long, env = "CLAIMS_LEDGER_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Online: audit this running server instead (needs --key).
        #[arg(long)]
        server: Option<String>,
        /// The log's pinned verifier key (`name+keyid+base64`, from `Audit.GetPublicKey` or the
        /// operator). Online mode only.
        #[arg(long, env = "CLAIMS_LEDGER_VERIFIER_KEY")]
        key: Option<String>,
        /// A checkpoint saved earlier: the server's log must extend it. Created on first use.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Also check this event's bytes and inclusion proof against the signed checkpoint.
        #[arg(long)]
        event: Option<u64>,
        /// Save the newly verified checkpoint over the old one.
        #[arg(long)]
        update: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a party's current stance on every topic (or one), with who said it, when and where,
    /// and the quoted source text.
    Positions {
        /// The party's slug, e.g. `russia`.
        #[arg(long)]
        party: String,
        /// Only this topic slug.
        #[arg(long)]
        topic: Option<String>,
        /// Only claims stated by then: RFC 3339, `YYYY-MM-DD` or `YYYY-MM` (start of it, UTC).
        #[arg(long, value_parser = query::parse_time)]
        as_of_stated: Option<DateTime<Utc>>,
        /// Only what the ledger had recorded then: a log position (event count) or a time as above.
        #[arg(long, value_parser = query::parse_as_of_recorded)]
        as_of_recorded: Option<query::AsOfRecorded>,
        #[command(flatten)]
        server: ServerUrl,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print how a party's stance on a topic changed, or without --topic every statement by or for
    /// the party, newest first.
    History {
        /// The party's slug, e.g. `ukraine`.
        #[arg(long)]
        party: String,
        /// The topic slug; without it, statements are listed.
        #[arg(long)]
        topic: Option<String>,
        /// Only what was stated at or after this: RFC 3339, `YYYY-MM-DD` or `YYYY-MM`.
        #[arg(long, value_parser = query::parse_time)]
        since: Option<DateTime<Utc>>,
        #[command(flatten)]
        server: ServerUrl,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Trace a claim or statement (by UUID) to its statement, quoted spans and sources.
    Provenance {
        /// A claim or statement UUID.
        id: String,
        /// Code points of source text to show around each span (0..2000).
        #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u32).range(0..=2000))]
        context: u32,
        #[command(flatten)]
        server: ServerUrl,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Back up a running server's log to an NDJSON file: every event up to the head read at the
    /// start (a consistent prefix while writers write), with the Merkle root of that prefix.
    Export {
        #[command(flatten)]
        server: ServerUrl,
        /// The export file; written beside it under a temporary name, synced, then renamed.
        #[arg(long)]
        out: PathBuf,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restore an export into a new data directory (offline), checking every line; exit code 1
    /// names the first bad line and leaves nothing behind.
    Restore {
        /// The export file.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to create; it must not exist or be empty.
        #[arg(long, env = "CLAIMS_LEDGER_DATA_DIR")]
        data_dir: PathBuf,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the projections of a data directory (server stopped) from the log.
    Rebuild {
        #[arg(long, env = "CLAIMS_LEDGER_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// Accept a log shorter than its durable records knowingly, as `serve --accept-shorter-log`.
        #[arg(long)]
        accept_shorter_log: bool,
    },
    /// Print a running server's checkpoint verifier key, to pin for `verify --server --key`.
    PublicKey {
        #[command(flatten)]
        server: ServerUrl,
    },
}

/// Runs the parsed command; the exit code is 0 on success.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Serve(args) => serve::run(args).await,
        Cmd::Load { file, server, json } => client::load(&file, &server.url, json).await,
        Cmd::PublicKey { server } => audit_verify::public_key(&server.url).await,
        Cmd::Export { server, out, json } => backup::export(&server.url, &out, json).await,
        Cmd::Restore {
            from,
            data_dir,
            json,
        } => backup::restore(&from, &data_dir, json),
        Cmd::Head { server, json } => client::head(&server.url, json).await,
        Cmd::Subscriptions { server, json } => client::subscriptions(&server.url, json).await,
        Cmd::Tail {
            server,
            from,
            stream_prefixes,
            event_types,
            json,
            limit,
        } => {
            client::tail(
                &server.url,
                &from,
                stream_prefixes,
                event_types,
                json,
                limit,
            )
            .await
        }
        Cmd::Verify {
            data_dir,
            server: None,
            json,
            ..
        } => client::verify(&data_dir, json),
        Cmd::Verify {
            server: Some(server),
            key,
            checkpoint,
            event,
            update,
            json,
            ..
        } => {
            let key = key.ok_or_else(|| {
                anyhow::anyhow!("--server needs --key: the verifier key you pinned for this log")
            })?;
            audit_verify::run(audit_verify::AuditArgs {
                server: &server,
                key: &key,
                checkpoint: checkpoint.as_deref(),
                event,
                update,
                json,
            })
            .await
        }
        Cmd::Positions {
            party,
            topic,
            as_of_stated,
            as_of_recorded,
            server,
            json,
        } => {
            query::positions(
                &server.url,
                &party,
                topic.as_deref(),
                as_of_stated,
                as_of_recorded,
                json,
            )
            .await
        }
        Cmd::History {
            party,
            topic,
            since,
            server,
            json,
        } => query::history(&server.url, &party, topic.as_deref(), since, json).await,
        Cmd::Provenance {
            id,
            context,
            server,
            json,
        } => query::provenance(&server.url, &id, context, json).await,
        Cmd::Rebuild {
            data_dir,
            json,
            accept_shorter_log,
        } => rebuild::run(&data_dir, json, accept_shorter_log),
    }
}

impl Cli {
    /// Whether logs should be JSON: `serve --log-format json` (flag, environment or config file).
    pub fn json_logs(&self) -> bool {
        match &self.command {
            Cmd::Serve(args) => {
                let from_file = args.file().ok().and_then(|f| f.log_format);
                args.log_format.clone().or(from_file).as_deref() == Some("json")
            }
            _ => false,
        }
    }
}
