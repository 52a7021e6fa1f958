//! The control API served by every daemon (see [`crate::api`] for the wire format): what it
//! works on ([`ControlApi`]), and each request taken from the bus to the room of its
//! endpoint group. Receiving and answering on NATS is [`crate::bus::ControlService`]'s; it
//! hands each request over bus-neutral, as a [`ControlRequest`].
//!
//! - the endpoint checked against the role it came on, the body read, a call or a cast, in
//!   [`router`];
//! - each request to its room, its reply of the type the endpoint table gives, here;
//! - `component.*` (staging, upload, removal, rollback) in [`components`];
//! - `listener.*` in [`subscriptions`];
//! - `hook.*` in [`hooks`];
//! - hosts, devices and runs (`host.list`, `device.list`, `run.*`) in [`lab`];
//! - pages of events and run logs, components' kv spaces (`event.list`, `run.log`, `kv.*`)
//!   in [`reads`].
//!
//! Any daemon answers any request that is not per host: the state they change (manifests,
//! subscriptions, consumers) is cluster-wide, and every daemon reacts to the change through
//! its watches, not through the request.

mod components;
mod hooks;
mod lab;
mod reads;
mod router;
mod subscriptions;

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use super::components::LoadedComponents;
use super::hooks::HookDispatcher;
use super::host_events::{HostEvents, RequestFinished};
use super::lab::DeviceLab;
use super::metrics::Metrics;
use crate::api::{ApiError, Request, endpoint as e};
use crate::bus::{
    ComponentStore, ControlHandler, ControlRequest, DeviceInventory, EventStream, HostRegistry,
    RunStore, StagedUploads, SubscriptionStore,
};
use crate::imports::kv::KvStore;
use crate::sandbox::Sandbox;
use router::reply;

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

impl ControlHandler for ControlApi {
    fn host_id(&self) -> &str {
        self.host_events.host_id()
    }

    fn answer(
        self: Arc<Self>,
        request: ControlRequest,
    ) -> impl Future<Output = Result<Value, ApiError>> + Send + 'static {
        router::route(
            self,
            request.role,
            request.endpoint,
            request.body,
            request.slot,
        )
    }
}

impl router::Handler for ControlApi {
    fn host_id(&self) -> &str {
        self.host_events.host_id()
    }

    async fn handle(&self, request: Request) -> Result<Value, ApiError> {
        match request {
            Request::Stage(r) => reply::<e::Stage>(self.stage(r).await?),
            Request::Upload(r) => reply::<e::Upload>(self.upload(r).await?),
            Request::List => reply::<e::List>(self.store.list().await?),
            Request::Remove(r) => reply::<e::Remove>(self.remove(r).await?),
            Request::Rollback(r) => reply::<e::Rollback>(self.rollback(r).await?),
            Request::Configure(r) => reply::<e::Configure>(self.configure(r).await?),
            Request::Subscribe(r) => reply::<e::Subscribe>(self.subscribe(r).await?),
            Request::Unsubscribe(r) => {
                reply::<e::Unsubscribe>(self.subscriptions.remove(&r.name).await?)
            }
            Request::Status(r) => reply::<e::Status>(self.status(r).await?),
            Request::Publish(event) => reply::<e::Publish>(self.events.publish(&event).await?),
            Request::Events(r) => reply::<e::Events>(self.event_page(r).await?),
            Request::Hosts => reply::<e::Hosts>(self.hosts.list().await?),
            Request::Devices => reply::<e::Devices>(self.devices().await?),
            Request::Runs => reply::<e::Runs>(self.runs.list().await?),
            Request::Run(r) => reply::<e::Run>(self.run(r).await?),
            Request::RunLog(r) => reply::<e::RunLog>(self.run_log_page(r).await?),
            Request::RunStart(r) => reply::<e::RunStart>(self.lab.start(r).await?),
            Request::RunCancel(r) => reply::<e::RunCancel>(self.run_cancel(r).await?),
            Request::HookAdd(r) => reply::<e::HookAdd>(self.hook_add(r).await?),
            Request::HookRemove(r) => reply::<e::HookRemove>(self.hook_remove(r).await?),
            Request::HookPolicy(r) => reply::<e::HookPolicy>(self.hook_policy(r).await?),
            Request::HookList => reply::<e::HookList>(self.hooks.points.list().await?),
            Request::HookCall { point, proposed } => {
                reply::<e::HookCall>(self.hooks.call(&point, proposed).await?)
            }
            Request::KvGet(r) => reply::<e::KvGet>(self.kv_get(r).await?),
            Request::KvSet(r) => reply::<e::KvSet>(self.kv_set(r).await?),
            Request::KvDelete(r) => reply::<e::KvDelete>(self.kv_delete(r).await?),
            Request::KvList(r) => reply::<e::KvList>(self.kv_list(r).await?),
        }
    }

    async fn cast_finished(&self, finished: RequestFinished<Value, ApiError>) {
        let id = finished.request_id.clone();
        self.host_events
            .emit_or_log(&finished, format!("request/{id}"), Some(id))
            .await;
    }
}
