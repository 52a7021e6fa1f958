//! The Bulk-Only Transport (USB Mass Storage Class Bulk-Only Transport 1.0): each command is
//! a Command Block Wrapper on bulk OUT, an optional data phase, and a Command Status Wrapper
//! on bulk IN, with the error recovery of its section 5.3 and 6.6:
//!
//! - a stalled data phase: clear the halt on that pipe, then read the status as usual;
//! - a stalled status read: clear the halt on bulk IN and read the status once more;
//! - a status that is not valid or not meaningful, a phase error, a refused command, a
//!   transfer that times out: reset recovery (Bulk-Only Mass Storage Reset to the
//!   interface, then clear halt on bulk IN and on bulk OUT).

use super::error::{MassStorageError, Stage};
use crate::descriptors::Interface;
use crate::transfers::{CLASS_INTERFACE_IN, CLASS_INTERFACE_OUT, Transfers, setup};
use crate::usb::UsbError;

/// `dCBWSignature`: "USBC", little endian.
pub const CBW_SIGNATURE: u32 = 0x4342_5355;
/// `dCSWSignature`: "USBS", little endian.
pub const CSW_SIGNATURE: u32 = 0x5342_5355;
/// Bytes in a Command Block Wrapper.
pub const CBW_LENGTH: usize = 31;
/// Bytes in a Command Status Wrapper.
pub const CSW_LENGTH: usize = 13;
/// Class request GET MAX LUN.
pub const GET_MAX_LUN: u8 = 0xfe;
/// Class request Bulk-Only Mass Storage Reset.
pub const BULK_ONLY_RESET: u8 = 0xff;

/// Most bytes asked of the device in one bulk transfer of a data phase: a multiple of every
/// bulk packet size, well below the host's per-transfer limit.
const DATA_CHUNK: u32 = 64 * 1024;

/// The data phase of a command, seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPhase<'a> {
    /// No data.
    None,
    /// The device sends at most this many bytes.
    In(u32),
    /// The host sends these bytes.
    Out(&'a [u8]),
}

impl DataPhase<'_> {
    fn length(&self) -> u32 {
        match self {
            Self::None => 0,
            Self::In(length) => *length,
            Self::Out(data) => u32::try_from(data.len()).unwrap_or(u32::MAX),
        }
    }
}

/// A Command Block Wrapper's bytes (section 5.1).
pub fn command_block_wrapper(tag: u32, lun: u8, command: &[u8], data: DataPhase<'_>) -> [u8; 31] {
    let mut cbw = [0u8; CBW_LENGTH];
    cbw[0..4].copy_from_slice(&CBW_SIGNATURE.to_le_bytes());
    cbw[4..8].copy_from_slice(&tag.to_le_bytes());
    cbw[8..12].copy_from_slice(&data.length().to_le_bytes());
    cbw[12] = if matches!(data, DataPhase::In(_)) {
        0x80
    } else {
        0
    };
    cbw[13] = lun & 0x0f;
    let length = command.len().min(16);
    cbw[14] = length as u8;
    cbw[15..15 + length].copy_from_slice(&command[..length]);
    cbw
}

/// How a command ended, as its status wrapper says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    /// `bCSWStatus` 0.
    Passed,
    /// `bCSWStatus` 1: the command failed; REQUEST SENSE says why.
    Failed,
}

/// A valid, meaningful Command Status Wrapper (section 5.2, 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandStatusWrapper {
    /// `dCSWTag`, equal to the command's.
    pub tag: u32,
    /// `dCSWDataResidue`: bytes of the data phase not moved (or not processed).
    pub residue: u32,
    /// `bCSWStatus`.
    pub status: u8,
}

impl CommandStatusWrapper {
    /// Reads a status wrapper and checks it is valid for the command with `tag` (size,
    /// signature, tag). Meaning (status, residue) is checked by the caller.
    pub fn parse(bytes: &[u8], tag: u32) -> Result<Self, String> {
        if bytes.len() != CSW_LENGTH {
            return Err(format!("{} bytes, {CSW_LENGTH} expected", bytes.len()));
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let signature = word(0);
        if signature != CSW_SIGNATURE {
            return Err(format!(
                "signature {signature:#010x}, {CSW_SIGNATURE:#010x} expected"
            ));
        }
        let found = word(4);
        if found != tag {
            return Err(format!("tag {found:#010x}, the command's was {tag:#010x}"));
        }
        Ok(Self {
            tag: found,
            residue: word(8),
            status: bytes[12],
        })
    }
}

/// What a command that completed its status phase produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Passed or failed.
    pub status: CommandStatus,
    /// Bytes of the data phase the device did not move or process.
    pub residue: u32,
    /// The bytes the device sent (IN commands; empty otherwise).
    pub data: Vec<u8>,
    /// The device stalled the data phase (the halt was cleared).
    pub data_stalled: bool,
}

/// A Bulk-Only Transport interface: sends commands and runs the recovery when the device
/// misbehaves, so a caller sees one typed error and the next command starts clean.
pub struct BulkOnlyTransport<T> {
    transfers: T,
    interface: u8,
    bulk_in: u8,
    bulk_out: u8,
    next_tag: u32,
    timeout_ms: u32,
    recoveries: u32,
}

impl<T: Transfers> BulkOnlyTransport<T> {
    /// Claims the interface and finds its bulk endpoints. The interface is normally the one
    /// [`crate::InterfaceClass::MASS_STORAGE_BULK_ONLY`] finds.
    pub fn open(mut transfers: T, interface: &Interface) -> Result<Self, MassStorageError> {
        let (bulk_in, bulk_out) =
            interface
                .bulk_endpoints()
                .ok_or(MassStorageError::MissingEndpoint {
                    interface: interface.number,
                })?;
        transfers
            .claim_interface(interface.number)
            .map_err(|error| MassStorageError::Usb {
                stage: Stage::Control,
                error,
            })?;
        Ok(Self {
            transfers,
            interface: interface.number,
            bulk_in: bulk_in.address,
            bulk_out: bulk_out.address,
            next_tag: 1,
            timeout_ms: 10_000,
            recoveries: 0,
        })
    }

    /// Sets the timeout of each transfer (default 10 s: emulated devices can be slow).
    pub fn set_timeout_ms(&mut self, timeout_ms: u32) {
        self.timeout_ms = timeout_ms.max(1);
    }

    /// How many reset recoveries this transport has done: a script can report it, or treat
    /// any as a failure of the device under test.
    pub fn recoveries(&self) -> u32 {
        self.recoveries
    }

    /// Gives the device back.
    pub fn into_inner(self) -> T {
        self.transfers
    }

    /// GET MAX LUN: the highest logical unit number. A device with one unit may stall the
    /// request (section 3.2); that reads as 0.
    pub fn max_lun(&mut self) -> Result<u8, MassStorageError> {
        let request = setup(
            CLASS_INTERFACE_IN,
            GET_MAX_LUN,
            0,
            u16::from(self.interface),
        );
        match self.transfers.control_in(request, 1, self.timeout_ms) {
            Ok(data) => data.first().copied().ok_or(MassStorageError::BadResponse {
                command: "GET MAX LUN",
                detail: "no byte returned".into(),
            }),
            Err(UsbError::Stall) => Ok(0),
            Err(error) => Err(MassStorageError::Usb {
                stage: Stage::Control,
                error,
            }),
        }
    }

    /// Reset recovery (section 5.3.4): Bulk-Only Mass Storage Reset to the interface, then
    /// clear halt on bulk IN and on bulk OUT.
    pub fn reset_recovery(&mut self) -> Result<(), (Stage, UsbError)> {
        self.recoveries += 1;
        let request = setup(
            CLASS_INTERFACE_OUT,
            BULK_ONLY_RESET,
            0,
            u16::from(self.interface),
        );
        self.transfers
            .control_out(request, &[], self.timeout_ms)
            .map_err(|e| (Stage::Control, e))?;
        self.transfers
            .clear_halt(self.bulk_in)
            .map_err(|e| (Stage::Control, e))?;
        self.transfers
            .clear_halt(self.bulk_out)
            .map_err(|e| (Stage::Control, e))
    }

    /// Runs reset recovery and returns `cause`, or the recovery's own failure wrapping it.
    fn recover(&mut self, cause: MassStorageError) -> MassStorageError {
        match self.reset_recovery() {
            Ok(()) => cause,
            Err((stage, error)) => MassStorageError::RecoveryFailed {
                cause: Box::new(cause),
                stage,
                error,
            },
        }
    }

    /// Sends one command to logical unit `lun` with its data phase and reads its status.
    ///
    /// `Ok` means the status phase completed with a valid, meaningful status: passed or
    /// failed (the caller asks REQUEST SENSE why). Everything else, recovered as the spec
    /// says, is an `Err`.
    pub fn command(
        &mut self,
        lun: u8,
        command: &[u8],
        data: DataPhase<'_>,
    ) -> Result<CommandOutcome, MassStorageError> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let cbw = command_block_wrapper(tag, lun, command, data);
        match self
            .transfers
            .bulk_out(self.bulk_out, &cbw, self.timeout_ms)
        {
            Ok(sent) if sent as usize == CBW_LENGTH => {}
            Ok(sent) => {
                let error = MassStorageError::ShortWrite {
                    stage: Stage::Command,
                    sent,
                    expected: CBW_LENGTH,
                };
                return Err(self.recover(error));
            }
            // A device that refuses a command block stalls it; only reset recovery clears
            // that (section 6.6.1).
            Err(error) => {
                let error = MassStorageError::Usb {
                    stage: Stage::Command,
                    error,
                };
                return Err(self.recover(error));
            }
        }
        let (received, data_stalled) = match self.data_phase(data) {
            Ok(done) => done,
            Err(error) => return Err(self.recover(error)),
        };
        let csw = match self.read_status(tag) {
            Ok(csw) => csw,
            Err(error) => return Err(self.recover(error)),
        };
        let status = match csw.status {
            0 => CommandStatus::Passed,
            1 => CommandStatus::Failed,
            2 => return Err(self.recover(MassStorageError::PhaseError)),
            other => {
                let error = MassStorageError::InvalidStatus {
                    detail: format!("status {other} is not 0, 1 or 2"),
                };
                return Err(self.recover(error));
            }
        };
        if csw.residue > data.length() {
            let error = MassStorageError::InvalidStatus {
                detail: format!(
                    "residue {} is more than the {} bytes of the command",
                    csw.residue,
                    data.length()
                ),
            };
            return Err(self.recover(error));
        }
        Ok(CommandOutcome {
            status,
            residue: csw.residue,
            data: received,
            data_stalled,
        })
    }

    /// Moves the data phase; a stall ends it early and is cleared (section 6.7.2, 6.7.3).
    /// Returns the bytes received and whether the device stalled.
    fn data_phase(&mut self, data: DataPhase<'_>) -> Result<(Vec<u8>, bool), MassStorageError> {
        let data_error = |error| MassStorageError::Usb {
            stage: Stage::Data,
            error,
        };
        match data {
            DataPhase::None => Ok((Vec::new(), false)),
            DataPhase::In(length) => {
                let mut received = Vec::with_capacity(length as usize);
                while (received.len() as u32) < length {
                    let asked = (length - received.len() as u32).min(DATA_CHUNK);
                    match self.transfers.bulk_in(self.bulk_in, asked, self.timeout_ms) {
                        Ok(chunk) => {
                            let short = (chunk.len() as u32) < asked;
                            received.extend(chunk);
                            if short {
                                break;
                            }
                        }
                        Err(UsbError::Stall) => {
                            self.transfers
                                .clear_halt(self.bulk_in)
                                .map_err(data_error)?;
                            return Ok((received, true));
                        }
                        Err(error) => return Err(data_error(error)),
                    }
                }
                Ok((received, false))
            }
            DataPhase::Out(bytes) => {
                let mut sent = 0;
                while sent < bytes.len() {
                    let end = (sent + DATA_CHUNK as usize).min(bytes.len());
                    match self
                        .transfers
                        .bulk_out(self.bulk_out, &bytes[sent..end], self.timeout_ms)
                    {
                        Ok(0) => {
                            return Err(MassStorageError::ShortWrite {
                                stage: Stage::Data,
                                sent: sent as u32,
                                expected: bytes.len(),
                            });
                        }
                        Ok(n) => sent += n as usize,
                        Err(UsbError::Stall) => {
                            self.transfers
                                .clear_halt(self.bulk_out)
                                .map_err(data_error)?;
                            return Ok((Vec::new(), true));
                        }
                        Err(error) => return Err(data_error(error)),
                    }
                }
                Ok((Vec::new(), false))
            }
        }
    }

    /// Reads the status wrapper; a stall is cleared and the read tried once more (section
    /// 6.7.2). An invalid wrapper is an error that calls for reset recovery.
    fn read_status(&mut self, tag: u32) -> Result<CommandStatusWrapper, MassStorageError> {
        let status_error = |error| MassStorageError::Usb {
            stage: Stage::Status,
            error,
        };
        let length = CSW_LENGTH as u32;
        let bytes = match self
            .transfers
            .bulk_in(self.bulk_in, length, self.timeout_ms)
        {
            Err(UsbError::Stall) => {
                self.transfers
                    .clear_halt(self.bulk_in)
                    .map_err(status_error)?;
                self.transfers
                    .bulk_in(self.bulk_in, length, self.timeout_ms)
                    .map_err(status_error)?
            }
            result => result.map_err(status_error)?,
        };
        CommandStatusWrapper::parse(&bytes, tag)
            .map_err(|detail| MassStorageError::InvalidStatus { detail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_block_wrapper_is_laid_out_as_section_5_1_says() {
        let cbw = command_block_wrapper(0x1234_5678, 2, &[0x12, 0, 0, 0, 36, 0], DataPhase::In(36));
        assert_eq!(&cbw[0..4], b"USBC");
        assert_eq!(&cbw[4..8], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&cbw[8..12], &[36, 0, 0, 0]);
        assert_eq!(cbw[12], 0x80, "direction bit set for IN");
        assert_eq!(cbw[13], 2);
        assert_eq!(cbw[14], 6);
        assert_eq!(&cbw[15..21], &[0x12, 0, 0, 0, 36, 0]);
        assert!(cbw[21..].iter().all(|b| *b == 0));
        let write = command_block_wrapper(1, 0, &[0x2a; 10], DataPhase::Out(&[0; 512]));
        assert_eq!((write[12], &write[8..12]), (0, &[0, 2, 0, 0][..]));
    }

    #[test]
    fn a_status_wrapper_must_carry_the_signature_and_the_commands_tag() {
        let mut csw = Vec::from(*b"USBS");
        csw.extend_from_slice(&7u32.to_le_bytes());
        csw.extend_from_slice(&12u32.to_le_bytes());
        csw.push(1);
        let parsed = CommandStatusWrapper::parse(&csw, 7).unwrap();
        assert_eq!((parsed.residue, parsed.status), (12, 1));
        assert!(
            CommandStatusWrapper::parse(&csw, 8)
                .unwrap_err()
                .contains("tag")
        );
        assert!(
            CommandStatusWrapper::parse(&csw[..12], 7)
                .unwrap_err()
                .contains("12 bytes")
        );
        csw[0] = b'X';
        assert!(
            CommandStatusWrapper::parse(&csw, 7)
                .unwrap_err()
                .contains("signature")
        );
    }
}
