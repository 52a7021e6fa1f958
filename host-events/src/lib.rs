//! The `sandbus.*` events a sandbus daemon emits, one typed definition per event type.
//!
//! A daemon reports what it sees and does as ordinary canonical events (CloudEvents JSON on
//! `events.sandbus.…`); this crate says what each one's `data` holds. The daemon builds its
//! events from these types, and a guest that reads them (the billing listener reads
//! [`LeaseReleased`] and [`Metering`]) deserialises the same types, so the two sides cannot
//! drift apart.
//!
//! Every event implements [`HostEvent`]: its CloudEvents `type` is [`HostEvent::TYPE`] and its
//! `data` is [`HostEvent::to_data`]. The daemon always writes every field (an absent optional
//! value is `null`, never a missing key), so a reader may require them all.
//!
//! Some events carry a record only the daemon knows the type of (a component's manifest, a
//! run's report, a control request's result, a hook's answer). Those events are generic over
//! it (a [`Record`]), with [`serde_json::Value`] as the default: the daemon fills in its own
//! type, a guest reads the record as a value (`ComponentAdded` is
//! `ComponentAdded<serde_json::Value>`).
//!
//! Plain data only (serde): this crate builds for the host and for `wasm32-wasip2` guests.

mod components;
mod devices;
mod hooks;
mod host;
mod listeners;
mod metering;
mod requests;
mod runs;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use components::{ComponentAdded, ComponentRemoved};
pub use devices::{DeviceAttached, DeviceDetached, DeviceInfo, Speed};
pub use hooks::{HookDenied, Proposal};
pub use host::{HostStarted, HostStopped};
pub use listeners::{ListenerDeadLettered, ListenerFailed, ListenerThrottled};
pub use metering::{ComponentUsage, Metering, Usage};
pub use requests::RequestFinished;
pub use runs::{LeaseAcquired, LeaseReleased, RunFinished, RunVerdict};

/// One kind of event a daemon emits: its data, and the CloudEvents `type` it goes out as.
pub trait HostEvent: Serialize + DeserializeOwned {
    /// The event's CloudEvents `type`, `sandbus.<what>.<happened>`; the event goes out on
    /// `events.<type>`.
    const TYPE: &'static str;

    /// The event's `data` as the daemon publishes it: compact JSON whose object keys are in
    /// sorted order at every level (serialised through a [`serde_json::Value`]), as daemons
    /// have always written them, whatever order the fields are declared in.
    ///
    /// Fails only if the event holds something JSON cannot represent (a map whose keys are
    /// not strings), which no event of this crate does with the daemon's records.
    fn to_data(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_value(self).and_then(|value| serde_json::to_vec(&value))
    }
}

/// A record of the daemon's own that an event carries whole or in part (a component's
/// manifest, a run's report, a request's result, a hook's answer): anything that goes to JSON
/// and back. The events that carry one are generic over it, [`serde_json::Value`] by default.
pub trait Record: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> Record for T {}

#[cfg(test)]
mod testing {
    //! What every event's test checks.

    use std::fmt::Debug;

    use super::HostEvent;

    /// `event` goes out as exactly the bytes the daemon's former `json!` call site built
    /// (`before`), and reads back as itself.
    pub(crate) fn assert_same_json<E: HostEvent + PartialEq + Debug>(
        event: &E,
        before: serde_json::Value,
    ) {
        let data = event.to_data().expect("an event serialises");
        let before = serde_json::to_vec(&before).expect("a value serialises");
        assert_eq!(
            String::from_utf8_lossy(&data),
            String::from_utf8_lossy(&before),
            "{}",
            E::TYPE
        );
        let back: E = serde_json::from_slice(&data).expect("an event reads back");
        assert_eq!(&back, event, "{}", E::TYPE);
    }
}
