//! `claimsledger.v1.Ledger`: one RPC per command, `SubmitBatch`, and `AppendSession` (batches on one
//! long-lived stream). Each handler only converts; the write path itself is `App::write`.
use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::pb;
use crate::app::{App, AppError, ClientCommand, Shape, WriteContext, WriteOutcome};
use claims_ledger_domain::Command;

/// Metadata key naming the writer until authentication exists. Not verified: say so in provenance.
pub const RECORDED_BY_HEADER: &str = "x-recorded-by";

pub struct LedgerService {
    app: App,
}

impl LedgerService {
    pub fn new(app: App) -> Self {
        LedgerService { app }
    }
}

/// Who is writing: the authenticated identity when tokens are configured; in open mode (loopback,
/// no tokens) the unverified `x-recorded-by` header, "anonymous" when absent.
fn recorded_by<T>(req: &Request<T>) -> String {
    if let Some(identity) = req.extensions().get::<crate::config::Identity>() {
        return identity.name.clone();
    }
    req.metadata()
        .get(RECORDED_BY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .unwrap_or("anonymous")
        .to_string()
}

fn result_pb(w: &WriteOutcome) -> pb::WriteResult {
    pb::WriteResult {
        events: w.outcome.events.iter().map(convert::appended_pb).collect(),
        recorded_at: Some(convert::ts(&w.outcome.recorded_at)),
        deduplicated: w.outcome.deduplicated,
    }
}

impl LedgerService {
    /// Runs one command; returns the entity id and the write result.
    async fn single(
        &self,
        ctx: WriteContext,
        expected: Option<pb::ExpectedRevision>,
        command: Result<Command, AppError>,
    ) -> Result<(String, pb::WriteResult), Status> {
        let command = ClientCommand {
            command: command?,
            expected: convert::expected_revision(expected.as_ref()),
        };
        let w = self.app.write(ctx, vec![command], Shape::Single).await?;
        let id = w.entity_ids.first().cloned().unwrap_or_default();
        Ok((id, result_pb(&w)))
    }
}

fn required<T>(c: Option<T>) -> Result<T, AppError> {
    c.ok_or_else(|| AppError::invalid("command", "is required"))
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn register_party(
        &self,
        req: Request<pb::RegisterPartyRequest>,
    ) -> Result<Response<pb::RegisterPartyResponse>, Status> {
        let ctx = recorded_by(&req);
        let r = req.into_inner();
        let cmd = required(r.command).and_then(|c| convert::register_party(c, "command."));
        let (party_id, result) = self
            .single(with_options(ctx, r.options), r.expected_revision, cmd)
            .await?;
        Ok(Response::new(pb::RegisterPartyResponse {
            party_id,
            result: Some(result),
        }))
    }

    async fn update_party(
        &self,
        req: Request<pb::UpdatePartyRequest>,
    ) -> Result<Response<pb::UpdatePartyResponse>, Status> {
        let ctx = recorded_by(&req);
        let r = req.into_inner();
        let cmd = required(r.command).and_then(|c| convert::update_party(c, "command."));
        let (party_id, result) = self
            .single(with_options(ctx, r.options), r.expected_revision, cmd)
            .await?;
        Ok(Response::new(pb::UpdatePartyResponse {
            party_id,
            result: Some(result),
        }))
    }

    async fn register_source(
        &self,
        req: Request<pb::RegisterSourceRequest>,
    ) -> Result<Response<pb::RegisterSourceResponse>, Status> {
        let ctx = recorded_by(&req);
        let r = req.into_inner();
        let cmd = required(r.command).and_then(|c| convert::register_source(c, "command."));
        let (source_id, result) = self
            .single(with_options(ctx, r.options), r.expected_revision, cmd)
            .await?;
        Ok(Response::new(pb::RegisterSourceResponse {
            source_id,
            result: Some(result),
        }))
    }

    async fn record_statement(
        &self,
        req: Request<pb::RecordStatementRequest>,
    ) -> Result<Response<pb::RecordStatementResponse>, Status> {
        let ctx = recorded_by(&req);
        let r = req.into_inner();
        let cmd = required(r.command).and_then(|c| convert::record_statement(c, "command."));
        let (statement_id, result) = self
            .single(with_options(ctx, r.options), r.expected_revision, cmd)
            .await?;
        Ok(Response::new(pb::RecordStatementResponse {
            statement_id,
            result: Some(result),
        }))
    }

    async fn assert_claim(
        &self,
        req: Request<pb::AssertClaimRequest>,
    ) -> Result<Response<pb::AssertClaimResponse>, Status> {
        let ctx = recorded_by(&req);
        let r = req.into_inner();
        let cmd = required(r.command).map(convert::assert_claim);
        let (claim_id, result) = self
            .single(with_options(ctx, r.options), r.expected_revision, cmd)
            .await?;
        Ok(Response::new(pb::AssertClaimResponse {
            claim_id,
            result: Some(result),
        }))
    }

    async fn review_claim(
        &self,
        req: Request<pb::ReviewClaimRequest>,
    ) -> Result<Response<pb::ReviewClaimResponse>, Status> {
        let ctx = recorded_by(&req);
        let r = req.into_inner();
        let cmd = required(r.command).map(convert::review_claim);
        let (review_id, result) = self
            .single(with_options(ctx, r.options), r.expected_revision, cmd)
            .await?;
        Ok(Response::new(pb::ReviewClaimResponse {
            review_id,
            result: Some(result),
        }))
    }

    async fn issue_correction(
        &self,
        req: Request<pb::IssueCorrectionRequest>,
    ) -> Result<Response<pb::IssueCorrectionResponse>, Status> {
        let ctx = recorded_by(&req);
        let r = req.into_inner();
        let cmd = required(r.command).map(convert::issue_correction);
        let (correction_id, result) = self
            .single(with_options(ctx, r.options), r.expected_revision, cmd)
            .await?;
        Ok(Response::new(pb::IssueCorrectionResponse {
            correction_id,
            result: Some(result),
        }))
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let ctx = recorded_by(&req);
        let r = req.into_inner();
        Ok(Response::new(batch(&self.app, ctx, r, Shape::BATCH).await?))
    }

    type AppendSessionStream =
        Pin<Box<dyn Stream<Item = Result<pb::AppendSessionResponse, Status>> + Send>>;

    async fn append_session(
        &self,
        req: Request<Streaming<pb::AppendSessionRequest>>,
    ) -> Result<Response<Self::AppendSessionStream>, Status> {
        let ctx = recorded_by(&req);
        let app = self.app.clone();
        let ending = self.app.clone();
        // At shutdown the session stops reading appends, finishes the one in hand, and ends with
        // UNAVAILABLE: every append without an answer was not applied, so a client can resend it.
        let requests =
            futures_util::StreamExt::take_until(req.into_inner(), self.app.shutting_down());
        // `then` runs one append at a time, in arrival order: the next is read and decided only once
        // this one is answered, which is what makes later appends see earlier ones.
        let mut received = 0u64;
        let answers = requests.then(move |message| {
            let (app, ctx) = (app.clone(), ctx.clone());
            received += 1;
            let index = received;
            async move {
                // A framing or decoding error ends the session with its status.
                let message = message.map_err(|s| super::status::unreadable_message(s, index))?;
                let arrived = std::time::Instant::now();
                let request_id = message.request_id;
                let result = match message.append {
                    None => Err(AppError::invalid("append", "is required").into()),
                    Some(append) => batch(&app, ctx, append, SESSION_BATCH).await,
                };
                let code = result.as_ref().map_or_else(|s| s.code() as i32, |_| 0);
                app.metrics()
                    .observe_session_append(code, arrived.elapsed());
                Ok(pb::AppendSessionResponse {
                    request_id,
                    result: Some(match result {
                        Ok(accepted) => pb::append_session_response::Result::Accepted(accepted),
                        Err(status) => {
                            pb::append_session_response::Result::Refused(refusal(status))
                        }
                    }),
                })
            }
        });
        let shut_down = tokio_stream::once(()).filter_map(move |()| {
            ending
                .is_shutting_down()
                .then(|| Err(AppError::ShuttingDown.into()))
        });
        Ok(Response::new(Box::pin(answers.chain(shut_down))))
    }
}

/// Where an append session's batch sits in its message, for field paths.
const SESSION_BATCH: Shape = Shape::Batch { at: "append." };

/// Applies a batch of commands atomically; `shape` says where the batch sits in its message.
async fn batch(
    app: &App,
    recorded_by: String,
    r: pb::SubmitBatchRequest,
    shape: Shape,
) -> Result<pb::SubmitBatchResponse, Status> {
    let path = shape.at();
    let mut commands = Vec::with_capacity(r.commands.len());
    for (i, c) in r.commands.into_iter().enumerate() {
        let Some(inner) = c.command else {
            return Err(
                AppError::invalid(format!("{path}commands[{i}]"), "no command is set").into(),
            );
        };
        let prefix = format!(
            "{path}commands[{i}].{}.",
            convert::batch_command_name(&inner)
        );
        commands.push(ClientCommand {
            command: convert::batch_command(inner, &prefix)?,
            expected: convert::expected_revision(c.expected_revision.as_ref()),
        });
    }
    let w = app
        .write(with_options(recorded_by, r.options), commands, shape)
        .await?;
    let results = w
        .entity_ids
        .iter()
        .zip(&w.outcome.events)
        .map(|(id, e)| pb::BatchCommandResult {
            entity_id: id.clone(),
            event: Some(convert::appended_pb(e)),
        })
        .collect();
    Ok(pb::SubmitBatchResponse {
        results,
        result: Some(result_pb(&w)),
    })
}

/// A refused append of a session: the status a unary call would have carried, with its details.
fn refusal(status: Status) -> pb::AppendRefusal {
    use prost::Message as _;
    // The details of a status built by `grpc::status` are an encoded google.rpc.Status.
    let details = tonic_types::Status::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default();
    pb::AppendRefusal {
        code: status.code() as i32,
        message: status.message().to_string(),
        details,
    }
}

fn with_options(recorded_by: String, options: Option<pb::WriteOptions>) -> WriteContext {
    let o = options.unwrap_or_default();
    let opt = |s: String| (!s.is_empty()).then_some(s);
    WriteContext {
        recorded_by,
        idempotency_key: opt(o.idempotency_key),
        correlation_id: opt(o.correlation_id),
        causation_id: opt(o.causation_id),
    }
}
