//! The control API's endpoints: their names, who may call them, and their subjects.
//!
//! Every endpoint belongs to one [`Role`], and its subject starts with that role:
//! `sandbus.api.<role>.<endpoint>` (`sandbus.api.viewer.component.list`,
//! `sandbus.api.operator.component.remove`). So a NATS permission of one line per role,
//! `sandbus.api.viewer.>`, lets a person do exactly what the role allows, and an endpoint
//! added in a later version falls under the role it belongs to without a new permission.
//! `sandbus permissions ROLE` prints those permissions (see [`crate::bus::permissions`]).
//!
//! Endpoints that must reach one particular host (runs go to the host that has the device)
//! are served per host: `sandbus.api.<role>.host.<host-id>.<endpoint>`.

use std::fmt;

/// Who may call an endpoint: the API roles an operator gives people, as NATS permissions.
/// The daemon itself is the fourth role of `sandbus permissions`; it serves the API and
/// calls none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: components, listeners' status, hosts, devices, runs and their logs, hooks,
    /// events. Changes nothing.
    Viewer,
    /// Publishes canonical events and asks extension points about proposed operations.
    Publisher,
    /// Runs the lab: uploads and removes components, subscribes listeners, manages hooks,
    /// starts and cancels runs, reads and writes components' key-value spaces. Everything a
    /// viewer and a publisher may do too.
    Operator,
}

impl Role {
    /// Every API role.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Publisher, Role::Operator];

    /// The role's name: the subject token and the CLI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Publisher => "publisher",
            Role::Operator => "operator",
        }
    }

    /// The roles whose endpoints this role may call (itself included).
    pub fn covers(self) -> &'static [Role] {
        match self {
            Role::Viewer => &[Role::Viewer],
            Role::Publisher => &[Role::Publisher],
            Role::Operator => &[Role::Viewer, Role::Publisher, Role::Operator],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint of the control API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The name, e.g. `component.upload`: the last tokens of its subject.
    pub name: &'static str,
    /// Who may call it.
    pub role: Role,
    /// Whether it may be sent as a cast (a mutation whose result comes later as an event);
    /// queries are only called.
    pub castable: bool,
    /// Whether each host serves it on its own subject (it must reach one particular host).
    pub per_host: bool,
}

impl Endpoint {
    const fn new(name: &'static str, role: Role, castable: bool) -> Self {
        Self {
            name,
            role,
            castable,
            per_host: false,
        }
    }

    const fn per_host(name: &'static str, role: Role) -> Self {
        Self {
            name,
            role,
            castable: false,
            per_host: true,
        }
    }

    /// The endpoint named `name`, if there is one.
    pub fn find(name: &str) -> Option<&'static Endpoint> {
        ALL.iter().find(|e| e.name == name)
    }
}

/// Stage one part of a component's bytes for an upload.
pub const STAGE: &str = "component.stage";
/// Record a component whose bytes are in the component store or staged.
pub const UPLOAD: &str = "component.upload";
/// List components.
pub const LIST: &str = "component.list";
/// Remove a component.
pub const REMOVE: &str = "component.remove";
/// Point a component back at its previous content.
pub const ROLLBACK: &str = "component.rollback";
/// Subscribe a listener to event patterns.
pub const SUBSCRIBE: &str = "listener.subscribe";
/// Unsubscribe a listener.
pub const UNSUBSCRIBE: &str = "listener.unsubscribe";
/// A listener's status (or all of them).
pub const STATUS: &str = "listener.status";
/// Publish a canonical event.
pub const PUBLISH: &str = "event.publish";
/// A page of stored events, waiting a while for new ones when there are none yet.
pub const EVENTS: &str = "event.list";
/// Live hosts.
pub const HOSTS: &str = "host.list";
/// Every host's devices (inventory, with states).
pub const DEVICES: &str = "device.list";
/// Script runs, newest first.
pub const RUNS: &str = "run.list";
/// One run's record.
pub const RUN: &str = "run.get";
/// A page of one run's log lines (and its report once stored).
pub const RUN_LOG: &str = "run.log";
/// Start a run on a device of the answering host (per host).
pub const RUN_START: &str = "run.start";
/// Cancel a run of the answering host (per host).
pub const RUN_CANCEL: &str = "run.cancel";
/// Register a hook at an extension point.
pub const HOOK_ADD: &str = "hook.add";
/// Remove a hook from an extension point.
pub const HOOK_REMOVE: &str = "hook.remove";
/// Set an extension point's policy and deadline.
pub const HOOK_POLICY: &str = "hook.policy";
/// List the extension points and their hooks.
pub const HOOK_LIST: &str = "hook.list";
/// Ask an extension point about a proposed operation.
pub const HOOK_CALL: &str = "hook.call";
/// Read one key of a component's key-value space.
pub const KV_GET: &str = "kv.get";
/// Write one key of a component's key-value space.
pub const KV_SET: &str = "kv.set";
/// Remove one key of a component's key-value space.
pub const KV_DELETE: &str = "kv.delete";
/// A page of the keys (and values) of a component's key-value space.
pub const KV_LIST: &str = "kv.list";

/// Every endpoint.
pub const ALL: &[Endpoint] = &[
    Endpoint::new(LIST, Role::Viewer, false),
    Endpoint::new(STATUS, Role::Viewer, false),
    Endpoint::new(EVENTS, Role::Viewer, false),
    Endpoint::new(HOSTS, Role::Viewer, false),
    Endpoint::new(DEVICES, Role::Viewer, false),
    Endpoint::new(RUNS, Role::Viewer, false),
    Endpoint::new(RUN, Role::Viewer, false),
    Endpoint::new(RUN_LOG, Role::Viewer, false),
    Endpoint::new(HOOK_LIST, Role::Viewer, false),
    Endpoint::new(PUBLISH, Role::Publisher, true),
    // A call is a question whose answer the caller waits for.
    Endpoint::new(HOOK_CALL, Role::Publisher, false),
    Endpoint::new(STAGE, Role::Operator, false),
    Endpoint::new(UPLOAD, Role::Operator, true),
    Endpoint::new(REMOVE, Role::Operator, true),
    Endpoint::new(ROLLBACK, Role::Operator, true),
    Endpoint::new(SUBSCRIBE, Role::Operator, true),
    Endpoint::new(UNSUBSCRIBE, Role::Operator, true),
    Endpoint::new(HOOK_ADD, Role::Operator, true),
    Endpoint::new(HOOK_REMOVE, Role::Operator, true),
    Endpoint::new(HOOK_POLICY, Role::Operator, true),
    Endpoint::new(KV_GET, Role::Operator, false),
    Endpoint::new(KV_SET, Role::Operator, false),
    Endpoint::new(KV_DELETE, Role::Operator, false),
    Endpoint::new(KV_LIST, Role::Operator, false),
    Endpoint::per_host(RUN_START, Role::Operator),
    Endpoint::per_host(RUN_CANCEL, Role::Operator),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_listed_once_with_one_role() {
        let mut names: Vec<&str> = ALL.iter().map(|e| e.name).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "an endpoint is listed twice");
        assert_eq!(Endpoint::find(UPLOAD).map(|e| e.role), Some(Role::Operator));
        assert_eq!(Endpoint::find("nope"), None);
        // Reads are the viewer's and never casts; per-host endpoints are operators'.
        for e in ALL {
            if e.role == Role::Viewer {
                assert!(!e.castable, "{}", e.name);
            }
            if e.per_host {
                assert_eq!(e.role, Role::Operator, "{}", e.name);
            }
        }
    }

    #[test]
    fn an_operator_covers_every_role_and_the_others_only_their_own() {
        for role in Role::ALL {
            assert!(Role::Operator.covers().contains(&role));
        }
        assert_eq!(Role::Viewer.covers(), [Role::Viewer]);
        assert_eq!(Role::Publisher.covers(), [Role::Publisher]);
    }
}
