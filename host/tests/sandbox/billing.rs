//! The billing listener counts every event exactly once: duplicates, stops before starts,
//! and redelivery of events it already handled give exact per-tenant totals.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, UNIX_EPOCH};

use sandbus::bus::RunVerdict;
use sandbus::daemon::metering::Usage;
use sandbus::devices::DeviceInfo;
use sandbus::event::CanonicalEvent;
use sandbus::sandbox::{HandlerOutcome, PreparedComponent, World};
use sandbus_host_events::{ComponentUsage, HostEvent, LeaseReleased, Metering};

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

pub fn vm_event(kind: &str, tenant: &str, instance: &str, at: u64) -> CanonicalEvent {
    let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at)).to_string();
    CanonicalEvent {
        id: format!("{kind}-{tenant}-{instance}"),
        source: "/compute/eu-1".into(),
        ty: format!("vm.{kind}"),
        subject: Some(instance.into()),
        time: Some(time),
        datacontenttype: Some("application/json".into()),
        data: format!(r#"{{"tenant":"{tenant}","instance":"{instance}"}}"#).into_bytes(),
        depth: 0,
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
    let billing = billing("billing");
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
    let billing = billing("billing-bad");
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

/// The billing listener as component `name`, granted its `billing.usage` events.
pub fn billing(name: &str) -> PreparedComponent {
    sandbox()
        .prepare(
            spec(name, World::Listener, &["events.billing.>"], &[]),
            &guest("billing-listener"),
        )
        .unwrap()
}

/// The kv value under `key` of `component`, as a number.
fn stored(h: &Harness, component: &str, key: &str) -> Option<i64> {
    let kv = h.kv.snapshot(component);
    kv.get(key)
        .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
}

/// A `sandbus.lease.released` as a daemon emits it: run `run` of `script` held its device
/// `held_ms`.
fn lease_released(run: &str, script: &str, held_ms: u64) -> LeaseReleased {
    LeaseReleased {
        run: run.into(),
        host: "h1".into(),
        device: DeviceInfo {
            id: "board-1".into(),
            vendor_id: 0x1209,
            product_id: 0x0001,
            serial: Some("SN-1".into()),
            manufacturer: None,
            product: Some("Test board".into()),
            location: "1-2".into(),
            class: 0,
            speed: None,
            unusable: None,
        },
        script: script.into(),
        held_ms,
        reset: "ok".into(),
        verdict: RunVerdict::Pass,
    }
}

/// A `sandbus.metering` window of host `h1`, as a daemon emits it.
fn metering_window(components: Vec<ComponentUsage>) -> Metering {
    Metering {
        host: "h1".into(),
        window_start: "2026-11-22T10:00:00.123Z".into(),
        window_end: "2026-11-22T10:00:10.123Z".into(),
        components,
    }
}

/// A listener's line in a metering window (no failed calls, 1 KiB peak memory).
fn listener_usage(name: &str, invocations: u64, wall_us: u64, fuel: u64) -> ComponentUsage {
    ComponentUsage {
        component: name.into(),
        world: "listener".into(),
        usage: Usage {
            invocations,
            failed: 0,
            wall_us,
            peak_memory: 1024,
            fuel,
        },
    }
}

/// A host event with id `id`, its data as the daemon writes it.
fn host_event<E: HostEvent>(id: &str, event: &E) -> CanonicalEvent {
    let data = String::from_utf8(event.to_data().unwrap()).unwrap();
    super::event(E::TYPE, id, &data)
}

#[tokio::test]
async fn lease_time_and_compute_are_charged_once_per_run_and_window() {
    let billing = billing("billing-ops");
    let h = Harness::new();
    let lease = |run: &str, script: &str, held_ms: u64| {
        host_event(
            &format!("sandbus.lease.released/{run}"),
            &lease_released(run, script, held_ms),
        )
    };
    let metering = |seq: u32, components: Vec<ComponentUsage>| {
        host_event(
            &format!("sandbus.metering/h1/2026-11-22T10:00:00.123Z/{seq}"),
            &metering_window(components),
        )
    };
    let events = vec![
        lease("r-1-aa", "smoke", 1500),
        lease("r-2-bb", "smoke", 2250),
        lease("r-3-cc", "flash", 90_000),
        metering(
            1,
            vec![
                listener_usage("audit", 10, 4000, 0),
                listener_usage("smoke", 1, 1_500_000, 300),
            ],
        ),
        metering(2, vec![listener_usage("audit", 5, 1000, 0)]),
    ];
    // Everything twice, as after a crash before the acks, then once more in reverse.
    let mut deliveries = events.clone();
    deliveries.extend(events.clone());
    deliveries.extend(events.into_iter().rev());
    for event in deliveries {
        let done = billing.handle(event, &h.caps).await.unwrap();
        assert_eq!(done.output, HandlerOutcome::Ok, "{:?}", h.log.take());
    }
    let total = |key: &str| stored(&h, "billing-ops", key);
    assert_eq!(total("lease-ms/total/smoke"), Some(3750));
    assert_eq!(total("lease-ms/total/flash"), Some(90_000));
    assert_eq!(total("invocations/total/audit"), Some(15));
    assert_eq!(total("wall-us/total/audit"), Some(5000));
    assert_eq!(total("invocations/total/smoke"), Some(1));
    assert_eq!(total("wall-us/total/smoke"), Some(1_500_000));
    assert_eq!(total("fuel/total/smoke"), Some(300));
    assert_eq!(total("fuel/total/audit"), None, "zero fuel charges nothing");
    assert!(
        h.kv.snapshot("billing-ops")
            .keys()
            .all(|k| !k.starts_with("total/")),
        "no vm seconds were billed"
    );
}

#[tokio::test]
async fn malformed_lease_or_metering_event_is_rejected_and_changes_nothing() {
    let billing = sandbox()
        .prepare(
            spec(
                "billing-bad-ops",
                World::Listener,
                &["events.billing.>"],
                &[],
            ),
            &guest("billing-listener"),
        )
        .unwrap();
    let h = Harness::new();
    let mut without_held_ms = serde_json::to_value(lease_released("r-1", "smoke", 5)).unwrap();
    without_held_ms.as_object_mut().unwrap().remove("held_ms");
    let bad_run = lease_released("r 1", "smoke", 5);
    let bad_component = metering_window(vec![
        listener_usage("audit", 1, 1, 0),
        listener_usage("a/b", 1, 1, 0),
    ]);
    for (ty, data, want) in [
        (LeaseReleased::TYPE, without_held_ms.to_string(), "held_ms"),
        (
            LeaseReleased::TYPE,
            String::from_utf8(bad_run.to_data().unwrap()).unwrap(),
            "`run`",
        ),
        (
            Metering::TYPE,
            String::from_utf8(bad_component.to_data().unwrap()).unwrap(),
            "`component`",
        ),
    ] {
        let done = billing
            .handle(super::event(ty, "id-1", &data), &h.caps)
            .await
            .unwrap();
        let HandlerOutcome::Reject { reason } = done.output else {
            panic!("{ty} {data}: {:?}", done.output)
        };
        assert!(reason.contains(want), "{reason}");
    }
    assert!(
        h.kv.snapshot("billing-bad-ops").is_empty(),
        "a rejected event changes nothing"
    );
}
