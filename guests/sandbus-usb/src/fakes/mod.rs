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

use crate::descriptors::Configuration;
use crate::device::LeasedDevice;
use crate::usb::DeviceInfo;

/// A fake device as a script's checks receive it: `vendor:product` at location `sim-1`,
/// with these configurations, driven through `handle`.
pub fn leased<H>(
    handle: H,
    vendor_id: u16,
    product_id: u16,
    configurations: Vec<Configuration>,
) -> LeasedDevice<H> {
    LeasedDevice {
        info: DeviceInfo {
            vendor_id,
            product_id,
            serial: Some("FAKE-1".into()),
            manufacturer: Some("sandbus fakes".into()),
            product: None,
            location: "sim-1".into(),
            device_class: 0,
        },
        configurations,
        handle,
    }
}
