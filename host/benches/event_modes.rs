//! What reading an event costs in each CloudEvents content mode, against the structured form
//! in the same run: `structured/N` is `CanonicalEvent::from_message` on the JSON form with an
//! N-byte JSON payload (what every sandbus publisher sends), `binary/N` the same event in
//! binary mode (`ce-*` headers, the payload as the body). The ratio binary/structured per N
//! is the figure to watch: the dispatcher reads every delivered event this way.
//!
//! Run: `cargo bench -p sandbus --bench event_modes` (release build; no server needed).

#![allow(
    missing_docs,
    reason = "criterion_group! and criterion_main! generate undocumented items"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sandbus::event::CanonicalEvent;

const PAYLOADS: [usize; 3] = [16, 1024, 64 * 1024];

/// A `vm.started` with a JSON payload of about `size` bytes.
fn event(size: usize) -> CanonicalEvent {
    let data = serde_json::json!({ "tenant": "acme", "pad": "x".repeat(size) });
    CanonicalEvent {
        id: "0f8e2c1a-bench".into(),
        source: "/bench".into(),
        ty: "vm.started".into(),
        subject: Some("vm-1".into()),
        time: Some("2026-11-21T10:00:00Z".into()),
        datacontenttype: Some("application/json".into()),
        data: data.to_string().into_bytes(),
        depth: 0,
    }
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_event");
    group.throughput(Throughput::Elements(1));
    for size in PAYLOADS {
        let event = event(size);
        let json = event.to_json();
        // As a JetStream delivery carries them: the message id beside the attributes.
        let msg_id = event.dedup_key();
        let structured_headers = [("Nats-Msg-Id", msg_id.as_str())];
        group.bench_function(BenchmarkId::new("structured", size), |b| {
            b.iter(|| CanonicalEvent::from_message(black_box(&structured_headers), &json))
        });
        let binary = event.binary_headers();
        let binary_headers: Vec<(&str, &str)> = std::iter::once(("Nats-Msg-Id", msg_id.as_str()))
            .chain(binary.iter().map(|(n, v)| (*n, v.as_str())))
            .collect();
        group.bench_function(BenchmarkId::new("binary", size), |b| {
            b.iter(|| CanonicalEvent::from_message(black_box(&binary_headers), &event.data))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = read
}
criterion_main!(benches);
