//! A fake USB keyboard that plays a typist: it turns text into the boot reports a keyboard
//! sends (shift held for capitals, each key pressed then released), and sends them in boot
//! format only once the host has asked for the boot protocol.

use std::collections::VecDeque;

use super::FakeDevice;
use super::descriptor::{ConfigurationBuilder, EndpointSpec};
use crate::descriptors::InterfaceClass;
use crate::hid::{BOOT_PROTOCOL, ENTER, SET_IDLE, SET_PROTOCOL, SPACE};
use crate::transfers::{CLASS_INTERFACE_OUT, Transfers};
use crate::usb::{ControlSetup, UsbError};

/// The keyboard's interrupt IN endpoint.
pub const KEYBOARD_ENDPOINT: u8 = 0x81;

/// Modifier bit of left shift.
const LEFT_SHIFT: u8 = 0x02;

/// A fake boot keyboard; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct FakeKeyboard {
    claimed: bool,
    boot_protocol: bool,
    idle: Option<u8>,
    reports: VecDeque<[u8; 8]>,
}

impl FakeKeyboard {
    /// A keyboard in report protocol (as every HID device starts), nothing typed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the host switched it to the boot protocol.
    pub fn in_boot_protocol(&self) -> bool {
        self.boot_protocol
    }

    /// The idle duration the host set (4 ms units), if it did.
    pub fn idle(&self) -> Option<u8> {
        self.idle
    }

    /// Queues one raw boot report.
    pub fn push_report(&mut self, report: [u8; 8]) {
        self.reports.push_back(report);
    }

    /// Types `text`: letters (shift for capitals), digits, space; `\n` is Enter. Other
    /// characters are skipped.
    pub fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            let (usage, shift) = match c {
                'a'..='z' => (c as u8 - b'a' + 0x04, false),
                'A'..='Z' => (c as u8 - b'A' + 0x04, true),
                '1'..='9' => (c as u8 - b'1' + 0x1e, false),
                '0' => (0x27, false),
                ' ' => (SPACE, false),
                '\n' => (ENTER, false),
                _ => continue,
            };
            let modifiers = if shift { LEFT_SHIFT } else { 0 };
            if shift {
                self.push_report([modifiers, 0, 0, 0, 0, 0, 0, 0]);
            }
            self.push_report([modifiers, 0, usage, 0, 0, 0, 0, 0]);
            self.push_report([modifiers, 0, 0, 0, 0, 0, 0, 0]);
            if shift {
                self.push_report([0; 8]);
            }
        }
    }
}

impl FakeDevice for FakeKeyboard {
    const VENDOR_ID: u16 = 0x0627;
    const PRODUCT_ID: u16 = 0x0001;

    /// The configuration descriptor bytes: one boot keyboard interface with an 8-byte
    /// interrupt IN endpoint at 0x81.
    fn configuration_descriptor() -> Vec<u8> {
        ConfigurationBuilder::new(1)
            .interface(0, InterfaceClass::HID_BOOT_KEYBOARD)
            .raw(&[9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0])
            .endpoint(EndpointSpec::interrupt(KEYBOARD_ENDPOINT, 8, 10))
            .build()
    }
}

impl Transfers for FakeKeyboard {
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        super::claim(&mut self.claimed, interface, 0)
    }

    fn control_in(&mut self, _: ControlSetup, _: u16, _: u32) -> Result<Vec<u8>, UsbError> {
        Err(UsbError::Stall)
    }

    fn control_out(&mut self, setup: ControlSetup, _: &[u8], _: u32) -> Result<u32, UsbError> {
        match (setup.request_type, setup.request, setup.index) {
            (CLASS_INTERFACE_OUT, SET_PROTOCOL, 0) => {
                self.boot_protocol = setup.value == BOOT_PROTOCOL;
                Ok(0)
            }
            (CLASS_INTERFACE_OUT, SET_IDLE, 0) => {
                self.idle = Some((setup.value >> 8) as u8);
                Ok(0)
            }
            _ => Err(UsbError::Stall),
        }
    }

    fn bulk_in(&mut self, endpoint: u8, _: u32, _: u32) -> Result<Vec<u8>, UsbError> {
        Err(UsbError::InvalidArgument(format!(
            "no bulk endpoint {endpoint:#04x}"
        )))
    }

    fn bulk_out(&mut self, endpoint: u8, _: &[u8], _: u32) -> Result<u32, UsbError> {
        Err(UsbError::InvalidArgument(format!(
            "no bulk endpoint {endpoint:#04x}"
        )))
    }

    fn interrupt_in(&mut self, endpoint: u8, length: u32, _: u32) -> Result<Vec<u8>, UsbError> {
        if !self.claimed {
            return Err(UsbError::NotClaimed);
        }
        if endpoint != KEYBOARD_ENDPOINT {
            return Err(UsbError::InvalidArgument(format!(
                "no IN endpoint {endpoint:#04x}"
            )));
        }
        let report = self.reports.pop_front().ok_or(UsbError::Timeout)?;
        if self.boot_protocol {
            return Ok(report.to_vec());
        }
        // In report protocol this keyboard numbers its reports: a report ID byte first, so a
        // host that never asked for boot reports reads them wrong.
        let mut numbered = vec![1];
        numbered.extend_from_slice(&report);
        if numbered.len() > length as usize {
            return Err(UsbError::Overflow);
        }
        Ok(numbered)
    }

    fn clear_halt(&mut self, _: u8) -> Result<(), UsbError> {
        Ok(())
    }
}
