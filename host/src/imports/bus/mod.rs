//! `sandbus:host/bus`: publishing and emitting events, only on granted subjects.
//!
//! The host functions (in `host.rs`) enforce everything a guest must not decide for itself:
//! the subject grant, the payload limit, the header rules and the publish rate cap. Only a
//! message that passed all of them reaches the [`Publisher`], the small trait the bus side of
//! the daemon implements with NATS (and the dev loop with [`RecordingPublisher`]).

mod host;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{HasData, Linker};

use crate::bindings::bus as wit;
use crate::subject::PublishGrants;

/// A message that passed every check and is ready to go on the bus.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboundMessage {
    /// The concrete subject.
    pub subject: String,
    /// The payload.
    #[serde(serialize_with = "serialize_lossy")]
    pub payload: Bytes,
    /// Headers in order; names may repeat.
    pub headers: Vec<(String, String)>,
    /// Where the receiver should answer (a `wasmcloud:messaging` publish may set it; the
    /// host checks it against the same grants as the subject).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

fn serialize_lossy<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

/// Why the bus could not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The bus is unreachable or refused the message; retrying later may work.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Nobody listens on the subject (the server said so at once).
    #[error("no one answers on this subject")]
    NoResponders,
    /// Nobody answered within the timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The bus is unreachable or refused the request; retrying later may work.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The subject the answer came on (the request's reply inbox).
    pub subject: String,
    /// Its payload.
    pub payload: Bytes,
}

/// Where guest messages go once they passed the checks. Implemented by the daemon's bus
/// (NATS) and by [`RecordingPublisher`].
#[async_trait::async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes one message. Must not retry forever: the guest is waiting, under its
    /// deadline.
    async fn publish(&self, message: OutboundMessage) -> Result<(), PublishError>;

    /// Sends `message` as a request and waits at most `timeout` for the one answer. A bus
    /// that cannot make requests (the default) says it is unavailable.
    async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let _ = (message, timeout);
        Err(RequestError::Unavailable(
            "this bus does not take requests".into(),
        ))
    }
}

/// Keeps every message in memory: the dev loop prints them, tests assert on them.
#[derive(Debug, Default)]
pub struct RecordingPublisher {
    messages: Mutex<Vec<OutboundMessage>>,
}

impl RecordingPublisher {
    /// Takes the messages published so far.
    pub fn take(&self) -> Vec<OutboundMessage> {
        std::mem::take(&mut *self.messages.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait::async_trait]
impl Publisher for RecordingPublisher {
    async fn publish(&self, message: OutboundMessage) -> Result<(), PublishError> {
        self.messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
        Ok(())
    }

    /// Keeps the request like a publish; nothing answers it (there is no one else on a
    /// recording bus), so it fails with [`RequestError::NoResponders`].
    async fn request(
        &self,
        message: OutboundMessage,
        _timeout: Duration,
    ) -> Result<Reply, RequestError> {
        self.publish(message)
            .await
            .map_err(|PublishError::Unavailable(why)| RequestError::Unavailable(why))?;
        Err(RequestError::NoResponders)
    }
}

/// A token bucket: `per_second` tokens a second, at most `burst` saved up.
///
/// Shared by every invocation of one component, so the cap holds for the component as a
/// whole, not per event. A publish over the cap is a throttle first: it reserves the next
/// token and waits for it, as long as that is at most [`PublishRate::MAX_WAIT`] away; only a
/// component that is further behind gets `rate-limited`. So a listener that emits one event
/// per event it handles slows to the cap under a burst instead of failing its events, while a
/// guest publishing in a loop is still held to the cap (it waits, inside its own timeout).
#[derive(Debug)]
pub struct PublishRate {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl PublishRate {
    /// The longest a publish waits for its turn before it fails with `rate-limited`.
    pub const MAX_WAIT: Duration = Duration::from_secs(1);

    /// A bucket that starts full.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: f64::from(per_second),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Reserves the next token if it is due within `max_wait`: returns how long to wait for
    /// it (zero if one is there now), or `None`, reserving nothing, if it is further off.
    /// Reserved tokens are owed: the bucket goes below zero and refills from there, so the
    /// rate over time never exceeds the cap.
    pub fn reserve(&self, max_wait: Duration) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.duration_since(state.1).as_secs_f64() * self.per_second;
        state.0 = (state.0 + refill).min(self.burst);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            return Some(Duration::ZERO);
        }
        if self.per_second <= 0.0 {
            return None;
        }
        let wait = Duration::from_secs_f64((1.0 - state.0) / self.per_second);
        if wait > max_wait {
            return None;
        }
        state.0 -= 1.0;
        Some(wait)
    }
}

/// How much one call was held back by its component's publish rate cap: what the daemon
/// reports as throttling (`sandbus status`, the metrics, `sandbus.listener.throttled`), so a
/// cap never becomes a listener's throughput limit without anyone being told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishThrottle {
    /// Publishes that waited for their turn (32 bits keep a call's failure small; counts
    /// saturate).
    pub waits: u32,
    /// Their waits added up, microseconds.
    pub waited_us: u64,
    /// Publishes refused with `rate-limited` (their turn was more than
    /// [`PublishRate::MAX_WAIT`] away).
    pub refused: u32,
}

impl PublishThrottle {
    /// Whether nothing was held back.
    pub fn is_quiet(&self) -> bool {
        self.waits == 0 && self.refused == 0
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &PublishThrottle) {
        self.waits = self.waits.saturating_add(other.waits);
        self.waited_us = self.waited_us.saturating_add(other.waited_us);
        self.refused = self.refused.saturating_add(other.refused);
    }
}

/// Per-invocation state of the `bus` interface.
pub struct BusState {
    /// Subjects the component may publish on.
    pub grants: Arc<PublishGrants>,
    /// Where accepted messages go.
    pub publisher: Arc<dyn Publisher>,
    /// Largest payload accepted, in bytes.
    pub max_payload: u64,
    /// The component's publish rate cap, for publishes beyond [`BusState::budget`].
    pub rate: Arc<PublishRate>,
    /// Publishes this call may still make without counting against the rate cap (the
    /// component's `publish-budget`, counted down).
    pub budget: u32,
    /// How much the rate cap held this call back.
    pub throttle: PublishThrottle,
    /// Messages this invocation published.
    pub published: u64,
    /// Depth of the event this invocation handles ([`crate::event::CanonicalEvent::depth`];
    /// 0 for a script or a hook): what it emits is one deeper, and refused past
    /// [`crate::event::MAX_DEPTH`].
    pub depth: u32,
}

/// `HasData` marker: the `bus` host functions see a [`BusState`].
pub struct Bus;

impl HasData for Bus {
    type Data<'a> = &'a mut BusState;
}

/// Adds `sandbus:host/bus` to `linker`; `get` finds the invocation's [`BusState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut BusState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Bus>(linker, get)
}
