//! The device a run leased, opened, with its configurations parsed: where a script starts.

use std::fmt;

use crate::descriptors::{Configuration, DescriptorError, parse_configuration};
use crate::transfers::describe_usb_error;
use crate::usb::{self, DeviceHandle, DeviceInfo, UsbError};

/// Why the leased device could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The host refused (no device leased, the device gone, busy).
    Usb {
        /// What was being done.
        operation: &'static str,
        /// What the host said.
        error: UsbError,
    },
    /// A configuration descriptor is broken.
    Descriptor(DescriptorError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usb { operation, error } => {
                write!(f, "{operation} failed: {}", describe_usb_error(error))
            }
            Self::Descriptor(error) => write!(f, "reading the configurations: {error}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// The run's device: its identity, its configurations (to find interfaces by class), and an
/// open handle. In a component the handle is the leased `device-handle`; a native test puts
/// a fake device there (any [`crate::Transfers`]), so a script's checks run on both.
pub struct LeasedDevice<H = DeviceHandle> {
    /// Vendor, product, serial, location.
    pub info: DeviceInfo,
    /// Every configuration, parsed.
    pub configurations: Vec<Configuration>,
    /// The open device. Dropping it releases the interfaces and closes the device.
    pub handle: H,
}

impl<H> LeasedDevice<H> {
    /// `vvvv:pppp at LOCATION (serial S)`, for a report.
    pub fn describe(&self) -> String {
        let info = &self.info;
        let serial = info.serial.as_deref().unwrap_or("none");
        format!(
            "{:04x}:{:04x} at {} (serial {serial})",
            info.vendor_id, info.product_id, info.location
        )
    }
}

impl LeasedDevice<DeviceHandle> {
    /// Opens the device the run leased (in a component; natively there is no host).
    pub fn open() -> Result<Self, OpenError> {
        let usb_error = |operation| move |error| OpenError::Usb { operation, error };
        let device = usb::leased_device().map_err(usb_error("finding the leased device"))?;
        let configurations = device
            .configuration_descriptors()
            .map_err(usb_error("reading the configuration descriptors"))?
            .iter()
            .map(|bytes| parse_configuration(bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(OpenError::Descriptor)?;
        let handle = device.open().map_err(usb_error("opening the device"))?;
        Ok(Self {
            info: device.info(),
            configurations,
            handle,
        })
    }
}
