//! Script runs on a host's devices: `sandbus.lease.acquired`, `sandbus.lease.released` and
//! `sandbus.run.finished`, and how a run ended ([`RunVerdict`]).
//!
//! Billing charges device time from the lease events: a run holds its device from
//! `lease.acquired` to `lease.released`, whose `held_ms` is that time.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{DeviceInfo, HostEvent, Record};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunVerdict {
    /// The script reported pass.
    Pass,
    /// The script reported fail.
    Fail,
    /// The script reported error, or the run could not run (trap, no device, host lost).
    Error,
    /// The run hit its deadline.
    Timeout,
    /// Someone cancelled it.
    Cancelled,
}

impl fmt::Display for RunVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunVerdict::Pass => "pass",
            RunVerdict::Fail => "fail",
            RunVerdict::Error => "error",
            RunVerdict::Timeout => "timeout",
            RunVerdict::Cancelled => "cancelled",
        })
    }
}

/// `sandbus.lease.acquired`: a run took its device (the cluster-wide lease). Its subject is
/// the device id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAcquired {
    /// The run id.
    pub run: String,
    /// The host the device is plugged into, which runs the script.
    pub host: String,
    /// The device taken.
    pub device: DeviceInfo,
    /// The script component's name.
    pub script: String,
}

impl HostEvent for LeaseAcquired {
    const TYPE: &'static str = "sandbus.lease.acquired";
}

impl LeaseAcquired {
    /// The `sandbus.lease.released` that ends this lease: the device was held `held_ms`, its
    /// reset after the run gave `reset`, and the run ended as `verdict`.
    pub fn released(self, held_ms: u64, reset: String, verdict: RunVerdict) -> LeaseReleased {
        LeaseReleased {
            run: self.run,
            host: self.host,
            device: self.device,
            script: self.script,
            held_ms,
            reset,
            verdict,
        }
    }
}

/// `sandbus.lease.released`: a run gave its device back (reset, lease released), however it
/// ended. Its subject is the device id. The lease's fields, then how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReleased {
    /// The run id.
    pub run: String,
    /// The host the device is plugged into.
    pub host: String,
    /// The device given back.
    pub device: DeviceInfo,
    /// The script component's name: who billing charges the device time to.
    pub script: String,
    /// How long the run held the device, in milliseconds (from taking the lease to giving
    /// it back, the reset included).
    pub held_ms: u64,
    /// How the device's reset after the run went: `ok`, or `failed: <why>`.
    pub reset: String,
    /// How the run ended.
    pub verdict: RunVerdict,
}

impl HostEvent for LeaseReleased {
    const TYPE: &'static str = "sandbus.lease.released";
}

/// `sandbus.run.finished`: a run ended. Its subject is the run id; the data is the run's
/// report, whole (the same report `sandbus logs` ends with).
///
/// The report's type is the daemon's; a reader that is not the daemon reads it as a
/// [`serde_json::Value`] (the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunFinished<Report = serde_json::Value> {
    /// The run's report (run, script, host, device, verdict, steps, summary, metering...).
    pub report: Report,
}

impl<Report: Record> HostEvent for RunFinished<Report> {
    const TYPE: &'static str = "sandbus.run.finished";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::devices::tests::{board, board_json};
    use crate::testing::assert_same_json;

    fn acquired() -> LeaseAcquired {
        LeaseAcquired {
            run: "r-1795255200000-0a1b2c3d".into(),
            host: "h1".into(),
            device: board(),
            script: "smoke".into(),
        }
    }

    #[test]
    fn lease_acquired_names_the_run_host_device_and_script() {
        let lease = acquired();
        assert_same_json(
            &lease,
            json!({
                "run": lease.run, "host": lease.host, "device": lease.device,
                "script": lease.script,
            }),
        );
    }

    #[test]
    fn lease_released_is_the_lease_plus_held_time_reset_and_verdict() {
        let lease = acquired();
        // The daemon's call site: the acquired event's data, with three fields added.
        let mut before = serde_json::to_value(&lease).unwrap();
        before["held_ms"] = json!(1520u64);
        before["reset"] = json!("ok");
        before["verdict"] = json!(RunVerdict::Pass);
        assert_same_json(&lease.released(1520, "ok".into(), RunVerdict::Pass), before);
    }

    #[test]
    fn lease_released_reads_back_with_its_device() {
        let data = acquired()
            .released(9, "failed: stalled".into(), RunVerdict::Timeout)
            .to_data()
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(value["device"], board_json());
        assert_eq!(value["verdict"], "timeout");
        assert_eq!(value["reset"], "failed: stalled");
    }

    #[test]
    fn verdicts_are_written_and_displayed_in_kebab_case() {
        for (verdict, text) in [
            (RunVerdict::Pass, "pass"),
            (RunVerdict::Fail, "fail"),
            (RunVerdict::Error, "error"),
            (RunVerdict::Timeout, "timeout"),
            (RunVerdict::Cancelled, "cancelled"),
        ] {
            assert_eq!(verdict.to_string(), text);
            assert_eq!(serde_json::to_value(verdict).unwrap(), text);
        }
    }

    #[test]
    fn run_finished_is_the_report_itself() {
        let report = json!({
            "run": "r-1", "script": "smoke", "host": "h1", "device": board_json(),
            "verdict": "pass", "steps": [], "summary": "ok",
            "metering": { "wall_us": 5, "peak_memory": 65536, "fuel": null, "published": 0 },
            "log_lines_dropped": 0,
        });
        // The daemon's call site: `json!(report)`.
        assert_same_json(
            &RunFinished {
                report: report.clone(),
            },
            json!(report),
        );
    }
}
