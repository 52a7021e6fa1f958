//! The storage check against a fake Bulk-Only disk.

use sandbus_usb::fakes::{DiskFault, FakeBotDisk, FakeKeyboard, args_with, leased};
use sandbus_usb::mass_storage::{INQUIRY, TEST_UNIT_READY};
use sandbus_usb::script::{StepOutcome, Verdict};
use sandbus_usb::usb::UsbError;

use super::*;

/// The arguments for the fake disk below, with `changes`.
fn args(changes: &[(&str, &str)]) -> Vec<(String, String)> {
    let expected = [
        ("vendor", "QEMU"),
        ("product", "QEMU HARDDISK"),
        ("blocks", "64"),
        ("marker-lba", "3"),
        ("marker", "sandbus-marker"),
    ];
    args_with(&expected, changes)
}

fn disk() -> FakeBotDisk {
    let mut fake = FakeBotDisk::new(64);
    fake.put(3, b"sandbus-marker");
    fake.put(63, b"old content");
    fake
}

fn check(fake: &mut FakeBotDisk, pairs: &[(String, String)]) -> RunReport {
    run(pairs, || Ok(leased(fake)))
}

fn outcomes(report: &RunReport) -> Vec<(&str, StepOutcome)> {
    report
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.outcome))
        .collect()
}

#[test]
fn a_disk_as_expected_passes_every_step_and_keeps_its_scratch_block() {
    let mut fake = disk();
    let report = check(&mut fake, &args(&[]));
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    assert_eq!(
        outcomes(&report),
        [
            ("find-interface", StepOutcome::Passed),
            ("max-lun", StepOutcome::Passed),
            ("inquiry", StepOutcome::Passed),
            ("unit-ready", StepOutcome::Passed),
            ("capacity", StepOutcome::Passed),
            ("read-marker", StepOutcome::Passed),
            ("scratch-write-read", StepOutcome::Passed),
        ]
    );
    assert!(
        report.summary.contains("block 63 written and read back"),
        "{}",
        report.summary
    );
    assert!(
        fake.block(63).starts_with(b"old content"),
        "the scratch block is restored"
    );
}

#[test]
fn the_scratch_block_can_be_chosen() {
    let mut fake = disk();
    let report = check(&mut fake, &args(&[("scratch-lba", "10")]));
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    assert!(
        report.summary.contains("block 10 written"),
        "{}",
        report.summary
    );
    let report = check(&mut disk(), &args(&[("scratch-lba", "64")]));
    assert_eq!(report.verdict, Verdict::Fail);
    assert!(
        report.summary.contains("past the end"),
        "{}",
        report.summary
    );
}

#[test]
fn another_product_fails_the_inquiry_and_skips_the_rest() {
    let mut fake = disk().with_identity("ACME", "Stick", "1.0");
    let report = check(&mut fake, &args(&[]));
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.steps[2].outcome, StepOutcome::Failed);
    assert!(
        report.steps[3..]
            .iter()
            .all(|s| s.outcome == StepOutcome::Skipped)
    );
    assert!(
        report.summary.contains("vendor \"ACME\"")
            && report.summary.contains("expected vendor \"QEMU\""),
        "{}",
        report.summary
    );
}

#[test]
fn a_capacity_other_than_expected_fails() {
    let report = check(&mut disk(), &args(&[("blocks", "2048")]));
    assert_eq!(report.steps[4].outcome, StepOutcome::Failed);
    assert!(
        report
            .summary
            .contains("64 blocks of 512 bytes, expected 2048"),
        "{}",
        report.summary
    );
}

#[test]
fn a_missing_marker_fails_with_what_the_block_holds() {
    let report = check(&mut disk(), &args(&[("marker-lba", "4")]));
    assert_eq!(report.steps[5].outcome, StepOutcome::Failed);
    assert!(
        report.summary.contains("block 4: starts with"),
        "{}",
        report.summary
    );
    let mut fake = disk();
    fake.put(3, b"sandbus-marker!");
    let report = check(&mut fake, &args(&[]));
    assert!(
        report.summary.contains("byte 14 is 0x21"),
        "{}",
        report.summary
    );
}

#[test]
fn a_unit_attention_is_waited_out_and_reported() {
    let mut fake = disk();
    fake.fail_next(TEST_UNIT_READY, DiskFault::UnitAttention);
    let report = check(&mut fake, &args(&[]));
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    let detail = report.steps[3].detail.as_deref().unwrap();
    assert!(
        detail.contains("after 2 TEST UNIT READY") && detail.contains("UNIT ATTENTION"),
        "{detail}"
    );
}

#[test]
fn a_phase_error_fails_its_step_and_says_the_device_was_reset() {
    let mut fake = disk();
    fake.fail_next(INQUIRY, DiskFault::PhaseError);
    let report = check(&mut fake, &args(&[]));
    assert_eq!(report.steps[2].outcome, StepOutcome::Failed);
    assert!(report.summary.contains("phase error"), "{}", report.summary);
}

#[test]
fn a_device_without_mass_storage_fails_at_the_first_step() {
    let mut keyboard = FakeKeyboard::new();
    let report = run(&args(&[]), || Ok(leased(&mut keyboard)));
    assert_eq!(report.steps[0].outcome, StepOutcome::Failed);
    assert!(
        report.summary.contains("0627:0001 at sim-1"),
        "{}",
        report.summary
    );
    let report = run::<&mut FakeBotDisk>(&args(&[]), || {
        Err(OpenError::Usb {
            operation: "opening the device",
            error: UsbError::Busy,
        })
    });
    assert_eq!(report.verdict, Verdict::Fail);
    assert!(
        report.summary.contains("another driver"),
        "{}",
        report.summary
    );
}

#[test]
fn bad_arguments_end_the_run_before_the_device_is_touched() {
    let report = run::<&mut FakeBotDisk>(&args(&[("blocks", "lots")]), || {
        unreachable!("the device is not opened")
    });
    assert_eq!(report.verdict, Verdict::Error);
    assert!(report.steps.is_empty());
    assert!(report.summary.contains("`blocks`"), "{}", report.summary);
}

#[test]
fn the_scratch_pattern_changes_with_the_seed_and_is_never_zeros() {
    let a = scratch_pattern(7, 1, 512);
    let b = scratch_pattern(7, 2, 512);
    assert_ne!(a, b);
    assert!(a.iter().any(|x| *x != 0));
    assert_eq!(a.len(), 512);
}
