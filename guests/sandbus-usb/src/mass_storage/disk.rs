//! A SCSI disk behind a Bulk-Only Transport: the commands a storage test sends, each turned
//! into a typed answer, with REQUEST SENSE asked on every failure so the error says why.

use std::time::{Duration, Instant};

use super::bot::{BulkOnlyTransport, CommandOutcome, CommandStatus, DataPhase};
use super::error::MassStorageError;
use super::scsi::{
    Capacity, INQUIRY_LENGTH, Inquiry, READ_10, SENSE_LENGTH, Sense, SenseKey, TEST_UNIT_READY,
    WRITE_10, inquiry_command, read_capacity_command, read_write_10_command, request_sense_command,
};
use crate::transfers::Transfers;

/// What [`ScsiDisk::wait_until_ready`] went through before the unit was ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// TEST UNIT READY commands sent, the last one passing.
    pub attempts: u32,
    /// The transient conditions reported on the way (unit attention, becoming ready).
    pub reported: Vec<Sense>,
}

/// One logical unit of a mass storage device, spoken to in SCSI.
pub struct ScsiDisk<T> {
    transport: BulkOnlyTransport<T>,
    lun: u8,
    capacity: Option<Capacity>,
    retry_interval: Duration,
}

impl<T: Transfers> ScsiDisk<T> {
    /// Logical unit `lun` (0 unless [`BulkOnlyTransport::max_lun`] said there are more).
    pub fn new(transport: BulkOnlyTransport<T>, lun: u8) -> Self {
        Self {
            transport,
            lun,
            capacity: None,
            retry_interval: Duration::from_millis(100),
        }
    }

    /// How long [`wait_until_ready`](Self::wait_until_ready) waits between attempts while
    /// the unit is becoming ready (default 100 ms). A unit attention is retried at once.
    pub fn set_retry_interval(&mut self, interval: Duration) {
        self.retry_interval = interval;
    }

    /// The transport, for its settings and its recovery count.
    pub fn transport(&mut self) -> &mut BulkOnlyTransport<T> {
        &mut self.transport
    }

    /// Runs a command; a failed one is answered with REQUEST SENSE, as
    /// [`MassStorageError::CommandFailed`].
    fn run(
        &mut self,
        name: &'static str,
        command: &[u8],
        data: DataPhase<'_>,
    ) -> Result<CommandOutcome, MassStorageError> {
        let outcome = self.transport.command(self.lun, command, data)?;
        match outcome.status {
            CommandStatus::Passed => Ok(outcome),
            CommandStatus::Failed => Err(MassStorageError::CommandFailed {
                command: name,
                sense: self.request_sense().ok(),
            }),
        }
    }

    /// REQUEST SENSE: why the last command failed.
    pub fn request_sense(&mut self) -> Result<Sense, MassStorageError> {
        let outcome = self.transport.command(
            self.lun,
            &request_sense_command(),
            DataPhase::In(u32::from(SENSE_LENGTH)),
        )?;
        if outcome.status == CommandStatus::Failed {
            return Err(MassStorageError::CommandFailed {
                command: "REQUEST SENSE",
                sense: None,
            });
        }
        Sense::parse(&outcome.data).map_err(|detail| MassStorageError::BadResponse {
            command: "REQUEST SENSE",
            detail,
        })
    }

    /// INQUIRY: vendor, product and revision.
    pub fn inquiry(&mut self) -> Result<Inquiry, MassStorageError> {
        let outcome = self.run(
            "INQUIRY",
            &inquiry_command(),
            DataPhase::In(u32::from(INQUIRY_LENGTH)),
        )?;
        Inquiry::parse(&outcome.data).map_err(|detail| MassStorageError::BadResponse {
            command: "INQUIRY",
            detail,
        })
    }

    /// One TEST UNIT READY: `Ok` when the unit is ready, the sense data otherwise.
    pub fn test_unit_ready(&mut self) -> Result<(), MassStorageError> {
        self.run(
            "TEST UNIT READY",
            &[TEST_UNIT_READY, 0, 0, 0, 0, 0],
            DataPhase::None,
        )
        .map(|_| ())
    }

    /// Sends TEST UNIT READY until the unit is ready, for at most `timeout`: retried while
    /// the unit reports a unit attention (after a reset or medium change) or "becoming
    /// ready"; any other failure ends the wait at once.
    pub fn wait_until_ready(&mut self, timeout: Duration) -> Result<Readiness, MassStorageError> {
        let give_up = Instant::now() + timeout;
        let mut readiness = Readiness {
            attempts: 0,
            reported: Vec::new(),
        };
        loop {
            readiness.attempts += 1;
            let sense = match self.test_unit_ready() {
                Ok(()) => return Ok(readiness),
                Err(MassStorageError::CommandFailed {
                    sense: Some(sense), ..
                }) if sense.is_transient() => sense,
                Err(error) => return Err(error),
            };
            readiness.reported.push(sense);
            if Instant::now() >= give_up {
                return Err(MassStorageError::NotReady {
                    attempts: readiness.attempts,
                    sense: Some(sense),
                });
            }
            if sense.key != SenseKey::UnitAttention {
                std::thread::sleep(
                    self.retry_interval
                        .min(give_up.saturating_duration_since(Instant::now())),
                );
            }
        }
    }

    /// READ CAPACITY(10): the block count and size. Remembered for reads and writes.
    pub fn read_capacity(&mut self) -> Result<Capacity, MassStorageError> {
        let outcome = self.run(
            "READ CAPACITY(10)",
            &read_capacity_command(),
            DataPhase::In(8),
        )?;
        let capacity = Capacity::parse(&outcome.data)
            .map_err(|detail| MassStorageError::BadResponse {
                command: "READ CAPACITY(10)",
                detail,
            })?
            .ok_or(MassStorageError::CapacityTooLarge)?;
        self.capacity = Some(capacity);
        Ok(capacity)
    }

    /// The capacity, read once.
    fn capacity(&mut self) -> Result<Capacity, MassStorageError> {
        match self.capacity {
            Some(capacity) => Ok(capacity),
            None => self.read_capacity(),
        }
    }

    /// Checks blocks `lba..lba + count` are on the disk and fit one READ(10)/WRITE(10).
    fn check_range(
        &mut self,
        lba: u64,
        count: u64,
    ) -> Result<(u32, u16, Capacity), MassStorageError> {
        let capacity = self.capacity()?;
        let out_of_range = MassStorageError::OutOfRange {
            lba,
            count,
            blocks: capacity.blocks(),
        };
        if lba.saturating_add(count) > capacity.blocks() {
            return Err(out_of_range);
        }
        let first = u32::try_from(lba).map_err(|_| out_of_range.clone())?;
        let count = u16::try_from(count).map_err(|_| MassStorageError::BadLength {
            length: usize::try_from(count.saturating_mul(u64::from(capacity.block_size)))
                .unwrap_or(usize::MAX),
            block_size: capacity.block_size,
        })?;
        Ok((first, count, capacity))
    }

    /// READ(10): `count` blocks (1 to 65535) from `lba`.
    pub fn read(&mut self, lba: u64, count: u16) -> Result<Vec<u8>, MassStorageError> {
        let (first, count, capacity) = self.check_range(lba, u64::from(count))?;
        let expected = u32::from(count) * capacity.block_size;
        let outcome = self.run(
            "READ(10)",
            &read_write_10_command(READ_10, first, count),
            DataPhase::In(expected),
        )?;
        if outcome.residue != 0 || outcome.data.len() != expected as usize {
            return Err(MassStorageError::Residue {
                command: "READ(10)",
                expected,
                residue: outcome.residue.max(expected - outcome.data.len() as u32),
            });
        }
        Ok(outcome.data)
    }

    /// WRITE(10): `data` (whole blocks, 1 to 65535 of them) from `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), MassStorageError> {
        let block_size = self.capacity()?.block_size;
        let bad_length = MassStorageError::BadLength {
            length: data.len(),
            block_size,
        };
        if data.is_empty() || !data.len().is_multiple_of(block_size as usize) {
            return Err(bad_length);
        }
        let count = (data.len() / block_size as usize) as u64;
        let (first, count, _) = self.check_range(lba, count)?;
        let expected = u32::from(count) * block_size;
        let outcome = self.run(
            "WRITE(10)",
            &read_write_10_command(WRITE_10, first, count),
            DataPhase::Out(data),
        )?;
        if outcome.residue != 0 || outcome.data_stalled {
            return Err(MassStorageError::Residue {
                command: "WRITE(10)",
                expected,
                residue: outcome.residue,
            });
        }
        Ok(())
    }
}
