//! A serial console over an FTDI USB adapter (FT232 class; what QEMU's `usb-serial`
//! emulates): configure the line, wait for a prompt, send lines.
//!
//! ```ignore
//! let interface = find_interface(&device.configurations, InterfaceClass::VENDOR_SPECIFIC)
//!     .ok_or("no FTDI interface")?;
//! let mut serial = FtdiSerial::open(&mut device.handle, interface)?;
//! serial.configure(&LineSettings::console(115_200))?;
//! serial.read_until("login: ", Duration::from_secs(10))?;
//! serial.write_line("root")?;
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
