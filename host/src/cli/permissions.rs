//! `sandbus permissions ROLE...`: the NATS permissions of sandbus's roles, ready to paste
//! into a nats-server configuration (or to give an account tool, with `--json`).

use clap::Args;
use sandbus::bus::names;
use sandbus::bus::permissions::{
    PermissionRole, PermissionSettings, Permissions, permissions, variable,
};
use sandbus::grant::Grant;

use super::output::{EXIT_OK, EXIT_USAGE, outln};

/// `sandbus permissions` arguments.
#[derive(Args, Debug)]
pub struct PermissionsArgs {
    /// The roles: viewer, publisher, operator, daemon [default: all four].
    #[arg(value_name = "ROLE")]
    roles: Vec<String>,
    /// The inbox prefix the role's users receive replies on [default: _INBOX_<role> for
    /// people, _INBOX for the daemon]; their CLI must use the same (--inbox-prefix).
    #[arg(long, value_name = "PREFIX")]
    inbox_prefix: Option<String>,
    /// A subject the daemon may publish on for its guests, beyond events.> (repeatable): the
    /// publish grants guests get outside the events stream, e.g. 'alerts.>'.
    #[arg(long = "guest-subject", value_name = "PATTERN")]
    guest_subjects: Vec<String>,
    /// The events stream's name, as in the daemons' `[events] stream`.
    #[arg(long, value_name = "NAME", default_value = names::EVENTS_STREAM)]
    events_stream: String,
    /// Print JSON: each role's publish and subscribe lists, for an account tool.
    #[arg(long)]
    json: bool,
}

/// Runs `sandbus permissions`; its exit code.
pub fn run(args: &PermissionsArgs) -> u8 {
    let roles = if args.roles.is_empty() {
        Ok(PermissionRole::ALL.to_vec())
    } else {
        args.roles
            .iter()
            .map(|r| PermissionRole::parse(r))
            .collect::<Result<Vec<_>, _>>()
    };
    let roles = match roles {
        Ok(roles) => roles,
        Err(why) => {
            eprintln!("error: {why}");
            return EXIT_USAGE;
        }
    };
    for subject in &args.guest_subjects {
        // What a daemon may publish for guests is what a guest may be granted.
        if let Err(e) = Grant::publish(subject) {
            eprintln!("error: --guest-subject {subject}: {}", e.why);
            return EXIT_USAGE;
        }
    }
    if let Some(prefix) = &args.inbox_prefix {
        let for_daemon = roles == [PermissionRole::Daemon];
        if !for_daemon && !sandbus::subject::is_reply_inbox(prefix) {
            eprintln!(
                "error: --inbox-prefix `{prefix}` is not a reply inbox: its first token must \
                 be {0} or start with {0}_ (daemons answer only there), e.g. {0}_alice",
                sandbus::subject::REPLY_INBOX_PREFIX
            );
            return EXIT_USAGE;
        }
        if for_daemon
            && (sandbus::subject::is_reply_inbox(prefix)
                || sandbus::subject::validate_publish_subject(prefix).is_err())
        {
            eprintln!(
                "error: --inbox-prefix `{prefix}` cannot be a daemon's: it must be a subject \
                 prefix that is not a reply inbox (default {})",
                sandbus::subject::DAEMON_INBOX_PREFIX
            );
            return EXIT_USAGE;
        }
        if roles.len() != 1 {
            eprintln!(
                "error: --inbox-prefix is one user's (or one role's) inbox: give one role with \
                 it, e.g. `sandbus permissions operator --inbox-prefix {prefix}`"
            );
            return EXIT_USAGE;
        }
    }
    let settings = PermissionSettings {
        inbox_prefix: args.inbox_prefix.clone(),
        events_stream: args.events_stream.clone(),
        guest_subjects: args.guest_subjects.clone(),
    };
    let all: Vec<(PermissionRole, Permissions)> = roles
        .into_iter()
        .map(|role| (role, permissions(role, &settings)))
        .collect();
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|(role, p)| {
                let mut value = serde_json::to_value(p).unwrap_or_default();
                value["inbox_prefix"] = serde_json::json!(p.inbox_prefix);
                (role.to_string(), value)
            })
            .collect();
        outln!("{}", serde_json::Value::Object(map));
        return EXIT_OK;
    }
    outln!(
        "# NATS permissions for sandbus {} roles (`sandbus permissions`).",
        env!("CARGO_PKG_VERSION")
    );
    outln!("# Paste into nats-server.conf and give each user the variable of its role:");
    outln!("#   authorization {{ users = [");
    for (role, _) in &all {
        outln!(
            "#     {{ user: \"{role}-1\", password: \"...\", permissions: ${} }}",
            variable(*role)
        );
    }
    outln!("#   ] }}");
    for (role, p) in &all {
        outln!("");
        outln!("# {role}: {}", about(*role));
        if *role == PermissionRole::Daemon {
            outln!(
                "# Give daemons their guests' publish subjects with --guest-subject; a \
                 daemon receives replies on {}.> ([nats] inbox_prefix).",
                p.inbox_prefix
            );
        } else {
            outln!(
                "# Its clients receive replies on {0}.>: sandbus --inbox-prefix {0} (or \
                 SANDBUS_INBOX_PREFIX={0}).",
                p.inbox_prefix
            );
        }
        let conf = p.to_conf(&variable(*role));
        outln!("{}", conf.trim_end());
    }
    EXIT_OK
}

fn about(role: PermissionRole) -> &'static str {
    use sandbus::api::Role;
    match role {
        PermissionRole::Api(Role::Viewer) => {
            "lists and reads (components, status, hosts, devices, runs, logs, hooks, events)"
        }
        PermissionRole::Api(Role::Publisher) => {
            "publishes canonical events (never sandbus.* host events) and asks hooks"
        }
        PermissionRole::Api(Role::Operator) => {
            "a viewer and a publisher, and uploads, removes, subscribes, manages hooks, runs \
             scripts, reads and writes kv spaces"
        }
        PermissionRole::Daemon => {
            "a sandbus daemon: its streams and buckets, the control API, host events, and \
             what its guests publish"
        }
    }
}
