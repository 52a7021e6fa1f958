//! Faults under load: the daemon killed, the NATS server restarted. Nothing may be lost and
//! nothing counted twice; the billing listener's totals are the proof.

use super::cluster::{Cluster, billing_listener, billing_scenario, billing_totals};

/// Events the billing listener has recorded as usage so far.
fn usage_count(cluster: &Cluster) -> usize {
    cluster.kv("billing", "usage/").len()
}

#[test]
fn daemon_killed_mid_stream_and_restarted_handles_every_event_once() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    let (events, expected) = billing_scenario(300);
    cluster.publish_events(&events);
    cluster.wait("some events handled", |c| usage_count(c) >= 20);
    cluster.kill_daemon("h1");
    let handled_before = usage_count(&cluster);
    assert!(
        handled_before < 300,
        "the kill came too late to prove anything"
    );
    cluster.start_daemon("h1");
    cluster.wait("billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    cluster.wait_drained("billing");
    assert_eq!(billing_totals(&cluster, "billing"), expected);
    assert_eq!(usage_count(&cluster), 300);
}

#[test]
fn daemon_stopped_with_sigterm_mid_stream_hands_back_what_it_did_not_finish() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    let (events, expected) = billing_scenario(300);
    cluster.publish_events(&events);
    cluster.wait("some events handled", |c| usage_count(c) >= 20);
    assert_eq!(
        cluster.terminate_daemon("h1"),
        Some(0),
        "a graceful stop exits 0"
    );
    assert!(
        usage_count(&cluster) < 300,
        "the stop came too late to prove anything"
    );
    let log = cluster.daemon_log("h1");
    assert!(log.contains("dispatcher stopped"), "{log}");
    cluster.start_daemon("h1");
    cluster.wait("billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    cluster.wait_drained("billing");
    let status = cluster.status("billing");
    assert_eq!(status["dead_lettered"], 0, "{status}");
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
}

#[test]
fn nats_server_restarted_mid_stream_daemon_reconnects_and_resumes() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    let (events, expected) = billing_scenario(150);
    cluster.publish_events(&events);
    cluster.wait("some events handled", |c| usage_count(c) >= 20);
    cluster.nats.stop();
    std::thread::sleep(std::time::Duration::from_millis(500));
    cluster.nats.start_again();
    cluster.wait("billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    cluster.wait_drained("billing");
    assert_eq!(usage_count(&cluster), 150);
    // Still serving, and more events after the outage are handled too.
    let (more, _) = billing_scenario(152);
    cluster.publish_events(&more[300..]);
    cluster.wait("the events after the outage", |c| usage_count(c) == 152);
    assert!(
        cluster.daemon_log("h1").contains("disconnected from NATS"),
        "the daemon saw the outage"
    );
}
