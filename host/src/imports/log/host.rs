//! `impl log::Host`: a line into the invocation's stream.

use super::{LogOrigin, LogState};
use crate::bindings::log::{Host, Level};

impl Host for LogState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.log.write(level.into(), LogOrigin::Log, message);
        Ok(())
    }
}
