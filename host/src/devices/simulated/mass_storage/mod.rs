//! `[device.mass-storage]`: a USB stick. USB Mass Storage Class Bulk-Only Transport 1.0
//! (BOT) carries SCSI commands to an in-memory disk ([`scsi::Disk`]).
//!
//! The transport follows the spec where a host can tell: a command block wrapper (CBW) is
//! checked (31 bytes, signature `USBC`; anything else stalls both bulk endpoints until a
//! reset recovery, BOT 6.6.1), the data phase follows the thirteen cases of BOT 6.7 (fewer
//! bytes than the host expects end short with the difference as residue; more than it
//! expects are cut with a phase error; no data where the host expects some stalls that
//! endpoint), and the command status wrapper (CSW) echoes the tag with the residue. A stall
//! halts the endpoint until CLEAR_FEATURE(ENDPOINT_HALT). GET MAX LUN answers 0;
//! Bulk-Only Mass Storage Reset readies the device for the next CBW and keeps halts, as the
//! spec says, for the host to clear.
//!
//! Descriptors mirror QEMU's `usb-storage` at high speed: 46f4:0001 "QEMU USB HARDDRIVE",
//! interface 0 of class 08 (mass storage), subclass 06 (SCSI), protocol 50 (bulk-only),
//! bulk IN 0x81 and bulk OUT 0x02 of 512 bytes.

mod scsi;

use std::time::Instant;

use serde::Deserialize;

use self::scsi::{DataIn, Disk, Identification, Reply, Sense, Status};
use super::class_model::{ClassModel, Identity, Outcome};
use super::model::invalid;
use crate::devices::descriptor::{
    ConfigurationDescriptor, EndpointDescriptor, InterfaceDescriptor, TransferType,
};
use crate::devices::{ControlSetup, UsbError};

/// The bulk IN endpoint: data to the host and the CSW.
const BULK_IN: u8 = 0x81;
/// The bulk OUT endpoint: CBWs and data from the host.
const BULK_OUT: u8 = 0x02;
/// `dCBWSignature`, "USBC" little-endian.
const CBW_SIGNATURE: u32 = 0x4342_5355;
/// `dCSWSignature`, "USBS" little-endian.
const CSW_SIGNATURE: u32 = 0x5342_5355;
/// A CBW is exactly this long.
const CBW_LENGTH: usize = 31;
/// A CSW is exactly this long.
const CSW_LENGTH: usize = 13;
/// Class request: Bulk-Only Mass Storage Reset (host to interface).
const MASS_STORAGE_RESET: u8 = 0xff;
/// Class request: Get Max LUN (interface to host).
const GET_MAX_LUN: u8 = 0xfe;
/// The most bytes a simulated disk may hold: written blocks live in memory.
const MAX_CAPACITY: u64 = 1 << 30;

/// `[device.mass-storage]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MassStorageSpec {
    blocks: u64,
    block_size: Option<u32>,
    vendor: Option<String>,
    product: Option<String>,
    revision: Option<String>,
    #[serde(default)]
    unit_attention: bool,
    #[serde(default)]
    block: Vec<BlockSpec>,
}

/// One `[[device.mass-storage.block]]`: initial content of a block.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockSpec {
    lba: u64,
    text: String,
}

/// An INQUIRY field: printable ASCII, at most `N` bytes, padded with spaces.
fn scsi_text<const N: usize>(
    field: &str,
    text: Option<&str>,
    default: &str,
) -> Result<[u8; N], UsbError> {
    let text = text.unwrap_or(default);
    if text.len() > N || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid(format!(
            "`mass-storage.{field}`: `{text}` must be at most {N} printable ASCII characters"
        )));
    }
    let mut field = [b' '; N];
    field[..text.len()].copy_from_slice(text.as_bytes());
    Ok(field)
}

impl MassStorageSpec {
    /// Checks the table; the disk it describes, with the identity of a QEMU `usb-storage`.
    pub(super) fn check(self) -> Result<(Identity, BulkOnlyTransport), UsbError> {
        let block_size = self.block_size.unwrap_or(512);
        if ![512, 1024, 2048, 4096].contains(&block_size) {
            return Err(invalid(format!(
                "`mass-storage.block_size`: {block_size} is not 512, 1024, 2048 or 4096"
            )));
        }
        let capacity = self.blocks.saturating_mul(u64::from(block_size));
        let blocks = u32::try_from(self.blocks)
            .ok()
            .filter(|&b| b > 0 && capacity <= MAX_CAPACITY)
            .ok_or_else(|| {
                invalid(format!(
                    "`mass-storage.blocks`: {} blocks of {block_size} bytes; give at least 1 and \
                     at most {MAX_CAPACITY} bytes in all (the disk lives in memory)",
                    self.blocks
                ))
            })?;
        let identification = Identification {
            vendor: scsi_text("vendor", self.vendor.as_deref(), "QEMU")?,
            product: scsi_text("product", self.product.as_deref(), "QEMU HARDDISK")?,
            revision: scsi_text("revision", self.revision.as_deref(), "2.5+")?,
        };
        let mut disk = Disk::new(blocks, block_size, identification, self.unit_attention);
        let mut given: Vec<u64> = Vec::new();
        for (i, block) in self.block.iter().enumerate() {
            let field = format!("mass-storage.block[{i}]");
            let lba = u32::try_from(block.lba)
                .ok()
                .filter(|&lba| lba < blocks)
                .ok_or_else(|| {
                    invalid(format!(
                        "`{field}.lba`: {} is past the last block ({})",
                        block.lba,
                        blocks - 1
                    ))
                })?;
            if given.contains(&block.lba) {
                return Err(invalid(format!(
                    "`{field}.lba`: block {lba} is given twice"
                )));
            }
            given.push(block.lba);
            if block.text.len() > block_size as usize {
                return Err(invalid(format!(
                    "`{field}.text`: {} bytes do not fit a block of {block_size}",
                    block.text.len()
                )));
            }
            let mut content = block.text.as_bytes().to_vec();
            content.resize(block_size as usize, 0);
            disk.store(lba, &content);
        }
        Ok((identity(), BulkOnlyTransport::new(disk)))
    }
}

/// QEMU's `usb-storage` at high speed.
fn identity() -> Identity {
    let bulk = |address| EndpointDescriptor::new(address, TransferType::Bulk, 512, 0);
    Identity {
        vendor_id: 0x46f4,
        product_id: 0x0001,
        device_version: 0x0000,
        manufacturer: "QEMU",
        product: "QEMU USB HARDDRIVE",
        serial: "1",
        usb_version: 0x0200,
        max_packet_size0: 64,
        configuration_string: Some("High speed config (usb 2.0)"),
        configuration: ConfigurationDescriptor {
            value: 1,
            string: 0,
            // Self powered.
            attributes: 0xc0,
            max_power: 0,
            extra: Vec::new(),
            interfaces: vec![InterfaceDescriptor {
                number: 0,
                alternate_setting: 0,
                class: 0x08,
                subclass: 0x06,
                protocol: 0x50,
                string: 0,
                extra: Vec::new(),
                endpoints: vec![bulk(BULK_IN), bulk(BULK_OUT)],
            }],
        },
    }
}

/// `bCSWStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CswStatus {
    Passed = 0,
    Failed = 1,
    PhaseError = 2,
}

impl From<Status> for CswStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Good => Self::Passed,
            Status::CheckCondition => Self::Failed,
        }
    }
}

/// A command status wrapper waiting to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Csw {
    tag: u32,
    residue: u32,
    status: CswStatus,
}

impl Csw {
    fn to_bytes(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(CSW_LENGTH);
        bytes.extend(CSW_SIGNATURE.to_le_bytes());
        bytes.extend(self.tag.to_le_bytes());
        bytes.extend(self.residue.to_le_bytes());
        bytes.push(self.status as u8);
        bytes
    }
}

/// A valid command block wrapper (BOT 5.1).
#[derive(Debug)]
struct Cbw {
    tag: u32,
    /// `dCBWDataTransferLength`: what the host expects to move.
    length: u32,
    /// Bit 7 of `bmCBWFlags`: data to the host.
    to_host: bool,
    lun: u8,
    /// The command block, `bCBWCBLength` bytes.
    command: Vec<u8>,
    /// No reserved bit set and a command block length of 1 to 16 (BOT 6.2.2).
    meaningful: bool,
}

impl Cbw {
    /// The CBW in `bytes`, or `None` when they are not a valid one (BOT 6.2.1).
    fn parse(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; CBW_LENGTH] = bytes.try_into().ok()?;
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if word(0) != CBW_SIGNATURE {
            return None;
        }
        let (flags, lun, command_length) = (bytes[12], bytes[13], bytes[14]);
        let meaningful = flags & 0x7f == 0
            && lun & 0xf0 == 0
            && command_length & 0xe0 == 0
            && (1..=16).contains(&command_length);
        let command_length = usize::from(command_length).min(16);
        Some(Self {
            tag: word(4),
            length: word(8),
            to_host: flags & 0x80 != 0,
            lun: lun & 0x0f,
            command: bytes[15..15 + command_length].to_vec(),
            meaningful,
        })
    }
}

/// Where the transport is in the command/data/status cycle.
#[derive(Debug)]
enum Phase {
    /// Waiting for a CBW.
    Command,
    /// Sending `length` bytes of `data` to the host; `sent` so far; then `csw`.
    ToHost {
        data: DataIn,
        sent: u64,
        length: u64,
        csw: Csw,
    },
    /// Receiving what the host said it would send (`expected` bytes left); the blocks from
    /// `lba` on take the first `wanted` of them, whole blocks at a time through `block`.
    FromHost {
        tag: u32,
        lba: u32,
        block: Vec<u8>,
        wanted: u64,
        expected: u64,
        /// Ho and Do, for the CSW.
        host_total: u64,
        device_total: u64,
    },
    /// The CSW is ready to be read.
    Status(Csw),
}

/// The USB stick at run time: the disk, the BOT phase and the halt state of both bulk
/// endpoints.
#[derive(Debug)]
pub(super) struct BulkOnlyTransport {
    disk: Disk,
    phase: Phase,
    in_halted: bool,
    out_halted: bool,
    /// An invalid CBW was received: both bulk endpoints stay halted, whatever CLEAR_FEATURE
    /// says, until a Bulk-Only Mass Storage Reset (BOT 6.6.1).
    awaiting_reset: bool,
}

/// Saturates a byte count into a CSW residue.
fn residue(bytes: u64) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl BulkOnlyTransport {
    fn new(disk: Disk) -> Self {
        Self {
            disk,
            phase: Phase::Command,
            in_halted: false,
            out_halted: false,
            awaiting_reset: false,
        }
    }

    /// Runs the command of a valid CBW and sets up its data phase per BOT 6.7.
    fn start(&mut self, cbw: &Cbw) {
        let reply = if cbw.meaningful {
            self.disk.command(cbw.lun, &cbw.command)
        } else {
            self.disk.reject(Sense::INVALID_FIELD)
        };
        let host = u64::from(cbw.length);
        let csw = |residue_bytes: u64, status: CswStatus| Csw {
            tag: cbw.tag,
            residue: residue(residue_bytes),
            status,
        };
        self.phase = match (reply, host, cbw.to_host) {
            // Case 1: Hn = Dn.
            (Reply::NoData(status), 0, _) => Phase::Status(csw(0, status.into())),
            // Cases 2 and 3: Hn < Di, Hn < Do.
            (Reply::ToHost(..) | Reply::FromHost { .. }, 0, _) => {
                Phase::Status(csw(0, CswStatus::PhaseError))
            }
            // Case 4: Hi > Dn; the host is told by a stalled bulk IN.
            (Reply::NoData(status), _, true) => {
                self.in_halted = true;
                Phase::Status(csw(host, status.into()))
            }
            // Case 9: Ho > Dn; the data is refused by a stalled bulk OUT.
            (Reply::NoData(status), _, false) => {
                self.out_halted = true;
                Phase::Status(csw(host, status.into()))
            }
            // Cases 5, 6 and 7: Hi > Di ends short, Hi < Di is cut to Hi with a phase error.
            (Reply::ToHost(data, status), _, true) => {
                let intended = match &data {
                    DataIn::Bytes(bytes) => bytes.len() as u64,
                    DataIn::Blocks { count, .. } => {
                        u64::from(*count) * u64::from(self.disk.block_size())
                    }
                };
                let length = intended.min(host);
                let status = if intended > host {
                    CswStatus::PhaseError
                } else {
                    status.into()
                };
                if length == 0 {
                    self.in_halted = true;
                    Phase::Status(csw(host, status))
                } else {
                    Phase::ToHost {
                        data,
                        sent: 0,
                        length,
                        csw: csw(host - length, status),
                    }
                }
            }
            // Case 10: Ho <> Di.
            (Reply::ToHost(..), _, false) => {
                self.out_halted = true;
                Phase::Status(csw(host, CswStatus::PhaseError))
            }
            // Case 8: Hi <> Do.
            (Reply::FromHost { .. }, _, true) => {
                self.in_halted = true;
                Phase::Status(csw(host, CswStatus::PhaseError))
            }
            // Cases 11, 12 and 13.
            (Reply::FromHost { lba, count }, _, false) => {
                let wanted = u64::from(count) * u64::from(self.disk.block_size());
                Phase::FromHost {
                    tag: cbw.tag,
                    lba,
                    block: Vec::new(),
                    wanted,
                    expected: host,
                    host_total: host,
                    device_total: wanted,
                }
            }
        };
    }

    /// A read of bulk IN: data of the current command, or its CSW.
    fn read_in(&mut self, length: usize) -> Outcome<Vec<u8>> {
        if self.in_halted {
            return Outcome::Stall;
        }
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::ToHost {
                data,
                sent,
                length: total,
                csw,
            } => {
                let n = (total - sent).min(length as u64);
                let bytes = match &data {
                    DataIn::Bytes(bytes) => {
                        let from = usize::try_from(sent).unwrap_or(usize::MAX);
                        bytes
                            .get(from..from.saturating_add(n as usize))
                            .unwrap_or_default()
                            .to_vec()
                    }
                    DataIn::Blocks { lba, .. } => self.disk.read(*lba, sent, n as usize),
                };
                self.phase = if sent + n == total {
                    Phase::Status(csw)
                } else {
                    Phase::ToHost {
                        data,
                        sent: sent + n,
                        length: total,
                        csw,
                    }
                };
                Outcome::Done(bytes)
            }
            // The CSW goes out whatever the host's buffer; a short buffer loses it.
            Phase::Status(_) if length < CSW_LENGTH => Outcome::Overflow,
            Phase::Status(csw) => Outcome::Done(csw.to_bytes()),
            // Nothing to send in this phase: the read is a protocol error.
            other => {
                self.phase = other;
                self.in_halted = true;
                Outcome::Stall
            }
        }
    }

    /// A write to bulk OUT: a CBW, or data of the current command.
    fn write_out(&mut self, data: &[u8]) -> Outcome<usize> {
        if self.out_halted {
            return Outcome::Stall;
        }
        match &mut self.phase {
            Phase::Command => {
                match Cbw::parse(data) {
                    Some(cbw) => self.start(&cbw),
                    None => {
                        // BOT 6.6.1: stall both until a reset recovery.
                        self.in_halted = true;
                        self.out_halted = true;
                        self.awaiting_reset = true;
                    }
                }
                Outcome::Done(data.len())
            }
            Phase::FromHost { expected, .. } if data.len() as u64 > *expected => {
                self.out_halted = true;
                Outcome::Stall
            }
            Phase::FromHost {
                tag,
                lba,
                block,
                wanted,
                expected,
                host_total,
                device_total,
            } => {
                let take = usize::try_from(*wanted)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let block_size = self.disk.block_size() as usize;
                for chunk in data[..take].chunks(block_size) {
                    let room = block_size - block.len();
                    let (now, rest) = chunk.split_at(room.min(chunk.len()));
                    block.extend(now);
                    if block.len() == block_size {
                        self.disk.store(*lba, block);
                        block.clear();
                        *lba = lba.saturating_add(1);
                    }
                    block.extend(rest);
                }
                *wanted -= take as u64;
                *expected -= data.len() as u64;
                if *expected == 0 {
                    let csw = Csw {
                        tag: *tag,
                        residue: residue(host_total.saturating_sub(*device_total)),
                        status: if host_total < device_total {
                            CswStatus::PhaseError
                        } else {
                            CswStatus::Passed
                        },
                    };
                    self.phase = Phase::Status(csw);
                }
                Outcome::Done(data.len())
            }
            Phase::ToHost { .. } | Phase::Status(_) => {
                self.out_halted = true;
                Outcome::Stall
            }
        }
    }
}

impl ClassModel for BulkOnlyTransport {
    fn control_in(&mut self, setup: ControlSetup, _length: u16, _now: Instant) -> Outcome<Vec<u8>> {
        match (setup.request_type, setup.request, setup.value, setup.index) {
            (0xa1, GET_MAX_LUN, 0, 0) => Outcome::Done(vec![0]),
            _ => Outcome::Stall,
        }
    }

    fn control_out(&mut self, setup: ControlSetup, data: &[u8], _now: Instant) -> Outcome<()> {
        match (setup.request_type, setup.request, setup.value, setup.index) {
            (0x21, MASS_STORAGE_RESET, 0, 0) if data.is_empty() => {
                // Ready for the next CBW; halts stay for the host to clear (BOT 3.1).
                self.phase = Phase::Command;
                self.awaiting_reset = false;
                Outcome::Done(())
            }
            _ => Outcome::Stall,
        }
    }

    fn read(&mut self, endpoint: u8, length: usize, _now: Instant) -> Outcome<Vec<u8>> {
        match endpoint {
            BULK_IN => self.read_in(length),
            _ => Outcome::Stall,
        }
    }

    fn write(&mut self, endpoint: u8, data: &[u8], _now: Instant) -> Outcome<usize> {
        match endpoint {
            BULK_OUT => self.write_out(data),
            _ => Outcome::Stall,
        }
    }

    fn halted(&self, endpoint: u8) -> bool {
        match endpoint {
            BULK_IN => self.in_halted,
            BULK_OUT => self.out_halted,
            _ => false,
        }
    }

    fn clear_halt(&mut self, endpoint: u8) {
        if self.awaiting_reset {
            return;
        }
        match endpoint {
            BULK_IN => self.in_halted = false,
            BULK_OUT => self.out_halted = false,
            _ => {}
        }
    }

    fn power_on(&mut self, _now: Instant) {
        self.phase = Phase::Command;
        self.in_halted = false;
        self.out_halted = false;
        self.awaiting_reset = false;
        self.disk.power_on();
    }
}
