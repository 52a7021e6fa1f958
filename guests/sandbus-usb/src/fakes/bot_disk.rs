//! A fake USB disk that plays the device side of the Bulk-Only Transport and a few SCSI
//! commands as the specs say, with faults a test arms one command at a time: a stalled data
//! phase, a phase error, an invalid status, a unit attention, a unit becoming ready.
//!
//! It holds the host to the protocol too: after a phase error or an invalid status it
//! stalls both bulk pipes until the host does reset recovery in full (Bulk-Only Mass Storage
//! Reset, then clear halt on each pipe), and it answers nothing on an unclaimed interface.

use std::collections::VecDeque;

use super::FakeDevice;
use super::descriptor::{ConfigurationBuilder, EndpointSpec};
use crate::descriptors::InterfaceClass;
use crate::mass_storage::{
    BULK_ONLY_RESET, CBW_LENGTH, CBW_SIGNATURE, CSW_SIGNATURE, GET_MAX_LUN, INQUIRY, READ_10,
    READ_CAPACITY_10, REQUEST_SENSE, TEST_UNIT_READY, WRITE_10,
};
use crate::transfers::{CLASS_INTERFACE_IN, CLASS_INTERFACE_OUT, Transfers};
use crate::usb::{ControlSetup, UsbError};

/// The interface number of the fake disk.
pub const DISK_INTERFACE: u8 = 0;
/// Its bulk IN endpoint.
pub const DISK_BULK_IN: u8 = 0x81;
/// Its bulk OUT endpoint.
pub const DISK_BULK_OUT: u8 = 0x02;
/// Bytes per block.
pub const DISK_BLOCK_SIZE: usize = 512;

/// A misbehaviour armed for the next command with a given operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// The device stalls bulk IN instead of sending the data, then reports the command
    /// failed with MEDIUM ERROR / unrecovered read error (03/11/00).
    StallDataIn,
    /// The device stalls the data phase (if any) and reports a phase error (status 2).
    PhaseError,
    /// The status wrapper carries the wrong tag.
    WrongTag,
    /// The first read of the status wrapper stalls; the second gets it.
    StallStatus,
    /// The command fails with UNIT ATTENTION / power on or reset (06/29/00).
    UnitAttention,
    /// The command fails with NOT READY / becoming ready (02/04/01).
    BecomingReady,
}

/// What the host asked of the fake, in order, for a test to check the recovery sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRequest {
    /// A command block wrapper with this operation code.
    Command(u8),
    /// GET MAX LUN.
    GetMaxLun,
    /// Bulk-Only Mass Storage Reset.
    BulkOnlyReset,
    /// CLEAR_FEATURE(ENDPOINT_HALT) on this endpoint.
    ClearHalt(u8),
}

#[derive(Debug, Clone, Copy)]
struct Status {
    tag: u32,
    residue: u32,
    status: u8,
    /// After this status is read, stall both pipes until reset recovery.
    then_needs_reset: bool,
    /// The first read of it stalls.
    stall_once: bool,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for a command block wrapper.
    Idle,
    /// Sending `data`; then `status`.
    DataIn {
        data: Vec<u8>,
        sent: usize,
        status: Status,
    },
    /// Receiving `expected` bytes to write at block `lba`; then `status`.
    DataOut {
        lba: usize,
        expected: usize,
        received: Vec<u8>,
        status: Status,
    },
    /// The status is due.
    Status(Status),
}

/// A fake Bulk-Only disk of 512-byte blocks; see the module docs.
#[derive(Debug, Clone)]
pub struct FakeBotDisk {
    vendor: String,
    product: String,
    revision: String,
    data: Vec<u8>,
    max_lun: Option<u8>,
    claimed: bool,
    phase: Phase,
    halted_in: bool,
    halted_out: bool,
    needs_reset: bool,
    sense: (u8, u8, u8),
    faults: VecDeque<(u8, DiskFault)>,
    requests: Vec<DiskRequest>,
}

impl FakeBotDisk {
    /// A disk of `blocks` zeroed blocks answering INQUIRY with QEMU's strings.
    pub fn new(blocks: usize) -> Self {
        Self {
            vendor: "QEMU".into(),
            product: "QEMU HARDDISK".into(),
            revision: "2.5+".into(),
            data: vec![0; blocks * DISK_BLOCK_SIZE],
            max_lun: Some(0),
            claimed: false,
            phase: Phase::Idle,
            halted_in: false,
            halted_out: false,
            needs_reset: false,
            sense: (0, 0, 0),
            faults: VecDeque::new(),
            requests: Vec::new(),
        }
    }

    /// Sets the INQUIRY strings (padded or cut to 8, 16 and 4 bytes).
    pub fn with_identity(mut self, vendor: &str, product: &str, revision: &str) -> Self {
        self.vendor = vendor.into();
        self.product = product.into();
        self.revision = revision.into();
        self
    }

    /// Sets what GET MAX LUN answers: the highest unit number, or `None` to stall it (as
    /// a device with one unit may).
    pub fn with_max_lun(mut self, max_lun: Option<u8>) -> Self {
        self.max_lun = max_lun;
        self
    }

    /// Arms `fault` for the next command with operation code `opcode`. Several faults
    /// queue up and are used in order.
    pub fn fail_next(&mut self, opcode: u8, fault: DiskFault) {
        self.faults.push_back((opcode, fault));
    }

    /// Block `lba`'s bytes.
    pub fn block(&self, lba: usize) -> &[u8] {
        let start = (lba * DISK_BLOCK_SIZE).min(self.data.len());
        let end = (start + DISK_BLOCK_SIZE).min(self.data.len());
        &self.data[start..end]
    }

    /// Writes `bytes` at the start of block `lba` (what a test puts on the disk image).
    pub fn put(&mut self, lba: usize, bytes: &[u8]) {
        let start = lba * DISK_BLOCK_SIZE;
        if let Some(target) = self.data.get_mut(start..start + bytes.len()) {
            target.copy_from_slice(bytes);
        }
    }

    /// Everything the host asked, in order.
    pub fn requests(&self) -> &[DiskRequest] {
        &self.requests
    }

    fn blocks(&self) -> usize {
        self.data.len() / DISK_BLOCK_SIZE
    }

    fn take_fault(&mut self, opcode: u8) -> Option<DiskFault> {
        let at = self.faults.iter().position(|(op, _)| *op == opcode)?;
        self.faults.remove(at).map(|(_, fault)| fault)
    }

    fn padded(text: &str, length: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = text.bytes().take(length).collect();
        bytes.resize(length, b' ');
        bytes
    }

    /// Runs a command block: what the device sends (or expects), how it ends, and the
    /// sense data it leaves.
    fn execute(&mut self, cbw: &[u8]) {
        let word = |at: usize| u32::from_le_bytes([cbw[at], cbw[at + 1], cbw[at + 2], cbw[at + 3]]);
        let tag = word(4);
        let host_length = word(8) as usize;
        let host_in = cbw[12] & 0x80 != 0;
        let command = &cbw[15..15 + usize::from(cbw[14]).min(16)];
        let opcode = command.first().copied().unwrap_or(0xff);
        self.requests.push(DiskRequest::Command(opcode));
        let mut status = Status {
            tag,
            residue: 0,
            status: 0,
            then_needs_reset: false,
            stall_once: false,
        };
        let fault = self.take_fault(opcode);
        match fault {
            Some(DiskFault::PhaseError) => {
                status.status = 2;
                status.then_needs_reset = true;
                self.halted_in |= host_in && host_length > 0;
                self.halted_out |= !host_in && host_length > 0;
                self.phase = Phase::Status(status);
                return;
            }
            Some(DiskFault::WrongTag) => {
                status.tag = tag.wrapping_add(1);
                status.then_needs_reset = true;
            }
            Some(DiskFault::StallStatus) => status.stall_once = true,
            _ => {}
        }
        let failure = match fault {
            Some(DiskFault::UnitAttention) => Some((0x06, 0x29, 0x00)),
            Some(DiskFault::BecomingReady) => Some((0x02, 0x04, 0x01)),
            Some(DiskFault::StallDataIn) => Some((0x03, 0x11, 0x00)),
            _ => None,
        };
        if let Some(sense) = failure {
            self.fail(sense, status, host_in, host_length);
            return;
        }
        let lba = command
            .get(2..6)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])) as usize;
        let count = command
            .get(7..9)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]])) as usize;
        let response = match opcode {
            TEST_UNIT_READY => Vec::new(),
            REQUEST_SENSE => {
                let mut sense = vec![0u8; 18];
                sense[0] = 0x70;
                (sense[2], sense[12], sense[13]) = self.sense;
                sense[7] = 10;
                self.sense = (0, 0, 0);
                sense
            }
            INQUIRY => {
                let mut data = vec![0x00, 0x80, 0x05, 0x02, 31, 0, 0, 0];
                data.extend(Self::padded(&self.vendor, 8));
                data.extend(Self::padded(&self.product, 16));
                data.extend(Self::padded(&self.revision, 4));
                data
            }
            READ_CAPACITY_10 => {
                let last = u32::try_from(self.blocks().saturating_sub(1)).unwrap_or(u32::MAX);
                let mut data = last.to_be_bytes().to_vec();
                data.extend_from_slice(&(DISK_BLOCK_SIZE as u32).to_be_bytes());
                data
            }
            READ_10 | WRITE_10 if lba + count > self.blocks() => {
                self.fail((0x05, 0x21, 0x00), status, host_in, host_length);
                return;
            }
            READ_10 => self.data[lba * DISK_BLOCK_SIZE..(lba + count) * DISK_BLOCK_SIZE].to_vec(),
            WRITE_10 => {
                self.phase = Phase::DataOut {
                    lba,
                    expected: count * DISK_BLOCK_SIZE,
                    received: Vec::new(),
                    status,
                };
                return;
            }
            _ => {
                self.fail((0x05, 0x20, 0x00), status, host_in, host_length);
                return;
            }
        };
        if response.is_empty() || !host_in {
            status.residue = host_length as u32;
            self.phase = Phase::Status(status);
            return;
        }
        let mut data = response;
        data.truncate(host_length);
        status.residue = (host_length - data.len()) as u32;
        self.phase = Phase::DataIn {
            data,
            sent: 0,
            status,
        };
    }

    /// Fails the command with CHECK CONDITION: a data-in phase is stalled, the status says
    /// failed with nothing moved, and the sense is kept for REQUEST SENSE.
    fn fail(&mut self, sense: (u8, u8, u8), mut status: Status, host_in: bool, host_length: usize) {
        self.sense = sense;
        status.status = 1;
        status.residue = host_length as u32;
        if host_in && host_length > 0 {
            self.halted_in = true;
        }
        self.phase = Phase::Status(status);
    }

    fn status_bytes(status: &Status) -> Vec<u8> {
        let mut csw = CSW_SIGNATURE.to_le_bytes().to_vec();
        csw.extend_from_slice(&status.tag.to_le_bytes());
        csw.extend_from_slice(&status.residue.to_le_bytes());
        csw.push(status.status);
        csw
    }
}

impl FakeDevice for FakeBotDisk {
    const VENDOR_ID: u16 = 0x46f4;
    const PRODUCT_ID: u16 = 0x0001;

    /// The configuration descriptor bytes: one Bulk-Only interface, bulk IN 0x81 and bulk
    /// OUT 0x02 of 512-byte packets.
    fn configuration_descriptor() -> Vec<u8> {
        ConfigurationBuilder::new(1)
            .interface(DISK_INTERFACE, InterfaceClass::MASS_STORAGE_BULK_ONLY)
            .endpoint(EndpointSpec::bulk(DISK_BULK_IN, 512))
            .endpoint(EndpointSpec::bulk(DISK_BULK_OUT, 512))
            .build()
    }
}

impl Transfers for FakeBotDisk {
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        super::claim(&mut self.claimed, interface, DISK_INTERFACE)
    }

    fn control_in(
        &mut self,
        setup: ControlSetup,
        length: u16,
        _: u32,
    ) -> Result<Vec<u8>, UsbError> {
        let interface = u16::from(DISK_INTERFACE);
        match (setup.request_type, setup.request, setup.index) {
            (CLASS_INTERFACE_IN, GET_MAX_LUN, index) if index == interface && length >= 1 => {
                self.requests.push(DiskRequest::GetMaxLun);
                self.max_lun.map(|lun| vec![lun]).ok_or(UsbError::Stall)
            }
            _ => Err(UsbError::Stall),
        }
    }

    fn control_out(&mut self, setup: ControlSetup, data: &[u8], _: u32) -> Result<u32, UsbError> {
        let interface = u16::from(DISK_INTERFACE);
        match (setup.request_type, setup.request, setup.index) {
            (CLASS_INTERFACE_OUT, BULK_ONLY_RESET, index)
                if index == interface && data.is_empty() =>
            {
                self.requests.push(DiskRequest::BulkOnlyReset);
                // The reset readies the device for the next command; the pipes stay halted
                // until the host clears them (section 3.1).
                self.needs_reset = false;
                self.phase = Phase::Idle;
                Ok(0)
            }
            _ => Err(UsbError::Stall),
        }
    }

    fn bulk_in(&mut self, endpoint: u8, length: u32, _: u32) -> Result<Vec<u8>, UsbError> {
        if !self.claimed {
            return Err(UsbError::NotClaimed);
        }
        if endpoint != DISK_BULK_IN {
            return Err(UsbError::InvalidArgument(format!(
                "no IN endpoint {endpoint:#04x}"
            )));
        }
        if self.halted_in || self.needs_reset {
            return Err(UsbError::Stall);
        }
        match &mut self.phase {
            Phase::Idle | Phase::DataOut { .. } => Err(UsbError::Timeout),
            Phase::DataIn { data, sent, status } => {
                let end = (*sent + length as usize).min(data.len());
                let chunk = data[*sent..end].to_vec();
                *sent = end;
                if *sent == data.len() {
                    self.phase = Phase::Status(*status);
                }
                Ok(chunk)
            }
            Phase::Status(status) => {
                if status.stall_once {
                    status.stall_once = false;
                    self.halted_in = true;
                    return Err(UsbError::Stall);
                }
                if (length as usize) < 13 {
                    return Err(UsbError::Overflow);
                }
                let status = *status;
                self.phase = Phase::Idle;
                if status.then_needs_reset {
                    self.needs_reset = true;
                    self.halted_in = true;
                    self.halted_out = true;
                }
                Ok(Self::status_bytes(&status))
            }
        }
    }

    fn bulk_out(&mut self, endpoint: u8, data: &[u8], _: u32) -> Result<u32, UsbError> {
        if !self.claimed {
            return Err(UsbError::NotClaimed);
        }
        if endpoint != DISK_BULK_OUT {
            return Err(UsbError::InvalidArgument(format!(
                "no OUT endpoint {endpoint:#04x}"
            )));
        }
        if self.halted_out || self.needs_reset {
            return Err(UsbError::Stall);
        }
        match &mut self.phase {
            Phase::Idle => {
                let valid = data.len() == CBW_LENGTH
                    && data[0..4] == CBW_SIGNATURE.to_le_bytes()
                    && (1..=16).contains(&data[14]);
                if valid {
                    self.execute(data);
                } else {
                    // Section 6.6.1: an invalid CBW stalls both pipes until reset recovery.
                    self.needs_reset = true;
                    self.halted_in = true;
                    self.halted_out = true;
                }
                Ok(data.len() as u32)
            }
            Phase::DataOut {
                lba,
                expected,
                received,
                status,
            } => {
                let room = *expected - received.len();
                let taken = data.len().min(room);
                received.extend_from_slice(&data[..taken]);
                if received.len() == *expected {
                    let start = *lba * DISK_BLOCK_SIZE;
                    self.data[start..start + *expected].copy_from_slice(received);
                    self.phase = Phase::Status(*status);
                }
                Ok(taken as u32)
            }
            Phase::DataIn { .. } | Phase::Status(_) => {
                self.halted_out = true;
                Err(UsbError::Stall)
            }
        }
    }

    fn interrupt_in(&mut self, endpoint: u8, _: u32, _: u32) -> Result<Vec<u8>, UsbError> {
        Err(UsbError::InvalidArgument(format!(
            "no interrupt endpoint {endpoint:#04x}"
        )))
    }

    fn clear_halt(&mut self, endpoint: u8) -> Result<(), UsbError> {
        self.requests.push(DiskRequest::ClearHalt(endpoint));
        // Until reset recovery, a cleared pipe stalls again at once (section 6.6.1).
        if self.needs_reset {
            return Ok(());
        }
        match endpoint {
            DISK_BULK_IN => self.halted_in = false,
            DISK_BULK_OUT => self.halted_out = false,
            other => {
                return Err(UsbError::InvalidArgument(format!(
                    "no endpoint {other:#04x}"
                )));
            }
        }
        Ok(())
    }
}
