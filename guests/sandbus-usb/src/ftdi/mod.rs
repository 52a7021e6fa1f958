//! A serial console over an FTDI USB adapter (FT232 class; what QEMU's `usb-serial`
//! emulates): configure the line, wait for a prompt, send lines.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use sandbus_usb::ftdi::{FtdiSerial, LineSettings};
//! use sandbus_usb::{InterfaceClass, LeasedDevice, find_interface};
//!
//! fn log_in() -> Result<String, Box<dyn std::error::Error>> {
//!     let mut device = LeasedDevice::open()?;
//!     let class = InterfaceClass::VENDOR_SPECIFIC;
//!     let interface = find_interface(&device.configurations, class).ok_or("no FTDI port")?;
//!     let mut serial = FtdiSerial::open(&mut device.handle, interface)?;
//!     serial.configure(&LineSettings::console(115_200))?;
//!     let timeout = Duration::from_secs(10);
//!     serial.read_until_nudging("login:", timeout, Duration::from_secs(1))?;
//!     serial.write_line("root")?;
//!     Ok(serial.read_until("$ ", timeout)?)
//! }
//! ```

mod error;
mod serial;
mod settings;
#[cfg(test)]
mod tests;

pub use error::FtdiError;
pub use serial::{
    DTR_RTS_HIGH, FTDI_RESET, FTDI_SET_BAUD_RATE, FTDI_SET_DATA, FTDI_SET_FLOW_CONTROL,
    FTDI_SET_MODEM_CONTROL, FtdiSerial, LineEnding, PURGE_RECEIVE, PURGE_TRANSMIT, RESET_CHIP,
};
pub use settings::{
    BaudDivisor, DataBits, FlowControl, FtdiStatus, LineSettings, Parity, StopBits,
};
