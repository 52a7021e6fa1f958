//! The dispatcher's rules, without a NATS server: deliveries that record how they were
//! answered, failure reports kept in the same journal (so the order shows), and real
//! listener fixtures run in a real sandbox.
//!
//! Needs the guests built by `scripts/build-guests.sh` into `target/guests` (or
//! `SANDBUS_GUESTS_DIR`).

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{FailureReports, HANDBACK_DELAY, ListenerDispatcher, ListenerFailures};
use crate::bus::{
    BusError, BusErrorKind, ComponentManifest, DeadLetter, Deliveries, Delivery, DeliveryInfo,
    DeliverySource, LastError, Subscription,
};
use crate::daemon::components::{LoadedComponent, spec_of};
use crate::daemon::context::{ComponentSource, HostContext};
use crate::daemon::host_events::{HostEvent as _, ListenerDeadLettered, ListenerFailed};
use crate::daemon::metering::MeteringBatcher;
use crate::daemon::metrics::Metrics;
use crate::daemon::{DispatchContext, DispatcherHandle};
use crate::event::CanonicalEvent;
use crate::imports::bus::RecordingPublisher;
use crate::imports::kv::{KvFootprint, KvStore, KvStoreError, MemoryKv};
use crate::imports::log::DiscardLog;
use crate::sandbox::{Capabilities, Sandbox, SandboxConfig, World};

/// The listener under test.
const LISTENER: &str = "orders";
/// The stream sequence of the event delivered.
const SEQUENCE: u64 = 7;
/// The subject events of type `vm.started` arrive on.
const SUBJECT: &str = "events.vm.started";

/// What the dispatcher did, in order: its answers to deliveries (by stream sequence) and
/// its failure reports.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Ack(u64),
    Nak(u64, Duration),
    Term(u64),
    InProgress(u64),
    FailureRecorded { event_id: Option<String> },
    DeadLettered { sequence: u64, deliveries: u64 },
    Announced { ty: String, cause: u32 },
}

/// Everything the fakes were told, shared between them.
#[derive(Default)]
struct Journal {
    entries: std::sync::Mutex<Vec<Entry>>,
    /// The reasons of failure records, in order.
    failure_reasons: std::sync::Mutex<Vec<String>>,
    /// The dead letters stored, in order.
    letters: std::sync::Mutex<Vec<DeadLetter>>,
}

impl Journal {
    fn push(&self, entry: Entry) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failure_reasons(&self) -> Vec<String> {
        self.failure_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn letters(&self) -> Vec<DeadLetter> {
        self.letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A delivery that writes its answers into the journal.
struct FakeDelivery {
    info: Option<DeliveryInfo>,
    subject: String,
    payload: Bytes,
    journal: Arc<Journal>,
}

#[async_trait::async_trait]
impl Delivery for FakeDelivery {
    fn info(&self) -> Result<DeliveryInfo, BusError> {
        self.info
            .ok_or_else(|| BusError::new(BusErrorKind::Corrupt, "no delivery metadata"))
    }

    fn subject(&self) -> &str {
        &self.subject
    }

    fn payload(&self) -> &Bytes {
        &self.payload
    }

    async fn ack(&self) -> Result<(), BusError> {
        self.journal.push(Entry::Ack(self.sequence()));
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.journal.push(Entry::Nak(self.sequence(), delay));
        Ok(())
    }

    async fn term(&self) -> Result<(), BusError> {
        self.journal.push(Entry::Term(self.sequence()));
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.journal.push(Entry::InProgress(self.sequence()));
        Ok(())
    }
}

impl FakeDelivery {
    fn sequence(&self) -> u64 {
        self.info.map_or(0, |info| info.stream_sequence)
    }
}

/// Failure reports into the journal; dead letters are refused when `refuse_dead_letters`.
struct FakeFailures {
    journal: Arc<Journal>,
    refuse_dead_letters: bool,
}

#[async_trait::async_trait]
impl ListenerFailures for FakeFailures {
    async fn record(&self, listener: &str, failure: &LastError) -> Result<(), BusError> {
        assert_eq!(listener, LISTENER);
        self.journal.push(Entry::FailureRecorded {
            event_id: failure.event_id.clone(),
        });
        self.journal
            .failure_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(failure.reason.clone());
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BusError> {
        if self.refuse_dead_letters {
            return Err(BusError::new(
                BusErrorKind::Unavailable,
                "the dead-letter stream is away",
            ));
        }
        self.journal.push(Entry::DeadLettered {
            sequence: letter.sequence,
            deliveries: letter.deliveries,
        });
        self.journal
            .letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(letter.clone());
        Ok(())
    }

    async fn announce_failure(
        &self,
        failed: &ListenerFailed,
        _id: String,
        cause: u32,
    ) -> Result<(), BusError> {
        assert_eq!(failed.listener, LISTENER);
        self.journal.push(Entry::Announced {
            ty: ListenerFailed::TYPE.to_owned(),
            cause,
        });
        Ok(())
    }

    async fn announce_dead_letter(
        &self,
        dead_lettered: &ListenerDeadLettered,
        _id: String,
        cause: u32,
    ) -> Result<(), BusError> {
        assert_eq!(dead_lettered.listener, LISTENER);
        self.journal.push(Entry::Announced {
            ty: ListenerDeadLettered::TYPE.to_owned(),
            cause,
        });
        Ok(())
    }
}

/// The listener's component, or none.
struct FakeComponents {
    loaded: Option<Arc<LoadedComponent>>,
    changed: watch::Sender<u64>,
}

impl ComponentSource for FakeComponents {
    fn get(&self, name: &str) -> Option<Arc<LoadedComponent>> {
        self.loaded.clone().filter(|c| c.manifest.name == name)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Hands out the given deliveries on the first pull, then nothing; the stream never ends.
/// `pulled` is notified on every pull.
#[derive(Default)]
struct FakeSource {
    deliveries: std::sync::Mutex<Vec<FakeDelivery>>,
    pulled: Arc<Notify>,
}

#[async_trait::async_trait]
impl DeliverySource for FakeSource {
    async fn pull(&self, listener: &str, _batch: usize) -> Result<Deliveries, BusError> {
        assert_eq!(listener, LISTENER);
        self.pulled.notify_one();
        let deliveries = std::mem::take(
            &mut *self
                .deliveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        Ok(futures::stream::iter(
            deliveries
                .into_iter()
                .map(|d| Ok(Box::new(d) as Box<dyn Delivery>)),
        )
        .chain(futures::stream::pending())
        .boxed())
    }
}

/// A key-value store that is always unavailable.
struct UnavailableKv;

#[async_trait::async_trait]
impl KvStore for UnavailableKv {
    async fn get(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, KvStoreError> {
        Err(unavailable())
    }
    async fn set(&self, _: &str, _: &str, _: Vec<u8>) -> Result<(), KvStoreError> {
        Err(unavailable())
    }
    async fn delete(&self, _: &str, _: &str) -> Result<bool, KvStoreError> {
        Err(unavailable())
    }
    async fn compare_and_swap(
        &self,
        _: &str,
        _: &str,
        _: Option<&[u8]>,
        _: Vec<u8>,
    ) -> Result<bool, KvStoreError> {
        Err(unavailable())
    }
    async fn list_keys(&self, _: &str, _: &str) -> Result<Vec<String>, KvStoreError> {
        Err(unavailable())
    }
    async fn footprint(&self, _: &str, _: &str) -> Result<KvFootprint, KvStoreError> {
        Err(unavailable())
    }
}

fn unavailable() -> KvStoreError {
    KvStoreError::Unavailable("the store is away".into())
}

/// One sandbox for every test, as in the daemon.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            pooling: false,
            ..SandboxConfig::default()
        })
        .expect("a sandbox with the default configuration starts")
    })
}

/// A built guest fixture, loaded as the listener with `limits` (`timeout=30s`). Each is
/// compiled once for all the tests.
fn listener(guest: &str, limits: &[&str]) -> Arc<LoadedComponent> {
    type Compiled = HashMap<(String, Vec<String>), Arc<LoadedComponent>>;
    static COMPILED: OnceLock<std::sync::Mutex<Compiled>> = OnceLock::new();
    let limits: Vec<String> = limits.iter().map(|l| (*l).to_owned()).collect();
    let mut compiled = COMPILED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    compiled
        .entry((guest.to_owned(), limits.clone()))
        .or_insert_with(|| compile(guest, limits))
        .clone()
}

fn compile(guest: &str, limits: Vec<String>) -> Arc<LoadedComponent> {
    let dir = std::env::var_os("SANDBUS_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("guests")
        });
    let path = dir.join(format!("{guest}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "guest `{guest}` is not built ({}: {e}): run scripts/build-guests.sh",
            path.display()
        )
    });
    let manifest = ComponentManifest {
        name: LISTENER.to_owned(),
        version: 1,
        digest: "not-checked-here".to_owned(),
        size: bytes.len() as u64,
        world: World::Listener,
        grants: Vec::new(),
        kv_read: Vec::new(),
        limits,
        recorded_at: "2026-01-01T00:00:00Z".to_owned(),
        restored_from: None,
    };
    let spec = spec_of(&manifest).expect("the fixture's manifest passes the policy");
    let prepared = sandbox()
        .prepare(spec, &bytes)
        .expect("the fixture loads as a listener");
    Arc::new(LoadedComponent {
        manifest,
        prepared: Arc::new(prepared),
    })
}

/// A dispatcher for [`LISTENER`] over fakes.
struct Harness {
    journal: Arc<Journal>,
    dispatcher: Arc<ListenerDispatcher>,
    stop: CancellationToken,
}

/// What a [`Harness`] is built from; `Setup::default()` is a listener that handles events.
struct Setup {
    listener: Option<Arc<LoadedComponent>>,
    kv: Arc<dyn KvStore>,
    max_deliver: u32,
    backoff: Vec<Duration>,
    max_in_flight: u32,
    grace: Duration,
    refuse_dead_letters: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            listener: Some(listener("noop-listener", &[])),
            kv: Arc::new(MemoryKv::default()),
            max_deliver: 3,
            backoff: vec![Duration::from_millis(100), Duration::from_secs(2)],
            max_in_flight: 4,
            grace: Duration::from_millis(100),
            refuse_dead_letters: false,
        }
    }
}

impl Setup {
    fn with(guest: &str, limits: &[&str]) -> Self {
        Self {
            listener: Some(listener(guest, limits)),
            ..Self::default()
        }
    }

    fn context(&self, journal: &Arc<Journal>, source: FakeSource) -> Arc<DispatchContext> {
        Arc::new(DispatchContext {
            host: HostContext {
                host_id: "host-test".into(),
                components: Arc::new(FakeComponents {
                    loaded: self.listener.clone(),
                    changed: watch::channel(0).0,
                }),
                capabilities: Capabilities {
                    log: Arc::new(DiscardLog),
                    publisher: Arc::new(RecordingPublisher::default()),
                    kv: self.kv.clone(),
                    usb: None,
                },
                metrics: Arc::new(Metrics::default()),
                metering: Arc::new(MeteringBatcher::default()),
            },
            deliveries: Arc::new(source),
            failures: Arc::new(FakeFailures {
                journal: journal.clone(),
                refuse_dead_letters: self.refuse_dead_letters,
            }),
            grace: self.grace,
            batch: 16,
        })
    }

    fn subscription(&self) -> Subscription {
        let mut subscription = Subscription::new(LISTENER, vec!["vm.*".to_owned()]);
        subscription.max_deliver = self.max_deliver;
        subscription.backoff = self.backoff.clone();
        subscription.max_in_flight = self.max_in_flight;
        subscription
    }

    fn build(self) -> Harness {
        let journal = Arc::new(Journal::default());
        let stop = CancellationToken::new();
        let dispatcher = Arc::new(ListenerDispatcher {
            subscription: Arc::new(self.subscription()),
            context: self.context(&journal, FakeSource::default()),
            stop: stop.clone(),
            failures: tokio::sync::Mutex::new(FailureReports::default()),
            newest: std::sync::atomic::AtomicU64::new(0),
        });
        Harness {
            journal,
            dispatcher,
            stop,
        }
    }

    /// Runs a whole dispatcher (pull loop included) whose first pull gets `deliveries`;
    /// the `Notify` is notified when it pulls.
    fn spawn(
        self,
        journal: &Arc<Journal>,
        deliveries: Vec<FakeDelivery>,
    ) -> (DispatcherHandle, Arc<Notify>) {
        let source = FakeSource {
            deliveries: std::sync::Mutex::new(deliveries),
            pulled: Arc::default(),
        };
        let pulled = source.pulled.clone();
        let handle = ListenerDispatcher::spawn(self.subscription(), self.context(journal, source));
        (handle, pulled)
    }
}

/// The `delivered`th delivery of `payload`, at `sequence` on [`SUBJECT`], answering into
/// `journal`.
fn delivery(
    journal: &Arc<Journal>,
    sequence: u64,
    delivered: u64,
    payload: impl Into<Bytes>,
) -> FakeDelivery {
    FakeDelivery {
        info: Some(DeliveryInfo {
            stream_sequence: sequence,
            delivered,
            pending: 0,
        }),
        subject: SUBJECT.to_owned(),
        payload: payload.into(),
        journal: journal.clone(),
    }
}

impl Harness {
    /// The `delivered`th delivery of `payload` at [`SEQUENCE`].
    fn delivery(&self, delivered: u64, payload: impl Into<Bytes>) -> FakeDelivery {
        delivery(&self.journal, SEQUENCE, delivered, payload)
    }

    /// Dispatches the `delivered`th delivery of `payload` and returns what was done.
    async fn dispatch(&self, delivered: u64, payload: impl Into<Bytes>) -> Vec<Entry> {
        self.dispatcher
            .dispatch(&self.delivery(delivered, payload))
            .await;
        self.journal.entries()
    }
}

/// A `vm.started` event with id `id`, as it is on the stream.
fn event(id: &str) -> Vec<u8> {
    CanonicalEvent {
        id: id.to_owned(),
        source: "/tests".to_owned(),
        ty: "vm.started".to_owned(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".to_owned()),
        data: b"{}".to_vec(),
        depth: 0,
    }
    .to_json()
}

/// What a dead letter at the `deliveries`th delivery does, in order: the failure is recorded
/// and announced, the copy stored and announced, and only then the event terminated.
fn dead_lettered(event_id: Option<&str>, deliveries: u64) -> Vec<Entry> {
    vec![
        recorded(event_id),
        announced(ListenerFailed::TYPE, 0),
        Entry::DeadLettered {
            sequence: SEQUENCE,
            deliveries,
        },
        announced(ListenerDeadLettered::TYPE, 0),
        Entry::Term(SEQUENCE),
    ]
}

/// The one item of `items`.
fn only<T: Debug>(mut items: Vec<T>) -> T {
    assert_eq!(items.len(), 1, "expected exactly one: {items:?}");
    items.remove(0)
}

fn announced(ty: &str, cause: u32) -> Entry {
    Entry::Announced {
        ty: ty.to_owned(),
        cause,
    }
}

fn recorded(event_id: Option<&str>) -> Entry {
    Entry::FailureRecorded {
        event_id: event_id.map(str::to_owned),
    }
}

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
