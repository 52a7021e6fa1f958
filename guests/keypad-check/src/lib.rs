//! Keypad check (world `script`): reads a word typed on a USB keyboard in HID boot
//! protocol, with `sandbus-usb`. Steps, in order (a failed one skips the rest):
//!
//! 1. `find-keyboard`: the leased device has a boot keyboard interface (class 03/01/01)
//!    with an interrupt IN endpoint; it is claimed;
//! 2. `set-boot-protocol`: SET_PROTOCOL(boot) and SET_IDLE(0) (reports only on change).
//!    Once this step is logged the script is reading keys: type then;
//! 3. `read-word`: boot reports are read until Enter, for at most `timeout-ms`;
//! 4. `compare`: the text typed equals `expect`.
//!
//! Arguments (`--arg name=value`): `expect` (lowercase letters and digits, required),
//! `timeout-ms` (decimal, default 15000). An unknown or malformed argument ends the run at
//! once with verdict `error`.

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

struct KeypadCheck;

impl Guest for KeypadCheck {
    fn run(args: Vec<(String, String)>) -> Report {
        sandbus_usb::runner_report!(checks::run(&args, LeasedDevice::open))
    }
}

export!(KeypadCheck);
