//! The simulated USB stick from the host's side: Bulk-Only Transport and SCSI through the
//! `DeviceHandle` trait, as a script drives it.

use super::*;

const STICK: &str = r#"
    [[device]]
    id = "stick"
    serial = "STICK-1"

    [device.mass-storage]
    blocks = 64
    vendor = "SANDBUS"
    product = "SIM STICK"
    revision = "1.0"

    [[device.mass-storage.block]]
    lba = 3
    text = "hello from block 3"
"#;

const BULK_IN: u8 = 0x81;
const BULK_OUT: u8 = 0x02;
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 36, 0];
const TEST_UNIT_READY: [u8; 6] = [0; 6];
const REQUEST_SENSE: [u8; 6] = [0x03, 0, 0, 0, 18, 0];
const READ_CAPACITY: [u8; 10] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn stick(extra: &str) -> SimulatedBackend {
    SimulatedBackend::from_toml_str(&STICK.replace("blocks = 64", &format!("blocks = 64\n{extra}")))
        .unwrap()
}

/// READ(10) or WRITE(10) of `count` blocks from `lba`.
fn rw10(opcode: u8, lba: u32, count: u16) -> Vec<u8> {
    let mut cdb = vec![opcode, 0];
    cdb.extend(lba.to_be_bytes());
    cdb.push(0);
    cdb.extend(count.to_be_bytes());
    cdb.push(0);
    cdb
}

fn cbw(tag: u32, length: u32, to_host: bool, cdb: &[u8]) -> Vec<u8> {
    let mut bytes = b"USBC".to_vec();
    bytes.extend(tag.to_le_bytes());
    bytes.extend(length.to_le_bytes());
    bytes.push(if to_host { 0x80 } else { 0 });
    bytes.push(0);
    bytes.push(cdb.len() as u8);
    bytes.extend(cdb);
    bytes.resize(31, 0);
    bytes
}

/// A CSW as (tag, residue, status).
#[derive(Debug, PartialEq, Eq)]
struct Csw {
    tag: u32,
    residue: u32,
    status: u8,
}

/// The host side of bulk-only transport, as a script writes it.
struct Host {
    handle: Box<dyn DeviceHandle>,
    tag: u32,
}

impl Host {
    fn open(backend: &SimulatedBackend) -> Self {
        Self {
            handle: open_claimed(backend, "stick"),
            tag: 0x1000,
        }
    }

    fn send_cbw(&mut self, length: u32, to_host: bool, cdb: &[u8]) -> u32 {
        self.tag += 1;
        let written = self
            .handle
            .write(Bulk, BULK_OUT, &cbw(self.tag, length, to_host, cdb), LONG)
            .unwrap();
        assert_eq!(written, 31);
        self.tag
    }

    fn read_csw(&mut self) -> Csw {
        let bytes = self.handle.read(Bulk, BULK_IN, 13, LONG).unwrap();
        assert_eq!(bytes.len(), 13);
        assert_eq!(&bytes[..4], b"USBS");
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        Csw {
            tag: word(4),
            residue: word(8),
            status: bytes[12],
        }
    }

    /// A command with data to the host: the data read in one go, then the CSW.
    fn command_in(&mut self, cdb: &[u8], length: u32) -> (Vec<u8>, Csw) {
        let tag = self.send_cbw(length, true, cdb);
        let data = self
            .handle
            .read(Bulk, BULK_IN, length as usize, LONG)
            .unwrap();
        let csw = self.read_csw();
        assert_eq!(csw.tag, tag, "the CSW echoes the CBW's tag");
        (data, csw)
    }

    /// A command without data.
    fn command(&mut self, cdb: &[u8]) -> Csw {
        let tag = self.send_cbw(0, false, cdb);
        let csw = self.read_csw();
        assert_eq!(csw.tag, tag);
        csw
    }

    /// REQUEST SENSE: (sense key, ASC, ASCQ).
    fn sense(&mut self) -> (u8, u8, u8) {
        let (data, csw) = self.command_in(&REQUEST_SENSE, 18);
        assert_eq!((csw.status, csw.residue), (0, 0));
        assert_eq!(data[0], 0x70, "fixed-format sense data");
        (data[2], data[12], data[13])
    }

    /// Reset recovery (BOT 5.3.4): Bulk-Only Mass Storage Reset, then clear both halts.
    fn reset_recovery(&mut self) {
        self.handle
            .control_out(setup(0x21, 0xff, 0), &[], LONG)
            .unwrap();
        self.handle.clear_halt(BULK_IN).unwrap();
        self.handle.clear_halt(BULK_OUT).unwrap();
    }

    /// GET_STATUS of an endpoint: whether it is halted.
    fn halted(&mut self, endpoint: u8) -> bool {
        let status = ControlSetup {
            index: u16::from(endpoint),
            ..setup(0x82, 0, 0)
        };
        self.handle.control_in(status, 2, LONG).unwrap()[0] == 1
    }
}

#[test]
fn a_stick_looks_like_qemus_usb_storage_with_the_files_strings() {
    let backend = stick("");
    let info = &backend.scan().unwrap()[0];
    assert_eq!(info.vid_pid(), "46f4:0001");
    assert_eq!(info.product.as_deref(), Some("QEMU USB HARDDRIVE"));
    assert_eq!(info.serial.as_deref(), Some("STICK-1"));
    assert_eq!(info.class, 0);
    let mut host = Host::open(&backend);
    let found = interfaces(host.handle.as_mut());
    let served = host
        .handle
        .control_in(setup(0x80, 6, 0x0200), 255, LONG)
        .unwrap();
    assert_eq!(
        backend.descriptors("stick").unwrap().configurations,
        [served]
    );
    assert_eq!(
        found,
        [ParsedInterface {
            class: (0x08, 0x06, 0x50),
            class_descriptors: Vec::new(),
            endpoints: vec![(BULK_IN, 2, 512, 0), (BULK_OUT, 2, 512, 0)],
        }]
    );
    assert_eq!(string(host.handle.as_mut(), 1), "QEMU");
    assert_eq!(string(host.handle.as_mut(), 3), "STICK-1");
    assert_eq!(
        string(host.handle.as_mut(), 4),
        "High speed config (usb 2.0)"
    );
    // GET MAX LUN: one logical unit.
    assert_eq!(
        host.handle
            .control_in(setup(0xa1, 0xfe, 0), 1, LONG)
            .unwrap(),
        [0]
    );
}

#[test]
fn a_full_round_of_inquiry_capacity_write_and_read() {
    let backend = stick("");
    let mut host = Host::open(&backend);

    let (inquiry, csw) = host.command_in(&INQUIRY, 36);
    assert_eq!((csw.status, csw.residue), (0, 0));
    assert_eq!(inquiry.len(), 36);
    assert_eq!(inquiry[0], 0x00, "direct-access block device");
    assert_eq!(inquiry[1], 0x80, "removable");
    assert_eq!(&inquiry[8..16], b"SANDBUS ");
    assert_eq!(&inquiry[16..32], b"SIM STICK       ");
    assert_eq!(&inquiry[32..36], b"1.0 ");

    assert_eq!(host.command(&TEST_UNIT_READY).status, 0);

    let (capacity, csw) = host.command_in(&READ_CAPACITY, 8);
    assert_eq!(csw.status, 0);
    assert_eq!(
        capacity,
        [0, 0, 0, 63, 0, 0, 2, 0],
        "last LBA 63, 512-byte blocks"
    );

    // The file's initial block: its text, then zeros.
    let (block, csw) = host.command_in(&rw10(0x28, 3, 1), 512);
    assert_eq!((csw.status, csw.residue), (0, 0));
    assert!(block.starts_with(b"hello from block 3"));
    assert!(block[18..].iter().all(|&b| b == 0));

    // WRITE(10) of two blocks, then READ(10) gives them back.
    let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let tag = host.send_cbw(1024, false, &rw10(0x2a, 10, 2));
    assert_eq!(
        host.handle.write(Bulk, BULK_OUT, &data, LONG).unwrap(),
        1024
    );
    let csw = host.read_csw();
    assert_eq!((csw.tag, csw.residue, csw.status), (tag, 0, 0));
    let (read, csw) = host.command_in(&rw10(0x28, 10, 2), 1024);
    assert_eq!(csw.status, 0);
    assert_eq!(read, data);
}

#[test]
fn data_phases_may_be_moved_in_pieces_and_blocks_outlive_the_run() {
    let backend = stick("");
    let mut host = Host::open(&backend);
    let data = vec![0x5a; 1024];
    host.send_cbw(1024, false, &rw10(0x2a, 20, 2));
    for piece in data.chunks(300) {
        assert_eq!(
            host.handle.write(Bulk, BULK_OUT, piece, LONG).unwrap(),
            piece.len()
        );
    }
    assert_eq!(host.read_csw().status, 0);
    drop(host);

    // A new run on the same stick: the blocks are still there, read 256 bytes at a time.
    let mut host = Host::open(&backend);
    host.send_cbw(1024, true, &rw10(0x28, 20, 2));
    let mut read = Vec::new();
    for _ in 0..4 {
        read.extend(host.handle.read(Bulk, BULK_IN, 256, LONG).unwrap());
    }
    assert_eq!(read, data);
    assert_eq!(
        host.read_csw(),
        Csw {
            tag: host.tag,
            residue: 0,
            status: 0
        }
    );
}

#[test]
fn a_read_past_the_capacity_stalls_data_in_then_reports_lba_out_of_range() {
    let backend = stick("");
    let mut host = Host::open(&backend);
    // Blocks 63 and 64 of a 64-block disk: 64 is past the end.
    let tag = host.send_cbw(1024, true, &rw10(0x28, 63, 2));
    assert_eq!(
        kind(host.handle.read(Bulk, BULK_IN, 1024, LONG)),
        UsbErrorKind::Stall
    );
    // The endpoint stays halted until the host clears it.
    assert!(host.halted(BULK_IN));
    assert_eq!(
        kind(host.handle.read(Bulk, BULK_IN, 13, LONG)),
        UsbErrorKind::Stall
    );
    host.handle.clear_halt(BULK_IN).unwrap();
    assert!(!host.halted(BULK_IN));
    let csw = host.read_csw();
    assert_eq!(
        csw,
        Csw {
            tag,
            residue: 1024,
            status: 1
        },
        "command failed, nothing moved"
    );
    // ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    assert_eq!(host.sense(), (0x05, 0x21, 0x00));
    // Sense is reported once.
    assert_eq!(host.sense(), (0, 0, 0));
}

#[test]
fn a_write_past_the_capacity_stalls_data_out_and_clear_feature_clears_it() {
    let backend = stick("");
    let mut host = Host::open(&backend);
    host.send_cbw(512, false, &rw10(0x2a, 64, 1));
    assert_eq!(
        kind(host.handle.write(Bulk, BULK_OUT, &[0; 512], LONG)),
        UsbErrorKind::Stall
    );
    assert!(host.halted(BULK_OUT));
    // CLEAR_FEATURE(ENDPOINT_HALT) as a control request does what clear_halt does.
    let clear = ControlSetup {
        index: u16::from(BULK_OUT),
        ..setup(0x02, 1, 0)
    };
    host.handle.control_out(clear, &[], LONG).unwrap();
    assert!(!host.halted(BULK_OUT));
    let csw = host.read_csw();
    assert_eq!((csw.residue, csw.status), (512, 1));
    assert_eq!(host.sense(), (0x05, 0x21, 0x00));
}

#[test]
fn an_invalid_cbw_stalls_both_endpoints_until_reset_recovery() {
    for bad in [cbw(7, 0, false, &TEST_UNIT_READY)[..30].to_vec(), {
        let mut wrong = cbw(7, 0, false, &TEST_UNIT_READY);
        wrong[0] = b'X';
        wrong
    }] {
        let backend = stick("");
        let mut host = Host::open(&backend);
        // The device takes the bytes, then refuses everything.
        assert_eq!(
            host.handle.write(Bulk, BULK_OUT, &bad, LONG).unwrap(),
            bad.len()
        );
        assert_eq!(
            kind(host.handle.read(Bulk, BULK_IN, 13, LONG)),
            UsbErrorKind::Stall
        );
        // Clearing the halts alone does not help (BOT 6.6.1) ...
        host.handle.clear_halt(BULK_IN).unwrap();
        host.handle.clear_halt(BULK_OUT).unwrap();
        assert!(host.halted(BULK_IN) && host.halted(BULK_OUT));
        assert_eq!(
            kind(
                host.handle
                    .write(Bulk, BULK_OUT, &cbw(8, 0, false, &TEST_UNIT_READY), LONG)
            ),
            UsbErrorKind::Stall
        );
        // ... a reset recovery does, and the next command runs.
        host.reset_recovery();
        assert!(!host.halted(BULK_IN) && !host.halted(BULK_OUT));
        assert_eq!(host.command(&TEST_UNIT_READY).status, 0);
    }
}

#[test]
fn a_unit_attention_fails_the_first_command_and_request_sense_clears_it() {
    let backend = stick("unit_attention = true");
    let mut host = Host::open(&backend);
    // INQUIRY does not report a unit attention ...
    assert_eq!(host.command_in(&INQUIRY, 36).1.status, 0);
    // ... the next command fails with it, and REQUEST SENSE says what it was.
    assert_eq!(host.command(&TEST_UNIT_READY).status, 1);
    assert_eq!(host.sense(), (0x06, 0x29, 0x00));
    assert_eq!(host.command(&TEST_UNIT_READY).status, 0);

    // A port reset raises it again; REQUEST SENSE right away reports and clears it.
    host.handle.reset().unwrap();
    host.handle.claim_interface(0).unwrap();
    assert_eq!(host.sense(), (0x06, 0x29, 0x00));
    assert_eq!(host.command(&TEST_UNIT_READY).status, 0);
}

#[test]
fn a_host_expecting_less_than_the_command_returns_gets_it_cut_with_a_phase_error() {
    let backend = stick("");
    let mut host = Host::open(&backend);
    // Case 7 (Hi < Di): INQUIRY asks for 36 bytes, the CBW for 16.
    let (data, csw) = host.command_in(&INQUIRY, 16);
    assert_eq!(data.len(), 16);
    assert_eq!((csw.residue, csw.status), (0, 2));
    // The host then recovers, and all is well.
    host.reset_recovery();
    // Case 5 (Hi > Di): the data ends short, the residue says by how much.
    let (data, csw) = host.command_in(&REQUEST_SENSE, 64);
    assert_eq!(data.len(), 18);
    assert_eq!((csw.residue, csw.status), (46, 0));
    // Case 2 (Hn < Di): no data phase at all, a phase error.
    let csw = host.command(&INQUIRY);
    assert_eq!((csw.residue, csw.status), (0, 2));
    // A short allocation length is SCSI's business, not a transport error: the command
    // returns that much, and the host expecting as much is case 6.
    let (data, csw) = host.command_in(&[0x03, 0, 0, 0, 8, 0], 8);
    assert_eq!(data.len(), 8);
    assert_eq!((csw.residue, csw.status), (0, 0));
}

#[test]
fn reads_out_of_turn_stall_and_a_short_csw_buffer_overflows() {
    let backend = stick("");
    let mut host = Host::open(&backend);
    // Nothing to read before a command.
    assert_eq!(
        kind(host.handle.read(Bulk, BULK_IN, 13, LONG)),
        UsbErrorKind::Stall
    );
    host.handle.clear_halt(BULK_IN).unwrap();
    host.send_cbw(0, false, &TEST_UNIT_READY);
    // A CBW where the CSW is due stalls bulk OUT.
    assert_eq!(
        kind(
            host.handle
                .write(Bulk, BULK_OUT, &cbw(1, 0, false, &TEST_UNIT_READY), LONG)
        ),
        UsbErrorKind::Stall
    );
    host.handle.clear_halt(BULK_OUT).unwrap();
    // The CSW is 13 bytes: a 12-byte read overflows and loses it.
    assert_eq!(
        kind(host.handle.read(Bulk, BULK_IN, 12, LONG)),
        UsbErrorKind::Overflow
    );
    assert_eq!(host.command(&TEST_UNIT_READY).status, 0);
}

#[test]
fn an_unknown_command_is_an_illegal_request() {
    let backend = stick("");
    let mut host = Host::open(&backend);
    assert_eq!(host.command(&[0xc5, 0, 0, 0, 0, 0]).status, 1);
    assert_eq!(host.sense(), (0x05, 0x20, 0x00));
    // Unknown class requests stall the control pipe only.
    assert_eq!(
        kind(host.handle.control_in(setup(0xa1, 0xfd, 0), 1, LONG)),
        UsbErrorKind::Stall
    );
    assert_eq!(host.command(&TEST_UNIT_READY).status, 0);
}

#[test]
fn bad_disks_are_refused_with_the_field_named() {
    let cases = [
        ("blocks = 0", "mass-storage.blocks"),
        ("blocks = 4194304", "mass-storage.blocks"),
        ("blocks = 8\nblock_size = 1000", "mass-storage.block_size"),
        ("blocks = 8\nvendor = \"NINE CHARS\"", "mass-storage.vendor"),
        (
            "blocks = 8\n[[device.mass-storage.block]]\nlba = 8\ntext = \"x\"",
            "mass-storage.block[0].lba",
        ),
        (
            "blocks = 8\nblock_size = 512\n[[device.mass-storage.block]]\nlba = 1\ntext = \"x\"\n[[device.mass-storage.block]]\nlba = 1\ntext = \"y\"",
            "given twice",
        ),
        ("blocks = 8\nsize = 3", "size"),
    ];
    for (table, needle) in cases {
        let text = format!("[[device]]\nid = \"s\"\n[device.mass-storage]\n{table}\n");
        let message = invalid_file(&text);
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    let long = format!(
        "[[device]]\nid = \"s\"\n[device.mass-storage]\nblocks = 8\n[[device.mass-storage.block]]\nlba = 0\ntext = \"{}\"\n",
        "x".repeat(513)
    );
    assert!(invalid_file(&long).contains("do not fit a block"));
}
