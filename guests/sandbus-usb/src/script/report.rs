//! The whole report of a run: verdict, steps and summary, built from [`Steps`] or from an
//! argument error, and handed to the `runner` export with [`crate::runner_report!`].

use super::args::ArgError;
use super::steps::{StepOutcome, StepRecord, Steps};

/// The overall result, as the `runner` report's `verdict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every step passed.
    Pass,
    /// A step failed.
    Fail,
    /// The script could not do its job (bad arguments).
    Error,
}

/// A run's report, before it becomes the `runner` export's `report`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Pass, fail or error.
    pub verdict: Verdict,
    /// The steps in the order they ran.
    pub steps: Vec<StepRecord>,
    /// One paragraph a human reads first.
    pub summary: String,
}

impl RunReport {
    /// The report of a run that stopped at its arguments: verdict `error`, no steps, the
    /// argument error as the summary (also logged).
    pub fn bad_arguments(error: &ArgError) -> Self {
        let summary = error.to_string();
        super::steps::log_error(&summary);
        Self {
            verdict: Verdict::Error,
            steps: Vec::new(),
            summary,
        }
    }

    /// The report of a run whose steps ran: `pass` with `summary_if_passed` when all
    /// passed, else `fail` with a summary naming the failed step and why.
    pub fn from_steps(steps: Steps, summary_if_passed: impl FnOnce() -> String) -> Self {
        let records = steps.into_records();
        let failed = records.iter().find(|r| r.outcome == StepOutcome::Failed);
        let (verdict, summary) = match failed {
            None => (Verdict::Pass, summary_if_passed()),
            Some(step) => {
                let passed = records
                    .iter()
                    .filter(|r| r.outcome == StepOutcome::Passed)
                    .count();
                let summary = format!(
                    "step `{}` failed ({passed} of {} passed): {}",
                    step.name,
                    records.len(),
                    step.detail.as_deref().unwrap_or("no detail")
                );
                (Verdict::Fail, summary)
            }
        };
        Self {
            verdict,
            steps: records,
            summary,
        }
    }
}

/// Turns a [`RunReport`] into the `runner` export's `report`. Call it in the module where
/// the script ran `wit_bindgen::generate!` for world `script`: it names
/// `exports::sandbus::host::runner::{Report, Step, StepOutcome, Verdict}` from there.
/// The crate documentation has a whole script.
#[macro_export]
macro_rules! runner_report {
    ($report:expr) => {{
        use exports::sandbus::host::runner as __runner;
        let report: $crate::script::RunReport = $report;
        __runner::Report {
            verdict: match report.verdict {
                $crate::script::Verdict::Pass => __runner::Verdict::Pass,
                $crate::script::Verdict::Fail => __runner::Verdict::Fail,
                $crate::script::Verdict::Error => __runner::Verdict::Error,
            },
            steps: report
                .steps
                .into_iter()
                .map(|record| __runner::Step {
                    name: record.name,
                    outcome: match record.outcome {
                        $crate::script::StepOutcome::Passed => __runner::StepOutcome::Passed,
                        $crate::script::StepOutcome::Failed => __runner::StepOutcome::Failed,
                        $crate::script::StepOutcome::Skipped => __runner::StepOutcome::Skipped,
                    },
                    duration_ms: record.duration_ms,
                    detail: record.detail,
                })
                .collect(),
            summary: report.summary,
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_makes_the_verdict_fail_and_the_summary_names_it() {
        let mut steps = Steps::new();
        steps.run("open", || Ok(((), "opened".into())));
        steps.run::<()>("inquiry", || {
            Err("vendor \"ACME\", expected \"QEMU\"".into())
        });
        steps.run("capacity", || Ok(((), String::new())));
        let report = RunReport::from_steps(steps, || unreachable!("not all passed"));
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(
            report.summary,
            "step `inquiry` failed (1 of 3 passed): vendor \"ACME\", expected \"QEMU\""
        );
        assert_eq!(report.steps.len(), 3);
    }

    #[test]
    fn all_steps_passing_is_a_pass_with_the_scripts_summary() {
        let mut steps = Steps::new();
        steps.run("open", || Ok(((), "opened".into())));
        let report = RunReport::from_steps(steps, || "all good".into());
        assert_eq!(
            (report.verdict, report.summary.as_str()),
            (Verdict::Pass, "all good")
        );
    }

    #[test]
    fn bad_arguments_end_the_run_with_error_and_no_steps() {
        let error = ArgError::Missing {
            name: "vendor",
            expected: "text",
        };
        let report = RunReport::bad_arguments(&error);
        assert_eq!(report.verdict, Verdict::Error);
        assert!(report.steps.is_empty());
        assert_eq!(report.summary, error.to_string());
    }
}
