//! The simulated FTDI serial console from the host's side: vendor requests, status bytes and
//! the scripted login through the `DeviceHandle` trait.

use super::*;

const CONSOLE: &str = r##"
    [[device]]
    id = "console"

    [device.serial-console]
    banner = "simbox 1.0\nready"
    prompt = "# "

    [[device.serial-console.command]]
    line = "uname -a"
    answer = "Linux simbox 6.1"

    [[device.serial-console.command]]
    line = "lines"
    answer = "one\ntwo\n"
"##;

const BULK_IN: u8 = 0x81;
const BULK_OUT: u8 = 0x02;

fn console() -> SimulatedBackend {
    SimulatedBackend::from_toml_str(CONSOLE).unwrap()
}

/// A vendor OUT request of the FT232.
fn vendor(
    handle: &mut dyn DeviceHandle,
    request: u8,
    value: u16,
    index: u16,
) -> Result<usize, UsbError> {
    let request = ControlSetup {
        index,
        ..setup(0x40, request, value)
    };
    handle.control_out(request, &[], LONG)
}

/// Opens the adapter and sets it up as ftdi_sio does: reset, 115200 8N1, DTR and RTS up.
fn open_console(backend: &SimulatedBackend) -> Box<dyn DeviceHandle> {
    let mut handle = open_claimed(backend, "console");
    vendor(handle.as_mut(), 0, 0, 0).unwrap();
    // 3 MHz / 26 = 115384 baud.
    vendor(handle.as_mut(), 3, 26, 0).unwrap();
    vendor(handle.as_mut(), 4, 0x0008, 0).unwrap();
    vendor(handle.as_mut(), 1, 0x0303, 0).unwrap();
    handle
}

/// Reads until `until` shows up in the data, checking and stripping the two status bytes of
/// every 64-byte packet; the data read.
fn read_until(handle: &mut dyn DeviceHandle, until: &str) -> String {
    let mut text = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&text).contains(until) {
        assert!(
            start.elapsed() < LONG,
            "no {until:?} in {:?}",
            String::from_utf8_lossy(&text)
        );
        let transfer = handle.read(Bulk, BULK_IN, 512, LONG).unwrap();
        for packet in transfer.chunks(64) {
            assert_eq!(&packet[..2], &[0x01, 0x60], "status bytes of {packet:?}");
            text.extend(&packet[2..]);
        }
    }
    String::from_utf8(text).unwrap()
}

#[test]
fn a_console_looks_like_qemus_usb_serial() {
    let backend = console();
    let info = &backend.scan().unwrap()[0];
    assert_eq!(info.vid_pid(), "0403:6001");
    assert_eq!(info.product.as_deref(), Some("QEMU USB SERIAL"));
    let mut handle = backend.open("console").unwrap();
    let device = handle.control_in(GET_DEVICE_DESCRIPTOR, 18, LONG).unwrap();
    assert_eq!(
        &device[12..14],
        &[0x00, 0x04],
        "bcdDevice 0x0400: an FT232BM"
    );
    assert_eq!(
        interfaces(handle.as_mut()),
        [ParsedInterface {
            class: (0xff, 0xff, 0xff),
            class_descriptors: Vec::new(),
            endpoints: vec![(BULK_IN, 2, 64, 0), (BULK_OUT, 2, 64, 0)],
        }]
    );
}

#[test]
fn the_console_logs_in_and_answers_commands_behind_status_bytes() {
    let backend = console();
    let mut handle = open_console(&backend);
    assert_eq!(
        read_until(handle.as_mut(), "login: "),
        "simbox 1.0\r\nready\r\nlogin: "
    );
    handle.write(Bulk, BULK_OUT, b"root\r", LONG).unwrap();
    assert_eq!(read_until(handle.as_mut(), "# "), "# ");
    // CRLF ends one line, not two.
    handle.write(Bulk, BULK_OUT, b"uname -a\r\n", LONG).unwrap();
    assert_eq!(read_until(handle.as_mut(), "# "), "Linux simbox 6.1\r\n# ");
    // Typed in pieces, with a backspace.
    handle.write(Bulk, BULK_OUT, b"lx", LONG).unwrap();
    handle.write(Bulk, BULK_OUT, b"\x7fines\n", LONG).unwrap();
    assert_eq!(read_until(handle.as_mut(), "# "), "one\r\ntwo\r\n# ");
    handle.write(Bulk, BULK_OUT, b"reboot now\r", LONG).unwrap();
    assert_eq!(
        read_until(handle.as_mut(), "# "),
        "sh: reboot: not found\r\n# "
    );
    // An empty line: the prompt again.
    handle.write(Bulk, BULK_OUT, b"\r", LONG).unwrap();
    assert_eq!(read_until(handle.as_mut(), "# "), "# ");
}

#[test]
fn with_nothing_to_send_a_status_only_packet_comes_after_the_latency_timer() {
    let backend = console();
    let mut handle = open_console(&backend);
    read_until(handle.as_mut(), "login: ");
    let get_latency = setup(0xc0, 10, 0);
    assert_eq!(handle.control_in(get_latency, 1, LONG).unwrap(), [16]);
    vendor(handle.as_mut(), 9, 40, 0).unwrap();
    assert_eq!(handle.control_in(get_latency, 1, LONG).unwrap(), [40]);
    let start = Instant::now();
    assert_eq!(handle.read(Bulk, BULK_IN, 512, LONG).unwrap(), [0x01, 0x60]);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(35), "{waited:?}");
    // A timeout shorter than the latency timer runs out first.
    assert_eq!(
        kind(handle.read(Bulk, BULK_IN, 512, Duration::from_millis(5))),
        UsbErrorKind::Timeout
    );
    // GET_MODEM_STATUS: the same two bytes the packets carry.
    assert_eq!(
        handle.control_in(setup(0xc0, 5, 0), 2, LONG).unwrap(),
        [0x01, 0x60]
    );
}

#[test]
fn long_output_comes_in_64_byte_packets_of_62_data_bytes() {
    let answer = "x".repeat(150);
    let backend = SimulatedBackend::from_toml_str(&format!(
        "[[device]]\nid = \"console\"\n[device.serial-console]\nlogin = \"{answer}\"\n"
    ))
    .unwrap();
    let mut handle = open_console(&backend);
    // 150 bytes: 62 + 62 + 26, each behind its status bytes; the short packet ends it.
    let transfer = handle.read(Bulk, BULK_IN, 512, LONG).unwrap();
    assert_eq!(transfer.len(), 64 + 64 + 28);
    for (packet, data) in transfer.chunks(64).zip([62, 62, 26]) {
        assert_eq!(&packet[..2], &[0x01, 0x60]);
        assert_eq!(packet.len() - 2, data);
    }
    // A 64-byte read takes one packet at a time.
    vendor(handle.as_mut(), 1, 0x0100, 0).unwrap();
    handle.write(Bulk, BULK_OUT, b"\r", LONG).unwrap();
    assert_eq!(handle.read(Bulk, BULK_IN, 64, LONG).unwrap().len(), 64);
    // Fewer than the two status bytes cannot be read.
    assert_eq!(
        kind(handle.read(Bulk, BULK_IN, 1, LONG)),
        UsbErrorKind::Overflow
    );
}

#[test]
fn at_the_wrong_baud_rate_the_console_is_garbled_with_framing_errors() {
    let backend = console();
    let mut handle = open_claimed(&backend, "console");
    // Left at the power-on 9600 baud; raising DTR starts the console.
    vendor(handle.as_mut(), 1, 0x0101, 0).unwrap();
    let transfer = handle.read(Bulk, BULK_IN, 64, LONG).unwrap();
    assert_eq!(transfer[..2], [0x01, 0x60 | 0x08]);
    assert!(!String::from_utf8_lossy(&transfer[2..]).contains("simbox"));
    // What the host sends is noise to the console: no prompt comes back.
    handle.read(Bulk, BULK_IN, 512, LONG).unwrap();
    handle.write(Bulk, BULK_OUT, b"root\r", LONG).unwrap();
    vendor(handle.as_mut(), 9, 1, 0).unwrap();
    assert_eq!(handle.read(Bulk, BULK_IN, 512, LONG).unwrap(), [0x01, 0x60]);
}

#[test]
fn purging_drops_what_waits_and_a_reset_starts_the_console_over() {
    let backend = console();
    let mut handle = open_console(&backend);
    vendor(handle.as_mut(), 9, 1, 0).unwrap();
    // DTR raised: the banner waits in the adapter; purge RX drops it.
    vendor(handle.as_mut(), 0, 1, 0).unwrap();
    assert_eq!(handle.read(Bulk, BULK_IN, 512, LONG).unwrap(), [0x01, 0x60]);
    handle.reset().unwrap();
    handle.claim_interface(0).unwrap();
    // After the reset the adapter is back at 9600 baud: set it up again, then the banner.
    vendor(handle.as_mut(), 3, 26, 0).unwrap();
    assert!(read_until(handle.as_mut(), "login: ").starts_with("simbox"));
}

#[test]
fn bad_requests_stall_and_bad_consoles_are_refused() {
    let backend = console();
    let mut handle = open_console(&backend);
    // Parity 5 and 3 stop bits do not exist; latency 0 is refused; request 0x20 is unknown.
    for (request, value) in [(4, 0x0508), (4, 0x1808), (9, 0), (0x20, 0)] {
        assert_eq!(
            kind(vendor(handle.as_mut(), request, value, 0)),
            UsbErrorKind::Stall,
            "request {request} value {value:#x}"
        );
    }
    for (table, needle) in [
        ("baud = 10", "serial-console.baud"),
        (
            "[[device.serial-console.command]]\nline = \"\"\nanswer = \"x\"",
            "serial-console.command[0].line",
        ),
        ("echo = true", "echo"),
    ] {
        let message = invalid_file(&format!(
            "[[device]]\nid = \"c\"\n[device.serial-console]\n{table}\n"
        ));
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
}
