//! What a call returns: the host-side forms of a listener's outcome and a script's report.
//!
//! These mirror the WIT types but are plain serde types, so the CLI prints them, the daemon
//! publishes them, and nothing outside the sandbox depends on generated bindings.

use std::time::Duration;

use crate::bindings::hook::exports::sandbus::host::check::Decision as WitDecision;
use crate::bindings::listener::exports::sandbus::host::handler::Outcome as WitOutcome;
use crate::bindings::script::exports::sandbus::host::runner as wit;

/// What to do with an event after the listener returned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum HandlerOutcome {
    /// Handled: acknowledge it.
    Ok,
    /// Try again later, after `delay` if given, else after the subscription's backoff.
    Retry {
        /// The delay the listener asked for.
        #[serde(with = "opt_millis", rename = "delay_ms")]
        delay: Option<Duration>,
    },
    /// Can't be handled; retried while deliveries remain, then dead-lettered.
    Reject {
        /// Why, from the listener.
        reason: String,
    },
}

impl HandlerOutcome {
    pub(crate) fn size(&self) -> usize {
        match self {
            Self::Reject { reason } => reason.len(),
            _ => 0,
        }
    }
}

impl From<WitOutcome> for HandlerOutcome {
    fn from(o: WitOutcome) -> Self {
        match o {
            WitOutcome::Ok => Self::Ok,
            WitOutcome::Retry(ms) => Self::Retry {
                delay: ms.map(Duration::from_millis),
            },
            WitOutcome::Reject(reason) => Self::Reject { reason },
        }
    }
}

/// What a hook said about a proposed operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum HookDecision {
    /// The operation may go ahead, as far as this hook is concerned.
    Allow,
    /// The operation must not go ahead.
    Deny {
        /// Why, from the hook.
        reason: String,
    },
    /// The hook could not decide (it returned an error); the extension point's policy
    /// decides instead.
    Undecided {
        /// Why, from the hook.
        reason: String,
    },
}

impl HookDecision {
    pub(crate) fn size(&self) -> usize {
        match self {
            Self::Allow => 0,
            Self::Deny { reason } | Self::Undecided { reason } => reason.len(),
        }
    }
}

impl From<Result<WitDecision, String>> for HookDecision {
    fn from(r: Result<WitDecision, String>) -> Self {
        match r {
            Ok(WitDecision::Allow) => Self::Allow,
            Ok(WitDecision::Deny(reason)) => Self::Deny { reason },
            Err(reason) => Self::Undecided { reason },
        }
    }
}

/// The overall result of a script run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// A check failed.
    Fail,
    /// The script could not do its job.
    Error,
}

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    /// It passed.
    Passed,
    /// It failed.
    Failed,
    /// It was skipped.
    Skipped,
}

/// One named step of a run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// Its name.
    pub name: String,
    /// How it ended.
    pub outcome: StepOutcome,
    /// How long it took, as the script measured it.
    pub duration_ms: u64,
    /// What the script wants a reader to know.
    pub detail: Option<String>,
}

/// The structured result of a script run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Overall result.
    pub verdict: Verdict,
    /// Steps in the order they ran.
    pub steps: Vec<Step>,
    /// One paragraph for a person.
    pub summary: String,
}

impl Report {
    pub(crate) fn size(&self) -> usize {
        self.summary.len()
            + self
                .steps
                .iter()
                .map(|s| s.name.len() + s.detail.as_ref().map_or(0, String::len) + 16)
                .sum::<usize>()
    }
}

impl From<wit::Report> for Report {
    fn from(r: wit::Report) -> Self {
        Self {
            verdict: match r.verdict {
                wit::Verdict::Pass => Verdict::Pass,
                wit::Verdict::Fail => Verdict::Fail,
                wit::Verdict::Error => Verdict::Error,
            },
            steps: r
                .steps
                .into_iter()
                .map(|s| Step {
                    name: s.name,
                    outcome: match s.outcome {
                        wit::StepOutcome::Passed => StepOutcome::Passed,
                        wit::StepOutcome::Failed => StepOutcome::Failed,
                        wit::StepOutcome::Skipped => StepOutcome::Skipped,
                    },
                    duration_ms: s.duration_ms,
                    detail: s.detail,
                })
                .collect(),
            summary: r.summary,
        }
    }
}

mod opt_millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
}
