//! Guests from other toolchains through the real daemon: the Python and JavaScript example
//! guests in `guests/python` and `guests/js`, built by `scripts/build-guests.sh` with
//! componentize-py and componentize-js exactly as their users build them (the JavaScript one
//! with its default features, so it imports `wasi:http`).

use serde_json::{Value, json};

use super::cluster::{Cluster, guest, write};

/// An audit event: `actor` in its data when given, and a `webhook` to forward it to.
fn audit(id: &str, kind: &str, actor: Option<&str>, webhook: Option<&str>) -> Value {
    let mut data = serde_json::Map::new();
    if let Some(actor) = actor {
        data.insert("actor".into(), json!(actor));
    }
    if let Some(url) = webhook {
        data.insert("webhook".into(), json!(url));
    }
    json!({
        "specversion": "1.0", "id": id, "source": "/audit", "type": kind,
        "datacontenttype": "application/json", "data": data,
    })
}

/// Uploads `component` as `name`, subscribed to `audit.>` with one delivery per event, and
/// waits until daemon `h1` runs it.
fn audit_listener(cluster: &mut Cluster, component: &str, name: &str) {
    cluster.cli_ok(&["upload", &guest(component), "--name", name]);
    cluster.cli_ok(&[
        "subscribe",
        name,
        "--events",
        "audit.>",
        "--max-deliver",
        "1",
    ]);
    cluster.wait_for_component("h1", name, 1);
}

/// The reasons of `listener`'s dead letters.
fn dead_letter_reasons(cluster: &Cluster, listener: &str) -> Vec<String> {
    cluster
        .dead_letters(listener)
        .into_iter()
        .map(|(headers, _)| headers.get("Sandbus-Reason").cloned().unwrap_or_default())
        .collect()
}

#[test]
fn a_python_listener_counts_in_kv_and_its_uncaught_exception_is_the_failure_reason() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    audit_listener(&mut cluster, "python-audit-listener", "py-audit");
    cluster.publish_events(&[
        audit("p1", "audit.login", Some("ann"), None),
        audit("p2", "audit.login", Some("bob"), None),
        audit("p3", "audit.logout", Some("ann"), None),
        audit("p4", "audit.login", None, None),
    ]);
    cluster.wait_drained("py-audit");
    assert_eq!(
        cluster.kv_get("py-audit", "count/audit.login").as_deref(),
        Some("2")
    );
    assert_eq!(
        cluster.kv_get("py-audit", "actor/ann").as_deref(),
        Some("2")
    );
    assert_eq!(
        cluster.kv_get("py-audit", "actor/bob").as_deref(),
        Some("1")
    );
    let reasons = dead_letter_reasons(&cluster, "py-audit");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("uncaught Python exception: KeyError: 'actor'"),
        "{reasons:?}"
    );
}

#[test]
fn a_javascript_listener_built_with_default_features_runs_and_its_fetch_is_denied() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    audit_listener(&mut cluster, "js-audit-listener", "js-audit");
    cluster.publish_events(&[
        audit("j1", "audit.login", Some("ann"), None),
        audit(
            "j2",
            "audit.login",
            Some("ann"),
            Some("http://127.0.0.1:9/hook"),
        ),
        audit("j3", "audit.login", None, None),
    ]);
    cluster.wait_drained("js-audit");
    // Both events with an actor were counted, the one with a webhook too: its fetch failed
    // inside the guest, which logged it and went on.
    assert_eq!(
        cluster.kv_get("js-audit", "count/audit.login").as_deref(),
        Some("2")
    );
    assert_eq!(
        cluster.kv_get("js-audit", "actor/ann").as_deref(),
        Some("2")
    );
    let log = cluster.daemon_log("h1");
    assert!(
        log.contains("outgoing HTTP request denied: POST http://127.0.0.1:9/hook"),
        "{log}"
    );
    assert!(log.contains("could not forward j2"), "{log}");
    let reasons = dead_letter_reasons(&cluster, "js-audit");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("uncaught JavaScript exception: event j3 has no actor"),
        "{reasons:?}"
    );
}

/// One loopback board, as `device_lab` simulates it.
const BOARD: &str = r#"
[[device]]
id = "board-1"
vendor_id = 0x1209
product_id = 0x0001
serial = "SB-0001"

[device.loopback]
out = 0x01
in = 0x81
"#;

#[test]
fn a_python_test_script_checks_a_leased_board_and_ends_with_its_report() {
    let mut cluster = Cluster::new();
    let devices = write(&cluster, "devices.toml", BOARD.as_bytes());
    cluster.spawn_daemon("h1", &["--simulate", &devices]);
    cluster.wait_for_host("h1");
    cluster.cli_ok(&[
        "upload",
        &guest("python-loopback-check"),
        "--name",
        "py-check",
    ]);
    cluster.wait_for_component("h1", "py-check", 1);
    let run = |product: &str| {
        cluster.cli(&[
            "run",
            "py-check",
            "--device",
            "serial=SB-0001",
            "--arg",
            "vendor=1209",
            "--arg",
            &format!("product={product}"),
            "--follow",
        ])
    };
    let out = run("0001");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("bulk-loopback: 64 bytes"), "{text}");
    assert!(text.contains("report: pass"), "{text}");
    // The wrong product fails the descriptor step, and the steps after it are skipped.
    let out = run("0002");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("report: fail"), "{text}");
    assert!(
        text.contains("vendor:product 1209:0001, expected 1209:0002"),
        "{text}"
    );
    let runs = cluster.cli_json(&["runs"]);
    let failed = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["verdict"] == "fail")
        .unwrap();
    assert_eq!(failed["device"], "board-1");
}
