//! The NATS permissions of each sandbus role, as `sandbus permissions ROLE` prints them.
//!
//! sandbus has four kinds of NATS user. Three are people ([`Role`]): a *viewer* reads, a
//! *publisher* publishes canonical events, an *operator* runs the lab. They act through the
//! control API, whose subjects carry the role (`sandbus.api.<role>.>`), and a publisher (and
//! an operator) also publishes events straight onto the events stream (`events.>`, which is
//! how `sandbus publish` works, without a daemon): never a host event (`events.sandbus`,
//! `events.sandbus.>` are denied). Such a raw publish skips the CLI's check and picks its own
//! `Nats-Msg-Id`, so the daemons trust nothing in it: the dispatcher checks every event on
//! delivery (an invalid one, or one claiming a daemon's source, is dead-lettered with the
//! reason), and a daemon whose host event is reported a duplicate checks that the stored
//! message is a host event before believing it (`EventStream::publish`). People have no
//! JetStream API rights at all: a client that may create consumers or write a bucket can
//! deliver stored messages to any subject or rewrite another component's state, so only
//! daemons get those (a JetStream publish needs none: its ack comes to the caller's inbox).
//! The fourth is the *daemon*, trusted with sandbus's streams and buckets (and only those),
//! the control API's subjects, and the subjects its guests are granted.
//!
//! Each role receives replies on an inbox of its own (`_INBOX_viewer.>`...), so a viewer
//! cannot read the replies an operator gets. The CLI of such a user must use that prefix
//! (`--inbox-prefix`, `SANDBUS_INBOX_PREFIX`).
//!
//! The lists are built from the same names the code uses ([`super::names`],
//! [`crate::api::endpoint`]), and the end-to-end tests run a nats-server with exactly them.

use std::fmt;

use serde::Serialize;

use super::names;
use crate::api::Role;
use crate::error::{Input, InvalidInput};
use crate::subject::{EVENTS_PREFIX, HOST_EVENT_PREFIX};

/// A role `sandbus permissions` knows: the API roles, and the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionRole {
    /// A person (or program) using the control API in one of its roles.
    Api(Role),
    /// A `sandbus daemon`.
    Daemon,
}

impl PermissionRole {
    /// Every role, people first.
    pub const ALL: [PermissionRole; 4] = [
        PermissionRole::Api(Role::Viewer),
        PermissionRole::Api(Role::Publisher),
        PermissionRole::Api(Role::Operator),
        PermissionRole::Daemon,
    ];

    /// Reads a role name: `viewer`, `publisher`, `operator` or `daemon`.
    pub fn parse(name: &str) -> Result<Self, InvalidInput> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| {
                InvalidInput::new(
                    Input::PermissionRole,
                    format!(
                        "no role `{}`; the roles are viewer, publisher, operator and daemon",
                        crate::text::echo(name)
                    ),
                )
            })
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionRole::Api(role) => role.as_str(),
            PermissionRole::Daemon => "daemon",
        }
    }

    /// The inbox prefix a user of this role receives replies on, unless told otherwise: one
    /// per API role, so people of one role cannot read another's replies; the daemon's own,
    /// which no request may name as its reply subject.
    pub fn default_inbox_prefix(self) -> String {
        match self {
            PermissionRole::Api(role) => format!("_INBOX_{role}"),
            PermissionRole::Daemon => crate::subject::DAEMON_INBOX_PREFIX.to_owned(),
        }
    }
}

impl fmt::Display for PermissionRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the permissions are generated for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionSettings {
    /// The inbox prefix of the role's users ([`PermissionRole::default_inbox_prefix`] when
    /// `None`).
    pub inbox_prefix: Option<String>,
    /// The events stream's name (`[events] stream`).
    pub events_stream: String,
    /// Subjects the daemon may publish on for its guests, beyond `events.>`: the publish
    /// grants guests are given outside the events stream (`alerts.>`). A guest publish the
    /// daemon's permissions do not cover fails as `unavailable`.
    pub guest_subjects: Vec<String>,
}

impl Default for PermissionSettings {
    fn default() -> Self {
        Self {
            inbox_prefix: None,
            events_stream: names::EVENTS_STREAM.to_owned(),
            guest_subjects: Vec::new(),
        }
    }
}

/// One role's NATS permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Subjects it may publish on.
    pub publish: SubjectList,
    /// Subjects it may subscribe to.
    pub subscribe: SubjectList,
    /// Whether it may publish replies to the requests it receives (a server of requests).
    pub allow_responses: bool,
    /// The inbox prefix its clients must use.
    #[serde(skip)]
    pub inbox_prefix: String,
}

/// Allowed and denied subjects (NATS wildcards; a deny wins over an allow).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SubjectList {
    /// Allowed.
    pub allow: Vec<String>,
    /// Denied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// The permissions of `role`.
pub fn permissions(role: PermissionRole, settings: &PermissionSettings) -> Permissions {
    let inbox_prefix = settings
        .inbox_prefix
        .clone()
        .unwrap_or_else(|| role.default_inbox_prefix());
    let inbox = format!("{inbox_prefix}.>");
    let host_events = [
        format!("{EVENTS_PREFIX}.{HOST_EVENT_PREFIX}"),
        format!("{EVENTS_PREFIX}.{HOST_EVENT_PREFIX}.>"),
    ];
    match role {
        PermissionRole::Api(role) => {
            let mut publish = SubjectList::default();
            for covered in role.covers() {
                publish
                    .allow
                    .push(format!("{}.>", names::api_role_prefix(*covered)));
            }
            // Publishers (and operators) put events straight onto the events stream, as
            // `sandbus publish` does; the dispatcher checks each on delivery, since a raw
            // publish skips the CLI's check. Host events are denied outright.
            if role.covers().contains(&Role::Publisher) {
                publish.allow.push(format!("{EVENTS_PREFIX}.>"));
            }
            // Nothing else: no service discovery (`$SRV.…` is answered by the service
            // framework, to whatever reply subject a requester gives, with the daemon's
            // rights).
            publish.deny.extend(host_events);
            Permissions {
                publish,
                subscribe: SubjectList {
                    allow: vec![inbox],
                    deny: Vec::new(),
                },
                allow_responses: false,
                inbox_prefix,
            }
        }
        PermissionRole::Daemon => {
            let mut streams = vec![
                settings.events_stream.clone(),
                names::DEAD_LETTER_STREAM.to_owned(),
                names::RUNS_STREAM.to_owned(),
                names::object_stream(names::COMPONENTS_BUCKET),
            ];
            streams.extend(names::KV_BUCKETS.iter().map(|b| names::kv_stream(b)));
            let mut allow = vec!["$JS.API.INFO".to_owned()];
            for stream in &streams {
                // Every JetStream API call names its stream in the 5th or 6th token:
                // STREAM.INFO.S, DIRECT.GET.S(.subject), CONSUMER.CREATE.S(.name.filter),
                // STREAM.MSG.GET.S, CONSUMER.MSG.NEXT.S.name, CONSUMER.DURABLE.CREATE.S.name;
                // acks and flow control name it in the 3rd.
                allow.push(format!("$JS.API.*.*.{stream}"));
                allow.push(format!("$JS.API.*.*.{stream}.>"));
                allow.push(format!("$JS.API.*.*.*.{stream}"));
                allow.push(format!("$JS.API.*.*.*.{stream}.>"));
                allow.push(format!("$JS.*.{stream}.>"));
            }
            for bucket in names::KV_BUCKETS {
                allow.push(format!("$KV.{bucket}.>"));
            }
            allow.push(format!("$O.{}.>", names::COMPONENTS_BUCKET));
            // Host events, guests' events and the API's publishes; run logs and dead letters.
            allow.push(format!("{EVENTS_PREFIX}.>"));
            allow.push(format!("{}.>", crate::subject::SANDBUS_PREFIX));
            allow.extend(settings.guest_subjects.iter().cloned());
            Permissions {
                publish: SubjectList {
                    allow,
                    deny: Vec::new(),
                },
                subscribe: SubjectList {
                    allow: vec![
                        inbox,
                        format!("{}.>", names::API_PREFIX),
                        "$SRV.>".to_owned(),
                    ],
                    deny: Vec::new(),
                },
                allow_responses: true,
                inbox_prefix,
            }
        }
    }
}

impl Permissions {
    /// The permissions as a nats-server configuration variable, `NAME = { ... }`, to use as
    /// `permissions: $NAME` in a user entry.
    pub fn to_conf(&self, variable: &str) -> String {
        let list = |subjects: &[String]| {
            let quoted: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
            format!("[\n      {}\n    ]", quoted.join(",\n      "))
        };
        let side = |name: &str, subjects: &SubjectList| {
            let mut out = format!("  {name}: {{\n    allow: {}", list(&subjects.allow));
            if !subjects.deny.is_empty() {
                out.push_str(&format!("\n    deny: {}", list(&subjects.deny)));
            }
            out.push_str("\n  }\n");
            out
        };
        let mut out = format!("{variable} = {{\n");
        out.push_str(&side("publish", &self.publish));
        out.push_str(&side("subscribe", &self.subscribe));
        if self.allow_responses {
            out.push_str("  allow_responses: true\n");
        }
        out.push_str("}\n");
        out
    }
}

/// The configuration variable name of a role's permissions, `SANDBUS_VIEWER`...
pub fn variable(role: PermissionRole) -> String {
    format!("SANDBUS_{}", role.as_str().to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::SubjectPattern;

    fn allowed(list: &SubjectList, subject: &str) -> bool {
        let matches = |p: &String| SubjectPattern::parse(p).is_ok_and(|p| p.matches(subject));
        list.allow.iter().any(matches) && !list.deny.iter().any(matches)
    }

    #[test]
    fn people_reach_the_api_of_their_roles_their_inbox_and_publishers_the_events_stream() {
        let settings = PermissionSettings::default();
        let viewer = permissions(PermissionRole::Api(Role::Viewer), &settings);
        assert!(allowed(
            &viewer.publish,
            "sandbus.api.viewer.component.list"
        ));
        assert!(!allowed(
            &viewer.publish,
            "sandbus.api.operator.component.remove"
        ));
        assert!(!allowed(&viewer.publish, "events.vm.started"));
        assert!(!allowed(
            &viewer.publish,
            "$JS.API.STREAM.PURGE.SANDBUS_DEAD_LETTERS"
        ));
        assert!(!allowed(&viewer.publish, "$SRV.PING.sandbus"));
        assert!(allowed(&viewer.subscribe, "_INBOX_viewer.abc.1"));
        assert!(!allowed(&viewer.subscribe, "_INBOX.abc.1"));
        let publisher = permissions(PermissionRole::Api(Role::Publisher), &settings);
        assert!(allowed(&publisher.publish, "events.vm.started"), "direct");
        assert!(allowed(&publisher.publish, "events.sandboxes.x"));
        assert!(allowed(
            &publisher.publish,
            "sandbus.api.publisher.event.publish"
        ));
        assert!(!allowed(
            &publisher.publish,
            "events.sandbus.lease.released"
        ));
        assert!(!allowed(&publisher.publish, "events.sandbus"));
        assert!(!allowed(
            &publisher.publish,
            "sandbus.api.viewer.component.list"
        ));
        let operator = permissions(PermissionRole::Api(Role::Operator), &settings);
        for subject in [
            "sandbus.api.viewer.run.list",
            "sandbus.api.publisher.hook.call",
            "sandbus.api.operator.host.lab-7.run.start",
        ] {
            assert!(allowed(&operator.publish, subject), "{subject}");
        }
        assert!(allowed(&operator.publish, "events.vm.started"), "direct");
        for subject in [
            "$JS.API.STREAM.PURGE.SANDBUS_DEAD_LETTERS",
            "$JS.API.STREAM.INFO.SANDBUS_EVENTS",
            "$KV.sandbus-kv.billing.total/acme",
            "$O.sandbus-components.M.x",
            "events.sandbus.metering",
            "events.sandbus",
            "sandbus.dead-letter.billing",
        ] {
            assert!(!allowed(&operator.publish, subject), "{subject}");
            assert!(!allowed(&publisher.publish, subject), "{subject}");
        }
    }

    #[test]
    fn a_daemon_reaches_its_own_streams_and_buckets_only() {
        let daemon = permissions(PermissionRole::Daemon, &PermissionSettings::default());
        for subject in [
            "$JS.API.STREAM.INFO.KV_sandbus-hosts",
            "$KV.sandbus-hosts.lab-7",
            "$JS.API.CONSUMER.MSG.NEXT.SANDBUS_EVENTS.sandbus-listener-billing",
            "$JS.API.DIRECT.GET.KV_sandbus-kv.$KV.sandbus-kv.billing.x",
            "$JS.API.STREAM.MSG.GET.OBJ_sandbus-components",
            "$JS.ACK.SANDBUS_EVENTS.sandbus-listener-billing.1.2.3.4.5",
            "events.sandbus.metering",
            "sandbus.run.r-1.log",
        ] {
            assert!(allowed(&daemon.publish, subject), "{subject}");
        }
        for subject in [
            "$JS.API.STREAM.INFO.OTHER_APP",
            "$KV.other-bucket.x",
            "$SYS.REQ.SERVER.PING",
            "alerts.x",
        ] {
            assert!(!allowed(&daemon.publish, subject), "{subject}");
        }
        let with_guests = permissions(
            PermissionRole::Daemon,
            &PermissionSettings {
                guest_subjects: vec!["alerts.>".into()],
                ..Default::default()
            },
        );
        assert!(allowed(&with_guests.publish, "alerts.x"));
        assert!(daemon.allow_responses);
    }

    #[test]
    fn the_conf_form_names_every_subject_once() {
        let conf = permissions(PermissionRole::Api(Role::Publisher), &Default::default())
            .to_conf("SANDBUS_PUBLISHER");
        assert!(conf.starts_with("SANDBUS_PUBLISHER = {"), "{conf}");
        assert!(conf.contains("\"sandbus.api.publisher.>\""), "{conf}");
        assert!(conf.contains("deny: [\n      \"events.sandbus\""), "{conf}");
        assert_eq!(
            PermissionRole::parse("viewer"),
            Ok(PermissionRole::Api(Role::Viewer))
        );
        assert!(
            PermissionRole::parse("admin")
                .unwrap_err()
                .message
                .contains("viewer")
        );
    }
}
