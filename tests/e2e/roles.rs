//! Roles as NATS permissions: a nats-server configured with exactly what `sandbus
//! permissions` prints, one user per role, and a real daemon running as the `daemon` user.
//! Each role can do exactly its set and nothing else: a viewer cannot remove, a publisher
//! cannot forge a host event, no person reaches JetStream, and a daemon does its whole job
//! without one permission violation. A refusal reaches the CLI as "permission denied on
//! SUBJECT" (exit 6) within a second.

use std::time::{Duration, Instant};

use sandbus::api::{Role, endpoint};
use sandbus::bus::permissions::PermissionRole;
use sandbus::bus::{BusErrorKind, NatsOptions, names};
use serde_json::Value;

use super::cluster::{Cluster, billing_scenario, guest, vm_event, write};
use super::support::fixed_hook;
use super::support::nats::NatsServer;

/// The password of each role's test user (its name is the role's).
fn password(role: &str) -> String {
    format!("{role}-secret")
}

/// The CLI flags of `role`'s user, with its inbox.
fn login(role: &str) -> Vec<String> {
    let inbox = PermissionRole::parse(role)
        .map(|r| r.default_inbox_prefix())
        .unwrap_or_else(|_| "_INBOX".into());
    vec![
        "--user".into(),
        role.into(),
        "--password".into(),
        password(role),
        "--inbox-prefix".into(),
        inbox,
    ]
}

/// A nats-server whose users are one per role, with the permissions `sandbus permissions`
/// prints, plus `admin` (no restrictions) for what the test looks at underneath; a cluster
/// whose CLI calls are the admin's and whose daemons run as the `daemon` user.
fn role_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let perms = std::process::Command::new(env!("CARGO_BIN_EXE_sandbus"))
        .args(["permissions"])
        .output()
        .unwrap();
    assert!(
        perms.status.success(),
        "{}",
        String::from_utf8_lossy(&perms.stderr)
    );
    let perms_path = dir.path().join("sandbus-permissions.conf");
    std::fs::write(&perms_path, &perms.stdout).unwrap();
    let mut users = String::new();
    for role in PermissionRole::ALL {
        users.push_str(&format!(
            "    {{ user: \"{role}\", password: \"{}\", permissions: ${} }}\n",
            password(role.as_str()),
            sandbus::bus::permissions::variable(role)
        ));
    }
    // An include is relative to the including file.
    let conf = format!(
        "include \"sandbus-permissions.conf\"\nauthorization {{\n  users = [\n{users}    {{ user: \"admin\", password: \"admin-secret\" }}\n  ]\n}}\n"
    );
    let conf_path = dir.path().join("server.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let server = NatsServer::start_with(&["-c", conf_path.to_str().unwrap()]);
    let mut cluster = Cluster::with_server(
        server,
        vec![
            "--user".into(),
            "admin".into(),
            "--password".into(),
            "admin-secret".into(),
        ],
    );
    cluster.daemon_auth = Some(login("daemon"));
    // The configuration files must outlive the server's restarts: keep them with the test.
    cluster.keep.push(dir);
    cluster
}

/// Runs the CLI as `role`'s user; the output and how long it took.
fn cli_as(cluster: &Cluster, role: &str, args: &[&str]) -> (std::process::Output, Duration) {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend(login(role));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = cluster.command(&all).output().unwrap();
    (out, started.elapsed())
}

fn cli_ok_as(cluster: &Cluster, role: &str, args: &[&str]) -> String {
    let (out, _) = cli_as(cluster, role, args);
    assert!(
        out.status.success(),
        "{role}: sandbus {args:?} failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the server did with one raw request of a role's user: answered (by a daemon), or
/// refused (a permission violation on the connection).
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Answered,
    Refused,
    Other(String),
}

/// Sends `body` to `subject` as `role`'s user, raw (no CLI, no client-side checks).
fn raw_request(cluster: &Cluster, role: &str, subject: &str, body: &str) -> Fate {
    let options = NatsOptions {
        url: Some(cluster.nats.url()),
        user: Some(role.to_owned()),
        password: Some(password(role)),
        inbox_prefix: PermissionRole::parse(role)
            .ok()
            .map(|r| r.default_inbox_prefix()),
        ..Default::default()
    };
    let subject = subject.to_owned();
    let body = body.to_owned();
    cluster.rt.block_on(async move {
        let (client, refusals) = sandbus::bus::connect_client(&options).await.unwrap();
        let result = refusals
            .guard(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    client.request(subject.clone(), body.into()),
                )
                .await
                .map_err(|_| sandbus::bus::BusError::new(BusErrorKind::Unavailable, "timed out"))?
                .map_err(|e| sandbus::bus::BusError::new(BusErrorKind::Unavailable, e.to_string()))
            })
            .await;
        match result {
            Ok(_) => Fate::Answered,
            Err(e) if e.kind == BusErrorKind::PermissionDenied => Fate::Refused,
            Err(e) => Fate::Other(e.message),
        }
    })
}

/// Publishes `body` on `subject` as `role`'s user, raw, and says whether the server refused.
fn raw_publish(cluster: &Cluster, role: &str, subject: &str, body: &str) -> bool {
    raw_request(cluster, role, subject, body) == Fate::Refused
}

#[test]
fn each_role_calls_exactly_the_endpoints_of_its_role() {
    let mut cluster = role_cluster();
    cluster.start_daemon("h1");
    for role in Role::ALL {
        for endpoint in endpoint::ALL {
            let subject = names::api_subject(endpoint, Some("h1")).unwrap();
            let fate = raw_request(&cluster, role.as_str(), &subject, "{}");
            let allowed = role.covers().contains(&endpoint.role);
            let expected = if allowed {
                Fate::Answered
            } else {
                Fate::Refused
            };
            assert_eq!(fate, expected, "{role} calling {subject}");
        }
    }
}

#[test]
fn a_refusal_reaches_the_cli_as_permission_denied_within_a_second() {
    let mut cluster = role_cluster();
    cluster.start_daemon("h1");
    cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", "keep"]);
    let (out, took) = cli_as(&cluster, "viewer", &["rm", "keep"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("permission denied on sandbus.api.operator.component.remove"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Nothing changed: the component is still there.
    let listed = cli_ok_as(&cluster, "viewer", &["ls", "--json"]);
    assert!(listed.contains("\"keep\""), "{listed}");
    // A viewer's CLI on the default inbox is told which prefix to use.
    let started = Instant::now();
    let out = cluster
        .command(&["ls", "--user", "viewer", "--password", &password("viewer")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("permission denied on _INBOX."), "{stderr}");
    assert!(stderr.contains("--inbox-prefix"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A publisher may not list; an operator may do what a viewer does.
    let (out, _) = cli_as(&cluster, "publisher", &["ls"]);
    assert_eq!(out.status.code(), Some(6));
    cli_ok_as(&cluster, "operator", &["ls"]);
}

#[test]
fn no_person_reaches_jetstream_or_forges_a_host_event() {
    let mut cluster = role_cluster();
    cluster.start_daemon("h1");
    let forged = serde_json::json!({
        "specversion": "1.0", "id": "forged-1", "source": "/sandbus/hosts/h1",
        "type": "sandbus.lease.released", "data": { "held_ms": 86_400_000 }
    })
    .to_string();
    for role in ["viewer", "publisher", "operator"] {
        for subject in [
            "$JS.API.STREAM.PURGE.SANDBUS_DEAD_LETTERS",
            "$JS.API.STREAM.DELETE.SANDBUS_EVENTS",
            "$JS.API.CONSUMER.CREATE.SANDBUS_EVENTS",
            "$JS.API.CONSUMER.MSG.NEXT.SANDBUS_EVENTS.sandbus-listener-billing",
            "$KV.sandbus-kv.billing.total/acme",
            "$KV.sandbus-manifests.component.billing",
            "$O.sandbus-components.M.x",
            "events.sandbus.lease.released",
            "events.sandbus.metering",
            "sandbus.run.r-1.report",
            "sandbus.dead-letter.billing",
        ] {
            assert!(
                raw_publish(&cluster, role, subject, &forged),
                "{role} could publish on {subject}"
            );
        }
    }
    // The forged host event is refused through the API too, for everyone.
    for role in ["publisher", "operator"] {
        let (out, _) = cli_as(
            &cluster,
            role,
            &[
                "publish",
                "sandbus.lease.released",
                "--data",
                r#"{"held_ms":86400000}"#,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{role}");
        let subject = names::api_subject(
            sandbus::api::Endpoint::find(endpoint::PUBLISH).unwrap(),
            None,
        )
        .unwrap();
        let body = format!(r#"{{"event":{forged}}}"#);
        assert_eq!(
            raw_request(&cluster, role, &subject, &body),
            Fate::Answered,
            "{role}: the daemon answers (with a refusal)"
        );
    }
    // A viewer publishes no event at all; publishers and operators publish theirs straight
    // onto the stream (see `a_publisher_publishes_a_file_straight_onto_the_stream`).
    assert!(raw_publish(&cluster, "viewer", "events.vm.started", "{}"));
    cli_ok_as(
        &cluster,
        "publisher",
        &["publish", "vm.started", "--data", "{}"],
    );
    // Nor through service discovery, which answers with the daemon's rights.
    for role in ["viewer", "publisher", "operator"] {
        assert!(
            raw_publish(&cluster, role, "$SRV.PING.sandbus", ""),
            "{role}"
        );
    }
    // Not one host event reached the stream but the daemon's own.
    let forged_seen: Vec<Value> = cluster
        .events("sandbus.>")
        .into_iter()
        .filter(|e| e["type"] == "sandbus.lease.released")
        .collect();
    assert!(forged_seen.is_empty(), "{forged_seen:?}");
}

/// Publishes `body` on `subject` as `role`'s user with the reply subject `reply`, raw.
fn publish_with_reply(cluster: &Cluster, role: &str, subject: &str, reply: &str, body: &str) {
    let options = NatsOptions {
        url: Some(cluster.nats.url()),
        user: Some(role.to_owned()),
        password: Some(password(role)),
        inbox_prefix: PermissionRole::parse(role)
            .ok()
            .map(|r| r.default_inbox_prefix()),
        ..Default::default()
    };
    let (subject, reply, body) = (subject.to_owned(), reply.to_owned(), body.to_owned());
    cluster.rt.block_on(async move {
        let (client, _) = sandbus::bus::connect_client(&options).await.unwrap();
        client
            .publish_with_reply(subject, reply, body.into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
}

#[test]
fn a_daemon_never_answers_onto_a_subject_a_requester_picked() {
    let mut cluster = role_cluster();
    cluster.start_daemon("h1");
    cli_ok_as(
        &cluster,
        "publisher",
        &["publish", "vm.started", "--data", "{}"],
    );
    let stored = cluster.events(">").len();
    assert!(stored >= 2, "host started and vm.started");
    // A viewer's (bad) request whose reply subject is a JetStream call, a bucket key or a
    // host event: the daemon's answer would be written there with its rights.
    for reply in [
        "$JS.API.STREAM.PURGE.SANDBUS_EVENTS",
        "$JS.API.STREAM.DELETE.SANDBUS_DEAD_LETTERS",
        "$KV.sandbus-kv.billing.total/acme",
        "events.sandbus.lease.released",
    ] {
        for body in ["not json", "{}"] {
            publish_with_reply(
                &cluster,
                "viewer",
                "sandbus.api.viewer.listener.status",
                reply,
                body,
            );
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        cluster.events(">").len(),
        stored,
        "nothing purged, nothing added"
    );
    assert_eq!(cluster.kv_get("billing", "total/acme"), None);
    let client = cluster.connect();
    let dead_letters = cluster.rt.block_on(async move {
        async_nats::jetstream::new(client)
            .get_stream(names::DEAD_LETTER_STREAM)
            .await
            .is_ok()
    });
    assert!(dead_letters, "the dead-letter stream is still there");
    // The daemon still answers requests that come with an inbox.
    cli_ok_as(&cluster, "viewer", &["status"]);
}

#[test]
fn a_daemon_does_its_whole_job_under_its_permissions() {
    let mut cluster = role_cluster();
    let devices = write(
        &cluster,
        "devices.toml",
        br#"
[[device]]
id = "board-1"
vendor_id = 0x1209
product_id = 0x0001
serial = "SB-0001"

[device.loopback]
out = 0x01
in = 0x81
"#,
    );
    cluster.start_daemon_with("h1", &["--simulate", &devices]);
    // The operator sets the lab up.
    cli_ok_as(
        &cluster,
        "operator",
        &[
            "upload",
            &guest("billing-listener"),
            "--name",
            "billing",
            "--grant",
            "publish=events.billing.>",
            "--limit",
            "timeout=10s",
        ],
    );
    cli_ok_as(
        &cluster,
        "operator",
        &["subscribe", "billing", "--events", "vm.*"],
    );
    cli_ok_as(
        &cluster,
        "operator",
        &["upload", &guest("usb-smoke"), "--name", "smoke"],
    );
    let hook = write(&cluster, "allow.wasm", &fixed_hook("allow"));
    cli_ok_as(&cluster, "operator", &["upload", &hook, "--name", "gate"]);
    cli_ok_as(
        &cluster,
        "operator",
        &["hook", "add", "gate", "--point", "vm.pre-create"],
    );
    cluster.wait_for_component("h1", "billing", 1);
    cluster.wait_for_component("h1", "smoke", 1);
    cluster.wait_for_component("h1", "gate", 1);
    // The publisher publishes, through the API and straight onto the stream.
    cli_ok_as(
        &cluster,
        "publisher",
        &[
            "publish",
            "vm.started",
            "--id",
            "started-i-1",
            "--data",
            r#"{"tenant":"acme","instance":"i-1"}"#,
        ],
    );
    let stop = vm_event("stopped", "acme", "i-1", 4_000_000_000);
    let file = write(&cluster, "stop.jsonl", stop.to_string().as_bytes());
    cli_ok_as(&cluster, "publisher", &["publish", "--file", &file]);
    let (out, _) = cli_as(
        &cluster,
        "publisher",
        &["hook", "call", "vm.pre-create", "--data", "{}"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon billed it: read as the operator, through the API.
    cluster.wait("acme billed", |c| {
        let (out, _) = cli_as(c, "operator", &["kv", "get", "billing", "total/acme"]);
        out.status.success()
    });
    // A run on the board, followed to its report.
    let (out, _) = cli_as(
        &cluster,
        "operator",
        &[
            "run",
            "smoke",
            "--device",
            "1209:0001",
            "--arg",
            "vendor=1209",
            "--arg",
            "product=0001",
            "--follow",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("report: pass"), "{stdout}");
    // The viewer sees it all.
    let events = cli_ok_as(&cluster, "viewer", &["events", "--json"]);
    for ty in [
        "vm.started",
        "vm.stopped",
        "billing.usage",
        "sandbus.lease.released",
    ] {
        assert!(
            events.contains(&format!("\"type\":\"{ty}\"")),
            "{ty} in {events}"
        );
    }
    let runs = cli_ok_as(&cluster, "viewer", &["runs", "--json"]);
    let runs: Value = serde_json::from_str(&runs).unwrap();
    let run = runs[0]["id"].as_str().unwrap().to_owned();
    let log = cli_ok_as(&cluster, "viewer", &["logs", &run]);
    assert!(log.contains("report: pass"), "{log}");
    cli_ok_as(&cluster, "viewer", &["status", "billing"]);
    cli_ok_as(&cluster, "viewer", &["devices"]);
    // And nothing the daemon did was refused.
    let server_log = cluster.nats.log();
    let refused: Vec<&str> = server_log
        .lines()
        .filter(|l| l.contains("Violation") && l.contains("user:daemon"))
        .collect();
    assert!(refused.is_empty(), "{}", refused.join("\n"));
    assert!(
        !cluster.daemon_log("h1").contains("NATS refused"),
        "{}",
        cluster.daemon_log("h1")
    );
}

/// Publishes `body` on `subject` through JetStream as `role`'s user, with `msg_id` as its
/// `Nats-Msg-Id`, raw (no CLI, no client-side checks); whether the stream stored it.
fn raw_event(cluster: &Cluster, role: &str, subject: &str, msg_id: &str, body: &str) -> bool {
    let options = NatsOptions {
        url: Some(cluster.nats.url()),
        user: Some(role.to_owned()),
        password: Some(password(role)),
        inbox_prefix: PermissionRole::parse(role)
            .ok()
            .map(|r| r.default_inbox_prefix()),
        ..Default::default()
    };
    let (subject, body) = (subject.to_owned(), body.to_owned());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    cluster.rt.block_on(async move {
        let (client, _) = sandbus::bus::connect_client(&options).await.unwrap();
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client);
        match js.publish_with_headers(subject, headers, body.into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    })
}

#[test]
fn a_publisher_publishes_a_file_straight_onto_the_stream_but_never_a_host_event() {
    let mut cluster = role_cluster();
    cluster.start_daemon("h1");
    let hosts = cluster.cli_json(&["hosts"]);
    let started_at = hosts[0]["started_at"].as_str().unwrap().to_owned();
    // Stopped: the file goes with no daemon running.
    assert_eq!(cluster.terminate_daemon("h1"), Some(0));
    let (events, _) = billing_scenario(20);
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    let file = write(&cluster, "bill.jsonl", lines.join("\n").as_bytes());
    let out = cli_ok_as(&cluster, "publisher", &["publish", "--file", &file]);
    assert!(out.ends_with("40 events, 0 duplicates\n"), "{out}");
    let out = cli_ok_as(&cluster, "operator", &["publish", "--file", &file]);
    assert!(out.ends_with("40 events, 40 duplicates\n"), "{out}");
    // Host events stay the daemons': refused by the CLI's check, and by the server raw.
    let forged = serde_json::json!({
        "specversion": "1.0", "id": "forged-2", "source": "/x",
        "type": "sandbus.metering", "data": {}
    })
    .to_string();
    let host_file = write(&cluster, "host.jsonl", forged.as_bytes());
    let (out, _) = cli_as(&cluster, "publisher", &["publish", "--file", &host_file]);
    assert_eq!(out.status.code(), Some(2));
    for subject in ["events.sandbus.metering", "events.sandbus"] {
        assert!(
            raw_publish(&cluster, "publisher", subject, &forged),
            "{subject}"
        );
        assert!(
            !raw_event(&cluster, "publisher", subject, "forged-2", &forged),
            "{subject}"
        );
    }
    // A raw publish may pick any Nats-Msg-Id: this one is the key of the daemon's next
    // `sandbus.host.stopped`. The daemon does not take the server's word that it is stored.
    cluster.start_daemon("h1");
    let hosts = cluster.cli_json(&["hosts"]);
    let started_at_2 = hosts[0]["started_at"].as_str().unwrap().to_owned();
    assert_ne!(started_at, started_at_2);
    let claimed = format!("sandbus.host.stopped/h1/{started_at_2}");
    let key = sandbus::event::dedup_key(&names::host_source("h1"), &claimed);
    let squat = serde_json::json!({
        "specversion": "1.0", "id": "squat", "source": "/x", "type": "vm.noise", "data": {}
    })
    .to_string();
    assert!(raw_event(
        &cluster,
        "publisher",
        "events.vm.noise",
        &key,
        &squat
    ));
    assert_eq!(cluster.terminate_daemon("h1"), Some(0));
    cluster.start_daemon("h1");
    let stopped: Vec<Value> = cluster
        .events("sandbus.host.stopped")
        .into_iter()
        .filter(|e| e["id"] == claimed.as_str())
        .collect();
    assert_eq!(
        stopped.len(),
        1,
        "the daemon's event was stored: {stopped:?}"
    );
    assert!(
        cluster
            .daemon_log("h1")
            .contains("claimed this event's Nats-Msg-Id")
    );
}
