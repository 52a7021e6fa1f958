//! A simulated device at run time: its state behind a lock, and the handle a run holds.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::LOOPBACK_CAPACITY;
use super::class_model::ClassModel;
use super::model::{Model, Role};
use crate::devices::descriptor::TransferType;
use crate::devices::{ControlSetup, DeviceHandle, TransferKind, UsbError, UsbErrorKind};

// ---------------------------------------------------------------------------------------------
// Runtime state.

/// One device and what is happening to it.
#[derive(Debug)]
pub(super) struct SimDevice {
    pub(super) model: Model,
    pub(super) state: Mutex<State>,
    /// Signalled on every change a waiter may care about: data or room in the loopback,
    /// a detach.
    pub(super) changed: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Bumped by every detach, so handles from before it know they are stale.
    pub(super) generation: u64,
    pub(super) open: bool,
    pub(super) detached: bool,
    /// When the device was first opened since it was (re)attached: the scripted
    /// `detach_after` timer starts there.
    pub(super) first_opened: Option<Instant>,
    /// Transfers that reached the device since it was (re)attached.
    pub(super) transfers: u64,
    pub(super) opens: u64,
    pub(super) resets: u64,
    pub(super) loopback: VecDeque<u8>,
    /// The state of the device's class model, if it plays one.
    pub(super) class: Option<Box<dyn ClassModel>>,
}

/// How a wait ended.
pub(super) enum Waited {
    Ready,
    Gone,
    TimedOut,
}

impl SimDevice {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across any panic (every update is a single step), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the scripted `detach_after` fires, if it is armed.
    pub(super) fn detach_at(&self, state: &State) -> Option<Instant> {
        if state.detached {
            return None;
        }
        let after = self.model.detach_after?;
        state
            .first_opened
            .map(|t| t.checked_add(after).unwrap_or(t))
    }

    /// Applies a scripted `detach_after` whose time has come.
    pub(super) fn refresh(&self, state: &mut State) {
        if let Some(at) = self.detach_at(state)
            && Instant::now() >= at
        {
            self.detach_locked(state);
        }
    }

    pub(super) fn detach_locked(&self, state: &mut State) {
        state.detached = true;
        state.open = false;
        state.generation += 1;
        state.loopback.clear();
        self.changed.notify_all();
    }

    pub(super) fn present(&self) -> bool {
        let mut state = self.lock();
        self.refresh(&mut state);
        !state.detached
    }

    /// Waits until `ready`, a detach (of the handle with `generation`) or `deadline`,
    /// whichever comes first.
    pub(super) fn wait_until<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        generation: u64,
        deadline: Instant,
        ready: impl Fn(&State) -> bool,
    ) -> (MutexGuard<'a, State>, Waited) {
        loop {
            self.refresh(&mut state);
            if state.generation != generation {
                return (state, Waited::Gone);
            }
            if ready(&state) {
                return (state, Waited::Ready);
            }
            let now = Instant::now();
            if now >= deadline {
                return (state, Waited::TimedOut);
            }
            let wake = self
                .detach_at(&state)
                .map_or(deadline, |at| at.min(deadline));
            state = self
                .changed
                .wait_timeout(state, wake.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// `timeout` from now, saturating far in the future instead of overflowing.
pub(super) fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// An open simulated device.
pub(super) struct SimulatedHandle {
    pub(super) device: Arc<SimDevice>,
    /// The device's generation when opened; any other value means it was detached since.
    pub(super) generation: u64,
    /// Whether interface 0 is claimed.
    pub(super) claimed: bool,
}

impl SimulatedHandle {
    pub(super) fn id(&self) -> &str {
        &self.device.model.info.id
    }

    pub(super) fn disconnected(&self) -> UsbError {
        UsbError::new(
            UsbErrorKind::Disconnected,
            format!("simulated device `{}` was detached", self.id()),
        )
    }

    pub(super) fn timeout(&self, what: &str) -> UsbError {
        UsbError::new(
            UsbErrorKind::Timeout,
            format!("{what} on simulated device `{}` timed out", self.id()),
        )
    }

    pub(super) fn invalid(&self, what: String) -> UsbError {
        UsbError::new(
            UsbErrorKind::InvalidArgument,
            format!("simulated device `{}`: {what}", self.id()),
        )
    }

    /// Locks the state, failing with `Disconnected` when the device left since this handle
    /// was opened.
    pub(super) fn lock_present(&self) -> Result<MutexGuard<'_, State>, UsbError> {
        let mut state = self.device.lock();
        self.device.refresh(&mut state);
        if state.generation != self.generation {
            return Err(self.disconnected());
        }
        Ok(state)
    }

    /// What the endpoint a bulk or interrupt transfer of `kind` in direction `is_in` goes to
    /// does, once the device is checked present, the endpoint fit for the transfer and the
    /// interface claimed (failing in that order).
    pub(super) fn transfer_role(
        &self,
        address: u8,
        is_in: bool,
        kind: TransferKind,
    ) -> Result<&Role, UsbError> {
        drop(self.lock_present()?);
        let (direction, call) = if is_in {
            ("IN", format!("{kind}_in"))
        } else {
            ("OUT", format!("{kind}_out"))
        };
        if (address & 0x80 != 0) != is_in {
            return Err(self.invalid(format!(
                "{call} needs an {direction} endpoint address, got 0x{address:02x}"
            )));
        }
        let Some(endpoint) = self.device.model.endpoint(address) else {
            let have: Vec<String> = self
                .device
                .model
                .endpoints
                .iter()
                .map(|e| format!("0x{:02x}", e.address))
                .collect();
            let have = if have.is_empty() {
                "none".to_owned()
            } else {
                have.join(", ")
            };
            return Err(self.invalid(format!("no endpoint 0x{address:02x} (it has: {have})")));
        };
        let fits = match &endpoint.role {
            Role::Stall | Role::Hang => true,
            Role::Interrupt { .. } => kind == TransferKind::Interrupt,
            Role::LoopbackIn { .. } | Role::LoopbackOut { .. } => kind == TransferKind::Bulk,
            Role::Class(transfer) => *transfer == TransferType::from(kind),
        };
        if !fits {
            let is = if kind == TransferKind::Bulk {
                "an interrupt"
            } else {
                "a bulk"
            };
            return Err(self.invalid(format!(
                "endpoint 0x{address:02x} is {is} endpoint; {call} does not apply"
            )));
        }
        self.check_claimed()?;
        Ok(&endpoint.role)
    }

    pub(super) fn check_claimed(&self) -> Result<(), UsbError> {
        if self.claimed {
            Ok(())
        } else {
            Err(UsbError::new(
                UsbErrorKind::NotClaimed,
                format!(
                    "claim interface 0 of simulated device `{}` before bulk or interrupt transfers",
                    self.id()
                ),
            ))
        }
    }

    /// Counts a transfer that reached the device, runs it, then applies a scripted
    /// `detach_after_transfers` that it completes.
    pub(super) fn transfer<T>(
        &self,
        run: impl FnOnce(MutexGuard<'_, State>) -> Result<T, UsbError>,
    ) -> Result<T, UsbError> {
        let mut state = self.lock_present()?;
        state.transfers += 1;
        let count = state.transfers;
        let result = run(state);
        if let Some(limit) = self.device.model.detach_after_transfers
            && count >= limit
        {
            let mut state = self.device.lock();
            if state.generation == self.generation && !state.detached {
                self.device.detach_locked(&mut state);
            }
        }
        result
    }

    /// Sleeps `delay` (interrupted by a detach); a delay past `deadline` sleeps until it and
    /// times out.
    pub(super) fn sleep<'a>(
        &self,
        state: MutexGuard<'a, State>,
        delay: Duration,
        deadline: Instant,
        what: &str,
    ) -> Result<MutexGuard<'a, State>, UsbError> {
        if delay.is_zero() {
            return Ok(state);
        }
        let until = Instant::now().checked_add(delay).unwrap_or(deadline);
        let (state, waited) =
            self.device
                .wait_until(state, self.generation, until.min(deadline), |_| false);
        match waited {
            Waited::Gone => Err(self.disconnected()),
            _ if until > deadline => Err(self.timeout(what)),
            _ => Ok(state),
        }
    }

    pub(super) fn stall(&self, what: &str) -> UsbError {
        UsbError::new(
            UsbErrorKind::Stall,
            format!("simulated device `{}` stalled {what}", self.id()),
        )
    }

    pub(super) fn control_setup_text(setup: ControlSetup) -> String {
        format!(
            "control request type 0x{:02x} request 0x{:02x} value 0x{:04x} index 0x{:04x}",
            setup.request_type, setup.request, setup.value, setup.index
        )
    }
}

impl DeviceHandle for SimulatedHandle {
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        let mut state = self.lock_present()?;
        if interface != 0 {
            return Err(self.invalid(format!("no interface {interface}; the only one is 0")));
        }
        if let Some(class) = state.class.as_deref_mut() {
            class.claimed(Instant::now());
        }
        drop(state);
        self.claimed = true;
        Ok(())
    }

    fn release_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        drop(self.lock_present()?);
        if interface != 0 || !self.claimed {
            return Err(UsbError::new(
                UsbErrorKind::NotClaimed,
                format!(
                    "interface {interface} of simulated device `{}` is not claimed",
                    self.id()
                ),
            ));
        }
        self.claimed = false;
        Ok(())
    }

    fn control_in(
        &mut self,
        setup: ControlSetup,
        length: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        drop(self.lock_present()?);
        let text = Self::control_setup_text(setup);
        if !setup.is_in() {
            return Err(self.invalid(format!(
                "control_in needs a device-to-host request_type (bit 7 set): {text}"
            )));
        }
        let wanted = length;
        let length = usize::from(length);
        let deadline = deadline(timeout);
        let model = &self.device.model;
        self.transfer(|state| {
            if setup.request_type == 0x80 && setup.request == 6 {
                let answer = model
                    .get_descriptor(setup.value)
                    .ok_or_else(|| self.stall(&text))?;
                return Ok(answer[..length.min(answer.len())].to_vec());
            }
            if state.class.is_some() {
                return self.class_control_in(state, setup, wanted, deadline, &text);
            }
            let entry = model
                .controls
                .iter()
                .find(|c| c.setup == setup)
                .ok_or_else(|| self.stall(&text))?;
            drop(self.sleep(state, entry.delay, deadline, &text)?);
            let answer = entry.answer.as_deref().unwrap_or_default();
            Ok(answer[..length.min(answer.len())].to_vec())
        })
    }

    fn control_out(
        &mut self,
        setup: ControlSetup,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        drop(self.lock_present()?);
        let text = Self::control_setup_text(setup);
        if setup.is_in() {
            return Err(self.invalid(format!(
                "control_out needs a host-to-device request_type (bit 7 clear): {text}"
            )));
        }
        if data.len() > usize::from(u16::MAX) {
            return Err(self.invalid(format!(
                "a control transfer carries at most 65535 bytes, not {}",
                data.len()
            )));
        }
        let deadline = deadline(timeout);
        self.transfer(|state| {
            if state.class.is_some() {
                return self.class_control_out(state, setup, data, deadline, &text);
            }
            let entry = self
                .device
                .model
                .controls
                .iter()
                .find(|c| c.setup == setup)
                .ok_or_else(|| self.stall(&text))?;
            drop(self.sleep(state, entry.delay, deadline, &text)?);
            Ok(data.len())
        })
    }

    fn read(
        &mut self,
        kind: TransferKind,
        endpoint: u8,
        length: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        let role = self.transfer_role(endpoint, true, kind)?;
        let what = format!("read from endpoint 0x{endpoint:02x}");
        let deadline = deadline(timeout);
        self.transfer(|state| match role {
            Role::LoopbackIn { delay } => {
                let state = self.sleep(state, *delay, deadline, &what)?;
                let (mut state, waited) =
                    self.device
                        .wait_until(state, self.generation, deadline, |s| {
                            length == 0 || !s.loopback.is_empty()
                        });
                match waited {
                    Waited::Gone => Err(self.disconnected()),
                    Waited::TimedOut => Err(self.timeout(&what)),
                    Waited::Ready => {
                        let n = length.min(state.loopback.len());
                        let data: Vec<u8> = state.loopback.drain(..n).collect();
                        self.device.changed.notify_all();
                        Ok(data)
                    }
                }
            }
            Role::Interrupt { answer, period } => {
                drop(self.sleep(state, *period, deadline, &what)?);
                Ok(answer[..length.min(answer.len())].to_vec())
            }
            Role::Hang => {
                let (_state, waited) =
                    self.device
                        .wait_until(state, self.generation, deadline, |_| false);
                match waited {
                    Waited::Gone => Err(self.disconnected()),
                    _ => Err(self.timeout(&what)),
                }
            }
            Role::Stall => Err(self.stall(&format!("endpoint 0x{endpoint:02x}"))),
            Role::Class(_) => self.class_call(state, deadline, &what, |class, now| {
                class.read(endpoint, length, now)
            }),
            // `transfer_role` only returns IN endpoints' roles for reads.
            Role::LoopbackOut { .. } => {
                Err(self.invalid(format!("endpoint 0x{endpoint:02x} cannot be read")))
            }
        })
    }

    fn write(
        &mut self,
        kind: TransferKind,
        endpoint: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        let role = self.transfer_role(endpoint, false, kind)?;
        let what = format!("write to endpoint 0x{endpoint:02x}");
        let deadline = deadline(timeout);
        self.transfer(|state| match role {
            Role::LoopbackOut { delay } => {
                let mut state = self.sleep(state, *delay, deadline, &what)?;
                let mut rest = data;
                while !rest.is_empty() {
                    let (mut s, waited) =
                        self.device
                            .wait_until(state, self.generation, deadline, |s| {
                                s.loopback.len() < LOOPBACK_CAPACITY
                            });
                    match waited {
                        Waited::Gone => return Err(self.disconnected()),
                        Waited::TimedOut => return Err(self.timeout(&what)),
                        Waited::Ready => {
                            let n = rest.len().min(LOOPBACK_CAPACITY - s.loopback.len());
                            s.loopback.extend(&rest[..n]);
                            rest = &rest[n..];
                            self.device.changed.notify_all();
                        }
                    }
                    state = s;
                }
                Ok(data.len())
            }
            Role::Stall => Err(self.stall(&format!("endpoint 0x{endpoint:02x}"))),
            Role::Class(_) => self.class_call(state, deadline, &what, |class, now| {
                class.write(endpoint, data, now)
            }),
            _ => Err(self.invalid(format!("endpoint 0x{endpoint:02x} cannot be written"))),
        })
    }

    fn clear_halt(&mut self, endpoint: u8) -> Result<(), UsbError> {
        let mut state = self.lock_present()?;
        self.check_claimed()?;
        if self.device.model.endpoint(endpoint).is_none() {
            return Err(self.invalid(format!("no endpoint 0x{endpoint:02x} to clear a halt on")));
        }
        // A class model keeps its endpoints' halt state. A `stall` endpoint models a device
        // that stalls every transfer: clearing the halt succeeds, and the next transfer
        // stalls again.
        if let Some(class) = state.class.as_deref_mut() {
            class.clear_halt(endpoint);
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), UsbError> {
        let mut state = self.lock_present()?;
        state.loopback.clear();
        if let Some(class) = state.class.as_deref_mut() {
            class.power_on(Instant::now());
        }
        state.resets += 1;
        self.device.changed.notify_all();
        drop(state);
        self.claimed = false;
        Ok(())
    }
}

impl Drop for SimulatedHandle {
    fn drop(&mut self) {
        let mut state = self.device.lock();
        if state.generation == self.generation {
            state.open = false;
            self.device.changed.notify_all();
        }
    }
}
