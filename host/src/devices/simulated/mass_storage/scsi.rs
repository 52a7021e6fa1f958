//! The SCSI side of the simulated USB stick: a direct-access block device (SBC) held in
//! memory, answering the commands a USB stick's host sends (SPC/SBC: TEST UNIT READY,
//! REQUEST SENSE, INQUIRY, MODE SENSE(6), READ CAPACITY(10), READ(10), WRITE(10) and the
//! no-data housekeeping commands), with fixed-format sense data and a unit attention after
//! power-on or reset.
//!
//! The transport ([`super::BulkOnlyTransport`]) decides what moves over USB; the disk only
//! says what a command would send, wants, and how it ended.

use std::collections::HashMap;

/// SCSI operation codes the disk knows.
mod opcode {
    pub(super) const TEST_UNIT_READY: u8 = 0x00;
    pub(super) const REQUEST_SENSE: u8 = 0x03;
    pub(super) const INQUIRY: u8 = 0x12;
    pub(super) const MODE_SENSE_6: u8 = 0x1a;
    pub(super) const START_STOP_UNIT: u8 = 0x1b;
    pub(super) const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub(super) const READ_CAPACITY_10: u8 = 0x25;
    pub(super) const READ_10: u8 = 0x28;
    pub(super) const WRITE_10: u8 = 0x2a;
    pub(super) const VERIFY_10: u8 = 0x2f;
    pub(super) const SYNCHRONIZE_CACHE_10: u8 = 0x35;
}

/// Sense data: a sense key with its additional sense code and qualifier (SPC, 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sense {
    /// The sense key (0 NO SENSE, 5 ILLEGAL REQUEST, 6 UNIT ATTENTION...).
    pub(super) key: u8,
    /// ASC.
    pub(super) code: u8,
    /// ASCQ.
    pub(super) qualifier: u8,
}

impl Sense {
    /// Nothing to report.
    pub(super) const NONE: Self = Self::new(0x00, 0x00, 0x00);
    /// ILLEGAL REQUEST: INVALID COMMAND OPERATION CODE.
    pub(super) const INVALID_OPCODE: Self = Self::new(0x05, 0x20, 0x00);
    /// ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub(super) const LBA_OUT_OF_RANGE: Self = Self::new(0x05, 0x21, 0x00);
    /// ILLEGAL REQUEST: INVALID FIELD IN CDB.
    pub(super) const INVALID_FIELD: Self = Self::new(0x05, 0x24, 0x00);
    /// ILLEGAL REQUEST: LOGICAL UNIT NOT SUPPORTED.
    pub(super) const LUN_NOT_SUPPORTED: Self = Self::new(0x05, 0x25, 0x00);
    /// UNIT ATTENTION: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub(super) const RESET_OCCURRED: Self = Self::new(0x06, 0x29, 0x00);

    const fn new(key: u8, code: u8, qualifier: u8) -> Self {
        Self {
            key,
            code,
            qualifier,
        }
    }

    /// Fixed-format sense data (response code 0x70, current error), 18 bytes.
    fn fixed_format(self) -> Vec<u8> {
        let mut data = vec![0; 18];
        data[0] = 0x70;
        data[2] = self.key;
        // Additional sense length: the bytes after byte 7.
        data[7] = 10;
        data[12] = self.code;
        data[13] = self.qualifier;
        data
    }
}

/// How a command ended (SAM status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// GOOD.
    Good,
    /// CHECK CONDITION: the sense data says why; REQUEST SENSE fetches it.
    CheckCondition,
}

/// What a command sends to the host.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DataIn {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `count` blocks from `lba`, read as they are sent (a READ may be large).
    Blocks {
        /// The first block.
        lba: u32,
        /// How many blocks.
        count: u32,
    },
}

/// What a command wants done over USB, as the disk decided it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// No data phase; the command ended with this status.
    NoData(Status),
    /// Data for the host, and the status the command ends with once it is sent.
    ToHost(DataIn, Status),
    /// The command wants `count` blocks from the host, written from `lba` on
    /// ([`Disk::store`]); it ends with GOOD once they are.
    FromHost {
        /// The first block to write.
        lba: u32,
        /// How many blocks.
        count: u32,
    },
}

/// The INQUIRY identification strings, already padded to their SCSI widths.
#[derive(Debug, Clone)]
pub(super) struct Identification {
    /// T10 vendor identification: 8 bytes.
    pub(super) vendor: [u8; 8],
    /// Product identification: 16 bytes.
    pub(super) product: [u8; 16],
    /// Product revision level: 4 bytes.
    pub(super) revision: [u8; 4],
}

/// The in-memory disk: its geometry, the blocks written so far (the rest read as zeros), and
/// the sense state of its one logical unit.
#[derive(Debug)]
pub(super) struct Disk {
    blocks: u32,
    block_size: u32,
    stored: HashMap<u32, Box<[u8]>>,
    identification: Identification,
    /// Whether power-on and reset raise a unit attention.
    unit_attention_on_reset: bool,
    /// A unit attention not reported yet.
    unit_attention: bool,
    /// The sense data REQUEST SENSE returns next.
    sense: Sense,
}

/// Reads a big-endian u32 from `bytes` at `at` (the CDB is padded to 16 bytes, so in range).
fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    if let Some(slice) = bytes.get(at..at + 4) {
        word.copy_from_slice(slice);
    }
    u32::from_be_bytes(word)
}

/// Reads a big-endian u16 from `bytes` at `at`.
fn be16(bytes: &[u8], at: usize) -> u16 {
    let mut word = [0; 2];
    if let Some(slice) = bytes.get(at..at + 2) {
        word.copy_from_slice(slice);
    }
    u16::from_be_bytes(word)
}

impl Disk {
    /// An empty (all zero) disk of `blocks` blocks of `block_size` bytes.
    pub(super) fn new(
        blocks: u32,
        block_size: u32,
        identification: Identification,
        unit_attention_on_reset: bool,
    ) -> Self {
        Self {
            blocks,
            block_size,
            stored: HashMap::new(),
            identification,
            unit_attention_on_reset,
            unit_attention: unit_attention_on_reset,
            sense: Sense::NONE,
        }
    }

    /// The size of a block, in bytes.
    pub(super) fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The logical unit was powered on or reset: a unit attention is raised if configured.
    pub(super) fn power_on(&mut self) {
        self.unit_attention = self.unit_attention_on_reset;
        self.sense = Sense::NONE;
    }

    /// The sense data REQUEST SENSE would return now (for tests and logs).
    #[cfg(test)]
    pub(super) fn sense(&self) -> Sense {
        self.sense
    }

    /// Fails the command with CHECK CONDITION and `sense` (the transport does for a CBW it
    /// cannot make sense of).
    pub(super) fn reject(&mut self, sense: Sense) -> Reply {
        self.sense = sense;
        Reply::NoData(Status::CheckCondition)
    }

    /// Answers a command for logical unit `lun` with command block `cdb` (as many bytes as
    /// the CBW gave, at most 16).
    pub(super) fn command(&mut self, lun: u8, cdb: &[u8]) -> Reply {
        let mut padded = [0u8; 16];
        let n = cdb.len().min(16);
        padded[..n].copy_from_slice(&cdb[..n]);
        let cdb = padded;
        let opcode = cdb[0];
        if lun != 0 {
            return self.reject(Sense::LUN_NOT_SUPPORTED);
        }
        // A pending unit attention fails the next command, but INQUIRY and REQUEST SENSE
        // (which reports it instead) (SPC, 5.14).
        if self.unit_attention && opcode != opcode::INQUIRY {
            self.unit_attention = false;
            if opcode != opcode::REQUEST_SENSE {
                return self.reject(Sense::RESET_OCCURRED);
            }
            self.sense = Sense::RESET_OCCURRED;
        }
        if opcode != opcode::REQUEST_SENSE {
            self.sense = Sense::NONE;
        }
        match opcode {
            opcode::TEST_UNIT_READY
            | opcode::START_STOP_UNIT
            | opcode::PREVENT_ALLOW_MEDIUM_REMOVAL
            | opcode::SYNCHRONIZE_CACHE_10 => Reply::NoData(Status::Good),
            opcode::REQUEST_SENSE => {
                let mut data = self.sense.fixed_format();
                data.truncate(usize::from(cdb[4]));
                self.sense = Sense::NONE;
                Reply::ToHost(DataIn::Bytes(data), Status::Good)
            }
            opcode::INQUIRY => self.inquiry(&cdb),
            opcode::MODE_SENSE_6 => {
                // Header only: no block descriptors, no pages; not write protected.
                let mut data = vec![3, 0, 0, 0];
                data.truncate(usize::from(cdb[4]));
                Reply::ToHost(DataIn::Bytes(data), Status::Good)
            }
            opcode::READ_CAPACITY_10 => {
                let mut data = self.blocks.saturating_sub(1).to_be_bytes().to_vec();
                data.extend(self.block_size.to_be_bytes());
                Reply::ToHost(DataIn::Bytes(data), Status::Good)
            }
            opcode::READ_10 | opcode::WRITE_10 | opcode::VERIFY_10 => {
                let lba = be32(&cdb, 2);
                let count = u32::from(be16(&cdb, 7));
                if u64::from(lba) + u64::from(count) > u64::from(self.blocks) {
                    return self.reject(Sense::LBA_OUT_OF_RANGE);
                }
                match (opcode, count) {
                    (_, 0) | (opcode::VERIFY_10, _) => Reply::NoData(Status::Good),
                    (opcode::READ_10, _) => {
                        Reply::ToHost(DataIn::Blocks { lba, count }, Status::Good)
                    }
                    _ => Reply::FromHost { lba, count },
                }
            }
            _ => self.reject(Sense::INVALID_OPCODE),
        }
    }

    /// Standard INQUIRY data (SPC, 6.4.2): a removable direct-access device, SPC-3.
    fn inquiry(&mut self, cdb: &[u8; 16]) -> Reply {
        // Vital product data pages (EVPD) are not offered.
        if cdb[1] & 0x01 != 0 || cdb[2] != 0 {
            return self.reject(Sense::INVALID_FIELD);
        }
        let id = &self.identification;
        let mut data = vec![0x00, 0x80, 0x05, 0x02, 31, 0, 0, 0];
        data.extend(id.vendor);
        data.extend(id.product);
        data.extend(id.revision);
        data.truncate(usize::from(be16(cdb, 3)));
        Reply::ToHost(DataIn::Bytes(data), Status::Good)
    }

    /// `length` bytes of the blocks from `lba` on, starting `offset` bytes in.
    pub(super) fn read(&self, lba: u32, offset: u64, length: usize) -> Vec<u8> {
        let size = u64::from(self.block_size);
        let mut data = Vec::with_capacity(length);
        let mut at = offset;
        while data.len() < length {
            let block = u64::from(lba) + at / size;
            let within = usize::try_from(at % size).unwrap_or(0);
            let take = (length - data.len()).min(self.block_size as usize - within);
            match u32::try_from(block).ok().and_then(|b| self.stored.get(&b)) {
                Some(bytes) => data.extend(&bytes[within..within + take]),
                None => data.resize(data.len() + take, 0),
            }
            at += take as u64;
        }
        data
    }

    /// Stores one whole block at `lba` (the transport checked the range).
    pub(super) fn store(&mut self, lba: u32, block: &[u8]) {
        if lba < self.blocks && block.len() == self.block_size as usize {
            if block.iter().all(|&b| b == 0) {
                self.stored.remove(&lba);
            } else {
                self.stored.insert(lba, block.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> Disk {
        Disk::new(
            8,
            512,
            Identification {
                vendor: *b"QEMU    ",
                product: *b"QEMU HARDDISK   ",
                revision: *b"2.5+",
            },
            true,
        )
    }

    #[test]
    fn a_unit_attention_fails_the_first_command_but_inquiry_and_is_then_reported() {
        let mut disk = disk();
        let inquiry = [opcode::INQUIRY, 0, 0, 0, 36, 0];
        assert!(matches!(
            disk.command(0, &inquiry),
            Reply::ToHost(DataIn::Bytes(data), Status::Good) if data.len() == 36
        ));
        assert_eq!(
            disk.command(0, &[opcode::TEST_UNIT_READY; 6]),
            Reply::NoData(Status::CheckCondition)
        );
        assert_eq!(disk.sense(), Sense::RESET_OCCURRED);
        let sense = disk.command(0, &[opcode::REQUEST_SENSE, 0, 0, 0, 18, 0]);
        let Reply::ToHost(DataIn::Bytes(data), Status::Good) = sense else {
            panic!("{sense:?}");
        };
        assert_eq!((data[0], data[2], data[12], data[13]), (0x70, 6, 0x29, 0));
        assert_eq!(
            disk.command(0, &[opcode::TEST_UNIT_READY; 6]),
            Reply::NoData(Status::Good)
        );
    }

    #[test]
    fn blocks_read_back_as_written_and_unwritten_ones_as_zeros() {
        let mut disk = disk();
        disk.store(2, &[0xab; 512]);
        let data = disk.read(1, 500, 24);
        assert_eq!(&data[..12], &[0; 12]);
        assert_eq!(&data[12..], &[0xab; 12]);
        // Writing zeros frees the block.
        disk.store(2, &[0; 512]);
        assert!(disk.stored.is_empty());
    }

    #[test]
    fn reads_past_the_last_block_are_out_of_range() {
        let mut disk = disk();
        disk.power_on();
        disk.unit_attention = false;
        let read = |lba: u32, count: u16| {
            let mut cdb = vec![opcode::READ_10, 0];
            cdb.extend(lba.to_be_bytes());
            cdb.push(0);
            cdb.extend(count.to_be_bytes());
            cdb.push(0);
            cdb
        };
        assert_eq!(
            disk.command(0, &read(7, 1)),
            Reply::ToHost(DataIn::Blocks { lba: 7, count: 1 }, Status::Good)
        );
        assert_eq!(
            disk.command(0, &read(7, 2)),
            Reply::NoData(Status::CheckCondition)
        );
        assert_eq!(disk.sense(), Sense::LBA_OUT_OF_RANGE);
        assert_eq!(
            disk.command(0, &read(u32::MAX, 1)),
            Reply::NoData(Status::CheckCondition)
        );
    }
}
