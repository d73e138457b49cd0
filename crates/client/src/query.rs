//! The read models: parties, positions and their history, statements, claims and sources, each
//! traced to the quoted source text. Reads only, so transient failures are retried under the
//! handle's [`RetryPolicy`].
use crate::connection::Transport;
use crate::pb;
use crate::pb::query_client::QueryClient;
use crate::retry::RetryPolicy;
use crate::{unary, Error};

/// The query service handle. Cheap to clone; calls take `&self`.
#[derive(Clone)]
pub struct Query {
    client: QueryClient<Transport>,
    retry: RetryPolicy,
}

macro_rules! query_methods {
    ($($(#[$doc:meta])* $name:ident($req:ident) -> $resp:ident;)*) => {$(
        $(#[$doc])*
        pub async fn $name(&self, request: pb::$req) -> Result<pb::$resp, Error> {
            unary(&self.retry, &self.client, &request, |mut c, r| async move {
                c.$name(r).await
            })
            .await
        }
    )*};
}

impl Query {
    pub(crate) fn new(transport: Transport, retry: RetryPolicy) -> Self {
        Query {
            client: QueryClient::new(transport),
            retry,
        }
    }

    /// The same handle with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Accepts answers up to `limit` bytes (tonic's default is 4 MiB).
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.client = self.client.max_decoding_message_size(limit);
        self
    }

    /// The generated client underneath.
    pub fn raw(&self) -> QueryClient<Transport> {
        self.client.clone()
    }

    query_methods! {
        /// `Query.ListParties`.
        list_parties(ListPartiesRequest) -> ListPartiesResponse;
        /// `Query.GetParty`.
        get_party(GetPartyRequest) -> GetPartyResponse;
        /// `Query.GetPositions`: a party's current stance per topic.
        get_positions(GetPositionsRequest) -> GetPositionsResponse;
        /// `Query.GetPositionHistory`: how a stance changed.
        get_position_history(GetPositionHistoryRequest) -> GetPositionHistoryResponse;
        /// `Query.ListStatements`.
        list_statements(ListStatementsRequest) -> ListStatementsResponse;
        /// `Query.GetStatement`.
        get_statement(GetStatementRequest) -> GetStatementResponse;
        /// `Query.GetClaim`.
        get_claim(GetClaimRequest) -> GetClaimResponse;
        /// `Query.GetSource`.
        get_source(GetSourceRequest) -> GetSourceResponse;
    }
}
