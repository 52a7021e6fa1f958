//! What every test script needs besides its device: strict arguments, named and timed
//! steps, and the report made of them.

mod args;
mod report;
mod steps;

pub use args::{ArgError, ScriptArgs};
pub use report::{RunReport, Verdict};
pub use steps::{StepOutcome, StepRecord, Steps};
