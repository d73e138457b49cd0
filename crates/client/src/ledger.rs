//! The write service. Every write goes out with an idempotency key — the caller's, or one made
//! here when the request has none — and a write that fails with a transient status is re-sent,
//! unchanged and with that same key, under the handle's [`RetryPolicy`]. The server keeps keys
//! forever and answers a repeat of an applied write with the original result marked
//! `deduplicated`, so a write whose answer was lost is never applied twice. A refusal
//! (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `ALREADY_EXISTS`, ...) is returned at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), claims_ledger_client::Error> {
//! use claims_ledger_client::{pb, Connection};
//!
//! let conn = Connection::connect("http://127.0.0.1:50051").await?;
//! let ledger = conn.ledger().recorded_by("importer")?;
//! let written = ledger
//!     .register_party(pb::RegisterPartyRequest {
//!         command: Some(pb::RegisterPartyCommand {
//!             party_id: "ukraine".into(),
//!             kind: pb::PartyKind::State as i32,
//!             name: "Ukraine".into(),
//!             ..Default::default()
//!         }),
//!         ..Default::default()
//!     })
//!     .await?;
//! // The key that was used: send it again (e.g. after a crash) and the write is not repeated.
//! println!("key {}, deduplicated: {}", written.idempotency_key, written.deduplicated());
//! # Ok(()) }
//! ```
use tonic::metadata::{Ascii, MetadataValue};

use crate::connection::Transport;
use crate::pb;
use crate::pb::ledger_client::LedgerClient;
use crate::retry::RetryPolicy;
use crate::Error;

/// The metadata header naming who records a write, honoured by a server in open mode (no
/// tokens); with tokens the server records the token's name instead. The server crate defines the
/// same name; it is repeated here so that clients need not link the server.
pub const RECORDED_BY_HEADER: &str = "x-recorded-by";

/// A write request: it carries [`pb::WriteOptions`], where its idempotency key goes.
pub trait WriteRequest: Clone + Send + Sync + 'static {
    /// The request's options, created empty if absent.
    fn options_mut(&mut self) -> &mut pb::WriteOptions;
}

macro_rules! write_requests {
    ($($req:ident),* $(,)?) => {$(
        impl WriteRequest for pb::$req {
            fn options_mut(&mut self) -> &mut pb::WriteOptions {
                self.options.get_or_insert_with(Default::default)
            }
        }
    )*};
}

write_requests!(
    RegisterPartyRequest,
    UpdatePartyRequest,
    RegisterSourceRequest,
    RecordStatementRequest,
    AssertClaimRequest,
    ReviewClaimRequest,
    IssueCorrectionRequest,
    SubmitBatchRequest,
);

/// A new idempotency key: a random UUID, 36 printable ASCII characters (the server takes 1..128).
pub fn new_idempotency_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Gives `req` an idempotency key if it has none, and returns the key it carries.
pub fn ensure_idempotency_key<R: WriteRequest>(req: &mut R) -> String {
    let options = req.options_mut();
    if options.idempotency_key.is_empty() {
        options.idempotency_key = new_idempotency_key();
    }
    options.idempotency_key.clone()
}

/// A write's answer, with the key it was made under and how many calls it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Written<R> {
    /// The server's answer.
    pub response: R,
    /// The idempotency key the write carried (the caller's, or the one made for it).
    pub idempotency_key: String,
    /// Calls made: more than 1 when transient failures were retried.
    pub attempts: u32,
}

/// The responses that carry a [`pb::WriteResult`].
pub trait WriteResponse {
    /// What the write did; `None` only from a server that breaks the contract.
    fn write_result(&self) -> Option<&pb::WriteResult>;
}

macro_rules! write_responses {
    ($($resp:ident),* $(,)?) => {$(
        impl WriteResponse for pb::$resp {
            fn write_result(&self) -> Option<&pb::WriteResult> {
                self.result.as_ref()
            }
        }
    )*};
}

write_responses!(
    RegisterPartyResponse,
    UpdatePartyResponse,
    RegisterSourceResponse,
    RecordStatementResponse,
    AssertClaimResponse,
    ReviewClaimResponse,
    IssueCorrectionResponse,
    SubmitBatchResponse,
);

impl<R: WriteResponse> Written<R> {
    /// Whether the server answered with an earlier write of the same key: nothing new was
    /// written. Expected after a retry whose first attempt was applied but not answered.
    pub fn deduplicated(&self) -> bool {
        self.response.write_result().is_some_and(|r| r.deduplicated)
    }

    /// The events the write appended (or, when deduplicated, appended earlier).
    pub fn events(&self) -> &[pb::AppendedEvent] {
        self.response
            .write_result()
            .map_or(&[], |r| r.events.as_slice())
    }
}

/// The write service handle. Cheap to clone; calls take `&self`, so one handle can serve many
/// tasks.
#[derive(Clone)]
pub struct Ledger {
    client: LedgerClient<Transport>,
    retry: RetryPolicy,
    recorded_by: Option<MetadataValue<Ascii>>,
}

macro_rules! write_methods {
    ($($(#[$doc:meta])* $name:ident($req:ident) -> $resp:ident;)*) => {$(
        $(#[$doc])*
        pub async fn $name(&self, request: pb::$req) -> Result<Written<pb::$resp>, Error> {
            self.write(request, |mut c, r| async move { c.$name(r).await }).await
        }
    )*};
}

impl Ledger {
    pub(crate) fn new(transport: Transport, retry: RetryPolicy) -> Self {
        Ledger {
            client: LedgerClient::new(transport),
            retry,
            recorded_by: None,
        }
    }

    /// The same handle with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sends [`RECORDED_BY_HEADER`] with every write: who the ledger records as the writer, on a
    /// server without tokens.
    pub fn recorded_by(mut self, name: &str) -> Result<Self, Error> {
        let value = name
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| Error::InvalidRecordedBy(name.to_string()))?;
        self.recorded_by = Some(value);
        Ok(self)
    }

    /// The generated client underneath, for calls this handle does not wrap (`AppendSession`).
    /// Calls made on it get neither keys nor retries.
    pub fn raw(&self) -> LedgerClient<Transport> {
        self.client.clone()
    }

    write_methods! {
        /// `Ledger.RegisterParty`.
        register_party(RegisterPartyRequest) -> RegisterPartyResponse;
        /// `Ledger.UpdateParty`.
        update_party(UpdatePartyRequest) -> UpdatePartyResponse;
        /// `Ledger.RegisterSource`. Leave `source_id` empty and the server makes one; a retry
        /// gets the same one back.
        register_source(RegisterSourceRequest) -> RegisterSourceResponse;
        /// `Ledger.RecordStatement`.
        record_statement(RecordStatementRequest) -> RecordStatementResponse;
        /// `Ledger.AssertClaim`.
        assert_claim(AssertClaimRequest) -> AssertClaimResponse;
        /// `Ledger.ReviewClaim`.
        review_claim(ReviewClaimRequest) -> ReviewClaimResponse;
        /// `Ledger.IssueCorrection`.
        issue_correction(IssueCorrectionRequest) -> IssueCorrectionResponse;
        /// `Ledger.SubmitBatch`: all commands or none, under one key.
        submit_batch(SubmitBatchRequest) -> SubmitBatchResponse;
    }

    /// Sends `request` with a key, retrying transient failures with the very same request.
    async fn write<Req, Resp, F, Fut>(
        &self,
        mut request: Req,
        send: F,
    ) -> Result<Written<Resp>, Error>
    where
        Req: WriteRequest,
        F: Fn(LedgerClient<Transport>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        // The key is fixed before the first attempt: every attempt must carry the same one, or a
        // retry of an applied write would be a second write.
        let idempotency_key = ensure_idempotency_key(&mut request);
        let mut attempts = 0u32;
        let response = self
            .retry
            .run(|| {
                attempts += 1;
                let mut req = tonic::Request::new(request.clone());
                if let Some(v) = &self.recorded_by {
                    req.metadata_mut().insert(RECORDED_BY_HEADER, v.clone());
                }
                send(self.client.clone(), req)
            })
            .await?
            .into_inner();
        Ok(Written {
            response,
            idempotency_key,
            attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_made_once_and_kept() {
        let mut req = pb::SubmitBatchRequest::default();
        let key = ensure_idempotency_key(&mut req);
        assert_eq!(key.len(), 36);
        assert!(key.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(
            ensure_idempotency_key(&mut req),
            key,
            "stable across attempts"
        );
    }

    #[test]
    fn the_callers_key_is_kept() {
        let mut req = pb::RegisterPartyRequest {
            options: Some(pb::WriteOptions {
                idempotency_key: "mine-1".into(),
                correlation_id: "c".into(),
                causation_id: String::new(),
            }),
            ..Default::default()
        };
        assert_eq!(ensure_idempotency_key(&mut req), "mine-1");
        assert_eq!(
            req.options.as_ref().map(|o| o.correlation_id.as_str()),
            Some("c")
        );
    }

    #[test]
    fn two_writes_get_two_keys() {
        assert_ne!(new_idempotency_key(), new_idempotency_key());
    }
}
