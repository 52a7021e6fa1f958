//! Extension points end to end: hooks registered with the real CLI, asked through a real
//! daemon, their answers combined under the point's policy and deadline. The quota hook
//! reads the totals the billing listener keeps and vetoes a tenant over its quota.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::{Cluster, billing_listener, billing_totals, guest, vm_event, write};
use super::support::fixed_hook;

/// `sandbus hook call POINT --data DATA --json`: the exit code and the reply.
fn call(cluster: &Cluster, point: &str, data: &str) -> (Option<i32>, Value) {
    let out = cluster.cli(&["hook", "call", point, "--data", data, "--json"]);
    let reply = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hook call printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), reply)
}

/// Uploads a WAT hook answering `answer` as `name`.
fn upload_fixed_hook(cluster: &Cluster, name: &str, answer: &str) {
    let file = write(cluster, &format!("{name}.wasm"), &fixed_hook(answer));
    cluster.cli_ok(&["upload", &file, "--name", name]);
}

#[test]
fn quota_hook_vetoes_the_tenant_over_its_quota() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    cluster.cli_ok(&[
        "upload",
        &guest("quota-hook"),
        "--name",
        "quota",
        "--grant",
        "kv-read=billing",
    ]);
    cluster.cli_ok(&["hook", "add", "quota", "--point", "vm.pre-create"]);
    cluster.cli_ok(&["kv", "set", "quota", "limit/default", "100"]);
    cluster.wait_for_component("h1", "quota", 1);
    // acme ran 150 s, globex 40 s.
    let events = vec![
        vm_event("started", "acme", "i-1", 1_800_000_000),
        vm_event("stopped", "acme", "i-1", 1_800_000_150),
        vm_event("started", "globex", "i-2", 1_800_000_000),
        vm_event("stopped", "globex", "i-2", 1_800_000_040),
    ];
    cluster.publish_events(&events);
    cluster.wait("the usage billed", |c| {
        billing_totals(c, "billing").len() == 2
    });
    let (code, reply) = call(&cluster, "vm.pre-create", r#"{"tenant":"acme"}"#);
    assert_eq!(code, Some(1), "denied: {reply}");
    assert_eq!(reply["allowed"], false);
    let reason = reply["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with("quota: ") && reason.contains("150") && reason.contains("100"),
        "{reason}"
    );
    let (code, reply) = call(&cluster, "vm.pre-create", r#"{"tenant":"globex"}"#);
    assert_eq!(code, Some(0), "allowed: {reply}");
    assert_eq!(reply["hooks"][0]["outcome"], "allow");
    // Raising acme's own limit lets it through.
    cluster.cli_ok(&["kv", "set", "quota", "limit/acme", "1000"]);
    let (code, _) = call(&cluster, "vm.pre-create", r#"{"tenant":"acme"}"#);
    assert_eq!(code, Some(0));
    // Text output names the decision and the hook.
    let text = cluster.cli(&[
        "hook",
        "call",
        "vm.pre-create",
        "--data",
        r#"{"tenant":"nobody"}"#,
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("vm.pre-create: allowed") && text.contains("quota"),
        "{text}"
    );
}

#[test]
fn failed_hooks_follow_the_point_policy_and_any_deny_wins() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    for (name, answer) in [
        ("yes", "allow"),
        ("no", "deny"),
        ("unsure", "error"),
        ("stuck", "spin"),
    ] {
        upload_fixed_hook(&cluster, name, answer);
        cluster.wait_for_component("h1", name, 1);
    }
    let point = "device.pre-lease";
    cluster.cli_ok(&["hook", "add", "yes", "--point", point]);
    cluster.cli_ok(&["hook", "add", "unsure", "--point", point]);
    cluster.cli_ok(&["hook", "add", "stuck", "--point", point]);
    cluster.cli_ok(&["hook", "policy", point, "--deadline", "300ms"]);
    // Default policy: fail-closed. The spinning hook is cut at the point's deadline.
    let started = Instant::now();
    let (code, reply) = call(&cluster, point, r#"{"tenant":"acme"}"#);
    let elapsed = started.elapsed();
    assert_eq!(code, Some(1), "{reply}");
    assert_eq!(reply["policy"], "fail-closed");
    let outcome = |reply: &Value, hook: &str| {
        reply["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["hook"] == hook)
            .map(|a| a["outcome"].as_str().unwrap().to_owned())
    };
    assert_eq!(outcome(&reply, "yes").as_deref(), Some("allow"));
    assert_eq!(outcome(&reply, "unsure").as_deref(), Some("error"));
    assert_eq!(outcome(&reply, "stuck").as_deref(), Some("timeout"));
    assert_eq!(reply["reasons"].as_array().unwrap().len(), 2, "{reply}");
    let stuck = reply["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["hook"] == "stuck")
        .unwrap();
    assert!(stuck["elapsed_ms"].as_u64().unwrap() < 1000, "{stuck}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    // Fail-open: the same failures no longer block.
    cluster.cli_ok(&["hook", "policy", point, "--on-failure", "fail-open"]);
    let (code, reply) = call(&cluster, point, r#"{"tenant":"acme"}"#);
    assert_eq!(code, Some(0), "{reply}");
    assert_eq!(reply["reasons"], serde_json::json!([]));
    // A deny denies whatever the policy.
    cluster.cli_ok(&["hook", "add", "no", "--point", point]);
    let (code, reply) = call(&cluster, point, r#"{"tenant":"acme"}"#);
    assert_eq!(code, Some(1), "{reply}");
    assert_eq!(
        reply["reasons"],
        serde_json::json!(["no: denied by wat"]),
        "{reply}"
    );
    // Removing it lets the operation through again; a point without hooks allows.
    cluster.cli_ok(&["hook", "rm", "no", "--point", point]);
    assert_eq!(call(&cluster, point, "{}").0, Some(0));
    let (code, reply) = call(&cluster, "nobody.configured", "{}");
    assert_eq!(code, Some(0));
    assert_eq!(reply["hooks"], serde_json::json!([]));
    // `hook ls` shows the point as configured.
    let points = cluster.cli_json(&["hook", "ls"]);
    let listed = points
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["point"] == point)
        .unwrap();
    assert_eq!(listed["policy"], "fail-open");
    assert_eq!(listed["deadline_ms"], 300);
    assert_eq!(
        listed["hooks"],
        serde_json::json!(["stuck", "unsure", "yes"])
    );
    // Each denial is recorded as a `sandbus.hook.denied` event for audit, in order, with
    // its reasons; allowed calls record nothing.
    let denied = cluster.events("sandbus.hook.denied");
    assert_eq!(denied.len(), 2, "{denied:?}");
    let (closed, by_no) = (&denied[0]["data"], &denied[1]["data"]);
    assert_eq!(closed["point"], point);
    assert_eq!(closed["policy"], "fail-closed");
    assert_eq!(closed["reasons"].as_array().unwrap().len(), 2, "{closed}");
    assert_eq!(closed["hooks"].as_array().unwrap().len(), 3, "{closed}");
    assert_eq!(
        closed["proposed"]["type"], point,
        "the type defaults to the point"
    );
    assert_eq!(by_no["policy"], "fail-open");
    assert_eq!(by_no["reasons"], serde_json::json!(["no: denied by wat"]));
    assert_eq!(denied[1]["subject"], point);
}

#[test]
fn bad_hook_requests_are_refused_and_change_nothing() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    upload_fixed_hook(&cluster, "gate", "allow");
    cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", "noop"]);
    cluster.cli_ok(&["hook", "add", "gate", "--point", "vm.pre-create"]);
    let before = cluster.cli_ok(&["hook", "ls", "--json"]);
    let refused = |args: &[&str], code: i32, want: &str| {
        let out = cluster.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    refused(
        &["hook", "add", "noop", "--point", "vm.pre-create"],
        2,
        "not a hook",
    );
    refused(
        &["hook", "add", "gate", "--point", "VM Create"],
        2,
        "not an extension point name",
    );
    refused(
        &["hook", "add", "ghost", "--point", "vm.pre-create"],
        1,
        "no component named `ghost`",
    );
    refused(
        &["hook", "rm", "noop", "--point", "vm.pre-create"],
        1,
        "not registered",
    );
    refused(
        &["hook", "policy", "vm.pre-create", "--deadline", "0s"],
        2,
        "deadline",
    );
    refused(&["hook", "policy", "vm.pre-create"], 2, "nothing to change");
    refused(&["rm", "gate"], 1, "registered as a hook at vm.pre-create");
    refused(
        &["upload", &guest("noop-listener"), "--name", "gate"],
        2,
        "registered as a hook",
    );
    refused(
        &[
            "upload",
            &guest("quota-hook"),
            "--name",
            "quota",
            "--grant",
            "kv-read=No Such",
        ],
        2,
        "invalid grant",
    );
    refused(
        &["hook", "call", "vm.pre-create", "--data", "{not json"],
        2,
        "not JSON",
    );
    assert_eq!(cluster.cli_ok(&["hook", "ls", "--json"]), before);
    let ls = cluster.cli_json(&["ls"]);
    let gate = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gate")
        .unwrap();
    assert_eq!(gate["world"], "hook");
    assert_eq!(gate["version"], 1);
}
