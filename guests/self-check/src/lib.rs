//! The self-check script (world `script`): exercises what the host offers a guest and reports
//! one step per feature, timed and in order: `log-levels`, `stdout`, `kv-roundtrip`,
//! `kv-increment`, `kv-set-if-absent`, `kv-compare-and-swap`, `kv-list-keys`, `clock`,
//! `random`. The sandbox tests and the CLI tests run it (`sandbus dev run`, exit codes).
//!
//! Arguments (`--arg name=value`, repeatable):
//! - `fail=<step>`: that step is not run and reports `failed` with detail "failed on request"
//!   (to test how a failing verdict surfaces, e.g. the CLI exit code);
//! - `skip=<step>`: that step is not run and reports `skipped`.
//!
//! Any other argument name, or a step name that does not exist, ends the run at once with
//! verdict `error` and a summary naming the argument. The verdict is `pass` when every step
//! passed or was skipped, `fail` otherwise. Keys live under `self-check/<run nonce>/` and are
//! deleted again by the steps that wrote them.

wit_bindgen::generate!({
    path: "../../wit",
    world: "script",
});

use exports::sandbus::host::runner::{Guest, Report, Step, StepOutcome, Verdict};
use sandbus::host::kv::{self, KvError};
use sandbus::host::log::{self, Level};
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What a step's body returns: `Ok(detail)` when it passed, `Err(detail)` when it failed.
type StepResult = Result<Option<String>, String>;

/// A step's body; its argument is the run's key prefix.
type StepFn = fn(&str) -> StepResult;

/// The steps, in the order they run.
const STEPS: [(&str, StepFn); 9] = [
    ("log-levels", log_levels),
    ("stdout", stdout),
    ("kv-roundtrip", kv_roundtrip),
    ("kv-increment", kv_increment),
    ("kv-set-if-absent", kv_set_if_absent),
    ("kv-compare-and-swap", kv_compare_and_swap),
    ("kv-list-keys", kv_list_keys),
    ("clock", clock),
    ("random", random),
];

/// The component.
struct SelfCheck;

impl Guest for SelfCheck {
    fn run(args: Vec<(String, String)>) -> Report {
        let (fail, skip) = match parse_args(&args) {
            Ok(sets) => sets,
            Err(summary) => {
                log::log(Level::Error, &summary);
                return Report {
                    verdict: Verdict::Error,
                    steps: Vec::new(),
                    summary,
                };
            }
        };
        let prefix = format!("self-check/{:016x}", nonce());
        let mut steps = Vec::with_capacity(STEPS.len());
        for (name, body) in STEPS {
            let started = Instant::now();
            let (outcome, detail) = if skip.contains(name) {
                (StepOutcome::Skipped, Some("skipped on request".to_string()))
            } else if fail.contains(name) {
                (StepOutcome::Failed, Some("failed on request".to_string()))
            } else {
                match body(&prefix) {
                    Ok(detail) => (StepOutcome::Passed, detail),
                    Err(detail) => (StepOutcome::Failed, Some(detail)),
                }
            };
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            steps.push(Step {
                name: name.to_string(),
                outcome,
                duration_ms,
                detail,
            });
        }
        summarise(steps)
    }
}

export!(SelfCheck);

/// Reads `fail=` and `skip=` arguments; the error is the summary of an `error` report.
fn parse_args(args: &[(String, String)]) -> Result<(BTreeSet<String>, BTreeSet<String>), String> {
    let (mut fail, mut skip) = (BTreeSet::new(), BTreeSet::new());
    for (name, value) in args {
        let set = match name.as_str() {
            "fail" => &mut fail,
            "skip" => &mut skip,
            other => {
                return Err(format!(
                    "unknown argument `{other}`; self-check takes fail=<step> and skip=<step>"
                ));
            }
        };
        if !STEPS.iter().any(|(step, _)| step == value) {
            return Err(format!(
                "argument `{name}={value}` names no step; the steps are {}",
                step_names()
            ));
        }
        set.insert(value.clone());
    }
    Ok((fail, skip))
}

fn step_names() -> String {
    STEPS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report: verdict and a one-line summary such as "8 of 9 steps passed, 1 failed: random".
fn summarise(steps: Vec<Step>) -> Report {
    let count = |o: StepOutcome| steps.iter().filter(|s| s.outcome == o).count();
    let (passed, skipped) = (count(StepOutcome::Passed), count(StepOutcome::Skipped));
    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| s.outcome == StepOutcome::Failed)
        .map(|s| s.name.as_str())
        .collect();
    let mut summary = format!("{passed} of {} steps passed", steps.len());
    if skipped > 0 {
        summary.push_str(&format!(", {skipped} skipped"));
    }
    if !failed.is_empty() {
        summary.push_str(&format!(", {} failed: {}", failed.len(), failed.join(", ")));
    }
    let verdict = if failed.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Report {
        verdict,
        steps,
        summary,
    }
}

/// A per-run number for unique keys (from the clock and std's randomly seeded hasher).
fn nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.finish()
}

fn kv_text(op: &str, key: &str, e: KvError) -> String {
    format!("kv {op} `{key}`: {e:?}")
}

/// Fails the step with `what` unless `cond`.
fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

fn log_levels(_: &str) -> StepResult {
    for (level, name) in [
        (Level::Trace, "trace"),
        (Level::Debug, "debug"),
        (Level::Info, "info"),
        (Level::Warn, "warn"),
        (Level::Error, "error"),
    ] {
        log::log(level, &format!("self-check: a line at {name} level"));
    }
    Ok(Some(
        "one line at each of trace, debug, info, warn, error".into(),
    ))
}

fn stdout(_: &str) -> StepResult {
    use std::io::Write;
    println!("self-check: a line on stdout");
    eprintln!("self-check: a line on stderr");
    std::io::stdout()
        .flush()
        .map_err(|e| format!("flushing stdout: {e}"))?;
    Ok(Some("one line on stdout, one on stderr".into()))
}

fn kv_roundtrip(prefix: &str) -> StepResult {
    let key = format!("{prefix}/roundtrip");
    let value = b"hello, kv".as_slice();
    kv::set(&key, value).map_err(|e| kv_text("set", &key, e))?;
    let got = kv::get(&key).map_err(|e| kv_text("get", &key, e))?;
    check(got.as_deref() == Some(value), || {
        format!("get after set returned {got:?}")
    })?;
    let existed = kv::delete(&key).map_err(|e| kv_text("delete", &key, e))?;
    check(existed, || "delete of a set key returned false".into())?;
    let got = kv::get(&key).map_err(|e| kv_text("get", &key, e))?;
    check(got.is_none(), || {
        format!("get after delete returned {got:?}")
    })?;
    let existed = kv::delete(&key).map_err(|e| kv_text("delete", &key, e))?;
    check(!existed, || "a second delete returned true".into())?;
    Ok(None)
}

fn kv_increment(prefix: &str) -> StepResult {
    let key = format!("{prefix}/counter");
    let result = (|| {
        let v = kv::increment(&key, 5).map_err(|e| kv_text("increment", &key, e))?;
        check(v == 5, || {
            format!("increment of a missing key by 5 gave {v}")
        })?;
        let v = kv::increment(&key, -2).map_err(|e| kv_text("increment", &key, e))?;
        check(v == 3, || format!("increment by -2 gave {v}, expected 3"))?;
        let got = kv::get(&key).map_err(|e| kv_text("get", &key, e))?;
        check(got.as_deref() == Some(b"3".as_slice()), || {
            format!("get after increments returned {got:?}, expected \"3\"")
        })?;
        kv::set(&key, b"not a number").map_err(|e| kv_text("set", &key, e))?;
        let r = kv::increment(&key, 1);
        check(matches!(r, Err(KvError::NotANumber)), || {
            format!("increment of a non-number gave {r:?}, expected NotANumber")
        })?;
        kv::set(&key, i64::MAX.to_string().as_bytes()).map_err(|e| kv_text("set", &key, e))?;
        let r = kv::increment(&key, 1);
        check(matches!(r, Err(KvError::Overflow)), || {
            format!("increment past i64::MAX gave {r:?}, expected Overflow")
        })?;
        Ok(None)
    })();
    cleanup(&[&key]);
    result
}

fn kv_set_if_absent(prefix: &str) -> StepResult {
    let key = format!("{prefix}/once");
    let result = (|| {
        let first =
            kv::set_if_absent(&key, b"first").map_err(|e| kv_text("set-if-absent", &key, e))?;
        check(first, || {
            "set-if-absent of a missing key returned false".into()
        })?;
        let second =
            kv::set_if_absent(&key, b"second").map_err(|e| kv_text("set-if-absent", &key, e))?;
        check(!second, || {
            "set-if-absent of a present key returned true".into()
        })?;
        let got = kv::get(&key).map_err(|e| kv_text("get", &key, e))?;
        check(got.as_deref() == Some(b"first".as_slice()), || {
            format!("the value is {got:?}, expected \"first\"")
        })?;
        Ok(None)
    })();
    cleanup(&[&key]);
    result
}

fn kv_compare_and_swap(prefix: &str) -> StepResult {
    let key = format!("{prefix}/cas");
    let result = (|| {
        let cas = |expected: Option<&[u8]>, new: &[u8]| {
            kv::compare_and_swap(&key, expected, new)
                .map_err(|e| kv_text("compare-and-swap", &key, e))
        };
        check(cas(None, b"a")?, || "swap from absent failed".into())?;
        check(!cas(None, b"b")?, || {
            "swap expecting absent succeeded on a present key".into()
        })?;
        check(!cas(Some(b"x"), b"b")?, || {
            "swap expecting a wrong value succeeded".into()
        })?;
        check(cas(Some(b"a"), b"b")?, || {
            "swap expecting the right value failed".into()
        })?;
        let got = kv::get(&key).map_err(|e| kv_text("get", &key, e))?;
        check(got.as_deref() == Some(b"b".as_slice()), || {
            format!("the value is {got:?}, expected \"b\"")
        })?;
        Ok(None)
    })();
    cleanup(&[&key]);
    result
}

fn kv_list_keys(prefix: &str) -> StepResult {
    let dir = format!("{prefix}/list/");
    let keys = [format!("{dir}c"), format!("{dir}a"), format!("{dir}b")];
    let outside = format!("{prefix}/listx");
    let result = (|| {
        for key in keys.iter().chain([&outside]) {
            kv::set(key, b"1").map_err(|e| kv_text("set", key, e))?;
        }
        let listed = kv::list_keys(&dir).map_err(|e| kv_text("list-keys", &dir, e))?;
        let want = [format!("{dir}a"), format!("{dir}b"), format!("{dir}c")];
        check(listed == want, || {
            format!("list-keys returned {listed:?}, expected {want:?}")
        })?;
        Ok(Some(format!("{} keys in byte order", listed.len())))
    })();
    let all: Vec<&str> = keys.iter().chain([&outside]).map(String::as_str).collect();
    cleanup(&all);
    result
}

fn clock(_: &str) -> StepResult {
    /// 2020-01-01T00:00:00Z.
    const Y2020: u64 = 1_577_836_800;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("the wall clock is before 1970: {e}"))?
        .as_secs();
    check(now > Y2020, || {
        format!("the wall clock says {now} s since 1970, before 2020")
    })?;
    let a = Instant::now();
    let b = Instant::now();
    check(b >= a, || "the monotonic clock went backwards".into())?;
    Ok(Some(format!("unix time {now}")))
}

fn random(_: &str) -> StepResult {
    // std seeds `RandomState` from the host's random source once per instance (then varies
    // the keys by one per `RandomState`); a host that returned zeros would seed with (0, 0),
    // the keys `DefaultHasher::new()` uses.
    let sample = || std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
    let (a, b) = (sample(), sample());
    let unseeded = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u64(0x5eed);
        h.finish()
    };
    let detail = format!("{a:016x} {b:016x}");
    check(a != b, || format!("two random values are equal: {detail}"))?;
    check(a != unseeded && b != unseeded, || {
        format!("the random seed is zero: {detail}")
    })?;
    Ok(Some(detail))
}

/// Deletes keys a step wrote; failures are logged, not reported (the step already was).
fn cleanup(keys: &[&str]) {
    for key in keys {
        if let Err(e) = kv::delete(key) {
            log::log(Level::Warn, &kv_text("delete", key, e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn step(name: &str, outcome: StepOutcome) -> Step {
        Step {
            name: name.into(),
            outcome,
            duration_ms: 0,
            detail: None,
        }
    }

    #[test]
    fn reads_fail_and_skip() {
        let (fail, skip) = parse_args(&args(&[("fail", "random"), ("skip", "clock")])).unwrap();
        assert!(fail.contains("random") && skip.contains("clock"));
        assert_eq!(parse_args(&[]).unwrap(), Default::default());
    }

    #[test]
    fn unknown_arguments_are_named() {
        let e = parse_args(&args(&[("skip", "clock"), ("verbose", "1")])).unwrap_err();
        assert!(e.contains("`verbose`"), "{e}");
        let e = parse_args(&args(&[("fail", "nope")])).unwrap_err();
        assert!(e.contains("fail=nope"), "{e}");
    }

    #[test]
    fn summary_and_verdict() {
        let report = summarise(vec![
            step("a", StepOutcome::Passed),
            step("b", StepOutcome::Skipped),
        ]);
        assert_eq!(report.verdict, Verdict::Pass);
        assert_eq!(report.summary, "1 of 2 steps passed, 1 skipped");
        let report = summarise(vec![
            step("a", StepOutcome::Passed),
            step("b", StepOutcome::Failed),
        ]);
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.summary, "1 of 2 steps passed, 1 failed: b");
    }
}
