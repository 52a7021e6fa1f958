//! What can go wrong reading a boot keyboard, as one enum a script matches on.

use std::fmt;

use crate::transfers::describe_usb_error;
use crate::usb::UsbError;

/// Why a keyboard operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyboardError {
    /// The interface has no interrupt IN endpoint: it cannot send reports.
    MissingEndpoint {
        /// The interface number.
        interface: u8,
    },
    /// A transfer failed.
    Usb {
        /// What was being done.
        operation: &'static str,
        /// What the host said.
        error: UsbError,
    },
    /// A report shorter than the 8 bytes of a boot report: the keyboard is not in boot
    /// protocol, or is not a boot keyboard.
    MalformedReport {
        /// The report's bytes.
        report: Vec<u8>,
    },
    /// Enter was not pressed in time.
    LineNotFinished {
        /// How long was waited.
        waited_ms: u64,
        /// What was typed meanwhile.
        typed: String,
    },
}

impl fmt::Display for KeyboardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEndpoint { interface } => write!(
                f,
                "interface {interface} has no interrupt IN endpoint: not a keyboard"
            ),
            Self::Usb { operation, error } => {
                write!(f, "{operation} failed: {}", describe_usb_error(error))
            }
            Self::MalformedReport { report } => write!(
                f,
                "a {}-byte report {report:02x?} is not a boot keyboard report (8 bytes)",
                report.len()
            ),
            Self::LineNotFinished { waited_ms, typed } => {
                write!(f, "no Enter within {waited_ms} ms; typed so far {typed:?}")
            }
        }
    }
}

impl std::error::Error for KeyboardError {}
