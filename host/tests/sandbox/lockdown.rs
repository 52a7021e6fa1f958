//! WASI lock-down: a guest reaching for the filesystem, the network or the environment gets
//! nothing. The probe script reports each attempt as a step (passed = denied).

use sandbus::sandbox::{StepOutcome, Verdict, World};

use super::support::guest;
use super::{Harness, sandbox, spec};

#[tokio::test]
async fn filesystem_sockets_and_environment_give_nothing() {
    // Something in the host's own environment that must not leak.
    // SAFETY: set before any guest runs; tests in this binary don't read it concurrently.
    unsafe { std::env::set_var("SANDBUS_TEST_SECRET", "hunter2") };
    let probe = sandbox()
        .prepare(
            spec("escape-probe-script", World::Script, &[], &[]),
            &guest("escape-probe-script"),
        )
        .unwrap();
    let h = Harness::new();
    let run = probe.run(vec![], &h.caps).await.unwrap();
    let report = run.output;
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "fs-read",
        "fs-read-dir",
        "fs-write",
        "tcp-connect",
        "udp-bind",
        "dns-lookup",
        "env-vars",
        "args",
    ] {
        assert!(
            names.contains(&expected),
            "step {expected} missing from {names:?}"
        );
    }
    for step in &report.steps {
        assert_eq!(
            step.outcome,
            StepOutcome::Passed,
            "{} obtained something: {:?}",
            step.name,
            step.detail
        );
        assert!(!step.detail.as_deref().unwrap_or("").contains("hunter2"));
    }
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.summary);
    assert!(
        !std::path::Path::new("/tmp/sandbus-escape").exists(),
        "the guest wrote a file"
    );
}
