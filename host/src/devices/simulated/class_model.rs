//! Device models that play a real class of device (`[device.mass-storage]`,
//! `[device.serial-console]`, `[device.keyboard]`): the [`ClassModel`] trait each implements,
//! the identity each gives its device, the standard requests they all answer alike, and the
//! loop through which a [`SimulatedHandle`] waits for them.
//!
//! A class model is a state machine with injected time: it never blocks and never sleeps. When
//! it has nothing to send yet it says until when ([`Outcome::Pending`]), and the handle waits
//! on the device's condition variable (so a detach still interrupts the wait), then asks again.

use std::fmt::Debug;
use std::sync::MutexGuard;
use std::time::Instant;

use super::handle::{SimulatedHandle, State, Waited};
use crate::devices::descriptor::{ConfigurationDescriptor, InterfaceDescriptor};
use crate::devices::{ControlSetup, UsbError, UsbErrorKind};

/// What a class model made of a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome<T> {
    /// Completed, with this result.
    Done(T),
    /// The device refused: a STALL handshake. On a bulk or interrupt endpoint the model also
    /// halts the endpoint until the host clears it.
    Stall,
    /// The device sent more than the host asked for (babble): the host's buffer is too small
    /// for the packet.
    Overflow,
    /// Nothing to send yet. `Some(at)`: ask again then; `None`: nothing comes until the host
    /// does something else (a read waits out its timeout, as for a device that NAKs).
    Pending(Option<Instant>),
}

/// A device model behind interface 0 of a simulated device: its class and vendor requests and
/// its endpoints. Methods take the current time instead of reading a clock, so tests and the
/// handle agree on it.
pub(super) trait ClassModel: Send + Debug {
    /// A device-to-host class or vendor request (or a standard one addressed to the interface,
    /// such as HID's GET_DESCRIPTOR); up to `length` bytes.
    fn control_in(&mut self, setup: ControlSetup, length: u16, now: Instant) -> Outcome<Vec<u8>>;
    /// A host-to-device class or vendor request carrying `data`.
    fn control_out(&mut self, setup: ControlSetup, data: &[u8], now: Instant) -> Outcome<()>;
    /// A read of up to `length` bytes from IN endpoint `endpoint` (one of the model's).
    fn read(&mut self, endpoint: u8, length: usize, now: Instant) -> Outcome<Vec<u8>>;
    /// A write of `data` to OUT endpoint `endpoint` (one of the model's); the bytes taken.
    fn write(&mut self, endpoint: u8, data: &[u8], now: Instant) -> Outcome<usize>;
    /// Whether `endpoint` is halted (GET_STATUS); models that never stall keep the default.
    fn halted(&self, endpoint: u8) -> bool {
        let _ = endpoint;
        false
    }
    /// CLEAR_FEATURE(ENDPOINT_HALT) on `endpoint`.
    fn clear_halt(&mut self, endpoint: u8) {
        let _ = endpoint;
    }
    /// The device is powered up or bus-reset: opened by a run, or [`DeviceHandle::reset`].
    /// Protocol state starts over; what the device stores (a disk's blocks) stays.
    ///
    /// [`DeviceHandle::reset`]: crate::devices::DeviceHandle::reset
    fn power_on(&mut self, now: Instant);
    /// The host claimed interface 0.
    fn claimed(&mut self, now: Instant) {
        let _ = now;
    }
}

/// How a class model's device presents itself: the defaults of its device descriptor and
/// strings (a `[[device]]` entry may override ids, strings and version) and its one
/// configuration. The values mirror the device QEMU emulates, so a script that looks for an
/// interface by class finds it on both.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    /// Default `idVendor`.
    pub(super) vendor_id: u16,
    /// Default `idProduct`.
    pub(super) product_id: u16,
    /// Default `bcdDevice`.
    pub(super) device_version: u16,
    /// Default manufacturer string.
    pub(super) manufacturer: &'static str,
    /// Default product string.
    pub(super) product: &'static str,
    /// Default serial number string.
    pub(super) serial: &'static str,
    /// `bcdUSB`.
    pub(super) usb_version: u16,
    /// `bMaxPacketSize0`.
    pub(super) max_packet_size0: u8,
    /// The configuration's string (string descriptor 4), if it has one.
    pub(super) configuration_string: Option<&'static str>,
    /// The one configuration; `string` is filled in from `configuration_string`.
    pub(super) configuration: ConfigurationDescriptor,
}

impl Identity {
    /// The interface the configuration holds (every class model has exactly one).
    pub(super) fn interface(&self) -> Option<&InterfaceDescriptor> {
        self.configuration.interfaces.first()
    }
}

/// Standard requests (USB 2.0, 9.4).
const GET_STATUS: u8 = 0;
const CLEAR_FEATURE: u8 = 1;
const GET_CONFIGURATION: u8 = 8;
const SET_CONFIGURATION: u8 = 9;
const GET_INTERFACE: u8 = 10;
const SET_INTERFACE: u8 = 11;
/// The ENDPOINT_HALT feature selector.
const ENDPOINT_HALT: u16 = 0;

/// The standard requests every class model's device answers the same way, or `None` for a
/// request the model itself must answer. `endpoints` are the device's endpoint addresses;
/// `self_powered` is bit 6 of its configuration's attributes.
fn standard_in(
    model: &dyn ClassModel,
    setup: ControlSetup,
    endpoints: &[u8],
    self_powered: bool,
) -> Option<Outcome<Vec<u8>>> {
    let answer = match (setup.request_type, setup.request) {
        (0x80, GET_STATUS) => vec![u8::from(self_powered), 0],
        (0x81, GET_STATUS) if setup.index == 0 => vec![0, 0],
        (0x82, GET_STATUS) => {
            let endpoint = u8::try_from(setup.index).ok()?;
            if !endpoints.contains(&endpoint) {
                return Some(Outcome::Stall);
            }
            vec![u8::from(model.halted(endpoint)), 0]
        }
        (0x80, GET_CONFIGURATION) => vec![1],
        (0x81, GET_INTERFACE) if setup.index == 0 => vec![0],
        _ => return None,
    };
    Some(Outcome::Done(answer))
}

/// Like [`standard_in`], for host-to-device requests.
fn standard_out(
    model: &mut dyn ClassModel,
    setup: ControlSetup,
    endpoints: &[u8],
) -> Option<Outcome<()>> {
    match (setup.request_type, setup.request) {
        (0x02, CLEAR_FEATURE) if setup.value == ENDPOINT_HALT => match u8::try_from(setup.index) {
            Ok(endpoint) if endpoints.contains(&endpoint) => {
                model.clear_halt(endpoint);
                Some(Outcome::Done(()))
            }
            _ => Some(Outcome::Stall),
        },
        (0x00, SET_CONFIGURATION) if setup.value <= 1 => Some(Outcome::Done(())),
        (0x01, SET_INTERFACE) if setup.value == 0 && setup.index == 0 => Some(Outcome::Done(())),
        _ => None,
    }
}

impl SimulatedHandle {
    /// Runs `call` on the device's class model until it is done, refuses, or the transfer's
    /// `deadline` passes, waiting (interruptibly by a detach) while it is pending.
    pub(super) fn class_call<T>(
        &self,
        state: MutexGuard<'_, State>,
        deadline: Instant,
        what: &str,
        mut call: impl FnMut(&mut dyn ClassModel, Instant) -> Outcome<T>,
    ) -> Result<T, UsbError> {
        let mut state = state;
        loop {
            let Some(model) = state.class.as_deref_mut() else {
                return Err(self.invalid(format!("{what}: the device has no class model")));
            };
            let now = Instant::now();
            match call(model, now) {
                Outcome::Done(value) => {
                    self.device.changed.notify_all();
                    return Ok(value);
                }
                Outcome::Stall => return Err(self.stall(what)),
                Outcome::Overflow => {
                    return Err(UsbError::new(
                        UsbErrorKind::Overflow,
                        format!(
                            "{what} on simulated device `{}`: the device sent more than was asked for (babble); ask for all it sends at once (a whole packet, report or status wrapper)",
                            self.id()
                        ),
                    ));
                }
                Outcome::Pending(at) => {
                    if now >= deadline {
                        return Err(self.timeout(what));
                    }
                    let until = at.map_or(deadline, |at| at.min(deadline));
                    let (next, waited) =
                        self.device
                            .wait_until(state, self.generation, until, |_| false);
                    if let Waited::Gone = waited {
                        return Err(self.disconnected());
                    }
                    state = next;
                }
            }
        }
    }

    /// A device-to-host control request on a device with a class model: the common standard
    /// requests here, the rest from the model.
    pub(super) fn class_control_in(
        &self,
        state: MutexGuard<'_, State>,
        setup: ControlSetup,
        length: u16,
        deadline: Instant,
        what: &str,
    ) -> Result<Vec<u8>, UsbError> {
        let model = &self.device.model;
        let self_powered = model.self_powered;
        self.class_call(state, deadline, what, |class, now| {
            let answer = standard_in(class, setup, &model.endpoint_addresses(), self_powered)
                .unwrap_or_else(|| class.control_in(setup, length, now));
            match answer {
                Outcome::Done(mut bytes) => {
                    bytes.truncate(usize::from(length));
                    Outcome::Done(bytes)
                }
                other => other,
            }
        })
    }

    /// A host-to-device control request on a device with a class model.
    pub(super) fn class_control_out(
        &self,
        state: MutexGuard<'_, State>,
        setup: ControlSetup,
        data: &[u8],
        deadline: Instant,
        what: &str,
    ) -> Result<usize, UsbError> {
        let endpoints = self.device.model.endpoint_addresses();
        self.class_call(state, deadline, what, |class, now| {
            match standard_out(class, setup, &endpoints)
                .unwrap_or_else(|| class.control_out(setup, data, now))
            {
                Outcome::Done(()) => Outcome::Done(data.len()),
                Outcome::Stall => Outcome::Stall,
                Outcome::Overflow => Outcome::Overflow,
                Outcome::Pending(at) => Outcome::Pending(at),
            }
        })
    }
}
