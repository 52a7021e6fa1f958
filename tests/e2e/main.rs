//! End-to-end tests of the real `sandbus` binary, as a user runs it: the dev loop and
//! `inspect`, and the daemon with a real nats-server (started per test on a free port), the
//! real CLI and real listeners. Each `mod` is one topic. Needs the guests built by
//! `scripts/build-guests.sh` and `nats-server` on PATH (or `$SANDBUS_NATS_SERVER`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test, with its message"
)]

#[path = "../support/mod.rs"]
mod support;

mod binary_mode;
mod bulk_publish;
mod cluster;
mod compile_budget;
mod daemon_control;
mod daemon_faults;
mod daemon_listeners;
mod dev_replay;
mod dev_run;
mod device_lab;
mod guest_languages;
mod hooks;
mod idle_listeners;
mod inspect;
mod listener_limits;
mod messaging_listener;
mod nats_habits;
mod operations;
mod replicated_kv;
mod roles;
mod scale_out;
mod standard_interfaces;
mod trust;
mod uploads;

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
