//! The standard WASI interfaces sandbus offers every world besides its own, through the real
//! daemon, with guests built only against the standard WIT (as a wasmCloud user builds them).

use serde_json::json;

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
