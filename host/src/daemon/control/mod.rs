//! The control API served by every daemon (see [`crate::api`] for the wire format): the
//! service and its router here, the endpoints by subject in [`components`] (staging, upload,
//! removal, rollback) and [`reads`] (pages of events and run logs, components' kv spaces).
//!
//! All daemons join one queue group, so any of them answers any request: the state they
//! change (manifests, subscriptions, consumers) is cluster-wide, and every daemon reacts to
//! the change through its watches, not through the request.

mod components;
mod reads;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{self, ServiceExt as _};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::components::LoadedComponents;
use super::hooks::HookDispatcher;
use super::host_events::{self, HostEvents};
use super::lab::DeviceLab;
use super::metrics::Metrics;
use crate::api::{
    self, ApiError, ApiErrorKind, CancelReply, CastAccepted, HookPolicyRequest, HookRequest,
    Request, Role, SubscribeRequest, endpoint,
};
use crate::bus::{
    ComponentStore, DeviceInventory, EventStream, HookPoint, HostRegistry, RunStore, StagedUploads,
    Subscription, SubscriptionStore, names,
};
use crate::imports::kv::KvStore;
use crate::sandbox::{Sandbox, World};
use crate::subject::is_reply_inbox;

/// Control requests of one role handled at once by one daemon. Each role has its own
/// share, so a flood of one role's requests (a viewer's long polls) never holds up
/// another's (an operator's upload).
const MAX_CONCURRENT_PER_ROLE: usize = 16;

/// Bytes of a reply kept free for the headers and the protocol, below the server's max
/// payload.
const REPLY_MARGIN: usize = 8 << 10;

type Requests = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (&'static str, bool, service::Request)>,
>;

/// The registered service, ready to answer.
pub struct ControlService {
    api: Arc<ControlApi>,
    client: async_nats::Client,
    service: service::Service,
    /// Each role's endpoints, answered by a loop of their own.
    requests: Vec<(Role, Requests)>,
}

impl ControlService {
    /// Answers requests until `stop`; then unregisters and waits for casts in progress.
    pub async fn run(self, stop: CancellationToken) {
        let casts = TaskTracker::new();
        let loops: Vec<_> = self
            .requests
            .into_iter()
            .map(|(role, requests)| {
                let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_PER_ROLE));
                let run = answer_role(
                    role,
                    requests,
                    limit.clone(),
                    self.api.clone(),
                    self.client.clone(),
                    casts.clone(),
                    stop.clone(),
                );
                async move {
                    run.await;
                    limit
                }
            })
            .collect();
        let limits = futures::future::join_all(loops).await;
        if let Err(e) = self.service.stop().await {
            tracing::warn!(error = %e, "could not stop the control service cleanly");
        }
        // Requests being answered hold permits; casts are tracked.
        for limit in limits {
            let _ = limit.acquire_many(MAX_CONCURRENT_PER_ROLE as u32).await;
        }
        casts.close();
        casts.wait().await;
    }
}

/// Answers `request` with `error` (one line, at most [`api::MAX_ERROR_LEN`] bytes).
async fn respond_error(request: &service::Request, name: &str, error: &ApiError) {
    tracing::debug!(endpoint = name, error = %error.message, "control request refused");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(api::ERROR_KIND_HEADER, error.kind.as_str());
    let sent = request
        .respond_with_headers(
            Err(service::error::Error {
                status: crate::text::clip(
                    &crate::text::one_line(&error.message),
                    api::MAX_ERROR_LEN,
                ),
                code: error.kind.code(),
            }),
            headers,
        )
        .await;
    if let Err(e) = sent {
        tracing::warn!(endpoint = name, error = %e, "could not send a control reply");
    }
}

/// Answers one role's requests until `stop`, at most [`MAX_CONCURRENT_PER_ROLE`] at once.
/// A request that finds them all taken is answered "busy" at once, so a flood is never
/// queued up in the daemon's memory.
async fn answer_role(
    role: Role,
    mut requests: Requests,
    limit: Arc<tokio::sync::Semaphore>,
    api: Arc<ControlApi>,
    client: async_nats::Client,
    casts: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = requests.next() => next,
        };
        let Some((name, castable, request)) = next else {
            break;
        };
        // The reply goes out with this daemon's rights: only to a reply inbox, never to a
        // subject a requester picked to make the daemon write there (a JetStream API call,
        // a bucket, a host event).
        if !request
            .message
            .reply
            .as_ref()
            .is_some_and(|reply| is_reply_inbox(reply.as_str()))
        {
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
            Err(tokio::sync::TryAcquireError::Closed) => break,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let busy = ApiError::new(
                    ApiErrorKind::Unavailable,
                    format!(
                        "this daemon is busy: it is answering {MAX_CONCURRENT_PER_ROLE} {role} \
                         requests already; try again in a moment"
                    ),
                );
                respond_error(&request, name, &busy).await;
                continue;
            }
        };
        let api = api.clone();
        let casts_handle = casts.clone();
        let max_payload = client.server_info().max_payload;
        tokio::spawn(async move {
            api.answer(name, castable, request, permit, &casts_handle, max_payload)
                .await;
        });
    }
}

/// What the control API works on.
pub struct ControlApi {
    /// The sandbox, to validate uploads.
    pub sandbox: Arc<Sandbox>,
    /// Components loaded here (to avoid evicting code in use).
    pub components: Arc<LoadedComponents>,
    /// The component store.
    pub store: ComponentStore,
    /// Subscriptions.
    pub subscriptions: SubscriptionStore,
    /// The events stream.
    pub events: EventStream,
    /// Live hosts.
    pub hosts: HostRegistry,
    /// This host's events.
    pub host_events: HostEvents,
    /// This host's devices and runs.
    pub lab: Arc<DeviceLab>,
    /// Every host's devices.
    pub inventory: DeviceInventory,
    /// Every run.
    pub runs: RunStore,
    /// Counters, also served in `$SRV.STATS`.
    pub metrics: Arc<Metrics>,
    /// The extension points, and asking them.
    pub hooks: Arc<HookDispatcher>,
    /// Component bytes staged part by part for an upload.
    pub uploads: StagedUploads,
    /// Components' key-value spaces (an operator's `kv.*`).
    pub kv: Arc<dyn KvStore>,
}

// Temporary, until this module imports it from the bus itself.
pub use crate::bus::ack_wait_for;

impl ControlApi {
    /// Registers the service and its endpoints. Fails (and the daemon with it) when the
    /// server refuses them, for example when the account may not use `$SRV` or
    /// `sandbus.api`: a daemon nobody can control must not look healthy.
    pub async fn start(
        self: Arc<Self>,
        client: &async_nats::Client,
    ) -> Result<ControlService, ApiError> {
        let unavailable = |e: async_nats::Error| {
            ApiError::new(
                ApiErrorKind::Unavailable,
                format!("cannot start the control service: {e}"),
            )
        };
        let metrics = self.metrics.clone();
        let service = client
            .service_builder()
            // Every endpoint's `data` in `$SRV.STATS` carries the daemon's counters.
            .stats_handler(move |_, _| metrics.snapshot())
            .description("sandbus control API: components, subscriptions, events, hosts")
            .metadata(HashMap::from([(
                "host".to_owned(),
                self.host_events.host_id().to_owned(),
            )]))
            .start(names::SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(unavailable)?;
        // One group per role (`sandbus.api.<role>`), and this host's own per-host endpoints
        // (`sandbus.api.<role>.host.<id>`): runs go to the host that has the device.
        let mut by_role: Vec<(Role, Vec<_>)> = Role::ALL.iter().map(|r| (*r, Vec::new())).collect();
        for endpoint in endpoint::ALL {
            let prefix = if endpoint.per_host {
                names::host_api_prefix(endpoint.role, self.host_events.host_id())
            } else {
                names::api_role_prefix(endpoint.role)
            };
            let ep = service
                .group(prefix)
                .endpoint_builder()
                .name(endpoint.name.replace('.', "-"))
                .add(endpoint.name)
                .await
                .map_err(unavailable)?;
            let stream = ep
                .map(move |request| (endpoint.name, endpoint.castable, request))
                .boxed();
            if let Some((_, streams)) = by_role.iter_mut().find(|(r, _)| *r == endpoint.role) {
                streams.push(stream);
            }
        }
        Ok(ControlService {
            api: self,
            client: client.clone(),
            service,
            requests: by_role
                .into_iter()
                .map(|(role, streams)| (role, futures::stream::select_all(streams)))
                .collect(),
        })
    }

    async fn answer(
        self: Arc<Self>,
        name: &'static str,
        castable: bool,
        request: service::Request,
        permit: tokio::sync::OwnedSemaphorePermit,
        casts: &TaskTracker,
        max_payload: usize,
    ) {
        let body = request.message.payload.clone();
        let cast = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("cast").and_then(|c| c.as_bool()))
            .unwrap_or(false);
        let result = if cast && !castable {
            Err(ApiError::bad_request(format!(
                "`{name}` is a query; it can't be sent as a cast"
            )))
        } else if cast {
            let request_id = format!(
                "{}-{}",
                self.host_events.host_id(),
                hex::encode(rand::random::<[u8; 8]>())
            );
            let this = self.clone();
            let id = request_id.clone();
            // The cast keeps its place among the concurrent requests until it is done, and
            // shutdown waits for it.
            casts.spawn(async move {
                let result = this.handle(name, &body).await;
                let data = match &result {
                    Ok(value) => {
                        json!({ "request_id": id, "endpoint": name, "ok": true, "result": value })
                    }
                    Err(e) => {
                        json!({ "request_id": id, "endpoint": name, "ok": false, "error": e })
                    }
                };
                this.host_events
                    .emit_or_log(
                        host_events::REQUEST_FINISHED,
                        format!("request/{id}"),
                        Some(id.clone()),
                        data,
                    )
                    .await;
                drop(permit);
            });
            serde_json::to_value(CastAccepted {
                accepted: true,
                request_id,
            })
            .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))
        } else {
            let result = self.handle(name, &body).await;
            drop(permit);
            result
        };
        // Always an answer: a reply the server would not carry (over its max payload) is
        // never delivered, and the client would wait out its timeout thinking no daemon is
        // there. Such a reply becomes an error that says how big it was.
        let result = result.and_then(|value| {
            let body = Bytes::from(value.to_string());
            let room = max_payload.saturating_sub(REPLY_MARGIN);
            if body.len() > room {
                return Err(ApiError::new(
                    ApiErrorKind::Internal,
                    format!(
                        "the reply to `{name}` is {} bytes, more than the server carries ({} \
                         bytes with headers); ask for less (or raise the server's max_payload)",
                        body.len(),
                        max_payload
                    ),
                ));
            }
            Ok(body)
        });
        match result {
            Ok(body) => {
                if let Err(e) = request.respond(Ok(body)).await {
                    tracing::warn!(endpoint = name, error = %e, "could not send a control reply");
                }
            }
            Err(e) => respond_error(&request, name, &e).await,
        }
    }

    /// Handles one request body for `name`; the JSON result or an error.
    pub async fn handle(&self, name: &str, body: &[u8]) -> Result<serde_json::Value, ApiError> {
        match Request::parse(name, body)? {
            Request::Stage(request) => to_json(self.stage(request).await?),
            Request::Upload(request) => to_json(self.upload(request).await?),
            Request::Events(request) => to_json(self.event_page(request).await?),
            Request::RunLog(request) => to_json(self.run_log_page(request).await?),
            Request::KvGet(request) => to_json(self.kv_get(request).await?),
            Request::KvSet(request) => to_json(self.kv_set(request).await?),
            Request::KvDelete(request) => to_json(self.kv_delete(request).await?),
            Request::KvList(request) => to_json(self.kv_list(request).await?),
            Request::List => to_json(self.store.list().await?),
            Request::Remove(request) => to_json(self.remove(request).await?),
            Request::Rollback(request) => to_json(self.rollback(request).await?),
            Request::Subscribe(request) => to_json(self.subscribe(request).await?),
            Request::Unsubscribe(request) => {
                to_json(self.subscriptions.remove(&request.name).await?)
            }
            Request::Status(request) => match request.name {
                Some(name) => to_json(self.subscriptions.status(&name).await?),
                None => {
                    let mut all = Vec::new();
                    for s in self.subscriptions.list().await? {
                        all.push(self.subscriptions.status(&s.listener).await?);
                    }
                    to_json(all)
                }
            },
            Request::Publish(event) => to_json(self.events.publish(&event).await?),
            Request::Hosts => to_json(self.hosts.list().await?),
            Request::Devices => {
                let live: Vec<String> =
                    self.hosts.list().await?.into_iter().map(|h| h.id).collect();
                to_json(self.inventory.list_live(&live).await?)
            }
            Request::Runs => to_json(self.runs.list().await?),
            Request::Run(request) => match self.runs.get(&request.run).await? {
                Some(record) => to_json(record),
                None => Err(ApiError::new(
                    ApiErrorKind::NotFound,
                    format!("no run `{}`; see `sandbus runs`", request.run),
                )),
            },
            Request::RunStart(request) => to_json(self.lab.start(request).await?),
            Request::RunCancel(request) => {
                let cancelled = self.lab.cancel(&request.run);
                if !cancelled && self.runs.get(&request.run).await?.is_none() {
                    return Err(ApiError::new(
                        ApiErrorKind::NotFound,
                        format!("no run `{}`; see `sandbus runs`", request.run),
                    ));
                }
                to_json(CancelReply {
                    run: request.run,
                    cancelled,
                })
            }
            Request::HookAdd(request) => to_json(self.hook_add(request).await?),
            Request::HookRemove(request) => to_json(self.hook_remove(request).await?),
            Request::HookPolicy(request) => to_json(self.hook_policy(request).await?),
            Request::HookList => to_json(self.hooks.points.list().await?),
            Request::HookCall { point, proposed } => {
                to_json(self.hooks.call(&point, proposed).await?)
            }
        }
    }

    /// The current manifest of `name`, or a not-found error saying to upload it.
    async fn uploaded(&self, name: &str) -> Result<crate::bus::ComponentManifest, ApiError> {
        self.store.manifest(name).await?.ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::NotFound,
                format!("no component named `{name}`; upload it first with `sandbus upload`"),
            )
        })
    }

    async fn hook_add(&self, request: HookRequest) -> Result<HookPoint, ApiError> {
        let manifest = self.uploaded(&request.name).await?;
        if manifest.world != World::Hook {
            return Err(ApiError::bad_request(format!(
                "`{}` is a {}, not a hook; only components of world `hook` can be registered at \
                 an extension point",
                request.name, manifest.world
            )));
        }
        let name = request.name.clone();
        Ok(self
            .hooks
            .points
            .update(&request.point, |point| {
                point.hooks.push(name.clone());
                Ok(())
            })
            .await?)
    }

    async fn hook_remove(&self, request: HookRequest) -> Result<HookPoint, ApiError> {
        let (name, at) = (request.name.clone(), request.point.clone());
        Ok(self
            .hooks
            .points
            .update(&request.point, |point| {
                let before = point.hooks.len();
                point.hooks.retain(|h| *h != name);
                if point.hooks.len() == before {
                    return Err(crate::bus::BusError::new(
                        crate::bus::BusErrorKind::NotFound,
                        format!(
                            "`{name}` is not registered at `{at}`; `sandbus hook ls` lists them"
                        ),
                    ));
                }
                Ok(())
            })
            .await?)
    }

    async fn hook_policy(&self, request: HookPolicyRequest) -> Result<HookPoint, ApiError> {
        Ok(self
            .hooks
            .points
            .update(&request.point, |point| {
                if let Some(policy) = request.policy {
                    point.policy = policy;
                }
                if let Some(ms) = request.deadline_ms {
                    point.deadline_ms = ms;
                }
                Ok(())
            })
            .await?)
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<Subscription, ApiError> {
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
}

fn to_json<T: Serialize>(value: T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))
}
