//! What can go wrong talking to a mass storage device, as one enum a script matches on.

use std::fmt;

use super::scsi::Sense;
use crate::transfers::describe_usb_error;
use crate::usb::UsbError;

/// Which part of a Bulk-Only command (or which request) a transfer belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Sending the Command Block Wrapper.
    Command,
    /// The data phase.
    Data,
    /// Receiving the Command Status Wrapper.
    Status,
    /// A class request on the control pipe (GET MAX LUN, Bulk-Only Mass Storage Reset) or a
    /// clear halt.
    Control,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Command => "sending the command",
            Self::Data => "the data phase",
            Self::Status => "reading the status",
            Self::Control => "a control request",
        })
    }
}

/// Why a mass storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MassStorageError {
    /// The interface lacks a bulk IN or a bulk OUT endpoint: it is not a Bulk-Only
    /// interface.
    MissingEndpoint {
        /// The interface number.
        interface: u8,
    },
    /// A transfer failed in a way the Bulk-Only recovery does not cover (a timeout, the
    /// device gone). When the stage was past the command, reset recovery was attempted.
    Usb {
        /// Where it failed.
        stage: Stage,
        /// What the host said.
        error: UsbError,
    },
    /// The device took fewer bytes than were given.
    ShortWrite {
        /// Where.
        stage: Stage,
        /// Bytes taken.
        sent: u32,
        /// Bytes given.
        expected: usize,
    },
    /// The Command Status Wrapper was not valid (size, signature, tag) or not meaningful
    /// (status or residue out of range). Reset recovery was done: the next command starts
    /// clean.
    InvalidStatus {
        /// What was wrong with it.
        detail: String,
    },
    /// The device reported a phase error. Reset recovery was done.
    PhaseError,
    /// Reset recovery itself failed after another error: the device may need to be
    /// re-plugged.
    RecoveryFailed {
        /// The error that called for the recovery.
        cause: Box<MassStorageError>,
        /// The request that failed during recovery.
        stage: Stage,
        /// What the host said.
        error: UsbError,
    },
    /// The command ended with CHECK CONDITION; `sense` is what REQUEST SENSE returned, if it
    /// worked.
    CommandFailed {
        /// The SCSI command, by name.
        command: &'static str,
        /// The sense data.
        sense: Option<Sense>,
    },
    /// The command passed but its data does not make sense (too short, malformed).
    BadResponse {
        /// The SCSI command, by name.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The command passed but moved fewer bytes than asked (a non-zero residue where all
    /// the data was needed).
    Residue {
        /// The SCSI command, by name.
        command: &'static str,
        /// Bytes expected.
        expected: u32,
        /// Bytes not moved, as the device reported.
        residue: u32,
    },
    /// The unit did not become ready in time.
    NotReady {
        /// TEST UNIT READY commands sent.
        attempts: u32,
        /// The last sense data seen.
        sense: Option<Sense>,
    },
    /// READ CAPACITY(10) says the disk has more blocks than a 32-bit address reaches (it
    /// needs READ CAPACITY(16), which this crate does not send).
    CapacityTooLarge,
    /// A read or write past the end of the disk.
    OutOfRange {
        /// First block asked for.
        lba: u64,
        /// Blocks asked for.
        count: u64,
        /// Blocks the disk has.
        blocks: u64,
    },
    /// Data to write that is not a whole number of blocks, or more blocks than one
    /// READ(10)/WRITE(10) carries (65535).
    BadLength {
        /// Bytes given.
        length: usize,
        /// The disk's block size.
        block_size: u32,
    },
}

impl fmt::Display for MassStorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEndpoint { interface } => write!(
                f,
                "interface {interface} lacks a bulk IN or bulk OUT endpoint: not Bulk-Only"
            ),
            Self::Usb { stage, error } => {
                write!(f, "{stage} failed: {}", describe_usb_error(error))
            }
            Self::ShortWrite {
                stage,
                sent,
                expected,
            } => write!(f, "{stage}: the device took {sent} of {expected} bytes"),
            Self::InvalidStatus { detail } => write!(
                f,
                "the command status was invalid ({detail}); the device was reset (reset recovery)"
            ),
            Self::PhaseError => write!(
                f,
                "the device reported a phase error; it was reset (reset recovery)"
            ),
            Self::RecoveryFailed {
                cause,
                stage,
                error,
            } => write!(
                f,
                "{cause}; then reset recovery failed in {stage}: {} (re-plug the device)",
                describe_usb_error(error)
            ),
            Self::CommandFailed {
                command,
                sense: Some(sense),
            } => write!(f, "{command} failed: {sense}"),
            Self::CommandFailed {
                command,
                sense: None,
            } => write!(f, "{command} failed and no sense data could be read"),
            Self::BadResponse { command, detail } => {
                write!(f, "{command} answered nonsense: {detail}")
            }
            Self::Residue {
                command,
                expected,
                residue,
            } => write!(
                f,
                "{command} moved {} of {expected} bytes",
                expected.saturating_sub(*residue)
            ),
            Self::NotReady {
                attempts,
                sense: Some(sense),
            } => write!(
                f,
                "the unit did not become ready after {attempts} TEST UNIT READY: {sense}"
            ),
            Self::NotReady {
                attempts,
                sense: None,
            } => write!(
                f,
                "the unit did not become ready after {attempts} TEST UNIT READY"
            ),
            Self::CapacityTooLarge => write!(
                f,
                "the disk is larger than READ CAPACITY(10) can say (2^32 blocks)"
            ),
            Self::OutOfRange { lba, count, blocks } => write!(
                f,
                "blocks {lba}..{} are past the end of the disk ({blocks} blocks)",
                lba.saturating_add(*count)
            ),
            Self::BadLength { length, block_size } => write!(
                f,
                "{length} bytes is not 1 to 65535 whole blocks of {block_size} bytes"
            ),
        }
    }
}

impl std::error::Error for MassStorageError {}
