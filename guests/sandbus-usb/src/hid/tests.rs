//! The boot keyboard against a fake keyboard that types text.

use std::time::Duration;

use super::*;
use crate::descriptors::{InterfaceClass, find_interface};
use crate::fakes::{FakeDevice, FakeKeyboard};
use crate::usb::UsbError;

fn open(fake: &mut FakeKeyboard) -> BootKeyboard<&mut FakeKeyboard> {
    let configurations = FakeKeyboard::configurations();
    let interface = find_interface(&configurations, InterfaceClass::HID_BOOT_KEYBOARD).unwrap();
    BootKeyboard::open(fake, interface).unwrap()
}

#[test]
fn the_keyboard_is_switched_to_boot_protocol_and_to_report_only_changes() {
    let mut fake = FakeKeyboard::new();
    let mut keyboard = open(&mut fake);
    keyboard.set_boot_protocol().unwrap();
    keyboard.set_idle(0).unwrap();
    assert!(fake.in_boot_protocol());
    assert_eq!(fake.idle(), Some(0));
}

#[test]
fn a_typed_word_and_enter_read_as_one_line() {
    let mut fake = FakeKeyboard::new();
    fake.type_text("Hello 42\nnext");
    let mut keyboard = open(&mut fake);
    keyboard.set_boot_protocol().unwrap();
    assert_eq!(
        keyboard.read_line(Duration::from_secs(1)).unwrap(),
        "Hello 42"
    );
}

#[test]
fn without_the_boot_protocol_the_reports_are_not_boot_reports() {
    let mut fake = FakeKeyboard::new();
    fake.type_text("a\n");
    let mut keyboard = open(&mut fake);
    let error = keyboard.read_line(Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        error,
        KeyboardError::Usb {
            operation: "reading a report",
            error: UsbError::Overflow
        }
    );
}

#[test]
fn a_line_without_enter_times_out_with_what_was_typed() {
    let mut fake = FakeKeyboard::new();
    fake.type_text("abc");
    let mut keyboard = open(&mut fake);
    keyboard.set_boot_protocol().unwrap();
    let error = keyboard.read_line(Duration::from_millis(20)).unwrap_err();
    let KeyboardError::LineNotFinished { typed, waited_ms } = &error else {
        panic!("expected LineNotFinished, got {error:?}");
    };
    assert_eq!(typed, "abc");
    assert!(*waited_ms >= 20);
    assert!(error.to_string().contains("\"abc\""), "{error}");
}

#[test]
fn a_roll_over_report_changes_nothing() {
    let mut fake = FakeKeyboard::new();
    fake.push_report([0, 0, 0x04, 0, 0, 0, 0, 0]); // a down
    fake.push_report([0, 0, 1, 1, 1, 1, 1, 1]); // too many keys: no information
    fake.push_report([0, 0, 0x04, 0x05, 0, 0, 0, 0]); // b down, a still down
    let mut keyboard = open(&mut fake);
    keyboard.set_boot_protocol().unwrap();
    let usages = |events: Vec<KeyEvent>| -> Vec<(u8, bool)> {
        events.iter().map(|e| (e.usage, e.pressed)).collect()
    };
    assert_eq!(usages(keyboard.read_events(10).unwrap()), [(0x04, true)]);
    assert_eq!(usages(keyboard.read_events(10).unwrap()), []);
    assert_eq!(usages(keyboard.read_events(10).unwrap()), [(0x05, true)]);
    assert_eq!(
        keyboard.read_report(10).unwrap(),
        None,
        "nothing more: timed out"
    );
}

#[test]
fn a_short_report_is_malformed() {
    let configurations = FakeKeyboard::configurations();
    let interface = &configurations[0].interfaces[0];
    struct ShortReports;
    impl crate::Transfers for ShortReports {
        fn claim_interface(&mut self, _: u8) -> Result<(), UsbError> {
            Ok(())
        }
        fn control_in(
            &mut self,
            _: crate::usb::ControlSetup,
            _: u16,
            _: u32,
        ) -> Result<Vec<u8>, UsbError> {
            Err(UsbError::Stall)
        }
        fn control_out(
            &mut self,
            _: crate::usb::ControlSetup,
            _: &[u8],
            _: u32,
        ) -> Result<u32, UsbError> {
            Ok(0)
        }
        fn bulk_in(&mut self, _: u8, _: u32, _: u32) -> Result<Vec<u8>, UsbError> {
            Err(UsbError::Stall)
        }
        fn bulk_out(&mut self, _: u8, _: &[u8], _: u32) -> Result<u32, UsbError> {
            Err(UsbError::Stall)
        }
        fn interrupt_in(&mut self, _: u8, _: u32, _: u32) -> Result<Vec<u8>, UsbError> {
            Ok(vec![0, 0, 4])
        }
        fn clear_halt(&mut self, _: u8) -> Result<(), UsbError> {
            Ok(())
        }
    }
    let mut keyboard = BootKeyboard::open(ShortReports, interface).unwrap();
    assert_eq!(
        keyboard.read_report(10),
        Err(KeyboardError::MalformedReport {
            report: vec![0, 0, 4]
        })
    );
}
