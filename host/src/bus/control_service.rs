//! [`ControlService`]: the control API on NATS (see [`crate::api`] for the wire format).
//!
//! Everything NATS about answering control requests is here: the service registration
//! (discoverable with `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`), one endpoint per row of the
//! endpoint table on its role's subject (or, per host, on this host's own), a loop per role
//! with its own share of concurrent requests, the reply-inbox check, and the reply: the
//! result's JSON, or the service error headers. What a request *does* is the
//! [`ControlHandler`]'s business (the daemon's router): it gets a [`ControlRequest`] with
//! nothing NATS in it, and gives back JSON or an [`ApiError`].
//!
//! All daemons join one queue group, so any of them answers any request that is not per
//! host.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;

use super::micro::{EndpointSpec, MicroService, Request, ServiceInfo};
use super::{BusError, BusErrorKind, names};
use crate::api::{self, ApiError, ApiErrorKind, Role, endpoint};

/// Control requests of one role handled at once by one daemon. Each role has its own
/// share, so a flood of one role's requests (a viewer's long polls) never holds up
/// another's (an operator's upload).
const MAX_CONCURRENT_PER_ROLE: usize = 16;

/// Bytes of a reply kept free for the headers and the protocol, below the server's max
/// payload.
const REPLY_MARGIN: usize = 8 << 10;

/// What answers the control API's requests (the daemon's router). The service calls it for
/// every request that passed the bus's own checks (a reply inbox, a free place among the
/// role's concurrent requests).
pub trait ControlHandler: Send + Sync + 'static {
    /// This host's id: the service's `host` metadata, and the subjects of its per-host
    /// endpoints.
    fn host_id(&self) -> &str;

    /// Answers one request: the reply's JSON, or the error to answer with. The request's
    /// [`RequestSlot`] counts it among its role's concurrent requests until it is dropped.
    /// The answer runs as a task of its own (so it owns what it needs).
    fn answer(
        self: Arc<Self>,
        request: ControlRequest,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send + 'static;
}

/// One control request, as the bus hands it over: nothing NATS in it.
pub struct ControlRequest {
    /// The role whose subject it came on.
    pub role: Role,
    /// The endpoint's name (a row of [`endpoint::ALL`]).
    pub endpoint: &'static str,
    /// The body, as sent.
    pub body: Bytes,
    /// Its place among the role's concurrent requests.
    pub slot: RequestSlot,
}

/// A request's place among the requests of its role one daemon answers at once (16).
/// Whoever holds it keeps the place taken, so work that goes on after the reply (a cast)
/// still counts, and the service's shutdown waits for it; dropping it frees the place.
pub struct RequestSlot {
    _permit: OwnedSemaphorePermit,
}

type Requests =
    futures::stream::SelectAll<futures::stream::BoxStream<'static, (&'static str, Request)>>;

/// The registered service, ready to answer.
pub struct ControlService<H> {
    handler: Arc<H>,
    client: async_nats::Client,
    service: MicroService,
    /// Each role's endpoints, answered by a loop of their own.
    requests: Vec<(Role, Requests)>,
}

impl<H: ControlHandler> ControlService<H> {
    /// Registers the service and every endpoint of the table, for `handler` to answer. Fails
    /// when the server refuses them, for example when the account may not use `$SRV` or
    /// `sandbus.api`: a daemon nobody can control must not look healthy.
    pub async fn start(client: &async_nats::Client, handler: Arc<H>) -> Result<Self, BusError> {
        // One group per role (`sandbus.api.<role>`), and this host's own per-host endpoints
        // (`sandbus.api.<role>.host.<id>`): runs go to the host that has the device.
        let specs: Vec<EndpointSpec> = endpoint::ALL
            .iter()
            .map(|endpoint| {
                let prefix = if endpoint.per_host {
                    names::host_api_prefix(endpoint.role, handler.host_id())
                } else {
                    names::api_role_prefix(endpoint.role)
                };
                EndpointSpec {
                    name: endpoint.name.replace('.', "-"),
                    subject: format!("{prefix}.{}", endpoint.name),
                    metadata: BTreeMap::from([("role".to_owned(), endpoint.role.to_string())]),
                }
            })
            .collect();
        let info = ServiceInfo {
            name: names::SERVICE_NAME,
            version: env!("CARGO_PKG_VERSION"),
            description: "sandbus control API: components, subscriptions, events, hosts",
            metadata: BTreeMap::from([("host".to_owned(), handler.host_id().to_owned())]),
        };
        let (service, endpoint_requests) =
            MicroService::start(client, info, specs)
                .await
                .map_err(|e| {
                    BusError::new(
                        BusErrorKind::Unavailable,
                        format!("cannot start the control service: {e}"),
                    )
                    .caused_by(e)
                })?;
        let mut by_role: Vec<(Role, Vec<_>)> = Role::ALL.iter().map(|r| (*r, Vec::new())).collect();
        for (endpoint, requests) in endpoint::ALL.iter().zip(endpoint_requests) {
            let stream = requests
                .into_stream()
                .map(move |request| (endpoint.name, request))
                .boxed();
            if let Some((_, streams)) = by_role.iter_mut().find(|(r, _)| *r == endpoint.role) {
                streams.push(stream);
            }
        }
        Ok(Self {
            handler,
            client: client.clone(),
            service,
            requests: by_role
                .into_iter()
                .map(|(role, streams)| (role, futures::stream::select_all(streams)))
                .collect(),
        })
    }

    /// Answers requests until `stop`; then unregisters and waits for every request's slot
    /// (casts in progress included).
    pub async fn run(self, stop: CancellationToken) {
        let loops: Vec<_> = self
            .requests
            .into_iter()
            .map(|(role, requests)| {
                let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PER_ROLE));
                let run = answer_role(
                    role,
                    requests,
                    limit.clone(),
                    self.handler.clone(),
                    self.client.clone(),
                    stop.clone(),
                );
                async move {
                    run.await;
                    limit
                }
            })
            .collect();
        let limits = futures::future::join_all(loops).await;
        self.service.stop();
        // Requests being answered, and casts after their reply, hold their slots.
        for limit in limits {
            let _ = limit.acquire_many(MAX_CONCURRENT_PER_ROLE as u32).await;
        }
    }
}

/// Answers one role's requests until `stop`, at most [`MAX_CONCURRENT_PER_ROLE`] at once.
/// A request that finds them all taken is answered "busy" at once, so a flood is never
/// queued up in the daemon's memory.
async fn answer_role<H: ControlHandler>(
    role: Role,
    mut requests: Requests,
    limit: Arc<Semaphore>,
    handler: Arc<H>,
    client: async_nats::Client,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = requests.next() => next,
        };
        let Some((name, request)) = next else {
            break;
        };
        // The reply goes out with this daemon's rights: only to a reply inbox, never to a
        // subject a requester picked to make the daemon write there (a JetStream API call,
        // a bucket, a host event).
        if !request.replies_to_an_inbox() {
            request.count_dropped();
            tracing::debug!(
                endpoint = name,
                %role,
                reply = ?request.message.reply.as_ref().map(|r| crate::text::echo(r.as_str())),
                "control request dropped: its reply subject is not a reply inbox"
            );
            continue;
        }
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                let busy = ApiError::new(
                    ApiErrorKind::Unavailable,
                    format!(
                        "this daemon is busy: it is answering {MAX_CONCURRENT_PER_ROLE} {role} \
                         requests already; try again in a moment"
                    ),
                );
                respond_error(&request, name, &busy, true).await;
                continue;
            }
        };
        let max_payload = client.server_info().max_payload;
        let answer = handler.clone().answer(ControlRequest {
            role,
            endpoint: name,
            body: request.message.payload.clone(),
            slot: RequestSlot { _permit: permit },
        });
        tokio::spawn(async move {
            let result = answer
                .await
                .and_then(|value| fit(name, &value, max_payload));
            match result {
                Ok(body) => {
                    if let Err(e) = request.respond(body).await {
                        tracing::warn!(endpoint = name, error = %e, "could not send a control reply");
                    }
                }
                Err(e) => respond_error(&request, name, &e, false).await,
            }
        });
    }
}

/// The reply's bytes, if the server carries them. Always an answer: a reply over the
/// server's max payload is never delivered, and the client would wait out its timeout
/// thinking no daemon is there. Such a reply becomes an error that says how big it was.
fn fit(name: &str, value: &serde_json::Value, max_payload: usize) -> Result<Bytes, ApiError> {
    let body = Bytes::from(value.to_string());
    let room = max_payload.saturating_sub(REPLY_MARGIN);
    if body.len() > room {
        return Err(ApiError::new(
            ApiErrorKind::Internal,
            format!(
                "the reply to `{name}` is {} bytes, more than the server carries ({} bytes with \
                 headers); ask for less (or raise the server's max_payload)",
                body.len(),
                max_payload
            ),
        ));
    }
    Ok(body)
}

/// Answers `request` with `error` (one line, at most [`api::MAX_ERROR_LEN`] bytes), in the
/// service error headers and [`api::ERROR_KIND_HEADER`]. `busy`: refused because the role's
/// concurrent requests were all taken.
async fn respond_error(request: &Request, name: &str, error: &ApiError, busy: bool) {
    tracing::debug!(endpoint = name, error = %error.message, "control request refused");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(api::ERROR_KIND_HEADER, error.kind.as_str());
    let description = crate::text::clip(&crate::text::one_line(&error.message), api::MAX_ERROR_LEN);
    let sent = request
        .respond_error(&description, error.kind.code(), headers, busy)
        .await;
    if let Err(e) = sent {
        tracing::warn!(endpoint = name, error = %e, "could not send a control reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_over_the_servers_max_payload_becomes_an_error_saying_how_big_it_was() {
        let small = serde_json::json!({ "ok": true });
        assert_eq!(
            fit("component.list", &small, 1 << 20).ok(),
            Some(Bytes::from(r#"{"ok":true}"#))
        );
        let big = serde_json::Value::String("x".repeat(10_000));
        let error = fit("component.list", &big, 16 << 10).unwrap_err();
        assert_eq!(error.kind, ApiErrorKind::Internal);
        assert_eq!(
            error.message,
            "the reply to `component.list` is 10002 bytes, more than the server carries (16384 \
             bytes with headers); ask for less (or raise the server's max_payload)"
        );
    }
}
