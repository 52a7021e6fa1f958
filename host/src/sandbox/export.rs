//! What differs between the worlds' calls: which export is called, what it is given and how
//! its result is read. [`Export`] is that difference, implemented by each world's instance
//! type; everything else about a call is the one call path of `call.rs`.

use wasmtime::Store;

use super::prepared::Pre;
use super::{HandlerOutcome, HookDecision, InvocationState, Report, World};
use crate::bindings::hook::exports::sandbus::host::check::Decision as WitDecision;
use crate::bindings::hook::{Hook, HookPre};
use crate::bindings::listener::exports::sandbus::host::handler::Outcome as WitOutcome;
use crate::bindings::listener::{Listener, ListenerPre};
use crate::bindings::script::exports::sandbus::host::runner::Report as WitReport;
use crate::bindings::script::{Script, ScriptPre};
use crate::bindings::types::Event as WitEvent;
use crate::bindings::wasmcloud_messaging::wasmcloud::messaging::types::BrokerMessage;
use crate::bindings::wasmcloud_messaging::{
    Listener as MessagingListener, ListenerPre as MessagingListenerPre,
};
use crate::event::CanonicalEvent;
use crate::subject::event_subject;

/// What the call path needs to know of one world's export: implemented by the instance type
/// of each world's bindings ([`Listener`], [`Script`], [`Hook`]), and of wasmCloud's
/// messaging handler, a listener of another shape ([`MessagingListener`]).
pub(super) trait Export: Sized + Send + Sync {
    /// The world the export belongs to.
    const WORLD: World;
    /// The world's pre-linked component.
    type Pre: Sync;
    /// What the caller hands in, in the host's form.
    type Given: Send;
    /// What the export is passed, in its WIT form.
    type Input: From<Self::Given> + Send + Sync;
    /// What the export returns, in its WIT form.
    type Returned: Send;
    /// What the caller gets back, in the host's form.
    type Output;

    /// The world's pre-linked component, if `pre` is of this world.
    fn pre(pre: &Pre) -> Option<&Self::Pre>;

    /// Bytes of `given` counted against the payload limit.
    fn size(given: &Self::Given) -> usize;

    /// The depth of the event `given` is (0 when the call handles no event).
    fn depth(_given: &Self::Given) -> u32 {
        0
    }

    /// A fresh instance of `pre` in `store`.
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<InvocationState>,
    ) -> impl Future<Output = wasmtime::Result<Self>> + Send;

    /// Calls the export of this instance with `input`.
    fn call_export(
        &self,
        store: &mut Store<InvocationState>,
        input: &Self::Input,
    ) -> impl Future<Output = wasmtime::Result<Self::Returned>> + Send;

    /// What the export returned in the host's form, with its size against the payload limit.
    fn read(returned: Self::Returned) -> (usize, Self::Output);
}

impl Export for Listener {
    const WORLD: World = World::Listener;
    type Pre = ListenerPre<InvocationState>;
    type Given = CanonicalEvent;
    type Input = WitEvent;
    type Returned = WitOutcome;
    type Output = HandlerOutcome;

    fn pre(pre: &Pre) -> Option<&Self::Pre> {
        match pre {
            Pre::Listener(pre) => Some(pre),
            _ => None,
        }
    }

    fn size(event: &CanonicalEvent) -> usize {
        event.size()
    }

    fn depth(event: &CanonicalEvent) -> u32 {
        event.depth
    }

    async fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<InvocationState>,
    ) -> wasmtime::Result<Self> {
        pre.instantiate_async(store).await
    }

    async fn call_export(
        &self,
        store: &mut Store<InvocationState>,
        event: &WitEvent,
    ) -> wasmtime::Result<WitOutcome> {
        self.sandbus_host_handler().call_handle(store, event).await
    }

    fn read(returned: WitOutcome) -> (usize, HandlerOutcome) {
        let outcome = HandlerOutcome::from(returned);
        (outcome.size(), outcome)
    }
}

/// An event as a broker message: on its subject on the events stream, its body the event
/// as structured-mode CloudEvents JSON (the same bytes the stream holds for an event
/// published in structured mode), no reply expected.
impl From<CanonicalEvent> for BrokerMessage {
    fn from(event: CanonicalEvent) -> Self {
        Self {
            subject: event_subject(&event.ty),
            body: event.to_json(),
            reply_to: None,
        }
    }
}

impl Export for MessagingListener {
    const WORLD: World = World::Listener;
    type Pre = MessagingListenerPre<InvocationState>;
    type Given = CanonicalEvent;
    type Input = BrokerMessage;
    type Returned = Result<(), String>;
    type Output = HandlerOutcome;

    fn pre(pre: &Pre) -> Option<&Self::Pre> {
        match pre {
            Pre::MessagingListener(pre) => Some(pre),
            _ => None,
        }
    }

    fn size(event: &CanonicalEvent) -> usize {
        event.size()
    }

    fn depth(event: &CanonicalEvent) -> u32 {
        event.depth
    }

    async fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<InvocationState>,
    ) -> wasmtime::Result<Self> {
        pre.instantiate_async(store).await
    }

    async fn call_export(
        &self,
        store: &mut Store<InvocationState>,
        message: &BrokerMessage,
    ) -> wasmtime::Result<Result<(), String>> {
        self.wasmcloud_messaging_handler()
            .call_handle_message(store, message)
            .await
    }

    /// `Ok` acknowledges the event; an `Err` rejects it with the guest's text as the reason
    /// (retried while deliveries remain, then dead-lettered), as a sandbus listener's
    /// `reject` is.
    fn read(returned: Result<(), String>) -> (usize, HandlerOutcome) {
        let outcome = match returned {
            Ok(()) => HandlerOutcome::Ok,
            Err(reason) => HandlerOutcome::Reject { reason },
        };
        (outcome.size(), outcome)
    }
}

impl Export for Script {
    const WORLD: World = World::Script;
    type Pre = ScriptPre<InvocationState>;
    type Given = Vec<(String, String)>;
    type Input = Vec<(String, String)>;
    type Returned = WitReport;
    type Output = Report;

    fn pre(pre: &Pre) -> Option<&Self::Pre> {
        match pre {
            Pre::Script(pre) => Some(pre),
            _ => None,
        }
    }

    fn size(args: &Vec<(String, String)>) -> usize {
        args.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    async fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<InvocationState>,
    ) -> wasmtime::Result<Self> {
        pre.instantiate_async(store).await
    }

    async fn call_export(
        &self,
        store: &mut Store<InvocationState>,
        args: &Vec<(String, String)>,
    ) -> wasmtime::Result<WitReport> {
        self.sandbus_host_runner().call_run(store, args).await
    }

    fn read(returned: WitReport) -> (usize, Report) {
        let report = Report::from(returned);
        (report.size(), report)
    }
}

impl Export for Hook {
    const WORLD: World = World::Hook;
    type Pre = HookPre<InvocationState>;
    type Given = CanonicalEvent;
    type Input = WitEvent;
    type Returned = Result<WitDecision, String>;
    type Output = HookDecision;

    fn pre(pre: &Pre) -> Option<&Self::Pre> {
        match pre {
            Pre::Hook(pre) => Some(pre),
            _ => None,
        }
    }

    fn size(proposed: &CanonicalEvent) -> usize {
        proposed.size()
    }

    // No `depth`: a proposal is not an event the hook handles, so what the hook publishes
    // starts at depth 0.

    async fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<InvocationState>,
    ) -> wasmtime::Result<Self> {
        pre.instantiate_async(store).await
    }

    async fn call_export(
        &self,
        store: &mut Store<InvocationState>,
        proposed: &WitEvent,
    ) -> wasmtime::Result<Result<WitDecision, String>> {
        self.sandbus_host_check().call_check(store, proposed).await
    }

    fn read(returned: Result<WitDecision, String>) -> (usize, HookDecision) {
        let decision = HookDecision::from(returned);
        (decision.size(), decision)
    }
}
