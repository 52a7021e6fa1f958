//! USB mass storage over the Bulk-Only Transport, SCSI commands on top: what a storage test
//! needs to check a USB disk (identity, readiness, capacity, reading and writing blocks).
//!
//! ```ignore
//! let interface = find_interface(&device.configurations, InterfaceClass::MASS_STORAGE_BULK_ONLY)
//!     .ok_or("no bulk-only mass storage interface")?;
//! let mut transport = BulkOnlyTransport::open(&mut device.handle, interface)?;
//! let lun = transport.max_lun()?;
//! let mut disk = ScsiDisk::new(transport, 0);
//! let inquiry = disk.inquiry()?;                     // vendor, product, revision
//! disk.wait_until_ready(Duration::from_secs(10))?;   // TEST UNIT READY, retried
//! let capacity = disk.read_capacity()?;
//! let block = disk.read(0, 1)?;
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
