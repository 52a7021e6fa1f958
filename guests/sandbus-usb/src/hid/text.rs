//! Key presses turned into text: letters, digits, space, shift for capitals (US layout),
//! Backspace, and Enter ending a line.

use super::report::KeyEvent;

/// Usage of Enter (Return).
pub const ENTER: u8 = 0x28;
/// Usage of Backspace.
pub const BACKSPACE: u8 = 0x2a;
/// Usage of Space.
pub const SPACE: u8 = 0x2c;
/// Usage of the keypad's Enter.
pub const KEYPAD_ENTER: u8 = 0x58;

/// The character a key types on a US layout, if it types one: `a`-`z` (0x04-0x1d), `1`-`0`
/// (0x1e-0x27; with shift the symbols above them), space (0x2c), `-` and `=` (0x2d, 0x2e),
/// and the keypad digits (0x59-0x62, as with Num Lock on).
pub fn character(usage: u8, shift: bool) -> Option<char> {
    const SHIFTED_DIGITS: &[u8; 10] = b"!@#$%^&*()";
    const DIGITS: &[u8; 10] = b"1234567890";
    let c = match usage {
        0x04..=0x1d => {
            let letter = b'a' + (usage - 0x04);
            if shift {
                letter.to_ascii_uppercase()
            } else {
                letter
            }
        }
        0x1e..=0x27 => {
            let at = usize::from(usage - 0x1e);
            if shift {
                SHIFTED_DIGITS[at]
            } else {
                DIGITS[at]
            }
        }
        SPACE => b' ',
        0x2d => {
            if shift {
                b'_'
            } else {
                b'-'
            }
        }
        0x2e => {
            if shift {
                b'+'
            } else {
                b'='
            }
        }
        0x59..=0x62 => DIGITS[usize::from(usage - 0x59)],
        _ => return None,
    };
    Some(char::from(c))
}

/// A line being typed: feed it key events, it returns the line when Enter is pressed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypedLine {
    text: String,
}

impl TypedLine {
    /// An empty line.
    pub fn new() -> Self {
        Self::default()
    }

    /// What was typed so far (Enter not yet pressed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Takes one event. Presses of keys that type add their character, Backspace removes
    /// the last one, Enter returns the line (and starts a new one); releases and other keys
    /// change nothing.
    pub fn feed(&mut self, event: &KeyEvent) -> Option<String> {
        if !event.pressed {
            return None;
        }
        match event.usage {
            ENTER | KEYPAD_ENTER => return Some(std::mem::take(&mut self.text)),
            BACKSPACE => {
                self.text.pop();
            }
            usage => {
                if let Some(c) = character(usage, event.modifiers.shift()) {
                    self.text.push(c);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hid::report::Modifiers;

    fn press(usage: u8, modifiers: u8) -> KeyEvent {
        KeyEvent {
            usage,
            pressed: true,
            modifiers: Modifiers(modifiers),
        }
    }

    #[test]
    fn keys_type_letters_digits_and_space_with_shift_for_capitals() {
        assert_eq!(character(0x04, false), Some('a'));
        assert_eq!(character(0x1d, true), Some('Z'));
        assert_eq!(character(0x1e, false), Some('1'));
        assert_eq!(character(0x27, false), Some('0'));
        assert_eq!(character(0x1f, true), Some('@'));
        assert_eq!(character(SPACE, false), Some(' '));
        assert_eq!(character(0x62, false), Some('0'), "keypad 0");
        assert_eq!(character(ENTER, false), None);
        assert_eq!(character(0xe1, false), None, "a modifier types nothing");
    }

    #[test]
    fn enter_ends_the_line_and_backspace_takes_back_a_character() {
        let mut line = TypedLine::new();
        for event in [
            press(0x0b, 0x02),
            press(0x0c, 0),
            press(0x1e, 0),
            press(0x1e, 0),
        ] {
            assert_eq!(line.feed(&event), None);
        }
        assert_eq!(line.text(), "Hi11");
        line.feed(&press(BACKSPACE, 0));
        let released = KeyEvent {
            pressed: false,
            ..press(0x04, 0)
        };
        assert_eq!(line.feed(&released), None, "releases type nothing");
        assert_eq!(line.feed(&press(ENTER, 0)), Some("Hi1".to_string()));
        assert_eq!(line.text(), "", "a new line starts");
        line.feed(&press(0x59, 0));
        assert_eq!(line.feed(&press(KEYPAD_ENTER, 0)), Some("1".to_string()));
    }
}
