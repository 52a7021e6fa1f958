//! `impl bus::Host`: grant, size, header and rate checks, then the [`Publisher`].
//!
//! Refusals are `bus-error` values the guest handles; nothing here traps.

use std::time::Duration;

use super::{BusState, OutboundMessage, PublishError, PublishRate, Reply, RequestError};
use crate::bindings::bus::{BusError, Host};
use crate::bindings::types::Event;
use crate::error::{Input, InvalidInput};
use crate::event::{CanonicalEvent, MAX_DEPTH, MSG_ID_HEADER};
use crate::subject::{
    EVENTS_PREFIX, HOST_SOURCE_PREFIX, ReservedSpace, event_subject, validate_publish_subject,
};

impl BusState {
    /// Checks one message against everything a guest must not decide for itself (the
    /// subject and its grant, the payload limit, the headers) and takes its turn under the
    /// publish budget and rate cap, waiting for it when it is near. `size` is what the
    /// payload limit applies to.
    async fn admit(
        &mut self,
        subject: &str,
        size: usize,
        headers: &[(String, String)],
    ) -> Result<(), BusError> {
        self.check_subject(subject)?;
        if size as u64 > self.max_payload {
            return Err(BusError::PayloadTooLarge(self.max_payload));
        }
        for (name, value) in headers {
            check_header(name, value).map_err(|e| BusError::InvalidHeader(e.message))?;
        }
        if self.budget > 0 {
            self.budget -= 1;
        } else {
            match self.rate.reserve(PublishRate::MAX_WAIT) {
                None => {
                    self.throttle.refused = self.throttle.refused.saturating_add(1);
                    return Err(BusError::RateLimited);
                }
                Some(wait) if !wait.is_zero() => {
                    self.throttle.waits = self.throttle.waits.saturating_add(1);
                    self.throttle.waited_us = self
                        .throttle
                        .waited_us
                        .saturating_add(wait.as_micros() as u64);
                    tokio::time::sleep(wait).await;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Refuses a subject that is not valid for publishing or not granted. A reserved subject
    /// is never granted, whatever the manifest says: a manifest from before grants were
    /// checked, or written by hand, cannot reach the bus's machinery.
    pub(crate) fn check_subject(&self, subject: &str) -> Result<(), BusError> {
        validate_publish_subject(subject).map_err(|e| BusError::InvalidSubject(e.message))?;
        if !self.grants.allows(subject) || ReservedSpace::reached_by(subject).is_some() {
            // Debug, not warn: a guest could otherwise flood the host's own log.
            tracing::debug!(subject, "guest publish refused: subject not granted");
            return Err(BusError::NotGranted(subject.to_owned()));
        }
        Ok(())
    }

    /// Checks and sends one message. `size` is what the payload limit applies to: the
    /// payload of a publish, the `data` of an emitted event (not its JSON envelope). A
    /// `reply_to` in `message` must have been checked by the caller.
    pub(crate) async fn send(
        &mut self,
        message: OutboundMessage,
        size: usize,
    ) -> Result<(), BusError> {
        self.admit(&message.subject, size, &message.headers).await?;
        self.publisher
            .publish(message)
            .await
            .map_err(|PublishError::Unavailable(why)| BusError::Unavailable(why))?;
        self.published += 1;
        Ok(())
    }

    /// Checks `subject` and `payload` as [`BusState::send`] does, then sends them as a
    /// request and waits for the answer at most `timeout`, and never past `deadline` (the
    /// call's): the wait starts after the rate cap let the request through. A request
    /// counts as a publish (budget, rate cap, metering).
    pub(crate) async fn request(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        timeout: Duration,
        deadline: std::time::Instant,
    ) -> Result<Result<Reply, RequestError>, BusError> {
        self.admit(&subject, payload.len(), &[]).await?;
        let timeout = timeout.min(deadline.saturating_duration_since(std::time::Instant::now()));
        let message = OutboundMessage {
            subject,
            payload: payload.into(),
            headers: Vec::new(),
            reply_to: None,
        };
        self.published += 1;
        Ok(self.publisher.request(message, timeout).await)
    }
}

/// Checks a header a guest set; the message is what the guest gets as `invalid-header`.
fn check_header(name: &str, value: &str) -> Result<(), InvalidInput> {
    let invalid = |message: String| Err(InvalidInput::new(Input::Header, message));
    if name.is_empty() {
        return invalid("a header name is empty".into());
    }
    // Header names are HTTP-style tokens: visible ASCII, no separators.
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, ':' | '(' | ')' | '"' | ','))
    {
        return invalid(format!(
            "header name `{}` contains {c:?}",
            name.escape_debug()
        ));
    }
    let reserved = name
        .as_bytes()
        .get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"nats-"));
    if reserved && !name.eq_ignore_ascii_case(MSG_ID_HEADER) {
        return invalid(format!(
            "header `{name}` is reserved; only `{MSG_ID_HEADER}` may be set"
        ));
    }
    if value.contains(['\r', '\n']) {
        return invalid(format!(
            "the value of header `{name}` contains a line break"
        ));
    }
    Ok(())
}

impl Host for BusState {
    async fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), BusError>> {
        // The events stream takes canonical events only, through `emit`: it checks the event
        // and stamps the loop guard, which raw bytes would skip.
        if subject.split('.').next() == Some(EVENTS_PREFIX) {
            return Ok(Err(BusError::InvalidSubject(format!(
                "`{subject}` is on the events stream, which takes canonical events: use `emit` \
                 (with the grant for {subject}) instead of `publish`"
            ))));
        }
        let size = payload.len();
        let message = OutboundMessage {
            subject,
            payload: payload.into(),
            headers,
            reply_to: None,
        };
        Ok(self.send(message, size).await)
    }

    async fn emit(&mut self, event: Event) -> wasmtime::Result<Result<(), BusError>> {
        let mut event = CanonicalEvent::from(event);
        if let Err(e) = event.validate() {
            return Ok(Err(BusError::InvalidEvent(e.to_string())));
        }
        // A host event type is refused below (its subject is in a reserved space); a daemon's
        // source is refused here.
        if event.source.starts_with(HOST_SOURCE_PREFIX) {
            return Ok(Err(BusError::InvalidEvent(format!(
                "the source `{}` is reserved for sandbus daemons; use a source of your own",
                crate::text::echo(&event.source)
            ))));
        }
        event.depth = self.depth.saturating_add(1);
        if event.depth > MAX_DEPTH {
            tracing::debug!(event_type = %event.ty, depth = event.depth, "emit refused: loop guard");
            return Ok(Err(BusError::InvalidEvent(format!(
                "loop guard: this `{}` event would be {} listener hops from the event that \
                 started the chain, and at most {MAX_DEPTH} are allowed; does a listener emit \
                 a type it (or a listener it feeds) subscribes to?",
                event.ty, event.depth
            ))));
        }
        let subject = event_subject(&event.ty);
        let message = OutboundMessage {
            subject,
            payload: event.to_json().into(),
            headers: vec![(MSG_ID_HEADER.to_owned(), event.dedup_key())],
            reply_to: None,
        };
        Ok(self.send(message, event.data.len()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imports::bus::{PublishRate, PublishThrottle, RecordingPublisher};
    use crate::subject::{PublishGrants, SubjectPattern};
    use std::sync::Arc;
    use std::time::Duration;

    fn state(grant: &str, rate: u32) -> (Arc<RecordingPublisher>, BusState) {
        let publisher = Arc::new(RecordingPublisher::default());
        let state = BusState {
            grants: Arc::new(PublishGrants::new([SubjectPattern::parse(grant).unwrap()])),
            publisher: publisher.clone(),
            max_payload: 16,
            rate: Arc::new(PublishRate::new(0, rate)),
            budget: 0,
            throttle: PublishThrottle::default(),
            published: 0,
            depth: 0,
        };
        (publisher, state)
    }

    fn event(ty: &str) -> Event {
        Event {
            id: "ev-1".into(),
            source: "/test".into(),
            type_: ty.into(),
            subject: None,
            time: None,
            datacontenttype: Some("application/json".into()),
            data: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn ungranted_subject_is_refused_and_nothing_is_sent() {
        let (publisher, mut bus) = state("events.billing.>", 10);
        let r = bus
            .publish("secret.payroll".into(), b"x".to_vec(), vec![])
            .await
            .unwrap();
        assert_eq!(r, Err(BusError::NotGranted("secret.payroll".into())));
        let r = bus.emit(event("audit.leak")).await.unwrap();
        assert_eq!(r, Err(BusError::NotGranted("events.audit.leak".into())));
        assert!(publisher.take().is_empty());
    }

    #[tokio::test]
    async fn reserved_subjects_are_refused_even_when_a_manifest_grants_everything() {
        // A grant of `>` can't be recorded any more, but a manifest written by hand or by an
        // older version may hold one: the publish is still refused.
        let (publisher, mut bus) = state(">", 100);
        for subject in [
            "$KV.sandbus-kv.billing.total/acme",
            "$JS.API.STREAM.PURGE.SANDBUS_DEAD_LETTERS",
            "$SRV.PING",
            "_INBOX.x.y",
            "sandbus.api.operator.component.remove",
            "sandbus.dead-letter.billing",
        ] {
            let r = bus
                .publish(subject.into(), b"{}".to_vec(), vec![])
                .await
                .unwrap();
            assert_eq!(r, Err(BusError::NotGranted(subject.into())), "{subject}");
        }
        let forged = bus.emit(event("sandbus.lease.released")).await.unwrap();
        assert_eq!(
            forged,
            Err(BusError::NotGranted("events.sandbus.lease.released".into()))
        );
        let posing = Event {
            source: "/sandbus/hosts/h1".into(),
            ..event("vm.started")
        };
        match bus.emit(posing).await.unwrap() {
            Err(BusError::InvalidEvent(why)) => assert!(why.contains("reserved"), "{why}"),
            other => panic!("an event posing as a daemon went out: {other:?}"),
        }
        assert!(publisher.take().is_empty(), "nothing reached the bus");
    }

    #[tokio::test]
    async fn the_events_stream_takes_events_through_emit_only() {
        let (publisher, mut bus) = state("events.billing.>", 100);
        let raw = bus
            .publish("events.billing.usage".into(), b"{}".to_vec(), vec![])
            .await
            .unwrap();
        match raw {
            Err(BusError::InvalidSubject(why)) => assert!(why.contains("use `emit`"), "{why}"),
            other => panic!("raw bytes on the events stream were not refused: {other:?}"),
        }
        assert!(publisher.take().is_empty());
        bus.emit(event("billing.usage")).await.unwrap().unwrap();
        assert_eq!(publisher.take().len(), 1);
    }

    #[tokio::test]
    async fn an_emitted_event_is_one_hop_deeper_and_refused_past_the_limit() {
        let (publisher, mut bus) = state("events.>", 100);
        bus.depth = 3;
        bus.emit(event("chain.next")).await.unwrap().unwrap();
        let sent = CanonicalEvent::from_json(&publisher.take()[0].payload).unwrap();
        assert_eq!(sent.depth, 4, "stamped by the host");
        bus.depth = MAX_DEPTH;
        let refused = bus.emit(event("chain.next")).await.unwrap();
        match refused {
            Err(BusError::InvalidEvent(why)) => assert!(why.contains("loop guard"), "{why}"),
            other => panic!("an event past the depth limit went out: {other:?}"),
        }
        assert!(publisher.take().is_empty());
    }

    #[tokio::test]
    async fn emitted_event_carries_its_id_for_deduplication() {
        let (publisher, mut bus) = state("events.billing.>", 10);
        bus.emit(event("billing.usage")).await.unwrap().unwrap();
        let sent = publisher.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].subject, "events.billing.usage");
        assert_eq!(
            sent[0].headers,
            vec![(MSG_ID_HEADER.to_owned(), "5:/testev-1".to_owned())]
        );
        let back = CanonicalEvent::from_json(&sent[0].payload).unwrap();
        assert_eq!(back.id, "ev-1");
    }

    #[tokio::test]
    async fn size_header_and_rate_limits_are_enforced() {
        let (publisher, mut bus) = state(">", 2);
        let big = bus
            .publish("a.b".into(), vec![0; 17], vec![])
            .await
            .unwrap();
        assert_eq!(big, Err(BusError::PayloadTooLarge(16)));
        let hdr = bus
            .publish(
                "a.b".into(),
                vec![],
                vec![("Nats-Expected-Stream".into(), "x".into())],
            )
            .await
            .unwrap();
        assert!(matches!(hdr, Err(BusError::InvalidHeader(_))));
        for name in ["Nats\u{e9}x", "Natsé", "a b", "ümlaut", ""] {
            let r = bus
                .publish("a.b".into(), vec![], vec![(name.into(), "v".into())])
                .await
                .unwrap();
            assert!(matches!(r, Err(BusError::InvalidHeader(_))), "{name:?}");
        }
        let wild = bus.publish("a.*".into(), vec![], vec![]).await.unwrap();
        assert!(matches!(wild, Err(BusError::InvalidSubject(_))));
        assert!(
            bus.publish("a.b".into(), vec![], vec![])
                .await
                .unwrap()
                .is_ok()
        );
        assert!(
            bus.publish("a.b".into(), vec![], vec![])
                .await
                .unwrap()
                .is_ok()
        );
        let limited = bus.publish("a.b".into(), vec![], vec![]).await.unwrap();
        assert_eq!(limited, Err(BusError::RateLimited));
        assert_eq!(publisher.take().len(), 2);
        assert_eq!(
            bus.throttle,
            PublishThrottle {
                waits: 0,
                waited_us: 0,
                refused: 1
            },
            "the refusal is counted as throttling"
        );
    }

    #[tokio::test]
    async fn each_call_publishes_its_budget_without_touching_the_rate_cap() {
        // A cap that is spent and never refills: only the call's budget gets through.
        let (publisher, mut bus) = state("events.>", 1);
        bus.rate = Arc::new(PublishRate::new(0, 1));
        assert_eq!(bus.rate.reserve(Duration::ZERO), Some(Duration::ZERO));
        bus.budget = 2;
        bus.emit(event("billing.usage")).await.unwrap().unwrap();
        bus.emit(event("billing.usage")).await.unwrap().unwrap();
        assert!(bus.throttle.is_quiet(), "the budget is not throttling");
        let third = bus.emit(event("billing.usage")).await.unwrap();
        assert_eq!(
            third,
            Err(BusError::RateLimited),
            "past the budget, the cap"
        );
        assert_eq!(publisher.take().len(), 2);
        assert_eq!(bus.throttle.refused, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_that_waits_for_its_turn_is_counted_with_its_wait() {
        let (publisher, mut bus) = state(">", 1);
        bus.rate = Arc::new(PublishRate::new(4, 1));
        bus.publish("a.b".into(), vec![], vec![])
            .await
            .unwrap()
            .unwrap();
        bus.publish("a.b".into(), vec![], vec![])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(publisher.take().len(), 2);
        assert_eq!(bus.throttle.waits, 1);
        assert!(
            (200_000..=260_000).contains(&bus.throttle.waited_us),
            "waited about a quarter second: {:?}",
            bus.throttle
        );
        assert_eq!(bus.throttle.refused, 0);
    }

    #[test]
    fn a_publish_over_the_cap_waits_for_its_turn_up_to_a_second_then_is_refused() {
        // 10 a second, a burst of 2: two now, then one every 100 ms, reserved in order.
        let rate = PublishRate::new(10, 2);
        assert_eq!(rate.reserve(PublishRate::MAX_WAIT), Some(Duration::ZERO));
        assert_eq!(rate.reserve(PublishRate::MAX_WAIT), Some(Duration::ZERO));
        let waits: Vec<Duration> = (0..10)
            .map(|_| rate.reserve(PublishRate::MAX_WAIT).unwrap())
            .collect();
        for (i, wait) in waits.iter().enumerate() {
            let due = Duration::from_millis(100 * (i as u64 + 1));
            assert!(
                wait.abs_diff(due) < Duration::from_millis(20),
                "publish {i} waits {wait:?}, due in {due:?}"
            );
        }
        // The eleventh would be more than a second away: refused, and nothing reserved.
        assert_eq!(rate.reserve(PublishRate::MAX_WAIT), None);
        assert_eq!(
            rate.reserve(Duration::ZERO),
            None,
            "a refused publish reserves nothing, and none is free"
        );
        // A bucket that never refills has nothing to wait for once its burst is spent.
        let never = PublishRate::new(0, 1);
        assert_eq!(never.reserve(PublishRate::MAX_WAIT), Some(Duration::ZERO));
        assert_eq!(never.reserve(Duration::from_secs(3600)), None);
    }
}
