//! Fake devices that play the device side of each protocol in this crate, for native unit
//! tests (this crate's, and a script's own with the `fakes` feature): a Bulk-Only disk with
//! faults, an FTDI adapter with a board behind it, a boot keyboard that types text. Each
//! implements [`crate::Transfers`] and gives its configuration descriptor.

mod bot_disk;
pub(crate) mod descriptor;
mod ftdi;
mod keyboard;

pub use bot_disk::{
    DISK_BLOCK_SIZE, DISK_BULK_IN, DISK_BULK_OUT, DISK_INTERFACE, DiskFault, DiskRequest,
    FakeBotDisk,
};
pub use descriptor::{ConfigurationBuilder, EndpointSpec};
pub use ftdi::{Board, FTDI_BULK_IN, FTDI_BULK_OUT, FTDI_PACKET, FakeFtdi};
pub use keyboard::{FakeKeyboard, KEYBOARD_ENDPOINT};

use crate::descriptors::{Configuration, parse_configuration};
use crate::device::LeasedDevice;
use crate::transfers::Transfers;
use crate::usb::{DeviceInfo, UsbError};

/// A fake device: the identity and descriptors of the device it plays.
pub trait FakeDevice: Transfers {
    /// The vendor id of the device it plays.
    const VENDOR_ID: u16;
    /// The product id of the device it plays.
    const PRODUCT_ID: u16;

    /// Its configuration descriptor, bytes as `configuration-descriptors` returns them.
    fn configuration_descriptor() -> Vec<u8>;

    /// Its configurations, parsed, as a script gets them.
    fn configurations() -> Vec<Configuration> {
        parse_configuration(&Self::configuration_descriptor())
            .into_iter()
            .collect()
    }
}

/// A fake as a script's checks receive the leased device: its identity and configurations,
/// at location `sim-1`, driven through a borrow (so the test can look at it afterwards).
pub fn leased<D: FakeDevice>(device: &mut D) -> LeasedDevice<&mut D> {
    LeasedDevice {
        info: DeviceInfo {
            vendor_id: D::VENDOR_ID,
            product_id: D::PRODUCT_ID,
            serial: Some("FAKE-1".into()),
            manufacturer: Some("sandbus fakes".into()),
            product: None,
            location: "sim-1".into(),
            device_class: 0,
        },
        configurations: D::configurations(),
        handle: device,
    }
}

/// Claims `interface` on a fake whose only interface is `ours`.
fn claim(claimed: &mut bool, interface: u8, ours: u8) -> Result<(), UsbError> {
    if interface != ours {
        return Err(UsbError::InvalidArgument(format!(
            "no interface {interface}"
        )));
    }
    *claimed = true;
    Ok(())
}

/// Arguments as the runner hands them to a script: `(name, value)` pairs.
pub fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    args_with(pairs, &[])
}

/// `base` with `changes`: each change replaces the argument of its name (moved to the end)
/// or adds it.
pub fn args_with(base: &[(&str, &str)], changes: &[(&str, &str)]) -> Vec<(String, String)> {
    let kept = base
        .iter()
        .filter(|(name, _)| !changes.iter().any(|(changed, _)| changed == name));
    kept.chain(changes)
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}
