//! A [`PreparedComponent`]: a compiled, pre-linked component with its policy, and the calls
//! a caller makes of it, one per world (`handle` an event, `run` a script, `check` a
//! proposal). Each is the same call under other inputs: they all go down one call path
//! (`call.rs`), which tells a failure the same way whatever the world.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::Engine;

use super::budget::MemoryBudget;
use super::{
    Capabilities, Digest, HandlerOutcome, HookDecision, Invocation, InvocationState, InvokeError,
    Limits, ListenerHandler, Report, World,
};
use crate::bindings::hook::{Hook, HookPre};
use crate::bindings::listener::{Listener, ListenerPre};
use crate::bindings::script::{Script, ScriptPre};
use crate::bindings::wasmcloud_messaging::{
    Listener as MessagingListener, ListenerPre as MessagingListenerPre,
};
use crate::component_config::ComponentConfig;
use crate::event::CanonicalEvent;
use crate::imports::bus::PublishRate;
use crate::imports::kv_read::KvReadGrants;
use crate::subject::PublishGrants;

/// The pre-linked component of one world: only its own world's export can be called.
#[derive(Clone)]
pub(super) enum Pre {
    Listener(ListenerPre<InvocationState>),
    /// A listener exporting wasmCloud's messaging handler instead of `sandbus:host/handler`.
    MessagingListener(MessagingListenerPre<InvocationState>),
    Script(ScriptPre<InvocationState>),
    Hook(HookPre<InvocationState>),
}

/// A compiled, pre-linked component with its policy, ready to be called many times.
pub struct PreparedComponent {
    pub(super) name: Arc<str>,
    pub(super) digest: Digest,
    pub(super) world: World,
    pub(super) pre: Pre,
    pub(super) limits: Limits,
    pub(super) grants: Arc<PublishGrants>,
    pub(super) kv_read: Arc<KvReadGrants>,
    /// Its `wasi:config/store` values, shared by every call.
    pub(super) config: Arc<ComponentConfig>,
    pub(super) rate: Arc<PublishRate>,
    /// One permit per instance the component may have at once.
    pub(super) slots: Arc<Semaphore>,
    /// The sandbox's pool slots, shared by all components.
    pub(super) pool: Arc<Semaphore>,
    /// The sandbox's memory budget, shared by all components.
    pub(super) budget: Arc<MemoryBudget>,
    pub(super) engine: Engine,
    /// Whether the engine meters fuel.
    pub(super) fuel: bool,
    /// The engine's wasm stack size, in bytes.
    pub(super) max_wasm_stack: usize,
}

impl PreparedComponent {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The content digest of its bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Its role.
    pub fn world(&self) -> World {
        self.world
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The interface its events arrive through, for a listener.
    pub fn listener_handler(&self) -> Option<ListenerHandler> {
        match self.pre {
            Pre::Listener(_) => Some(ListenerHandler::Sandbus),
            Pre::MessagingListener(_) => Some(ListenerHandler::WasmcloudMessaging),
            Pre::Script(_) | Pre::Hook(_) => None,
        }
    }

    /// Hands one event to a listener, on a fresh instance: as the event itself to a sandbus
    /// listener, as a broker message to a wasmCloud messaging one (its `Err` a `reject`).
    ///
    /// Waits for a free instance slot first (backpressure, never shedding). An event larger
    /// than the payload limit is refused without running anything.
    pub async fn handle(
        &self,
        event: CanonicalEvent,
        caps: &Capabilities,
    ) -> Result<Invocation<HandlerOutcome>, InvokeError> {
        match self.pre {
            Pre::MessagingListener(_) => {
                self.call::<MessagingListener>(event, caps, self.limits.timeout)
                    .await
            }
            _ => {
                self.call::<Listener>(event, caps, self.limits.timeout)
                    .await
            }
        }
    }

    /// Runs a script once with `args`, on a fresh instance, under the component's timeout.
    pub async fn run(
        &self,
        args: Vec<(String, String)>,
        caps: &Capabilities,
    ) -> Result<Invocation<Report>, InvokeError> {
        self.run_for(args, caps, self.limits.timeout).await
    }

    /// Runs a script once with `args` under `timeout` instead of the component's own (a run
    /// started with `sandbus run --timeout`). Every other limit still applies.
    pub async fn run_for(
        &self,
        args: Vec<(String, String)>,
        caps: &Capabilities,
        timeout: Duration,
    ) -> Result<Invocation<Report>, InvokeError> {
        self.call::<Script>(args, caps, timeout).await
    }

    /// Asks a hook about a proposed operation, on a fresh instance, under `timeout` when it
    /// is shorter than the component's own (the extension point's deadline).
    ///
    /// A proposal larger than the payload limit is refused without running anything.
    pub async fn check(
        &self,
        proposed: CanonicalEvent,
        caps: &Capabilities,
        timeout: Duration,
    ) -> Result<Invocation<HookDecision>, InvokeError> {
        self.call::<Hook>(proposed, caps, timeout.min(self.limits.timeout))
            .await
    }
}
