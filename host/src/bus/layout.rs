//! [`DaemonBus`]: a daemon's connection to NATS, and [`BusLayout`]: every stream and bucket
//! the daemon works with, created where missing.
//!
//! The daemon connects once ([`DaemonBus::connect`]), sets the layout up
//! ([`DaemonBus::set_up`], again and again while JetStream is not ready), and from then on
//! works through the bus types the layout holds; it never handles the connection itself
//! beyond the last [`flush`](DaemonBus::flush) at shutdown.

use async_nats::jetstream;

use super::{
    BusError, ComponentStore, DeviceInventory, EventStream, EventStreamConfig, HookPoints,
    HostRegistry, LeaseTable, NatsKv, NatsOptions, NatsPublisher, RunStore, StagedUploads,
    SubscriptionStore,
};

/// Largest value a guest may store under one key of its kv space, in bytes.
const GUEST_KV_MAX_VALUE: i32 = 1 << 20;

/// A daemon's connection to NATS, with its JetStream context.
#[derive(Clone)]
pub struct DaemonBus {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// Every stream and bucket of a sandbus cluster, as one daemon uses them.
pub struct BusLayout {
    /// The canonical events and dead-letter streams.
    pub events: EventStream,
    /// Component manifests and bytes.
    pub store: ComponentStore,
    /// Listener subscriptions, their consumers and status.
    pub subscriptions: SubscriptionStore,
    /// The guests' key-value spaces.
    pub kv: NatsKv,
    /// Host presence.
    pub hosts: HostRegistry,
    /// Every host's devices.
    pub inventory: DeviceInventory,
    /// Device leases.
    pub leases: LeaseTable,
    /// Script runs.
    pub runs: RunStore,
    /// The extension points and their hooks.
    pub hook_points: HookPoints,
    /// Component bytes staged for an upload.
    pub uploads: StagedUploads,
    /// Where guests' publishes and emitted events go.
    pub publisher: NatsPublisher,
}

impl DaemonBus {
    /// Connects as a daemon ([`super::connect_daemon`]): waits for the server if it is not
    /// up yet, and reconnects forever when the connection drops.
    pub async fn connect(options: &NatsOptions) -> Result<Self, BusError> {
        let client = super::connect_daemon(options).await?;
        let js = jetstream::new(client.clone());
        Ok(Self { client, js })
    }

    /// Creates (or updates) the events streams as `events` says and every bucket the
    /// daemon needs, each with `events.replicas` replicas; the guests' kv bucket holds at
    /// most `kv_max_bytes` (`-1`: no bound). A [`BusErrorKind::Unavailable`] error means
    /// JetStream is not ready (or not enabled): try again later.
    ///
    /// [`BusErrorKind::Unavailable`]: super::BusErrorKind::Unavailable
    pub async fn set_up(
        &self,
        events: &EventStreamConfig,
        kv_max_bytes: i64,
    ) -> Result<BusLayout, BusError> {
        let js = &self.js;
        let replicas = events.replicas;
        let events = EventStream::ensure(js.clone(), events).await?;
        let store = ComponentStore::ensure(js, replicas).await?;
        let subscriptions = SubscriptionStore::ensure(js, events.clone(), replicas).await?;
        let kv = NatsKv::ensure(js, replicas, GUEST_KV_MAX_VALUE, kv_max_bytes).await?;
        let hosts = HostRegistry::ensure(js, replicas).await?;
        let inventory = DeviceInventory::ensure(js, replicas).await?;
        let leases = LeaseTable::ensure(js, replicas).await?;
        let runs = RunStore::ensure(js, replicas).await?;
        let hook_points = HookPoints::ensure(js, replicas).await?;
        let uploads = StagedUploads::ensure(js, replicas).await?;
        Ok(BusLayout {
            events,
            store,
            subscriptions,
            kv,
            hosts,
            inventory,
            leases,
            runs,
            hook_points,
            uploads,
            publisher: NatsPublisher::new(js.clone()),
        })
    }

    /// Waits until the server has received everything published so far.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::unavailable("flush the connection", e))
    }
}
