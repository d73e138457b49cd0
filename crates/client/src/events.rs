//! The log as the server serves it: the head, reads of the whole log or of one stream, named
//! subscribers' cursors, and [`Subscription`]s that resume by themselves after a disconnect. Every
//! call here only reads (or moves a cursor forward, which is idempotent), so every transient failure
//! is retried under the handle's [`RetryPolicy`].
use crate::connection::Transport;
use crate::pb;
use crate::pb::events_client::EventsClient;
use crate::retry::RetryPolicy;
use crate::subscription::Subscription;
use crate::{unary, Error};

/// The event service handle. Cheap to clone; calls take `&self`.
#[derive(Clone)]
pub struct Events {
    client: EventsClient<Transport>,
    retry: RetryPolicy,
}

impl Events {
    pub(crate) fn new(transport: Transport, retry: RetryPolicy) -> Self {
        Events {
            client: EventsClient::new(transport),
            retry,
        }
    }

    /// The same handle with another retry policy (also used by its subscriptions to reconnect).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Accepts answers up to `limit` bytes (tonic's default is 4 MiB): a `ReadAll` page of 1000
    /// large events needs more.
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.client = self.client.max_decoding_message_size(limit);
        self
    }

    /// The generated client underneath, for what this handle does not wrap.
    pub fn raw(&self) -> EventsClient<Transport> {
        self.client.clone()
    }

    /// `Events.GetHead`: the event count and the last hash.
    pub async fn get_head(&self) -> Result<pb::GetHeadResponse, Error> {
        unary(
            &self.retry,
            &self.client,
            &pb::GetHeadRequest {},
            |mut c, r| async move { c.get_head(r).await },
        )
        .await
    }

    /// `Events.ReadAll`: a page of the whole log.
    pub async fn read_all(
        &self,
        request: pb::ReadAllRequest,
    ) -> Result<pb::ReadAllResponse, Error> {
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.read_all(r).await
        })
        .await
    }

    /// `Events.ReadStream`: a page of one stream.
    pub async fn read_stream(
        &self,
        request: pb::ReadStreamRequest,
    ) -> Result<pb::ReadStreamResponse, Error> {
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.read_stream(r).await
        })
        .await
    }

    /// `Events.Ack`: the named subscriber `name` has processed everything before `position`.
    /// Returns the stored position (never lower than before, so repeating an ack is harmless).
    pub async fn ack(&self, name: &str, position: u64) -> Result<u64, Error> {
        let request = pb::AckRequest {
            subscription_name: name.to_string(),
            position,
        };
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.ack(r).await
        })
        .await
        .map(|r| r.acknowledged_position)
    }

    /// `Events.GetSubscription`: a named subscriber's acknowledged position and lag; `NOT_FOUND`
    /// if it never acknowledged.
    pub async fn get_subscription(&self, name: &str) -> Result<pb::GetSubscriptionResponse, Error> {
        let request = pb::GetSubscriptionRequest {
            subscription_name: name.to_string(),
        };
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.get_subscription(r).await
        })
        .await
    }

    /// `Events.DeleteSubscription`: forgets a named subscriber; whether it had a position.
    pub async fn delete_subscription(&self, name: &str) -> Result<bool, Error> {
        let request = pb::DeleteSubscriptionRequest {
            subscription_name: name.to_string(),
        };
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.delete_subscription(r).await
        })
        .await
        .map(|r| r.existed)
    }

    /// `Events.ListSubscriptions`: one page of named subscribers, in name order.
    pub async fn list_subscriptions(
        &self,
        request: pb::ListSubscriptionsRequest,
    ) -> Result<pb::ListSubscriptionsResponse, Error> {
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.list_subscriptions(r).await
        })
        .await
    }

    /// `Events.Subscribe`, resumable: see [`Subscription`]. `from_end` and a named subscriber's
    /// acknowledged position are turned into a position here, before the first event, so that
    /// a reconnect never has to guess where it was.
    pub async fn subscribe(&self, request: pb::SubscribeRequest) -> Result<Subscription, Error> {
        Subscription::start(self.client.clone(), self.retry.clone(), self, request).await
    }
}
