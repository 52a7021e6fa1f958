//! `[device.serial-console]`: an FTDI FT232 USB serial adapter with a scripted console on the
//! other end of its wire.
//!
//! The adapter side follows the FT232 "SIO" vendor requests as Linux's `ftdi_sio` driver and
//! QEMU's `usb-serial` use them: reset/purge, modem control (DTR/RTS), flow control, baud
//! rate (the FT232BM divisor encoding), line settings, event/error characters, latency timer,
//! modem status. Every bulk IN packet starts with two status bytes (modem status 0x01, line
//! status 0x60 when idle: transmitter empty); a transfer carries packets of at most 64 bytes
//! (62 of data each), and with nothing to send the chip answers a status-only packet once
//! its latency timer (16 ms unless set) runs out. A reader strips two bytes from every 64.
//!
//! The console side starts (banner, then the login prompt) when the host raises DTR, as a
//! terminal opening the port does, or first reads or writes the data pipe. A received line
//! (ended by CR, LF or CRLF; backspace edits) at the login prompt logs in and gets the shell
//! prompt; in the shell, a line listed as a command gets its answer, any other
//! `sh: WORD: not found`, then the prompt again. Output line ends are CRLF, as a tty sends them.
//! The console talks at its `baud`, 8N1: until the host sets the same (within 3%), what the
//! console sends arrives garbled with the framing-error bit set, and what the host sends is
//! noise to it.
//!
//! Descriptors mirror QEMU's `usb-serial`: 0403:6001, bcdDevice 0x0400 (FT232BM), "QEMU USB
//! SERIAL", interface 0 of class ff/ff/ff with bulk IN 0x81 and bulk OUT 0x02 of 64 bytes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::class_model::{ClassModel, Identity, Outcome};
use super::model::invalid;
use crate::devices::descriptor::{
    ConfigurationDescriptor, EndpointDescriptor, InterfaceDescriptor, TransferType,
};
use crate::devices::{ControlSetup, UsbError};

/// The bulk IN endpoint: status bytes and data from the console.
const BULK_IN: u8 = 0x81;
/// The bulk OUT endpoint: data to the console.
const BULK_OUT: u8 = 0x02;
/// wMaxPacketSize of both bulk endpoints (the FT232 is a full-speed device).
const MAX_PACKET: usize = 64;
/// The two status bytes at the start of every IN packet.
const STATUS_LENGTH: usize = 2;
/// Modem status byte: the FT232 sets bit 0; no CTS/DSR/RI/DCD from the console's side.
const MODEM_STATUS: u8 = 0x01;
/// Line status byte when idle: transmitter holding register and transmitter empty.
const LINE_IDLE: u8 = 0x60;
/// Line status bit: overrun (the adapter's buffer was full and data was lost).
const LINE_OVERRUN: u8 = 0x02;
/// Line status bit: framing error (the line's speed or format does not match).
const LINE_FRAMING_ERROR: u8 = 0x08;
/// The latency timer after power-on, in milliseconds.
const DEFAULT_LATENCY_MS: u8 = 16;
/// Bytes the adapter holds for the host before what the console sends is lost.
const BUFFER_CAPACITY: usize = 64 * 1024;
/// The longest line the console takes; longer input is cut there.
const MAX_LINE: usize = 1024;
/// How far the host's baud rate may be from the console's, in percent, and still be read.
const BAUD_TOLERANCE_PERCENT: u64 = 3;

/// FT232 vendor requests (`bRequest`, request type 0x40 out / 0xc0 in).
mod request {
    pub(super) const RESET: u8 = 0;
    pub(super) const MODEM_CTRL: u8 = 1;
    pub(super) const SET_FLOW_CTRL: u8 = 2;
    pub(super) const SET_BAUD_RATE: u8 = 3;
    pub(super) const SET_DATA: u8 = 4;
    pub(super) const GET_MODEM_STATUS: u8 = 5;
    pub(super) const SET_EVENT_CHAR: u8 = 6;
    pub(super) const SET_ERROR_CHAR: u8 = 7;
    pub(super) const SET_LATENCY_TIMER: u8 = 9;
    pub(super) const GET_LATENCY_TIMER: u8 = 10;
}

/// `[device.serial-console]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SerialConsoleSpec {
    banner: Option<String>,
    login: Option<String>,
    prompt: Option<String>,
    baud: Option<u32>,
    #[serde(default)]
    command: Vec<CommandSpec>,
}

/// One `[[device.serial-console.command]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandSpec {
    line: String,
    answer: String,
}

/// What the console says, as the file gives it.
#[derive(Debug, Default)]
struct Script {
    banner: String,
    login: String,
    prompt: String,
    /// (line, answer) pairs; lines are trimmed.
    commands: Vec<(String, String)>,
    baud: u32,
}

impl SerialConsoleSpec {
    /// Checks the table; the adapter and console it describes, with the identity of QEMU's
    /// `usb-serial`.
    pub(super) fn check(self) -> Result<(Identity, FtdiSerial), UsbError> {
        let baud = self.baud.unwrap_or(115_200);
        if !(300..=3_000_000).contains(&baud) {
            return Err(invalid(format!(
                "`serial-console.baud`: {baud} is not a rate an FT232 runs at (300 to 3000000)"
            )));
        }
        let mut commands: Vec<(String, String)> = Vec::new();
        for (i, command) in self.command.into_iter().enumerate() {
            let line = command.line.trim().to_owned();
            if line.is_empty() || line.contains(['\r', '\n']) {
                return Err(invalid(format!(
                    "`serial-console.command[{i}].line`: give one non-empty line"
                )));
            }
            if commands.iter().any(|(other, _)| *other == line) {
                return Err(invalid(format!(
                    "`serial-console.command[{i}].line`: `{line}` is listed twice"
                )));
            }
            commands.push((line, command.answer));
        }
        let script = Script {
            banner: self.banner.unwrap_or_default(),
            login: self.login.unwrap_or_else(|| "login: ".to_owned()),
            prompt: self.prompt.unwrap_or_else(|| "$ ".to_owned()),
            commands,
            baud,
        };
        Ok((identity(), FtdiSerial::new(script, Instant::now())))
    }
}

/// QEMU's `usb-serial` (an FT232BM).
fn identity() -> Identity {
    let bulk = |address| EndpointDescriptor::new(address, TransferType::Bulk, MAX_PACKET as u16, 0);
    Identity {
        vendor_id: 0x0403,
        product_id: 0x6001,
        device_version: 0x0400,
        manufacturer: "QEMU",
        product: "QEMU USB SERIAL",
        serial: "1",
        usb_version: 0x0200,
        max_packet_size0: 8,
        configuration_string: None,
        configuration: ConfigurationDescriptor {
            value: 1,
            string: 0,
            // Bus powered, remote wakeup, 100 mA.
            attributes: 0xa0,
            max_power: 50,
            extra: Vec::new(),
            interfaces: vec![InterfaceDescriptor {
                number: 0,
                alternate_setting: 0,
                class: 0xff,
                subclass: 0xff,
                protocol: 0xff,
                string: 0,
                extra: Vec::new(),
                endpoints: vec![bulk(BULK_IN), bulk(BULK_OUT)],
            }],
        },
    }
}

/// The baud rate an FT232BM runs at for SET_BAUD_RATE's `value` and `index`: a 3 MHz clock
/// divided by a 14-bit integer plus a fraction in eighths, coded in value bits 14-15 and
/// index bit 0; divisors 0 and 1 stand for 3 and 2 Mbaud.
fn ftdi_baud_rate(value: u16, index: u16) -> u32 {
    const EIGHTHS: [u32; 8] = [0, 4, 2, 1, 3, 5, 6, 7];
    let integer = u32::from(value & 0x3fff);
    let code = usize::from((value >> 14) | ((index & 1) << 2));
    match (integer, EIGHTHS[code]) {
        (0, 0) => 3_000_000,
        (1, 0) => 2_000_000,
        (integer, eighths) => 24_000_000 / (8 * integer + eighths),
    }
}

/// The serial line as the host set it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineSettings {
    baud: u32,
    data_bits: u8,
    /// 0 none, 1 odd, 2 even, 3 mark, 4 space.
    parity: u8,
    /// 0 one, 1 one and a half, 2 two.
    stop_bits: u8,
    /// Whether the host holds the line in break.
    breaking: bool,
}

impl LineSettings {
    /// An FT232 after power-on: 9600 baud, 8N1.
    const POWER_ON: Self = Self {
        baud: 9600,
        data_bits: 8,
        parity: 0,
        stop_bits: 0,
        breaking: false,
    };

    /// Whether a console at `baud`, 8N1, understands this line.
    fn matches(&self, baud: u32) -> bool {
        let difference = u64::from(self.baud.abs_diff(baud));
        difference * 100 <= u64::from(baud) * BAUD_TOLERANCE_PERCENT
            && self.data_bits == 8
            && self.parity == 0
            && self.stop_bits == 0
            && !self.breaking
    }
}

/// Where the console is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not started: nothing said yet.
    Silent,
    /// The login prompt is out.
    Login,
    /// Logged in: the shell prompt is out.
    Shell,
}

/// The FT232 and its console at run time.
#[derive(Debug)]
pub(super) struct FtdiSerial {
    script: Script,
    line: LineSettings,
    stage: Stage,
    /// What the console sent that the host has not read yet.
    to_host: VecDeque<u8>,
    /// The line the console is receiving.
    input: Vec<u8>,
    /// The last byte received was a CR (so an LF after it ends no second line).
    after_cr: bool,
    /// Line status bits to report until the buffer is drained.
    line_errors: u8,
    dtr: bool,
    rts: bool,
    flow_control: u8,
    latency_ms: u8,
    event_char: u16,
    error_char: u16,
    /// When the last IN packet went out: the latency timer counts from there.
    last_packet: Instant,
}

impl FtdiSerial {
    /// The adapter at power-on, its console silent.
    fn new(script: Script, now: Instant) -> Self {
        Self {
            script,
            line: LineSettings::POWER_ON,
            stage: Stage::Silent,
            to_host: VecDeque::new(),
            input: Vec::new(),
            after_cr: false,
            line_errors: 0,
            dtr: false,
            rts: false,
            flow_control: 0,
            latency_ms: DEFAULT_LATENCY_MS,
            event_char: 0,
            error_char: 0,
            last_packet: now,
        }
    }

    /// The console starts talking, if it has not yet.
    fn start(&mut self) {
        if self.stage != Stage::Silent {
            return;
        }
        self.stage = Stage::Login;
        let mut banner = self.script.banner.clone();
        if !banner.is_empty() && !banner.ends_with('\n') {
            banner.push('\n');
        }
        banner.push_str(&self.script.login);
        self.send(&banner);
    }

    /// The console sends `text` down the wire (LF as CRLF), as the adapter receives it.
    fn send(&mut self, text: &str) {
        let understood = self.line.matches(self.script.baud);
        let mut previous = 0u8;
        for &byte in text.as_bytes() {
            if byte == b'\n' && previous != b'\r' {
                self.receive_from_console(b'\r', understood);
            }
            self.receive_from_console(byte, understood);
            previous = byte;
        }
    }

    /// One byte arriving at the adapter from the console's side.
    fn receive_from_console(&mut self, byte: u8, understood: bool) {
        if self.to_host.len() >= BUFFER_CAPACITY {
            self.line_errors |= LINE_OVERRUN;
            return;
        }
        if understood {
            self.to_host.push_back(byte);
        } else {
            // Sampled at the wrong rate: not the byte that was sent, and badly framed.
            self.to_host.push_back(!byte);
            self.line_errors |= LINE_FRAMING_ERROR;
        }
    }

    /// Bytes the host sends to the console.
    fn console_receives(&mut self, data: &[u8]) {
        self.start();
        if !self.line.matches(self.script.baud) {
            // Noise to the console.
            return;
        }
        for &byte in data {
            match byte {
                b'\n' if self.after_cr => {}
                b'\r' | b'\n' => {
                    let line = String::from_utf8_lossy(&self.input).into_owned();
                    self.input.clear();
                    self.answer(line.trim());
                }
                0x08 | 0x7f => {
                    self.input.pop();
                }
                _ if self.input.len() < MAX_LINE => self.input.push(byte),
                _ => {}
            }
            self.after_cr = byte == b'\r';
        }
    }

    /// What the console answers to a whole line.
    fn answer(&mut self, line: &str) {
        match self.stage {
            Stage::Silent | Stage::Login if line.is_empty() => {
                let login = self.script.login.clone();
                self.send(&login);
            }
            Stage::Silent | Stage::Login => {
                self.stage = Stage::Shell;
                let prompt = self.script.prompt.clone();
                self.send(&prompt);
            }
            Stage::Shell => {
                let mut reply = String::new();
                if !line.is_empty() {
                    match self.script.commands.iter().find(|(l, _)| l == line) {
                        Some((_, answer)) => reply.push_str(answer),
                        None => {
                            let word = line.split_whitespace().next().unwrap_or(line);
                            reply.push_str(&format!("sh: {word}: not found"));
                        }
                    }
                    if !reply.is_empty() && !reply.ends_with('\n') {
                        reply.push('\n');
                    }
                }
                reply.push_str(&self.script.prompt);
                self.send(&reply);
            }
        }
    }

    /// The two status bytes of the next packet.
    fn status(&self) -> [u8; STATUS_LENGTH] {
        [MODEM_STATUS, LINE_IDLE | self.line_errors]
    }

    /// Up to `length` bytes of packets: each 2 status bytes and up to 62 data bytes; the
    /// transfer ends with the first packet shorter than 64 bytes, or when `length` is filled.
    fn packets(&mut self, length: usize) -> Vec<u8> {
        let mut transfer = Vec::new();
        loop {
            let room = (length - transfer.len()).min(MAX_PACKET);
            let n = room.saturating_sub(STATUS_LENGTH).min(self.to_host.len());
            transfer.extend(self.status());
            transfer.extend(self.to_host.drain(..n));
            if self.to_host.is_empty() {
                self.line_errors = 0;
            }
            let packet = STATUS_LENGTH + n;
            if packet < MAX_PACKET
                || self.to_host.is_empty()
                || length - transfer.len() <= STATUS_LENGTH
            {
                return transfer;
            }
        }
    }

    fn vendor_out(&mut self, setup: ControlSetup) -> Outcome<()> {
        let value = setup.value;
        match setup.request {
            request::RESET => match value {
                // Reset the SIO: purge both ways, no flow control.
                0 => {
                    self.to_host.clear();
                    self.line_errors = 0;
                    self.flow_control = 0;
                }
                // Purge RX (what waits for the host); TX holds nothing here.
                1 => {
                    self.to_host.clear();
                    self.line_errors = 0;
                }
                2 => {}
                _ => return Outcome::Stall,
            },
            request::MODEM_CTRL => {
                let raised = value & 0x0100 != 0 && value & 0x01 != 0 && !self.dtr;
                if value & 0x0100 != 0 {
                    self.dtr = value & 0x01 != 0;
                }
                if value & 0x0200 != 0 {
                    self.rts = value & 0x02 != 0;
                }
                if raised {
                    self.start();
                }
            }
            request::SET_FLOW_CTRL => self.flow_control = setup.index.to_be_bytes()[0],
            request::SET_BAUD_RATE => self.line.baud = ftdi_baud_rate(value, setup.index),
            request::SET_DATA => {
                let parity = ((value >> 8) & 0x07) as u8;
                let stop_bits = ((value >> 11) & 0x03) as u8;
                if parity > 4 || stop_bits > 2 {
                    return Outcome::Stall;
                }
                // Like the chip, anything but 7 data bits is 8.
                let data_bits = if value & 0xff == 7 { 7 } else { 8 };
                self.line = LineSettings {
                    data_bits,
                    parity,
                    stop_bits,
                    breaking: value & 0x4000 != 0,
                    ..self.line
                };
            }
            request::SET_EVENT_CHAR => self.event_char = value,
            request::SET_ERROR_CHAR => self.error_char = value,
            request::SET_LATENCY_TIMER => match u8::try_from(value) {
                Ok(ms) if ms > 0 => self.latency_ms = ms,
                _ => return Outcome::Stall,
            },
            _ => return Outcome::Stall,
        }
        Outcome::Done(())
    }
}

impl ClassModel for FtdiSerial {
    fn control_in(&mut self, setup: ControlSetup, _length: u16, _now: Instant) -> Outcome<Vec<u8>> {
        match (setup.request_type, setup.request) {
            (0xc0, request::GET_MODEM_STATUS) => Outcome::Done(self.status().to_vec()),
            (0xc0, request::GET_LATENCY_TIMER) => Outcome::Done(vec![self.latency_ms]),
            _ => Outcome::Stall,
        }
    }

    fn control_out(&mut self, setup: ControlSetup, _data: &[u8], _now: Instant) -> Outcome<()> {
        if setup.request_type != 0x40 {
            return Outcome::Stall;
        }
        self.vendor_out(setup)
    }

    fn read(&mut self, endpoint: u8, length: usize, now: Instant) -> Outcome<Vec<u8>> {
        if endpoint != BULK_IN {
            return Outcome::Stall;
        }
        if length < STATUS_LENGTH {
            return Outcome::Overflow;
        }
        self.start();
        if self.to_host.is_empty() {
            let due = self
                .last_packet
                .checked_add(Duration::from_millis(u64::from(self.latency_ms)))
                .unwrap_or(now);
            if now < due {
                return Outcome::Pending(Some(due));
            }
        }
        self.last_packet = now;
        Outcome::Done(self.packets(length))
    }

    fn write(&mut self, endpoint: u8, data: &[u8], _now: Instant) -> Outcome<usize> {
        if endpoint != BULK_OUT {
            return Outcome::Stall;
        }
        self.console_receives(data);
        Outcome::Done(data.len())
    }

    fn power_on(&mut self, now: Instant) {
        let script = std::mem::take(&mut self.script);
        *self = Self::new(script, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baud_divisors_decode_as_ftdi_sio_encodes_them() {
        // 3000000 / 115200 = 26.04: divisor 26, no fraction.
        assert_eq!(ftdi_baud_rate(26, 0), 115_384);
        // 9600: 312.5 = 312 + 4/8, fraction code 1 in bits 14-15.
        assert_eq!(ftdi_baud_rate(0x4138, 0), 9600);
        // 57600: 52.08 → 52 + 1/8, fraction code 3.
        assert_eq!(ftdi_baud_rate(0xc034, 0), 57_553);
        // Fraction code 4 (3/8) needs index bit 0.
        assert_eq!(ftdi_baud_rate(10, 1), 24_000_000 / 83);
        assert_eq!(ftdi_baud_rate(0, 0), 3_000_000);
        assert_eq!(ftdi_baud_rate(1, 0), 2_000_000);
    }

    #[test]
    fn a_line_within_three_percent_at_8n1_is_understood() {
        let at = |baud| LineSettings {
            baud,
            ..LineSettings::POWER_ON
        };
        assert!(at(115_384).matches(115_200));
        assert!(!at(9600).matches(115_200));
        let seven = LineSettings {
            data_bits: 7,
            ..at(115_200)
        };
        assert!(!seven.matches(115_200));
    }
}
