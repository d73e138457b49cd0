//! The write path, shared by single commands and batches: check the request envelope, answer a
//! repeated idempotency key from the log, assign missing ids, decide every command against the write
//! model (later commands of a batch see earlier ones), then append all events atomically with the
//! stream expectations that make the decision safe under concurrency.
use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{decode_event, App, AppError};
use claims_ledger_domain::limits::MAX_BATCH;
use claims_ledger_domain::{
    decide, Command, Context, DomainError, FieldViolation, Overlay, StreamExpectation,
};
use claims_ledger_log::{
    AppendOutcome, AppendRequest, ExpectedRevision, Idempotency, LogError, NewEvent,
};

/// Who writes, and the options every write carries.
#[derive(Debug, Clone, Default)]
pub struct WriteContext {
    /// Identity recorded in every event's envelope.
    pub recorded_by: String,
    pub idempotency_key: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
}

/// A command with the revision the client expects its stream at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientCommand {
    pub command: Command,
    pub expected: ExpectedRevision,
}

/// The result of a write: the entity id of each command, in order, and where its event landed.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub entity_ids: Vec<String>,
    pub outcome: AppendOutcome,
}

/// What a stream must look like for an append to go ahead, and who asked for it (a client's own
/// expectation fails as FAILED_PRECONDITION; the server's "must not exist yet" as ALREADY_EXISTS).
struct Expectation {
    stream: String,
    expected: ExpectedRevision,
    from_client: bool,
}

/// Room for a record's envelope around its payload (ids, stream, recorder, correlation and
/// causation ids, hashes, times, key names), an upper bound given their own limits.
const ENVELOPE_ALLOWANCE: usize = 1024;

/// Where field paths of a command start: `command.` for single RPCs, `<at>commands[i].<kind>.` in
/// batches, where `at` is the batch's place in its message (`append.` in an append session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Single,
    Batch { at: &'static str },
}

impl Shape {
    /// A batch that is the whole request, as in `SubmitBatch`.
    pub const BATCH: Shape = Shape::Batch { at: "" };

    /// Where the request's own fields (`options`, `commands`) start.
    pub fn at(self) -> &'static str {
        match self {
            Shape::Single => "",
            Shape::Batch { at } => at,
        }
    }
}

const MAX_OPTION_LEN: usize = 128;

fn check_option(v: &mut Vec<FieldViolation>, field: &str, value: &Option<String>) {
    if let Some(s) = value {
        if s.is_empty() || s.len() > MAX_OPTION_LEN || !s.bytes().all(|b| (0x21..0x7f).contains(&b))
        {
            v.push(FieldViolation {
                field: field.to_string(),
                description: format!(
                    "must be 1..{MAX_OPTION_LEN} printable ASCII characters without spaces"
                ),
            });
        }
    }
}

impl App {
    /// Applies one command, or a batch of commands atomically.
    pub async fn write(
        &self,
        ctx: WriteContext,
        commands: Vec<ClientCommand>,
        shape: Shape,
    ) -> Result<WriteOutcome, AppError> {
        let mut violations = Vec::new();
        let at = shape.at();
        for (name, value) in [
            ("idempotency_key", &ctx.idempotency_key),
            ("correlation_id", &ctx.correlation_id),
            ("causation_id", &ctx.causation_id),
        ] {
            check_option(&mut violations, &format!("{at}options.{name}"), value);
        }
        if commands.is_empty() || commands.len() > MAX_BATCH {
            violations.push(FieldViolation {
                field: format!("{at}commands"),
                description: format!("must hold 1..{MAX_BATCH} commands, got {}", commands.len()),
            });
        }
        if !violations.is_empty() {
            return Err(AppError::Invalid(violations));
        }

        let mut commands = commands;
        for c in &mut commands {
            c.command.normalize();
        }
        let idempotency = ctx.idempotency_key.as_ref().map(|key| Idempotency {
            key: key.clone(),
            content_hash: content_hash(&commands),
        });
        if let Some(idem) = &idempotency {
            if let Some(outcome) = self.log.idempotent_result(idem).await? {
                let entity_ids = self.entity_ids_of(&outcome)?;
                return Ok(WriteOutcome {
                    entity_ids,
                    outcome,
                });
            }
        }

        for c in &mut commands {
            if let Some(slot) = c.command.missing_generated_id() {
                *slot = Some(Uuid::now_v7().to_string());
            }
        }
        let (events, expectations) = self.decide_all(&commands, shape)?;
        let entity_ids = events.iter().map(|e| e.entity_id()).collect();
        let new_events: Vec<NewEvent> = events
            .iter()
            .map(|e| NewEvent {
                event_id: Uuid::now_v7(),
                stream: e.stream(),
                event_type: e.event_type().to_string(),
                schema_version: claims_ledger_domain::event::SCHEMA_VERSION,
                payload: e.payload_raw(),
            })
            .collect();
        // The log refuses an over-large record too, but cannot say which command made it; one event
        // per command, so the index names it here.
        for (i, e) in new_events.iter().enumerate() {
            let size = e.payload.get().len() + ENVELOPE_ALLOWANCE;
            if size > claims_ledger_log::MAX_RECORD_BYTES {
                let field = match shape {
                    Shape::Single => "command".to_string(),
                    Shape::Batch { at } => format!("{at}commands[{i}]"),
                };
                return Err(AppError::invalid(
                    field,
                    format!(
                        "the event would be about {size} bytes, at most {} allowed; send less text",
                        claims_ledger_log::MAX_RECORD_BYTES
                    ),
                ));
            }
        }
        let request = AppendRequest {
            events: new_events,
            expectations: expectations
                .iter()
                .map(|e| (e.stream.clone(), e.expected))
                .collect(),
            idempotency,
            recorded_by: ctx.recorded_by,
            correlation_id: ctx.correlation_id,
            causation_id: ctx.causation_id,
        };
        match self.log.append(request).await {
            Ok(outcome) if outcome.deduplicated => {
                // A concurrent duplicate of this request won the race; answer as it was answered.
                let entity_ids = self.entity_ids_of(&outcome)?;
                Ok(WriteOutcome {
                    entity_ids,
                    outcome,
                })
            }
            Ok(outcome) => Ok(WriteOutcome {
                entity_ids,
                outcome,
            }),
            Err(LogError::WrongExpectedRevision {
                stream,
                expected,
                actual,
            }) => {
                let from_client = expectations
                    .iter()
                    .any(|e| e.from_client && e.stream == stream);
                if !from_client && expected == ExpectedRevision::NoStream {
                    Err(AppError::CreatedConcurrently { stream })
                } else {
                    Err(AppError::WrongExpectedRevision {
                        stream,
                        expected,
                        actual,
                    })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Decides every command against the write model plus the batch's own earlier events, and derives
    /// the expectations, each tagged with whether the client asked for it.
    fn decide_all(
        &self,
        commands: &[ClientCommand],
        shape: Shape,
    ) -> Result<(Vec<claims_ledger_domain::Event>, Vec<Expectation>), AppError> {
        let ctx = Context { now: Utc::now() };
        let folded = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut overlay = Overlay::new(&folded.state);
        let mut events = Vec::with_capacity(commands.len());
        // First domain expectation per stream, and how many earlier batch events touched it.
        let mut first: HashMap<String, ExpectedRevision> = HashMap::new();
        let mut touched: HashMap<String, u64> = HashMap::new();
        let mut order = Vec::new();
        let mut extra = Vec::new();
        for (i, c) in commands.iter().enumerate() {
            let prefix = match shape {
                Shape::Single => "command.".to_string(),
                Shape::Batch { at } => format!("{at}commands[{i}].{}.", c.command.name()),
            };
            let decision = decide(&overlay, &c.command, &ctx)
                .map_err(|e: DomainError| AppError::Domain(e.prefixed(&prefix)))?;
            let related =
                claims_ledger_domain::decide::related_expectations(&overlay, &decision.event);
            let stream = decision.event.stream();
            let earlier = touched.get(&stream).copied().unwrap_or(0);
            let domain_expected = match decision.expectation {
                StreamExpectation::NoStream => ExpectedRevision::NoStream,
                StreamExpectation::Exists => ExpectedRevision::StreamExists,
                StreamExpectation::Exact(r) => ExpectedRevision::Exact(r - earlier.min(r)),
            };
            match first.get_mut(&stream) {
                None => {
                    first.insert(stream.clone(), domain_expected);
                    order.push(stream.clone());
                }
                // A decision that depends on the stream's exact state pins the pre-batch revision,
                // unless the batch created the stream itself.
                Some(f)
                    if matches!(domain_expected, ExpectedRevision::Exact(_))
                        && *f != ExpectedRevision::NoStream =>
                {
                    *f = domain_expected
                }
                Some(_) => {}
            }
            if c.expected != ExpectedRevision::Any {
                extra.push(Expectation {
                    stream: stream.clone(),
                    expected: c.expected,
                    from_client: true,
                });
            }
            // Streams the batch already wrote to are consistent within this atomic append.
            for (rs, rev) in related {
                if !touched.contains_key(&rs) {
                    extra.push(Expectation {
                        stream: rs,
                        expected: ExpectedRevision::Exact(rev),
                        from_client: false,
                    });
                }
            }
            *touched.entry(stream).or_insert(0) += 1;
            overlay.apply(&decision.event);
            events.push(decision.event);
        }
        let mut expectations: Vec<Expectation> = order
            .into_iter()
            .map(|stream| Expectation {
                expected: first[&stream],
                stream,
                from_client: false,
            })
            .collect();
        expectations.extend(extra);
        Ok((events, expectations))
    }

    /// Entity ids of an earlier write, read back from its events.
    fn entity_ids_of(&self, outcome: &AppendOutcome) -> Result<Vec<String>, AppError> {
        outcome
            .events
            .iter()
            .map(|a| {
                let rec = self
                    .log
                    .get(a.position)?
                    .ok_or_else(|| AppError::Internal(format!("event {} missing", a.position)))?;
                decode_event(&rec)
                    .map(|e| e.entity_id())
                    .map_err(|e| AppError::Internal(e.to_string()))
            })
            .collect()
    }
}

/// Hash of a request's content, for idempotency: the commands and expectations as received.
fn content_hash(commands: &[ClientCommand]) -> [u8; 32] {
    let bytes = serde_json::to_vec(commands).expect("commands always serialize");
    Sha256::digest(bytes).into()
}
