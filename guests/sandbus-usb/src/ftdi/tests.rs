//! The serial port against a fake FT232 that frames its packets as the chip does.

use std::time::Duration;

use super::*;
use crate::descriptors::{InterfaceClass, find_interface};
use crate::fakes::{FakeDevice, FakeFtdi};

fn open(fake: &mut FakeFtdi) -> FtdiSerial<&mut FakeFtdi> {
    let configurations = FakeFtdi::configurations();
    let interface = find_interface(&configurations, InterfaceClass::VENDOR_SPECIFIC).unwrap();
    FtdiSerial::open(fake, interface).unwrap()
}

#[test]
fn configuring_sets_the_divisor_8n1_and_no_flow_control() {
    let mut fake = FakeFtdi::new();
    let actual = open(&mut fake)
        .configure(&LineSettings::console(115_200))
        .unwrap();
    assert_eq!(
        fake.baud(),
        Some(actual),
        "the chip runs at the rate reported"
    );
    assert!(actual.abs_diff(115_200) < 115_200 / 100);
    assert_eq!(
        fake.data_value(),
        Some(8),
        "8 data bits, no parity, 1 stop bit"
    );
    assert_eq!(fake.flow_index(), Some(0), "no handshake");
    let mut fake = FakeFtdi::new();
    open(&mut fake)
        .configure(&LineSettings::console(9600))
        .unwrap();
    assert_eq!(fake.baud(), Some(9600));
}

#[test]
fn a_rate_the_chip_cannot_make_is_refused_before_anything_is_sent() {
    let mut fake = FakeFtdi::new();
    let error = open(&mut fake)
        .configure(&LineSettings::console(5_000_000))
        .unwrap_err();
    assert_eq!(error, FtdiError::UnsupportedBaud { baud: 5_000_000 });
    assert_eq!(fake.baud(), None);
}

#[test]
fn status_bytes_are_stripped_from_every_packet() {
    let text: String = (0..150)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut fake = FakeFtdi::new();
    fake.board_prints(&text);
    let mut serial = open(&mut fake);
    let read = serial.read(100).unwrap();
    assert_eq!(
        String::from_utf8(read).unwrap(),
        text,
        "three packets, no status bytes"
    );
    assert_eq!(
        serial.status(),
        Some(FtdiStatus {
            modem: 0xb1,
            line: 0x60
        })
    );
    assert_eq!(
        serial.read(10).unwrap(),
        b"",
        "nothing more: the read timed out"
    );
}

#[test]
fn an_idle_chip_sends_status_only_packets_which_read_as_nothing() {
    let mut fake = FakeFtdi::new().with_idle_status_packets();
    let mut serial = open(&mut fake);
    assert_eq!(serial.read(10).unwrap(), b"");
    assert!(serial.status().is_some());
}

#[test]
fn read_until_finds_a_prompt_that_arrives_in_pieces_and_keeps_what_follows() {
    let mut fake = FakeFtdi::new().with_bytes_per_read(3);
    fake.board_prints("Welcome to the board\r\nlogin: extra");
    let mut serial = open(&mut fake);
    let banner = serial.read_until("login:", Duration::from_secs(2)).unwrap();
    assert_eq!(banner, "Welcome to the board\r\nlogin:");
    let rest = serial.read_until("extra", Duration::from_secs(2)).unwrap();
    assert_eq!(rest, " extra");
}

#[test]
fn read_until_gives_up_with_what_it_saw_and_keeps_it() {
    let mut fake = FakeFtdi::new();
    fake.board_prints("Password: ");
    let mut serial = open(&mut fake);
    let error = serial
        .read_until("login:", Duration::from_millis(30))
        .unwrap_err();
    let FtdiError::PatternNotSeen {
        pattern,
        waited_ms,
        seen,
    } = &error
    else {
        panic!("expected PatternNotSeen, got {error:?}");
    };
    assert_eq!((pattern.as_str(), seen.as_str()), ("login:", "Password: "));
    assert!(*waited_ms >= 30);
    assert!(error.to_string().contains("Password"), "{error}");
    assert_eq!(
        serial.read(10).unwrap(),
        b"Password: ",
        "still there to read"
    );
}

#[test]
fn a_quiet_console_is_woken_with_empty_lines_until_it_prompts() {
    // A getty-like board whose first prompt was lost: an empty line brings it back.
    let mut fake = FakeFtdi::new().with_board(|line| {
        if line.is_empty() {
            "login: ".to_string()
        } else {
            String::new()
        }
    });
    let mut serial = open(&mut fake);
    let (seen, nudges) = serial
        .read_until_nudging("login:", Duration::from_secs(2), Duration::from_millis(5))
        .unwrap();
    assert_eq!((seen.as_str(), nudges), ("login:", 1));
    assert_eq!(fake.written(), b"\n");
}

#[test]
fn a_console_that_never_prompts_is_given_up_on_after_the_whole_timeout() {
    let mut fake = FakeFtdi::new().with_board(|_| "?\r\n".to_string());
    let mut serial = open(&mut fake);
    let error = serial
        .read_until_nudging(
            "login:",
            Duration::from_millis(40),
            Duration::from_millis(10),
        )
        .unwrap_err();
    let FtdiError::PatternNotSeen {
        waited_ms, seen, ..
    } = error
    else {
        panic!("expected PatternNotSeen, got {error:?}");
    };
    assert!(waited_ms >= 40, "{waited_ms}");
    assert!(
        seen.starts_with("?\r\n?\r\n"),
        "every nudge was answered: {seen:?}"
    );
    assert!(fake.written().len() >= 3, "{:?}", fake.written());
}

#[test]
fn lines_written_reach_the_board_and_its_answers_come_back() {
    let mut fake = FakeFtdi::new().with_board(|line| format!("you said {line}\r\n$ "));
    let mut serial = open(&mut fake);
    serial.write_line("uname").unwrap();
    let answer = serial.read_until("$ ", Duration::from_secs(1)).unwrap();
    assert_eq!(answer, "you said uname\r\n$ ");
    serial.set_line_ending(LineEnding::CrLf);
    serial.write_line("id").unwrap();
    assert!(
        serial
            .read_until("$ ", Duration::from_secs(1))
            .unwrap()
            .contains("you said id")
    );
    assert_eq!(fake.written(), b"uname\nid\r\n");
}

#[test]
fn a_chip_reset_drops_what_the_board_printed_before() {
    let mut fake = FakeFtdi::new();
    fake.board_prints("banner\r\nlogin: ");
    let mut serial = open(&mut fake);
    serial.reset().unwrap();
    assert!(
        serial
            .read_until("login:", Duration::from_millis(20))
            .is_err()
    );
    assert_eq!(fake.resets(), 1);
}

#[test]
fn line_errors_are_remembered_across_reads() {
    let mut fake = FakeFtdi::new();
    fake.set_line_status(0x62);
    fake.board_prints("x");
    let mut serial = open(&mut fake);
    serial.read(10).unwrap();
    assert_eq!(serial.line_errors_seen(), 0x02, "overrun");
    assert!(serial.status().unwrap().has_line_errors());
}
