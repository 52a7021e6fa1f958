//! Sandbox errors: what went wrong loading a component, and what stopped a call.
//!
//! Both carry a `kind` a caller can match (the daemon maps kinds to ack/nak/dead-letter and
//! the CLI to exit codes) and a message a person can act on.

use std::fmt;

use super::Metering;
use crate::imports::log::LogSummary;

/// Why a component was refused. Nothing was loaded or changed when this is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadErrorKind {
    /// The bytes are not WebAssembly at all.
    NotWasm,
    /// A core wasm module, not a component.
    CoreModule,
    /// Larger than the sandbox's component size limit.
    TooLarge,
    /// A component for another role (a script where a listener was expected, or the reverse).
    WrongWorld,
    /// It exports no role's interface, or lacks a function of it.
    MissingExport,
    /// It imports an interface this host does not provide to its role.
    UnknownImport,
    /// It imports or exports a known interface with an incompatible shape (built against
    /// another version of the WIT).
    IncompatibleInterface,
    /// Malformed or not compilable wasm.
    Invalid,
    /// The limits given with it are not acceptable to this sandbox.
    Limits,
    /// The component name is not usable (it names the kv namespace and log lines).
    InvalidName,
    /// Compiling it took longer or needed more memory than the sandbox's compile budget
    /// ([`super::CompileBudget`]); the message names the budget and what was exceeded.
    CompileBudget,
    /// This host failed to compile it for a reason of its own (its compile worker could not
    /// start or answered nonsense), not because of the component; another host, or this one
    /// once repaired, may load it.
    Host,
}

/// A component that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    /// What kind of problem.
    pub kind: LoadErrorKind,
    /// What was wrong and what to do about it.
    pub message: String,
}

impl LoadError {
    pub(crate) fn new(kind: LoadErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Why a call did not produce a result. The host and other guests are unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvokeErrorKind {
    /// The call ran past its deadline and was stopped.
    Timeout,
    /// The guest tried to grow its memory past its cap.
    MemoryLimit,
    /// The guest's wasm stack overflowed (runaway recursion).
    StackOverflow,
    /// The call used up its fuel.
    OutOfFuel,
    /// A Rust guest panicked (the message is the panic message).
    Panic,
    /// The guest trapped (unreachable, out-of-bounds access, ...).
    Trap,
    /// The input (event or arguments) is larger than the payload limit; nothing ran.
    InputTooLarge,
    /// The guest returned a value larger than the payload limit.
    OutputTooLarge,
    /// The component could not be instantiated (pool exhausted, start function failed).
    Instantiate,
    /// A host function failed in a way that had to stop the call.
    Host,
}

impl InvokeErrorKind {
    /// Short kebab-case name, as in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory-limit",
            Self::StackOverflow => "stack-overflow",
            Self::OutOfFuel => "out-of-fuel",
            Self::Panic => "panic",
            Self::Trap => "trap",
            Self::InputTooLarge => "input-too-large",
            Self::OutputTooLarge => "output-too-large",
            Self::Instantiate => "instantiate",
            Self::Host => "host",
        }
    }
}

impl fmt::Display for InvokeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call that failed, with what it used before it failed.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize)]
#[error("{kind}: {message}")]
pub struct InvokeError {
    /// What stopped the call.
    pub kind: InvokeErrorKind,
    /// The reason, for a person (and for the dead-letter record).
    pub message: String,
    /// What the call used.
    pub metering: Metering,
    /// How much it logged.
    pub log: LogSummary,
}

/// The sandbox could not be set up with the given configuration.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the sandbox: {0}")]
pub struct ConfigError(pub String);
