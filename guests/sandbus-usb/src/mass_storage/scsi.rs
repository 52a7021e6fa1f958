//! The SCSI commands a USB disk answers (SPC-4 and SBC-3): their command blocks, and the
//! answers parsed into what a script compares (INQUIRY strings, capacity, sense data).

use std::fmt;

/// TEST UNIT READY.
pub const TEST_UNIT_READY: u8 = 0x00;
/// REQUEST SENSE.
pub const REQUEST_SENSE: u8 = 0x03;
/// INQUIRY.
pub const INQUIRY: u8 = 0x12;
/// READ CAPACITY(10).
pub const READ_CAPACITY_10: u8 = 0x25;
/// READ(10).
pub const READ_10: u8 = 0x28;
/// WRITE(10).
pub const WRITE_10: u8 = 0x2a;

/// Bytes of standard INQUIRY data asked for: the fixed part with the identification
/// strings.
pub const INQUIRY_LENGTH: u8 = 36;
/// Bytes of fixed-format sense data asked for.
pub const SENSE_LENGTH: u8 = 18;

/// The INQUIRY command block.
pub fn inquiry_command() -> [u8; 6] {
    [INQUIRY, 0, 0, 0, INQUIRY_LENGTH, 0]
}

/// The REQUEST SENSE command block (fixed format asked for).
pub fn request_sense_command() -> [u8; 6] {
    [REQUEST_SENSE, 0, 0, 0, SENSE_LENGTH, 0]
}

/// The READ CAPACITY(10) command block.
pub fn read_capacity_command() -> [u8; 10] {
    [READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// A READ(10) or WRITE(10) command block for `blocks` blocks from `lba`.
pub fn read_write_10_command(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let [a, b, c, d] = lba.to_be_bytes();
    let [high, low] = blocks.to_be_bytes();
    [opcode, 0, a, b, c, d, 0, high, low, 0]
}

/// What INQUIRY says the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    /// Peripheral device type (bits 0-4 of byte 0): 0 for a disk.
    pub device_type: u8,
    /// The medium is removable (RMB).
    pub removable: bool,
    /// T10 vendor identification, trimmed of the space padding.
    pub vendor: String,
    /// Product identification, trimmed.
    pub product: String,
    /// Product revision level, trimmed.
    pub revision: String,
}

impl Inquiry {
    /// Reads standard INQUIRY data (at least 36 bytes).
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        if data.len() < usize::from(INQUIRY_LENGTH) {
            return Err(format!(
                "{} bytes of INQUIRY data, at least {INQUIRY_LENGTH} expected",
                data.len()
            ));
        }
        let text = |range: std::ops::Range<usize>| {
            String::from_utf8_lossy(&data[range])
                .trim_matches(|c: char| c == ' ' || c == '\0')
                .to_string()
        };
        Ok(Self {
            device_type: data[0] & 0x1f,
            removable: data[1] & 0x80 != 0,
            vendor: text(8..16),
            product: text(16..32),
            revision: text(32..36),
        })
    }
}

/// What READ CAPACITY(10) says about the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The address of the last block.
    pub last_lba: u32,
    /// Bytes per block.
    pub block_size: u32,
}

impl Capacity {
    /// Reads READ CAPACITY(10) data (8 bytes). `None` when the disk is too large for it
    /// (last block 0xffffffff).
    pub fn parse(data: &[u8]) -> Result<Option<Self>, String> {
        let (Some(lba), Some(size)) = (data.get(0..4), data.get(4..8)) else {
            return Err(format!(
                "{} bytes of READ CAPACITY data, 8 expected",
                data.len()
            ));
        };
        let last_lba = u32::from_be_bytes([lba[0], lba[1], lba[2], lba[3]]);
        let block_size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
        if block_size == 0 {
            return Err("a block size of 0".into());
        }
        if last_lba == u32::MAX {
            return Ok(None);
        }
        Ok(Some(Self {
            last_lba,
            block_size,
        }))
    }

    /// How many blocks the disk has.
    pub fn blocks(&self) -> u64 {
        u64::from(self.last_lba) + 1
    }

    /// How many bytes the disk holds.
    pub fn bytes(&self) -> u64 {
        self.blocks() * u64::from(self.block_size)
    }
}

/// The sense key: the class of what went wrong (SPC-4, 4.5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenseKey {
    /// 0x0: nothing to report.
    NoSense,
    /// 0x1: the command worked after a recovery.
    RecoveredError,
    /// 0x2: the unit cannot be accessed now (ASC/ASCQ say why: becoming ready, no medium).
    NotReady,
    /// 0x3: a flaw in the medium.
    MediumError,
    /// 0x4: the device failed.
    HardwareError,
    /// 0x5: the command or its parameters are wrong.
    IllegalRequest,
    /// 0x6: the unit was reset or its medium changed; the next command will work.
    UnitAttention,
    /// 0x7: the medium is write protected.
    DataProtect,
    /// Any other key, by number.
    Other(u8),
}

impl SenseKey {
    /// The key from its 4-bit code.
    pub fn from_code(code: u8) -> Self {
        match code & 0x0f {
            0x0 => Self::NoSense,
            0x1 => Self::RecoveredError,
            0x2 => Self::NotReady,
            0x3 => Self::MediumError,
            0x4 => Self::HardwareError,
            0x5 => Self::IllegalRequest,
            0x6 => Self::UnitAttention,
            0x7 => Self::DataProtect,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSense => f.write_str("NO SENSE"),
            Self::RecoveredError => f.write_str("RECOVERED ERROR"),
            Self::NotReady => f.write_str("NOT READY"),
            Self::MediumError => f.write_str("MEDIUM ERROR"),
            Self::HardwareError => f.write_str("HARDWARE ERROR"),
            Self::IllegalRequest => f.write_str("ILLEGAL REQUEST"),
            Self::UnitAttention => f.write_str("UNIT ATTENTION"),
            Self::DataProtect => f.write_str("DATA PROTECT"),
            Self::Other(code) => write!(f, "sense key {code:#x}"),
        }
    }
}

/// Sense data: why the last command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// The class of the failure.
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// Reads fixed-format (response code 0x70/0x71) or descriptor-format (0x72/0x73)
    /// sense data.
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let response_code = data.first().map(|b| b & 0x7f);
        let fields = match response_code {
            Some(0x70 | 0x71) => data
                .get(2)
                .zip(data.get(12))
                .zip(data.get(13))
                .map(|((key, asc), ascq)| (*key, *asc, *ascq)),
            Some(0x72 | 0x73) => data
                .get(1)
                .zip(data.get(2))
                .zip(data.get(3))
                .map(|((key, asc), ascq)| (*key, *asc, *ascq)),
            Some(other) => return Err(format!("unknown sense response code {other:#04x}")),
            None => return Err("no sense data".into()),
        };
        let (key, asc, ascq) =
            fields.ok_or_else(|| format!("{} bytes of sense data is too short", data.len()))?;
        Ok(Self {
            key: SenseKey::from_code(key),
            asc,
            ascq,
        })
    }

    /// Whether a unit reporting this will be ready if asked again: a UNIT ATTENTION (reset
    /// or medium change, reported once), or NOT READY "in process of becoming ready"
    /// (ASC 0x04, ASCQ 0x01).
    pub fn is_transient(&self) -> bool {
        match self.key {
            SenseKey::UnitAttention => true,
            SenseKey::NotReady => (self.asc, self.ascq) == (0x04, 0x01),
            _ => false,
        }
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (ASC {:#04x}, ASCQ {:#04x})",
            self.key, self.asc, self.ascq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inquiry_data(vendor: &[u8; 8], product: &[u8; 16], revision: &[u8; 4]) -> Vec<u8> {
        let mut data = vec![0x00, 0x80, 0x05, 0x02, 31, 0, 0, 0];
        data.extend_from_slice(vendor);
        data.extend_from_slice(product);
        data.extend_from_slice(revision);
        data
    }

    #[test]
    fn inquiry_strings_are_read_without_their_padding() {
        let data = inquiry_data(b"QEMU    ", b"QEMU HARDDISK   ", b"2.5+");
        let inquiry = Inquiry::parse(&data).unwrap();
        assert_eq!(inquiry.vendor, "QEMU");
        assert_eq!(inquiry.product, "QEMU HARDDISK");
        assert_eq!(inquiry.revision, "2.5+");
        assert!(inquiry.removable);
        assert_eq!(inquiry.device_type, 0);
        assert!(
            Inquiry::parse(&data[..20])
                .unwrap_err()
                .contains("20 bytes")
        );
    }

    #[test]
    fn capacity_counts_the_last_block() {
        let capacity = Capacity::parse(&[0, 0, 0x0f, 0xff, 0, 0, 2, 0])
            .unwrap()
            .unwrap();
        assert_eq!(capacity.blocks(), 4096);
        assert_eq!(capacity.block_size, 512);
        assert_eq!(capacity.bytes(), 2 * 1024 * 1024);
        assert_eq!(
            Capacity::parse(&[0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0]).unwrap(),
            None,
            "too large for READ CAPACITY(10)"
        );
        assert!(Capacity::parse(&[0, 0, 0, 1]).is_err());
        assert!(Capacity::parse(&[0, 0, 0, 1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn sense_is_read_in_both_formats() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0xf0; // valid bit set, current error
        fixed[2] = 0x06;
        fixed[12] = 0x29;
        let sense = Sense::parse(&fixed).unwrap();
        assert_eq!(sense.key, SenseKey::UnitAttention);
        assert_eq!((sense.asc, sense.ascq), (0x29, 0));
        assert!(sense.is_transient());
        let descriptor = [0x72, 0x02, 0x3a, 0x00, 0, 0, 0, 0];
        let sense = Sense::parse(&descriptor).unwrap();
        assert_eq!(sense.key, SenseKey::NotReady);
        assert!(!sense.is_transient(), "medium not present stays so");
        assert_eq!(sense.to_string(), "NOT READY (ASC 0x3a, ASCQ 0x00)");
        let becoming_ready = Sense {
            key: SenseKey::NotReady,
            asc: 0x04,
            ascq: 0x01,
        };
        assert!(becoming_ready.is_transient());
        assert!(Sense::parse(&[0x70, 0, 5]).is_err());
        assert!(Sense::parse(&[0x10]).is_err());
    }

    #[test]
    fn read_and_write_blocks_carry_big_endian_addresses() {
        assert_eq!(
            read_write_10_command(READ_10, 0x0102_0304, 0x0506),
            [0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]
        );
    }
}
