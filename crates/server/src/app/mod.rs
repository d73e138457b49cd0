//! Use cases: the write path (idempotency, validate, decide, append) and the read access the transport
//! needs. Owns the write model ([`State`]) and keeps it in step with the log through a commit observer
//! that runs on the log's syncer thread, in log order, before any append is acknowledged — so a client
//! that got an ack can immediately refer to what it wrote. Also runs the projector just after the
//! acknowledgements (`projector`), answers queries from the projections (`query`), and signs
//! checkpoints and serves proofs (`audit`).
//!
//! At a graceful shutdown the write model is saved as a snapshot (`state.snap`, see
//! `log::snapshot`) beside the log's own stream index snapshot; an open then folds in only the
//! events after it, and falls back to the whole log when the snapshot does not match the log.
//!
//! No tonic or prost here; the transport converts to and from these types.
mod audit;
mod error;
mod projector;
pub mod query;
mod subscribe;
mod write;

use std::path::Path;
use std::sync::{Arc, RwLock};

pub use audit::{Inclusion, Signed};
pub use error::AppError;
pub use subscribe::{
    valid_subscription_name, Start, SubscribeOptions, SubscriptionItem, SubscriptionState,
};
pub use write::{ClientCommand, Shape, WriteContext, WriteOutcome};

use crate::projection::Projections;
use claims_ledger_core::checkpoint::{keys, Signer};
use claims_ledger_domain::event::DecodeError;
use claims_ledger_domain::{Event, State};
use claims_ledger_log::{CommitObserver, EventLog, LogError, LogOptions, RecordedEvent};

/// The application: the log, the write model folded from it, the projections that follow it, and
/// the key that signs its checkpoints.
#[derive(Clone)]
pub struct App {
    log: EventLog,
    state: Arc<RwLock<Folded>>,
    /// Set once when the server shuts down; subscriptions end on it.
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    /// The latest durable events, shared by live subscribers instead of each rereading the log.
    recent: Arc<RwLock<subscribe::Recent>>,
    /// The read models. A store being rebuilt at open is empty until the projector fills it; the
    /// server's `Query` health says NOT_SERVING meanwhile (see `watch_projection`).
    projections: Arc<Projections>,
    /// The projector task, awaited by [`App::finish`].
    projector: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Tells the projector that a query waits for it, so it applies now instead of lingering.
    projection_wanted: Arc<tokio::sync::Notify>,
    /// Signs checkpoints of the log's Merkle tree.
    signer: Arc<Signer>,
    /// Events the write model took from its snapshot at open (0: folded from the start).
    state_from_snapshot: u64,
    /// This server's metrics registry, which its log reports to.
    metrics: crate::metrics::Metrics,
}

/// The write model and the number of events folded into it (always a prefix of the log).
#[derive(Debug, Default)]
struct Folded {
    state: State,
    count: u64,
}

/// File name of the write model snapshot in the data directory.
pub const STATE_SNAPSHOT: &str = "state.snap";
/// Changes whenever [`State::to_bytes`] does; a snapshot of another kind is not used (v1 was JSON).
pub const STATE_SNAPSHOT_KIND: &str = "write-model/v2";

/// The origin (and key name) of a log whose operator configured none.
pub const DEFAULT_ORIGIN: &str = "claims-ledger.local/log";

/// Where the signing key is kept unless configured otherwise.
pub fn signing_key_path(dir: &Path) -> std::path::PathBuf {
    dir.join("signing.key")
}

/// How to open an [`App`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub log: LogOptions,
    /// The checkpoint signing key; `None` loads `signing.key` in the data directory, generating it
    /// (mode 0600) on first start, named [`DEFAULT_ORIGIN`].
    pub signer: Option<Signer>,
    /// Save snapshots right after an open that folded at least this many events past them (as after
    /// a crash), so that another crash does not fold them again; `None`: [`RESNAPSHOT_AFTER`].
    pub resnapshot_after: Option<u64>,
}

/// Events folded at open past the snapshots beyond which the open saves new ones before serving.
pub const RESNAPSHOT_AFTER: u64 = 100_000;

/// Where the read models live inside a data directory.
pub fn projections_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("projections")
}

/// Folds the events at positions `[from, end)` of `log` into `state`.
fn fold(log: &EventLog, mut state: State, from: u64, end: u64) -> Result<State, AppError> {
    let mut pos = from;
    while pos < end {
        let chunk = log.read_all(pos, false, 1024)?;
        let Some(last) = chunk.last() else { break };
        pos = last.position + 1;
        // The log's own events (an accepted shorter log) change no write model.
        for rec in chunk.iter().filter(|r| r.position < end && !r.is_system()) {
            let event = decode_event(rec).map_err(|e| {
                AppError::from(LogError::Corrupt {
                    position: rec.position,
                    reason: e.to_string(),
                })
            })?;
            state.apply(&event);
        }
    }
    Ok(state)
}

/// Checks the write model snapshot in `dir` (server stopped) against the log, which `verify` cannot
/// do without the domain: `Ok(None)` when there is none the server would use, `Ok(Some(n))` when it
/// equals the first `n` events folded, `Err(why)` when the server would start from a write model
/// that the log does not give.
pub fn verify_state_snapshot(dir: &Path) -> Result<Result<Option<u64>, String>, AppError> {
    // An offline check: the open must write nothing to the directory it checks.
    let log = EventLog::open_read_only(dir)?;
    let Ok(Some(snap)) = log.matching_snapshot(STATE_SNAPSHOT, STATE_SNAPSHOT_KIND) else {
        return Ok(Ok(None));
    };
    // An undecodable one is ignored at open, like one that does not match.
    let Ok(stored) = State::from_bytes(&snap.body) else {
        return Ok(Ok(None));
    };
    if fold(&log, State::default(), 0, snap.count)? == stored {
        Ok(Ok(Some(snap.count)))
    } else {
        Ok(Err(format!(
            "the write model snapshot ({STATE_SNAPSHOT}, {} events), which the server would start \
             from, is not what the log's first {} events give; delete it",
            snap.count, snap.count
        )))
    }
}

/// The projections' checkpoint as a record of the log's length, for the log's open (see
/// `claims_ledger_log::evidence`).
pub fn projection_evidence(projections: &Projections) -> Option<claims_ledger_log::Evidence> {
    let applied = projections.applied();
    (applied > 0).then(|| claims_ledger_log::Evidence {
        source: "the projection checkpoint (projections/)".into(),
        count: applied,
    })
}

/// Reads one of the log's own events (see `RecordedEvent::is_system`): so far only the record of
/// an accepted shorter log.
pub fn decode_system_event(rec: &RecordedEvent) -> Result<claims_ledger_log::ShorterLog, String> {
    use claims_ledger_log::evidence::SHORTER_LOG_ACCEPTED;
    if rec.event_type != SHORTER_LOG_ACCEPTED || rec.schema_version != 1 {
        return Err(format!(
            "a log event of unknown type {:?} (schema version {})",
            rec.event_type, rec.schema_version
        ));
    }
    serde_json::from_str(rec.payload.get()).map_err(|e| e.to_string())
}

/// Decodes a stored record's payload into a domain event (not for the log's own events, see
/// `RecordedEvent::is_system`).
pub fn decode_event(rec: &RecordedEvent) -> Result<Event, DecodeError> {
    Event::from_payload(
        &rec.event_type,
        rec.schema_version,
        rec.payload.get().as_bytes(),
    )
}

struct StateObserver {
    state: Arc<RwLock<Folded>>,
    recent: Arc<RwLock<subscribe::Recent>>,
}

impl CommitObserver for StateObserver {
    fn committed(&self, events: &[Arc<RecordedEvent>]) {
        self.recent
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(events);
        let mut folded = self.state.write().unwrap_or_else(|p| p.into_inner());
        for rec in events {
            folded.count = rec.position + 1;
            // The log's own events (an accepted shorter log) change no write model.
            if rec.is_system() {
                continue;
            }
            match decode_event(rec) {
                Ok(e) => folded.state.apply(&e),
                // Every event was encoded from a domain event a moment ago; this cannot happen
                // unless the payload encoding is broken, which the tests would show.
                Err(err) => {
                    tracing::error!(position = rec.position, error = %err, "undecodable event")
                }
            }
        }
    }
}

impl App {
    /// Opens the log in `dir`, folds it into the write model, and opens the projections. Inside a
    /// tokio runtime the projector starts at once and catches up from the projections' checkpoint.
    pub fn open(dir: &Path, options: LogOptions) -> Result<App, AppError> {
        App::open_options(
            dir,
            OpenOptions {
                log: options,
                ..OpenOptions::default()
            },
        )
    }

    /// Opens with every option spelled out.
    pub fn open_options(dir: &Path, opts: OpenOptions) -> Result<App, AppError> {
        let OpenOptions {
            log: mut options,
            signer,
            resnapshot_after,
        } = opts;
        let state = Arc::new(RwLock::new(Folded::default()));
        let recent = Arc::new(RwLock::new(subscribe::Recent::default()));
        let observer = Arc::new(StateObserver {
            state: state.clone(),
            recent: recent.clone(),
        });
        // The log reports to this server's own registry, so servers in one process stay apart.
        let metrics = crate::metrics::Metrics::new();
        options.metrics = Arc::new(metrics.clone());
        // The projections' checkpoint records how far the log was durable once: opened first, it
        // is compared at the log's open with the log's own records (a shorter log is refused).
        let (projections, version_ok) = Projections::open_unchecked(&projections_dir(dir))?;
        options.evidence.extend(projection_evidence(&projections));
        let log = EventLog::open(dir, options, Some(observer))?;
        // A log accepted shorter makes the checkpoint stale: they start over, durably.
        projections.fit_to_log(&log, version_ok)?;
        let signer = match signer {
            Some(s) => s,
            None => keys::load_or_generate(&signing_key_path(dir), DEFAULT_ORIGIN)
                .map_err(|e| AppError::Internal(format!("signing key: {e}")))?,
        };
        let projections = Arc::new(projections);
        let app = App {
            log,
            state,
            shutdown: Arc::new(tokio::sync::watch::channel(false).0),
            recent,
            projections,
            projector: Arc::default(),
            projection_wanted: Arc::default(),
            signer: Arc::new(signer),
            state_from_snapshot: 0,
            metrics,
        };
        let mut app = app;
        app.state_from_snapshot = app.replay()?;
        // Folding this much again after another crash would cost as much again: save what it made.
        let end = app.log.durable_count();
        let folded = end - app.state_from_snapshot.min(app.log.index_from_snapshot());
        if folded > 0 && folded >= resnapshot_after.unwrap_or(RESNAPSHOT_AFTER) {
            let started = std::time::Instant::now();
            match app.save_snapshots() {
                Ok(events) => tracing::info!(
                    events,
                    folded,
                    took_ms = started.elapsed().as_millis() as u64,
                    "snapshots saved after a long replay"
                ),
                Err(e) => tracing::error!(error = %e, "saving snapshots after the replay"),
            }
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            app.spawn_projector();
        }
        Ok(app)
    }

    /// Folds every durable event into a fresh write model, starting from the snapshot when it
    /// matches the log. Runs before the server accepts writes.
    fn replay(&self) -> Result<u64, AppError> {
        let end = self.log.durable_count();
        let (snapshot, from) = self.state_snapshot();
        let fresh = fold(&self.log, snapshot, from, end)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Folded {
            state: fresh,
            count: end,
        };
        tracing::info!(
            events = end,
            from_snapshot = from,
            "write model rebuilt from the log"
        );
        Ok(from)
    }

    /// This server's metrics (the log's, the projector's, subscriptions' and the gRPC layer's).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// How many events the open took from snapshots instead of the log: (stream index, write model).
    pub fn opened_from_snapshots(&self) -> (u64, u64) {
        (self.log.index_from_snapshot(), self.state_from_snapshot)
    }

    /// The write model of the snapshot in the data directory and the event count it covers, if it
    /// matches the durable log; an empty model and 0 otherwise.
    fn state_snapshot(&self) -> (State, u64) {
        let usable = || -> Result<Option<(State, u64)>, String> {
            let Some(snap) = self
                .log
                .matching_snapshot(STATE_SNAPSHOT, STATE_SNAPSHOT_KIND)?
            else {
                return Ok(None);
            };
            let state = State::from_bytes(&snap.body).map_err(|e| format!("undecodable: {e}"))?;
            Ok(Some((state, snap.count)))
        };
        match usable() {
            Ok(Some(found)) => found,
            Ok(None) => (State::default(), 0),
            Err(reason) => {
                tracing::warn!(%reason, "write model snapshot ignored; folding the whole log");
                (State::default(), 0)
            }
        }
    }

    /// Writes the stream index and write model snapshots (see the module documentation). Returns the
    /// event count the write model snapshot covers.
    pub fn save_snapshots(&self) -> Result<u64, AppError> {
        self.log.save_index_snapshot()?;
        let (count, body) = {
            let folded = self.state.read().unwrap_or_else(|p| p.into_inner());
            (folded.count, folded.state.to_bytes())
        };
        self.log
            .save_snapshot(STATE_SNAPSHOT, STATE_SNAPSHOT_KIND, count, body)?;
        Ok(count)
    }

    /// Resolves once the server has begun to shut down (at once if it has). Long-lived calls end on it.
    pub fn shutting_down(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }

    /// Whether the server has begun to shut down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Ends every subscription (with `AppError::ShuttingDown`) so that a graceful shutdown can finish.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Ends subscriptions, waits for the projector to stop, brings the projections to the head and
    /// flushes them, and saves the snapshots, so that once every `App` clone is dropped the data
    /// directory is closed and a restart has nothing to catch up or replay.
    pub async fn finish(&self) {
        self.begin_shutdown();
        let handle = self
            .projector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        // Appends that drained after the projector stopped: apply them too, so that the next start
        // finds projections at the head and has nothing to recover.
        let (p, log) = (self.projections.clone(), self.log.clone());
        let done = tokio::task::spawn_blocking(move || {
            p.catch_up(&log)?;
            p.flush()
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "final projection catch-up"),
            Err(e) => tracing::error!(error = %e, "final projection catch-up task"),
        }
        // So that the next start folds in only what comes after; without them it replays it all.
        let app = self.clone();
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || app.save_snapshots()).await {
            Ok(Ok(events)) => tracing::info!(
                events,
                took_ms = started.elapsed().as_millis() as u64,
                "snapshots saved"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "saving snapshots"),
            Err(e) => tracing::error!(error = %e, "saving snapshots task"),
        }
    }

    /// Closes the log now, whatever handles remain (in tasks of connections that outlived the
    /// drain, say): sled is made durable and the write-ahead log emptied, so the data directory
    /// needs no replay. Writes after it are refused; call it last, on every way out.
    pub async fn close(&self) {
        let log = self.log.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || log.close()).await {
            tracing::error!(error = %e, "closing the log");
        }
    }

    /// A receiver of the projections' applied count: queries are served once it reaches the log
    /// as it was at start (projections rebuilt at open begin at 0).
    pub fn watch_projection(&self) -> tokio::sync::watch::Receiver<u64> {
        self.projections.watch_applied()
    }

    /// The event log, for reads.
    pub fn log(&self) -> &EventLog {
        &self.log
    }
}

/// What loading a dataset did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub written: usize,
    pub already_present: usize,
}

impl App {
    /// Applies a dataset in order, one idempotent write per command.
    pub async fn load_dataset(
        &self,
        dataset: &claims_ledger_domain::dataset::Dataset,
        recorded_by: &str,
    ) -> Result<LoadReport, AppError> {
        let mut report = LoadReport::default();
        for entry in &dataset.commands {
            let ctx = WriteContext {
                recorded_by: recorded_by.to_string(),
                idempotency_key: Some(entry.idempotency_key.clone()),
                correlation_id: Some(format!("dataset:{}", dataset.name)),
                causation_id: None,
            };
            let cmd = ClientCommand {
                command: entry.command.clone(),
                expected: claims_ledger_log::ExpectedRevision::Any,
            };
            let w = self.write(ctx, vec![cmd], Shape::Single).await?;
            if w.outcome.deduplicated {
                report.already_present += 1;
            } else {
                report.written += 1;
            }
        }
        Ok(report)
    }
}
