//! [`ApiClient`]: the control API seen from a client (the CLI), over one NATS connection.
//!
//! It sends each request to the subject of its endpoint's role, as the endpoint table gives
//! it ([`crate::api::endpoint`]), and turns what comes back into a reply or an [`ApiError`];
//! through a [`Call`] type the request and reply types are the table's too.
//! A request NATS refuses (the user's permissions do not cover the subject) fails within
//! moments as [`ApiErrorKind::PermissionDenied`] naming the subject, instead of waiting out
//! the reply timeout as if no daemon were there ([`Refusals`]).

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::names;
use super::refusals::Refusals;
use crate::api::endpoint::Call;
use crate::api::{ApiError, ApiErrorKind, CastAccepted, ERROR_KIND_HEADER, Endpoint, Validate};

/// A client of the control API over one NATS connection.
#[derive(Clone)]
pub struct ApiClient {
    client: async_nats::Client,
    refusals: Refusals,
    timeout: Duration,
}

impl ApiClient {
    /// A client that waits at most `timeout` for each reply; `refusals` are the permission
    /// violations the server reports on `client`'s connection.
    pub fn new(client: async_nats::Client, refusals: Refusals, timeout: Duration) -> Self {
        Self {
            client,
            refusals,
            timeout,
        }
    }

    /// How long this client waits for each reply.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A [`super::DirectPublisher`] on this client's connection (and its refusals), waiting
    /// at most `ack_wait` for each event's ack: events straight onto the events stream,
    /// without a daemon.
    pub fn direct_publisher(&self, ack_wait: Duration) -> super::DirectPublisher {
        super::DirectPublisher::new(self.client.clone(), self.refusals.clone(), ack_wait)
    }

    /// The largest message the server takes, in bytes (what a request may carry).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Calls the endpoint `E` (see [`crate::api::endpoint::Call`]): the request and reply
    /// are of the types the endpoint table gives it, so the compiler checks what the daemon
    /// will read and answer. The request is checked first with the same [`Validate`] the
    /// daemon runs: a request the daemon would refuse is refused here, before anything is
    /// sent. A per-host endpoint needs [`Self::call_host_endpoint`].
    pub async fn call_endpoint<E: Call>(&self, request: &E::Request) -> Result<E::Reply, ApiError> {
        self.send(E::ENDPOINT.name, None, request).await
    }

    /// Sends a request to the endpoint `E` as a cast: the daemon answers at once that it took
    /// it, and reports the result later as a `sandbus.request.finished` event.
    pub async fn cast_endpoint<E: Call>(
        &self,
        request: &E::Request,
    ) -> Result<CastAccepted, ApiError> {
        self.send(E::ENDPOINT.name, None, request).await
    }

    /// [`Self::call_endpoint`] on one host's own endpoint (a per-host endpoint).
    pub async fn call_host_endpoint<E: Call>(
        &self,
        host: &str,
        request: &E::Request,
    ) -> Result<E::Reply, ApiError> {
        self.send(E::ENDPOINT.name, Some(host), request).await
    }

    async fn send<Q: Serialize + Validate, R: DeserializeOwned>(
        &self,
        name: &str,
        host: Option<&str>,
        request: &Q,
    ) -> Result<R, ApiError> {
        request.validate()?;
        let subject = Endpoint::find(name)
            .and_then(|endpoint| names::api_subject(endpoint, host))
            .ok_or_else(|| {
                ApiError::new(
                    ApiErrorKind::Internal,
                    format!("no endpoint `{name}` (for host {host:?}) in this client"),
                )
            })?;
        let body = serde_json::to_vec(request)
            .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()).caused_by(e))?;
        let request = async_nats::Request::new()
            .payload(Bytes::from(body))
            .timeout(Some(self.timeout));
        let reply = self
            .refusals
            .guard(async {
                self.client
                    .send_request(subject, request)
                    .await
                    .map_err(|e| {
                        use async_nats::RequestErrorKind as K;
                        let message = match e.kind() {
                            K::NoResponders => "no sandbus daemon is answering on this NATS \
                                                server; start one with `sandbus up` or \
                                                `sandbus daemon`"
                                .to_owned(),
                            K::TimedOut => format!(
                                "no reply from the daemon within {}",
                                humantime::format_duration(self.timeout)
                            ),
                            _ => format!("the request failed: {e}"),
                        };
                        super::BusError::new(super::BusErrorKind::Unavailable, message).caused_by(e)
                    })
            })
            .await?;
        if let Some(headers) = &reply.headers
            && let Some(message) = headers.get(async_nats::service::NATS_SERVICE_ERROR)
        {
            let code = headers
                .get(async_nats::service::NATS_SERVICE_ERROR_CODE)
                .and_then(|c| c.as_str().parse().ok());
            let kind =
                ApiErrorKind::parse(headers.get(ERROR_KIND_HEADER).map(|k| k.as_str()), code);
            return Err(ApiError::new(kind, message.as_str()));
        }
        serde_json::from_slice(&reply.payload).map_err(|e| {
            ApiError::new(
                ApiErrorKind::Internal,
                format!(
                    "the daemon's reply is not what this CLI expects ({e}); are both the same \
                     version?"
                ),
            )
            .caused_by(e)
        })
    }
}
