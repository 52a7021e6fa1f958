//! An open real device: claims, transfers and reset through libusb, and libusb's errors
//! mapped to the kinds callers match on.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::devices::{ControlSetup, DeviceHandle, TransferKind, UsbError, UsbErrorKind};

/// Maps a libusb error to the kind callers match on.
pub(super) fn kind_of(e: rusb::Error) -> UsbErrorKind {
    match e {
        rusb::Error::Timeout => UsbErrorKind::Timeout,
        rusb::Error::Pipe => UsbErrorKind::Stall,
        rusb::Error::NoDevice => UsbErrorKind::Disconnected,
        rusb::Error::NotFound => UsbErrorKind::NotFound,
        rusb::Error::Busy => UsbErrorKind::Busy,
        rusb::Error::Access => UsbErrorKind::Access,
        rusb::Error::InvalidParam => UsbErrorKind::InvalidArgument,
        rusb::Error::Overflow => UsbErrorKind::Overflow,
        _ => UsbErrorKind::Io,
    }
}

/// A libusb error while doing `what`.
pub(super) fn usb_error(e: rusb::Error, what: &str) -> UsbError {
    UsbError::new(kind_of(e), format!("{what}: {e}")).caused_by(e)
}

/// A timeout libusb will honour: at least 1 ms (libusb waits forever on 0) and at most what
/// its millisecond counter holds.
pub(super) fn libusb_timeout(timeout: Duration) -> Duration {
    timeout.clamp(
        Duration::from_millis(1),
        Duration::from_millis(u64::from(u32::MAX)),
    )
}

/// The most bytes one bulk or interrupt transfer can carry (libusb counts them in a C int).
pub(super) const MAX_TRANSFER: usize = i32::MAX as usize;

/// An open real device.
pub(super) struct RusbHandle {
    pub(super) id: String,
    pub(super) handle: rusb::DeviceHandle<rusb::Context>,
    /// Interfaces this handle claimed, released on drop.
    pub(super) claimed: BTreeSet<u8>,
    /// The backend's set of open ids, which this handle leaves on drop.
    pub(super) open: Arc<Mutex<HashSet<String>>>,
}

impl RusbHandle {
    fn error(&self, e: rusb::Error, what: std::fmt::Arguments<'_>) -> UsbError {
        usb_error(e, &format!("{}: {what}", self.id))
    }

    fn check_length(&self, length: usize) -> Result<(), UsbError> {
        if length > MAX_TRANSFER {
            return Err(UsbError::new(
                UsbErrorKind::InvalidArgument,
                format!(
                    "{}: a transfer carries at most {MAX_TRANSFER} bytes, not {length}",
                    self.id
                ),
            ));
        }
        Ok(())
    }
}

impl DeviceHandle for RusbHandle {
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        self.handle
            .claim_interface(interface)
            .map_err(|e| self.error(e, format_args!("claiming interface {interface}")))?;
        self.claimed.insert(interface);
        Ok(())
    }

    fn release_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        if !self.claimed.remove(&interface) {
            return Err(UsbError::new(
                UsbErrorKind::NotClaimed,
                format!("{}: interface {interface} is not claimed", self.id),
            ));
        }
        self.handle
            .release_interface(interface)
            .map_err(|e| self.error(e, format_args!("releasing interface {interface}")))
    }

    fn control_in(
        &mut self,
        setup: ControlSetup,
        length: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        let mut buf = vec![0; usize::from(length)];
        let n = self
            .handle
            .read_control(
                setup.request_type,
                setup.request,
                setup.value,
                setup.index,
                &mut buf,
                libusb_timeout(timeout),
            )
            .map_err(|e| {
                self.error(
                    e,
                    format_args!(
                        "control IN (type 0x{:02x}, request 0x{:02x})",
                        setup.request_type, setup.request
                    ),
                )
            })?;
        buf.truncate(n);
        Ok(buf)
    }

    fn control_out(
        &mut self,
        setup: ControlSetup,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        if data.len() > usize::from(u16::MAX) {
            return Err(UsbError::new(
                UsbErrorKind::InvalidArgument,
                format!(
                    "{}: a control transfer carries at most 65535 bytes, not {}",
                    self.id,
                    data.len()
                ),
            ));
        }
        self.handle
            .write_control(
                setup.request_type,
                setup.request,
                setup.value,
                setup.index,
                data,
                libusb_timeout(timeout),
            )
            .map_err(|e| {
                self.error(
                    e,
                    format_args!(
                        "control OUT (type 0x{:02x}, request 0x{:02x})",
                        setup.request_type, setup.request
                    ),
                )
            })
    }

    fn read(
        &mut self,
        kind: TransferKind,
        endpoint: u8,
        length: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        self.check_length(length)?;
        let mut buf = vec![0; length];
        let timeout = libusb_timeout(timeout);
        let n = match kind {
            TransferKind::Bulk => self.handle.read_bulk(endpoint, &mut buf, timeout),
            TransferKind::Interrupt => self.handle.read_interrupt(endpoint, &mut buf, timeout),
        }
        .map_err(|e| self.error(e, format_args!("{kind} IN on endpoint 0x{endpoint:02x}")))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn write(
        &mut self,
        kind: TransferKind,
        endpoint: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        self.check_length(data.len())?;
        let timeout = libusb_timeout(timeout);
        match kind {
            TransferKind::Bulk => self.handle.write_bulk(endpoint, data, timeout),
            TransferKind::Interrupt => self.handle.write_interrupt(endpoint, data, timeout),
        }
        .map_err(|e| self.error(e, format_args!("{kind} OUT on endpoint 0x{endpoint:02x}")))
    }

    fn clear_halt(&mut self, endpoint: u8) -> Result<(), UsbError> {
        self.handle.clear_halt(endpoint).map_err(|e| {
            self.error(
                e,
                format_args!("clearing the halt on endpoint 0x{endpoint:02x}"),
            )
        })
    }

    fn reset(&mut self) -> Result<(), UsbError> {
        // NotFound here means the device came back as a different device: open it again.
        self.handle
            .reset()
            .map_err(|e| self.error(e, format_args!("resetting the device")))
    }
}

impl Drop for RusbHandle {
    fn drop(&mut self) {
        for interface in std::mem::take(&mut self.claimed) {
            if let Err(e) = self.handle.release_interface(interface)
                && e != rusb::Error::NoDevice
            {
                tracing::debug!(device = %self.id, interface, error = %e, "could not release a USB interface");
            }
        }
        lock(&self.open).remove(&self.id);
    }
}

/// Locks a mutex whose data stays consistent across a panic (every update is one step).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libusb_errors_map_to_the_kinds_callers_match_on() {
        let cases = [
            (rusb::Error::Timeout, UsbErrorKind::Timeout),
            (rusb::Error::Pipe, UsbErrorKind::Stall),
            (rusb::Error::NoDevice, UsbErrorKind::Disconnected),
            (rusb::Error::NotFound, UsbErrorKind::NotFound),
            (rusb::Error::Busy, UsbErrorKind::Busy),
            (rusb::Error::Access, UsbErrorKind::Access),
            (rusb::Error::InvalidParam, UsbErrorKind::InvalidArgument),
            (rusb::Error::Overflow, UsbErrorKind::Overflow),
            (rusb::Error::Io, UsbErrorKind::Io),
            (rusb::Error::Interrupted, UsbErrorKind::Io),
            (rusb::Error::NotSupported, UsbErrorKind::Io),
            (rusb::Error::Other, UsbErrorKind::Io),
        ];
        for (error, kind) in cases {
            assert_eq!(kind_of(error), kind, "{error:?}");
        }
        let error = usb_error(rusb::Error::Pipe, "usb-1-2: bulk IN on endpoint 0x81");
        assert_eq!(error.kind, UsbErrorKind::Stall);
        assert!(error.message.starts_with("usb-1-2: bulk IN"), "{error}");
    }

    #[test]
    fn timeouts_never_mean_wait_forever() {
        assert_eq!(libusb_timeout(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(
            libusb_timeout(Duration::from_micros(300)),
            Duration::from_millis(1)
        );
        assert_eq!(
            libusb_timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            libusb_timeout(Duration::MAX).as_millis(),
            u128::from(u32::MAX)
        );
    }
}
