//! The billing listener counts every event exactly once: duplicates, stops before starts,
//! and redelivery of events it already handled give exact per-tenant totals.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, UNIX_EPOCH};

use sandbus::event::CanonicalEvent;
use sandbus::sandbox::{HandlerOutcome, World};

use super::support::guest;
use super::{Harness, sandbox, spec};

/// A billing scenario: `(tenant, instance, start, stop)` in unix seconds.
pub fn scenario() -> Vec<(String, String, u64, u64)> {
    let tenants = ["acme", "globex", "initech"];
    (0..30u64)
        .map(|i| {
            let start = 1_790_000_000 + i * 37;
            let stop = start + 60 + (i * 53) % 900;
            (
                tenants[(i % 3) as usize].to_owned(),
                format!("vm-{i}"),
                start,
                stop,
            )
        })
        .collect()
}

fn vm_event(kind: &str, tenant: &str, instance: &str, at: u64) -> CanonicalEvent {
    let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at)).to_string();
    CanonicalEvent {
        id: format!("{kind}-{tenant}-{instance}"),
        source: "/compute/eu-1".into(),
        ty: format!("vm.{kind}"),
        subject: Some(instance.into()),
        time: Some(time),
        datacontenttype: Some("application/json".into()),
        data: format!(r#"{{"tenant":"{tenant}","instance":"{instance}"}}"#).into_bytes(),
    }
}

/// The scenario's events with every third instance stopped before it started and every
/// event of every other instance delivered twice.
pub fn scenario_events() -> Vec<CanonicalEvent> {
    let mut events = Vec::new();
    for (i, (tenant, instance, start, stop)) in scenario().into_iter().enumerate() {
        let started = vm_event("started", &tenant, &instance, start);
        let stopped = vm_event("stopped", &tenant, &instance, stop);
        let mut pair = if i % 3 == 0 {
            vec![stopped, started]
        } else {
            vec![started, stopped]
        };
        if i % 2 == 0 {
            pair.extend(pair.clone());
        }
        events.extend(pair);
    }
    events
}

/// Per-tenant billable seconds the scenario must produce.
pub fn expected_totals() -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for (tenant, _, start, stop) in scenario() {
        *totals.entry(tenant).or_insert(0) += stop - start;
    }
    totals
}

#[tokio::test]
async fn duplicates_and_out_of_order_stops_give_exact_totals() {
    let billing = sandbox()
        .prepare(
            spec("billing", World::Listener, &["events.billing.>"], &[]),
            &guest("billing-listener"),
        )
        .unwrap();
    let h = Harness::new();
    let events = scenario_events();
    assert!(events.len() > 80, "the scenario should have duplicates");
    for event in events {
        let done = billing.handle(event, &h.caps).await.unwrap();
        assert_eq!(done.output, HandlerOutcome::Ok);
    }
    // Redeliver everything once more, as after a crash before the acks: nothing changes.
    for event in scenario_events() {
        billing.handle(event, &h.caps).await.unwrap();
    }

    let kv = h.kv.snapshot("billing");
    let totals: BTreeMap<String, u64> = kv
        .iter()
        .filter_map(|(k, v)| {
            let tenant = k.strip_prefix("total/")?;
            Some((
                tenant.to_owned(),
                std::str::from_utf8(v).ok()?.parse().ok()?,
            ))
        })
        .collect();
    assert_eq!(totals, expected_totals());

    let usage: BTreeSet<String> = h
        .publisher
        .take()
        .into_iter()
        .filter(|m| m.subject == "events.billing.usage")
        .map(|m| CanonicalEvent::from_json(&m.payload).unwrap().id)
        .collect();
    assert_eq!(
        usage.len(),
        scenario().len(),
        "one billing.usage event id per instance"
    );
}

#[tokio::test]
async fn invalid_billing_event_is_rejected_with_a_reason() {
    let billing = sandbox()
        .prepare(
            spec("billing-bad", World::Listener, &["events.billing.>"], &[]),
            &guest("billing-listener"),
        )
        .unwrap();
    let h = Harness::new();
    let mut event = vm_event("started", "acme", "vm-1", 1_790_000_000);
    event.data = br#"{"tenant":"acme"}"#.to_vec();
    let done = billing.handle(event, &h.caps).await.unwrap();
    let HandlerOutcome::Reject { reason } = done.output else {
        panic!("{:?}", done.output)
    };
    assert!(reason.contains("instance"), "{reason}");
    assert!(
        h.kv.snapshot("billing-bad").is_empty(),
        "a rejected event changes nothing"
    );
}
