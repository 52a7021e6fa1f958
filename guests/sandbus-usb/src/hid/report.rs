//! Boot keyboard reports (HID 1.11, appendix B.1) and the key events between two of them.

/// Usage of Left Control, the first of the eight modifier keys (0xe0 to 0xe7, in the order
/// of the modifier byte's bits).
pub const LEFT_CONTROL: u8 = 0xe0;
/// The usage a keyboard reports in every slot when too many keys are down.
pub const ERROR_ROLL_OVER: u8 = 0x01;

/// The modifier byte: bit 0 left control, 1 left shift, 2 left alt, 3 left GUI, 4-7 the
/// same on the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modifiers(pub u8);

impl Modifiers {
    /// Either shift key.
    pub fn shift(self) -> bool {
        self.0 & 0x22 != 0
    }

    /// Either control key.
    pub fn control(self) -> bool {
        self.0 & 0x11 != 0
    }

    /// Either alt key.
    pub fn alt(self) -> bool {
        self.0 & 0x44 != 0
    }

    /// Either GUI (Windows, Command) key.
    pub fn gui(self) -> bool {
        self.0 & 0x88 != 0
    }
}

/// One 8-byte boot keyboard report: modifiers, a reserved byte, up to six key usages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootReport {
    /// Modifier keys down.
    pub modifiers: Modifiers,
    /// Usages of the keys down (Keyboard/Keypad page), 0 for an empty slot.
    pub keys: [u8; 6],
}

impl BootReport {
    /// Reads a report; `None` when shorter than 8 bytes. Extra bytes are ignored.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let mut keys = [0; 6];
        keys.copy_from_slice(&bytes[2..8]);
        Some(Self {
            modifiers: Modifiers(bytes[0]),
            keys,
        })
    }

    /// Whether the keyboard reported too many keys down (every slot ErrorRollOver): the
    /// report says nothing about which keys are down and is skipped.
    pub fn is_roll_over(&self) -> bool {
        self.keys.iter().all(|k| *k == ERROR_ROLL_OVER)
    }

    /// The usages down, modifiers included as 0xe0-0xe7.
    fn down(&self) -> Vec<u8> {
        let modifiers = (0..8)
            .filter(|bit| self.modifiers.0 & (1 << bit) != 0)
            .map(|bit| LEFT_CONTROL + bit);
        modifiers
            .chain(self.keys.iter().copied().filter(|k| *k > 3))
            .collect()
    }
}

/// A key going down or up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEvent {
    /// The key's usage (Keyboard/Keypad page; modifiers are 0xe0-0xe7).
    pub usage: u8,
    /// Down (true) or up.
    pub pressed: bool,
    /// The modifiers down once this report took effect.
    pub modifiers: Modifiers,
}

/// The events that lead from `previous` to `current`: releases first, then presses, each in
/// report order.
pub fn key_events(previous: &BootReport, current: &BootReport) -> Vec<KeyEvent> {
    let before = previous.down();
    let after = current.down();
    let event = |usage: u8, pressed: bool| KeyEvent {
        usage,
        pressed,
        modifiers: current.modifiers,
    };
    let released = before
        .iter()
        .filter(|k| !after.contains(k))
        .map(|k| event(*k, false));
    let pressed = after
        .iter()
        .filter(|k| !before.contains(k))
        .map(|k| event(*k, true));
    released.chain(pressed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(modifiers: u8, keys: &[u8]) -> BootReport {
        let mut bytes = vec![modifiers, 0];
        bytes.extend_from_slice(keys);
        bytes.resize(8, 0);
        BootReport::parse(&bytes).unwrap()
    }

    #[test]
    fn reports_are_modifiers_then_six_key_slots() {
        let parsed = report(0x02, &[0x04, 0x05]);
        assert!(parsed.modifiers.shift());
        assert!(!parsed.modifiers.control());
        assert_eq!(parsed.keys, [0x04, 0x05, 0, 0, 0, 0]);
        assert_eq!(BootReport::parse(&[0; 7]), None);
        assert!(report(0, &[1; 6]).is_roll_over());
    }

    #[test]
    fn events_say_which_keys_went_down_and_up() {
        let idle = BootReport::default();
        let a = report(0, &[0x04]);
        let a_and_b = report(0, &[0x04, 0x05]);
        let b = report(0, &[0x05]);
        let press = |usage| KeyEvent {
            usage,
            pressed: true,
            modifiers: Modifiers(0),
        };
        assert_eq!(key_events(&idle, &a), [press(0x04)]);
        assert_eq!(key_events(&a, &a_and_b), [press(0x05)]);
        assert_eq!(
            key_events(&a_and_b, &b),
            [KeyEvent {
                usage: 0x04,
                pressed: false,
                modifiers: Modifiers(0)
            }]
        );
        assert_eq!(key_events(&b, &b), []);
    }

    #[test]
    fn modifier_keys_are_events_too() {
        let shifted = report(0x20, &[]);
        let events = key_events(&BootReport::default(), &shifted);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].usage, 0xe5, "right shift");
        assert!(events[0].modifiers.shift());
    }
}
