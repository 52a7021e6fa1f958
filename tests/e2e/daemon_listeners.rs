//! Listeners on the real daemon: delivery, retries, dead letters and hot swaps, end to end.
//!
//! Each test starts its own nats-server and daemon (see `cluster.rs`), drives them with the
//! real CLI, publishes through JetStream like any producer would, and checks what the
//! listeners recorded in their kv.

use std::time::Duration;

use serde_json::json;

use super::cluster::{Cluster, billing_listener, billing_scenario, billing_totals, guest};

#[test]
fn billing_listener_counts_1000_events_exactly() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    let (events, expected) = billing_scenario(500);
    assert_eq!(events.len(), 1000);
    cluster.publish_events(&events);
    // Publishing the same events again is de-duplicated by the stream (same ids).
    cluster.publish_events(&events[..100]);
    cluster.wait("billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    cluster.wait_drained("billing");
    assert_eq!(billing_totals(&cluster, "billing"), expected);
    assert_eq!(cluster.kv("billing", "usage/").len(), 500);
    let status = cluster.status("billing");
    assert_eq!(status["dead_lettered"], 0);
    assert_eq!(status["last_error"], serde_json::Value::Null);
    // One `billing.usage` per stop is within the default per-call publish budget: the
    // publish-rate cap never held it back.
    assert_eq!(status["last_throttled"], serde_json::Value::Null);
    assert!(cluster.events("sandbus.listener.throttled").is_empty());
}

#[test]
fn listener_that_asks_for_retry_once_is_delivered_twice_and_counted_once() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.cli_ok(&["upload", &guest("retry-once-listener"), "--name", "flaky"]);
    cluster.cli_ok(&["subscribe", "flaky", "--events", "job.>"]);
    let events: Vec<_> = (0..20)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("job-{i}"), "source": "/t",
                   "type": "job.done", "data": {"n": i}})
        })
        .collect();
    cluster.publish_events(&events);
    cluster.wait("20 counted", |c| {
        c.kv_get("flaky", "count").as_deref() == Some("20")
    });
    cluster.wait_drained("flaky");
    let attempts = cluster.kv("flaky", "attempts/");
    assert_eq!(attempts.len(), 20);
    assert!(attempts.values().all(|n| n == "2"), "{attempts:?}");
    assert_eq!(cluster.kv_get("flaky", "count").as_deref(), Some("20"));
    let status = cluster.status("flaky");
    assert!(status["redelivered"].as_u64().unwrap() <= 20);
    assert_eq!(status["dead_lettered"], 0);
}

#[test]
fn listener_that_always_traps_is_dead_lettered_and_others_are_unaffected() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    cluster.cli_ok(&["upload", &guest("panic-listener"), "--name", "crashy"]);
    cluster.cli_ok(&[
        "subscribe",
        "crashy",
        "--events",
        "vm.*",
        "--max-deliver",
        "3",
        "--backoff",
        "50ms",
    ]);
    let (events, expected) = billing_scenario(10);
    cluster.publish_events(&events);
    cluster.wait("20 dead letters", |c| c.dead_letters("crashy").len() == 20);
    cluster.wait_drained("crashy");
    let letters = cluster.dead_letters("crashy");
    for (headers, payload) in &letters {
        assert!(headers["Sandbus-Reason"].contains("panic"), "{headers:?}");
        assert!(
            headers["Sandbus-Reason"].contains("after 3 deliveries"),
            "{headers:?}"
        );
        assert_eq!(headers["Sandbus-Deliveries"], "3");
        assert_eq!(headers["Sandbus-Listener"], "crashy");
        let original: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert!(
            events.contains(&original),
            "the payload is the original event"
        );
    }
    let status = cluster.status("crashy");
    assert_eq!(status["dead_lettered"], 20);
    assert!(
        status["last_error"]["reason"]
            .as_str()
            .unwrap()
            .contains("panic")
    );
    // Every dead letter was announced as an event.
    let announced = cluster.cli_ok(&["events", "sandbus.listener.dead-lettered", "--json"]);
    assert_eq!(announced.lines().count(), 20, "{announced}");
    // The billing listener on the same events did its job.
    cluster.wait("billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    assert_eq!(cluster.status("billing")["dead_lettered"], 0);
}

#[test]
fn hot_swap_to_v2_while_events_flow_loses_nothing() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.cli_ok(&["upload", &guest("tag-listener-v1"), "--name", "tagger"]);
    cluster.wait_for_component("h1", "tagger", 1);
    cluster.cli_ok(&["subscribe", "tagger", "--events", "order.*"]);
    let event = |i: usize| {
        json!({"specversion": "1.0", "id": format!("order-{i}"), "source": "/shop",
               "type": "order.placed", "data": {"n": i}})
    };
    // Events flow from a second thread while v2 is uploaded.
    let url_cluster = &cluster;
    std::thread::scope(|s| {
        s.spawn(|| {
            for chunk in (0..300).collect::<Vec<_>>().chunks(10) {
                let batch: Vec<_> = chunk.iter().map(|i| event(*i)).collect();
                url_cluster.publish_events(&batch);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        std::thread::sleep(Duration::from_millis(150));
        url_cluster.cli_ok(&["upload", &guest("tag-listener-v2"), "--name", "tagger"]);
    });
    cluster.wait_for_component("h1", "tagger", 2);
    // Published after v2 is live here: every one of these must be seen by v2.
    let later: Vec<_> = (300..400).map(event).collect();
    cluster.publish_events(&later);
    cluster.wait("400 events seen", |c| c.kv("tagger", "seen/").len() == 400);
    cluster.wait_drained("tagger");
    let seen = cluster.kv("tagger", "seen/");
    for i in 300..400 {
        assert_eq!(seen[&format!("seen/order-{i}")], "v2", "order-{i}");
    }
    // Every event was seen by exactly one version (first write wins), none was lost.
    let by_v2 = seen.values().filter(|tag| *tag == "v2").count();
    let by_v1 = seen.values().filter(|tag| *tag == "v1").count();
    assert_eq!(by_v1 + by_v2, 400, "{seen:?}");
    assert!(by_v2 >= 100);
    let ls = cluster.cli_json(&["ls"]);
    assert_eq!(ls[0]["version"], 2);
}

#[test]
fn malformed_event_is_dead_lettered_with_the_parse_error_and_the_listener_goes_on() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    cluster.publish_raw(vec![
        (
            "events.vm.started".into(),
            Some("junk-1".into()),
            b"{not json".to_vec(),
        ),
        (
            "events.vm.started".into(),
            Some("junk-2".into()),
            br#"{"specversion":"1.0","id":"x"}"#.to_vec(),
        ),
    ]);
    let (events, expected) = billing_scenario(3);
    cluster.publish_events(&events);
    cluster.wait("2 dead letters", |c| c.dead_letters("billing").len() == 2);
    cluster.wait("billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    let letters = cluster.dead_letters("billing");
    assert!(
        letters.iter().any(|(_, payload)| payload == b"{not json"),
        "kept byte for byte"
    );
    for (headers, _) in &letters {
        assert!(
            headers["Sandbus-Reason"].starts_with("not a valid canonical event"),
            "{headers:?}"
        );
        assert_eq!(
            headers["Sandbus-Deliveries"], "1",
            "a parse error is not retried"
        );
    }
    // The daemon is still up and serving.
    cluster.wait_for_host("h1");
}
