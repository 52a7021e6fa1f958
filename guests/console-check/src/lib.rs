//! Console check (world `script`): logs in on a board's serial console through an FTDI USB
//! adapter and runs one command, with `sandbus-usb`. Steps, in order (a failed one skips the
//! rest):
//!
//! 1. `configure-line`: the leased device is an FTDI adapter (vendor 0403) with a
//!    vendor-specific interface; it is claimed and set to `baud` 8N1 without flow control,
//!    DTR and RTS raised. The chip is not reset: that would drop what the board printed
//!    before the run;
//! 2. `wait-for-login`: `login:` arrives. While it has not, an empty line is sent every
//!    second, as a person at a quiet console would: a prompt printed before the run is
//!    usually gone (a USB reset of the adapter, at boot or after an earlier run, drops what
//!    it buffered), and a login prompt is printed again on an empty line;
//! 3. `log-in`: `user` is sent as a line, `$ ` arrives;
//! 4. `run-command`: `command` is sent as a line, its answer and `$ ` arrive;
//! 5. `check-answer`: the answer (without an echo of the command) contains `expect`.
//!
//! Lines end with `\n`. Every wait lasts at most `timeout-ms`.
//!
//! Arguments (`--arg name=value`): `user`, `command`, `expect` (required), `baud` (decimal,
//! default 115200), `timeout-ms` (decimal, default 10000). An unknown or malformed argument
//! ends the run at once with verdict `error`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "script",
    with: {
        "sandbus:host/usb@0.1.0": sandbus_usb::usb,
        "sandbus:host/log@0.1.0": sandbus_usb::log,
    },
});

mod args;
mod checks;

use exports::sandbus::host::runner::{Guest, Report};
use sandbus_usb::LeasedDevice;

struct ConsoleCheck;

impl Guest for ConsoleCheck {
    fn run(args: Vec<(String, String)>) -> Report {
        sandbus_usb::runner_report!(checks::run(&args, LeasedDevice::open))
    }
}

export!(ConsoleCheck);
