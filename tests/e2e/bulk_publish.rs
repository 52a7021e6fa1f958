//! `sandbus publish` straight onto the events stream: no daemon in the path, a window of
//! publishes in flight, the whole file checked before anything goes, duplicates reported,
//! and a stop mid-file naming the line to resume from.

use serde_json::Value;

use super::cluster::{Cluster, billing_listener, billing_scenario, billing_totals, write};

/// Writes `events` as a JSON Lines file; its path.
fn event_file(cluster: &Cluster, name: &str, events: &[Value]) -> String {
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    write(cluster, name, (lines.join("\n") + "\n").as_bytes())
}

/// How many messages the events stream holds, read underneath (no daemon needed).
fn stored(cluster: &Cluster) -> u64 {
    let client = cluster.connect();
    cluster.rt.block_on(async move {
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(sandbus::bus::names::EVENTS_STREAM)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    })
}

#[test]
fn a_file_published_while_no_daemon_runs_is_handled_exactly_once_when_one_starts() {
    let mut cluster = Cluster::new();
    // A daemon ran once (it created the stream), and billing is subscribed: its durable
    // consumer keeps what comes while no daemon runs.
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    assert_eq!(cluster.terminate_daemon("h1"), Some(0));
    let before = stored(&cluster);
    let (events, expected) = billing_scenario(300);
    let file = event_file(&cluster, "bill.jsonl", &events);

    let out = cluster.cli_ok(&["publish", "--file", &file, "--window", "64"]);
    assert!(out.ends_with("600 events, 0 duplicates\n"), "{out}");
    assert_eq!(stored(&cluster), before + 600);

    cluster.start_daemon("h1");
    cluster.wait("billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    cluster.wait_drained("billing");
    let status = cluster.status("billing");
    assert_eq!(status["redelivered"], 0, "{status}");
    assert_eq!(status["dead_lettered"], 0, "{status}");
    assert!(cluster.dead_letters("billing").is_empty());

    // The same file again: every event is a duplicate, nothing is added, nothing billed twice.
    let again = cluster.cli(&["publish", "--file", &file, "--json"]);
    assert!(again.status.success());
    let acks: Vec<Value> = super::json_lines(&again);
    assert_eq!(acks.len(), 600);
    assert!(acks.iter().all(|a| a["duplicate"] == true), "{acks:?}");
    let text = cluster.cli_ok(&["publish", "--file", &file]);
    assert!(text.ends_with("600 events, 600 duplicates\n"), "{text}");
    assert!(text.contains("was already in SANDBUS_EVENTS"), "{text}");
    let billed_events = cluster.events("vm.*");
    assert_eq!(billed_events.len(), 600, "each event stored once");
    cluster.wait_drained("billing");
    assert_eq!(billing_totals(&cluster, "billing"), expected);
}

#[test]
fn a_file_with_a_bad_line_is_refused_whole_and_nothing_is_published() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let before = stored(&cluster);
    let (events, _) = billing_scenario(2);
    let mut lines: Vec<String> = events.iter().map(Value::to_string).collect();
    lines.insert(1, "{not json".into());
    // A host event's type: refused by the daemon's check, now run before publishing.
    lines.push(
        serde_json::json!({"specversion":"1.0","id":"f","source":"/x",
            "type":"sandbus.lease.released","data":{}})
        .to_string(),
    );
    let file = write(&cluster, "bad.jsonl", lines.join("\n").as_bytes());
    let out = cluster.cli(&["publish", "--file", &file]);
    let stderr = super::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nothing was published"), "{stderr}");
    assert!(stderr.contains("line 2:"), "{stderr}");
    assert!(stderr.contains("line 6:"), "{stderr}");
    assert!(stderr.contains("reserved"), "{stderr}");
    assert_eq!(stored(&cluster), before, "not one event went");
}

#[test]
fn without_an_events_stream_publish_says_to_start_a_daemon_once() {
    let cluster = Cluster::new();
    let out = cluster.cli(&["publish", "vm.started", "--data", "{}"]);
    let stderr = super::stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("no events stream on this server stores `events.vm.started`"),
        "{stderr}"
    );
    assert!(stderr.contains("start a daemon once"), "{stderr}");
}

#[test]
fn a_server_that_goes_away_mid_file_names_the_first_unconfirmed_line() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    assert_eq!(cluster.terminate_daemon("h1"), Some(0));
    let before = stored(&cluster);
    let (events, _) = billing_scenario(50_000);
    let file = event_file(&cluster, "many.jsonl", &events);
    let publishing = cluster
        .command(&["publish", "--file", &file, "--reply-timeout", "3s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cluster.wait("some events stored", |c| stored(c) >= before + 2_000);
    cluster.nats.kill();
    let out = publishing.wait_with_output().unwrap();
    let stderr = super::stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let resume = stderr
        .split("--from-line ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no resume hint: {stderr}"));
    let line: u64 = resume.parse().unwrap();
    assert!(stderr.contains(&format!("line {line}:")), "{stderr}");

    cluster.nats.start_again();
    let kept = stored(&cluster) - before;
    // Every line before the named one is stored (it was confirmed).
    assert!(kept >= line - 1, "{kept} stored, resume at {line}");
    let again = cluster.cli_ok(&["publish", "--file", &file, "--from-line", resume]);
    let total = events.len() as u64;
    assert!(
        again.ends_with(&format!(
            "{} events, {} duplicates\n",
            total - line + 1,
            kept - (line - 1)
        )),
        "the lines stored past the named one come back as duplicates: {}",
        again.lines().last().unwrap_or_default()
    );
    assert_eq!(stored(&cluster), before + total, "each event once");
}

#[test]
fn a_cast_sends_without_waiting_and_the_stream_still_keeps_each_id_once() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let before = stored(&cluster);
    let (events, _) = billing_scenario(50);
    let file = event_file(&cluster, "cast.jsonl", &events);
    for _ in 0..2 {
        let out = cluster.cli_ok(&["publish", "--file", &file, "--cast"]);
        assert!(out.contains("sent 100 event(s)"), "{out}");
        assert!(out.contains("not confirmed"), "{out}");
    }
    cluster.wait("the cast events stored", |c| stored(c) >= before + 100);
    let text = cluster.cli_ok(&["publish", "--file", &file]);
    assert!(text.ends_with("100 events, 100 duplicates\n"), "{text}");
    assert_eq!(stored(&cluster), before + 100);
}
