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
//!
//! Every endpoint is described once, in the table at the end of this file: its name, role,
//! how it may be sent, and its request and reply types. The daemon serves [`ALL`] and its
//! router reads bodies by the table's types ([`super::Request`]); the client
//! ([`crate::bus::ApiClient`]) finds subjects in it and can call through a [`Call`] type.
//! Adding an endpoint is one row here, one variant of [`super::Request`] and its handler in
//! the daemon; the compiler points at the last two.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    CancelReply, ConfigureReply, ConfigureRequest, Empty, EventListRequest, HookCallReply,
    HookCallRequest, HookPolicyRequest, HookRequest, KvDeleteReply, KvEntry, KvKeyRequest,
    KvListReply, KvListRequest, KvSetRequest, MessagePage, NameRequest, PublishRequest,
    RunIdRequest, RunLogRequest, StageReply, StageRequest, StatusReply, StatusRequest,
    SubscribeRequest, UploadReply, UploadRequest, Validate,
};
use crate::bus::{
    ComponentManifest, DeviceRecord, HookPoint, HostInfo, PublishedEvent, RunRecord, RunRequest,
    Subscription,
};

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
    /// A query: only called, its reply carries the result.
    const fn query(name: &'static str, role: Role) -> Self {
        Self {
            name,
            role,
            castable: false,
            per_host: false,
        }
    }

    /// A mutation that may be called or cast.
    const fn cast(name: &'static str, role: Role) -> Self {
        Self {
            name,
            role,
            castable: true,
            per_host: false,
        }
    }

    /// Served by each host on its own subject, and only called.
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

/// One endpoint as a type: what it takes and what a call of it answers, as the endpoint table
/// says. The daemon's router reads each request as its endpoint's `Request` and must answer
/// with its `Reply`; a client that calls through it gets both checked at compile time.
pub trait Call {
    /// The endpoint's row in [`ALL`].
    const ENDPOINT: Endpoint;
    /// The request body (checked with the same [`Validate`] by the client and the daemon).
    type Request: Serialize + DeserializeOwned + Validate;
    /// The reply to a call. A cast is answered with a [`super::CastAccepted`] instead; its
    /// result comes later as an event.
    type Reply: Serialize + DeserializeOwned;
}

/// The endpoint table: one row per endpoint, the one place an endpoint is described. Each row
/// gives the name constant (what the CLI and tests name it by), the [`Call`] type, the
/// subject name, the role, how it is sent (`query`: only called; `cast`: called or cast;
/// `per_host`: called on one host's own subject), and the request and reply types.
macro_rules! endpoints {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident, $call:ident = $subject:literal: $role:ident, $how:ident,
            $request:ty => $reply:ty;
    )+) => {
        $(
            $(#[doc = $doc])+
            pub const $name: &str = $subject;

            #[doc = concat!("`", $subject, "` as a [`Call`]:")]
            $(#[doc = $doc])+
            #[derive(Debug, Clone, Copy)]
            pub struct $call;

            impl Call for $call {
                const ENDPOINT: Endpoint = Endpoint::$how($name, Role::$role);
                type Request = $request;
                type Reply = $reply;
            }
        )+

        /// Every endpoint, in the order of the table.
        pub const ALL: &[Endpoint] = &[$(<$call as Call>::ENDPOINT),+];
    };
}

endpoints! {
    /// List components.
    LIST, List = "component.list": Viewer, query, Empty => Vec<ComponentManifest>;
    /// A listener's status (or all of them).
    STATUS, Status = "listener.status": Viewer, query, StatusRequest => StatusReply;
    /// A page of stored events, waiting a while for new ones when there are none yet.
    EVENTS, Events = "event.list": Viewer, query, EventListRequest => MessagePage;
    /// Live hosts.
    HOSTS, Hosts = "host.list": Viewer, query, Empty => Vec<HostInfo>;
    /// Every host's devices (inventory, with states).
    DEVICES, Devices = "device.list": Viewer, query, Empty => Vec<DeviceRecord>;
    /// Script runs, newest first.
    RUNS, Runs = "run.list": Viewer, query, Empty => Vec<RunRecord>;
    /// One run's record.
    RUN, Run = "run.get": Viewer, query, RunIdRequest => RunRecord;
    /// A page of one run's log lines (and its report once stored).
    RUN_LOG, RunLog = "run.log": Viewer, query, RunLogRequest => MessagePage;
    /// List the extension points and their hooks.
    HOOK_LIST, HookList = "hook.list": Viewer, query, Empty => Vec<HookPoint>;
    /// Publish a canonical event.
    PUBLISH, Publish = "event.publish": Publisher, cast, PublishRequest => PublishedEvent;
    /// Ask an extension point about a proposed operation. A query: the caller waits for the
    /// answer.
    HOOK_CALL, HookCall = "hook.call": Publisher, query, HookCallRequest => HookCallReply;
    /// Stage one part of a component's bytes for an upload.
    STAGE, Stage = "component.stage": Operator, query, StageRequest => StageReply;
    /// Record a component whose bytes are in the component store or staged.
    UPLOAD, Upload = "component.upload": Operator, cast, UploadRequest => UploadReply;
    /// Remove a component.
    REMOVE, Remove = "component.remove": Operator, cast, NameRequest => ComponentManifest;
    /// Point a component back at its previous content.
    ROLLBACK, Rollback = "component.rollback": Operator, cast, NameRequest => ComponentManifest;
    /// Change a component's `wasi:config/store` values (a new version, same bytes).
    CONFIGURE, Configure = "component.configure": Operator, cast,
        ConfigureRequest => ConfigureReply;
    /// Subscribe a listener to event patterns.
    SUBSCRIBE, Subscribe = "listener.subscribe": Operator, cast,
        SubscribeRequest => Subscription;
    /// Unsubscribe a listener.
    UNSUBSCRIBE, Unsubscribe = "listener.unsubscribe": Operator, cast,
        NameRequest => Subscription;
    /// Register a hook at an extension point.
    HOOK_ADD, HookAdd = "hook.add": Operator, cast, HookRequest => HookPoint;
    /// Remove a hook from an extension point.
    HOOK_REMOVE, HookRemove = "hook.remove": Operator, cast, HookRequest => HookPoint;
    /// Set an extension point's policy and deadline.
    HOOK_POLICY, HookPolicy = "hook.policy": Operator, cast, HookPolicyRequest => HookPoint;
    /// Read one key of a component's key-value space.
    KV_GET, KvGet = "kv.get": Operator, query, KvKeyRequest => KvEntry;
    /// Write one key of a component's key-value space.
    KV_SET, KvSet = "kv.set": Operator, query, KvSetRequest => KvEntry;
    /// Remove one key of a component's key-value space.
    KV_DELETE, KvDelete = "kv.delete": Operator, query, KvKeyRequest => KvDeleteReply;
    /// A page of the keys (and values) of a component's key-value space.
    KV_LIST, KvList = "kv.list": Operator, query, KvListRequest => KvListReply;
    /// Start a run on a device of the answering host.
    RUN_START, RunStart = "run.start": Operator, per_host, RunRequest => RunRecord;
    /// Cancel a run of the answering host.
    RUN_CANCEL, RunCancel = "run.cancel": Operator, per_host, RunIdRequest => CancelReply;
}

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
    fn each_call_type_is_its_row_of_the_table() {
        assert_eq!(Endpoint::find(UPLOAD), Some(&Upload::ENDPOINT));
        assert_eq!(Endpoint::find(RUN_CANCEL), Some(&RunCancel::ENDPOINT));
        let row = |name, role, castable, per_host| Endpoint {
            name,
            role,
            castable,
            per_host,
        };
        assert_eq!(
            Upload::ENDPOINT,
            row("component.upload", Role::Operator, true, false)
        );
        assert_eq!(
            List::ENDPOINT,
            row("component.list", Role::Viewer, false, false)
        );
        assert_eq!(
            RunStart::ENDPOINT,
            row("run.start", Role::Operator, false, true)
        );
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
