//! Uploads do not wait for compiles, on real daemons: the daemon that takes an upload checks
//! what needs no compile, records it and answers; every host compiles it in the background
//! and says so in its presence (`sandbus ls`, `sandbus hosts`); `upload --wait` waits until
//! every live host runs it. The compile is made observable rather than timed: a component
//! that takes a debug-built Cranelift seconds is seen compiling on a host, and what is
//! asserted is what holds at that moment (or once `--wait` returned).
//!
//! (Stopping the compile worker with SIGSTOP would hold a compile for as long as a test
//! likes, but the process library the daemon waits on the worker with ends its wait on a
//! stopped child, so the compile fails instead.)

use serde_json::{Value, json};

use super::cluster::{Cluster, guest, write};
use super::support::straight_line_listener;

/// Daemons that compile every component in their own worker (the harness otherwise shares
/// one compile cache between daemons, and a cached component loads at once).
const UNCACHED: &str = "[sandbox]\ncache = false\n";

/// Starts daemon `id` compiling without a cache.
fn start_uncached(cluster: &mut Cluster, id: &str) {
    let config = write(cluster, "uncached.toml", UNCACHED.as_bytes());
    cluster.start_daemon_with(id, &["--config", &config]);
}

/// A listener that takes a debug-built Cranelift seconds to compile (100,000 straight-line
/// adds, about 300 KB); its path.
fn slow_to_compile(cluster: &Cluster) -> String {
    write(cluster, "slow.wasm", &straight_line_listener(100_000))
}

/// Waits until host `id` reports version `version` of `name` compiling; its presence entry
/// and `sandbus ls --json` at that moment (`ls` read first, so a compile seen in the entry
/// afterwards was in progress when `ls` was read).
fn seen_compiling(cluster: &mut Cluster, id: &str, name: &str, version: u64) -> (Value, Value) {
    let mut seen = (Value::Null, Value::Null);
    cluster.wait(
        &format!("{id} to report {name} v{version} compiling"),
        |c| {
            let ls = listed(c, name);
            let entry = host(c, id);
            let compiling =
                entry["not_ready"][name] == json!({"state": "compiling", "version": version});
            seen = (entry, ls);
            compiling
        },
    );
    seen
}

/// Host `id` in `sandbus hosts --json`.
fn host(cluster: &Cluster, id: &str) -> Value {
    cluster
        .cli_json(&["hosts"])
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// Component `name` in `sandbus ls --json`.
fn listed(cluster: &Cluster, name: &str) -> Value {
    cluster
        .cli_json(&["ls"])
        .as_array()
        .and_then(|ls| ls.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn an_upload_is_recorded_while_hosts_compile_and_wait_returns_once_every_host_runs_it() {
    let mut cluster = Cluster::new();
    start_uncached(&mut cluster, "h1");
    start_uncached(&mut cluster, "h2");
    let file = slow_to_compile(&cluster);

    // The upload answers once the component is recorded; the hosts compile it afterwards.
    let out = cluster.cli_ok(&["upload", &file, "--name", "slow"]);
    assert!(out.contains("uploaded slow version 1"), "{out}");
    let (h2, ls) = seen_compiling(&mut cluster, "h2", "slow", 1);
    assert!(h2["components"].get("slow").is_none(), "{h2}");
    assert_eq!(ls["version"], 1, "{ls}");
    assert!(
        ls["hosts"]["compiling"]
            .as_array()
            .is_some_and(|hosts| hosts.contains(&json!("h2"))),
        "ls shows h2 compiling: {ls}"
    );
    assert_eq!(ls["hosts"]["failed"], json!([]), "{ls}");

    // A wait returns once every live host runs it, and says so.
    let out = cluster.cli(&["upload", &file, "--name", "slow", "--wait", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["unchanged"], true, "{reply}");
    assert_eq!(reply["hosts"]["ready"], json!(["h1", "h2"]), "{reply}");
    for id in ["h1", "h2"] {
        let entry = host(&cluster, id);
        assert_eq!(entry["components"]["slow"], 1, "{entry}");
        assert!(entry.get("not_ready").is_none(), "{entry}");
    }
    let text = cluster.cli_ok(&["ls"]);
    assert!(text.contains("hosts: 2/2 ready"), "{text}");
}

#[test]
fn while_a_new_version_compiles_the_old_one_keeps_answering() {
    let mut cluster = Cluster::new();
    start_uncached(&mut cluster, "h1");
    cluster.cli_ok(&[
        "upload",
        &guest("noop-listener"),
        "--name",
        "swap",
        "--wait",
    ]);
    let file = slow_to_compile(&cluster);
    cluster.cli_ok(&["upload", &file, "--name", "swap"]);

    let (h1, _) = seen_compiling(&mut cluster, "h1", "swap", 2);
    assert_eq!(h1["components"]["swap"], 1, "version 1 still runs: {h1}");
    cluster.wait_for_component("h1", "swap", 2);
}

/// A listener whose code does not validate: [`straight_line_listener`] with one of its
/// `i32.add`s turned into an `i64.add` (same size, so every section still reads).
fn invalid_code_listener() -> Vec<u8> {
    let mut bytes = straight_line_listener(16);
    // local.get 0; i32.add; local.get 0; i32.add
    let run = [0x20, 0x00, 0x6a, 0x20, 0x00, 0x6a];
    let at = bytes
        .windows(run.len())
        .position(|w| w == run)
        .expect("the adds are in the module");
    bytes[at + 2] = 0x7c;
    bytes
}

#[test]
fn code_that_would_never_compile_is_refused_at_upload_and_nothing_is_recorded() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let file = write(&cluster, "invalid.wasm", &invalid_code_listener());

    let out = cluster.cli(&["upload", &file, "--name", "invalid"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not valid WebAssembly"), "{stderr}");
    assert_eq!(cluster.cli_json(&["ls"]), json!([]));
}
