//! The control API's listener endpoints (`listener.*`): subscribing a listener to event
//! patterns, and its status. Unsubscribing is the subscription store's alone.

use std::time::Duration;

use super::ControlApi;
use crate::api::{ApiError, StatusReply, StatusRequest, SubscribeRequest};
use crate::bus::Subscription;
use crate::bus::ack_wait_for;
use crate::sandbox::World;

impl ControlApi {
    /// `listener.subscribe`: only an uploaded listener, its settings checked; its consumer
    /// waits for acks as long as the listener's deadline needs.
    pub(super) async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Subscription, ApiError> {
        let manifest = self.uploaded(&request.name).await?;
        if manifest.world != World::Listener {
            return Err(ApiError::bad_request(format!(
                "`{}` is a {}, not a listener; only listeners can subscribe to events",
                request.name, manifest.world
            )));
        }
        let mut subscription = Subscription::new(&request.name, request.events);
        if let Some(n) = request.max_in_flight {
            subscription.max_in_flight = n;
        }
        if let Some(n) = request.max_deliver {
            subscription.max_deliver = n;
        }
        if let Some(backoff) = request.backoff_ms {
            subscription.backoff = backoff.into_iter().map(Duration::from_millis).collect();
        }
        subscription.validate().map_err(ApiError::bad_request)?;
        let limits = manifest.resolved_limits().map_err(ApiError::bad_request)?;
        self.subscriptions
            .put(&subscription, ack_wait_for(limits.timeout))
            .await?;
        Ok(subscription)
    }

    /// `listener.status`: the listener named, or every subscribed one.
    pub(super) async fn status(&self, request: StatusRequest) -> Result<StatusReply, ApiError> {
        match request.name {
            Some(name) => Ok(StatusReply::One(Box::new(
                self.subscriptions.status(&name).await?,
            ))),
            None => {
                let mut all = Vec::new();
                for s in self.subscriptions.list().await? {
                    all.push(self.subscriptions.status(&s.listener).await?);
                }
                Ok(StatusReply::All(all))
            }
        }
    }
}
