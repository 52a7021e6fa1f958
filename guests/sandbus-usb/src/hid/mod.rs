//! A USB keyboard in HID boot protocol: reports decoded into key events, and the events into
//! typed text.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use sandbus_usb::hid::BootKeyboard;
//! use sandbus_usb::{InterfaceClass, LeasedDevice, find_interface};
//!
//! fn typed_word() -> Result<String, Box<dyn std::error::Error>> {
//!     let mut device = LeasedDevice::open()?;
//!     let class = InterfaceClass::HID_BOOT_KEYBOARD;
//!     let interface = find_interface(&device.configurations, class).ok_or("no keyboard")?;
//!     let mut keyboard = BootKeyboard::open(&mut device.handle, interface)?;
//!     keyboard.set_boot_protocol()?;
//!     keyboard.set_idle(0)?;
//!     Ok(keyboard.read_line(Duration::from_secs(15))?)
//! }
//! ```

mod error;
mod keyboard;
mod report;
#[cfg(test)]
mod tests;
mod text;

pub use error::KeyboardError;
pub use keyboard::{BOOT_PROTOCOL, BootKeyboard, SET_IDLE, SET_PROTOCOL};
pub use report::{BootReport, ERROR_ROLL_OVER, KeyEvent, LEFT_CONTROL, Modifiers, key_events};
pub use text::{BACKSPACE, ENTER, KEYPAD_ENTER, SPACE, TypedLine, character};
