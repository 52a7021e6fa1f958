//! The control API and the daemon's life: refusals that change nothing, service discovery,
//! cast requests, component versions and rollback, graceful shutdown, authentication, and
//! `sandbus up`.

use std::time::Duration;

use serde_json::Value;

use super::cluster::{Cluster, guest, write};
use super::support::nats::NatsServer;

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

/// The types of the stored events matching `pattern`, in stream order (`sandbus events`).
fn event_types(cluster: &Cluster, pattern: &str) -> Vec<String> {
    cluster
        .cli_ok(&["events", pattern, "--json"])
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_input_is_refused_with_a_reason_and_changes_nothing() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    // Waits until the host runs it: what `ls` shows must not change while the refusals below
    // are tried.
    cluster.cli_ok(&[
        "upload",
        &guest("noop-listener"),
        "--name",
        "quiet",
        "--wait",
    ]);
    let before = cluster.cli_json(&["ls"]);

    let text = write(&cluster, "notes.wasm", b"just text");
    let out = cluster.cli(&["upload", &text, "--name", "x"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("not a WebAssembly file"),
        "{}",
        stderr(&out)
    );

    let core = write(&cluster, "core.wasm", &wat::parse_str("(module)").unwrap());
    let out = cluster.cli(&["upload", &core, "--name", "x"]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("core"), "{}", stderr(&out));

    // A listener as componentize-js makes it by default (with `wasi:http`, which is
    // provided), also asking for standard interfaces: `wasi:logging` (provided), `wasi:config`
    // at an interface this host lacks and `wasi:keyvalue` at a version it lacks: every missing
    // import is named in the one refusal, with its usual fix.
    let wants_more = write(
        &cluster,
        "wants-more.wasm",
        &wat::parse_str(
            r#"(component
                 (import "wasi:http/types@0.2.10" (instance))
                 (import "wasi:logging/logging" (instance))
                 (import "wasi:keyvalue/store@0.2.1" (instance))
                 (import "wasi:config/runtime@0.2.0-draft" (instance))
                 (import "sandbus:host/log@0.1.0" (instance))
                 (instance $h)
                 (export "sandbus:host/handler@0.1.0" (instance $h)))"#,
        )
        .unwrap(),
    );
    let out = cluster.cli(&["upload", &wants_more, "--name", "x"]);
    assert_eq!(code(&out), Some(2));
    let refusal = stderr(&out);
    for named in [
        "2 interfaces",
        "`wasi:keyvalue/store@0.2.1`: `wasi:keyvalue` is provided at 0.2.0-draft",
        "`wasi:config/runtime@0.2.0-draft`: of `wasi:config`, only store is provided",
        "build against wasi:keyvalue@0.2.0-draft, vendored in sandbus's wit/deps/",
    ] {
        assert!(refusal.contains(named), "{named} is not in: {refusal}");
    }
    assert!(!refusal.contains("`sandbus:host/log"), "{refusal}");
    assert!(!refusal.contains("`wasi:http"), "{refusal}");
    assert!(!refusal.contains("`wasi:logging"), "{refusal}");

    let out = cluster.cli(&[
        "upload",
        &guest("self-check"),
        "--name",
        "x",
        "--world",
        "listener",
    ]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("script"), "{}", stderr(&out));

    let out = cluster.cli(&["upload", &guest("noop-listener"), "--name", "bad name"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));

    // Refused by the daemon after the CLI stored the bytes: they are removed again.
    let echo = std::fs::read(guest("echo-listener")).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&echo));
    let out = cluster.cli(&[
        "upload",
        &guest("echo-listener"),
        "--name",
        "y",
        "--limit",
        "memory=lots",
    ]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("memory"), "{}", stderr(&out));
    let client = cluster.connect();
    let stored = cluster.rt.block_on(async move {
        let js = async_nats::jetstream::new(client);
        let objects = js.get_object_store("sandbus-components").await.unwrap();
        objects
            .info(digest.as_str())
            .await
            .is_ok_and(|info| !info.deleted)
    });
    assert!(
        !stored,
        "the refused upload's bytes are gone from the object store"
    );

    let out = cluster.cli(&["subscribe", "quiet", "--events", "vm..x"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("not a valid event pattern"),
        "{}",
        stderr(&out)
    );

    cluster.cli_ok(&["upload", &guest("self-check"), "--name", "checker"]);
    let out = cluster.cli(&["subscribe", "checker", "--events", "vm.*"]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("not a listener"), "{}", stderr(&out));
    cluster.cli_ok(&["rm", "checker"]);

    let out = cluster.cli(&["subscribe", "ghost", "--events", "vm.*"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("no component named `ghost`"),
        "{}",
        stderr(&out)
    );

    let out = cluster.cli(&["publish", "vm.started", "--data", "{nope"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("--data is not JSON"),
        "{}",
        stderr(&out)
    );

    // Nothing of the above left a trace.
    assert_eq!(cluster.cli_json(&["ls"]), before);
    assert_eq!(cluster.cli_json(&["status"]), serde_json::json!([]));
    assert_eq!(cluster.cli_ok(&["events", "vm.>"]), "");
}

#[test]
fn control_api_is_a_discoverable_nats_service_with_call_and_cast() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let client = cluster.connect();
    let (ping, info, stats) = cluster.rt.block_on(async move {
        let ping = client
            .request("$SRV.PING.sandbus", "".into())
            .await
            .unwrap();
        let info = client
            .request("$SRV.INFO.sandbus", "".into())
            .await
            .unwrap();
        let stats = client
            .request("$SRV.STATS.sandbus", "".into())
            .await
            .unwrap();
        (ping, info, stats)
    });
    let ping: Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(ping["name"], "sandbus");
    assert_eq!(ping["metadata"]["host"], "h1");
    service_api::check_identity(&ping, "io.nats.micro.v1.ping_response");
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    service_api::check_info(&info);
    assert_eq!(info["metadata"]["host"], "h1");
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    for subject in [
        "sandbus.api.operator.component.upload",
        "sandbus.api.operator.listener.subscribe",
        "sandbus.api.viewer.host.list",
        "sandbus.api.publisher.event.publish",
        "sandbus.api.operator.host.h1.run.start",
    ] {
        assert!(subjects.contains(&subject), "{subjects:?}");
    }
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    assert!(stats["endpoints"].as_array().unwrap().len() >= 9);
    service_api::check_stats(&stats);
    assert_eq!(stats["metadata"]["host"], "h1", "{stats}");

    // A cast returns at once; its result arrives as an event whose subject is the request id.
    let accepted = cluster.cli_json(&[
        "upload",
        &guest("noop-listener"),
        "--name",
        "quiet",
        "--cast",
    ]);
    assert_eq!(accepted["accepted"], true);
    let request_id = accepted["request_id"].as_str().unwrap().to_owned();
    cluster.wait("the cast's result event", |c| {
        c.cli_ok(&["events", "sandbus.request.finished", "--json"])
            .contains(&request_id)
    });
    let finished: Value = serde_json::from_str(
        cluster
            .cli_ok(&["events", "sandbus.request.finished", "--json"])
            .lines()
            .find(|l| l.contains(&request_id))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(finished["subject"], request_id);
    assert_eq!(finished["data"]["ok"], true);
    assert_eq!(finished["data"]["result"]["manifest"]["name"], "quiet");

    // A failing cast reports its error the same way.
    let accepted = cluster.cli_json(&["rm", "ghost", "--cast"]);
    let failed_id = accepted["request_id"].as_str().unwrap().to_owned();
    cluster.wait("the failed cast's event", |c| {
        c.cli_ok(&["events", "sandbus.request.finished", "--json"])
            .contains(&failed_id)
    });
    let events = cluster.cli_ok(&["events", "sandbus.request.finished", "--json"]);
    let failed: Value =
        serde_json::from_str(events.lines().find(|l| l.contains(&failed_id)).unwrap()).unwrap();
    assert_eq!(failed["data"]["ok"], false);
    assert_eq!(failed["data"]["error"]["kind"], "not-found");

    // Queries are calls only.
    let out = cluster.cli(&["ls", "--json"]);
    assert!(out.status.success());
}

#[test]
fn versions_rollback_and_removal_are_recorded_and_announced() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let first = cluster.cli_json(&["upload", &guest("tag-listener-v1"), "--name", "tagger"]);
    assert_eq!(first["manifest"]["version"], 1);
    let again = cluster.cli_json(&["upload", &guest("tag-listener-v1"), "--name", "tagger"]);
    assert_eq!(
        again["unchanged"], true,
        "same bytes, same settings: no new version"
    );
    let second = cluster.cli_json(&["upload", &guest("tag-listener-v2"), "--name", "tagger"]);
    assert_eq!(second["manifest"]["version"], 2);
    cluster.wait_for_component("h1", "tagger", 2);
    let rolled = cluster.cli_json(&["rollback", "tagger"]);
    assert_eq!(rolled["version"], 3);
    assert_eq!(rolled["restored_from"], 1);
    assert_eq!(rolled["digest"], first["manifest"]["digest"]);
    cluster.wait_for_component("h1", "tagger", 3);
    let out = cluster.cli(&["rollback", "tagger"]);
    assert_eq!(out.status.code(), Some(1), "nothing before version 1");
    cluster.cli_ok(&["subscribe", "tagger", "--events", "order.*"]);
    let out = cluster.cli(&["rm", "tagger"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unsubscribe"), "{}", stderr(&out));
    cluster.cli_ok(&["unsubscribe", "tagger"]);
    cluster.cli_ok(&["rm", "tagger"]);
    assert_eq!(cluster.cli_json(&["ls"]), serde_json::json!([]));
    cluster.wait("unloaded", |c| {
        let hosts = c.cli_json(&["hosts"]);
        hosts[0]["components"]
            .as_object()
            .is_some_and(|m| m.is_empty())
    });
    let types = event_types(&cluster, "sandbus.component.*");
    assert_eq!(
        types,
        [
            "sandbus.component.added",
            "sandbus.component.added",
            "sandbus.component.added",
            "sandbus.component.removed"
        ]
    );
}

#[test]
fn daemon_stops_gracefully_on_sigterm() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.start_daemon("h2");
    assert_eq!(cluster.terminate_daemon("h1"), Some(0));
    let hosts = cluster.cli_json(&["hosts"]);
    let ids: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["h2"],
        "a clean stop removes the presence entry at once"
    );
    let types = event_types(&cluster, "sandbus.host.*");
    assert_eq!(
        types,
        [
            "sandbus.host.started",
            "sandbus.host.started",
            "sandbus.host.stopped"
        ]
    );
    let log = cluster.daemon_log("h1");
    assert!(log.contains("SIGTERM"), "{log}");
}

#[test]
fn daemon_stops_within_its_bound_even_when_nats_is_gone() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.nats.stop();
    let started = std::time::Instant::now();
    // Grace 5 s (the harness) + 15 s margin: the stop must not wait on the bus forever.
    assert_eq!(cluster.terminate_daemon("h1"), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert!(cluster.daemon_log("h1").contains("stopped"));
}

#[test]
fn daemon_and_cli_authenticate_with_user_and_password_or_token() {
    let server = NatsServer::start_with(&["--user", "lab", "--pass", "s3cret"]);
    let mut cluster = Cluster::with_server(
        server,
        vec![
            "--user".into(),
            "lab".into(),
            "--password".into(),
            "s3cret".into(),
        ],
    );
    cluster.start_daemon("h1");
    let wrong = cluster
        .command(&["hosts", "--user", "lab", "--password", "nope"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(5), "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("cannot connect"),
        "{}",
        stderr(&wrong)
    );

    let server = NatsServer::start_with(&["--auth", "t0ken"]);
    let mut cluster = Cluster::with_server(server, vec!["--token".into(), "t0ken".into()]);
    cluster.start_daemon("h2");
    let anonymous = cluster.command(&["hosts"]).output().unwrap();
    assert_eq!(anonymous.status.code(), Some(5));
}

#[test]
fn nats_takes_a_comma_separated_server_list_and_skips_a_dead_server() {
    let mut cluster = Cluster::new();
    // A loopback port nothing listens on (bound, read, released).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let list = format!("nats://127.0.0.1:{dead}, {}", cluster.nats.url());
    cluster.start_daemon_with("h1", &["--nats", &list]);
    let hosts = cluster.cli_json(&["hosts", "--nats", &list]);
    assert!(
        hosts.as_array().unwrap().iter().any(|h| h["id"] == "h1"),
        "{hosts}"
    );
    // A list with a stray comma or a bad URL is refused, saying what is wrong, by the CLI and
    // the daemon alike.
    let empty_entry = format!("{},,nats://127.0.0.1:{dead}", cluster.nats.url());
    let out = cluster
        .command(&["hosts", "--nats", &empty_entry])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("empty entry (entry 2 of 3)"),
        "{}",
        stderr(&out)
    );
    let out = cluster
        .command(&[
            "daemon",
            "--check-config",
            "--nats",
            "nats://ok:4222,http://no:80",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`http://no:80` in the NATS server list"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn up_runs_the_daemon_with_a_private_nats_server_when_none_answers() {
    let dir = tempfile::tempdir().unwrap();
    let already_running = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:4222".parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_ok();
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_sandbus"))
        .args([
            "up",
            "--host-id",
            "local",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .env_remove("SANDBUS_NATS_URL")
        .env("SANDBUS_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("up.log")).unwrap())
        .spawn()
        .unwrap();
    let hosts = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sandbus"))
            .args(["hosts", "--json", "--nats", "nats://127.0.0.1:4222"])
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = hosts();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"local\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "up did not come up: {}",
            std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = up.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = up.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    if already_running {
        assert!(log.contains("already running"), "{log}");
    } else {
        assert!(log.contains("started a private nats-server"), "{log}");
        assert!(
            dir.path().join("nats").is_dir(),
            "JetStream stores in the data directory"
        );
        assert!(log.contains("stopped the private nats-server"), "{log}");
        assert!(
            std::net::TcpStream::connect_timeout(
                &"127.0.0.1:4222".parse().unwrap(),
                Duration::from_millis(300)
            )
            .is_err(),
            "the private server is gone"
        );
    }
}

#[test]
fn components_larger_than_the_servers_max_payload_upload_and_run() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "max_payload: 65536\n").unwrap();
    let server = NatsServer::start_with(&["-c", config.path().to_str().unwrap()]);
    let mut cluster = Cluster::with_server(server, Vec::new());
    cluster.start_daemon("h1");
    let size = std::fs::metadata(guest("billing-listener")).unwrap().len();
    assert!(
        size > 65_536,
        "the fixture must be larger than the max payload ({size} B)"
    );
    let uploaded = cluster.cli_json(&[
        "upload",
        &guest("billing-listener"),
        "--name",
        "billing",
        "--grant",
        "publish=events.billing.>",
    ]);
    assert_eq!(uploaded["manifest"]["size"], size);
    cluster.wait_for_component("h1", "billing", 1);
    cluster.cli_ok(&["subscribe", "billing", "--events", "vm.*"]);
    let (events, expected) = super::cluster::billing_scenario(3);
    cluster.publish_events(&events);
    cluster.wait("billing totals", |c| {
        super::cluster::billing_totals(c, "billing") == expected
    });
}

#[test]
fn published_events_are_deduplicated_by_id_and_followed_live() {
    use std::io::BufRead as _;
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let first = cluster.cli_json(&[
        "publish",
        "order.placed",
        "--data",
        r#"{"n":1}"#,
        "--id",
        "o-1",
    ]);
    assert_eq!(first["duplicate"], false);
    let again = cluster.cli_json(&[
        "publish",
        "order.placed",
        "--data",
        r#"{"n":1}"#,
        "--id",
        "o-1",
    ]);
    assert_eq!(
        again["duplicate"], true,
        "the same id within the window is stored once"
    );
    assert_eq!(again["sequence"], first["sequence"]);
    // --follow --all: the stored events, then new ones as they come.
    let mut follow = cluster
        .command(&["events", "order.*", "--follow", "--all", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["id"], "o-1");
    assert_eq!(event["data"]["n"], 1);
    cluster.cli_ok(&[
        "publish",
        "order.shipped",
        "--data",
        r#"{"n":2}"#,
        "--id",
        "o-2",
    ]);
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains("\"o-2\""), "{line}");
    let _ = follow.kill();
    let _ = follow.wait();
    let stored: Vec<String> = cluster
        .cli_ok(&["events", "order.*", "--json"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
}

#[test]
fn stats_count_each_endpoints_own_requests_errors_and_time() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    for _ in 0..3 {
        cluster.cli_ok(&["ls"]);
    }
    let client = cluster.connect();
    let stats = cluster.rt.block_on(async move {
        // Refused: the body is not a request.
        let refused = client
            .request("sandbus.api.viewer.run.get", "not json".into())
            .await
            .unwrap();
        assert!(
            refused
                .headers
                .as_ref()
                .is_some_and(|h| h.get("Nats-Service-Error-Code").is_some()),
            "{refused:?}"
        );
        // A request whose reply subject is not an inbox is dropped, and counted as such.
        client
            .publish_with_reply(
                "sandbus.api.viewer.component.list",
                "not.an.inbox",
                "{}".into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        client
            .request("$SRV.STATS.sandbus", "".into())
            .await
            .unwrap()
    });
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    service_api::check_stats(&stats);
    let endpoint = |name: &str| -> Value {
        stats["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no endpoint {name}: {stats}"))
            .clone()
    };
    let list = endpoint("component-list");
    assert_eq!(list["num_requests"], 3, "{list}");
    assert_eq!(list["num_errors"], 0, "{list}");
    assert_eq!(list["last_error"], "", "{list}");
    assert_eq!(list["data"]["dropped"], 1, "{list}");
    assert_eq!(list["data"]["busy"], 0, "{list}");
    let took = list["processing_time"].as_u64().unwrap();
    assert!(took > 0, "{list}");
    assert_eq!(list["average_processing_time"].as_u64().unwrap(), took / 3);
    let get = endpoint("run-get");
    assert_eq!(get["num_requests"], 1, "{get}");
    assert_eq!(get["num_errors"], 1, "{get}");
    assert!(
        get["last_error"].as_str().unwrap().starts_with("400:"),
        "{get}"
    );
    // Endpoints nobody called count nothing: the counters are each endpoint's own.
    assert_eq!(endpoint("listener-subscribe")["num_requests"], 0);
}

/// Checks of discovery replies against the NATS service API's schemas (`io.nats.micro.v1`,
/// ADR-32): required fields, their types and patterns.
mod service_api {
    use serde_json::Value;

    fn is_name(v: &Value) -> bool {
        v.as_str().is_some_and(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    }

    fn is_semver(v: &Value) -> bool {
        v.as_str().is_some_and(|s| {
            let core = s.split(['-', '+']).next().unwrap_or_default();
            let parts: Vec<&str> = core.split('.').collect();
            parts.len() == 3
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.chars().all(|c| c.is_ascii_digit())
                        && (p.len() == 1 || !p.starts_with('0'))
                })
        })
    }

    fn is_string_map(v: &Value) -> bool {
        v.is_null()
            || v.as_object()
                .is_some_and(|m| m.values().all(Value::is_string))
    }

    /// `type`, `name`, `id`, `version` and `metadata`, as every reply has them.
    pub fn check_identity(reply: &Value, kind: &str) {
        assert_eq!(reply["type"], kind, "{reply}");
        assert!(is_name(&reply["name"]), "name: {reply}");
        assert!(
            reply["id"].as_str().is_some_and(|s| !s.is_empty()),
            "id: {reply}"
        );
        assert!(is_semver(&reply["version"]), "version: {reply}");
        assert!(
            reply.get("metadata").is_some() && is_string_map(&reply["metadata"]),
            "metadata: {reply}"
        );
    }

    pub fn check_info(info: &Value) {
        check_identity(info, "io.nats.micro.v1.info_response");
        assert!(info["description"].is_string(), "{info}");
        for e in info["endpoints"].as_array().unwrap() {
            assert!(is_name(&e["name"]), "{e}");
            assert!(e["subject"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
            assert!(is_string_map(&e["metadata"]), "{e}");
        }
    }

    pub fn check_stats(stats: &Value) {
        check_identity(stats, "io.nats.micro.v1.stats_response");
        let started = stats["started"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(started).is_ok(),
            "started {started} is not RFC 3339"
        );
        for e in stats["endpoints"].as_array().unwrap() {
            assert!(is_name(&e["name"]), "{e}");
            assert!(e["subject"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
            for field in [
                "num_requests",
                "num_errors",
                "processing_time",
                "average_processing_time",
            ] {
                assert!(e[field].is_i64(), "{field}: {e}");
            }
            assert!(e["last_error"].is_string(), "{e}");
            assert!(e.get("data").is_none_or(Value::is_object), "{e}");
        }
    }
}
