//! A trace follows one call: the sandbox's `sandbox.call` span names the component, its
//! world and the invocation, and every host import the guest calls (kv, log, bus) runs in a
//! span inside it, so one event's work can be read end to end in a trace.

use std::sync::{Arc, Mutex};

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use super::Harness;
use super::billing::billing;

/// One span as it was opened: its name, its fields (as text) and its ancestors' names.
#[derive(Debug, Clone)]
struct SeenSpan {
    id: u64,
    name: String,
    fields: Vec<(String, String)>,
    ancestors: Vec<u64>,
}

impl SeenSpan {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((
            field.name().to_owned(),
            format!("{value:?}").replace('"', ""),
        ));
    }
}

/// Records every span opened, and the fields recorded on it later.
#[derive(Clone, Default)]
struct SpanRecorder(Arc<Mutex<Vec<SeenSpan>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanRecorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        attrs.record(&mut Fields(&mut fields));
        let ancestors = ctx
            .span(id)
            .map(|span| span.scope().skip(1).map(|s| s.id().into_u64()).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().push(SeenSpan {
            id: id.into_u64(),
            name: attrs.metadata().name().to_owned(),
            fields,
            ancestors,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(span) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

/// Runs [`spans_of_one_call`] alone in a process of its own (this test binary, asked for
/// that one test): whether a span is recorded depends on process-wide state (each callsite
/// caches whether any subscriber wants it), which the other tests' threads, running the
/// same callsites with no subscriber, race with (2 failures in 4 runs in one process).
#[test]
fn host_imports_run_in_spans_inside_the_call_that_names_component_and_invocation() {
    let name = "spans::spans_of_one_call";
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--ignored",
            "--exact",
            name,
            "--test-threads=1",
            "--nocapture",
        ])
        .output()
        .expect("the test binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} failed alone:\n{text}");
    assert!(text.contains("1 passed"), "{name} did not run:\n{text}");
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "run alone in its own process by the test above"]
async fn spans_of_one_call() {
    let recorder = SpanRecorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(recorder.clone())
        .with(tracing_subscriber::filter::LevelFilter::TRACE);
    let _default = tracing::subscriber::set_default(subscriber);

    let billing = billing("billing-traced");
    let h = Harness::new();
    let event = super::billing::vm_event("started", "acme", "vm-1", 1_790_000_000);
    let invocation = billing.handle(event, &h.caps).await.unwrap();

    let spans = recorder.0.lock().unwrap().clone();
    let call = spans
        .iter()
        .find(|s| s.name == "sandbox.call")
        .unwrap_or_else(|| panic!("no sandbox.call span among {spans:#?}"));
    assert_eq!(call.field("component"), Some("billing-traced"), "{call:?}");
    assert_eq!(call.field("world"), Some("listener"), "{call:?}");
    assert_eq!(
        call.field("invocation"),
        Some(invocation.id.to_string().as_str()),
        "{call:?}"
    );

    let imports: Vec<&SeenSpan> = spans
        .iter()
        .filter(|s| s.name == "wit-bindgen import")
        .collect();
    let kv_calls = imports
        .iter()
        .filter(|s| s.field("module") == Some("kv"))
        .count();
    assert!(kv_calls > 0, "no kv import span among {imports:#?}");
    for import in &imports {
        assert!(
            import.ancestors.contains(&call.id),
            "import span outside the call: {import:?}"
        );
    }
}
