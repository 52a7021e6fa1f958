//! A USB keyboard in HID boot protocol: reports decoded into key events, and the events into
//! typed text.
//!
//! ```ignore
//! let interface = find_interface(&device.configurations, InterfaceClass::HID_BOOT_KEYBOARD)
//!     .ok_or("no boot keyboard interface")?;
//! let mut keyboard = BootKeyboard::open(&mut device.handle, interface)?;
//! keyboard.set_boot_protocol()?;
//! keyboard.set_idle(0)?;
//! let word = keyboard.read_line(Duration::from_secs(15))?;
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
