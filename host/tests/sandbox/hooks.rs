//! Hooks: a check answers allow, deny or "cannot decide"; a hook that spins is cut at the
//! extension point's deadline; `kv-read` reaches only the spaces a hook was granted. The
//! quota hook denies a tenant whose billed usage is over its limit.

use std::time::{Duration, Instant};

use sandbus::imports::kv::KvStore;
use sandbus::imports::kv_read::KvReadGrants;
use sandbus::sandbox::{HookDecision, InvokeErrorKind, PreparedComponent, World};

use super::support::{fixed_hook, guest};
use super::{Harness, event, sandbox, spec};

fn hook(name: &str, bytes: &[u8], kv_read: &[&str]) -> PreparedComponent {
    let mut spec = spec(name, World::Hook, &[], &[]);
    spec.kv_read = KvReadGrants::new(kv_read.iter().map(|n| (*n).to_owned()));
    sandbox().prepare(spec, bytes).unwrap()
}

fn proposal(tenant: &str) -> sandbus::event::CanonicalEvent {
    event(
        "vm.pre-create",
        &format!("create-{tenant}"),
        &format!(r#"{{"tenant":"{tenant}","size":"large"}}"#),
    )
}

const POINT_DEADLINE: Duration = Duration::from_secs(1);

#[tokio::test]
async fn hook_answers_allow_deny_or_cannot_decide() {
    let h = Harness::new();
    for (answer, want) in [
        ("allow", HookDecision::Allow),
        (
            "deny",
            HookDecision::Deny {
                reason: "denied by wat".into(),
            },
        ),
        (
            "error",
            HookDecision::Undecided {
                reason: "cannot decide".into(),
            },
        ),
    ] {
        let hook = hook(&format!("wat-{answer}"), &fixed_hook(answer), &[]);
        let done = hook
            .check(proposal("acme"), &h.caps, POINT_DEADLINE)
            .await
            .unwrap();
        assert_eq!(done.output, want, "{answer}");
    }
    let trap = hook("wat-trap", &fixed_hook("trap"), &[]);
    let err = trap
        .check(proposal("acme"), &h.caps, POINT_DEADLINE)
        .await
        .unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::Trap, "{err}");
}

#[tokio::test]
async fn spinning_hook_is_cut_at_the_point_deadline_not_its_own() {
    let h = Harness::new();
    // Its own deadline is 1 s (the hook default); the point asks for 200 ms.
    let spin = hook("wat-spin", &fixed_hook("spin"), &[]);
    let started = Instant::now();
    let err = spin
        .check(proposal("acme"), &h.caps, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "cut after {:?}",
        started.elapsed()
    );
    // The same hook answers the next call as usual (and is cut again).
    let err = spin
        .check(proposal("acme"), &h.caps, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::Timeout);
}

#[tokio::test]
async fn quota_hook_denies_a_tenant_over_its_limit_and_allows_the_others() {
    let h = Harness::new();
    let kv = h.kv.clone();
    // The billing listener's totals, and the hook's own limits.
    kv.set("billing", "total/acme", b"4000".to_vec())
        .await
        .unwrap();
    kv.set("billing", "total/globex", b"120".to_vec())
        .await
        .unwrap();
    kv.set("quota", "limit/acme", b"3600".to_vec())
        .await
        .unwrap();
    kv.set("quota", "limit/default", b"600".to_vec())
        .await
        .unwrap();
    let quota = hook("quota", &guest("quota-hook"), &["billing"]);
    let ask = |tenant: &'static str| {
        let quota = &quota;
        let caps = h.caps.clone();
        async move {
            quota
                .check(proposal(tenant), &caps, POINT_DEADLINE)
                .await
                .unwrap()
                .output
        }
    };
    let HookDecision::Deny { reason } = ask("acme").await else {
        panic!("acme is over its quota")
    };
    assert!(
        reason.contains("acme") && reason.contains("4000") && reason.contains("3600"),
        "{reason}"
    );
    // globex: 120 s of the default 600 s; initech: no usage yet.
    assert_eq!(ask("globex").await, HookDecision::Allow);
    assert_eq!(ask("initech").await, HookDecision::Allow);
    // Once globex's usage reaches the default limit it is denied too.
    kv.set("billing", "total/globex", b"600".to_vec())
        .await
        .unwrap();
    assert!(matches!(ask("globex").await, HookDecision::Deny { .. }));
    // A malformed proposal is denied, not waved through.
    let done = quota
        .check(
            event("vm.pre-create", "bad", r#"{"size":"large"}"#),
            &h.caps,
            POINT_DEADLINE,
        )
        .await
        .unwrap();
    assert!(
        matches!(&done.output, HookDecision::Deny { reason } if reason.contains("tenant")),
        "{:?}",
        done.output
    );
    // The hook only read: billing's space is as it was.
    assert_eq!(h.kv.snapshot("billing").len(), 2);
}

#[tokio::test]
async fn kv_read_without_the_grant_is_refused_and_the_hook_cannot_decide() {
    let h = Harness::new();
    h.kv.set("billing", "total/acme", b"4000".to_vec())
        .await
        .unwrap();
    h.kv.set("quota-ungranted", "limit/default", b"10".to_vec())
        .await
        .unwrap();
    let quota = hook("quota-ungranted", &guest("quota-hook"), &[]);
    let done = quota
        .check(proposal("acme"), &h.caps, POINT_DEADLINE)
        .await
        .unwrap();
    let HookDecision::Undecided { reason } = done.output else {
        panic!("{:?}", done.output)
    };
    assert!(reason.contains("kv-read=billing"), "{reason}");
}
