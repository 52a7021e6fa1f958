//! The dispatcher's rules, without a NATS server: deliveries that record how they were
//! answered, failure reports kept in the same journal (so the order shows), and real
//! listener fixtures run in a real sandbox.
//!
//! Needs the guests built by `scripts/build-guests.sh` into `target/guests` (or
//! `SANDBUS_GUESTS_DIR`).

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::HANDBACK_DELAY;
use crate::daemon::host_events::{HostEvent as _, ListenerFailed, ListenerThrottled};

use harness::*;

#[tokio::test]
async fn a_handled_event_is_acknowledged_and_nothing_else() {
    let harness = Setup::default().build();
    assert_eq!(
        harness.dispatch(1, event("e1")).await,
        [Entry::Ack(SEQUENCE)]
    );
}

#[tokio::test]
async fn a_retry_is_handed_back_after_the_delay_the_listener_asked_for() {
    // The fixture asks for `retry(50 ms)` on an event's first attempt.
    let harness = Setup::with("retry-once-listener", &[]).build();
    assert_eq!(
        harness.dispatch(1, event("e1")).await,
        [Entry::Nak(SEQUENCE, Duration::from_millis(50))]
    );
}

#[tokio::test]
async fn a_retry_without_a_delay_waits_the_subscriptions_backoff_for_that_delivery() {
    // With its kv unavailable, the fixture asks for `retry` with no delay.
    let harness = Setup {
        kv: Arc::new(UnavailableKv),
        ..Setup::with("retry-once-listener", &[])
    }
    .build();
    assert_eq!(
        harness.dispatch(2, event("e1")).await,
        [Entry::Nak(SEQUENCE, Duration::from_secs(2))],
        "the backoff after the 2nd delivery"
    );
}

#[tokio::test]
async fn a_failure_with_deliveries_left_is_reported_and_handed_back_after_the_backoff() {
    let harness = Setup::with("panic-listener", &[]).build();
    assert_eq!(
        harness.dispatch(1, event("e1")).await,
        [
            recorded(Some("e1")),
            announced(ListenerFailed::TYPE, 0),
            Entry::Nak(SEQUENCE, Duration::from_millis(100)),
        ]
    );
    assert!(harness.journal.letters().is_empty());
}

#[tokio::test]
async fn a_failure_at_the_last_delivery_is_dead_lettered_then_terminated() {
    let harness = Setup::with("panic-listener", &[]).build();
    let payload = event("e1");
    assert_eq!(
        harness.dispatch(3, payload.clone()).await,
        dead_lettered(Some("e1"), 3)
    );
    let letter = only(harness.journal.letters());
    assert_eq!(letter.listener, LISTENER);
    assert_eq!(letter.subject, SUBJECT);
    assert_eq!(
        letter.payload, payload,
        "the event exactly as it was delivered"
    );
    assert!(
        letter
            .reason
            .ends_with("(after 3 deliveries, max-deliver 3)"),
        "{}",
        letter.reason
    );
}

#[tokio::test]
async fn a_reject_at_the_last_delivery_is_dead_lettered_with_the_listeners_reason() {
    // The fixture rejects an id that cannot be part of a kv key.
    let harness = Setup::with("retry-once-listener", &[]).build();
    assert_eq!(
        harness.dispatch(3, event("a..b")).await,
        dead_lettered(Some("a..b"), 3)
    );
    let reason = only(harness.journal.letters()).reason;
    assert!(reason.starts_with("rejected: "), "{reason}");
    assert!(
        reason.contains("kv key"),
        "the listener's own words: {reason}"
    );
}

#[tokio::test]
async fn a_retry_asked_for_at_the_last_delivery_is_dead_lettered() {
    let harness = Setup {
        max_deliver: 1,
        ..Setup::with("retry-once-listener", &[])
    }
    .build();
    assert_eq!(
        harness.dispatch(1, event("e1")).await,
        dead_lettered(Some("e1"), 1)
    );
    assert_eq!(
        harness.journal.failure_reasons(),
        ["the listener asked for a retry, but no deliveries are left"]
    );
}

#[tokio::test]
async fn a_message_that_is_not_an_event_is_dead_lettered_at_once() {
    // Its first delivery of three, and no component runs: retrying cannot fix it.
    let harness = Setup {
        listener: None,
        ..Setup::default()
    }
    .build();
    assert_eq!(
        harness.dispatch(1, "not an event").await,
        dead_lettered(None, 1)
    );
    let reason = only(harness.journal.failure_reasons());
    assert!(
        reason.starts_with("not a valid canonical event"),
        "{reason}"
    );
    assert_eq!(only(harness.journal.letters()).reason, reason);
}

#[tokio::test]
async fn an_event_on_another_types_subject_is_dead_lettered_at_once() {
    let harness = Setup::default().build();
    let mut delivery = harness.delivery(1, event("e1"));
    delivery.subject = "events.vm.stopped".to_owned();
    harness.dispatcher.dispatch(&delivery).await;
    assert_eq!(harness.journal.entries(), dead_lettered(None, 1));
    let letter = only(harness.journal.letters());
    assert_eq!(letter.subject, "events.vm.stopped");
    assert!(
        letter.reason.contains("does not match"),
        "{}",
        letter.reason
    );
}

#[tokio::test]
async fn a_binary_mode_event_reaches_the_listener_as_its_attributes_say() {
    // The fixture rejects an id that cannot be part of a kv key: the id it was handed is the
    // `ce-id` header's.
    let harness = Setup::with("retry-once-listener", &[]).build();
    let mut delivery = harness.delivery(3, "{}");
    delivery.headers = binary_headers("a..b");
    harness.dispatcher.dispatch(&delivery).await;
    assert_eq!(harness.journal.entries(), dead_lettered(Some("a..b"), 3));
    let reason = only(harness.journal.letters()).reason;
    assert!(reason.starts_with("rejected: "), "{reason}");
}

#[tokio::test]
async fn a_dead_letter_keeps_the_messages_headers_and_body() {
    let harness = Setup::with("panic-listener", &[]).build();
    let mut delivery = harness.delivery(3, "{\"cpus\":4}");
    delivery.headers = binary_headers("e1");
    delivery
        .headers
        .push(("Nats-Msg-Id".to_owned(), "3:/tse1".to_owned()));
    harness.dispatcher.dispatch(&delivery).await;
    let letter = only(harness.journal.letters());
    assert_eq!(letter.headers, delivery.headers);
    assert_eq!(letter.payload, delivery.payload);
}

#[tokio::test]
async fn a_binary_mode_message_without_an_id_is_dead_lettered_at_once_saying_so() {
    let harness = Setup::default().build();
    let mut delivery = harness.delivery(1, "{}");
    delivery.headers = binary_headers("e1");
    delivery.headers.retain(|(name, _)| name != "ce-id");
    harness.dispatcher.dispatch(&delivery).await;
    assert_eq!(harness.journal.entries(), dead_lettered(None, 1));
    let reason = only(harness.journal.letters()).reason;
    assert_eq!(
        reason,
        "not a valid canonical event: attribute `id` is required and must be a non-empty string"
    );
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_stored_is_handed_back_not_dropped() {
    let harness = Setup {
        refuse_dead_letters: true,
        ..Setup::with("panic-listener", &[])
    }
    .build();
    assert_eq!(
        harness.dispatch(3, event("e1")).await,
        [
            recorded(Some("e1")),
            announced(ListenerFailed::TYPE, 0),
            Entry::Nak(SEQUENCE, Duration::from_secs(1)),
        ]
    );
}

#[tokio::test]
async fn an_event_for_a_listener_unloaded_meanwhile_is_handed_back() {
    let harness = Setup {
        listener: None,
        ..Setup::default()
    }
    .build();
    assert_eq!(
        harness.dispatch(1, event("e1")).await,
        [Entry::Nak(SEQUENCE, Duration::from_secs(1))]
    );
}

#[tokio::test]
async fn a_message_without_delivery_metadata_is_terminated() {
    let harness = Setup::default().build();
    let mut delivery = harness.delivery(1, event("e1"));
    delivery.info = None;
    harness.dispatcher.dispatch(&delivery).await;
    assert_eq!(harness.journal.entries(), [Entry::Term(0)]);
}

#[tokio::test]
async fn a_call_still_running_at_shutdown_is_handed_back_after_the_grace() {
    // The fixture spins until its 30 s deadline; the grace is 100 ms.
    let harness = Setup::with("spin-listener", &["timeout=30s"]).build();
    let started = Instant::now();
    let (entries, ()) = tokio::join!(harness.dispatch(1, event("e1")), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        harness.stop.cancel();
    });
    assert_eq!(entries, [Entry::Nak(SEQUENCE, HANDBACK_DELAY)]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "handed back after the grace, not the deadline: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stopping_hands_back_the_call_in_flight_and_what_was_pulled_but_not_started() {
    // One event at a time: the first spins, the second waits in the pulled batch.
    let journal = Arc::new(Journal::default());
    let (handle, pulled) = Setup {
        max_in_flight: 1,
        ..Setup::with("spin-listener", &["timeout=30s"])
    }
    .spawn(
        &journal,
        vec![
            delivery(&journal, 1, 1, event("e1")),
            delivery(&journal, 2, 1, event("e2")),
        ],
    );
    tokio::time::timeout(Duration::from_secs(10), pulled.notified())
        .await
        .expect("the dispatcher pulls");
    // Time for the first call to start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    handle.stop().await;
    // The one not started is handed back at once, the one running after the grace.
    assert_eq!(
        journal.entries(),
        [Entry::Nak(2, HANDBACK_DELAY), Entry::Nak(1, HANDBACK_DELAY),]
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped after the grace: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_pull_that_went_silent_is_pulled_again_and_the_events_after_it_are_handled() {
    let journal = Arc::new(Journal::default());
    let (handle, _pulled) = Setup::with("noop-listener", &[]).spawn_with_silence(
        &journal,
        vec![delivery(&journal, 1, 1, event("e1"))],
        vec![delivery(&journal, 2, 1, event("e2"))],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while journal.entries().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop().await;
    let mut entries = journal.entries();
    entries.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(entries, [Entry::Ack(1), Entry::Ack(2)]);
}

#[tokio::test]
async fn a_listener_that_publishes_once_per_event_is_never_held_to_the_rate_cap() {
    // A cap of 1/s with no burst to speak of: only each call's budget of one lets it keep up.
    let harness = Setup::with("echo-listener", &["publish-rate=1/s"]).build();
    for i in 0..20 {
        let entries = harness.dispatch(1, event(&format!("e{i}"))).await;
        assert_eq!(entries.last(), Some(&Entry::Ack(SEQUENCE)), "event {i}");
    }
    assert!(
        harness.journal.throttled().is_empty(),
        "nothing was held back, so nothing is reported"
    );
    assert!(
        !harness
            .journal
            .entries()
            .contains(&announced(ListenerThrottled::TYPE, 0))
    );
}

#[tokio::test]
async fn a_listener_held_back_by_its_rate_cap_is_reported_at_once_with_the_limit_to_raise() {
    // No budget and 2/s: the first publish uses the burst, the next waits its turn.
    let harness = Setup::with("echo-listener", &["publish-rate=2/s", "publish-budget=0"]).build();
    let started = Instant::now();
    for i in 0..3 {
        harness.dispatch(1, event(&format!("e{i}"))).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the later publishes waited for their turn: {:?}",
        started.elapsed()
    );
    // The report is sent off the event's path: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.journal.throttled().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reports = harness.journal.throttled();
    let first = reports
        .first()
        .expect("the first call held back is reported at once");
    assert_eq!(
        reports.len(),
        1,
        "the next report waits {} s",
        ListenerThrottled::EVERY_SECS
    );
    assert_eq!((first.calls, first.waits, first.refused), (1, 1, 0));
    assert!(first.waited_ms >= 400, "{first:?}");
    assert_eq!((first.publish_rate, first.publish_budget), (2, 0));
    assert!(
        first.hint.contains("--limit publish-budget=1"),
        "{}",
        first.hint
    );
    assert!(
        harness
            .journal
            .entries()
            .contains(&announced(ListenerThrottled::TYPE, 0))
    );
}

#[tokio::test]
async fn a_listener_with_nothing_to_do_is_rested_and_its_dispatcher_reports_it_idle() {
    let journal = Arc::new(Journal::default());
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::unbounded_channel();
    let setup = Setup {
        idle_after: Some(Duration::from_millis(200)),
        went_idle: Some(idle_tx),
        ..Setup::default()
    };
    let source = FakeSource {
        deliveries: std::sync::Mutex::new(vec![delivery(&journal, 1, 1, event("e1"))]),
        // The first time, another host still has an event in flight.
        rest_answers: std::sync::Mutex::new([crate::bus::Rested::Busy].into()),
        ..FakeSource::default()
    };
    let rests = source.rests.clone();
    let (handle, _pulled) = setup.spawn_from(&journal, source);
    let report = tokio::time::timeout(Duration::from_secs(10), idle_rx.recv())
        .await
        .expect("the dispatcher went idle")
        .expect("a report");
    assert_eq!(report.listener, LISTENER);
    assert_eq!(report.dispatcher, handle.id);
    assert_eq!(
        rests.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a busy consumer is kept and asked again later; the second time it is rested"
    );
    assert_eq!(
        journal.entries(),
        [Entry::Ack(1)],
        "the event it had was handled first"
    );
    handle.stop().await;
}

#[tokio::test]
async fn a_dispatcher_never_rests_its_listener_without_idle_after() {
    let journal = Arc::new(Journal::default());
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::unbounded_channel();
    let setup = Setup {
        idle_after: None,
        went_idle: Some(idle_tx),
        ..Setup::default()
    };
    let source = FakeSource::default();
    let rests = source.rests.clone();
    let (handle, _pulled) = setup.spawn_from(&journal, source);
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.stop().await;
    assert_eq!(rests.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(idle_rx.try_recv().is_err(), "stopped, not idle");
}
