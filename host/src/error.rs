//! One error shape for the library: a `Copy` kind to match on, a message for a person, and
//! the error underneath, if there was one.
//!
//! [`Error<K>`] is what the bus ([`crate::bus::BusError`]), the control API
//! ([`crate::api::ApiError`]) and USB ([`crate::devices::UsbError`]) return, and what the
//! validators of subjects, keys and limits return ([`crate::subject::SubjectError`],
//! [`crate::imports::kv::KeyError`]...); a value with one way to be wrong is an
//! [`InvalidInput`]. Each domain brings its own kind enum; the shape is the same everywhere,
//! so callers match on `kind`, show `message`, and walk `source()`.
//!
//! The message is complete on its own: it says what happened and what to do, and when the
//! error was made from another one (the NATS client's, serde's, the OS's, libusb's) it quotes
//! that error too. The other error is also kept, as [`std::error::Error::source`], for
//! programs: they can downcast it rather than parse text. Since the message already says what
//! its source says, printing a whole chain would say it twice; [`Report`] prints an error
//! with only the causes its text does not quote yet.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// A failure of kind `K` (a `Copy` enum of the domain), with a message for a person and the
/// error it was made from, if any.
///
/// Equality compares the kind and the message, never the source. Serialised (the control
/// API's error replies) it is `{"kind": …, "message": …}`; the source stays on this side.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Error<K> {
    /// What kind of failure, for callers to match on.
    pub kind: K,
    /// What happened and what to do about it, for a person. Quotes the source, if any.
    pub message: String,
    /// The error this one was made from; shared, so the error stays `Clone`.
    #[serde(skip)]
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl<K> Error<K> {
    /// An error of `kind` saying `message`, made from no other error.
    pub fn new(kind: K, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, keeping `source` as the error it was made from. The message should
    /// say what it means for the caller, usually by quoting it: [`Report`] leaves a quoted
    /// cause out, an unquoted one is printed after the message.
    #[must_use]
    pub fn caused_by(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }
}

impl<K> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<K: fmt::Debug> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug
            .field("kind", &self.kind)
            .field("message", &self.message);
        if let Some(source) = &self.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl<K: fmt::Debug> StdError for Error<K> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

impl<K: PartialEq> PartialEq for Error<K> {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl<K: Eq> Eq for Error<K> {}

/// Which input an [`InvalidInput`] is about. Each has one way to be wrong, so the input is
/// the kind; inputs with several (subjects, keys, limits) have error kinds of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A run id ([`crate::bus::validate_run_id`]).
    RunId,
    /// An extension point name ([`crate::bus::validate_point`]).
    HookPoint,
    /// An extension point's deadline ([`crate::bus::validate_hook_deadline`]).
    HookDeadline,
    /// The role `sandbus permissions` is asked for ([`crate::bus::permissions::PermissionRole`]).
    PermissionRole,
    /// A host id ([`crate::daemon::config::validate_host_id`]).
    HostId,
    /// A script argument, `NAME=VALUE` ([`crate::dev::parse_arg`]).
    ScriptArg,
    /// A device selector ([`crate::devices::DeviceSelector`]).
    DeviceSelector,
    /// A message header a guest set.
    Header,
    /// A setting of the daemon's config file or flags ([`crate::daemon::ConfigFile::check`]).
    Setting,
}

/// A value given from outside (a flag, a request field, a config entry, a guest's argument)
/// that is not acceptable: which one it is, and what is wrong and what is accepted.
pub type InvalidInput = Error<Input>;

/// An error and the causes its text does not already say, separated by `: ` as `anyhow`'s
/// `{:#}` does; for the last line a person reads (the CLI's `error: …`).
///
/// A cause whose text is already in what is printed (an [`Error`] quotes its source) is left
/// out, and so the chain reads as the message did before the source was kept.
pub struct Report<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !said.contains(&text) {
                said.push_str(": ");
                said.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Kind {
        NotFound,
        Unavailable,
    }

    fn io_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")
    }

    #[test]
    fn the_error_it_was_made_from_is_its_source_and_can_be_downcast() {
        let error =
            Error::new(Kind::Unavailable, "cannot read it: timed out").caused_by(io_error());
        assert_eq!(error.to_string(), "cannot read it: timed out");
        let source = StdError::source(&error).expect("the io error is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the source is the io error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
        // A clone shares it.
        assert!(StdError::source(&error.clone()).is_some());
        assert!(StdError::source(&Error::new(Kind::NotFound, "gone")).is_none());
    }

    #[test]
    fn errors_compare_by_kind_and_message_not_source() {
        let plain = Error::new(Kind::Unavailable, "cannot read it: timed out");
        let caused = plain.clone().caused_by(io_error());
        assert_eq!(plain, caused);
        assert_ne!(
            plain,
            Error::new(Kind::NotFound, "cannot read it: timed out")
        );
        assert_ne!(plain, Error::new(Kind::Unavailable, "cannot read it"));
    }

    #[test]
    fn on_the_wire_an_error_is_its_kind_and_message() {
        let error = Error::new(Kind::NotFound, "no such thing").caused_by(io_error());
        let json = serde_json::to_string(&error).expect("serialises");
        assert_eq!(json, r#"{"kind":"not-found","message":"no such thing"}"#);
        let back: Error<Kind> = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, error);
        assert!(StdError::source(&back).is_none());
    }

    #[test]
    fn a_report_does_not_repeat_a_cause_the_message_quotes() {
        let error =
            Error::new(Kind::Unavailable, "cannot read it: timed out").caused_by(io_error());
        assert_eq!(Report(&error).to_string(), "cannot read it: timed out");
        let unquoted = Error::new(Kind::Unavailable, "cannot read it").caused_by(io_error());
        assert_eq!(Report(&unquoted).to_string(), "cannot read it: timed out");
        // The same as anyhow's `{:#}` for a chain that repeats nothing.
        let wrapped = anyhow::Error::new(unquoted).context("while starting");
        assert_eq!(Report(wrapped.as_ref()).to_string(), format!("{wrapped:#}"));
    }
}
