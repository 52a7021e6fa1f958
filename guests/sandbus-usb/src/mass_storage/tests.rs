//! The Bulk-Only Transport and the SCSI disk against a fake disk that plays the device side
//! as the specs say, faults included.

use std::time::Duration;

use super::*;
use crate::descriptors::{InterfaceClass, find_interface};
use crate::fakes::{DISK_BULK_IN, DISK_BULK_OUT, DiskFault, DiskRequest, FakeBotDisk, FakeDevice};

fn open(fake: &mut FakeBotDisk) -> ScsiDisk<&mut FakeBotDisk> {
    let configurations = FakeBotDisk::configurations();
    let interface =
        find_interface(&configurations, InterfaceClass::MASS_STORAGE_BULK_ONLY).unwrap();
    let transport = BulkOnlyTransport::open(fake, interface).unwrap();
    let mut disk = ScsiDisk::new(transport, 0);
    disk.set_retry_interval(Duration::from_millis(1));
    disk
}

/// The requests after the first `skip`, for checking one command's sequence.
fn requests_after(fake: &FakeBotDisk, skip: usize) -> Vec<DiskRequest> {
    fake.requests()[skip..].to_vec()
}

#[test]
fn a_disk_tells_its_identity_capacity_and_blocks() {
    let mut fake = FakeBotDisk::new(2048).with_max_lun(Some(0));
    fake.put(7, b"sandbus-marker");
    let mut disk = open(&mut fake);
    assert_eq!(disk.transport().max_lun().unwrap(), 0);
    let inquiry = disk.inquiry().unwrap();
    assert_eq!(
        (inquiry.vendor.as_str(), inquiry.product.as_str()),
        ("QEMU", "QEMU HARDDISK")
    );
    assert_eq!(
        disk.wait_until_ready(Duration::from_secs(1))
            .unwrap()
            .attempts,
        1
    );
    let capacity = disk.read_capacity().unwrap();
    assert_eq!((capacity.blocks(), capacity.block_size), (2048, 512));
    let block = disk.read(7, 1).unwrap();
    assert_eq!(block.len(), 512);
    assert!(block.starts_with(b"sandbus-marker"));
    assert!(block[14..].iter().all(|b| *b == 0));
    let pattern: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    disk.write(2046, &pattern).unwrap();
    assert_eq!(disk.read(2046, 2).unwrap(), pattern);
    assert_eq!(disk.transport().recoveries(), 0);
    assert_eq!(&fake.block(2047)[..4], &pattern[512..516]);
}

#[test]
fn a_device_that_stalls_get_max_lun_has_one_unit() {
    let mut fake = FakeBotDisk::new(8).with_max_lun(None);
    let mut disk = open(&mut fake);
    assert_eq!(disk.transport().max_lun().unwrap(), 0);
    let mut fake = FakeBotDisk::new(8).with_max_lun(Some(3));
    assert_eq!(open(&mut fake).transport().max_lun().unwrap(), 3);
}

#[test]
fn a_stalled_data_phase_is_cleared_and_the_status_still_read() {
    let mut fake = FakeBotDisk::new(64);
    fake.fail_next(READ_10, DiskFault::StallDataIn);
    let mut disk = open(&mut fake);
    let error = disk.read(5, 1).unwrap_err();
    let MassStorageError::CommandFailed {
        command: "READ(10)",
        sense: Some(sense),
    } = error
    else {
        panic!("expected a failed READ(10) with its sense, got {error:?}");
    };
    assert_eq!((sense.key, sense.asc), (SenseKey::MediumError, 0x11));
    assert_eq!(disk.transport().recoveries(), 0, "no reset recovery needed");
    assert!(disk.read(5, 1).is_ok(), "the next command works");
    assert_eq!(
        fake.requests(),
        [
            DiskRequest::Command(READ_CAPACITY_10),
            DiskRequest::Command(READ_10),
            DiskRequest::ClearHalt(DISK_BULK_IN),
            DiskRequest::Command(REQUEST_SENSE),
            DiskRequest::Command(READ_10),
        ]
    );
}

#[test]
fn a_phase_error_is_followed_by_reset_recovery_and_the_next_command_works() {
    let mut fake = FakeBotDisk::new(64);
    fake.fail_next(INQUIRY, DiskFault::PhaseError);
    let mut disk = open(&mut fake);
    assert_eq!(disk.inquiry(), Err(MassStorageError::PhaseError));
    assert_eq!(disk.transport().recoveries(), 1);
    assert_eq!(disk.inquiry().unwrap().vendor, "QEMU");
    assert_eq!(
        requests_after(&fake, 0),
        [
            DiskRequest::Command(INQUIRY),
            DiskRequest::ClearHalt(DISK_BULK_IN),
            DiskRequest::BulkOnlyReset,
            DiskRequest::ClearHalt(DISK_BULK_IN),
            DiskRequest::ClearHalt(DISK_BULK_OUT),
            DiskRequest::Command(INQUIRY),
        ],
        "the stalled data phase is cleared, the phase error read, then reset recovery"
    );
}

#[test]
fn a_status_with_the_wrong_tag_is_invalid_and_the_device_is_reset() {
    let mut fake = FakeBotDisk::new(64);
    fake.fail_next(TEST_UNIT_READY, DiskFault::WrongTag);
    let mut disk = open(&mut fake);
    let error = disk.test_unit_ready().unwrap_err();
    assert!(
        matches!(&error, MassStorageError::InvalidStatus { detail } if detail.contains("tag")),
        "{error:?}"
    );
    assert!(error.to_string().contains("reset recovery"), "{error}");
    assert_eq!(disk.transport().recoveries(), 1);
    disk.test_unit_ready().unwrap();
    assert_eq!(
        requests_after(&fake, 1),
        [
            DiskRequest::BulkOnlyReset,
            DiskRequest::ClearHalt(DISK_BULK_IN),
            DiskRequest::ClearHalt(DISK_BULK_OUT),
            DiskRequest::Command(TEST_UNIT_READY),
        ]
    );
}

#[test]
fn a_stalled_status_read_is_cleared_and_read_again() {
    let mut fake = FakeBotDisk::new(64);
    fake.fail_next(INQUIRY, DiskFault::StallStatus);
    let mut disk = open(&mut fake);
    assert_eq!(disk.inquiry().unwrap().product, "QEMU HARDDISK");
    assert_eq!(disk.transport().recoveries(), 0);
    assert_eq!(
        fake.requests(),
        [
            DiskRequest::Command(INQUIRY),
            DiskRequest::ClearHalt(DISK_BULK_IN),
        ]
    );
}

#[test]
fn unit_attention_and_becoming_ready_are_waited_out() {
    let mut fake = FakeBotDisk::new(64);
    fake.fail_next(TEST_UNIT_READY, DiskFault::UnitAttention);
    fake.fail_next(TEST_UNIT_READY, DiskFault::BecomingReady);
    fake.fail_next(TEST_UNIT_READY, DiskFault::BecomingReady);
    let mut disk = open(&mut fake);
    let readiness = disk.wait_until_ready(Duration::from_secs(5)).unwrap();
    assert_eq!(readiness.attempts, 4);
    let keys: Vec<SenseKey> = readiness.reported.iter().map(|s| s.key).collect();
    assert_eq!(
        keys,
        [
            SenseKey::UnitAttention,
            SenseKey::NotReady,
            SenseKey::NotReady
        ]
    );
}

#[test]
fn a_unit_that_stays_not_ready_ends_the_wait_with_the_last_sense() {
    let mut fake = FakeBotDisk::new(64);
    for _ in 0..1000 {
        fake.fail_next(TEST_UNIT_READY, DiskFault::BecomingReady);
    }
    let mut disk = open(&mut fake);
    let error = disk
        .wait_until_ready(Duration::from_millis(30))
        .unwrap_err();
    let MassStorageError::NotReady {
        attempts,
        sense: Some(sense),
    } = error
    else {
        panic!("expected NotReady, got {error:?}");
    };
    assert!(attempts >= 2, "retried: {attempts}");
    assert_eq!(
        (sense.key, sense.asc, sense.ascq),
        (SenseKey::NotReady, 0x04, 0x01)
    );
}

#[test]
fn a_unit_failing_for_another_reason_is_not_retried() {
    let mut fake = FakeBotDisk::new(64);
    fake.fail_next(TEST_UNIT_READY, DiskFault::StallDataIn);
    let mut disk = open(&mut fake);
    let error = disk.wait_until_ready(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(
            error,
            MassStorageError::CommandFailed {
                command: "TEST UNIT READY",
                sense: Some(Sense {
                    key: SenseKey::MediumError,
                    ..
                })
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| **r == DiskRequest::Command(TEST_UNIT_READY))
            .count(),
        1
    );
}

#[test]
fn reads_and_writes_past_the_end_are_refused_before_any_command() {
    let mut fake = FakeBotDisk::new(16);
    let mut disk = open(&mut fake);
    assert_eq!(
        disk.read(15, 2),
        Err(MassStorageError::OutOfRange {
            lba: 15,
            count: 2,
            blocks: 16
        })
    );
    assert!(matches!(
        disk.write(16, &[0; 512]),
        Err(MassStorageError::OutOfRange { .. })
    ));
    assert!(matches!(
        disk.write(0, &[0; 100]),
        Err(MassStorageError::BadLength { length: 100, .. })
    ));
    assert_eq!(fake.requests(), [DiskRequest::Command(READ_CAPACITY_10)]);
}

#[test]
fn an_interface_without_bulk_endpoints_is_not_bulk_only() {
    let configurations = crate::fakes::FakeKeyboard::configurations();
    let keyboard = &configurations[0].interfaces[0];
    let mut fake = FakeBotDisk::new(1);
    assert_eq!(
        BulkOnlyTransport::open(&mut fake, keyboard).err(),
        Some(MassStorageError::MissingEndpoint { interface: 0 })
    );
}
