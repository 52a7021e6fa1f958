//! The simulated boot keyboard from the host's side: HID class requests and boot reports
//! through the `DeviceHandle` trait.

use super::*;

const INTERRUPT_IN: u8 = 0x81;
const SET_IDLE: u8 = 0x0a;
const SET_PROTOCOL: u8 = 0x0b;

fn keyboard(table: &str) -> SimulatedBackend {
    SimulatedBackend::from_toml_str(&format!(
        "[[device]]\nid = \"keypad\"\n[device.keyboard]\n{table}\n"
    ))
    .unwrap()
}

/// A HID class request to interface 0.
fn hid_out(handle: &mut dyn DeviceHandle, request: u8, value: u16, data: &[u8]) {
    handle
        .control_out(setup(0x21, request, value), data, LONG)
        .unwrap();
}

/// Turns boot reports back into text, as a host's keyboard driver would: a key counts when
/// it goes down.
fn typed(reports: &[Vec<u8>]) -> String {
    let mut text = String::new();
    let mut down: Vec<u8> = Vec::new();
    for report in reports {
        assert_eq!(report.len(), 8);
        let shift = report[0] & 0x22 != 0;
        for &usage in report[2..].iter().filter(|&&u| u != 0) {
            if down.contains(&usage) {
                continue;
            }
            let c = match usage {
                0x04..=0x1d => char::from(b'a' + usage - 0x04),
                0x1e..=0x26 => char::from(b'1' + usage - 0x1e),
                0x27 => '0',
                0x28 => '\n',
                0x2c => ' ',
                other => panic!("unexpected usage {other:#x}"),
            };
            text.push(if shift { c.to_ascii_uppercase() } else { c });
        }
        down = report[2..].to_vec();
    }
    text
}

/// Reads reports until a read times out.
fn read_all(handle: &mut dyn DeviceHandle) -> Vec<Vec<u8>> {
    let mut reports = Vec::new();
    loop {
        match handle.read(Interrupt, INTERRUPT_IN, 8, Duration::from_millis(100)) {
            Ok(report) => reports.push(report),
            Err(e) if e.kind == UsbErrorKind::Timeout => return reports,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_keyboard_looks_like_qemus_usb_kbd() {
    let backend = keyboard("text = \"a\"");
    let info = &backend.scan().unwrap()[0];
    assert_eq!(info.vid_pid(), "0627:0001");
    assert_eq!(info.product.as_deref(), Some("QEMU USB Keyboard"));
    let mut handle = backend.open("keypad").unwrap();
    let hid = [9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0];
    assert_eq!(
        interfaces(handle.as_mut()),
        [ParsedInterface {
            class: (0x03, 0x01, 0x01),
            class_descriptors: hid.to_vec(),
            endpoints: vec![(INTERRUPT_IN, 3, 8, 10)],
        }]
    );
    // GET_DESCRIPTOR to the interface: the HID descriptor and the report descriptor.
    assert_eq!(
        handle.control_in(setup(0x81, 6, 0x2100), 9, LONG).unwrap(),
        hid
    );
    let report = handle
        .control_in(setup(0x81, 6, 0x2200), 255, LONG)
        .unwrap();
    assert_eq!(report.len(), 63);
    assert_eq!(
        &report[..4],
        &[0x05, 0x01, 0x09, 0x06],
        "generic desktop, keyboard"
    );
}

#[test]
fn the_keyboard_types_its_text_once_claimed_and_set_up() {
    let backend = keyboard("text = \"Hi 42\\n\"");
    let mut handle = open_claimed(&backend, "keypad");
    // Claimed but not set up: no key yet, a read times out like a NAKed poll.
    assert_eq!(
        kind(handle.read(Interrupt, INTERRUPT_IN, 8, SHORT)),
        UsbErrorKind::Timeout
    );
    hid_out(handle.as_mut(), SET_IDLE, 0, &[]);
    hid_out(handle.as_mut(), SET_PROTOCOL, 0, &[]);
    let start = Instant::now();
    let reports = read_all(handle.as_mut());
    // One press and one release per character, one per 10 ms poll.
    assert_eq!(reports.len(), 12);
    assert!(start.elapsed() >= Duration::from_millis(110));
    assert_eq!(
        reports[0],
        [0x02, 0, 0x0b, 0, 0, 0, 0, 0],
        "H: left shift and h"
    );
    assert_eq!(reports[1], [0; 8]);
    assert_eq!(typed(&reports), "Hi 42\n");
    // GET_REPORT and GET_PROTOCOL say where things stand.
    assert_eq!(
        handle
            .control_in(setup(0xa1, 0x01, 0x0100), 8, LONG)
            .unwrap(),
        [0; 8]
    );
    assert_eq!(
        handle.control_in(setup(0xa1, 0x03, 0), 1, LONG).unwrap(),
        [0]
    );
}

#[test]
fn doubled_letters_are_released_between_presses() {
    let backend = keyboard("text = \"aa\"\nstart_after = \"0ms\"");
    let mut handle = open_claimed(&backend, "keypad");
    let reports = read_all(handle.as_mut());
    assert_eq!(reports.len(), 4);
    assert_eq!(typed(&reports), "aa");
}

#[test]
fn start_after_types_without_any_set_up() {
    let backend = keyboard("text = \"ok\"\nstart_after = \"50ms\"");
    let mut handle = open_claimed(&backend, "keypad");
    let start = Instant::now();
    let first = handle.read(Interrupt, INTERRUPT_IN, 8, LONG).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(40));
    let mut reports = vec![first];
    reports.extend(read_all(handle.as_mut()));
    assert_eq!(typed(&reports), "ok");
}

#[test]
fn set_idle_repeats_the_last_report_every_idle_period() {
    let backend = keyboard("text = \"x\"");
    let mut handle = open_claimed(&backend, "keypad");
    // 2 × 4 ms.
    hid_out(handle.as_mut(), SET_IDLE, 0x0200, &[]);
    assert_eq!(
        handle.control_in(setup(0xa1, 0x02, 0), 1, LONG).unwrap(),
        [2]
    );
    let press = handle.read(Interrupt, INTERRUPT_IN, 8, LONG).unwrap();
    let release = handle.read(Interrupt, INTERRUPT_IN, 8, LONG).unwrap();
    assert_eq!(typed(&[press, release.clone()]), "x");
    // No key pending: the released state again, instead of a timeout.
    assert_eq!(
        handle.read(Interrupt, INTERRUPT_IN, 8, LONG).unwrap(),
        release
    );
    // LEDs: SET_REPORT(output) is kept for GET_REPORT(output).
    hid_out(handle.as_mut(), 0x09, 0x0200, &[0x02]);
    assert_eq!(
        handle
            .control_in(setup(0xa1, 0x01, 0x0200), 1, LONG)
            .unwrap(),
        [0x02]
    );
}

#[test]
fn a_reset_types_the_text_again_and_short_reads_overflow() {
    let backend = keyboard("text = \"z\"");
    let mut handle = open_claimed(&backend, "keypad");
    hid_out(handle.as_mut(), SET_PROTOCOL, 0, &[]);
    assert_eq!(typed(&read_all(handle.as_mut())), "z");
    assert_eq!(
        kind(handle.read(Interrupt, INTERRUPT_IN, 4, LONG)),
        UsbErrorKind::Overflow
    );
    handle.reset().unwrap();
    handle.claim_interface(0).unwrap();
    hid_out(handle.as_mut(), SET_PROTOCOL, 0, &[]);
    assert_eq!(typed(&read_all(handle.as_mut())), "z");
    // Bulk transfers do not apply to an interrupt endpoint; unknown requests stall.
    assert_eq!(
        kind(handle.read(Bulk, INTERRUPT_IN, 8, LONG)),
        UsbErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(handle.control_out(setup(0x21, 0x0b, 2), &[], LONG)),
        UsbErrorKind::Stall
    );
}

#[test]
fn text_a_boot_keyboard_cannot_type_is_refused() {
    let message = invalid_file("[[device]]\nid = \"k\"\n[device.keyboard]\ntext = \"hi!\"\n");
    assert!(message.contains("keyboard.text"), "{message}");
    assert!(message.contains("'!'"), "{message}");
    let message = invalid_file(
        "[[device]]\nid = \"k\"\n[device.keyboard]\ntext = \"a\"\nstart_after = \"soon\"\n",
    );
    assert!(message.contains("keyboard.start_after"), "{message}");
}
