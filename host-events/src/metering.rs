//! What components' calls cost, per window: `sandbus.metering`.
//!
//! A daemon adds every finished call to per-component totals and emits them once per window,
//! so the number of metering events depends on the window, never on the number of calls.
//! Billing charges `invocations`, `wall_us` and `fuel` from them.

use serde::{Deserialize, Serialize};

use crate::HostEvent;

/// One component's usage in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Calls finished.
    pub invocations: u64,
    /// Calls that failed (trap, timeout, memory limit...).
    pub failed: u64,
    /// Wall time of all calls, microseconds.
    pub wall_us: u64,
    /// The highest linear memory any call reached, bytes.
    pub peak_memory: u64,
    /// Fuel consumed by all calls (0 when fuel is not metered).
    pub fuel: u64,
}

/// One component's line in a [`Metering`] window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentUsage {
    /// The component's name.
    pub component: String,
    /// The world it ran as (`listener`, `script`, `hook`): a component has one line per world
    /// it was called as.
    pub world: String,
    /// What its calls cost in the window.
    pub usage: Usage,
}

/// `sandbus.metering`: the usage of every component called on a host over one window (only
/// windows with calls are emitted). Its subject is the host id; its id names the host, the
/// daemon's start and the window's number, so a re-publish is de-duplicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metering {
    /// The host whose calls these are.
    pub host: String,
    /// When the window opened (RFC 3339).
    pub window_start: String,
    /// When it closed (RFC 3339); the next window opens then.
    pub window_end: String,
    /// One line per component and world called in the window, by name then world.
    pub components: Vec<ComponentUsage>,
}

impl HostEvent for Metering {
    const TYPE: &'static str = "sandbus.metering";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::assert_same_json;

    #[test]
    fn metering_lists_each_component_and_world_with_its_usage() {
        let billing = Usage {
            invocations: 3,
            failed: 1,
            wall_us: 900,
            peak_memory: 65536,
            fuel: 0,
        };
        let smoke = Usage {
            invocations: 1,
            wall_us: 5,
            peak_memory: 1,
            fuel: 77,
            ..Usage::default()
        };
        let (host, opened, closed) = ("h1", "2026-11-22T10:00:00.123Z", "2026-11-22T10:00:10.123Z");
        // The daemon's call site: one `json!` per component, then the window's.
        let components: Vec<serde_json::Value> = [("billing", "listener", billing), ("smoke", "script", smoke)]
            .into_iter()
            .map(|(component, world, usage)| {
                json!({ "component": component, "world": world, "usage": usage })
            })
            .collect();
        assert_same_json(
            &Metering {
                host: host.into(),
                window_start: opened.into(),
                window_end: closed.into(),
                components: vec![
                    ComponentUsage {
                        component: "billing".into(),
                        world: "listener".into(),
                        usage: billing,
                    },
                    ComponentUsage {
                        component: "smoke".into(),
                        world: "script".into(),
                        usage: smoke,
                    },
                ],
            },
            json!({
                "host": host,
                "window_start": opened,
                "window_end": closed,
                "components": components,
            }),
        );
    }

    #[test]
    fn usage_writes_every_counter() {
        assert_eq!(
            serde_json::to_value(Usage::default()).unwrap(),
            json!({ "invocations": 0, "failed": 0, "wall_us": 0, "peak_memory": 0, "fuel": 0 })
        );
    }
}
