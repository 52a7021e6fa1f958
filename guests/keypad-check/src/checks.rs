//! The keypad check's steps, on any device that implements `Transfers`: the leased keyboard
//! in a component, a fake one that types in the tests.

use sandbus_usb::hid::BootKeyboard;
use sandbus_usb::script::{RunReport, Steps};
use sandbus_usb::{InterfaceClass, LeasedDevice, OpenError, Transfers, find_interface};

use crate::args::KeypadArgs;

/// Runs the check: arguments, then the steps on the device `open` returns.
pub fn run<H: Transfers>(
    pairs: &[(String, String)],
    open: impl FnOnce() -> Result<LeasedDevice<H>, OpenError>,
) -> RunReport {
    let args = match KeypadArgs::parse(pairs) {
        Ok(args) => args,
        Err(error) => return RunReport::bad_arguments(&error),
    };
    let mut steps = Steps::new();
    // A step's body only runs when every step before it passed, so `keyboard` is there
    // when a body needs it.
    let mut keyboard = steps.run("find-keyboard", || find_keyboard(open));
    steps.run("set-boot-protocol", || {
        let keyboard = keyboard.as_mut().ok_or("no keyboard")?;
        keyboard.set_boot_protocol().map_err(|e| e.to_string())?;
        keyboard.set_idle(0).map_err(|e| e.to_string())?;
        Ok((
            (),
            "boot protocol, reports on change only; reading keys now".to_string(),
        ))
    });
    let typed = steps.run("read-word", || {
        let keyboard = keyboard.as_mut().ok_or("no keyboard")?;
        let typed = keyboard
            .read_line(args.timeout)
            .map_err(|e| e.to_string())?;
        let detail = format!("typed {typed:?} then Enter");
        Ok((typed, detail))
    });
    steps.run("compare", || {
        let typed = typed.as_deref().ok_or("nothing typed")?;
        if typed != args.expect {
            return Err(format!("typed {typed:?}, expected {:?}", args.expect));
        }
        Ok(((), format!("{typed:?} as expected")))
    });
    RunReport::from_steps(steps, || {
        format!(
            "the keyboard typed {:?} then Enter, as expected",
            args.expect
        )
    })
}

/// Opens the device, finds its boot keyboard interface and claims it.
fn find_keyboard<H: Transfers>(
    open: impl FnOnce() -> Result<LeasedDevice<H>, OpenError>,
) -> Result<(BootKeyboard<H>, String), String> {
    let device = open().map_err(|e| e.to_string())?;
    let interface = find_interface(&device.configurations, InterfaceClass::HID_BOOT_KEYBOARD)
        .ok_or_else(|| {
            format!(
                "{} has no boot keyboard interface (class 03/01/01)",
                device.describe()
            )
        })?
        .clone();
    let detail = format!("interface {} of {}", interface.number, device.describe());
    let keyboard = BootKeyboard::open(device.handle, &interface).map_err(|e| e.to_string())?;
    Ok((keyboard, detail))
}

#[cfg(test)]
mod tests {
    use sandbus_usb::fakes::{FakeBotDisk, FakeKeyboard, args, leased};
    use sandbus_usb::script::{StepOutcome, Verdict};

    use super::*;

    fn check(fake: &mut FakeKeyboard, expect: &str) -> RunReport {
        let pairs = args(&[("expect", expect), ("timeout-ms", "100")]);
        run(&pairs, || Ok(leased(fake)))
    }

    #[test]
    fn the_word_typed_then_enter_passes_every_step() {
        let mut fake = FakeKeyboard::new();
        fake.type_text("sandbus42\n");
        let report = check(&mut fake, "sandbus42");
        assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
        let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["find-keyboard", "set-boot-protocol", "read-word", "compare"]
        );
        assert!(fake.in_boot_protocol());
        assert_eq!(fake.idle(), Some(0));
    }

    #[test]
    fn another_word_fails_the_comparison() {
        let mut fake = FakeKeyboard::new();
        fake.type_text("Sandbus\n");
        let report = check(&mut fake, "sandbus");
        assert_eq!(report.steps[3].outcome, StepOutcome::Failed);
        assert!(
            report
                .summary
                .contains("typed \"Sandbus\", expected \"sandbus\""),
            "{}",
            report.summary
        );
    }

    #[test]
    fn no_enter_in_time_fails_reading_with_what_was_typed() {
        let mut fake = FakeKeyboard::new();
        fake.type_text("sand");
        let report = check(&mut fake, "sandbus");
        assert_eq!(report.steps[2].outcome, StepOutcome::Failed);
        assert!(report.summary.contains("\"sand\""), "{}", report.summary);
    }

    #[test]
    fn a_device_without_a_boot_keyboard_fails_at_the_first_step() {
        let mut disk = FakeBotDisk::new(1);
        let report = run(&args(&[("expect", "a")]), || Ok(leased(&mut disk)));
        assert_eq!(report.steps[0].outcome, StepOutcome::Failed);
        assert!(
            report.summary.contains("no boot keyboard interface"),
            "{}",
            report.summary
        );
    }

    #[test]
    fn bad_arguments_end_the_run_before_the_device_is_touched() {
        let pairs = args(&[("expect", "Hello")]);
        let report = run::<&mut FakeKeyboard>(&pairs, || unreachable!("not opened"));
        assert_eq!(report.verdict, Verdict::Error);
        assert!(report.summary.contains("`expect`"), "{}", report.summary);
    }
}
