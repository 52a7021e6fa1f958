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

/// Writes `events` as a JSON Lines file; its path.
fn event_file(cluster: &Cluster, events: &[serde_json::Value]) -> String {
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    super::cluster::write(
        cluster,
        "events.jsonl",
        (lines.join("\n") + "\n").as_bytes(),
    )
}

#[test]
fn publish_file_survives_a_daemon_that_hangs_and_dies_mid_file() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.start_daemon("h2");
    let (events, _) = billing_scenario(2000);
    let file = event_file(&cluster, &events);
    let publishing = cluster
        .command(&["publish", "--file", &file])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cluster.wait("some events published", |c| {
        c.events("vm.started").len() >= 100
    });
    // h1 hangs: a request routed to it gets no reply. Then it dies.
    cluster.signal_daemon("h1", "STOP");
    std::thread::sleep(std::time::Duration::from_secs(2));
    cluster.kill_daemon("h1");
    let out = publishing.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("trying again"),
        "a lost reply was retried: {stderr}"
    );
    // Every event is stored, each once.
    let stored = cluster.events("vm.*");
    let mut ids: Vec<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(stored.len(), 4000);
    assert_eq!(ids.len(), 4000);
}

#[test]
fn publish_file_stops_naming_the_line_to_resume_from() {
    let mut cluster = Cluster::new();
    let (events, _) = billing_scenario(3);
    let file = event_file(&cluster, &events);
    // No daemon: nothing takes the first event.
    let out = cluster.cli(&["publish", "--file", &file, "--reply-timeout", "2s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains(&format!("--file {file} --from-line 1")),
        "{stderr}"
    );
    cluster.start_daemon("h1");
    cluster.cli_ok(&["publish", "--file", &file, "--from-line", "3"]);
    let stored: Vec<String> = cluster
        .events("vm.*")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = events[2..]
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, expected, "lines 3 and on, in order");
}
