//! Projection administration: rebuild the read models from the log, and see how far they are.
//! A rebuild that is retried after a transient failure joins the one already running (the server
//! makes a second call wait for it), so retrying is safe here too.
use crate::connection::Transport;
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::retry::RetryPolicy;
use crate::{unary, Error};

/// The admin service handle. Cheap to clone; calls take `&self`.
#[derive(Clone)]
pub struct Admin {
    client: AdminClient<Transport>,
    retry: RetryPolicy,
}

impl Admin {
    pub(crate) fn new(transport: Transport, retry: RetryPolicy) -> Self {
        Admin {
            client: AdminClient::new(transport),
            retry,
        }
    }

    /// The same handle with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The generated client underneath.
    pub fn raw(&self) -> AdminClient<Transport> {
        self.client.clone()
    }

    /// `Admin.RebuildProjections`: returns when queries are served from the new generation. A
    /// rebuild of a large log outlasts the default request timeout: connect with a longer one.
    pub async fn rebuild_projections(&self) -> Result<pb::RebuildProjectionsResponse, Error> {
        unary(
            &self.retry,
            &self.client,
            &pb::RebuildProjectionsRequest {},
            |mut c, r| async move { c.rebuild_projections(r).await },
        )
        .await
    }

    /// `Admin.GetProjectionStatus`.
    pub async fn get_projection_status(&self) -> Result<pb::GetProjectionStatusResponse, Error> {
        unary(
            &self.retry,
            &self.client,
            &pb::GetProjectionStatusRequest {},
            |mut c, r| async move { c.get_projection_status(r).await },
        )
        .await
    }
}
