//! An extension point's veto: `sandbus.hook.denied`.

use serde::{Deserialize, Serialize};

use crate::{HostEvent, Record};

/// What was proposed to an extension point, as a [`HookDenied`] names it: the proposed
/// event's id, type and subject (not its data, which may be large or private).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposed event's id.
    pub id: String,
    /// The proposed event's CloudEvents `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The proposed event's subject; `null` when it has none.
    pub subject: Option<String>,
}

/// `sandbus.hook.denied`: an extension point denied a proposed operation (a hook said deny,
/// or, fail-closed, a hook could not answer). Its subject is the point. Every call is its own
/// decision, so its id names the point, the host and the moment.
///
/// The policy and answer types are the daemon's; a reader that is not the daemon reads them
/// as [`serde_json::Value`]s (the defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookDenied<Policy = serde_json::Value, Answer = serde_json::Value> {
    /// The extension point asked.
    pub point: String,
    /// What the point counts a hook that cannot answer as (`fail-open`, `fail-closed`).
    pub policy: Policy,
    /// What was proposed.
    pub proposed: Proposal,
    /// Why it was denied: one line per denying (or, fail-closed, failing) hook,
    /// `<hook>: <reason>`.
    pub reasons: Vec<String>,
    /// Every hook's answer, in registration order (hook, outcome, reason, elapsed time).
    pub hooks: Vec<Answer>,
}

impl<Policy: Record, Answer: Record> HostEvent for HookDenied<Policy, Answer> {
    const TYPE: &'static str = "sandbus.hook.denied";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::assert_same_json;

    #[test]
    fn hook_denied_names_the_point_the_proposal_the_reasons_and_every_answer() {
        let answers = vec![
            json!({ "hook": "quota", "outcome": "deny", "reason": "over quota", "elapsed_ms": 3 }),
            json!({ "hook": "audit", "outcome": "allow", "elapsed_ms": 1 }),
        ];
        let reasons = vec!["quota: over quota".to_owned()];
        for subject in [Some("acme"), None] {
            let event: HookDenied = HookDenied {
                point: "publish".into(),
                policy: json!("fail-closed"),
                proposed: Proposal {
                    id: "e-1".into(),
                    ty: "vm.started".into(),
                    subject: subject.map(str::to_owned),
                },
                reasons: reasons.clone(),
                hooks: answers.clone(),
            };
            // The daemon's call site, field by field.
            assert_same_json(
                &event,
                json!({
                    "point": "publish",
                    "policy": "fail-closed",
                    "proposed": {
                        "id": "e-1",
                        "type": "vm.started",
                        "subject": subject,
                    },
                    "reasons": reasons,
                    "hooks": answers,
                }),
            );
        }
    }
}
