//! Idle listeners: a listener with nothing to do loses its consumer (`[listeners]
//! idle_after`), and its next event makes it again from where it stood, on every daemon,
//! across restarts, without losing or double-counting an event.

use serde_json::Value;

use super::cluster::{Cluster, billing_listener, billing_scenario, billing_totals};

/// A daemon that idles its listeners after a second.
const IDLE_AFTER: [&str; 2] = ["--idle-after", "1s"];

fn consumer_exists(cluster: &Cluster, listener: &str) -> bool {
    let client = cluster.connect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_stream(sandbus::bus::names::EVENTS_STREAM)
            .await
            .unwrap();
        stream
            .consumer_info(&sandbus::bus::names::listener_consumer(listener))
            .await
            .is_ok()
    })
}

fn wait_idle(cluster: &mut Cluster, listener: &str) {
    cluster.wait(&format!("{listener} to be idle"), |c| {
        c.status(listener)["idle"] == Value::Bool(true)
    });
    assert!(
        !consumer_exists(cluster, listener),
        "an idle listener has no consumer"
    );
}

/// Uploads and subscribes the billing listener, bills the first half of `instances`'
/// events and waits until it is idle; the other half, and the totals all of them make.
fn billing_gone_idle(
    cluster: &mut Cluster,
    instances: u64,
) -> (Vec<Value>, std::collections::BTreeMap<String, u64>) {
    billing_listener(cluster, "billing");
    let (events, expected) = billing_scenario(instances);
    let (first, second) = events.split_at(events.len() / 2);
    cluster.publish_events(first);
    cluster.wait_drained("billing");
    wait_idle(cluster, "billing");
    (second.to_vec(), expected)
}

#[test]
fn an_idle_listener_has_no_consumer_and_its_next_events_wake_it_on_every_daemon() {
    let mut cluster = Cluster::new();
    cluster.start_daemon_with("h1", &IDLE_AFTER);
    cluster.start_daemon_with("h2", &IDLE_AFTER);
    let (second, expected) = billing_gone_idle(&mut cluster, 300);
    let status = cluster.status("billing");
    assert_eq!(status["pending"], 0);
    assert!(
        status["subscription"]["idle"]["after_sequence"].as_u64() >= Some(300),
        "it stood after the first 300 events: {status}"
    );
    // Idle on both hosts, and still listed as this host's listener.
    let hosts = cluster.cli_json(&["hosts"]);
    for host in hosts.as_array().unwrap() {
        assert_eq!(host["listeners"], serde_json::json!(["billing"]), "{host}");
    }

    cluster.publish_events(&second);
    cluster.wait("every event billed", |c| {
        billing_totals(c, "billing") == expected
    });
    assert!(
        consumer_exists(&cluster, "billing"),
        "woken: a consumer again"
    );
    cluster.wait_drained("billing");
    assert_eq!(billing_totals(&cluster, "billing"), expected);
    let status = cluster.status("billing");
    assert_eq!(status["dead_lettered"], 0, "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    // And it goes idle again.
    wait_idle(&mut cluster, "billing");
    let logs = cluster.daemon_log("h1") + &cluster.daemon_log("h2");
    assert!(
        logs.contains("idle: its consumer is deleted"),
        "a host says it rested the listener"
    );
}

#[test]
fn events_published_while_no_daemon_runs_wake_an_idle_listener_after_a_restart() {
    let mut cluster = Cluster::new();
    cluster.start_daemon_with("h1", &IDLE_AFTER);
    let (second, expected) = billing_gone_idle(&mut cluster, 200);
    assert_eq!(cluster.terminate_daemon("h1"), Some(0));

    // Nothing runs and nothing has a consumer: the stream keeps the events by age.
    cluster.publish_events(&second);
    assert!(!consumer_exists(&cluster, "billing"));
    cluster.start_daemon_with("h1", &IDLE_AFTER);
    cluster.wait("every event billed", |c| {
        billing_totals(c, "billing") == expected
    });
    cluster.wait_drained("billing");
    assert_eq!(billing_totals(&cluster, "billing"), expected);
    assert_eq!(cluster.status("billing")["dead_lettered"], 0);
}

#[test]
fn a_subscribe_while_idle_keeps_where_the_listener_stood() {
    let mut cluster = Cluster::new();
    cluster.start_daemon_with("h1", &IDLE_AFTER);
    let (second, expected) = billing_gone_idle(&mut cluster, 100);
    let stood = cluster.status("billing")["subscription"]["idle"]["after_sequence"].clone();
    // Subscribing again (another backoff) must neither make a consumer that starts at the
    // newest event nor forget where the idle listener stood.
    cluster.cli_ok(&[
        "subscribe",
        "billing",
        "--events",
        "vm.*",
        "--backoff",
        "200ms",
    ]);
    assert!(!consumer_exists(&cluster, "billing"));
    let status = cluster.status("billing");
    assert_eq!(status["subscription"]["idle"]["after_sequence"], stood);
    assert_eq!(status["subscription"]["backoff"], serde_json::json!([200]));
    cluster.publish_events(&second);
    cluster.wait("every event billed", |c| {
        billing_totals(c, "billing") == expected
    });
}

#[test]
fn resting_and_waking_follow_the_subscription_record_and_leave_nothing_behind() {
    use async_nats::jetstream::consumer::DeliverPolicy;
    use sandbus::bus::{
        BusErrorKind, EventStream, EventStreamConfig, Rested, Subscription, SubscriptionStore,
        names,
    };
    use std::time::Duration;

    let server = super::support::nats::NatsServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let events = EventStream::ensure(js.clone(), &EventStreamConfig::default())
            .await
            .unwrap();
        let store = SubscriptionStore::ensure(&js, events, 1).await.unwrap();
        let stream = js.get_stream(names::EVENTS_STREAM).await.unwrap();
        let consumer = names::listener_consumer("audit");
        for i in 0..3 {
            js.publish(format!("events.vm.e{i}"), "{}".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let long_wait = Duration::from_secs(600);
        store
            .put(&Subscription::new("audit", vec!["vm.*".into()]), long_wait)
            .await
            .unwrap();

        // A fresh consumer with nothing to do rests at the stream's end; a second rest finds
        // nothing to rest.
        assert_eq!(
            store.rest("audit", Duration::ZERO).await.unwrap(),
            Rested::Idle
        );
        assert!(stream.consumer_info(&consumer).await.is_err());
        let record = store.get("audit").await.unwrap().unwrap();
        assert_eq!(record.idle.as_ref().unwrap().after_sequence, 3);
        assert_eq!(
            store.rest("audit", Duration::ZERO).await.unwrap(),
            Rested::Gone
        );

        // Waking makes it again just after where it stood, with at least the recorded ack wait.
        store.wake("audit", Duration::from_secs(5)).await.unwrap();
        let info = stream.consumer_info(&consumer).await.unwrap();
        assert_eq!(
            info.config.deliver_policy,
            DeliverPolicy::ByStartSequence { start_sequence: 4 }
        );
        assert_eq!(info.config.ack_wait, long_wait);
        assert_eq!(
            info.num_pending, 0,
            "the events before it are not redelivered"
        );

        // A subscribe while it has a consumer updates it and keeps where it starts.
        store
            .put(
                &Subscription::new("audit", vec!["device.>".into()]),
                long_wait,
            )
            .await
            .unwrap();
        let info = stream.consumer_info(&consumer).await.unwrap();
        assert_eq!(info.config.filter_subjects, ["events.device.>"]);
        assert!(matches!(
            info.config.deliver_policy,
            DeliverPolicy::ByStartSequence { .. }
        ));

        // A subscribe while idle makes no consumer; the wake after it follows the new record.
        assert_eq!(
            store.rest("audit", Duration::ZERO).await.unwrap(),
            Rested::Idle
        );
        store
            .put(&Subscription::new("audit", vec!["usb.*".into()]), long_wait)
            .await
            .unwrap();
        assert!(stream.consumer_info(&consumer).await.is_err());
        store.wake("audit", Duration::from_secs(5)).await.unwrap();
        let info = stream.consumer_info(&consumer).await.unwrap();
        assert_eq!(info.config.filter_subjects, ["events.usb.*"]);

        // Unsubscribed: the record and the consumer are gone, and nothing can wake it.
        store.remove("audit").await.unwrap();
        assert!(stream.consumer_info(&consumer).await.is_err());
        let woken = store
            .wake("audit", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(woken.kind, BusErrorKind::NotFound);
        assert!(stream.consumer_info(&consumer).await.is_err());
    });
}
