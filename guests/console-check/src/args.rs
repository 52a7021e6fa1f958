//! The console check's arguments.

use std::time::Duration;

use sandbus_usb::script::{ArgError, ScriptArgs};

/// Who logs in, what runs, what its answer must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleArgs {
    /// The user name sent at `login:`.
    pub user: String,
    /// The command line sent at `$ `.
    pub command: String,
    /// Text the command's answer must contain.
    pub expect: String,
    /// The line's baud rate.
    pub baud: u32,
    /// How long each wait (for a prompt, for the answer) may last.
    pub timeout: Duration,
}

const KNOWN: &[&str] = &["user", "command", "expect", "baud", "timeout-ms"];

impl ConsoleArgs {
    /// Reads the run's arguments; the error names the bad one.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, ArgError> {
        let args = ScriptArgs::new(pairs, KNOWN)?;
        let baud = args
            .parsed("baud", "a decimal baud rate above 0")?
            .unwrap_or(115_200);
        if baud == 0 {
            return Err(ArgError::Malformed {
                name: "baud",
                value: "0".into(),
                expected: "a decimal baud rate above 0",
            });
        }
        let timeout_ms: u64 = args
            .parsed("timeout-ms", "a decimal number of milliseconds")?
            .unwrap_or(10_000);
        Ok(Self {
            user: args
                .required_text("user", "the user name to log in as")?
                .to_string(),
            command: args
                .required_text("command", "the command line to run")?
                .to_string(),
            expect: args
                .required_text("expect", "text the command's answer contains")?
                .to_string(),
            baud,
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use sandbus_usb::fakes::args as pairs;

    use super::*;

    #[test]
    fn user_command_and_expect_are_required_baud_and_timeout_have_defaults() {
        let given = pairs(&[("user", "root"), ("command", "uname"), ("expect", "Linux")]);
        let args = ConsoleArgs::parse(&given).unwrap();
        assert_eq!(
            (args.baud, args.timeout),
            (115_200, Duration::from_secs(10))
        );
        let mut given = given;
        given.push(("baud".into(), "9600".into()));
        given.push(("timeout-ms".into(), "2500".into()));
        let args = ConsoleArgs::parse(&given).unwrap();
        assert_eq!(
            (args.baud, args.timeout),
            (9600, Duration::from_millis(2500))
        );
        let error =
            ConsoleArgs::parse(&pairs(&[("user", "root"), ("command", "uname")])).unwrap_err();
        assert!(matches!(error, ArgError::Missing { name: "expect", .. }));
    }

    #[test]
    fn malformed_and_unknown_arguments_are_errors() {
        let base = [("user", "root"), ("command", "uname"), ("expect", "Linux")];
        for (name, value) in [
            ("baud", "fast"),
            ("baud", "0"),
            ("timeout-ms", "-5"),
            ("prompt", "#"),
        ] {
            let mut given = pairs(&base);
            given.push((name.into(), value.into()));
            assert!(ConsoleArgs::parse(&given).is_err(), "{name}={value}");
        }
    }
}
