//! The billing listener's workload, shared by the benchmarks that feed it: VM instances
//! started and stopped, tenants round robin, the seconds each tenant must be billed, and the
//! totals the listener wrote to the bus kv.

use std::collections::BTreeMap;
use std::ops::Range;

use async_nats::jetstream;

/// The `vm.started` and `vm.stopped` events of the instances numbered `instances` (a start
/// then a stop each), instance `i` belonging to tenant `t<i % tenants>`, and the seconds per
/// tenant they bill. Ids and instance names carry `tag`: another tag is another set of
/// events, never a duplicate. Consecutive ranges together give the events of their union, so
/// a large workload can be made (and published) a chunk at a time.
pub fn scenario(
    instances: Range<u64>,
    tenants: u64,
    tag: &str,
) -> (Vec<serde_json::Value>, BTreeMap<String, u64>) {
    let mut events = Vec::new();
    let mut expected = BTreeMap::new();
    for i in instances {
        let tenant = format!("t{}", i % tenants);
        let start = 1_800_000_000 + i * 13;
        let stop = start + 10 + (i * 7) % 500;
        *expected.entry(tenant.clone()).or_default() += stop - start;
        for (kind, at) in [("started", start), ("stopped", stop)] {
            let time = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(at),
            )
            .to_string();
            events.push(serde_json::json!({
                "specversion": "1.0", "id": format!("{tag}-{kind}-{i}"), "source": "/bench",
                "type": format!("vm.{kind}"), "time": time,
                "datacontenttype": "application/json",
                "data": {"tenant": tenant, "instance": format!("{tag}-i-{i}")}
            }));
        }
    }
    (events, expected)
}

/// The billing listener's totals in the bus kv (its namespace is the component's `name`), for
/// tenants `t0` to `t<tenants - 1>`; a tenant with no total yet is left out.
pub async fn bus_totals(
    js: &jetstream::Context,
    name: &str,
    tenants: u64,
) -> BTreeMap<String, u64> {
    let kv = js.get_key_value("sandbus-kv").await.unwrap();
    let mut totals = BTreeMap::new();
    for t in 0..tenants {
        let tenant = format!("t{t}");
        if let Some(value) = kv.get(format!("{name}.total/{tenant}")).await.unwrap() {
            let n = String::from_utf8_lossy(&value).parse().unwrap();
            totals.insert(tenant, n);
        }
    }
    totals
}
