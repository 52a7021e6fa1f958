//! What the commands print and how they end, in one place: the exit codes, the mapping of an
//! API error or a run's verdict to its exit code, JSON or text, and the lines several
//! commands print alike (a report's steps, the metering line).
//!
//! Scripts and the end-to-end tests read this output and these codes: a change here is a
//! change of the CLI's interface.
//!
//! Exit codes: 0 success (a script passed); 1 a script reported `fail`, a replayed event was
//! not acknowledged, a hook denied, or `inspect` found a problem; 2 bad input or usage
//! (nothing ran); 3 a script reported `error`; 4 the guest did not finish (timeout, trap,
//! memory limit, cancelled...); 5 no daemon answered or the bus failed; 6 NATS refused the
//! request.

use std::io::Write as _;

use sandbus::api::{ApiError, ApiErrorKind, CastAccepted};
use sandbus::bus::RunVerdict;
use sandbus::sandbox::{Metering, Step, StepOutcome, Verdict};
use serde::Serialize;

/// `println!` that never panics: once stdout is closed (`sandbus inspect x | head`), output
/// is dropped and the command still finishes with its exit code.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)));
    }};
}

pub(crate) use outln;

/// Success; a script passed.
pub const EXIT_OK: u8 = 0;
/// A script reported `fail`, a replayed event was not acknowledged, or the daemon said no
/// (not found, conflict, denied by a hook).
pub const EXIT_FAIL: u8 = 1;
/// Bad input or usage; nothing ran.
pub const EXIT_USAGE: u8 = 2;
/// A script reported `error`.
pub const EXIT_SCRIPT_ERROR: u8 = 3;
/// The guest did not finish: timeout, trap, panic, memory limit, cancelled...
pub const EXIT_DID_NOT_FINISH: u8 = 4;
/// No daemon answered, or the bus failed.
pub const EXIT_UNAVAILABLE: u8 = 5;
/// NATS refused the request: the user's permissions do not cover it.
pub const EXIT_PERMISSION_DENIED: u8 = 6;

/// The exit code of a command that ended with this API error.
pub fn error_exit_code(kind: ApiErrorKind) -> u8 {
    match kind {
        ApiErrorKind::BadRequest => EXIT_USAGE,
        ApiErrorKind::Unavailable => EXIT_UNAVAILABLE,
        ApiErrorKind::PermissionDenied => EXIT_PERMISSION_DENIED,
        ApiErrorKind::NotFound | ApiErrorKind::Conflict | ApiErrorKind::Internal => EXIT_FAIL,
    }
}

/// Prints a failure (`error: ...` on stderr, or `{"error": ...}` on stdout with `--json`)
/// and gives its exit code.
pub fn fail(error: &ApiError, json: bool) -> u8 {
    if json {
        outln!("{}", serde_json::json!({ "error": error }));
    } else {
        eprintln!("error: {}", error.message);
    }
    error_exit_code(error.kind)
}

/// The exit code of a finished run: 0 pass, 1 fail, 3 error, 4 timeout or cancelled.
pub fn verdict_exit_code(verdict: RunVerdict) -> u8 {
    match verdict {
        RunVerdict::Pass => EXIT_OK,
        RunVerdict::Fail => EXIT_FAIL,
        RunVerdict::Error => EXIT_SCRIPT_ERROR,
        RunVerdict::Timeout | RunVerdict::Cancelled => EXIT_DID_NOT_FINISH,
    }
}

/// The exit code of a script that finished with this verdict (run locally, so never timed
/// out or cancelled): the same as a run's.
pub fn script_exit_code(verdict: Verdict) -> u8 {
    verdict_exit_code(verdict.into())
}

/// The line that says what a call cost: `metering: 1.2 ms wall, 64 KiB peak memory, 10 fuel`
/// (the fuel only when it was metered).
pub fn metering_line(metering: &Metering) -> String {
    let throttle = &metering.throttle;
    let throttled = if throttle.is_quiet() {
        String::new()
    } else {
        format!(
            "; the publish-rate cap held back {} publishes ({:.1} ms of waiting) and refused {}",
            throttle.waits,
            throttle.waited_us as f64 / 1000.0,
            throttle.refused
        )
    };
    format!(
        "metering: {:.1} ms wall, {} KiB peak memory{}{throttled}",
        metering.wall_us as f64 / 1000.0,
        metering.peak_memory / 1024,
        metering
            .fuel
            .map(|f| format!(", {f} fuel"))
            .unwrap_or_default()
    )
}

/// Prints a report's steps, one line each: `[pass]`, `[FAIL]` or `[skip]`, the name, the
/// duration and the detail. `text` shows the script's own text (its names and details).
pub fn print_steps(steps: &[Step], text: impl Fn(&str) -> String) {
    for step in steps {
        let mark = match step.outcome {
            StepOutcome::Passed => "pass",
            StepOutcome::Failed => "FAIL",
            StepOutcome::Skipped => "skip",
        };
        let detail = step
            .detail
            .as_deref()
            .map(|d| format!("  {}", text(d)))
            .unwrap_or_default();
        outln!(
            "  [{mark}] {:<28} {:>6} ms{detail}",
            text(&step.name),
            step.duration_ms
        );
    }
}

/// `a, b, c`, or `none` for an empty list (what a "no such thing; these exist" error lists).
pub fn joined_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Prints a value as one line of JSON.
pub fn print_json(value: &impl Serialize) {
    outln!("{}", serde_json::to_string(value).unwrap_or_default());
}

/// Prints `value` as one line of JSON with `--json`, else as `text` shows it.
pub fn print_json_or<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T)) {
    if json {
        print_json(value);
    } else {
        text(value);
    }
}

/// Prints a stored JSON body as it is, on a line of its own, at once (a follower's reader
/// sees each line as it comes).
pub fn print_json_line(body: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(body);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Prints that a cast was accepted, and where its result will come.
pub fn print_cast(accepted: &CastAccepted, json: bool) {
    print_json_or(json, accepted, |accepted| {
        outln!(
            "accepted; the result comes as a sandbus.request.finished event with subject {}",
            accepted.request_id
        );
    });
}

/// Escapes control characters: event and guest text is untrusted, and must not move the
/// cursor, recolour the terminal or forge lines of its own.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_error_kind_has_its_exit_code() {
        assert_eq!(error_exit_code(ApiErrorKind::BadRequest), 2);
        assert_eq!(error_exit_code(ApiErrorKind::NotFound), 1);
        assert_eq!(error_exit_code(ApiErrorKind::Conflict), 1);
        assert_eq!(error_exit_code(ApiErrorKind::Internal), 1);
        assert_eq!(error_exit_code(ApiErrorKind::Unavailable), 5);
        assert_eq!(error_exit_code(ApiErrorKind::PermissionDenied), 6);
    }

    #[test]
    fn a_failure_ends_with_the_exit_code_of_its_kind() {
        let refused = ApiError::new(ApiErrorKind::PermissionDenied, "not on sandbus.api.>");
        assert_eq!(fail(&refused, false), EXIT_PERMISSION_DENIED);
        assert_eq!(
            fail(&ApiError::bad_request("no such flag"), false),
            EXIT_USAGE
        );
    }

    #[test]
    fn each_run_verdict_has_its_exit_code() {
        assert_eq!(verdict_exit_code(RunVerdict::Pass), 0);
        assert_eq!(verdict_exit_code(RunVerdict::Fail), 1);
        assert_eq!(verdict_exit_code(RunVerdict::Error), 3);
        assert_eq!(verdict_exit_code(RunVerdict::Timeout), 4);
        assert_eq!(verdict_exit_code(RunVerdict::Cancelled), 4);
    }

    #[test]
    fn a_local_scripts_verdict_ends_like_a_runs() {
        assert_eq!(script_exit_code(Verdict::Pass), EXIT_OK);
        assert_eq!(script_exit_code(Verdict::Fail), EXIT_FAIL);
        assert_eq!(script_exit_code(Verdict::Error), EXIT_SCRIPT_ERROR);
    }

    #[test]
    fn the_metering_line_shows_fuel_only_when_metered() {
        let mut metering = Metering {
            wall_us: 2_340,
            peak_memory: 65_536,
            fuel: None,
            published: 3,
            throttle: Default::default(),
        };
        assert_eq!(
            metering_line(&metering),
            "metering: 2.3 ms wall, 64 KiB peak memory"
        );
        metering.fuel = Some(42);
        assert_eq!(
            metering_line(&metering),
            "metering: 2.3 ms wall, 64 KiB peak memory, 42 fuel"
        );
        metering.throttle.waits = 2;
        metering.throttle.waited_us = 1_500;
        assert_eq!(
            metering_line(&metering),
            "metering: 2.3 ms wall, 64 KiB peak memory, 42 fuel; the publish-rate cap held back \
             2 publishes (1.5 ms of waiting) and refused 0"
        );
    }

    #[test]
    fn an_empty_list_reads_none() {
        assert_eq!(joined_or_none(&[]), "none");
        assert_eq!(joined_or_none(&["a".into(), "b".into()]), "a, b");
    }

    #[test]
    fn untrusted_text_cannot_carry_control_characters() {
        assert_eq!(
            printable("ok\x1b[31m\nforged\t"),
            "ok\\u{1b}[31m\\nforged\\t"
        );
        assert_eq!(printable("héllo…"), "héllo…");
    }
}
