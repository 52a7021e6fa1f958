//! Uncaught exceptions of Python and JavaScript guests, read off their stderr, so a failed
//! call is told in the guest language's own words instead of the runtime's abort.
//!
//! Neither toolchain says what went wrong in the trap itself:
//! - componentize-py prints the traceback, then its Rust runtime panics with "Python function
//!   threw an unexpected exception". The exception is the traceback's last line
//!   (`ValueError: tenant missing`); a chained exception prints a further traceback, and the
//!   last one is what was raised.
//! - componentize-js (StarlingMonkey) prints the error's message, then `Stack:` and the
//!   frames, then aborts with an `unreachable` trap. The exception is the line before
//!   `Stack:`.

/// The language whose runtime reported the exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestLanguage {
    /// componentize-py.
    Python,
    /// componentize-js.
    JavaScript,
}

impl std::fmt::Display for GuestLanguage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GuestLanguage::Python => "Python",
            GuestLanguage::JavaScript => "JavaScript",
        })
    }
}

/// An exception a guest did not catch, as its runtime printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestException {
    /// Which runtime printed it.
    pub language: GuestLanguage,
    /// The exception in the language's words (`ValueError: bad tenant`, or a JS error's
    /// message).
    pub message: String,
}

/// Longest exception line kept, in bytes.
const MAX_MESSAGE: usize = 4096;

/// Reads stderr lines one at a time and remembers the last uncaught exception.
#[derive(Debug, Default)]
pub(super) struct ExceptionScan {
    /// Inside a Python traceback: the frames until the exception line.
    in_traceback: bool,
    /// The last non-empty stderr line (a JS error's message comes just before `Stack:`).
    previous: Option<String>,
    found: Option<GuestException>,
}

impl ExceptionScan {
    /// Takes the next stderr line.
    pub(super) fn line(&mut self, line: &str) {
        if line == "Traceback (most recent call last):" {
            self.in_traceback = true;
        } else if self.in_traceback {
            // Frames and source lines are indented; the first line that is not is the
            // exception.
            if !line.is_empty() && !line.starts_with(char::is_whitespace) {
                self.in_traceback = false;
                self.found = Some(GuestException {
                    language: GuestLanguage::Python,
                    message: clip(line),
                });
            }
        } else if line == "Stack:"
            && let Some(message) = self.previous.take()
        {
            self.found = Some(GuestException {
                language: GuestLanguage::JavaScript,
                message,
            });
        }
        if !line.trim().is_empty() {
            self.previous = Some(clip(line));
        }
    }

    /// The last exception seen, if any.
    pub(super) fn found(&self) -> Option<&GuestException> {
        self.found.as_ref()
    }
}

fn clip(line: &str) -> String {
    crate::text::clip(line, MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(stderr: &str) -> Option<GuestException> {
        let mut scan = ExceptionScan::default();
        for line in stderr.lines() {
            scan.line(line);
        }
        scan.found().cloned()
    }

    fn python(message: &str) -> Option<GuestException> {
        Some(GuestException {
            language: GuestLanguage::Python,
            message: message.into(),
        })
    }

    #[test]
    fn a_python_exception_is_the_last_line_of_its_traceback() {
        let stderr = "Traceback (most recent call last):\n  File \"/0/app.py\", line 12, in \
                      handle\n    raise ValueError(data[\"fail\"])\nValueError: tenant \
                      missing in event e3\n\nthread '<unnamed>' (1) panicked at \
                      runtime/src/lib.rs:1280:25:\nPython function threw an unexpected \
                      exception\n";
        assert_eq!(
            scan(stderr),
            python("ValueError: tenant missing in event e3")
        );
    }

    #[test]
    fn of_chained_python_exceptions_the_last_raised_is_named() {
        let stderr = "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\n\
                      KeyError: 'tenant'\n\nDuring handling of the above exception, another \
                      exception occurred:\n\nTraceback (most recent call last):\n  File \
                      \"a.py\", line 3, in f\nRuntimeError: no tenant\n";
        assert_eq!(scan(stderr), python("RuntimeError: no tenant"));
    }

    #[test]
    fn a_javascript_exception_is_the_line_before_its_stack() {
        let stderr = "some earlier output\ntenant missing in event e3\nStack:\n  \
                      handle@listener.js:8:13\n  export_handler@initializer.js:1575:15\n\n\
                      Redirecting call to abort() to mozalloc_abort\n";
        assert_eq!(
            scan(stderr),
            Some(GuestException {
                language: GuestLanguage::JavaScript,
                message: "tenant missing in event e3".into(),
            })
        );
    }

    #[test]
    fn ordinary_stderr_and_a_rust_panic_are_no_exception() {
        assert_eq!(scan("warning: retrying\nStack is fine\n"), None);
        assert_eq!(
            scan("thread 'main' panicked at src/lib.rs:3:5:\nboom\nnote: run with\n"),
            None
        );
        // A traceback cut short by the log cap names nothing.
        assert_eq!(
            scan("Traceback (most recent call last):\n  File \"x\"\n"),
            None
        );
    }
}
