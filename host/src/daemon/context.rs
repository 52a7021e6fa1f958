//! [`HostContext`]: what every part of a daemon that runs guests shares, built once.
//!
//! The listener dispatchers, the device lab and the hook dispatcher all run components of
//! this host, and each needs the same things to do so: the host's id, the components loaded
//! here, the capabilities every call starts from, and where calls are counted (metrics) and
//! billed (metering). [`HostContext`] is that bundle, so each of them takes it whole and
//! names only what is its own beside it.
//!
//! This host's events ([`HostEvents`](super::host_events::HostEvents)) are not in it: they
//! need the events stream, a NATS stream, and the dispatcher's rules are tested without a
//! server. The dispatcher reaches them through its
//! [`ListenerFailures`](super::ListenerFailures); the lab and the hook dispatcher take them
//! beside the context.

use std::sync::Arc;

use tokio::sync::watch;

use super::components::{LoadedComponent, LoadedComponents, Unready};
use super::metering::MeteringBatcher;
use super::metrics::Metrics;
use crate::sandbox::Capabilities;

/// What the daemon's guest runners (listener dispatchers, the device lab, the hook
/// dispatcher) share: built once when the daemon starts, and cheap to clone (every field is
/// shared), so each runner keeps its own copy.
#[derive(Clone)]
pub struct HostContext {
    /// This host's id: on failure records, run records, device events and hook answers.
    pub host_id: Arc<str>,
    /// The components loaded here: [`LoadedComponents`] in the daemon.
    pub components: Arc<dyn ComponentSource>,
    /// What every call reaches (log discarded, bus, kv; no device). A runner that gives a
    /// call more (a run's log and its leased device) builds on a copy of these.
    pub capabilities: Capabilities,
    /// Counters for the metrics endpoint and `$SRV.STATS`.
    pub metrics: Arc<Metrics>,
    /// Usage per component, emitted as `sandbus.metering` events.
    pub metering: Arc<MeteringBatcher>,
}

/// Where the guest runners get the component loaded under a name: [`LoadedComponents`] in
/// the daemon, a fixed set in the dispatcher's tests.
pub trait ComponentSource: Send + Sync {
    /// The component loaded under `name` now, if any.
    fn get(&self, name: &str) -> Option<Arc<LoadedComponent>>;

    /// A receiver that changes whenever a component is loaded, swapped or removed.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Why `name` is not loaded here (compiling, failed, unknown), for callers that say so.
    fn unready(&self, _name: &str) -> Unready {
        Unready::Unknown
    }
}

impl ComponentSource for LoadedComponents {
    fn get(&self, name: &str) -> Option<Arc<LoadedComponent>> {
        LoadedComponents::get(self, name)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        LoadedComponents::changes(self)
    }

    fn unready(&self, name: &str) -> Unready {
        LoadedComponents::unready(self, name)
    }
}
