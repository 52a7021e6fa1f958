//! The standard WASI interfaces sandbus offers every world besides its own, through the real
//! daemon, with guests built only against the standard WIT (as a wasmCloud user builds them).

use serde_json::{Value, json};

use super::cluster::{Cluster, guest};

#[test]
fn a_guest_logging_through_wasi_logging_versioned_or_not_lands_in_its_log() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.cli_ok(&[
        "upload",
        &guest("wasi-logging-listener"),
        "--name",
        "std-log",
    ]);
    cluster.cli_ok(&["subscribe", "std-log", "--events", "audit.>"]);
    cluster.wait_for_component("h1", "std-log", 1);
    cluster.publish_events(&[json!({
        "specversion": "1.0", "id": "s1", "source": "/audit", "type": "audit.login",
    })]);
    cluster.wait_drained("std-log");
    cluster.wait("both log lines", |c| {
        let log = c.daemon_log("h1");
        log.contains("audit.login: handled s1") && log.contains("critical about s1")
    });
    let log = cluster.daemon_log("h1");
    // `critical`, which a sandbus log has no level for, is written at `error`.
    let critical = log
        .lines()
        .find(|l| l.contains("critical about s1"))
        .unwrap_or_default();
    assert!(critical.contains("ERROR"), "{critical}");
    assert_eq!(cluster.status("std-log")["dead_lettered"], 0);
}

#[test]
fn a_guest_keeping_state_through_wasi_keyvalue_uses_its_own_kv_space() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.cli_ok(&[
        "upload",
        &guest("wasi-keyvalue-listener"),
        "--name",
        "std-kv",
    ]);
    cluster.cli_ok(&["subscribe", "std-kv", "--events", "audit.>"]);
    cluster.wait_for_component("h1", "std-kv", 1);
    let event = |id: &str| json!({"specversion": "1.0", "id": id, "source": "/audit", "type": "audit.login"});
    cluster.publish_events(&[event("k1")]);
    cluster.wait_drained("std-kv");
    cluster.publish_events(&[event("k2")]);
    cluster.wait_drained("std-kv");
    // The guest checked every answer itself (a surprise would be a dead letter).
    assert_eq!(cluster.status("std-kv")["dead_lettered"], 0);
    // Bucket `audit` is the prefix `audit/` of the component's space, the space the
    // operator sees through `sandbus kv`.
    let kv = cluster.kv("std-kv", "audit/");
    assert_eq!(
        kv.get("audit/count/audit.login").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        kv.get("audit/last/audit.login").map(String::as_str),
        Some("k2")
    );
    // After the second event: count, last and the first event's `keys`; `seen/…` deleted.
    assert_eq!(kv.get("audit/keys").map(String::as_str), Some("3"));
    assert!(!kv.keys().any(|k| k.starts_with("audit/seen/")), "{kv:?}");
}

#[test]
fn a_guest_reads_its_operators_config_through_wasi_config_and_a_change_needs_no_upload() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let refused = cluster.cli(&[
        "upload",
        &guest("wasi-config-listener"),
        "--name",
        "std-config",
        "--config",
        "log level=debug",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no `=`, spaces or control characters"),
        "{stderr}"
    );
    cluster.cli_ok(&[
        "upload",
        &guest("wasi-config-listener"),
        "--name",
        "std-config",
        "--config",
        "greeting=hello",
        "--config",
        "query=a=b",
    ]);
    cluster.cli_ok(&["subscribe", "std-config", "--events", "audit.>"]);
    cluster.wait_for_component("h1", "std-config", 1);
    let event = |id: &str| json!({"specversion": "1.0", "id": id, "source": "/audit", "type": "audit.login"});
    let seen = |cluster: &mut Cluster, id: &str| {
        cluster.publish_events(&[event(id)]);
        cluster.wait_drained("std-config");
        assert_eq!(cluster.status("std-config")["dead_lettered"], 0);
        cluster
            .kv("std-config", "seen/")
            .remove(&format!("seen/{id}"))
    };
    assert_eq!(
        seen(&mut cluster, "c1").as_deref(),
        Some("greeting=hello; all=greeting=hello,query=a=b")
    );

    // A change is a new version of the same bytes; the next event sees it.
    let changed = cluster.cli_json(&[
        "configure",
        "std-config",
        "greeting=bonjour",
        "--unset",
        "query",
    ]);
    assert_eq!(changed["unchanged"], false);
    assert_eq!(changed["manifest"]["version"], 2);
    let listed = cluster.cli_json(&["ls"]);
    let digests: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["digest"])
        .collect();
    assert_eq!(digests.len(), 1);
    assert_eq!(changed["manifest"]["digest"], *digests[0]);
    cluster.wait_for_component("h1", "std-config", 2);
    assert_eq!(
        seen(&mut cluster, "c2").as_deref(),
        Some("greeting=bonjour; all=greeting=bonjour")
    );

    // A bad change says what was wrong and changes nothing; the same values again record
    // nothing.
    let unknown = cluster.cli(&["configure", "std-config", "--unset", "nope"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no config value `nope` to unset"),
        "{stderr}"
    );
    let same = cluster.cli_json(&["configure", "std-config", "greeting=bonjour"]);
    assert_eq!(same["unchanged"], true);
    assert_eq!(same["manifest"]["version"], 2);
    let shown = cluster.cli_ok(&["configure", "std-config"]);
    assert_eq!(shown.trim(), "greeting=bonjour");

    // Rolling back goes back to the version before the change.
    cluster.cli_ok(&["rollback", "std-config"]);
    cluster.wait_for_component("h1", "std-config", 3);
    assert_eq!(
        seen(&mut cluster, "c3").as_deref(),
        Some("greeting=hello; all=greeting=hello,query=a=b")
    );

    // A new upload without --config keeps the values; with it, replaces them.
    let kept = cluster.cli_json(&[
        "upload",
        &guest("wasi-config-listener"),
        "--name",
        "std-config",
        "--limit",
        "timeout=3s",
    ]);
    assert_eq!(kept["manifest"]["version"], 4);
    assert_eq!(kept["manifest"]["config"]["greeting"], "hello");
    let replaced = cluster.cli_json(&[
        "upload",
        &guest("wasi-config-listener"),
        "--name",
        "std-config",
        "--limit",
        "timeout=3s",
        "--config",
        "greeting=hi",
    ]);
    assert_eq!(replaced["manifest"]["version"], 5);
    cluster.wait_for_component("h1", "std-config", 5);
    assert_eq!(
        seen(&mut cluster, "c5").as_deref(),
        Some("greeting=hi; all=greeting=hi")
    );
}
