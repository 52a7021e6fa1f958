//! The simulated backend against its own spec: transfers, claims, detach and reset, as the
//! module docs describe them (`format`: the file format and the descriptors it yields; one
//! module per class model).

mod format;
mod keyboard;
mod mass_storage;
mod serial_console;

use super::*;
use crate::devices::TransferKind::{Bulk, Interrupt};
use crate::devices::{ControlSetup, GET_DEVICE_DESCRIPTOR};

const MS: Duration = Duration::from_millis(1);
const SHORT: Duration = Duration::from_millis(30);
const LONG: Duration = Duration::from_secs(5);

const BOARD: &str = r#"
    [[device]]
    id = "board-1"
    vendor_id = 0x1209
    product_id = 0x0001
    serial = "SB-0001"
    manufacturer = "sandbus"
    product = "Loopback board"
    stall = [0x82, 0x02]
    hang = [0x84]

    [device.loopback]
    out = 0x01
    in = 0x81

    [[device.control]]
    request_type = 0xc0
    request = 0x01
    answer = [1, 2, 3]

    [[device.control]]
    request_type = 0x40
    request = 0x02
    value = 7

    [[device.interrupt]]
    endpoint = 0x83
    answer = [9, 8]
    period = "5ms"

    [[device]]
    id = "bare"
    vendor_id = 0x1209
    product_id = 0x0002
"#;

fn board() -> SimulatedBackend {
    SimulatedBackend::from_toml_str(BOARD).unwrap()
}

fn open_claimed(backend: &SimulatedBackend, id: &str) -> Box<dyn DeviceHandle> {
    let mut handle = backend.open(id).unwrap();
    handle.claim_interface(0).unwrap();
    handle
}

fn setup(request_type: u8, request: u8, value: u16) -> ControlSetup {
    ControlSetup {
        request_type,
        request,
        value,
        index: 0,
    }
}

fn kind<T>(result: Result<T, UsbError>) -> UsbErrorKind {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.kind,
    }
}

fn invalid_file(text: &str) -> String {
    let err = SimulatedBackend::from_toml_str(text).unwrap_err();
    assert_eq!(err.kind, UsbErrorKind::InvalidArgument, "{err}");
    err.message
}

#[test]
fn loopback_echoes_what_was_written() {
    let backend = board();
    let mut handle = open_claimed(&backend, "board-1");
    assert_eq!(handle.write(Bulk, 0x01, b"hello", LONG).unwrap(), 5);
    assert_eq!(handle.write(Bulk, 0x01, b" world", LONG).unwrap(), 6);
    // FIFO, and a read returns at most what was asked for.
    assert_eq!(handle.read(Bulk, 0x81, 3, LONG).unwrap(), b"hel");
    assert_eq!(handle.read(Bulk, 0x81, 64, LONG).unwrap(), b"lo world");
    // Drained: the next read waits for its timeout.
    assert_eq!(
        kind(handle.read(Bulk, 0x81, 64, SHORT)),
        UsbErrorKind::Timeout
    );
}

#[test]
fn loopback_writes_wait_for_room_then_time_out() {
    let backend = board();
    let mut handle = open_claimed(&backend, "board-1");
    let full = vec![0x55; LOOPBACK_CAPACITY];
    assert_eq!(handle.write(Bulk, 0x01, &full, LONG).unwrap(), full.len());
    assert_eq!(
        kind(handle.write(Bulk, 0x01, &[1], SHORT)),
        UsbErrorKind::Timeout
    );
    assert_eq!(handle.read(Bulk, 0x81, 10, LONG).unwrap(), vec![0x55; 10]);
    assert_eq!(handle.write(Bulk, 0x01, &[1], SHORT).unwrap(), 1);
}

#[test]
fn loopback_delay_is_added_to_each_transfer() {
    let backend = SimulatedBackend::from_toml_str(
        r#"
        [[device]]
        id = "slow"
        vendor_id = 1
        product_id = 2
        [device.loopback]
        out = 0x02
        in = 0x82
        delay = "40ms"
        "#,
    )
    .unwrap();
    let mut handle = open_claimed(&backend, "slow");
    let start = Instant::now();
    handle.write(Bulk, 0x02, b"x", LONG).unwrap();
    assert_eq!(handle.read(Bulk, 0x82, 1, LONG).unwrap(), b"x");
    assert!(start.elapsed() >= Duration::from_millis(80));
}

#[test]
fn delays_longer_than_the_timeout_time_out_after_the_timeout() {
    let backend = SimulatedBackend::from_toml_str(
        r#"
        [[device]]
        id = "slow"
        vendor_id = 1
        product_id = 2
        [[device.control]]
        request_type = 0xc1
        request = 9
        answer = [1]
        delay = "10s"
        "#,
    )
    .unwrap();
    let mut handle = backend.open("slow").unwrap();
    let start = Instant::now();
    assert_eq!(
        kind(handle.control_in(setup(0xc1, 9, 0), 1, SHORT)),
        UsbErrorKind::Timeout
    );
    let took = start.elapsed();
    assert!(took >= SHORT && took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn reads_time_out_on_a_hanging_endpoint() {
    let backend = board();
    let mut handle = open_claimed(&backend, "board-1");
    let start = Instant::now();
    assert_eq!(
        kind(handle.read(Bulk, 0x84, 8, SHORT)),
        UsbErrorKind::Timeout
    );
    assert!(start.elapsed() >= SHORT);
    // Hanging endpoints do not care about the transfer type.
    assert_eq!(
        kind(handle.read(Interrupt, 0x84, 8, MS)),
        UsbErrorKind::Timeout
    );
}

#[test]
fn stalled_endpoints_stall_both_ways() {
    let backend = board();
    let mut handle = open_claimed(&backend, "board-1");
    assert_eq!(kind(handle.read(Bulk, 0x82, 8, LONG)), UsbErrorKind::Stall);
    assert_eq!(
        kind(handle.write(Bulk, 0x02, b"x", LONG)),
        UsbErrorKind::Stall
    );
    assert_eq!(
        kind(handle.write(Interrupt, 0x02, b"x", LONG)),
        UsbErrorKind::Stall
    );
}

#[test]
fn clearing_a_halt_needs_a_claim_and_a_known_endpoint() {
    let backend = board();
    let mut handle = backend.open("board-1").unwrap();
    assert_eq!(kind(handle.clear_halt(0x82)), UsbErrorKind::NotClaimed);
    handle.claim_interface(0).unwrap();
    assert_eq!(kind(handle.clear_halt(0x8f)), UsbErrorKind::InvalidArgument);
    handle.clear_halt(0x82).unwrap();
    // A device that always stalls stalls again after the halt is cleared.
    assert_eq!(kind(handle.read(Bulk, 0x82, 8, LONG)), UsbErrorKind::Stall);
}

#[test]
fn interrupt_endpoint_answers_its_report_each_period() {
    let backend = board();
    let mut handle = open_claimed(&backend, "board-1");
    let start = Instant::now();
    assert_eq!(handle.read(Interrupt, 0x83, 64, LONG).unwrap(), [9, 8]);
    assert_eq!(handle.read(Interrupt, 0x83, 1, LONG).unwrap(), [9]);
    assert!(start.elapsed() >= Duration::from_millis(10));
    // A period longer than the timeout is a timeout.
    assert_eq!(
        kind(handle.read(Interrupt, 0x83, 64, Duration::ZERO)),
        UsbErrorKind::Timeout
    );
}

#[test]
fn transfers_on_endpoints_the_device_lacks_are_invalid() {
    let backend = board();
    let mut handle = open_claimed(&backend, "board-1");
    let err = handle.read(Bulk, 0x85, 8, LONG).unwrap_err();
    assert_eq!(err.kind, UsbErrorKind::InvalidArgument);
    assert!(err.message.contains("0x85"), "{err}");
    // Wrong direction, and wrong transfer type.
    assert_eq!(
        kind(handle.read(Bulk, 0x01, 8, LONG)),
        UsbErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(handle.write(Bulk, 0x81, b"x", LONG)),
        UsbErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(handle.read(Bulk, 0x83, 8, LONG)),
        UsbErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(handle.read(Interrupt, 0x81, 8, LONG)),
        UsbErrorKind::InvalidArgument
    );
    let mut bare = open_claimed(&backend, "bare");
    assert_eq!(
        kind(bare.write(Bulk, 0x01, b"x", LONG)),
        UsbErrorKind::InvalidArgument
    );
}

#[test]
fn a_refused_transfer_names_the_call_and_what_the_endpoint_is() {
    let backend = board();
    let mut handle = open_claimed(&backend, "board-1");
    let refusals = [
        (
            handle.read(Bulk, 0x01, 8, LONG).err(),
            "bulk_in needs an IN endpoint",
        ),
        (
            handle.write(Interrupt, 0x83, b"x", LONG).err(),
            "interrupt_out needs an OUT endpoint",
        ),
        (
            handle.read(Bulk, 0x83, 8, LONG).err(),
            "is an interrupt endpoint; bulk_in does not apply",
        ),
        (
            handle.write(Interrupt, 0x01, b"x", LONG).err(),
            "is a bulk endpoint; interrupt_out does not apply",
        ),
    ];
    for (error, needle) in refusals {
        let error = error.map(|e| e.message).unwrap_or_default();
        assert!(error.contains(needle), "{needle:?} not in {error:?}");
    }
}

#[test]
fn transfers_need_the_interface_claimed_except_control() {
    let backend = board();
    let mut handle = backend.open("board-1").unwrap();
    assert_eq!(
        kind(handle.write(Bulk, 0x01, b"x", LONG)),
        UsbErrorKind::NotClaimed
    );
    assert_eq!(
        kind(handle.read(Interrupt, 0x83, 2, LONG)),
        UsbErrorKind::NotClaimed
    );
    assert_eq!(
        handle
            .control_in(GET_DEVICE_DESCRIPTOR, 18, LONG)
            .unwrap()
            .len(),
        18
    );
    assert_eq!(
        kind(handle.claim_interface(1)),
        UsbErrorKind::InvalidArgument
    );
    assert_eq!(kind(handle.release_interface(0)), UsbErrorKind::NotClaimed);
    handle.claim_interface(0).unwrap();
    assert_eq!(handle.write(Bulk, 0x01, b"x", LONG).unwrap(), 1);
    handle.release_interface(0).unwrap();
    assert_eq!(
        kind(handle.read(Bulk, 0x81, 1, LONG)),
        UsbErrorKind::NotClaimed
    );
}

#[test]
fn second_open_is_busy_until_the_first_handle_drops() {
    let backend = board();
    let first = backend.open("board-1").unwrap();
    assert!(backend.is_open("board-1"));
    assert_eq!(kind(backend.open("board-1")), UsbErrorKind::Busy);
    // Other devices are independent.
    drop(backend.open("bare").unwrap());
    drop(first);
    assert!(!backend.is_open("board-1"));
    drop(backend.open("board-1").unwrap());
    assert_eq!(backend.opens("board-1"), 2);
    assert_eq!(kind(backend.open("nope")), UsbErrorKind::NotFound);
}

#[test]
fn scripted_detach_fails_transfers_and_hides_the_device() {
    let backend = SimulatedBackend::from_toml_str(
        r#"
        [[device]]
        id = "flaky"
        vendor_id = 1
        product_id = 2
        detach_after_transfers = 3
        [device.loopback]
        out = 0x01
        in = 0x81
        "#,
    )
    .unwrap();
    let mut handle = open_claimed(&backend, "flaky");
    // Transfers that fail on their arguments never reach the device and do not count.
    assert_eq!(
        kind(handle.read(Bulk, 0x82, 1, LONG)),
        UsbErrorKind::InvalidArgument
    );
    assert_eq!(handle.write(Bulk, 0x01, b"ab", LONG).unwrap(), 2);
    assert_eq!(handle.read(Bulk, 0x81, 1, LONG).unwrap(), b"a");
    assert_eq!(backend.scan().unwrap().len(), 1);
    // The third transfer completes, and the device leaves with it.
    assert_eq!(handle.read(Bulk, 0x81, 1, LONG).unwrap(), b"b");
    assert_eq!(
        kind(handle.write(Bulk, 0x01, b"c", LONG)),
        UsbErrorKind::Disconnected
    );
    assert_eq!(
        kind(handle.control_in(GET_DEVICE_DESCRIPTOR, 18, LONG)),
        UsbErrorKind::Disconnected
    );
    assert_eq!(kind(handle.claim_interface(0)), UsbErrorKind::Disconnected);
    assert_eq!(kind(handle.reset()), UsbErrorKind::Disconnected);
    assert!(backend.scan().unwrap().is_empty());
    assert_eq!(kind(backend.open("flaky")), UsbErrorKind::NotFound);
    assert_eq!(kind(backend.descriptors("flaky")), UsbErrorKind::NotFound);
    assert!(!backend.is_open("flaky"));
}

#[test]
fn timed_detach_counts_from_the_first_open() {
    let backend = SimulatedBackend::from_toml_str(
        r#"
        [[device]]
        id = "flaky"
        vendor_id = 1
        product_id = 2
        detach_after = "60ms"
        hang = [0x81]
        "#,
    )
    .unwrap();
    // Not opened yet: the timer has not started.
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(backend.scan().unwrap().len(), 1);
    let mut handle = open_claimed(&backend, "flaky");
    // A read waiting past the detach is woken by it.
    let start = Instant::now();
    assert_eq!(
        kind(handle.read(Bulk, 0x81, 1, LONG)),
        UsbErrorKind::Disconnected
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(backend.scan().unwrap().is_empty());
    assert_eq!(kind(backend.open("flaky")), UsbErrorKind::NotFound);
}

#[test]
fn detach_wakes_a_waiting_read_and_attach_brings_the_device_back() {
    let backend = Arc::new(board());
    let mut handle = open_claimed(&backend, "board-1");
    let reader = std::thread::spawn(move || {
        let result = handle.read(Bulk, 0x81, 8, LONG);
        (result, handle)
    });
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    backend.detach("board-1").unwrap();
    let (result, mut handle) = reader.join().unwrap();
    assert_eq!(kind(result), UsbErrorKind::Disconnected);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(backend.scan().unwrap().len(), 1);
    assert_eq!(kind(backend.detach("nope")), UsbErrorKind::NotFound);

    backend.attach("board-1").unwrap();
    assert_eq!(backend.scan().unwrap().len(), 2);
    // The old handle stays dead; a new open works although the old one is not dropped.
    assert_eq!(
        kind(handle.write(Bulk, 0x01, b"x", LONG)),
        UsbErrorKind::Disconnected
    );
    let mut fresh = open_claimed(&backend, "board-1");
    assert_eq!(fresh.write(Bulk, 0x01, b"x", LONG).unwrap(), 1);
    drop(handle);
    assert!(
        backend.is_open("board-1"),
        "dropping a stale handle closes nothing"
    );
}

#[test]
fn unknown_control_request_stalls() {
    let backend = board();
    let mut handle = backend.open("board-1").unwrap();
    assert_eq!(
        kind(handle.control_in(setup(0xc0, 0x01, 1), 8, LONG)),
        UsbErrorKind::Stall
    );
    assert_eq!(
        kind(handle.control_out(setup(0x40, 0x02, 8), b"x", LONG)),
        UsbErrorKind::Stall
    );
    // Descriptors that do not exist stall too: string 4, configuration 1, BOS.
    for value in [0x0304, 0x0201, 0x0f00] {
        assert_eq!(
            kind(handle.control_in(setup(0x80, 6, value), 255, LONG)),
            UsbErrorKind::Stall
        );
    }
    let mut bare = backend.open("bare").unwrap();
    assert_eq!(
        kind(bare.control_in(setup(0x80, 6, 0x0301), 255, LONG)),
        UsbErrorKind::Stall
    );
}

#[test]
fn listed_control_requests_are_answered() {
    let backend = board();
    let mut handle = backend.open("board-1").unwrap();
    assert_eq!(
        handle.control_in(setup(0xc0, 0x01, 0), 64, LONG).unwrap(),
        [1, 2, 3]
    );
    assert_eq!(
        handle.control_in(setup(0xc0, 0x01, 0), 2, LONG).unwrap(),
        [1, 2]
    );
    assert_eq!(
        handle
            .control_out(setup(0x40, 0x02, 7), b"abcd", LONG)
            .unwrap(),
        4
    );
    // Directions are checked against the call.
    assert_eq!(
        kind(handle.control_in(setup(0x40, 0x02, 7), 4, LONG)),
        UsbErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(handle.control_out(setup(0xc0, 0x01, 0), b"", LONG)),
        UsbErrorKind::InvalidArgument
    );
}

#[test]
fn reset_clears_state_and_is_counted() {
    let backend = board();
    let mut handle = open_claimed(&backend, "board-1");
    handle.write(Bulk, 0x01, b"left over", LONG).unwrap();
    assert_eq!(backend.resets("board-1"), 0);
    handle.reset().unwrap();
    assert_eq!(backend.resets("board-1"), 1);
    // The claim is gone with the reset ...
    assert_eq!(
        kind(handle.read(Bulk, 0x81, 64, LONG)),
        UsbErrorKind::NotClaimed
    );
    // ... and so is what the loopback held.
    handle.claim_interface(0).unwrap();
    assert_eq!(
        kind(handle.read(Bulk, 0x81, 64, SHORT)),
        UsbErrorKind::Timeout
    );
    handle.reset().unwrap();
    assert_eq!(backend.resets("board-1"), 2);
    assert_eq!(backend.resets("nope"), 0);
}

/// One interface of a configuration descriptor, as a host walking it sees it.
#[derive(Debug, PartialEq, Eq)]
struct ParsedInterface {
    /// Class, subclass, protocol.
    class: (u8, u8, u8),
    /// Class-specific descriptors between the interface and its first endpoint.
    class_descriptors: Vec<u8>,
    /// (address, bmAttributes, wMaxPacketSize, bInterval) of each endpoint.
    endpoints: Vec<(u8, u8, u16, u8)>,
}

/// Reads the configuration descriptor as a host does (header, then `wTotalLength` bytes) and
/// walks it descriptor by descriptor.
fn interfaces(handle: &mut dyn DeviceHandle) -> Vec<ParsedInterface> {
    let header = handle.control_in(setup(0x80, 6, 0x0200), 9, LONG).unwrap();
    let total = u16::from_le_bytes([header[2], header[3]]);
    let config = handle
        .control_in(setup(0x80, 6, 0x0200), total, LONG)
        .unwrap();
    assert_eq!(config.len(), usize::from(total));
    let mut found: Vec<ParsedInterface> = Vec::new();
    let mut at = usize::from(config[0]);
    while at < config.len() {
        let descriptor = &config[at..at + usize::from(config[at])];
        match (descriptor[1], found.last_mut()) {
            (4, _) => found.push(ParsedInterface {
                class: (descriptor[5], descriptor[6], descriptor[7]),
                class_descriptors: Vec::new(),
                endpoints: Vec::new(),
            }),
            (5, Some(interface)) => interface.endpoints.push((
                descriptor[2],
                descriptor[3],
                u16::from_le_bytes([descriptor[4], descriptor[5]]),
                descriptor[6],
            )),
            (_, Some(interface)) => interface.class_descriptors.extend(descriptor),
            (kind, None) => panic!("descriptor type {kind} before any interface"),
        }
        at += descriptor.len();
    }
    found
}

/// String descriptor `index` as text.
fn string(handle: &mut dyn DeviceHandle, index: u8) -> String {
    let bytes = handle
        .control_in(setup(0x80, 6, 0x0300 | u16::from(index)), 255, LONG)
        .unwrap();
    let units: Vec<u16> = bytes[2..]
        .chunks(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}
