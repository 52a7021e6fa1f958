//! The keypad check's arguments.

use std::time::Duration;

use sandbus_usb::script::{ArgError, ScriptArgs};

/// The word expected and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeypadArgs {
    /// The word the test types (lowercase letters and digits).
    pub expect: String,
    /// How long to wait for Enter.
    pub timeout: Duration,
}

const KNOWN: &[&str] = &["expect", "timeout-ms"];
const WORD: &str = "a word of lowercase letters and digits";

impl KeypadArgs {
    /// Reads the run's arguments; the error names the bad one.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, ArgError> {
        let args = ScriptArgs::new(pairs, KNOWN)?;
        let expect = args.required_text("expect", WORD)?;
        if !expect
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(ArgError::Malformed {
                name: "expect",
                value: expect.to_string(),
                expected: WORD,
            });
        }
        let timeout_ms: u64 = args
            .parsed("timeout-ms", "a decimal number of milliseconds")?
            .unwrap_or(15_000);
        Ok(Self {
            expect: expect.to_string(),
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use sandbus_usb::fakes::args as pairs;

    use super::*;

    #[test]
    fn the_word_is_required_and_the_timeout_defaults_to_15_seconds() {
        let args = KeypadArgs::parse(&pairs(&[("expect", "sandbus42")])).unwrap();
        assert_eq!(args.expect, "sandbus42");
        assert_eq!(args.timeout, Duration::from_secs(15));
        let args = KeypadArgs::parse(&pairs(&[("expect", "a"), ("timeout-ms", "500")])).unwrap();
        assert_eq!(args.timeout, Duration::from_millis(500));
        assert!(matches!(
            KeypadArgs::parse(&pairs(&[])),
            Err(ArgError::Missing { name: "expect", .. })
        ));
    }

    #[test]
    fn words_outside_lowercase_letters_and_digits_are_malformed() {
        for word in ["Hello", "two words", "dash-ed", ""] {
            assert!(
                KeypadArgs::parse(&pairs(&[("expect", word)])).is_err(),
                "{word:?}"
            );
        }
        assert!(KeypadArgs::parse(&pairs(&[("expect", "a"), ("wait", "1")])).is_err());
    }
}
