//! The compile budget end to end, on real daemons: on a daemon whose `[sandbox]`
//! configuration gives a compile little memory, a component that needs more is recorded (an
//! upload compiles nothing) but fails to load, which `sandbus ls` shows with the reason and
//! `upload --wait` reports (exit code 1, the host and the reason), while a real guest still
//! uploads and runs; and a component another daemon runs fails to load on such a daemon,
//! with the reason under `not_ready` in `sandbus hosts`.

use serde_json::{Value, json};

use super::cluster::{Cluster, billing_listener, billing_scenario, billing_totals, guest, write};
use super::support::straight_line_listener;

/// A daemon configuration with a compile budget of 128 MiB. Compiled components are not
/// cached, so every component goes through the compile worker (the harness otherwise shares
/// one cache between all daemons).
const STRICT: &str = r#"
[sandbox]
cache = false
compile_memory = "128MiB"
compile_timeout = "60s"
"#;

/// What a refusal over the memory budget says.
const OVER_MEMORY: &str = "needed more than the compile budget of 128.0 MiB of memory";

/// Writes a component of 300,000 straight-line adds (about 900 KB; compiling it needs
/// about 324 MiB); its path.
fn hostile(cluster: &Cluster) -> String {
    write(cluster, "hostile.wasm", &straight_line_listener(300_000))
}

/// Starts daemon `id` with the strict configuration.
fn start_strict(cluster: &mut Cluster, id: &str) {
    let config = write(cluster, "strict.toml", STRICT.as_bytes());
    cluster.start_daemon_with(id, &["--config", &config]);
}

/// Host `id` in `sandbus hosts --json`.
fn host(cluster: &Cluster, id: &str) -> Value {
    cluster
        .cli_json(&["hosts"])
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn a_component_over_the_compile_budget_is_shown_failed_with_the_reason_and_a_real_guest_still_runs()
{
    let mut cluster = Cluster::new();
    start_strict(&mut cluster, "strict");
    let file = hostile(&cluster);

    let out = cluster.cli(&["upload", &file, "--name", "hostile", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed on strict"), "{stderr}");
    assert!(stderr.contains(OVER_MEMORY), "{stderr}");
    // Recorded, and shown failed where it failed, with why.
    let ls = cluster.cli_json(&["ls"]);
    let hostile = &ls[0];
    assert_eq!(hostile["name"], "hostile", "{ls}");
    assert_eq!(hostile["hosts"]["ready"], json!([]), "{ls}");
    assert_eq!(hostile["hosts"]["failed"][0]["host"], "strict", "{ls}");
    assert!(
        hostile["hosts"]["failed"][0]["reason"]
            .as_str()
            .is_some_and(|why| why.contains(OVER_MEMORY)),
        "{ls}"
    );
    let text = cluster.cli_ok(&["ls"]);
    assert!(text.contains("hosts: 0/1 ready, 1 failed"), "{text}");
    assert!(text.contains("failed on strict: "), "{text}");
    cluster.cli_ok(&["rm", "hostile"]);

    // A real guest compiles in the same budget and runs.
    billing_listener(&cluster, "billing");
    cluster.wait_for_component("strict", "billing", 1);
    let (events, expected) = billing_scenario(3);
    cluster.publish_events(&events);
    cluster.wait("the billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    let strict = host(&cluster, "strict");
    assert!(
        strict.get("not_ready").is_none(),
        "nothing is left failed: {strict}"
    );
}

#[test]
fn a_component_over_the_compile_budget_fails_to_load_with_the_reason() {
    let mut cluster = Cluster::new();
    // A daemon with the default budget (a minute, 2 GiB) accepts it.
    cluster.start_daemon("roomy");
    cluster.cli_ok(&["upload", &hostile(&cluster), "--name", "hostile"]);
    cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", "noop"]);
    cluster.wait_for_component("roomy", "hostile", 1);

    // A daemon with a smaller budget loads the rest and says why not this one.
    start_strict(&mut cluster, "strict");
    cluster.wait_for_component("strict", "noop", 1);
    cluster.wait("the strict host to report the failed load", |c| {
        host(c, "strict")["not_ready"]["hostile"]["reason"]
            .as_str()
            .is_some_and(|why| why.contains(OVER_MEMORY))
    });
    let strict = host(&cluster, "strict");
    assert!(strict["components"].get("hostile").is_none(), "{strict}");
    assert_eq!(host(&cluster, "roomy")["components"]["hostile"], 1);
}
