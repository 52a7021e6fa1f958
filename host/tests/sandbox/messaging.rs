//! wasmCloud messaging listeners through the library: the `messaging-echo-listener` fixture,
//! built only against the vendored `wasmcloud:messaging` and `wasi:logging` WIT, run as a
//! listener with in-memory capabilities.

use sandbus::sandbox::{HandlerOutcome, ListenerHandler, World};

use super::support::guest;
use super::{Harness, event, sandbox, spec};

/// The fixture, prepared as a listener with `grants`.
fn echo(grants: &[&str]) -> sandbus::sandbox::PreparedComponent {
    sandbox()
        .prepare(
            spec("messaging-echo", World::Listener, grants, &[]),
            &guest("messaging-echo-listener"),
        )
        .unwrap()
}

/// The reason of a rejected call.
fn rejected(outcome: HandlerOutcome) -> String {
    match outcome {
        HandlerOutcome::Reject { reason } => reason,
        other => panic!("expected a reject, got {other:?}"),
    }
}

#[tokio::test]
async fn a_messaging_listener_is_handed_the_event_as_a_broker_message_on_its_subject() {
    let component = echo(&["echo.>"]);
    assert_eq!(component.world(), World::Listener);
    assert_eq!(
        component.listener_handler(),
        Some(ListenerHandler::WasmcloudMessaging)
    );
    let h = Harness::new();
    let handed = event("vm.started", "m1", r#"{"n":1}"#);
    let body = handed.to_json();
    let done = component.handle(handed, &h.caps).await.unwrap();
    assert_eq!(done.output, HandlerOutcome::Ok);
    assert_eq!(done.metering.published, 1);
    // The fixture echoes the body it was handed on `echo.<last token of the subject>`.
    let published = h.publisher.take();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].subject, "echo.started");
    assert_eq!(published[0].payload.as_ref(), body.as_slice());
    assert_eq!(published[0].reply_to, None);
    let lines: Vec<String> = h.log.take().into_iter().map(|l| l.message).collect();
    let expected = format!(
        "messaging-echo: got events.vm.started ({} bytes)",
        body.len()
    );
    assert!(lines.contains(&expected), "{lines:?}");
}

#[tokio::test]
async fn an_err_from_handle_message_is_a_reject_with_the_guests_text() {
    let h = Harness::new();
    let done = echo(&["echo.>"])
        .handle(
            event("vm.stopped", "m2", r#"{"mark":"reject-me"}"#),
            &h.caps,
        )
        .await
        .unwrap();
    assert_eq!(rejected(done.output), "refused: events.vm.stopped");
    assert!(h.publisher.take().is_empty());
}

#[tokio::test]
async fn an_ungranted_consumer_publish_is_an_err_naming_the_grant_to_add() {
    let h = Harness::new();
    let done = echo(&[])
        .handle(event("vm.started", "m3", "{}"), &h.caps)
        .await
        .unwrap();
    assert_eq!(
        rejected(done.output),
        "publish: publishing to `echo.started` is not granted to this component; grant it \
         at upload with --grant publish=echo.started (or a pattern covering it)"
    );
    assert!(h.publisher.take().is_empty());
    assert_eq!(done.metering.published, 0);
}

#[tokio::test]
async fn a_consumer_request_needs_a_publish_grant_and_a_responder() {
    let ask = || event("vm.asked", "m4", r#"{"mark":"ask-me"}"#);
    // Not granted: refused before anything is sent.
    let h = Harness::new();
    let done = echo(&["echo.>"]).handle(ask(), &h.caps).await.unwrap();
    let reason = rejected(done.output);
    assert!(
        reason.starts_with("request: publishing to `ask.me` is not granted"),
        "{reason}"
    );
    assert!(h.publisher.take().is_empty());
    // Granted: sent, and the recording bus has no one to answer it.
    let h = Harness::new();
    let done = echo(&["echo.>", "ask.>"])
        .handle(ask(), &h.caps)
        .await
        .unwrap();
    assert_eq!(
        rejected(done.output),
        "request: no one answers requests on `ask.me`; start a responder there first"
    );
    let sent = h.publisher.take();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].subject, "ask.me");
}
