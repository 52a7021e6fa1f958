//! `wasmcloud:messaging/consumer@0.2.0`: wasmCloud's publish and request, on the same path as
//! `sandbus:host/bus` (subject grants, payload limit, publish budget and rate cap, the
//! [`Publisher`](super::bus::Publisher)), with every refusal an `Err(string)` saying what
//! was wrong and what to do, since the interface has no error type to match on.
//!
//! Two things differ from `bus.publish`: a message may carry a `reply-to`, which must be a
//! subject the component may publish on itself (an answer lands where its own publish could
//! have); and `request` waits for one answer, at most `timeout-ms`, never past the call's
//! deadline. Subjects on the events stream are refused as `bus.publish` refuses them: events
//! are canonical, and a messaging component does not emit them.

use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker};

use super::bus::{BusState, OutboundMessage, RequestError};
use crate::bindings::bus::BusError;
use crate::bindings::wasmcloud_messaging::Listener as MessagingWorld;
use crate::bindings::wasmcloud_messaging::wasmcloud::messaging::types::BrokerMessage;
use crate::bindings::wasmcloud_messaging::wasmcloud::messaging::{consumer, types};
use crate::subject::{EVENTS_PREFIX, ReservedSpace};

/// What the consumer's host functions see of one invocation: its bus state and deadline.
pub struct Messaging<'a> {
    /// The invocation's `bus` state: grants, limits, publisher, meters.
    pub bus: &'a mut BusState,
    /// When the call ends; a request never waits past it.
    pub deadline: Instant,
}

/// The `Err` text of a refused publish or request: what was wrong and what to do.
fn refusal(error: BusError) -> String {
    match error {
        BusError::NotGranted(subject) => match ReservedSpace::reached_by(&subject) {
            Some(space) => format!(
                "`{subject}` is in a reserved space ({}) that no grant covers; use a subject \
                 of your own",
                space.pattern()
            ),
            None => format!(
                "publishing to `{subject}` is not granted to this component; grant it at \
                 upload with --grant publish={subject} (or a pattern covering it)"
            ),
        },
        BusError::InvalidSubject(why) => format!("invalid subject: {why}"),
        BusError::InvalidEvent(why) => format!("invalid event: {why}"),
        BusError::InvalidHeader(why) => format!("invalid header: {why}"),
        BusError::PayloadTooLarge(limit) => format!(
            "the body is larger than this component's payload limit of {limit} bytes; send \
             less, or raise the limit at upload with --limit payload=SIZE"
        ),
        BusError::RateLimited => "this component publishes faster than its publish rate cap \
             allows; try again later, or raise the cap at upload with --limit \
             publish-rate=N/s or --limit publish-budget=N"
            .to_owned(),
        BusError::Unavailable(why) => {
            format!("the bus could not take the message ({why}); try again later")
        }
    }
}

/// Refuses a subject on the events stream: it takes canonical events only.
fn off_the_events_stream(subject: &str) -> Result<(), String> {
    if subject.split('.').next() == Some(EVENTS_PREFIX) {
        return Err(format!(
            "`{subject}` is on the events stream, which takes canonical events only, emitted \
             through sandbus:host/bus; publish on a subject of your own"
        ));
    }
    Ok(())
}

impl types::Host for Messaging<'_> {}

impl consumer::Host for Messaging<'_> {
    async fn request(
        &mut self,
        subject: String,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<BrokerMessage, String>> {
        if let Err(why) = off_the_events_stream(&subject) {
            return Ok(Err(why));
        }
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let answered = match self
            .bus
            .request(subject.clone(), body, timeout, self.deadline)
            .await
        {
            Ok(answered) => answered,
            Err(refused) => return Ok(Err(refusal(refused))),
        };
        Ok(match answered {
            Ok(reply) if reply.payload.len() as u64 > self.bus.max_payload => Err(format!(
                "the answer from `{subject}` is {} bytes, over this component's payload \
                 limit of {} bytes; ask for less, or raise the limit at upload with --limit \
                 payload=SIZE",
                reply.payload.len(),
                self.bus.max_payload
            )),
            Ok(reply) => Ok(BrokerMessage {
                subject: reply.subject,
                body: reply.payload.into(),
                reply_to: None,
            }),
            Err(RequestError::NoResponders) => Err(format!(
                "no one answers requests on `{subject}`; start a responder there first"
            )),
            Err(RequestError::TimedOut(waited))
                if waited < Duration::from_millis(timeout_ms.into()) =>
            {
                Err(format!(
                    "no answer from `{subject}` within {} ms, the time left before this \
                     call's deadline (the component's timeout limit)",
                    waited.as_millis()
                ))
            }
            Err(RequestError::TimedOut(_)) => Err(format!(
                "no answer from `{subject}` within {timeout_ms} ms; ask with a longer timeout \
                 or check the responder"
            )),
            Err(RequestError::Unavailable(why)) => Err(format!(
                "the bus could not send the request ({why}); try again later"
            )),
        })
    }

    async fn publish(&mut self, msg: BrokerMessage) -> wasmtime::Result<Result<(), String>> {
        if let Err(why) = off_the_events_stream(&msg.subject) {
            return Ok(Err(why));
        }
        if let Some(reply_to) = &msg.reply_to {
            // An answer to the reply subject is a publish there, by whoever answers.
            if let Err(why) = off_the_events_stream(reply_to) {
                return Ok(Err(format!("reply-to: {why}")));
            }
            if let Err(refused) = self.bus.check_subject(reply_to) {
                return Ok(Err(format!("reply-to: {}", refusal(refused))));
            }
        }
        let size = msg.body.len();
        let message = OutboundMessage {
            subject: msg.subject,
            payload: msg.body.into(),
            headers: Vec::new(),
            reply_to: msg.reply_to,
        };
        Ok(self.bus.send(message, size).await.map_err(refusal))
    }
}

/// `HasData` marker: the consumer's host functions see a [`Messaging`].
struct WasmcloudMessaging;

impl HasData for WasmcloudMessaging {
    type Data<'a> = Messaging<'a>;
}

/// Adds `wasmcloud:messaging/{types, consumer}@0.2.0` to `linker`; `get` gives the
/// invocation's bus state and deadline.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> Messaging<'_>,
) -> wasmtime::Result<()> {
    MessagingWorld::add_to_linker::<T, WasmcloudMessaging>(linker, get)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use consumer::Host as _;

    use super::*;
    use crate::imports::bus::{
        PublishError, PublishRate, PublishThrottle, Publisher, RecordingPublisher, Reply,
    };
    use crate::subject::{PublishGrants, SubjectPattern};

    fn bus(grant: &str, publisher: Arc<dyn Publisher>) -> BusState {
        BusState {
            grants: Arc::new(PublishGrants::new([SubjectPattern::parse(grant).unwrap()])),
            publisher,
            max_payload: 64,
            rate: Arc::new(PublishRate::new(100, 100)),
            budget: 0,
            throttle: PublishThrottle::default(),
            published: 0,
            depth: 0,
        }
    }

    fn message(subject: &str, reply_to: Option<&str>) -> BrokerMessage {
        BrokerMessage {
            subject: subject.into(),
            body: b"hello".to_vec(),
            reply_to: reply_to.map(Into::into),
        }
    }

    /// A bus on which every request waits out its timeout: it keeps the timeout it got.
    #[derive(Default)]
    struct SilentBus {
        waited: Mutex<Vec<Duration>>,
    }

    #[async_trait::async_trait]
    impl Publisher for SilentBus {
        async fn publish(&self, _message: OutboundMessage) -> Result<(), PublishError> {
            Ok(())
        }

        async fn request(
            &self,
            _message: OutboundMessage,
            timeout: Duration,
        ) -> Result<Reply, RequestError> {
            self.waited
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(timeout);
            Err(RequestError::TimedOut(timeout))
        }
    }

    #[tokio::test]
    async fn a_request_never_waits_past_the_calls_deadline() {
        let silent = Arc::new(SilentBus::default());
        let mut state = bus("ask.>", silent.clone());
        let mut messaging = Messaging {
            bus: &mut state,
            deadline: Instant::now() + Duration::from_millis(200),
        };
        let why = messaging
            .request("ask.me".into(), b"?".to_vec(), 60_000)
            .await
            .unwrap()
            .unwrap_err();
        assert!(why.contains("before this call's deadline"), "{why}");
        let waited = silent.waited.lock().unwrap_or_else(PoisonError::into_inner)[0];
        assert!(waited <= Duration::from_millis(200), "{waited:?}");
        // A shorter timeout than the time left is kept as asked.
        let mut messaging = Messaging {
            bus: &mut state,
            deadline: Instant::now() + Duration::from_secs(60),
        };
        let why = messaging
            .request("ask.me".into(), b"?".to_vec(), 20)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            why.contains("within 20 ms; ask with a longer timeout"),
            "{why}"
        );
        assert_eq!(state.published, 2, "a request counts as a publish");
    }

    #[tokio::test]
    async fn a_reply_to_must_be_granted_like_the_subject() {
        let recording = Arc::new(RecordingPublisher::default());
        let mut state = bus("svc.>", recording.clone());
        let mut messaging = Messaging {
            bus: &mut state,
            deadline: Instant::now() + Duration::from_secs(1),
        };
        let why = messaging
            .publish(message("svc.a", Some("_INBOX.stolen")))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            why.starts_with("reply-to: `_INBOX.stolen` is in a reserved space (_*.>)"),
            "{why}"
        );
        let why = messaging
            .publish(message("svc.a", Some("other.answers")))
            .await
            .unwrap()
            .unwrap_err();
        assert!(why.contains("--grant publish=other.answers"), "{why}");
        assert!(recording.take().is_empty(), "nothing was sent");
        messaging
            .publish(message("svc.a", Some("svc.answers")))
            .await
            .unwrap()
            .unwrap();
        let sent = recording.take();
        assert_eq!(sent[0].reply_to.as_deref(), Some("svc.answers"));
    }

    #[tokio::test]
    async fn the_events_stream_and_oversized_bodies_are_refused_saying_why() {
        let recording = Arc::new(RecordingPublisher::default());
        let mut state = bus(">", recording.clone());
        let mut messaging = Messaging {
            bus: &mut state,
            deadline: Instant::now() + Duration::from_secs(1),
        };
        let why = messaging
            .publish(message("events.vm.started", None))
            .await
            .unwrap()
            .unwrap_err();
        assert!(why.contains("takes canonical events only"), "{why}");
        let why = messaging
            .request("events.vm.started".into(), vec![], 10)
            .await
            .unwrap()
            .unwrap_err();
        assert!(why.contains("takes canonical events only"), "{why}");
        // Nor may a responder be pointed at it.
        let why = messaging
            .publish(message("svc.a", Some("events.vm.started")))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            why.starts_with("reply-to: `events.vm.started` is on the events stream"),
            "{why}"
        );
        let mut big = message("svc.a", None);
        big.body = vec![0; 65];
        let why = messaging.publish(big).await.unwrap().unwrap_err();
        assert!(
            why.contains("payload limit of 64 bytes") && why.contains("--limit payload="),
            "{why}"
        );
        assert!(recording.take().is_empty());
    }
}
