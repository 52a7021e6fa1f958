//! USB devices: the backends that find and drive them, behind one trait.
//!
//! Two backends implement [`DeviceBackend`]:
//!
//! - [`rusb_backend`]: real hardware through libusb. It creates its own
//!   `rusb::Context` and never touches libusb's global context (`rusb::has_hotplug()` panics
//!   where libusb cannot initialise). Without libusb it logs once and reports no devices.
//! - [`simulated`]: devices described in a TOML file (descriptors, serial, and how each
//!   endpoint behaves: bulk loopback echo, fixed control answers, delays, stalls, a scripted
//!   detach). Tests and demos run on it; `sandbus daemon --simulate devices.toml` uses it.
//!
//! Every method here blocks (a transfer may take up to its timeout): callers run them off the
//! async executor (`spawn_blocking`). This module knows nothing of NATS, leases or wasm; the
//! daemon decides who may open a device, and `imports::usb` is the guest's view of one.

pub mod descriptor;
pub mod rusb_backend;
pub mod simulated;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Input, InvalidInput};

/// What went wrong talking to a device: its [`UsbErrorKind`] (callers match on it), a message
/// for a person, and libusb's (or the OS's, or the device file parser's) error underneath as
/// its `source` ([`crate::error::Error`]).
pub type UsbError = crate::error::Error<UsbErrorKind>;

/// The kinds of [`UsbError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsbErrorKind {
    /// The transfer did not complete within its timeout.
    Timeout,
    /// The endpoint stalled (the device refused the request).
    Stall,
    /// The device is gone (unplugged, or detached mid-run).
    Disconnected,
    /// No device with that id on this host.
    NotFound,
    /// The interface is not claimed, or is claimed by someone else.
    NotClaimed,
    /// Another process or driver holds the device or interface.
    Busy,
    /// The operating system refused access (permissions).
    Access,
    /// The request itself is wrong (unknown endpoint, wrong direction, bad length).
    InvalidArgument,
    /// The device sent more data than asked for.
    Overflow,
    /// USB is not available on this host (libusb could not initialise).
    Unavailable,
    /// Any other I/O failure; the message says which.
    Io,
}

/// A device as this host sees it: enough to list it, select it and describe it to a guest.
/// Defined with the host events that carry it (`sandbus.device.attached`...).
pub use sandbus_host_events::{DeviceInfo, Speed};

/// Direction and kind of a control request, as in the `bmRequestType` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlSetup {
    /// The full `bmRequestType` byte (direction bit 7, type bits 5-6, recipient bits 0-4).
    pub request_type: u8,
    /// `bRequest`.
    pub request: u8,
    /// `wValue`.
    pub value: u16,
    /// `wIndex`.
    pub index: u16,
}

impl ControlSetup {
    /// Whether this is a device-to-host (IN) request.
    pub fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }
}

/// The endpoint kinds with plain reads and writes, which [`DeviceHandle::read`] and
/// [`DeviceHandle::write`] take (control transfers carry a setup packet and have their own
/// calls). Displayed as the guest's calls name it: `bulk`, `interrupt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// Bulk: whatever bandwidth is left, retried until delivered.
    Bulk,
    /// Interrupt: polled at the endpoint's interval.
    Interrupt,
}

impl std::fmt::Display for TransferKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransferKind::Bulk => "bulk",
            TransferKind::Interrupt => "interrupt",
        })
    }
}

impl From<TransferKind> for descriptor::TransferType {
    fn from(kind: TransferKind) -> Self {
        match kind {
            TransferKind::Bulk => Self::Bulk,
            TransferKind::Interrupt => Self::Interrupt,
        }
    }
}

/// The standard GET_DESCRIPTOR request for the device descriptor (18 bytes).
pub const GET_DEVICE_DESCRIPTOR: ControlSetup = ControlSetup {
    request_type: 0x80,
    request: 0x06,
    value: 0x0100,
    index: 0,
};

/// Finds devices and opens them. One per daemon; shared between threads.
pub trait DeviceBackend: Send + Sync {
    /// `rusb` or `simulated`, for logs and `sandbus devices`.
    fn name(&self) -> &'static str;

    /// The devices present now. A fresh scan each call (the daemon diffs successive scans
    /// into `device.attached` / `device.detached`). A backend that cannot work on this host
    /// returns an empty list and says why through [`DeviceBackend::unavailable`].
    fn scan(&self) -> Result<Vec<DeviceInfo>, UsbError>;

    /// Why this backend sees no devices at all on this host (libusb could not initialise),
    /// or `None` when it works.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// The raw descriptors of a device: the 18-byte device descriptor followed by each
    /// configuration descriptor (with its interfaces and endpoints), as the device sends them.
    fn descriptors(&self, id: &str) -> Result<Descriptors, UsbError>;

    /// Opens a device for exclusive use by one run.
    fn open(&self, id: &str) -> Result<Box<dyn DeviceHandle>, UsbError>;

    /// Asks to be told (by calling `notify`, from any thread) when devices may have come or
    /// gone, so the daemon rescans at once instead of at its next poll. Returns false when the
    /// backend cannot (no hotplug on this platform): the daemon then polls [`Self::scan`].
    fn watch(&self, notify: Box<dyn Fn() + Send + Sync>) -> bool {
        let _ = notify;
        false
    }
}

/// Raw descriptors of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptors {
    /// The 18-byte device descriptor.
    pub device: Vec<u8>,
    /// Each configuration's full descriptor (`wTotalLength` bytes).
    pub configurations: Vec<Vec<u8>>,
}

/// An open device. Dropping it releases every claimed interface and closes the device.
pub trait DeviceHandle: Send {
    /// Claims an interface for this handle.
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError>;
    /// Releases a claimed interface.
    fn release_interface(&mut self, interface: u8) -> Result<(), UsbError>;
    /// A device-to-host control transfer of up to `length` bytes.
    fn control_in(
        &mut self,
        setup: ControlSetup,
        length: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError>;
    /// A host-to-device control transfer; returns the bytes sent.
    fn control_out(
        &mut self,
        setup: ControlSetup,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError>;
    /// Reads up to `length` bytes from the bulk or interrupt IN endpoint `endpoint` (address
    /// with bit 7 set); `kind` must be the endpoint's transfer type.
    fn read(
        &mut self,
        kind: TransferKind,
        endpoint: u8,
        length: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError>;
    /// Writes to the bulk or interrupt OUT endpoint `endpoint`; returns the bytes sent.
    fn write(
        &mut self,
        kind: TransferKind,
        endpoint: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError>;
    /// Clears a halt on bulk or interrupt endpoint `endpoint`: CLEAR_FEATURE(ENDPOINT_HALT)
    /// to the device and the host's data toggle reset, as a protocol's stall recovery needs.
    fn clear_halt(&mut self, endpoint: u8) -> Result<(), UsbError>;
    /// Resets the device (a USB port reset), so the next run finds it in a known state.
    fn reset(&mut self) -> Result<(), UsbError>;
}

/// Chooses the backend the daemon runs with: the simulated one when a device file is given,
/// real USB otherwise. `hotplug: false` makes the real backend decline
/// [`DeviceBackend::watch`], so the daemon finds arrivals and departures by polling alone
/// (for platforms whose hotplug events are unreliable, and to test that fallback).
pub fn backend(
    simulate: Option<&std::path::Path>,
    hotplug: bool,
) -> Result<std::sync::Arc<dyn DeviceBackend>, UsbError> {
    match simulate {
        Some(path) => Ok(std::sync::Arc::new(simulated::SimulatedBackend::from_file(
            path,
        )?)),
        None if hotplug => Ok(std::sync::Arc::new(rusb_backend::RusbBackend::new())),
        None => Ok(std::sync::Arc::new(
            rusb_backend::RusbBackend::new().without_hotplug(),
        )),
    }
}

/// Resets a device after a run, so the next run finds it in a known state. Retries briefly
/// while the device is still busy (a transfer of the ended run may still be finishing on its
/// thread). Blocks: call it off the async executor.
pub fn reset_after_run(backend: &dyn DeviceBackend, id: &str) -> Result<(), UsbError> {
    // A transfer of the ended run may still be on its thread: bulk and interrupt transfers
    // notice within one slice that the run is over, a control transfer within its capped
    // timeout (see `imports::usb`). Wait for the longer of the two.
    let give_up = std::time::Instant::now() + RESET_WAIT;
    let mut pause = Duration::from_millis(10);
    loop {
        match backend.open(id).and_then(|mut handle| handle.reset()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind == UsbErrorKind::Busy && std::time::Instant::now() < give_up => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long [`reset_after_run`] waits for the ended run's last transfer to let go of the
/// device: longer than the longest control transfer a guest may ask for.
pub const RESET_WAIT: Duration = Duration::from_secs(40);

/// Which device a run wants: `VID:PID` (any device of that kind, hex), `serial=SERIAL`,
/// `id=ID` (a host's own device id), or `VID:PID,serial=SERIAL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSelector {
    /// Vendor and product id, when the selector names a kind.
    pub kind: Option<(u16, u16)>,
    /// Serial number, when the selector names one.
    pub serial: Option<String>,
    /// A host-local device id, when the selector names one.
    pub id: Option<String>,
}

impl DeviceSelector {
    /// Parses a selector; the error says what is wrong and what is accepted.
    pub fn parse(text: &str) -> Result<Self, InvalidInput> {
        let usage = "use VID:PID (hex, e.g. 1209:0001), serial=SERIAL, id=ID, or \
                     VID:PID,serial=SERIAL";
        let invalid = |message: String| Err(InvalidInput::new(Input::DeviceSelector, message));
        let mut selector = DeviceSelector {
            kind: None,
            serial: None,
            id: None,
        };
        if text.trim().is_empty() {
            return invalid(format!("the device selector is empty; {usage}"));
        }
        for part in text.split(',') {
            let part = part.trim();
            if let Some(serial) = part.strip_prefix("serial=") {
                if serial.is_empty() || selector.serial.is_some() {
                    return invalid(format!("`{text}`: give one non-empty serial; {usage}"));
                }
                selector.serial = Some(serial.to_owned());
            } else if let Some(id) = part.strip_prefix("id=") {
                if id.is_empty() || selector.id.is_some() {
                    return invalid(format!("`{text}`: give one non-empty id; {usage}"));
                }
                selector.id = Some(id.to_owned());
            } else if let Some((vid, pid)) = part.split_once(':') {
                let hex = |s: &str| {
                    let s = s.trim_start_matches("0x");
                    (!s.is_empty() && s.len() <= 4)
                        .then(|| u16::from_str_radix(s, 16).ok())
                        .flatten()
                };
                match (hex(vid), hex(pid), selector.kind) {
                    (Some(v), Some(p), None) => selector.kind = Some((v, p)),
                    _ => return invalid(format!("`{part}` is not a VID:PID pair; {usage}")),
                }
            } else {
                return invalid(format!("`{part}` is not a device selector; {usage}"));
            }
        }
        Ok(selector)
    }

    /// Whether `device` is one this selector accepts.
    pub fn matches(&self, device: &DeviceInfo) -> bool {
        self.kind
            .is_none_or(|(v, p)| device.vendor_id == v && device.product_id == p)
            && self
                .serial
                .as_deref()
                .is_none_or(|s| device.serial.as_deref() == Some(s))
            && self.id.as_deref().is_none_or(|id| device.id == id)
    }
}

impl std::fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some((v, p)) = self.kind {
            parts.push(format!("{v:04x}:{p:04x}"));
        }
        if let Some(serial) = &self.serial {
            parts.push(format!("serial={serial}"));
        }
        if let Some(id) = &self.id {
            parts.push(format!("id={id}"));
        }
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for DeviceSelector {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(id: &str, vid: u16, pid: u16, serial: Option<&str>) -> DeviceInfo {
        DeviceInfo {
            id: id.into(),
            vendor_id: vid,
            product_id: pid,
            serial: serial.map(str::to_owned),
            manufacturer: None,
            product: None,
            location: "sim-1".into(),
            class: 0xff,
            speed: None,
            unusable: None,
        }
    }

    #[test]
    fn selector_matches_kind_serial_or_id() {
        let a = board("a", 0x1209, 1, Some("SB-1"));
        let b = board("b", 0x1209, 2, Some("SB-2"));
        let kind = DeviceSelector::parse("1209:0001").unwrap();
        assert!(kind.matches(&a) && !kind.matches(&b));
        let serial = DeviceSelector::parse("serial=SB-2").unwrap();
        assert!(!serial.matches(&a) && serial.matches(&b));
        let both = DeviceSelector::parse("1209:0002,serial=SB-1").unwrap();
        assert!(!both.matches(&a) && !both.matches(&b));
        let id = DeviceSelector::parse("id=a").unwrap();
        assert!(id.matches(&a) && !id.matches(&b));
        assert_eq!(both.to_string(), "1209:0002,serial=SB-1");
        assert_eq!(DeviceSelector::parse(&both.to_string()).unwrap(), both);
    }

    #[test]
    fn bad_selectors_say_what_is_accepted() {
        for bad in [
            "", "12345:1", "zz:1", "serial=", "1209", "1:2,3:4", "name=x",
        ] {
            let err = DeviceSelector::parse(bad).unwrap_err();
            assert!(err.message.contains("VID:PID"), "{bad}: {err}");
            assert_eq!(err.kind, Input::DeviceSelector);
        }
    }
}
