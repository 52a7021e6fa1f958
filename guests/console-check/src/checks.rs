//! The console check's steps, on any device that implements `Transfers`: the leased adapter
//! in a component, a fake one with a scripted board in the tests.

use std::time::Duration;

use sandbus_usb::ftdi::{FtdiSerial, LineSettings};
use sandbus_usb::script::{RunReport, Steps};
use sandbus_usb::{InterfaceClass, LeasedDevice, OpenError, Transfers, find_interface};

use crate::args::ConsoleArgs;

/// FTDI's USB vendor id.
const FTDI_VENDOR: u16 = 0x0403;
/// What the board prints when it wants a user name.
const LOGIN_PROMPT: &str = "login:";
/// What the board prints when it wants a command.
const SHELL_PROMPT: &str = "$ ";
/// How long to wait for the login prompt before sending an empty line to bring it back
/// (and again after each): a prompt printed before the run is usually gone.
const NUDGE_EVERY: Duration = Duration::from_secs(1);

/// Runs the check: arguments, then the steps on the device `open` returns.
pub fn run<H: Transfers>(
    pairs: &[(String, String)],
    open: impl FnOnce() -> Result<LeasedDevice<H>, OpenError>,
) -> RunReport {
    let args = match ConsoleArgs::parse(pairs) {
        Ok(args) => args,
        Err(error) => return RunReport::bad_arguments(&error),
    };
    let mut steps = Steps::new();
    // A step's body only runs when every step before it passed, so `serial` is there when
    // a body needs it.
    let mut serial = steps.run("configure-line", || configure(open, args.baud));
    steps.run("wait-for-login", || {
        let serial = serial.as_mut().ok_or("no serial port")?;
        let (seen, nudges) = serial
            .read_until_nudging(LOGIN_PROMPT, args.timeout, NUDGE_EVERY)
            .map_err(|e| format!("{e} (an empty line sent every {NUDGE_EVERY:?})"))?;
        let mut detail = format!("the board printed {seen:?}");
        if nudges > 0 {
            detail.push_str(&format!(" after {nudges} empty line(s)"));
        }
        Ok(((), detail))
    });
    steps.run("log-in", || {
        let serial = serial.as_mut().ok_or("no serial port")?;
        serial.write_line(&args.user).map_err(|e| e.to_string())?;
        let seen = serial
            .read_until(SHELL_PROMPT, args.timeout)
            .map_err(|e| format!("logged in as {:?}: {e}", args.user))?;
        Ok((
            (),
            format!("logged in as {:?}; the board printed {seen:?}", args.user),
        ))
    });
    let answer = steps.run("run-command", || {
        let serial = serial.as_mut().ok_or("no serial port")?;
        serial
            .write_line(&args.command)
            .map_err(|e| e.to_string())?;
        let seen = serial
            .read_until(SHELL_PROMPT, args.timeout)
            .map_err(|e| format!("ran {:?}: {e}", args.command))?;
        let answer = answer_of(&seen, &args.command);
        let detail = format!("{:?} answered {answer:?}", args.command);
        Ok((answer, detail))
    });
    steps.run("check-answer", || {
        let answer = answer.as_deref().ok_or("no answer")?;
        if !answer.contains(&args.expect) {
            return Err(format!(
                "the answer {answer:?} does not contain {:?}",
                args.expect
            ));
        }
        Ok(((), format!("the answer contains {:?}", args.expect)))
    });
    RunReport::from_steps(steps, || {
        format!(
            "logged in as {:?} and ran {:?}; its answer {:?} contains {:?}",
            args.user,
            args.command,
            answer.unwrap_or_default(),
            args.expect
        )
    })
}

/// Opens the adapter, claims its interface and sets the line.
fn configure<H: Transfers>(
    open: impl FnOnce() -> Result<LeasedDevice<H>, OpenError>,
    baud: u32,
) -> Result<(FtdiSerial<H>, String), String> {
    let device = open().map_err(|e| e.to_string())?;
    if device.info.vendor_id != FTDI_VENDOR {
        return Err(format!(
            "{} is not an FTDI adapter (vendor {FTDI_VENDOR:04x})",
            device.describe()
        ));
    }
    let interface = find_interface(&device.configurations, InterfaceClass::VENDOR_SPECIFIC)
        .ok_or_else(|| format!("{} has no vendor-specific interface", device.describe()))?
        .clone();
    let description = device.describe();
    let mut serial = FtdiSerial::open(device.handle, &interface).map_err(|e| e.to_string())?;
    let actual = serial
        .configure(&LineSettings::console(baud))
        .map_err(|e| e.to_string())?;
    let detail = format!(
        "interface {} of {description}: {actual} baud (asked {baud}), 8N1, no flow control",
        interface.number
    );
    Ok((serial, detail))
}

/// The command's answer in what the board printed up to the next prompt: without the
/// prompt, without a first line that echoes the command, trimmed.
pub fn answer_of(printed: &str, command: &str) -> String {
    let body = printed.strip_suffix(SHELL_PROMPT).unwrap_or(printed);
    let mut lines: Vec<&str> = body.lines().collect();
    let command = command.trim();
    if lines
        .first()
        .is_some_and(|first| !command.is_empty() && first.trim_end().ends_with(command))
    {
        lines.remove(0);
    }
    lines.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests;
