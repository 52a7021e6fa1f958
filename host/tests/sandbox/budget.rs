//! The host-wide memory budget, with hostile guests: every call reserves its component's
//! memory cap before it runs and waits while the budget is spent, so memory bombs on many
//! components at once never hold more than the budget; a component that could not fit even
//! alone is refused at load, with the numbers.

use std::sync::Arc;

use sandbus::sandbox::{InvokeErrorKind, LoadErrorKind, Sandbox, SandboxConfig, World};

use super::support::guest;
use super::{Harness, event, spec};

const BUDGET: u64 = 128 << 20;

fn small_host() -> Sandbox {
    Sandbox::new(SandboxConfig {
        pool_instances: 16,
        memory_budget: BUDGET,
        ..SandboxConfig::default()
    })
    .unwrap()
}

#[test]
fn a_component_that_cannot_fit_the_budget_is_refused_with_the_numbers() {
    let host = small_host();
    let err = host
        .prepare(
            spec(
                "greedy",
                World::Listener,
                &[],
                &["memory=64MiB", "instances=4"],
            ),
            &guest("memory-bomb-listener"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind, LoadErrorKind::Limits);
    for needle in [
        "memory=64.0 MiB",
        "instances=4",
        "256.0 MiB",
        "budget of 128.0 MiB",
    ] {
        assert!(err.message.contains(needle), "{needle} in {}", err.message);
    }
    // At the budget exactly, it fits.
    host.prepare(
        spec(
            "fits",
            World::Listener,
            &[],
            &["memory=64MiB", "instances=2"],
        ),
        &guest("memory-bomb-listener"),
    )
    .unwrap();
}

#[tokio::test]
async fn a_budget_and_caps_that_are_not_whole_pages_are_counted_in_pages() {
    // 512 MB is 7812.5 pages: the budget holds 7812. A cap of 512 MB needs 7813: it could
    // never be reserved, so it is refused rather than left waiting forever.
    let host = Sandbox::new(SandboxConfig {
        pool_instances: 4,
        memory_budget: 512_000_000,
        ..SandboxConfig::default()
    })
    .unwrap();
    let err = host
        .prepare(
            spec(
                "odd",
                World::Listener,
                &[],
                &["memory=512MB", "instances=1"],
            ),
            &guest("noop-listener"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind, LoadErrorKind::Limits, "{err}");
    // A cap of whole pages that fits is accepted, and its calls run.
    let fits = host
        .prepare(
            spec(
                "fits",
                World::Listener,
                &[],
                &["memory=488MiB", "instances=1"],
            ),
            &guest("noop-listener"),
        )
        .unwrap();
    let h = Harness::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        fits.handle(event("vm.started", "e", "{}"), &h.caps),
    )
    .await
    .expect("the call got its memory")
    .unwrap();
}

#[tokio::test]
async fn memory_bombs_on_many_components_never_hold_more_than_the_budget() {
    let host = Arc::new(small_host());
    let bombs: Vec<_> = ["bomb-a", "bomb-b", "bomb-c"]
        .iter()
        .map(|name| {
            Arc::new(
                host.prepare(
                    spec(name, World::Listener, &[], &["memory=64MiB", "instances=2"]),
                    &guest("memory-bomb-listener"),
                )
                .unwrap(),
            )
        })
        .collect();
    let h = Arc::new(Harness::new());
    // Six bombs at once want 384 MiB; the budget holds two at a time.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let bomb = bombs[i % bombs.len()].clone();
            let h = h.clone();
            tokio::spawn(async move {
                bomb.handle(event("vm.started", &format!("e{i}"), "{}"), &h.caps)
                    .await
            })
        })
        .collect();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.kind, InvokeErrorKind::MemoryLimit, "{err}");
    }
    let (reserved, peak) = host.memory_reserved();
    assert_eq!(reserved, 0, "every call gave its memory back");
    assert!(peak <= BUDGET, "{peak} bytes held at once, over the budget");
    assert!(peak >= 64 << 20, "the calls did reserve their caps: {peak}");
}
