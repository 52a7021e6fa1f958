//! The transfers the protocols in this crate need, as a trait: the leased device's
//! `device-handle` implements it in a script, and a fake device (see `fakes`) implements it
//! in a native unit test, so the same protocol code runs against both.

use crate::usb::{ControlSetup, DeviceHandle, UsbError};

/// `bmRequestType` for a class request to an interface, host to device.
pub const CLASS_INTERFACE_OUT: u8 = 0x21;
/// `bmRequestType` for a class request to an interface, device to host.
pub const CLASS_INTERFACE_IN: u8 = 0xa1;
/// `bmRequestType` for a vendor request to the device, host to device.
pub const VENDOR_DEVICE_OUT: u8 = 0x40;
/// `bmRequestType` for a vendor request to the device, device to host.
pub const VENDOR_DEVICE_IN: u8 = 0xc0;

/// The USB transfers a protocol drives a device with.
///
/// Methods mirror `sandbus:host/usb`'s `device-handle`, with the same meaning and errors: a
/// timeout is in milliseconds and must not be 0 (the host reads 0 as "no limit of its own",
/// bounded only by the run's deadline), a refused request is [`UsbError::Stall`], a
/// transfer that saw nothing in time is [`UsbError::Timeout`].
pub trait Transfers {
    /// Claims an interface: bulk and interrupt transfers need it.
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError>;

    /// A device-to-host control transfer of at most `length` bytes.
    fn control_in(
        &mut self,
        setup: ControlSetup,
        length: u16,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, UsbError>;

    /// A host-to-device control transfer; returns the bytes sent.
    fn control_out(
        &mut self,
        setup: ControlSetup,
        data: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, UsbError>;

    /// Reads at most `length` bytes from a bulk IN endpoint. Fewer bytes mean the device
    /// ended the transfer with a short packet.
    fn bulk_in(&mut self, endpoint: u8, length: u32, timeout_ms: u32) -> Result<Vec<u8>, UsbError>;

    /// Writes to a bulk OUT endpoint; returns the bytes sent.
    fn bulk_out(&mut self, endpoint: u8, data: &[u8], timeout_ms: u32) -> Result<u32, UsbError>;

    /// Reads at most `length` bytes from an interrupt IN endpoint.
    fn interrupt_in(
        &mut self,
        endpoint: u8,
        length: u32,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, UsbError>;

    /// Clears a halt (stall) on a bulk or interrupt endpoint and resets its data toggle.
    fn clear_halt(&mut self, endpoint: u8) -> Result<(), UsbError>;
}

/// The leased device, opened: what a script hands the protocols.
impl Transfers for DeviceHandle {
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        DeviceHandle::claim_interface(self, interface)
    }

    fn control_in(
        &mut self,
        setup: ControlSetup,
        length: u16,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, UsbError> {
        DeviceHandle::control_in(self, setup, length, timeout_ms)
    }

    fn control_out(
        &mut self,
        setup: ControlSetup,
        data: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, UsbError> {
        DeviceHandle::control_out(self, setup, data, timeout_ms)
    }

    fn bulk_in(&mut self, endpoint: u8, length: u32, timeout_ms: u32) -> Result<Vec<u8>, UsbError> {
        DeviceHandle::bulk_in(self, endpoint, length, timeout_ms)
    }

    fn bulk_out(&mut self, endpoint: u8, data: &[u8], timeout_ms: u32) -> Result<u32, UsbError> {
        DeviceHandle::bulk_out(self, endpoint, data, timeout_ms)
    }

    fn interrupt_in(
        &mut self,
        endpoint: u8,
        length: u32,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, UsbError> {
        DeviceHandle::interrupt_in(self, endpoint, length, timeout_ms)
    }

    fn clear_halt(&mut self, endpoint: u8) -> Result<(), UsbError> {
        DeviceHandle::clear_halt(self, endpoint)
    }
}

/// A borrowed device: lets a script keep its handle while a protocol drives it.
impl<T: Transfers + ?Sized> Transfers for &mut T {
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        (**self).claim_interface(interface)
    }

    fn control_in(
        &mut self,
        setup: ControlSetup,
        length: u16,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, UsbError> {
        (**self).control_in(setup, length, timeout_ms)
    }

    fn control_out(
        &mut self,
        setup: ControlSetup,
        data: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, UsbError> {
        (**self).control_out(setup, data, timeout_ms)
    }

    fn bulk_in(&mut self, endpoint: u8, length: u32, timeout_ms: u32) -> Result<Vec<u8>, UsbError> {
        (**self).bulk_in(endpoint, length, timeout_ms)
    }

    fn bulk_out(&mut self, endpoint: u8, data: &[u8], timeout_ms: u32) -> Result<u32, UsbError> {
        (**self).bulk_out(endpoint, data, timeout_ms)
    }

    fn interrupt_in(
        &mut self,
        endpoint: u8,
        length: u32,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, UsbError> {
        (**self).interrupt_in(endpoint, length, timeout_ms)
    }

    fn clear_halt(&mut self, endpoint: u8) -> Result<(), UsbError> {
        (**self).clear_halt(endpoint)
    }
}

/// A control setup packet.
pub fn setup(request_type: u8, request: u8, value: u16, index: u16) -> ControlSetup {
    ControlSetup {
        request_type,
        request,
        value,
        index,
    }
}

/// A timeout the host will honour as given: at least 1 ms (0 would mean "no limit").
pub(crate) fn nonzero_ms(ms: u128) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX).max(1)
}

/// What a USB error means, in words for a report (the generated `Display` prints the Rust
/// variant name).
pub fn describe_usb_error(error: &UsbError) -> String {
    match error {
        UsbError::NoDevice => "the run has no device (start it with --device)".into(),
        UsbError::NotLeased(asked) => format!("{asked} is not the device this run leased"),
        UsbError::Timeout => "the transfer timed out".into(),
        UsbError::Stall => "the endpoint stalled (the device refused the request)".into(),
        UsbError::Disconnected => "the device is gone (unplugged or detached)".into(),
        UsbError::NotClaimed => "the interface is not claimed".into(),
        UsbError::Busy => "another driver or process holds the device or interface".into(),
        UsbError::InvalidArgument(what) => format!("invalid request: {what}"),
        UsbError::Overflow => "the device sent more than was asked for".into(),
        UsbError::Io(what) => format!("I/O error: {what}"),
    }
}
