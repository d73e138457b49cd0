//! The projector: one task that keeps the projections in step with the log, just after the append
//! path rather than in it. Appends are acknowledged after their fsync without waiting for read
//! models, so projections never add to append latency; queries that must see a write pass its
//! position as `min_position` and wait for the projector. With only a few events pending it lingers
//! up to `LINGER` to apply more at once; a query waiting for a position cuts that short.
//!
//! It takes events from the in-memory tail the subscriptions share when it holds them, else from the
//! log, and applies them in atomic batches on a blocking thread (sled is synchronous).
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{App, AppError};

/// Longest the projector waits for more events when only a few are pending (see `spawn_projector`).
const LINGER: Duration = Duration::from_millis(10);
/// Pending events worth applying at once.
const LINGER_BELOW: u64 = 64;
use crate::projection::{Projections, RebuildReport, BATCH};
use claims_ledger_log::EventLog;

/// What the projections report about themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub applied: u64,
    pub log_count: u64,
    pub generation: u64,
    pub rebuilding: bool,
}

/// A finished rebuild.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebuilt {
    /// Events replayed into the new generation.
    pub events: u64,
    /// The generation now serving.
    pub generation: u64,
    pub took: Duration,
}

impl App {
    /// Starts the projector task (idempotent only in effect: call it once per App).
    pub(super) fn spawn_projector(&self) {
        let projections = self.projections.clone();
        let app = self.clone();
        let slot = self.projector.clone();
        let handle = tokio::spawn(async move {
            let mut durable = app.log.watch_durable();
            let mut shutdown = app.shutdown.subscribe();
            loop {
                let target = *durable.borrow_and_update();
                let applied = projections.applied();
                // After every batch and every commit: the projection lag is computed from it.
                app.metrics.set_projection_applied(applied);
                if applied < target {
                    // A few events are worth a short wait for more: every batch costs sled two
                    // synchronous writes of its IO buffer, whatever its size. A query waiting for
                    // a position cuts the wait short.
                    if target - applied < LINGER_BELOW && !*shutdown.borrow() {
                        tokio::select! {
                            _ = tokio::time::sleep(LINGER) => {}
                            _ = app.projection_wanted.notified() => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                    let step_app = app.clone();
                    let p = projections.clone();
                    let res = tokio::task::spawn_blocking(move || step_app.project_step(&p)).await;
                    match res {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => {
                            // Retrying is right for transient storage errors; a corrupt log would
                            // also stop `verify`, and the lag shows in the projection status.
                            tracing::error!(error = %e, "projection failed; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "projector panicked");
                            return;
                        }
                    }
                }
                if *shutdown.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    r = durable.changed() => if r.is_err() { break },
                    _ = shutdown.changed() => {}
                }
            }
            if let Err(e) = projections.flush() {
                tracing::error!(error = %e, "flushing projections at shutdown");
            }
        });
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// Applies one batch of events the projections have not seen.
    fn project_step(&self, p: &Projections) -> Result<(), AppError> {
        let from = p.applied();
        let cached = self
            .recent
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .read(from, BATCH);
        match cached {
            Some(events) => p.apply(&events)?,
            None => {
                let events = self.log.read_all(from, false, BATCH)?;
                p.apply(&events)?
            }
        }
        Ok(())
    }

    /// Where the projections are.
    pub fn projection_status(&self) -> ProjectionStatus {
        let p = &self.projections;
        ProjectionStatus {
            applied: p.applied(),
            log_count: self.log.durable_count(),
            generation: p.generation(),
            rebuilding: p.rebuild_running(),
        }
    }

    /// Rebuilds the projections from position 0 into a fresh generation and switches to it.
    pub async fn rebuild_projections(&self) -> Result<Rebuilt, AppError> {
        let p = self.projections.clone();
        let log: EventLog = self.log.clone();
        let started = Instant::now();
        let report = tokio::task::spawn_blocking(move || rebuild_with_log(&p, &log))
            .await
            .map_err(|e| AppError::Internal(format!("rebuild task: {e}")))??;
        tracing::info!(
            events = report.events,
            generation = report.generation,
            "projections rebuilt"
        );
        Ok(Rebuilt {
            events: report.events,
            generation: report.generation,
            took: started.elapsed(),
        })
    }
}

fn rebuild_with_log(p: &Arc<Projections>, log: &EventLog) -> Result<RebuildReport, AppError> {
    Ok(p.rebuild(log, &mut |_| {})?)
}
