//! wasmCloud messaging listeners through the real daemon: `messaging-echo-listener`, built
//! only against the vendored `wasmcloud:messaging@0.2.0` and `wasi:logging` WIT (as a
//! wasmCloud user builds a component), uploaded and subscribed like any listener.

use futures::StreamExt as _;
use serde_json::{Value, json};

use super::cluster::{Cluster, PATIENCE, guest};

/// Uploads the echo fixture as `name` with `grants`, subscribed to `vm.*` with
/// `max_deliver` deliveries 50 ms apart, and waits until host `h1` has it.
fn echo_listener(cluster: &mut Cluster, name: &str, grants: &[&str], max_deliver: &str) {
    let file = guest("messaging-echo-listener");
    let mut upload = vec!["upload", file.as_str(), "--name", name];
    for grant in grants {
        upload.extend(["--grant", grant]);
    }
    cluster.cli_ok(&upload);
    cluster.cli_ok(&[
        "subscribe",
        name,
        "--events",
        "vm.*",
        "--max-deliver",
        max_deliver,
        "--backoff",
        "50ms",
    ]);
    cluster.wait_for_component("h1", name, 1);
}

fn vm_event(id: &str, ty: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/compute/eu-1", "type": ty,
        "subject": "vm-1", "time": "2026-11-21T10:00:00Z",
        "datacontenttype": "application/json", "data": data,
    })
}

/// The first message on `subject` once `publish` has run, within [`PATIENCE`].
fn next_on(cluster: &Cluster, subject: &str, publish: impl FnOnce()) -> async_nats::Message {
    let client = cluster.connect();
    let mut messages = cluster
        .rt
        .block_on(client.subscribe(subject.to_owned()))
        .unwrap();
    cluster.rt.block_on(client.flush()).unwrap();
    publish();
    cluster
        .rt
        .block_on(async { tokio::time::timeout(PATIENCE, messages.next()).await })
        .unwrap_or_else(|_| panic!("nothing on {subject}"))
        .unwrap()
}

#[test]
fn a_messaging_listener_is_handed_each_event_as_a_broker_message_on_its_subject() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    echo_listener(&mut cluster, "msg-echo", &["publish=echo.>"], "3");
    let event = vm_event("m-1", "vm.started", json!({"tenant": "acme", "cpus": 4}));
    let echo = next_on(&cluster, "echo.started", || {
        cluster.publish_events(std::slice::from_ref(&event));
    });
    // The body it was handed, echoed unchanged, is the event as structured CloudEvents JSON:
    // the daemon's canonical form of what was published, attribute for attribute.
    let canonical = sandbus::event::CanonicalEvent::from_json(event.to_string().as_bytes())
        .unwrap()
        .to_json();
    assert_eq!(echo.payload.as_ref(), canonical.as_slice());
    let handed: Value = serde_json::from_slice(&echo.payload).unwrap();
    assert_eq!(handed, event);
    // Its subject was the event's subject on the stream.
    cluster.wait("the guest's log line", |c| {
        c.daemon_log("h1").contains(&format!(
            "messaging-echo: got events.vm.started ({} bytes)",
            canonical.len()
        ))
    });
    cluster.wait_drained("msg-echo");
    let status = cluster.status("msg-echo");
    assert_eq!(status["dead_lettered"], 0, "{status}");
    // A messaging listener is a listener, to `ls` as to everything else; `inspect` names
    // the handler it exports.
    let listed = cluster.cli_ok(&["ls"]);
    let row = listed.lines().find(|l| l.contains("msg-echo")).unwrap();
    assert!(row.contains("listener"), "{listed}");
    let inspected = cluster.cli_ok(&["inspect", &guest("messaging-echo-listener")]);
    assert!(
        inspected.contains("wasmcloud:messaging/handler@0.2.0"),
        "{inspected}"
    );
}

#[test]
fn an_err_from_handle_message_is_retried_then_dead_lettered_with_its_text() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    echo_listener(&mut cluster, "msg-reject", &["publish=echo.>"], "3");
    let event = vm_event("m-2", "vm.stopped", json!({"mark": "reject-me"}));
    cluster.publish_events(std::slice::from_ref(&event));
    cluster.wait("the dead letter", |c| {
        !c.dead_letters("msg-reject").is_empty()
    });
    cluster.wait_drained("msg-reject");
    let letters = cluster.dead_letters("msg-reject");
    assert_eq!(letters.len(), 1);
    let (headers, payload) = &letters[0];
    let reason = &headers["Sandbus-Reason"];
    assert!(reason.contains("refused: events.vm.stopped"), "{reason}");
    assert!(reason.contains("after 3 deliveries"), "{reason}");
    assert_eq!(headers["Sandbus-Deliveries"], "3");
    assert_eq!(payload.as_slice(), event.to_string().as_bytes());
    let status = cluster.status("msg-reject");
    assert_eq!(status["dead_lettered"], 1, "{status}");
    assert_eq!(
        status["last_error"]["reason"],
        "rejected: refused: events.vm.stopped"
    );
}

#[test]
fn an_ungranted_publish_fails_the_delivery_saying_which_grant_to_add() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    echo_listener(&mut cluster, "msg-ungranted", &["publish=audit.>"], "1");
    cluster.publish_events(&[vm_event("m-3", "vm.started", json!({}))]);
    cluster.wait("the dead letter", |c| {
        !c.dead_letters("msg-ungranted").is_empty()
    });
    let (headers, _) = &cluster.dead_letters("msg-ungranted")[0];
    let reason = &headers["Sandbus-Reason"];
    assert!(
        reason.contains(
            "publish: publishing to `echo.started` is not granted to this component; grant \
             it at upload with --grant publish=echo.started"
        ),
        "{reason}"
    );
}

#[test]
fn a_consumer_request_gets_the_answer_of_a_responder_on_a_granted_subject() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    echo_listener(
        &mut cluster,
        "msg-ask",
        &["publish=echo.>", "publish=ask.>"],
        "1",
    );
    // A responder on `ask.me` answers with the size of what it was asked.
    let client = cluster.connect();
    let mut asked = cluster.rt.block_on(client.subscribe("ask.me")).unwrap();
    cluster.rt.block_on(client.flush()).unwrap();
    let answering = client.clone();
    cluster.rt.spawn(async move {
        while let Some(request) = asked.next().await {
            if let Some(reply) = request.reply {
                let answer = format!("asked {} bytes", request.payload.len());
                let _ = answering.publish(reply, answer.into()).await;
            }
        }
    });
    let event = vm_event("m-4", "vm.asked", json!({"mark": "ask-me"}));
    let echo = next_on(&cluster, "echo.asked", || {
        cluster.publish_events(std::slice::from_ref(&event));
    });
    let asked_bytes = sandbus::event::CanonicalEvent::from_json(event.to_string().as_bytes())
        .unwrap()
        .to_json()
        .len();
    assert_eq!(
        String::from_utf8_lossy(&echo.payload),
        format!("asked {asked_bytes} bytes")
    );
    cluster.wait_drained("msg-ask");
    assert_eq!(cluster.status("msg-ask")["dead_lettered"], 0);
}
