//! A Rust client for claims-ledger, the event-sourced ledger of who said what, when, where, and
//! according to which source.
//!
//! The wire contract (`claimsledger.v1`) is re-exported as [`pb`]: its messages are what the
//! calls here take and return, so a program needs no other dependency to talk to a ledger. On top
//! of the generated code this crate adds what every client otherwise writes for itself:
//!
//! | | |
//! |---|---|
//! | [`Connection`] | TLS against a pinned CA, a bearer token, connect and request timeouts; one HTTP/2 channel shared by every handle |
//! | [`Ledger`] | writes that always carry an idempotency key and are retried safely, with the same key, on transient failures only |
//! | [`Events`], [`Subscription`] | reads of the log, and a subscription that resumes after a disconnect with no gap and no repeat |
//! | [`Auditor`], [`Audit`] | checks signed checkpoints, inclusion and consistency proofs against a pinned key, trusting nothing it is sent |
//! | [`Query`], [`Admin`] | the read models and projection administration, with retried reads |
//! | [`RetryPolicy`] | which failures are retried (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, some `RESOURCE_EXHAUSTED`, broken connections), how often, how long apart |
//! | [`time`] | `chrono` ⇄ protobuf `Timestamp` |
//!
//! # A short tour
//!
//! Connect, write, and read what was written:
//!
//! ```no_run
//! use claims_ledger_client::{pb, Connection};
//!
//! # async fn tour() -> Result<(), claims_ledger_client::Error> {
//! let conn = Connection::builder("https://ledger.example.org:50051")
//!     .ca_certificate_file("ca.pem")
//!     .bearer_token("s3cret")
//!     .connect()
//!     .await?;
//!
//! // No idempotency key given: one is made, and kept for every retry of this write.
//! let written = conn
//!     .ledger()
//!     .submit_batch(pb::SubmitBatchRequest {
//!         commands: vec![pb::BatchCommand {
//!             expected_revision: None,
//!             command: Some(pb::batch_command::Command::RegisterParty(pb::RegisterPartyCommand {
//!                 party_id: "ukraine".into(),
//!                 kind: pb::PartyKind::State as i32,
//!                 name: "Ukraine".into(),
//!                 ..Default::default()
//!             })),
//!         }],
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("written under key {}", written.idempotency_key);
//!
//! let party = conn
//!     .query()
//!     .get_party(pb::GetPartyRequest { party_id: "ukraine".into(), ..Default::default() })
//!     .await?;
//! println!("{party:?}");
//! # Ok(()) }
//! ```
//!
//! Follow the log, resuming by itself across server restarts (see [`subscription`]):
//!
//! ```no_run
//! use claims_ledger_client::{pb, Connection, Item};
//!
//! # async fn follow() -> Result<(), claims_ledger_client::Error> {
//! let conn = Connection::connect("http://127.0.0.1:50051").await?;
//! let mut sub = conn
//!     .events()
//!     .subscribe(pb::SubscribeRequest { from_position: 0, ..Default::default() })
//!     .await?;
//! while let Item::Event(e) = sub.next().await? {
//!     println!("{} {}", e.position, e.event_type);
//! }
//! # Ok(()) }
//! ```
//!
//! Audit the ledger with a key pinned out of band (see [`audit`] for an example that runs
//! offline):
//!
//! ```no_run
//! use claims_ledger_client::{Auditor, Connection};
//!
//! # async fn check(pinned_key: &str, saved_note: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let auditor = Auditor::from_key(pinned_key)?;
//! let audit = Connection::connect("http://127.0.0.1:50051").await?.audit();
//! let latest = auditor.latest(&audit).await?;
//! let saved = auditor.open(saved_note)?;
//! auditor.check_extends(&audit, &saved, &latest.checkpoint).await?;
//! auditor.check_event(&audit, &latest.checkpoint, 0).await?;
//! println!("the log of {} events extends the saved one", latest.checkpoint.size);
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! Calls return [`Error`]: a connection that could not be made, or the final gRPC status of a
//! call ([`Error::status`]). The auditor tells a log that fails a check ([`audit::Failed`]) from a
//! check that could not be made ([`audit::AuditError`]).

pub use claims_ledger_proto as pb;
/// Encoding and decoding of [`pb`] messages (`encode_to_vec`, `decode`, `encoded_len`).
pub use prost::Message;
/// The gRPC library the contract is generated for, to match status codes ([`Code`]) or add
/// metadata without depending on it directly.
pub use tonic;
pub use tonic::{Code, Status};

pub mod admin;
pub mod audit;
pub mod connection;
mod error;
pub mod events;
pub mod ledger;
pub mod query;
pub mod retry;
pub mod subscription;
pub mod time;

pub use admin::Admin;
pub use audit::{Audit, Auditor};
pub use connection::{ConnectOptions, Connection, Transport};
pub use error::Error;
pub use events::Events;
pub use ledger::{Ledger, Written};
pub use query::Query;
pub use retry::RetryPolicy;
pub use subscription::{Item, Subscription};

/// One unary call under `retry`, re-sending a clone of the same request each attempt.
pub(crate) async fn unary<C, Req, Resp, F, Fut>(
    retry: &RetryPolicy,
    client: &C,
    request: &Req,
    call: F,
) -> Result<Resp, Error>
where
    C: Clone,
    Req: Clone,
    F: Fn(C, Req) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    retry
        .run(|| call(client.clone(), request.clone()))
        .await
        .map(tonic::Response::into_inner)
}
