//! `sandbus:host/usb`: the one USB device a script's run leased, and nothing else.
//!
//! The daemon leases a device for a run (exclusively, cluster-wide) and hands the sandbox a
//! [`LeasedDevice`] in the call's capabilities. The host functions (in `host.rs`) give the
//! guest that device, refuse any other with `not-leased`, and run every transfer on a
//! blocking thread (a transfer may block for its whole timeout) with its timeout cut to what
//! is left of the run's deadline. Bulk and interrupt transfers wait in slices of at most
//! [`host::TRANSFER_SLICE`], so when the run ends (deadline, cancel) the device is let go of
//! within one slice; control transfers are capped at [`host::MAX_CONTROL_TIMEOUT`]. Which device, and whether the guest may have one at all,
//! is decided outside: this module never scans or selects.

pub mod host;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasData, Linker, ResourceTable};

use crate::bindings::script::sandbus::host::usb as wit;
use crate::devices::{DeviceBackend, DeviceHandle, DeviceInfo};

/// Most handles (devices and open handles together) one run may hold at once.
const MAX_RESOURCES: usize = 64;

/// The device a run leased: its identity and the backend that drives it.
#[derive(Clone)]
pub struct LeasedDevice {
    /// Which device.
    pub info: DeviceInfo,
    /// The backend it is on (simulated or rusb).
    pub backend: Arc<dyn DeviceBackend>,
    /// `Some` when the call runs on a thread of its own (the device lab runs each script on
    /// one): transfers then block that thread directly instead of going through tokio's
    /// blocking pool, whose thread handoff is a large share of a short transfer's cost. The
    /// token is the run's stop: cancelling it ends a transfer at its next slice, as the end
    /// of the call does. `None`: the call shares an executor thread, and every transfer goes
    /// to the blocking pool.
    pub own_thread: Option<CancellationToken>,
}

impl std::fmt::Debug for LeasedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedDevice")
            .field("info", &self.info)
            .field("backend", &self.backend.name())
            .field("own_thread", &self.own_thread.is_some())
            .finish()
    }
}

/// The guest's `device` resource: the leased device, not yet opened.
pub struct UsbDevice {
    info: DeviceInfo,
}

/// The guest's `device-handle` resource: the leased device, open. Shared with the blocking
/// thread a transfer runs on; closed when the guest drops it or the call ends.
pub struct UsbDeviceHandle {
    handle: Arc<Mutex<Box<dyn DeviceHandle>>>,
}

/// Per-invocation state of the `usb` interface.
pub struct UsbState {
    /// The run's device, or `None` (then every call answers `no-device`).
    pub leased: Option<LeasedDevice>,
    /// The call's deadline: no transfer may outlast it.
    pub deadline: Instant,
    /// Whether a handle is open (one at a time per run).
    open: bool,
    /// Cancelled when the call ends (the store is dropped, e.g. on cancel) or its run is
    /// stopped ([`LeasedDevice::own_thread`]): a transfer still running stops at its next
    /// slice, so the device is free for the reset.
    ended: CancellationToken,
    /// Whether transfers may block the calling thread ([`LeasedDevice::own_thread`]).
    inline: bool,
    table: ResourceTable,
}

impl Drop for UsbState {
    fn drop(&mut self) {
        self.ended.cancel();
    }
}

impl UsbState {
    /// State for one call: the leased device (if any) and the call's deadline.
    pub fn new(leased: Option<LeasedDevice>, deadline: Instant) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let stop = leased.as_ref().and_then(|l| l.own_thread.as_ref());
        Self {
            inline: stop.is_some(),
            ended: stop.map_or_else(CancellationToken::new, CancellationToken::child_token),
            leased,
            deadline,
            open: false,
            table,
        }
    }
}

/// `HasData` marker: the `usb` host functions see a [`UsbState`].
pub struct Usb;

impl HasData for Usb {
    type Data<'a> = &'a mut UsbState;
}

/// Adds `sandbus:host/usb` to a linker; `get` finds the call's [`UsbState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut UsbState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Usb>(linker, get)
}
