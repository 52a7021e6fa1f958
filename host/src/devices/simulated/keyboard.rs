//! `[device.keyboard]`: a HID boot keyboard (USB HID 1.11, appendix B.1) that types a
//! configured text.
//!
//! Typing starts once the host has claimed the interface and sent SET_IDLE or SET_PROTOCOL
//! (as a boot-protocol driver does before it polls), or `start_after` after the device was
//! opened, whichever comes first. Each character is one press report and one release report
//! on the interrupt IN endpoint, one report per polling interval (10 ms): letters, digits,
//! space and Enter (`\n`), capitals with the left shift modifier. With no key pending a read
//! waits for its timeout, as a keyboard that NAKs its polls, unless SET_IDLE asked for the
//! report to be repeated every idle period. The HID class requests (GET/SET_REPORT,
//! GET/SET_IDLE, GET/SET_PROTOCOL) and GET_DESCRIPTOR of the HID and report descriptors are
//! answered. Power-on (open, reset) starts the text over, in report protocol, idle 0.
//!
//! Descriptors mirror QEMU's `usb-kbd` at full speed: 0627:0001 "QEMU USB Keyboard",
//! interface 0 of class 03 (HID), subclass 01 (boot), protocol 01 (keyboard), interrupt IN
//! 0x81 of 8 bytes polled every 10 ms.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::class_model::{ClassModel, Identity, Outcome};
use super::model::{duration, invalid};
use crate::devices::ControlSetup;
use crate::devices::UsbError;
use crate::devices::descriptor::{
    ConfigurationDescriptor, DT_HID, DT_HID_REPORT, EndpointDescriptor, InterfaceDescriptor,
    TransferType,
};

/// The interrupt IN endpoint carrying the reports.
const INTERRUPT_IN: u8 = 0x81;
/// A boot keyboard report: modifiers, reserved, six key codes.
const REPORT_LENGTH: usize = 8;
/// bInterval of the interrupt endpoint, in ms: one report per poll.
const POLL_INTERVAL_MS: u8 = 10;
/// The longest text a keyboard types.
const MAX_TEXT: usize = 4096;
/// Modifier bit of the left shift key.
const LEFT_SHIFT: u8 = 0x02;

/// HID class requests (HID 1.11, 7.2).
mod request {
    pub(super) const GET_REPORT: u8 = 0x01;
    pub(super) const GET_IDLE: u8 = 0x02;
    pub(super) const GET_PROTOCOL: u8 = 0x03;
    pub(super) const SET_REPORT: u8 = 0x09;
    pub(super) const SET_IDLE: u8 = 0x0a;
    pub(super) const SET_PROTOCOL: u8 = 0x0b;
}
/// Standard GET_DESCRIPTOR.
const GET_DESCRIPTOR: u8 = 0x06;
/// Report types in GET/SET_REPORT's wValue high byte.
const INPUT_REPORT: u8 = 1;
const OUTPUT_REPORT: u8 = 2;

/// The boot keyboard report descriptor of HID 1.11 appendix B.1: an 8-byte input report
/// (modifier bits, a reserved byte, six key codes) and a 1-byte LED output report.
const REPORT_DESCRIPTOR: [u8; 63] = [
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x06, // Usage (Keyboard)
    0xa1, 0x01, // Collection (Application)
    0x05, 0x07, //   Usage Page (Keyboard/Keypad)
    0x19, 0xe0, //   Usage Minimum (Left Control)
    0x29, 0xe7, //   Usage Maximum (Right GUI)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x01, //   Logical Maximum (1)
    0x75, 0x01, //   Report Size (1)
    0x95, 0x08, //   Report Count (8)
    0x81, 0x02, //   Input (Data, Variable, Absolute): modifier byte
    0x95, 0x01, //   Report Count (1)
    0x75, 0x08, //   Report Size (8)
    0x81, 0x01, //   Input (Constant): reserved byte
    0x95, 0x05, //   Report Count (5)
    0x75, 0x01, //   Report Size (1)
    0x05, 0x08, //   Usage Page (LEDs)
    0x19, 0x01, //   Usage Minimum (Num Lock)
    0x29, 0x05, //   Usage Maximum (Kana)
    0x91, 0x02, //   Output (Data, Variable, Absolute): LED report
    0x95, 0x01, //   Report Count (1)
    0x75, 0x03, //   Report Size (3)
    0x91, 0x01, //   Output (Constant): LED padding
    0x95, 0x06, //   Report Count (6)
    0x75, 0x08, //   Report Size (8)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x65, //   Logical Maximum (101)
    0x05, 0x07, //   Usage Page (Keyboard/Keypad)
    0x19, 0x00, //   Usage Minimum (0)
    0x29, 0x65, //   Usage Maximum (101)
    0x81, 0x00, //   Input (Data, Array): key codes
    0xc0, // End Collection
];

/// The HID descriptor: HID 1.11, no country, one report descriptor of 63 bytes.
const HID_DESCRIPTOR: [u8; 9] = [
    9,
    DT_HID,
    0x11,
    0x01,
    0,
    1,
    DT_HID_REPORT,
    REPORT_DESCRIPTOR.len() as u8,
    0,
];

/// `[device.keyboard]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyboardSpec {
    text: String,
    start_after: Option<String>,
}

/// The modifiers and usage id (HID usage tables, keyboard page) that type `c`.
fn key(c: char) -> Option<(u8, u8)> {
    let offset = |c: char, base: char| u8::try_from(u32::from(c) - u32::from(base)).ok();
    match c {
        'a'..='z' => Some((0, 0x04 + offset(c, 'a')?)),
        'A'..='Z' => Some((LEFT_SHIFT, 0x04 + offset(c, 'A')?)),
        '1'..='9' => Some((0, 0x1e + offset(c, '1')?)),
        '0' => Some((0, 0x27)),
        '\n' => Some((0, 0x28)),
        ' ' => Some((0, 0x2c)),
        _ => None,
    }
}

impl KeyboardSpec {
    /// Checks the table; the keyboard it describes, with the identity of QEMU's `usb-kbd`.
    pub(super) fn check(self) -> Result<(Identity, BootKeyboard), UsbError> {
        if self.text.chars().count() > MAX_TEXT {
            return Err(invalid(format!(
                "`keyboard.text`: longer than {MAX_TEXT} characters"
            )));
        }
        let mut reports = Vec::with_capacity(2 * self.text.len());
        for c in self.text.chars() {
            let (modifiers, usage) = key(c).ok_or_else(|| {
                invalid(format!(
                    "`keyboard.text`: {c:?} cannot be typed; use letters, digits, space and \\n"
                ))
            })?;
            reports.push([modifiers, 0, usage, 0, 0, 0, 0, 0]);
            reports.push([0; REPORT_LENGTH]);
        }
        let start_after = duration("keyboard.start_after", self.start_after.as_deref())?;
        Ok((
            identity(),
            BootKeyboard::new(reports, start_after, Instant::now()),
        ))
    }
}

/// QEMU's `usb-kbd` at full speed.
fn identity() -> Identity {
    Identity {
        vendor_id: 0x0627,
        product_id: 0x0001,
        device_version: 0x0000,
        manufacturer: "QEMU",
        product: "QEMU USB Keyboard",
        serial: "68284",
        usb_version: 0x0100,
        max_packet_size0: 8,
        configuration_string: Some("HID Keyboard"),
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
                class: 0x03,
                subclass: 0x01,
                protocol: 0x01,
                string: 0,
                extra: HID_DESCRIPTOR.to_vec(),
                endpoints: vec![EndpointDescriptor::new(
                    INTERRUPT_IN,
                    TransferType::Interrupt,
                    REPORT_LENGTH as u16,
                    POLL_INTERVAL_MS,
                )],
            }],
        },
    }
}

/// The keyboard at run time.
#[derive(Debug)]
pub(super) struct BootKeyboard {
    /// Every report the text takes, press and release in turn.
    reports: Vec<[u8; REPORT_LENGTH]>,
    start_after: Option<Duration>,
    /// When the device was powered on (opened or reset).
    powered: Instant,
    claimed: bool,
    /// SET_IDLE or SET_PROTOCOL arrived.
    set_up: bool,
    /// When typing started.
    typing_since: Option<Instant>,
    /// The next report of `reports` to send.
    next: usize,
    /// When the last report went out.
    last_sent: Option<Instant>,
    /// The keys down now, as the last report said.
    current: [u8; REPORT_LENGTH],
    /// 0 boot, 1 report.
    protocol: u8,
    /// SET_IDLE's duration, in units of 4 ms; 0 reports only changes.
    idle: u8,
    /// The LED output report.
    leds: u8,
}

impl BootKeyboard {
    fn new(reports: Vec<[u8; REPORT_LENGTH]>, start_after: Option<Duration>, now: Instant) -> Self {
        Self {
            reports,
            start_after,
            powered: now,
            claimed: false,
            set_up: false,
            typing_since: None,
            next: 0,
            last_sent: None,
            current: [0; REPORT_LENGTH],
            protocol: 1,
            idle: 0,
            leds: 0,
        }
    }

    /// When typing starts without the host's set-up, if `start_after` is given.
    fn start_time(&self) -> Option<Instant> {
        self.start_after
            .map(|after| self.powered.checked_add(after).unwrap_or(self.powered))
    }

    /// Starts typing when its time has come.
    fn maybe_start(&mut self, now: Instant) {
        if self.typing_since.is_none()
            && ((self.claimed && self.set_up) || self.start_time().is_some_and(|at| now >= at))
        {
            self.typing_since = Some(now);
        }
    }

    /// When the next report may go out: one poll interval after the last.
    fn next_poll(&self, from: Instant) -> Instant {
        self.last_sent
            .and_then(|t| t.checked_add(Duration::from_millis(u64::from(POLL_INTERVAL_MS))))
            .map_or(from, |t| t.max(from))
    }

    fn send(&mut self, report: [u8; REPORT_LENGTH], now: Instant) -> Outcome<Vec<u8>> {
        self.current = report;
        self.last_sent = Some(now);
        Outcome::Done(report.to_vec())
    }

    fn read_report(&mut self, now: Instant) -> Outcome<Vec<u8>> {
        self.maybe_start(now);
        let Some(since) = self.typing_since else {
            return Outcome::Pending(self.start_time());
        };
        if let Some(&report) = self.reports.get(self.next) {
            let due = self.next_poll(since);
            if now < due {
                return Outcome::Pending(Some(due));
            }
            self.next += 1;
            return self.send(report, now);
        }
        if self.idle == 0 {
            return Outcome::Pending(None);
        }
        // Idle repeat: the same report again once per idle period.
        let period = Duration::from_millis(4 * u64::from(self.idle));
        let due = self
            .last_sent
            .unwrap_or(since)
            .checked_add(period)
            .unwrap_or(now);
        if now < due {
            return Outcome::Pending(Some(due));
        }
        self.send(self.current, now)
    }
}

impl ClassModel for BootKeyboard {
    fn control_in(&mut self, setup: ControlSetup, _length: u16, _now: Instant) -> Outcome<Vec<u8>> {
        let [report_id, kind] = setup.value.to_le_bytes();
        if setup.index != 0 {
            return Outcome::Stall;
        }
        let answer = match (setup.request_type, setup.request) {
            (0x81, GET_DESCRIPTOR) => match (kind, report_id) {
                (DT_HID, 0) => HID_DESCRIPTOR.to_vec(),
                (DT_HID_REPORT, 0) => REPORT_DESCRIPTOR.to_vec(),
                _ => return Outcome::Stall,
            },
            (0xa1, request::GET_REPORT) => match (kind, report_id) {
                (INPUT_REPORT, 0) => self.current.to_vec(),
                (OUTPUT_REPORT, 0) => vec![self.leds],
                _ => return Outcome::Stall,
            },
            (0xa1, request::GET_IDLE) => vec![self.idle],
            (0xa1, request::GET_PROTOCOL) if setup.value == 0 => vec![self.protocol],
            _ => return Outcome::Stall,
        };
        Outcome::Done(answer)
    }

    fn control_out(&mut self, setup: ControlSetup, data: &[u8], now: Instant) -> Outcome<()> {
        let [low, high] = setup.value.to_le_bytes();
        if setup.request_type != 0x21 || setup.index != 0 {
            return Outcome::Stall;
        }
        match setup.request {
            request::SET_REPORT if high == OUTPUT_REPORT && low == 0 && data.len() == 1 => {
                self.leds = data[0];
            }
            request::SET_IDLE if low == 0 => {
                self.idle = high;
                self.set_up = true;
            }
            request::SET_PROTOCOL if setup.value <= 1 => {
                self.protocol = low;
                self.set_up = true;
            }
            _ => return Outcome::Stall,
        }
        self.maybe_start(now);
        Outcome::Done(())
    }

    fn read(&mut self, endpoint: u8, length: usize, now: Instant) -> Outcome<Vec<u8>> {
        if endpoint != INTERRUPT_IN {
            return Outcome::Stall;
        }
        if length < REPORT_LENGTH {
            return Outcome::Overflow;
        }
        self.read_report(now)
    }

    fn write(&mut self, _endpoint: u8, _data: &[u8], _now: Instant) -> Outcome<usize> {
        // The keyboard has no OUT endpoint; the handle refuses writes before they get here.
        Outcome::Stall
    }

    fn power_on(&mut self, now: Instant) {
        let reports = std::mem::take(&mut self.reports);
        *self = Self::new(reports, self.start_after, now);
    }

    fn claimed(&mut self, now: Instant) {
        self.claimed = true;
        self.maybe_start(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_descriptor_is_the_boot_keyboard_of_hid_appendix_b() {
        assert_eq!(REPORT_DESCRIPTOR.len(), 63);
        assert_eq!(HID_DESCRIPTOR[7], 63);
        // Balanced: one collection, closed at the end.
        assert_eq!(REPORT_DESCRIPTOR[4..6], [0xa1, 0x01]);
        assert_eq!(REPORT_DESCRIPTOR[62], 0xc0);
    }

    #[test]
    fn characters_map_to_usage_ids_of_the_keyboard_page() {
        assert_eq!(key('a'), Some((0, 0x04)));
        assert_eq!(key('z'), Some((0, 0x1d)));
        assert_eq!(key('Q'), Some((LEFT_SHIFT, 0x14)));
        assert_eq!(key('1'), Some((0, 0x1e)));
        assert_eq!(key('9'), Some((0, 0x26)));
        assert_eq!(key('0'), Some((0, 0x27)));
        assert_eq!(key('\n'), Some((0, 0x28)));
        assert_eq!(key(' '), Some((0, 0x2c)));
        assert_eq!(key('!'), None);
        assert_eq!(key('é'), None);
    }
}
