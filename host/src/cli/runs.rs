//! `sandbus run`, `runs`, `logs` and `cancel`: test scripts run on a device, on the host that
//! has it. A run is routed to a host with a matching device (a free one first, else the one
//! with the shortest queue); its log and report are read back from the runs stream.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use sandbus::api::{
    ApiError, ApiErrorKind, CancelReply, Empty, RunIdRequest, RunLogRequest, endpoint,
};
use sandbus::bus::{
    DeviceRecord, DeviceState, RunRecord, RunReport, RunRequest, RunState, RunVerdict, names,
};
use sandbus::dev;
use sandbus::devices::DeviceSelector;
use sandbus::imports::log::LogLine;

use super::connect::{Client, ClientArgs, stored_body, with_client};
use super::output::{
    self, EXIT_FAIL, EXIT_OK, outln, print_json, print_json_line, print_json_or, printable,
};

/// `sandbus run` arguments.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The script's component name (as uploaded).
    script: String,
    /// Which device: VID:PID (any device of that kind, hex), serial=SERIAL, id=ID, or
    /// VID:PID,serial=SERIAL.
    #[arg(long, value_name = "SELECTOR")]
    device: DeviceSelector,
    /// An argument for the script, NAME=VALUE (repeatable).
    #[arg(long = "arg", value_name = "NAME=VALUE", value_parser = dev::parse_arg)]
    args: Vec<(String, String)>,
    /// The run's deadline, once it has the device.
    #[arg(long = "timeout", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    run_timeout: Duration,
    /// How long the run may wait for a busy device.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    queue_timeout: Duration,
    /// Stream the log live and end with the report.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus logs` arguments.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The run id.
    run: String,
    /// Keep printing until the run's report.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus cancel` arguments.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The run id.
    run: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus run SCRIPT --device SELECTOR`: routes the run to the host that has a matching
/// device (a free one first, else the one with the shortest queue).
pub async fn run(args: RunArgs) -> u8 {
    let RunArgs {
        script,
        device: selector,
        args,
        run_timeout,
        queue_timeout,
        follow,
        client,
    } = args;
    with_client(&client, |c| async move {
        let devices: Vec<DeviceRecord> = c.call::<endpoint::Devices>(&Empty {}).await?;
        let device = pick_device(&devices, &selector)?;
        let request = RunRequest {
            script,
            selector: selector.to_string(),
            device: device.info.id.clone(),
            args,
            timeout_ms: u64::try_from(run_timeout.as_millis()).unwrap_or(u64::MAX),
            queue_timeout_ms: u64::try_from(queue_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let record: RunRecord = c
            .call_host::<endpoint::RunStart>(&device.host, &request)
            .await?;
        if !follow {
            print_json_or(c.json, &record, |record| outln!("{}", record.id));
            return Ok(EXIT_OK);
        }
        if !c.json {
            outln!(
                "run {} of {} on {}/{} ({})",
                record.id,
                record.request.script,
                record.host,
                device.info.id,
                device.info.vid_pid()
            );
        }
        follow_run(&c, &record.id, true).await
    })
    .await
}

/// The device a run goes to: a live one the selector matches, free ones first, then the
/// shortest queue.
fn pick_device<'a>(
    devices: &'a [DeviceRecord],
    selector: &DeviceSelector,
) -> Result<&'a DeviceRecord, ApiError> {
    let mut matching: Vec<&DeviceRecord> = devices
        .iter()
        .filter(|d| d.state != DeviceState::Offline && selector.matches(&d.info))
        .collect();
    // Usable before unusable (whose host refuses the run, saying why), free before busy.
    matching.sort_by_key(|d| {
        (
            d.state == DeviceState::Unusable,
            d.state != DeviceState::Free,
            d.queued,
        )
    });
    if let Some(device) = matching.first() {
        return Ok(*device);
    }
    let seen: Vec<String> = devices
        .iter()
        .map(|d| {
            format!(
                "{}/{} {} ({})",
                d.host,
                d.info.id,
                d.info.vid_pid(),
                d.state
            )
        })
        .collect();
    Err(ApiError::new(
        ApiErrorKind::NotFound,
        format!(
            "no device matches `{selector}` on a live host; devices: {}",
            output::joined_or_none(&seen)
        ),
    ))
}

/// `sandbus runs`: every run, newest first.
pub async fn runs(args: &ClientArgs) -> u8 {
    with_client(args, |c| async move {
        let runs: Vec<RunRecord> = c.call::<endpoint::Runs>(&Empty {}).await?;
        print_json_or(c.json, &runs, |runs| print_runs(runs));
        Ok(EXIT_OK)
    })
    .await
}

fn print_runs(runs: &[RunRecord]) {
    if runs.is_empty() {
        outln!("no runs");
        return;
    }
    outln!(
        "{:<26} {:<16} {:<14} {:<16} {:<9} {:<9} created",
        "run",
        "script",
        "host",
        "device",
        "state",
        "verdict"
    );
    for r in runs {
        let state = match r.state {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Finished => "finished",
        };
        outln!(
            "{:<26} {:<16} {:<14} {:<16} {:<9} {:<9} {}",
            r.id,
            printable(&r.request.script),
            printable(&r.host),
            printable(&r.request.device),
            state,
            r.verdict
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r.created_at
        );
    }
}

/// `sandbus logs RUN_ID [--follow]`.
pub async fn logs(args: LogsArgs) -> u8 {
    let LogsArgs {
        run,
        follow,
        client,
    } = args;
    with_client(&client, |c| async move {
        let record: RunRecord = c.call::<endpoint::Run>(&RunIdRequest { run }).await?;
        follow_run(&c, &record.id, follow).await
    })
    .await
}

/// `sandbus cancel RUN_ID`.
pub async fn cancel(args: CancelArgs) -> u8 {
    let CancelArgs { run, client } = args;
    with_client(&client, |c| async move {
        let record: RunRecord = c
            .call::<endpoint::Run>(&RunIdRequest { run: run.clone() })
            .await?;
        if record.state == RunState::Finished {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!(
                    "run {run} already finished ({})",
                    record.verdict.map(|v| v.to_string()).unwrap_or_default()
                ),
            ));
        }
        let reply: CancelReply = c
            .call_host::<endpoint::RunCancel>(&record.host, &RunIdRequest { run })
            .await?;
        print_json_or(c.json, &reply, |reply| {
            if reply.cancelled {
                outln!("cancelling {}", reply.run);
            } else {
                outln!("{} is not active on {}", reply.run, record.host);
            }
        });
        Ok(if reply.cancelled { EXIT_OK } else { EXIT_FAIL })
    })
    .await
}

/// How long `--follow` waits in silence before checking the run's record.
const FOLLOW_IDLE: Duration = Duration::from_secs(3);

/// Prints a run's stored log lines and, with `wait`, follows it to its report. The exit
/// code follows the verdict when the report was seen (0 pass, 1 fail, 3 error, 4 timeout or
/// cancelled), else 0. Pages come from a daemon (`run.log`).
async fn follow_run(c: &Client, run: &str, wait: bool) -> Result<u8, ApiError> {
    let report_subject = names::run_report_subject(run);
    let mut after = 0;
    let mut finished_seen: Option<Instant> = None;
    loop {
        let page = c
            .page::<endpoint::RunLog>(
                wait,
                &RunLogRequest {
                    run: run.to_owned(),
                    after,
                    wait_ms: if wait {
                        u64::try_from(FOLLOW_IDLE.min(c.reply_timeout() / 2).as_millis())
                            .unwrap_or(u64::MAX)
                    } else {
                        0
                    },
                },
            )
            .await?;
        for message in &page.messages {
            after = after.max(message.sequence);
            let payload = stored_body(message);
            if message.subject == report_subject {
                let report: RunReport = serde_json::from_slice(&payload).map_err(|e| {
                    ApiError::new(ApiErrorKind::Internal, format!("unreadable report: {e}"))
                })?;
                print_run_report(&report, c.json);
                return Ok(output::verdict_exit_code(report.verdict));
            }
            if c.json {
                print_json_line(&payload);
            } else {
                match serde_json::from_slice::<LogLine>(&payload) {
                    Ok(line) => outln!("  {:<5} {}", line.level.as_str(), printable(&line.message)),
                    Err(_) => outln!("  (unreadable log line)"),
                }
            }
        }
        if !page.messages.is_empty() {
            continue;
        }
        if !wait {
            return Ok(EXIT_OK);
        }
        // Quiet for a while: if the run is finished but its report never came (its host
        // could not store it), end with the record's verdict.
        let record: RunRecord = c
            .call::<endpoint::Run>(&RunIdRequest {
                run: run.to_owned(),
            })
            .await?;
        if record.state == RunState::Finished {
            let seen = *finished_seen.get_or_insert_with(Instant::now);
            if seen.elapsed() >= FOLLOW_IDLE {
                let verdict = record.verdict.unwrap_or(RunVerdict::Error);
                if !c.json {
                    outln!(
                        "report: {verdict} (no stored report; from the run record)\nsummary: {}",
                        printable(record.summary.as_deref().unwrap_or("-"))
                    );
                } else {
                    print_json(&json!({ "type": "record", "record": record }));
                }
                return Ok(output::verdict_exit_code(verdict));
            }
        }
    }
}

fn print_run_report(report: &RunReport, json: bool) {
    if json {
        print_json(&json!({ "type": "report", "report": report }));
        return;
    }
    outln!("report: {}", report.verdict);
    output::print_steps(&report.steps, printable);
    outln!("summary: {}", printable(&report.summary));
    if let Some(device) = &report.device {
        outln!(
            "device: {} {} on {}",
            device.id,
            device.vid_pid(),
            report.host
        );
    }
    if report.log_lines_dropped > 0 {
        outln!(
            "({} log lines could not be stored)",
            report.log_lines_dropped
        );
    }
    outln!("{}", output::metering_line(&report.metering));
}
