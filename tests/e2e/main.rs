//! End-to-end tests of the real `sandbus` binary: the dev loop and `inspect`, as a user runs
//! them. Each `mod` is one topic. Needs the guests built by `scripts/build-guests.sh`.
//! (The daemon tests with a real nats-server arrive with the daemon.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test, with its message"
)]

#[path = "../support/mod.rs"]
mod support;

mod dev_replay;
mod dev_run;
mod inspect;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `sandbus ARGS` with a private compile cache; returns its output.
fn sandbus(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandbus"))
        .args(args)
        .env("SANDBUS_CACHE_DIR", cache)
        .env_remove("SANDBUS_LOG")
        .output()
        .expect("the sandbus binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// JSON lines of stdout.
fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
