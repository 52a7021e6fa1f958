//! `sandbus dev replay`: events from a JSON Lines file into a listener; outcomes, what it
//! published, and the kv contents at the end.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use super::support::guest_path;
use super::{json_lines, sandbus, stderr, stdout};

/// `(tenant, instance, start, stop)`: the same shape of scenario as the sandbox test, with
/// its own numbers.
fn scenario() -> Vec<(&'static str, String, u64, u64)> {
    (0..12u64)
        .map(|i| {
            let start = 1_800_000_000 + i * 11;
            (
                ["acme", "globex"][(i % 2) as usize],
                format!("i-{i}"),
                start,
                start + 30 + i * 7,
            )
        })
        .collect()
}

fn line(kind: &str, tenant: &str, instance: &str, at: u64) -> String {
    let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at));
    serde_json::json!({
        "specversion": "1.0", "id": format!("{kind}-{instance}"), "source": "/compute",
        "type": format!("vm.{kind}"), "time": time.to_string(),
        "datacontenttype": "application/json",
        "data": { "tenant": tenant, "instance": instance }
    })
    .to_string()
}

#[test]
fn billing_replay_with_duplicates_and_early_stops_gives_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (i, (tenant, instance, start, stop)) in scenario().into_iter().enumerate() {
        *expected.entry(tenant.to_owned()).or_default() += stop - start;
        let (a, b) = (
            line("started", tenant, &instance, start),
            line("stopped", tenant, &instance, stop),
        );
        let pair = if i % 4 == 1 { [b, a] } else { [a, b] };
        lines.extend(pair.iter().cloned());
        if i % 3 == 0 {
            lines.extend(pair); // delivered twice
        }
    }
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();

    let listener = guest_path("billing-listener");
    let out = sandbus(
        &[
            "dev",
            "replay",
            listener.to_str().unwrap(),
            events.to_str().unwrap(),
            "--name",
            "billing",
            "--grant",
            "publish=events.billing.>",
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let output = json_lines(&out);
    let summary = output.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["events"], lines.len());
    assert_eq!(summary["not_acked"], 0);
    let totals: BTreeMap<String, u64> = summary["kv"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.strip_prefix("total/")?.to_owned(),
                v.as_str()?.parse().ok()?,
            ))
        })
        .collect();
    assert_eq!(totals, expected);
    let published: usize = output
        .iter()
        .filter(|l| l["type"] == "delivery")
        .map(|l| l["published"].as_array().unwrap().len())
        .sum();
    assert!(
        published >= scenario().len(),
        "billing.usage events should be shown"
    );
}

#[test]
fn malformed_events_file_is_refused_whole_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let good = line("started", "acme", "i-1", 1_800_000_000);
    std::fs::write(
        &events,
        format!("{good}\n{{not json\n{good}\n{{\"specversion\":\"1.0\",\"id\":\"x\"}}\n"),
    )
    .unwrap();
    let listener = guest_path("billing-listener");
    let out = sandbus(
        &[
            "dev",
            "replay",
            listener.to_str().unwrap(),
            events.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("2 invalid event line(s); nothing was replayed"),
        "{err}"
    );
    assert!(err.contains("line 2:") && err.contains("line 4:"), "{err}");
    assert!(
        stdout(&out).is_empty(),
        "nothing should have run: {}",
        stdout(&out)
    );
}

#[test]
fn trapping_listener_is_reported_per_delivery_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        line("started", "acme", "i-1", 1_800_000_000) + "\n",
    )
    .unwrap();
    let listener = guest_path("panic-listener");
    let out = sandbus(
        &[
            "dev",
            "replay",
            listener.to_str().unwrap(),
            events.to_str().unwrap(),
            "--max-deliver",
            "3",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert_eq!(
        text.matches("failed: panic: the guest panicked").count(),
        3,
        "{text}"
    );
    assert!(text.contains("(attempt 3)"), "{text}");
}
