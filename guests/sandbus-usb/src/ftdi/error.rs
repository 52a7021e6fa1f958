//! What can go wrong on an FTDI serial port, as one enum a script matches on.

use std::fmt;

use crate::transfers::describe_usb_error;
use crate::usb::UsbError;

/// Why a serial port operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FtdiError {
    /// The interface lacks a bulk IN or bulk OUT endpoint.
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
    /// The chip cannot run within 3 % of this rate.
    UnsupportedBaud {
        /// The rate asked for.
        baud: u32,
    },
    /// The device took none of the bytes left to write.
    ShortWrite {
        /// Bytes written.
        sent: usize,
        /// Bytes given.
        expected: usize,
    },
    /// A packet too short to hold the two status bytes.
    MalformedPacket {
        /// Its length.
        length: usize,
    },
    /// The pattern did not arrive in time.
    PatternNotSeen {
        /// What was waited for.
        pattern: String,
        /// How long.
        waited_ms: u64,
        /// Everything read while waiting (lossy UTF-8), for the report.
        seen: String,
    },
}

impl fmt::Display for FtdiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEndpoint { interface } => write!(
                f,
                "interface {interface} lacks a bulk IN or bulk OUT endpoint: not an FTDI port"
            ),
            Self::Usb { operation, error } => {
                write!(f, "{operation} failed: {}", describe_usb_error(error))
            }
            Self::UnsupportedBaud { baud } => write!(
                f,
                "the adapter cannot run at {baud} baud (183 to 3000000, within 3 %)"
            ),
            Self::ShortWrite { sent, expected } => {
                write!(f, "the adapter took {sent} of {expected} bytes")
            }
            Self::MalformedPacket { length } => write!(
                f,
                "a {length}-byte packet cannot hold the adapter's two status bytes"
            ),
            Self::PatternNotSeen {
                pattern,
                waited_ms,
                seen,
            } => write!(
                f,
                "{pattern:?} did not arrive within {waited_ms} ms; read {seen:?}"
            ),
        }
    }
}

impl std::error::Error for FtdiError {}
