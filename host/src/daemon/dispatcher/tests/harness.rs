//! The fakes the dispatcher's specifications run over: a journal of everything the
//! dispatcher did, deliveries and failure reports that write into it, a source that hands
//! out given deliveries, and real listener fixtures in a real sandbox.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::super::{ListenerDispatcher, ListenerFailures};
use crate::bus::{
    BusError, BusErrorKind, ComponentManifest, DeadLetter, Deliveries, Delivery, DeliveryInfo,
    DeliverySource, LastError, PullError, Rested, Subscription,
};
use crate::daemon::components::{LoadedComponent, spec_of};
use crate::daemon::context::{ComponentSource, HostContext};
use crate::daemon::dispatcher::WentIdle;
use crate::daemon::host_events::{
    HostEvent as _, ListenerDeadLettered, ListenerFailed, ListenerThrottled,
};
use crate::daemon::metering::MeteringBatcher;
use crate::daemon::metrics::Metrics;
use crate::daemon::{DispatchContext, DispatcherHandle};
use crate::event::CanonicalEvent;
use crate::imports::bus::RecordingPublisher;
use crate::imports::kv::{KvFootprint, KvStore, KvStoreError, MemoryKv};
use crate::imports::log::DiscardLog;
use crate::sandbox::{Capabilities, Sandbox, SandboxConfig, World};

/// The listener under test.
pub(super) const LISTENER: &str = "orders";
/// The stream sequence of the event delivered.
pub(super) const SEQUENCE: u64 = 7;
/// The subject events of type `vm.started` arrive on.
pub(super) const SUBJECT: &str = "events.vm.started";

/// What the dispatcher did, in order: its answers to deliveries (by stream sequence) and
/// its failure reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
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
pub(super) struct Journal {
    pub(super) entries: std::sync::Mutex<Vec<Entry>>,
    /// The reasons of failure records, in order.
    pub(super) failure_reasons: std::sync::Mutex<Vec<String>>,
    /// The dead letters stored, in order.
    pub(super) letters: std::sync::Mutex<Vec<DeadLetter>>,
    /// The throttling reports, in order.
    pub(super) throttled: std::sync::Mutex<Vec<ListenerThrottled>>,
}

impl Journal {
    pub(super) fn push(&self, entry: Entry) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    pub(super) fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn failure_reasons(&self) -> Vec<String> {
        self.failure_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn letters(&self) -> Vec<DeadLetter> {
        self.letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn throttled(&self) -> Vec<ListenerThrottled> {
        self.throttled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A delivery that writes its answers into the journal.
pub(super) struct FakeDelivery {
    pub(super) info: Option<DeliveryInfo>,
    pub(super) subject: String,
    pub(super) payload: Bytes,
    pub(super) headers: Vec<(String, String)>,
    pub(super) journal: Arc<Journal>,
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

    fn headers(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
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
    pub(super) fn sequence(&self) -> u64 {
        self.info.map_or(0, |info| info.stream_sequence)
    }
}

/// Failure reports into the journal; dead letters are refused when `refuse_dead_letters`.
pub(super) struct FakeFailures {
    pub(super) journal: Arc<Journal>,
    pub(super) refuse_dead_letters: bool,
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

    async fn throttled(&self, throttled: &ListenerThrottled, cause: u32) -> Result<(), BusError> {
        assert_eq!(throttled.listener, LISTENER);
        self.journal
            .throttled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(throttled.clone());
        self.journal.push(Entry::Announced {
            ty: ListenerThrottled::TYPE.to_owned(),
            cause,
        });
        Ok(())
    }
}

/// The listener's component, or none.
pub(super) struct FakeComponents {
    pub(super) loaded: Option<Arc<LoadedComponent>>,
    pub(super) changed: watch::Sender<u64>,
}

impl ComponentSource for FakeComponents {
    fn get(&self, name: &str) -> Option<Arc<LoadedComponent>> {
        self.loaded.clone().filter(|c| c.manifest.name == name)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Hands out the given deliveries on the first pull, then nothing; the stream never ends,
/// unless `after_silence` is set: then the first pull's stream ends with
/// [`PullError::Ended`] after its deliveries (as a pull that missed its heartbeats does),
/// and the next pull hands out `after_silence`. `pulled` is notified on every pull.
#[derive(Default)]
pub(super) struct FakeSource {
    pub(super) deliveries: std::sync::Mutex<Vec<FakeDelivery>>,
    pub(super) after_silence: std::sync::Mutex<Option<Vec<FakeDelivery>>>,
    pub(super) pulled: Arc<Notify>,
    /// What each `rest` answers, in turn; once used up, [`Rested::Idle`].
    pub(super) rest_answers: std::sync::Mutex<std::collections::VecDeque<Rested>>,
    /// How many times `rest` was asked.
    pub(super) rests: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl DeliverySource for FakeSource {
    async fn pull(&self, listener: &str, _batch: usize) -> Result<Deliveries, BusError> {
        assert_eq!(listener, LISTENER);
        self.pulled.notify_one();
        let mut queued = self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let deliveries = std::mem::take(&mut *queued);
        let silence = self
            .after_silence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|next| {
                *queued = next;
                Err(PullError::Ended("missed idle heartbeat".to_owned()))
            });
        Ok(futures::stream::iter(
            deliveries
                .into_iter()
                .map(|d| Ok(Box::new(d) as Box<dyn Delivery>))
                .chain(silence),
        )
        .chain(futures::stream::pending())
        .boxed())
    }

    async fn rest(&self, listener: &str, _quiet: Duration) -> Result<Rested, BusError> {
        assert_eq!(listener, LISTENER);
        self.rests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self
            .rest_answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .unwrap_or(Rested::Idle))
    }

    async fn wake(&self, listener: &str, _ack_wait: Duration) -> Result<(), BusError> {
        assert_eq!(listener, LISTENER);
        Ok(())
    }
}

/// A key-value store that is always unavailable.
pub(super) struct UnavailableKv;

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

pub(super) fn unavailable() -> KvStoreError {
    KvStoreError::Unavailable("the store is away".into())
}

/// One sandbox for every test, as in the daemon.
pub(super) fn sandbox() -> &'static Sandbox {
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
pub(super) fn listener(guest: &str, limits: &[&str]) -> Arc<LoadedComponent> {
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

pub(super) fn compile(guest: &str, limits: Vec<String>) -> Arc<LoadedComponent> {
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
        // What `echo-listener` publishes on; the hostile fixtures publish elsewhere.
        grants: vec!["echo.>".to_owned()],
        kv_read: Vec::new(),
        limits,
        config: Default::default(),
        recorded_at: "2026-01-01T00:00:00Z".to_owned(),
        restored_from: None,
        configured_from: None,
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
pub(super) struct Harness {
    pub(super) journal: Arc<Journal>,
    pub(super) dispatcher: Arc<ListenerDispatcher>,
    pub(super) stop: CancellationToken,
}

/// What a [`Harness`] is built from; `Setup::default()` is a listener that handles events.
pub(super) struct Setup {
    pub(super) listener: Option<Arc<LoadedComponent>>,
    pub(super) kv: Arc<dyn KvStore>,
    pub(super) max_deliver: u32,
    pub(super) backoff: Vec<Duration>,
    pub(super) max_in_flight: u32,
    pub(super) grace: Duration,
    pub(super) refuse_dead_letters: bool,
    pub(super) idle_after: Option<Duration>,
    pub(super) went_idle: Option<tokio::sync::mpsc::UnboundedSender<WentIdle>>,
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
            idle_after: None,
            went_idle: None,
        }
    }
}

impl Setup {
    pub(super) fn with(guest: &str, limits: &[&str]) -> Self {
        Self {
            listener: Some(listener(guest, limits)),
            ..Self::default()
        }
    }

    pub(super) fn context(
        &self,
        journal: &Arc<Journal>,
        source: FakeSource,
    ) -> Arc<DispatchContext> {
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
            idle_after: self.idle_after,
            went_idle: self.went_idle.clone(),
        })
    }

    pub(super) fn subscription(&self) -> Subscription {
        let mut subscription = Subscription::new(LISTENER, vec!["vm.*".to_owned()]);
        subscription.max_deliver = self.max_deliver;
        subscription.backoff = self.backoff.clone();
        subscription.max_in_flight = self.max_in_flight;
        subscription
    }

    pub(super) fn build(self) -> Harness {
        let journal = Arc::new(Journal::default());
        let stop = CancellationToken::new();
        let dispatcher = Arc::new(ListenerDispatcher::new(
            self.subscription(),
            self.context(&journal, FakeSource::default()),
            stop.clone(),
        ));
        Harness {
            journal,
            dispatcher,
            stop,
        }
    }

    /// Runs a whole dispatcher (pull loop included) whose first pull gets `deliveries`;
    /// the `Notify` is notified when it pulls.
    pub(super) fn spawn(
        self,
        journal: &Arc<Journal>,
        deliveries: Vec<FakeDelivery>,
    ) -> (DispatcherHandle, Arc<Notify>) {
        self.spawn_from(
            journal,
            FakeSource {
                deliveries: std::sync::Mutex::new(deliveries),
                ..FakeSource::default()
            },
        )
    }

    /// Runs a whole dispatcher whose first pull gets `first` and then goes silent; the pull
    /// after that gets `then`.
    pub(super) fn spawn_with_silence(
        self,
        journal: &Arc<Journal>,
        first: Vec<FakeDelivery>,
        then: Vec<FakeDelivery>,
    ) -> (DispatcherHandle, Arc<Notify>) {
        self.spawn_from(
            journal,
            FakeSource {
                deliveries: std::sync::Mutex::new(first),
                after_silence: std::sync::Mutex::new(Some(then)),
                ..FakeSource::default()
            },
        )
    }

    pub(super) fn spawn_from(
        self,
        journal: &Arc<Journal>,
        source: FakeSource,
    ) -> (DispatcherHandle, Arc<Notify>) {
        let pulled = source.pulled.clone();
        let handle = ListenerDispatcher::spawn(self.subscription(), self.context(journal, source));
        (handle, pulled)
    }
}

/// The `delivered`th delivery of `payload`, at `sequence` on [`SUBJECT`], answering into
/// `journal`.
pub(super) fn delivery(
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
        headers: Vec::new(),
        journal: journal.clone(),
    }
}

impl Harness {
    /// The `delivered`th delivery of `payload` at [`SEQUENCE`].
    pub(super) fn delivery(&self, delivered: u64, payload: impl Into<Bytes>) -> FakeDelivery {
        delivery(&self.journal, SEQUENCE, delivered, payload)
    }

    /// Dispatches the `delivered`th delivery of `payload` and returns what was done.
    pub(super) async fn dispatch(&self, delivered: u64, payload: impl Into<Bytes>) -> Vec<Entry> {
        self.dispatcher
            .dispatch(&self.delivery(delivered, payload))
            .await;
        self.journal.entries()
    }
}

/// A `vm.started` event with id `id`, as it is on the stream.
pub(super) fn event(id: &str) -> Vec<u8> {
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

/// The headers of a binary-mode `vm.started` event with id `id` and JSON data.
pub(super) fn binary_headers(id: &str) -> Vec<(String, String)> {
    [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/tests"),
        ("ce-type", "vm.started"),
        ("content-type", "application/json"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

/// What a dead letter at the `deliveries`th delivery does, in order: the failure is recorded
/// and announced, the copy stored and announced, and only then the event terminated.
pub(super) fn dead_lettered(event_id: Option<&str>, deliveries: u64) -> Vec<Entry> {
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
pub(super) fn only<T: Debug>(mut items: Vec<T>) -> T {
    assert_eq!(items.len(), 1, "expected exactly one: {items:?}");
    items.remove(0)
}

pub(super) fn announced(ty: &str, cause: u32) -> Entry {
    Entry::Announced {
        ty: ty.to_owned(),
        cause,
    }
}

pub(super) fn recorded(event_id: Option<&str>) -> Entry {
    Entry::FailureRecorded {
        event_id: event_id.map(str::to_owned),
    }
}
