//! The trivial listener: `handle` returns `ok` at once and touches nothing (no log, no kv, no
//! bus). The benchmark uses it to measure what the host itself costs per event: instantiation,
//! the call, and tearing the instance down.

wit_bindgen::generate!({
    path: "../../wit",
    world: "listener",
});

use exports::sandbus::host::handler::{Event, Guest, Outcome};

/// The component: every event is acknowledged without looking at it.
struct Noop;

impl Guest for Noop {
    fn handle(_event: Event) -> Outcome {
        Outcome::Ok
    }
}

export!(Noop);
