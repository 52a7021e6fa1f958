//! Metering as canonical events: what each component's calls cost, for billing.
//!
//! Every finished call adds its wall time, peak memory and fuel to per-component totals; once
//! per window the totals are emitted as one `sandbus.metering` event and reset. So the volume
//! of metering events depends on the window, never on the number of calls: a listener doing
//! 50,000 tiny calls a second costs one event per window. An event carries, per component:
//! `invocations`, `wall_us` (sum), `peak_memory` (the highest of the window), `fuel` (sum, when
//! the sandbox meters fuel) and `failed`. Its id names the host, the daemon's start and the
//! window's sequence number, so a re-publish is de-duplicated.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::host_events::{self, ComponentUsage, HostEvent, HostEvents};
use crate::sandbox::Metering;

/// Default metering window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// One component's usage in a window. Defined with the `sandbus.metering` event that
/// carries it.
pub use sandbus_host_events::Usage;

/// Accumulates usage and emits it once per window.
#[derive(Debug, Default)]
pub struct MeteringBatcher {
    /// Component → world → usage: looked up by the component's name as borrowed, so a call
    /// of a component already seen in the window allocates nothing.
    totals: Mutex<BTreeMap<String, BTreeMap<&'static str, Usage>>>,
}

impl MeteringBatcher {
    /// Adds one finished call of `component` (of `world`).
    pub fn record(&self, component: &str, world: &'static str, metering: &Metering, failed: bool) {
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let worlds = match totals.get_mut(component) {
            Some(worlds) => worlds,
            None => totals.entry(component.to_owned()).or_default(),
        };
        let usage = worlds.entry(world).or_default();
        usage.invocations += 1;
        usage.failed += u64::from(failed);
        usage.wall_us = usage.wall_us.saturating_add(metering.wall_us);
        usage.peak_memory = usage.peak_memory.max(metering.peak_memory);
        usage.fuel = usage.fuel.saturating_add(metering.fuel.unwrap_or(0));
    }

    /// Takes the totals so far, leaving them empty.
    pub fn take(&self) -> BTreeMap<(String, &'static str), Usage> {
        std::mem::take(&mut *self.totals.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .flat_map(|(component, worlds)| {
                worlds
                    .into_iter()
                    .map(move |(world, usage)| ((component.clone(), world), usage))
            })
            .collect()
    }

    /// Emits a `sandbus.metering` event every `window` while there was usage, until `stop`;
    /// then once more for what is left.
    pub async fn run(
        self: std::sync::Arc<Self>,
        events: HostEvents,
        started_at: String,
        window: Duration,
        stop: CancellationToken,
    ) {
        let mut sequence = 0u64;
        let mut opened = crate::bus::now_rfc3339();
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(window) => false,
            };
            let totals = self.take();
            let closed = crate::bus::now_rfc3339();
            if !totals.is_empty() {
                sequence += 1;
                let metered = host_events::Metering {
                    host: events.host_id().to_owned(),
                    window_start: opened,
                    window_end: closed.clone(),
                    components: totals
                        .into_iter()
                        .map(|((component, world), usage)| ComponentUsage {
                            component,
                            world: world.to_owned(),
                            usage,
                        })
                        .collect(),
                };
                let id = format!(
                    "{}/{}/{started_at}/{sequence}",
                    host_events::Metering::TYPE,
                    events.host_id()
                );
                events
                    .emit_or_log(&metered, id, Some(events.host_id().to_owned()))
                    .await;
            }
            opened = closed;
            if stopping {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_adds_up_per_component_and_take_resets_it() {
        let batcher = MeteringBatcher::default();
        let call = |wall_us, peak_memory, fuel| Metering {
            wall_us,
            peak_memory,
            fuel,
            published: 0,
            throttle: Default::default(),
        };
        batcher.record("a", "listener", &call(10, 100, Some(5)), false);
        batcher.record("a", "listener", &call(30, 50, Some(7)), true);
        batcher.record("b", "script", &call(1000, 10, None), false);
        let totals = batcher.take();
        assert_eq!(
            totals[&("a".to_owned(), "listener")],
            Usage {
                invocations: 2,
                failed: 1,
                wall_us: 40,
                peak_memory: 100,
                fuel: 12
            }
        );
        assert_eq!(totals[&("b".to_owned(), "script")].invocations, 1);
        assert!(batcher.take().is_empty());
    }
}
