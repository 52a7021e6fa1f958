//! CloudEvents binary mode on the events stream: attributes in `ce-*` headers, the data as
//! the body. Such an event is handled like its structured form (billed exactly, handed to a
//! listener), `sandbus publish --mode binary` sends one, and a dead letter is the original
//! message, every header and the body, plus the `Sandbus-*` headers.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::Value;

use super::cluster::{
    Cluster, PATIENCE, billing_listener, billing_scenario, billing_totals, guest,
};

/// A structured event's binary-mode headers, as a publisher with a plain NATS client would
/// set them (no `Nats-Msg-Id`), and its body.
fn binary_message(event: &Value) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    for attribute in ["id", "source", "type", "time"] {
        headers.insert(
            format!("ce-{attribute}").as_str(),
            event[attribute].as_str().unwrap(),
        );
    }
    headers.insert("content-type", "application/json");
    (headers, event["data"].to_string().into_bytes())
}

/// Publishes each message on `events.<its ce-type>` and waits for the stream to store it.
fn publish_binary(cluster: &Cluster, messages: Vec<(HeaderMap, Vec<u8>)>) {
    let client = cluster.connect();
    cluster.rt.block_on(async move {
        let js = async_nats::jetstream::new(client);
        for (headers, body) in messages {
            let subject = format!("events.{}", headers.get("ce-type").unwrap().as_str());
            js.publish_with_headers(subject, headers, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
}

/// Headers as name → every value, in order.
type Headers = BTreeMap<String, Vec<String>>;

/// A header map as name → every value, in order.
fn all_values(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .map(|(name, values)| {
            (
                name.to_string(),
                values.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

/// The dead letters of `listener`, every header with every value, and the body.
fn dead_letters(cluster: &Cluster, listener: &str) -> Vec<(Headers, Vec<u8>)> {
    let client = cluster.connect();
    let subject = format!("sandbus.dead-letter.{listener}");
    cluster.rt.block_on(async move {
        use futures::StreamExt as _;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("SANDBUS_DEAD_LETTERS").await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                filter_subject: subject,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(Ok(message)) = batch.next().await {
            let headers = message.headers.as_ref().map(all_values).unwrap_or_default();
            out.push((headers, message.payload.to_vec()));
        }
        out
    })
}

#[test]
fn a_binary_mode_vm_pair_published_with_plain_headers_is_billed_exactly() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    billing_listener(&cluster, "billing");
    cluster.wait_for_component("h1", "billing", 1);
    let (events, expected) = billing_scenario(30);
    publish_binary(&cluster, events.iter().map(binary_message).collect());
    cluster.wait("billing totals", |c| {
        billing_totals(c, "billing") == expected
    });
    cluster.wait_drained("billing");
    let status = cluster.status("billing");
    assert_eq!(status["dead_lettered"], 0, "{status}");
    assert!(cluster.dead_letters("billing").is_empty());
    // `sandbus events` lists them as the canonical events they are.
    let listed = cluster.events("vm.*");
    assert_eq!(listed.len(), events.len());
    for (shown, sent) in listed.iter().zip(&events) {
        assert_eq!(shown["id"], sent["id"]);
        assert_eq!(shown["data"], sent["data"]);
    }
}

#[test]
fn an_event_from_publish_mode_binary_reaches_a_listener_with_its_attributes() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    // Echoes every event's id on `echo.<type>`.
    cluster.cli_ok(&[
        "upload",
        &guest("echo-listener"),
        "--name",
        "echo",
        "--grant",
        "publish=echo.>",
    ]);
    cluster.cli_ok(&["subscribe", "echo", "--events", "door.*"]);
    cluster.wait_for_component("h1", "echo", 1);
    let client = cluster.connect();
    let mut echoes = cluster
        .rt
        .block_on(client.subscribe("echo.door.opened"))
        .unwrap();
    cluster.rt.block_on(client.flush()).unwrap();

    let out = cluster.cli_ok(&[
        "publish",
        "door.opened",
        "--data",
        r#"{"door":"north"}"#,
        "--id",
        "d-1",
        "--source",
        "/site/7",
        "--mode",
        "binary",
    ]);
    assert!(out.contains("published d-1 on events.door.opened"), "{out}");

    let echo = cluster.rt.block_on(async {
        use futures::StreamExt as _;
        tokio::time::timeout(PATIENCE, echoes.next()).await
    });
    let echo = echo.expect("the listener echoes the event").unwrap();
    assert_eq!(echo.payload.as_ref(), b"d-1", "the id it was handed");

    // On the stream: the attributes are headers, the body is the data, and the message id
    // is the event's, as in structured mode.
    let stored = cluster.rt.block_on(async {
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_stream(sandbus::bus::names::EVENTS_STREAM)
            .await
            .unwrap();
        stream
            .get_last_raw_message_by_subject("events.door.opened")
            .await
            .unwrap()
    });
    assert_eq!(stored.payload.as_ref(), br#"{"door":"north"}"#);
    let headers = all_values(&stored.headers);
    assert_eq!(headers["ce-id"], ["d-1"]);
    assert_eq!(headers["ce-source"], ["/site/7"]);
    assert_eq!(headers["ce-type"], ["door.opened"]);
    assert_eq!(headers["ce-specversion"], ["1.0"]);
    assert_eq!(headers["content-type"], ["application/json"]);
    assert_eq!(
        headers["Nats-Msg-Id"],
        [sandbus::event::dedup_key("/site/7", "d-1")]
    );
    // Published again: the stream de-duplicates it like a structured event.
    let again = cluster.cli_json(&[
        "publish",
        "door.opened",
        "--data",
        r#"{"door":"north"}"#,
        "--id",
        "d-1",
        "--source",
        "/site/7",
        "--mode",
        "binary",
    ]);
    assert_eq!(again["duplicate"], true, "{again}");
}

#[test]
fn a_dead_letter_is_the_original_message_with_every_header_plus_the_sandbus_ones() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.cli_ok(&["upload", &guest("panic-listener"), "--name", "crasher"]);
    cluster.cli_ok(&[
        "subscribe",
        "crasher",
        "--events",
        "vm.*",
        "--max-deliver",
        "2",
        "--backoff",
        "100ms",
    ]);
    cluster.wait_for_component("h1", "crasher", 1);

    let mut original = HeaderMap::new();
    original.insert("ce-specversion", "1.0");
    original.insert("ce-id", "v-1");
    original.insert("ce-source", "/compute");
    original.insert("ce-type", "vm.started");
    original.insert(
        "ce-traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    original.insert("content-type", "application/json");
    original.append("X-Route", "eu-west");
    original.append("X-Route", "eu-north");
    original.insert("Nats-Msg-Id", "publisher-chosen-id");
    original.insert("Sandbus-Reason", "a publisher cannot write this");
    let body = br#"{"tenant":"acme","instance":"i-9"}"#.to_vec();
    // Invalid: no ce-id.
    let mut invalid = HeaderMap::new();
    invalid.insert("ce-specversion", "1.0");
    invalid.insert("ce-source", "/compute");
    invalid.insert("ce-type", "vm.stopped");
    publish_binary(
        &cluster,
        vec![(original.clone(), body.clone()), (invalid, b"{}".to_vec())],
    );
    cluster.wait("2 dead letters", |c| dead_letters(c, "crasher").len() == 2);

    let letters = dead_letters(&cluster, "crasher");
    let (headers, payload) = letters
        .iter()
        .find(|(headers, _)| headers.get("ce-id").is_some())
        .unwrap();
    assert_eq!(payload, &body, "the body byte for byte");
    for (name, values) in all_values(&original) {
        let kept_as = if name.starts_with("Nats-") || name.starts_with("Sandbus-") {
            format!("Sandbus-Original-{name}")
        } else {
            name.clone()
        };
        assert_eq!(
            headers.get(&kept_as),
            Some(&values),
            "{name} as {kept_as}: {headers:?}"
        );
    }
    assert!(
        headers["Sandbus-Reason"][0].contains("boom: the listener panicked on purpose"),
        "the daemon's reason wins: {headers:?}"
    );
    assert_eq!(headers["Sandbus-Listener"], ["crasher"]);
    assert_eq!(headers["Sandbus-Deliveries"], ["2"]);
    assert_eq!(headers["Sandbus-Event-Subject"], ["events.vm.started"]);
    assert!(headers.contains_key("Sandbus-Event-Sequence"));
    let original_names: usize = all_values(&original).len();
    let sandbus_names = headers
        .keys()
        .filter(|name| name.starts_with("Sandbus-") && !name.starts_with("Sandbus-Original-"))
        .count();
    assert_eq!(
        headers.len(),
        original_names + sandbus_names + 1,
        "the original headers, the daemon's, and the letter's own Nats-Msg-Id: {headers:?}"
    );

    let (headers, payload) = letters
        .iter()
        .find(|(headers, _)| headers.get("ce-id").is_none())
        .unwrap();
    assert_eq!(payload, b"{}");
    assert_eq!(
        headers["Sandbus-Reason"],
        ["not a valid canonical event: attribute `id` is required and must be a non-empty string"]
    );
    assert_eq!(headers["Sandbus-Deliveries"], ["1"], "not retried");
    assert_eq!(headers["ce-type"], ["vm.stopped"]);
}

#[test]
fn a_message_whose_headers_alone_would_not_fit_a_dead_letter_is_still_dead_lettered() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.cli_ok(&["upload", &guest("panic-listener"), "--name", "crasher"]);
    cluster.cli_ok(&["subscribe", "crasher", "--events", "vm.*"]);
    cluster.wait_for_component("h1", "crasher", 1);
    // Not an event (no ce-id), and 2,300 reserved headers, just under JetStream's 64 KiB of
    // headers: renamed `Sandbus-Original-…`, they would grow past it, and the letter could
    // never be stored.
    let mut flood = HeaderMap::new();
    flood.insert("ce-specversion", "1.0");
    flood.insert("ce-source", "/flood");
    flood.insert("ce-type", "vm.flood");
    for i in 0..2300 {
        flood.insert(format!("Sandbus-A{i}").as_str(), "0123456789");
    }
    publish_binary(&cluster, vec![(flood, b"{}".to_vec())]);
    cluster.wait("the dead letter", |c| dead_letters(c, "crasher").len() == 1);
    let letters = dead_letters(&cluster, "crasher");
    let (headers, payload) = &letters[0];
    assert_eq!(headers["Sandbus-Original-Headers-Dropped"], ["2303"]);
    assert!(!headers.contains_key("Sandbus-A0"), "{:?}", headers.keys());
    assert!(
        headers["Sandbus-Reason"][0].contains("attribute `id` is required"),
        "{headers:?}"
    );
    assert_eq!(payload, b"{}");
    assert_eq!(cluster.status("crasher")["pending"], 0);
}
