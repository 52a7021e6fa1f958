//! What every test script needs besides its device: strict arguments and a report of named,
//! timed steps.

mod args;
mod steps;

pub use args::{ArgError, ScriptArgs};
pub use steps::{StepOutcome, StepRecord, Steps};
