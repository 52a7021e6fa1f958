//! A fake FTDI FT232 adapter with a scripted board on its far end: it decodes the vendor
//! requests as the chip does, puts the two status bytes at the start of every packet it
//! sends, packs several packets into one read, and hands each line the host writes to the
//! board, whose answer it then sends back.

use std::collections::VecDeque;

use super::FakeDevice;
use super::descriptor::{ConfigurationBuilder, EndpointSpec};
use crate::descriptors::InterfaceClass;
use crate::ftdi::{
    FTDI_RESET, FTDI_SET_BAUD_RATE, FTDI_SET_DATA, FTDI_SET_FLOW_CONTROL, PURGE_RECEIVE, RESET_CHIP,
};
use crate::transfers::{Transfers, VENDOR_DEVICE_OUT};
use crate::usb::{ControlSetup, UsbError};

/// The adapter's bulk IN endpoint.
pub const FTDI_BULK_IN: u8 = 0x81;
/// Its bulk OUT endpoint.
pub const FTDI_BULK_OUT: u8 = 0x02;
/// Its packet size.
pub const FTDI_PACKET: usize = 64;

/// The board on the far end: given each line the host wrote (line ending removed), returns
/// what it prints in answer.
pub type Board = Box<dyn FnMut(&str) -> String>;

/// A fake FT232 adapter; see the module docs.
pub struct FakeFtdi {
    claimed: bool,
    output: VecDeque<u8>,
    written: Vec<u8>,
    line: Vec<u8>,
    board: Option<Board>,
    status: [u8; 2],
    idle_status_packets: bool,
    bytes_per_read: usize,
    baud: Option<u32>,
    data_value: Option<u16>,
    flow_index: Option<u16>,
    resets: usize,
}

impl Default for FakeFtdi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeFtdi {
    /// An adapter with nothing on its far end; idle reads time out, as QEMU's do.
    pub fn new() -> Self {
        Self {
            claimed: false,
            output: VecDeque::new(),
            written: Vec::new(),
            line: Vec::new(),
            board: None,
            // CTS, DSR, DCD up (and the reserved bit 0 set); transmitter empty.
            status: [0xb1, 0x60],
            idle_status_packets: false,
            bytes_per_read: usize::MAX,
            baud: None,
            data_value: None,
            flow_index: None,
            resets: 0,
        }
    }

    /// Puts a board on the far end, answering each line the host writes.
    pub fn with_board(mut self, board: impl FnMut(&str) -> String + 'static) -> Self {
        self.board = Some(Box::new(board));
        self
    }

    /// Makes idle reads return a status-only packet, as a real chip does every latency
    /// period, instead of timing out.
    pub fn with_idle_status_packets(mut self) -> Self {
        self.idle_status_packets = true;
        self
    }

    /// Hands the host at most `n` received bytes per read: text trickles in, so patterns
    /// straddle reads.
    pub fn with_bytes_per_read(mut self, n: usize) -> Self {
        self.bytes_per_read = n.max(1);
        self
    }

    /// Sets the line status byte the next packets carry (bit 1 overrun, 2 parity, 3
    /// framing, 4 break).
    pub fn set_line_status(&mut self, line: u8) {
        self.status[1] = line;
    }

    /// The board prints `text` (queued for the host to read).
    pub fn board_prints(&mut self, text: &str) {
        self.output.extend(text.bytes());
    }

    /// Everything the host wrote.
    pub fn written(&self) -> &[u8] {
        &self.written
    }

    /// The baud rate the host set, decoded as the chip decodes its divisor.
    pub fn baud(&self) -> Option<u32> {
        self.baud
    }

    /// The data format (`wValue` of SET_DATA) the host set.
    pub fn data_value(&self) -> Option<u16> {
        self.data_value
    }

    /// The flow control handshake (`wIndex` of SET_FLOW_CTRL) the host set.
    pub fn flow_index(&self) -> Option<u16> {
        self.flow_index
    }

    /// How many chip resets the host sent.
    pub fn resets(&self) -> usize {
        self.resets
    }

    /// The chip's reading of a divisor (AN232B-05): 3 MHz / (n + x/8), with 0 meaning 3
    /// Mbaud and 1 meaning 2 Mbaud.
    fn decode_baud(value: u16, index: u16) -> u32 {
        const EIGHTHS: [u32; 8] = [0, 4, 2, 1, 3, 5, 6, 7];
        let whole = u32::from(value & 0x3fff);
        let code = usize::from((value >> 14) | ((index & 1) << 2));
        let eighths = match (whole, EIGHTHS[code]) {
            (0, 0) => 8,
            (1, 0) => 12,
            (whole, fraction) => whole * 8 + fraction,
        };
        24_000_000 / eighths
    }
}

impl FakeDevice for FakeFtdi {
    const VENDOR_ID: u16 = 0x0403;
    const PRODUCT_ID: u16 = 0x6001;

    /// The configuration descriptor bytes: one vendor-specific interface with bulk IN 0x81
    /// and bulk OUT 0x02 of 64-byte packets, like QEMU's `usb-serial`.
    fn configuration_descriptor() -> Vec<u8> {
        ConfigurationBuilder::new(1)
            .interface(0, InterfaceClass::VENDOR_SPECIFIC)
            .endpoint(EndpointSpec::bulk(FTDI_BULK_IN, FTDI_PACKET as u16))
            .endpoint(EndpointSpec::bulk(FTDI_BULK_OUT, FTDI_PACKET as u16))
            .build()
    }
}

impl Transfers for FakeFtdi {
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        super::claim(&mut self.claimed, interface, 0)
    }

    fn control_in(&mut self, _: ControlSetup, _: u16, _: u32) -> Result<Vec<u8>, UsbError> {
        Err(UsbError::Stall)
    }

    fn control_out(&mut self, setup: ControlSetup, _: &[u8], _: u32) -> Result<u32, UsbError> {
        if setup.request_type != VENDOR_DEVICE_OUT {
            return Err(UsbError::Stall);
        }
        match (setup.request, setup.value) {
            (FTDI_RESET, RESET_CHIP) => {
                self.resets += 1;
                self.output.clear();
            }
            (FTDI_RESET, PURGE_RECEIVE) => self.output.clear(),
            (FTDI_SET_BAUD_RATE, value) => self.baud = Some(Self::decode_baud(value, setup.index)),
            (FTDI_SET_DATA, value) => self.data_value = Some(value),
            (FTDI_SET_FLOW_CONTROL, _) => self.flow_index = Some(setup.index),
            _ => {}
        }
        Ok(0)
    }

    fn bulk_in(&mut self, endpoint: u8, length: u32, _: u32) -> Result<Vec<u8>, UsbError> {
        if !self.claimed {
            return Err(UsbError::NotClaimed);
        }
        if endpoint != FTDI_BULK_IN {
            return Err(UsbError::InvalidArgument(format!(
                "no IN endpoint {endpoint:#04x}"
            )));
        }
        if self.output.is_empty() {
            return if self.idle_status_packets {
                Ok(self.status.to_vec())
            } else {
                Err(UsbError::Timeout)
            };
        }
        let mut room = (length as usize).min(16 * FTDI_PACKET);
        let mut budget = self.bytes_per_read;
        let mut packets = Vec::new();
        while !self.output.is_empty() && room > 2 && budget > 0 {
            let take = (room.min(FTDI_PACKET) - 2)
                .min(self.output.len())
                .min(budget);
            packets.extend_from_slice(&self.status);
            packets.extend(self.output.drain(..take));
            room -= take + 2;
            budget -= take;
            if take < FTDI_PACKET - 2 {
                break; // a short packet ends the transfer
            }
        }
        Ok(packets)
    }

    fn bulk_out(&mut self, endpoint: u8, data: &[u8], _: u32) -> Result<u32, UsbError> {
        if !self.claimed {
            return Err(UsbError::NotClaimed);
        }
        if endpoint != FTDI_BULK_OUT {
            return Err(UsbError::InvalidArgument(format!(
                "no OUT endpoint {endpoint:#04x}"
            )));
        }
        self.written.extend_from_slice(data);
        for byte in data {
            if *byte != b'\n' {
                self.line.push(*byte);
                continue;
            }
            let line = String::from_utf8_lossy(&self.line)
                .trim_end_matches('\r')
                .to_string();
            self.line.clear();
            if let Some(board) = self.board.as_mut() {
                let answer = board(&line);
                self.output.extend(answer.bytes());
            }
        }
        Ok(data.len() as u32)
    }

    fn interrupt_in(&mut self, endpoint: u8, _: u32, _: u32) -> Result<Vec<u8>, UsbError> {
        Err(UsbError::InvalidArgument(format!(
            "no interrupt endpoint {endpoint:#04x}"
        )))
    }

    fn clear_halt(&mut self, _: u8) -> Result<(), UsbError> {
        Ok(())
    }
}
