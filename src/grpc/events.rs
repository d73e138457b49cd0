//! `claimsledger.v1.Events`: reads of the log itself (head, whole log, one stream), with typed payloads
//! and the exact stored bytes so that clients can recompute every hash.
use tonic::{Request, Response, Status};

use super::convert::envelope_pb;
use super::pb;
use crate::app::{App, AppError};
use crate::log::RecordedEvent;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub struct EventsService {
    app: App,
}

impl EventsService {
    pub fn new(app: App) -> Self {
        EventsService { app }
    }
}

fn page_size(max_count: u32) -> Result<usize, AppError> {
    match max_count {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n <= MAX_PAGE => Ok(n as usize),
        n => Err(AppError::invalid(
            "max_count",
            format!("must be at most {MAX_PAGE}, got {n}"),
        )),
    }
}

fn backwards(direction: i32) -> Result<bool, AppError> {
    match pb::Direction::try_from(direction) {
        Ok(pb::Direction::Backwards) => Ok(true),
        Ok(_) => Ok(false),
        Err(_) => Err(AppError::invalid(
            "direction",
            format!("unknown direction {direction}"),
        )),
    }
}

fn envelopes(events: Vec<RecordedEvent>) -> Result<Vec<pb::EventEnvelope>, AppError> {
    events.into_iter().map(envelope_pb).collect()
}

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    async fn get_head(
        &self,
        _req: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::GetHeadResponse>, Status> {
        let head = self.app.log().head();
        Ok(Response::new(pb::GetHeadResponse {
            event_count: head.count,
            position: head.count.saturating_sub(1),
            hash: hex::encode(head.hash),
        }))
    }

    async fn read_all(
        &self,
        req: Request<pb::ReadAllRequest>,
    ) -> Result<Response<pb::ReadAllResponse>, Status> {
        let r = req.into_inner();
        let max = page_size(r.max_count)?;
        let back = backwards(r.direction)?;
        let log = self.app.log();
        let count = log.durable_count();
        let from = if r.from_end {
            count.saturating_sub(1)
        } else {
            r.from_position
        };
        let events = log.read_all(from, back, max).map_err(AppError::from)?;
        let next_position = match (back, events.last()) {
            (false, Some(e)) if e.position + 1 < count => Some(e.position + 1),
            (true, Some(e)) if e.position > 0 => Some(e.position - 1),
            _ => None,
        };
        Ok(Response::new(pb::ReadAllResponse {
            events: envelopes(events)?,
            next_position,
            event_count: count,
        }))
    }

    async fn read_stream(
        &self,
        req: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        let r = req.into_inner();
        if r.stream.is_empty() {
            return Err(AppError::invalid("stream", "is required").into());
        }
        let max = page_size(r.max_count)?;
        let back = backwards(r.direction)?;
        let log = self.app.log();
        let Some(last) = log.stream_revision(&r.stream).map_err(AppError::from)? else {
            return Err(AppError::NotFound(format!("stream {:?}", r.stream)).into());
        };
        let from = if r.from_end { last } else { r.from_revision };
        let events = log
            .read_stream(&r.stream, from, back, max)
            .map_err(AppError::from)?;
        let next_revision = match (back, events.last()) {
            (false, Some(e)) if e.stream_revision < last => Some(e.stream_revision + 1),
            (true, Some(e)) if e.stream_revision > 0 => Some(e.stream_revision - 1),
            _ => None,
        };
        Ok(Response::new(pb::ReadStreamResponse {
            events: envelopes(events)?,
            next_revision,
            last_revision: last,
        }))
    }
}
