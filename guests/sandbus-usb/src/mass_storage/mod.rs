//! USB mass storage over the Bulk-Only Transport, SCSI commands on top: what a storage test
//! needs to check a USB disk (identity, readiness, capacity, reading and writing blocks).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use sandbus_usb::mass_storage::{BulkOnlyTransport, ScsiDisk};
//! use sandbus_usb::{InterfaceClass, LeasedDevice, find_interface};
//!
//! fn first_block() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
//!     let mut device = LeasedDevice::open()?;
//!     let class = InterfaceClass::MASS_STORAGE_BULK_ONLY;
//!     let interface = find_interface(&device.configurations, class).ok_or("no disk")?;
//!     let mut transport = BulkOnlyTransport::open(&mut device.handle, interface)?;
//!     let units = transport.max_lun()? + 1;
//!     let mut disk = ScsiDisk::new(transport, 0);
//!     let inquiry = disk.inquiry()?; // vendor, product, revision
//!     disk.wait_until_ready(Duration::from_secs(10))?; // TEST UNIT READY, retried
//!     let capacity = disk.read_capacity()?;
//!     Ok(disk.read(0, 1)?)
//! }
//! ```

mod bot;
mod disk;
mod error;
mod scsi;
#[cfg(test)]
mod tests;

pub use bot::{
    BULK_ONLY_RESET, BulkOnlyTransport, CBW_LENGTH, CBW_SIGNATURE, CSW_LENGTH, CSW_SIGNATURE,
    CommandOutcome, CommandStatus, CommandStatusWrapper, DataPhase, GET_MAX_LUN,
    command_block_wrapper,
};
pub use disk::{Readiness, ScsiDisk};
pub use error::{MassStorageError, Stage};
pub use scsi::{
    Capacity, INQUIRY, Inquiry, READ_10, READ_CAPACITY_10, REQUEST_SENSE, Sense, SenseKey,
    TEST_UNIT_READY, WRITE_10,
};
