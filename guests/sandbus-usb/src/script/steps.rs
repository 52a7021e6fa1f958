//! A script's report as named, timed steps run in order: once one fails, the rest are
//! recorded as skipped, so the report always lists every step the script has.

use std::time::Instant;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// It did what it checks.
    Passed,
    /// It found the device or the system under test wrong, or could not run.
    Failed,
    /// An earlier step failed, so it did not run.
    Skipped,
}

/// One step of a run, as the `runner` report's `step` record carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// Short name, e.g. `read-marker`.
    pub name: String,
    /// How it ended.
    pub outcome: StepOutcome,
    /// How long it took.
    pub duration_ms: u64,
    /// What a reader should know: the value seen, the mismatch, the error.
    pub detail: Option<String>,
}

/// The steps of a run, in order. Each finished step is logged (through `sandbus:host/log`
/// in a component; to stderr in a native test). [`super::RunReport::from_steps`] makes the
/// report of them.
#[derive(Debug, Default)]
pub struct Steps {
    records: Vec<StepRecord>,
    failed: bool,
}

impl Steps {
    /// No steps yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs step `name` unless an earlier one failed (then records it as skipped and
    /// returns `None`). `body` returns the step's value and a detail for the report, or
    /// what went wrong.
    pub fn run<T>(
        &mut self,
        name: &str,
        body: impl FnOnce() -> Result<(T, String), String>,
    ) -> Option<T> {
        if self.failed {
            self.push(
                name,
                StepOutcome::Skipped,
                0,
                "an earlier step failed".into(),
            );
            return None;
        }
        let started = Instant::now();
        let result = body();
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((value, detail)) => {
                self.push(name, StepOutcome::Passed, duration_ms, detail);
                Some(value)
            }
            Err(detail) => {
                self.failed = true;
                self.push(name, StepOutcome::Failed, duration_ms, detail);
                None
            }
        }
    }

    fn push(&mut self, name: &str, outcome: StepOutcome, duration_ms: u64, detail: String) {
        let record = StepRecord {
            name: name.into(),
            outcome,
            duration_ms,
            detail: Some(detail),
        };
        log_step(&record);
        self.records.push(record);
    }

    /// Whether a step failed.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// How many steps passed.
    pub fn passed(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.outcome == StepOutcome::Passed)
            .count()
    }

    /// The steps so far.
    pub fn records(&self) -> &[StepRecord] {
        &self.records
    }

    /// The steps, for the report.
    pub fn into_records(self) -> Vec<StepRecord> {
        self.records
    }
}

/// Logs a finished step: passed at info, failed at error, skipped at debug.
#[cfg(target_arch = "wasm32")]
fn log_step(record: &StepRecord) {
    use crate::log::{Level, log};
    let level = match record.outcome {
        StepOutcome::Passed => Level::Info,
        StepOutcome::Failed => Level::Error,
        StepOutcome::Skipped => Level::Debug,
    };
    let detail = record.detail.as_deref().unwrap_or("");
    log(level, &format!("{}: {detail}", record.name));
}

/// Natively (unit tests) there is no host to log to: stderr, which the test harness keeps.
#[cfg(not(target_arch = "wasm32"))]
fn log_step(record: &StepRecord) {
    let detail = record.detail.as_deref().unwrap_or("");
    eprintln!("{} {:?}: {detail}", record.name, record.outcome);
}

/// Logs a line at error level (stderr natively).
pub(super) fn log_error(line: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::log::log(crate::log::Level::Error, line);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("error: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_after_a_failure_are_skipped_and_say_why() {
        let mut steps = Steps::new();
        assert_eq!(steps.run("first", || Ok((1, "one".into()))), Some(1));
        assert_eq!(steps.run::<()>("second", || Err("broke".into())), None);
        let mut ran = false;
        assert_eq!(
            steps.run("third", || {
                ran = true;
                Ok(((), String::new()))
            }),
            None
        );
        assert!(!ran, "a step after a failure does not run");
        assert!(steps.failed());
        assert_eq!(steps.passed(), 1);
        let outcomes: Vec<_> = steps
            .records()
            .iter()
            .map(|r| (r.name.as_str(), r.outcome, r.detail.as_deref()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("first", StepOutcome::Passed, Some("one")),
                ("second", StepOutcome::Failed, Some("broke")),
                (
                    "third",
                    StepOutcome::Skipped,
                    Some("an earlier step failed")
                ),
            ]
        );
    }
}
