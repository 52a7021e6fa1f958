//! `wasi:logging/logging`: the standard logging interface (wasmCloud's components import
//! it), into the same invocation log as `sandbus:host/log`.
//!
//! Offered under both names a component may use: `wasi:logging/logging@0.1.0-draft` (the
//! proposal's) and the unversioned `wasi:logging/logging` (wasmCloud's tooling strips the
//! version). A line is written as `context: message` (just the message when the context is
//! empty); `critical` is written at `error`, the highest level a sandbus log has.

use wasmtime::component::{HasData, Linker};

use super::log::{LogLevel, LogOrigin, LogState};
use crate::bindings::wasi_logging::wasi::logging::logging::{self as wit, Level};

/// The interface's name without a version, as wasmCloud's tooling writes it.
const UNVERSIONED: &str = "wasi:logging/logging";

impl From<Level> for LogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error | Level::Critical => LogLevel::Error,
        }
    }
}

/// The line a `log` call writes.
fn line(context: &str, message: String) -> String {
    if context.is_empty() {
        message
    } else {
        format!("{context}: {message}")
    }
}

impl wit::Host for LogState {
    fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        self.log
            .write(level.into(), LogOrigin::Log, line(&context, message));
        Ok(())
    }
}

/// `HasData` marker: the host functions see the invocation's [`LogState`].
struct WasiLogging;

impl HasData for WasiLogging {
    type Data<'a> = &'a mut LogState;
}

/// Adds `wasi:logging/logging`, versioned and unversioned, to `linker`; `get` finds the
/// invocation's [`LogState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, WasiLogging>(linker, get)?;
    linker.root().instance(UNVERSIONED)?.func_wrap(
        "log",
        move |mut store, (level, context, message): (Level, String, String)| {
            let state = get(store.data_mut());
            state
                .log
                .write(level.into(), LogOrigin::Log, line(&context, message));
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_context_and_critical_is_an_error() {
        assert_eq!(line("billing", "charged".into()), "billing: charged");
        assert_eq!(line("", "charged".into()), "charged");
        assert_eq!(LogLevel::from(Level::Critical), LogLevel::Error);
        assert_eq!(LogLevel::from(Level::Warn), LogLevel::Warn);
    }
}
