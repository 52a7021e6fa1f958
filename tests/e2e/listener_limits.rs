//! How many listeners fit: the server limits that apply, the errors that name them, and
//! nothing left half-made when one refuses.
//!
//! nats-server 2.15 gives a stream without a consumer limit of its own 1,000 consumers
//! (`default_max_consumers`); each subscribed listener is one consumer on the events stream,
//! and every read of an object store or of a key's history with the client's readers left one
//! more consumer behind for 30 s. These tests pin what sandbus does about both, against a real server.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::TryStreamExt as _;

use super::cluster::{Cluster, guest, write};
use super::support::nats::NatsServer;
use sandbus::bus::{
    BusErrorKind, ComponentStore, EventStream, EventStreamConfig, ManifestDraft, Subscription,
    SubscriptionStore, names,
};
use sandbus::sandbox::World;

/// A runtime and a JetStream context on `server`.
fn jetstream_on(server: &NatsServer) -> (tokio::runtime::Runtime, jetstream::Context) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let js =
        rt.block_on(async { jetstream::new(async_nats::connect(server.url()).await.unwrap()) });
    (rt, js)
}

/// Creates durable pull consumers `c0`, `c1`... on `stream` until `count` are made or one is
/// refused; how many were made and the refusal.
async fn fill_with_consumers(stream: &stream::Stream, count: usize) -> (usize, Option<String>) {
    for i in 0..count {
        let made = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("c{i}")),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await;
        if let Err(e) = made {
            return (i, Some(e.to_string()));
        }
    }
    (count, None)
}

async fn consumer_names(js: &jetstream::Context, stream: &str) -> Vec<String> {
    let stream = js.get_stream(stream).await.unwrap();
    stream.consumer_names().try_collect().await.unwrap()
}

#[test]
fn a_stream_without_its_own_limit_holds_1000_consumers_and_the_events_stream_sets_its_own() {
    let server = NatsServer::start();
    let (rt, js) = jetstream_on(&server);
    rt.block_on(async {
        let bare = js
            .create_stream(stream::Config {
                name: "BARE".into(),
                subjects: vec!["bare.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let (made, refusal) = fill_with_consumers(&bare, 1_001).await;
        assert_eq!(made, 1_000, "the server's default_max_consumers");
        let refusal = refusal.expect("the 1,001st consumer is refused");
        assert!(refusal.contains("10026"), "{refusal}");

        EventStream::ensure(js.clone(), &EventStreamConfig::default())
            .await
            .unwrap();
        let events = js.get_stream(names::EVENTS_STREAM).await.unwrap();
        assert_eq!(events.cached_info().config.max_consumers, 20_000);
        let (made, refusal) = fill_with_consumers(&events, 1_001).await;
        assert_eq!((made, refusal), (1_001, None));
    });
}

#[test]
fn reading_component_bytes_a_thousand_times_leaves_no_consumer_behind() {
    let server = NatsServer::start();
    let (rt, js) = jetstream_on(&server);
    rt.block_on(async {
        let store = ComponentStore::ensure(&js, 1).await.unwrap();
        // Several chunks, the last one short.
        let component: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (digest, _) = store.put_bytes(&component).await.unwrap();
        // More reads than a stream may hold consumers, faster than the server would expire
        // consumers left behind (30 s).
        for _ in 0..1_100 {
            let bytes = store.bytes(digest.as_str(), 1 << 20).await.unwrap();
            assert!(bytes == component, "the bytes read are the bytes stored");
        }
        let left = consumer_names(&js, &names::object_stream(names::COMPONENTS_BUCKET)).await;
        assert!(left.is_empty(), "consumers left behind: {left:?}");
        let over = store.bytes(digest.as_str(), 1_000).await.unwrap_err();
        assert_eq!(over.kind, BusErrorKind::Corrupt, "{over}");
        let missing = store.bytes(&"0".repeat(64), 1 << 20).await.unwrap_err();
        assert_eq!(missing.kind, BusErrorKind::NotFound, "{missing}");
    });
}

#[test]
fn recording_a_thousand_components_leaves_no_consumer_behind() {
    let server = NatsServer::start();
    let (rt, js) = jetstream_on(&server);
    rt.block_on(async {
        let store = ComponentStore::ensure(&js, 1).await.unwrap();
        let bytes = b"a component".to_vec();
        let (digest, _) = store.put_bytes(&bytes).await.unwrap();
        let draft = |name: String| ManifestDraft {
            name,
            digest: digest.clone(),
            size: bytes.len() as u64,
            world: World::Listener,
            grants: Vec::new(),
            kv_read: Vec::new(),
            limits: Vec::new(),
            config: Default::default(),
        };
        // Each record reads the name's history (versions go on across removals).
        for i in 0..1_100 {
            let recorded = store.record(draft(format!("c{i}"))).await.unwrap();
            assert_eq!(recorded.version, 1);
        }
        store.remove("c0").await.unwrap();
        assert_eq!(store.record(draft("c0".into())).await.unwrap().version, 2);
        assert_eq!(store.history("c0").await.unwrap().len(), 2);
        let left = consumer_names(&js, &format!("KV_{}", names::MANIFESTS_BUCKET)).await;
        assert!(left.is_empty(), "consumers left behind: {left:?}");
    });
}

#[test]
fn a_subscription_past_the_streams_consumer_limit_is_refused_naming_it_and_nothing_is_kept() {
    let mut cluster = Cluster::new();
    let config = write(&cluster, "sandbus.toml", b"[events]\nmax_consumers = 3\n");
    cluster.start_daemon_with("h1", &["--config", &config]);
    for name in ["l1", "l2", "l3", "l4"] {
        cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", name]);
    }
    for name in ["l1", "l2", "l3"] {
        cluster.cli_ok(&["subscribe", name, "--events", "vm.*"]);
    }
    let refused = cluster.cli(&["subscribe", "l4", "--events", "vm.*"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("max_consumers, 3") && stderr.contains("[events] max_consumers"),
        "the error names the limit and what to change: {stderr}"
    );
    let subscribed: Vec<String> = cluster
        .cli_json(&["status"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subscription"]["listener"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(subscribed, ["l1", "l2", "l3"]);
    // Room again once a listener is unsubscribed. Reading events takes that room only while
    // a page is read: each read deletes its consumer, so reads one after another all work,
    // and the room is still there after them.
    cluster.cli_ok(&["unsubscribe", "l1"]);
    for _ in 0..3 {
        assert!(cluster.events("vm.*").is_empty());
    }
    cluster.cli_ok(&["subscribe", "l4", "--events", "vm.*"]);
}

#[test]
fn a_subscription_whose_record_cannot_be_written_leaves_the_consumer_as_it_was() {
    let server = NatsServer::start();
    let (rt, js) = jetstream_on(&server);
    rt.block_on(async {
        let events = EventStream::ensure(js.clone(), &EventStreamConfig::default())
            .await
            .unwrap();
        let store = SubscriptionStore::ensure(&js, events, 1).await.unwrap();
        let ack_wait = Duration::from_secs(60);
        let mut kept = Subscription::new("kept", vec!["vm.*".into()]);
        store.put(&kept, ack_wait).await.unwrap();
        // The record's bucket is gone: every write of a record fails.
        js.delete_stream(format!("KV_{}", names::SUBSCRIPTIONS_BUCKET))
            .await
            .unwrap();

        let new = Subscription::new("new", vec!["vm.*".into()]);
        store.put(&new, ack_wait).await.unwrap_err();
        let consumers = consumer_names(&js, names::EVENTS_STREAM).await;
        assert_eq!(
            consumers,
            [names::listener_consumer("kept")],
            "no consumer for `new`"
        );

        kept.max_in_flight = 7;
        store.put(&kept, ack_wait).await.unwrap_err();
        let stream = js.get_stream(names::EVENTS_STREAM).await.unwrap();
        let info = stream
            .consumer_info(names::listener_consumer("kept"))
            .await
            .unwrap();
        assert_eq!(
            info.config.max_ack_pending, 128,
            "the consumer is back to the subscription on record"
        );
    });
}
