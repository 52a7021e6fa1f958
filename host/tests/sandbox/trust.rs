//! Trust boundaries inside the sandbox: what a guest can never do, whatever its manifest
//! says. The manifests here are built directly (as a hand-written or older manifest could
//! be), past the policy check every entry point runs, to prove the host refuses at run time
//! too: no publish into a reserved space, no host event, no endless event loop.

use sandbus::event::MAX_DEPTH;
use sandbus::sandbox::{HandlerOutcome, World};

use super::support::guest;
use super::{Harness, event, sandbox, spec};

fn probe(grants: &[&str]) -> sandbus::sandbox::PreparedComponent {
    sandbox()
        .prepare(
            spec("probe", World::Listener, grants, &[]),
            &guest("trust-probe-listener"),
        )
        .unwrap()
}

fn rejection(outcome: HandlerOutcome) -> String {
    match outcome {
        HandlerOutcome::Reject { reason } => reason,
        other => panic!("expected a rejection with the host's answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_guest_granted_everything_still_cannot_publish_into_a_reserved_space() {
    let h = Harness::new();
    let probe = probe(&[">"]);
    for subject in [
        "$KV.sandbus-kv.billing.total/acme",
        "$JS.API.STREAM.PURGE.SANDBUS_DEAD_LETTERS",
        "_INBOX.abc.def",
        "sandbus.api.operator.component.remove",
    ] {
        let out = probe
            .handle(event("probe.publish", "p-1", subject), &h.caps)
            .await
            .unwrap();
        let reason = rejection(out.output);
        assert!(reason.contains("NotGranted"), "{subject}: {reason}");
    }
    assert!(h.publisher.take().is_empty(), "nothing reached the bus");
}

#[tokio::test]
async fn a_guest_cannot_emit_a_host_event() {
    let h = Harness::new();
    let probe = probe(&[">"]);
    let out = probe
        .handle(event("probe.forge", "f-1", "{}"), &h.caps)
        .await
        .unwrap();
    let reason = rejection(out.output);
    assert!(
        reason.contains("NotGranted(\"events.sandbus.lease.released\")"),
        "{reason}"
    );
    assert!(h.publisher.take().is_empty());
}

#[tokio::test]
async fn a_listener_that_emits_its_own_type_is_stopped_at_the_depth_limit() {
    let h = Harness::new();
    let probe = probe(&["events.probe.>"]);
    // Hand the listener what it emitted, as a subscription to its own type would.
    let mut next = event("probe.loop", "l", "{}");
    let mut hops = 0;
    loop {
        let out = probe.handle(next.clone(), &h.caps).await.unwrap();
        match out.output {
            HandlerOutcome::Ok => {
                let sent = h.publisher.take();
                assert_eq!(sent.len(), 1);
                let emitted = sandbus::event::CanonicalEvent::from_json(&sent[0].payload).unwrap();
                assert_eq!(emitted.depth, next.depth + 1, "one hop deeper each time");
                next = emitted;
                hops += 1;
            }
            other => {
                let reason = rejection(other);
                assert!(reason.contains("loop guard"), "{reason}");
                break;
            }
        }
        assert!(hops <= MAX_DEPTH, "the loop was not stopped");
    }
    assert_eq!(
        hops, MAX_DEPTH,
        "every hop up to the limit is allowed, none past it"
    );
    assert_eq!(next.depth, MAX_DEPTH);
}
