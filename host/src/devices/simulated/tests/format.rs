//! The device file format and the descriptors it yields: what parses, what is refused
//! (naming the device and the field), and the device, configuration and string descriptors
//! a host reads.

use super::*;

#[test]
fn documented_example_parses() {
    // The example in the module docs is the reference for the format: keep it valid.
    let source = include_str!("../mod.rs");
    let example: String = source
        .lines()
        .skip_while(|l| *l != "//! ```toml")
        .skip(1)
        .take_while(|l| *l != "//! ```")
        .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start_matches(' ')))
        .collect();
    assert!(example.contains("[[device]]"));
    let backend = SimulatedBackend::from_toml_str(&example).unwrap();
    let ids: Vec<String> = backend.scan().unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["board-1", "bare", "stick-1", "console-1", "keypad-1"]);
}

#[test]
fn scan_lists_devices_in_file_order_with_defaults() {
    let devices = board().scan().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].id, "board-1");
    assert_eq!(devices[0].vid_pid(), "1209:0001");
    assert_eq!(devices[0].serial.as_deref(), Some("SB-0001"));
    assert_eq!(devices[0].manufacturer.as_deref(), Some("sandbus"));
    assert_eq!(devices[0].product.as_deref(), Some("Loopback board"));
    assert_eq!(devices[0].location, "sim-1");
    assert_eq!(devices[0].class, 0xff);
    assert_eq!(devices[1].id, "bare");
    assert_eq!(devices[1].location, "sim-2");
    assert_eq!(devices[1].serial, None);
    assert_eq!(board().name(), "simulated");
}

#[test]
fn device_descriptor_answers_get_descriptor() {
    let backend = board();
    let mut handle = backend.open("board-1").unwrap();
    let device = handle.control_in(GET_DEVICE_DESCRIPTOR, 18, LONG).unwrap();
    assert_eq!(
        device,
        [
            18, 1, 0x00, 0x02, 0xff, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1
        ]
    );
    // Truncated to the requested length, as hosts read the first 8 bytes first.
    assert_eq!(
        handle.control_in(GET_DEVICE_DESCRIPTOR, 8, LONG).unwrap(),
        device[..8]
    );
    assert_eq!(backend.descriptors("board-1").unwrap().device, device);

    // Without strings, the indexes are 0; class and version come from the file.
    let other = SimulatedBackend::from_toml_str(
        "[[device]]\nid = \"x\"\nvendor_id = 1\nproduct_id = 2\nclass = 0\ndevice_version = 0x0234\n",
    )
    .unwrap();
    let d = other.descriptors("x").unwrap().device;
    assert_eq!(d[4], 0);
    assert_eq!(&d[12..18], &[0x34, 0x02, 0, 0, 0, 1]);
}

#[test]
fn configuration_descriptor_lists_every_endpoint() {
    let backend = board();
    let config = handle_config(&backend);
    let descriptors = backend.descriptors("board-1").unwrap();
    assert_eq!(descriptors.configurations, vec![config.clone()]);
    // 9 (configuration) + 9 (interface) + 6 endpoints of 7 bytes.
    let total = 9 + 9 + 6 * 7;
    assert_eq!(config.len(), total);
    assert_eq!(&config[..9], &[9, 2, total as u8, 0, 1, 1, 0, 0x80, 50]);
    assert_eq!(&config[9..18], &[9, 4, 0, 0, 6, 0xff, 0, 0, 0]);
    let endpoints: Vec<&[u8]> = config[18..].chunks(7).collect();
    assert_eq!(
        endpoints,
        [
            &[7, 5, 0x01, 2, 64, 0, 0][..],
            &[7, 5, 0x81, 2, 64, 0, 0],
            &[7, 5, 0x83, 3, 64, 0, 5],
            &[7, 5, 0x82, 2, 64, 0, 0],
            &[7, 5, 0x02, 2, 64, 0, 0],
            &[7, 5, 0x84, 2, 64, 0, 0],
        ]
    );
}

fn handle_config(backend: &SimulatedBackend) -> Vec<u8> {
    let mut handle = backend.open("board-1").unwrap();
    // Hosts read the 9-byte header, then wTotalLength bytes.
    let header = handle.control_in(setup(0x80, 6, 0x0200), 9, LONG).unwrap();
    assert_eq!(header.len(), 9);
    let total = u16::from_le_bytes([header[2], header[3]]);
    handle
        .control_in(setup(0x80, 6, 0x0200), total, LONG)
        .unwrap()
}

#[test]
fn string_descriptors_are_utf16_with_language_0409() {
    let backend = SimulatedBackend::from_toml_str(
        "[[device]]\nid = \"x\"\nvendor_id = 1\nproduct_id = 2\nproduct = \"Bürette\"\n",
    )
    .unwrap();
    let mut handle = backend.open("x").unwrap();
    assert_eq!(
        handle
            .control_in(setup(0x80, 6, 0x0300), 255, LONG)
            .unwrap(),
        [4, 3, 0x09, 0x04]
    );
    let mut expected = vec![16, 3];
    for unit in "Bürette".encode_utf16() {
        expected.extend(unit.to_le_bytes());
    }
    let string = ControlSetup {
        index: 0x0409,
        ..setup(0x80, 6, 0x0302)
    };
    assert_eq!(handle.control_in(string, 255, LONG).unwrap(), expected);
    assert_eq!(handle.control_in(string, 2, LONG).unwrap(), [16, 3]);
    // Index 2 is the product; manufacturer (1) and serial (3) are absent.
    let device = handle.control_in(GET_DEVICE_DESCRIPTOR, 18, LONG).unwrap();
    assert_eq!(&device[14..17], &[0, 2, 0]);
}

#[test]
fn bad_file_names_the_device_and_the_field() {
    let unknown =
        invalid_file("[[device]]\nid = \"board-1\"\nvendor_id = 1\nproduct_id = 2\nvendorid = 3\n");
    assert!(unknown.contains("(inline TOML)"), "{unknown}");
    assert!(unknown.contains("board-1"), "{unknown}");
    assert!(unknown.contains("vendorid"), "{unknown}");

    let missing = invalid_file("[[device]]\nid = \"b\"\nvendor_id = 1\n");
    assert!(missing.contains("device `b`"), "{missing}");
    assert!(missing.contains("product_id"), "{missing}");

    let nested = invalid_file(
        "[[device]]\nid = \"b\"\nvendor_id = 1\nproduct_id = 2\n[device.loopback]\nout = 1\nin = 0x81\nspeed = 3\n",
    );
    assert!(nested.contains("speed"), "{nested}");

    let direction = invalid_file(
        "[[device]]\nid = \"b\"\nvendor_id = 1\nproduct_id = 2\n[device.loopback]\nout = 0x81\nin = 0x81\n",
    );
    assert!(direction.contains("loopback.out"), "{direction}");
    assert!(direction.contains("0x81"), "{direction}");

    let duration = invalid_file(
        "[[device]]\nid = \"b\"\nvendor_id = 1\nproduct_id = 2\ndetach_after = \"soon\"\n",
    );
    assert!(duration.contains("detach_after"), "{duration}");
    assert!(duration.contains("soon"), "{duration}");

    let range = invalid_file("[[device]]\nid = \"b\"\nvendor_id = 70000\nproduct_id = 2\n");
    assert!(range.contains("70000"), "{range}");

    // A device without an id is named by its position.
    let anonymous = invalid_file(
        "[[device]]\nid = \"a\"\nvendor_id = 1\nproduct_id = 2\n[[device]]\nvendor_id = 1\n",
    );
    assert!(anonymous.contains("device #2"), "{anonymous}");
    assert!(anonymous.contains("`id`"), "{anonymous}");
}

#[test]
fn inconsistent_devices_are_rejected() {
    let cases = [
        // (file body after the ids, what the message must mention)
        ("id = \"Board\"", "`id`"),
        (
            "id = \"a\"\n[[device]]\nid = \"a\"\nvendor_id = 1\nproduct_id = 2",
            "already",
        ),
        ("id = \"a\"\nstall = [0x81]\nhang = [0x81]", "0x81"),
        ("id = \"a\"\nhang = [0x04]", "hang[0]"),
        ("id = \"a\"\nstall = [0x80]", "stall[0]"),
        (
            "id = \"a\"\ndetach_after_transfers = 0",
            "detach_after_transfers",
        ),
        (
            "id = \"a\"\n[[device.control]]\nrequest_type = 0xc0\nrequest = 1",
            "control[0]",
        ),
        (
            "id = \"a\"\n[[device.control]]\nrequest_type = 0x40\nrequest = 1\nanswer = [1]",
            "control[0].answer",
        ),
        (
            "id = \"a\"\n[[device.control]]\nrequest_type = 0x80\nrequest = 6\nanswer = [1]",
            "GET_DESCRIPTOR",
        ),
        (
            "id = \"a\"\n[[device.interrupt]]\nendpoint = 0x03\nanswer = []",
            "interrupt[0].endpoint",
        ),
    ];
    for (body, needle) in cases {
        let text = format!("[[device]]\nvendor_id = 1\nproduct_id = 2\n{body}\n");
        let message = invalid_file(&text);
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    let top = invalid_file("[[devices]]\nid = \"a\"\n");
    assert!(top.contains("devices"), "{top}");
    let syntax = invalid_file("[[device]\n");
    assert!(syntax.contains("(inline TOML)"), "{syntax}");
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devices.toml");
    std::fs::write(&path, BOARD).unwrap();
    assert_eq!(
        SimulatedBackend::from_file(&path)
            .unwrap()
            .scan()
            .unwrap()
            .len(),
        2
    );

    std::fs::write(&path, "[[device]]\nid = \"x\"\n").unwrap();
    let err = SimulatedBackend::from_file(&path).unwrap_err();
    assert_eq!(err.kind, UsbErrorKind::InvalidArgument);
    assert!(err.message.contains("devices.toml"), "{err}");
    assert!(err.message.contains("device `x`"), "{err}");

    let missing = SimulatedBackend::from_file(dir.path().join("nope.toml")).unwrap_err();
    assert_eq!(missing.kind, UsbErrorKind::InvalidArgument);
    assert!(missing.message.contains("nope.toml"), "{missing}");

    // The daemon's chooser uses the same reader.
    assert_eq!(
        crate::devices::backend(Some(&dir.path().join("nope.toml")), true)
            .err()
            .map(|e| e.kind),
        Some(UsbErrorKind::InvalidArgument)
    );
}

#[test]
fn the_demo_file_offers_a_stick_a_console_and_a_keypad() {
    let demo = include_str!("../../../../../scripts/devices.toml");
    let backend = SimulatedBackend::from_toml_str(demo).unwrap();
    let mut classes = Vec::new();
    for device in backend.scan().unwrap() {
        let mut handle = backend.open(&device.id).unwrap();
        classes.extend(interfaces(handle.as_mut()).iter().map(|i| i.class));
    }
    for class in [(0x08, 0x06, 0x50), (0xff, 0xff, 0xff), (0x03, 0x01, 0x01)] {
        assert!(
            classes.contains(&class),
            "{class:02x?} not in {classes:02x?}"
        );
    }
}

#[test]
fn a_class_model_takes_the_place_of_generic_endpoints() {
    let cases = [
        ("[device.loopback]\nout = 1\nin = 0x81", "`loopback`"),
        ("stall = [0x82]", "`stall`"),
        ("class = 0", "`class`"),
        (
            "[device.keyboard]\ntext = \"a\"",
            "a device plays one class model",
        ),
    ];
    for (extra, needle) in cases {
        // Top-level keys go before the class table, tables after it.
        let text = if extra.starts_with('[') {
            format!("[[device]]\nid = \"x\"\n[device.mass-storage]\nblocks = 8\n{extra}\n")
        } else {
            format!("[[device]]\nid = \"x\"\n{extra}\n[device.mass-storage]\nblocks = 8\n")
        };
        let message = invalid_file(&text);
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    // Without a class model, the ids are required.
    let message = invalid_file("[[device]]\nid = \"x\"\nproduct_id = 1\n");
    assert!(message.contains("vendor_id"), "{message}");
}
