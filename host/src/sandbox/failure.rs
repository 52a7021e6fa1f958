//! What stopped a call: the failure of a call, told as an [`InvokeErrorKind`] and a message a
//! person can act on, before what the call used is attached to make it an [`InvokeError`].
//!
//! A call that ran and failed leaves three kinds of evidence: the error wasmtime returned (a
//! [`Trap`], a WASI exit, values that break the component ABI) or the host's own timer firing
//! ([`Stage`]), what the store saw while the guest ran (the epoch deadline passed, the memory
//! cap refused a growth) and what the guest printed on stderr (a Rust panic, a Python or
//! JavaScript exception) ([`Evidence`]).
//! [`Failure::classify`] weighs them in one fixed order, the one that names the cause best.
//! A call refused before it ran (the wrong world, an input over the payload limit, a component
//! being unloaded) has a constructor of its own here too, so every message a failed call can
//! carry is written in this one file. The messages are pinned by the sandbox tests.

use std::time::Duration;

use wasmtime::Trap;

use super::{InvokeError, InvokeErrorKind, Metering, World};
use crate::imports::log::{GuestException, GuestPanic, LogSummary};

/// Where a call failed: instantiating the component, calling its export, or (a host call
/// included) past the host's own timer around both.
pub(super) enum Stage {
    /// Instantiation returned this error (a start function trapped, the pool is exhausted...).
    Instantiate(wasmtime::Error),
    /// The export returned this error (a trap, an exit, an ABI violation...).
    Call(wasmtime::Error),
    /// The host's timer around the whole call fired: the guest was waiting in a host call.
    HostDeadline,
}

/// What the store and the log saw by the time a call stopped, besides the error itself.
pub(super) struct Evidence {
    /// The epoch callback found the call's deadline passed and interrupted it.
    pub(super) timed_out: bool,
    /// The memory meter refused a growth because of the component's memory cap.
    pub(super) memory_cap_hit: bool,
    /// The panic a Rust guest printed on stderr, if it printed one.
    pub(super) panic: Option<GuestPanic>,
    /// The uncaught exception a Python or JavaScript guest printed on stderr, if any.
    pub(super) exception: Option<GuestException>,
}

/// The limits a call ran under, as far as its failure message names them.
pub(super) struct Bounds {
    /// The call's deadline (the component's timeout, or a shorter one it was called with).
    pub(super) deadline: Duration,
    /// The component's memory cap, in bytes.
    pub(super) memory: u64,
    /// The component's fuel limit (`None`: unlimited, `u64::MAX` is what it is given).
    pub(super) fuel: Option<u64>,
    /// The engine's wasm stack size, in bytes.
    pub(super) max_wasm_stack: usize,
    /// Bytes the host may copy out of the guest in one host call or return value.
    pub(super) hostcall_budget: usize,
    /// The component's payload limit, in bytes.
    pub(super) max_payload: u64,
}

/// Why a call did not produce a result: its kind and the reason, for a person.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) kind: InvokeErrorKind,
    pub(super) message: String,
}

/// Whether wasmtime's error says the call spent its hostcall copy budget (wasmtime's own
/// type for this is private; its message is pinned by the tests).
fn hostcall_budget_spent(detail: &str) -> bool {
    detail.contains("fuel allocated for hostcalls has been exhausted")
}

impl Failure {
    fn new(kind: InvokeErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    /// Tells what stopped a call that ran, from where it failed, what was seen meanwhile and
    /// the limits it ran under.
    ///
    /// The order matters: a deadline names the cause better than the trap that interrupted
    /// the guest; a guest's panic line better than an allocation its cap refused earlier
    /// (Rust's out-of-memory abort prints no panic line, so a real OOM stays `memory-limit`);
    /// and whatever is left is the guest's doing, since the host's own imports never fail a
    /// call.
    pub(super) fn classify(stage: Stage, evidence: &Evidence, bounds: &Bounds) -> Self {
        let deadline = humantime::format_duration(bounds.deadline);
        let (error, instantiating) = match stage {
            Stage::HostDeadline => {
                return Self::new(
                    InvokeErrorKind::Timeout,
                    format!(
                        "the call ran past its deadline of {deadline} while waiting in a host call"
                    ),
                );
            }
            Stage::Instantiate(e) => (e, true),
            Stage::Call(e) => (e, false),
        };
        let timeout = || {
            Self::new(
                InvokeErrorKind::Timeout,
                format!("the call ran past its deadline of {deadline}"),
            )
        };
        if evidence.timed_out {
            return timeout();
        }
        let trap = error.downcast_ref::<Trap>();
        match trap {
            Some(Trap::Interrupt) => return timeout(),
            Some(Trap::StackOverflow) => {
                return Self::new(
                    InvokeErrorKind::StackOverflow,
                    format!(
                        "the guest overflowed its wasm stack of {} bytes",
                        bounds.max_wasm_stack
                    ),
                );
            }
            Some(Trap::OutOfFuel) => {
                return Self::new(
                    InvokeErrorKind::OutOfFuel,
                    format!(
                        "the call used up its fuel of {}",
                        bounds.fuel.unwrap_or(u64::MAX)
                    ),
                );
            }
            _ => {}
        }
        let detail = match trap {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        // After the host's own evidence (the memory cap, the hostcall budget, an exit), so a
        // guest printing something that looks like a traceback cannot hide those; before the
        // panic, since componentize-py's runtime panics *because* of the exception.
        if let Some(exception) = &evidence.exception
            && !evidence.memory_cap_hit
            && !hostcall_budget_spent(&detail)
            && error.downcast_ref::<wasmtime_wasi::I32Exit>().is_none()
        {
            return Self::new(
                InvokeErrorKind::Panic,
                format!(
                    "the guest raised an uncaught {} exception: {}",
                    exception.language,
                    crate::text::one_line(&exception.message)
                ),
            );
        }
        if let Some(panic) = &evidence.panic {
            return Self::new(
                InvokeErrorKind::Panic,
                format!(
                    "the guest panicked at {}: {}",
                    panic.location, panic.message
                ),
            );
        }
        if evidence.memory_cap_hit {
            return Self::new(
                InvokeErrorKind::MemoryLimit,
                format!(
                    "the guest hit its memory limit of {} bytes ({detail})",
                    bounds.memory
                ),
            );
        }
        // wasmtime's own type for this is private; its message is pinned by the tests.
        if hostcall_budget_spent(&detail) {
            return Self::new(
                InvokeErrorKind::OutputTooLarge,
                format!(
                    "the guest passed or returned more than {} bytes in one go, over its \
                     payload limit of {} bytes",
                    bounds.hostcall_budget, bounds.max_payload
                ),
            );
        }
        if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Self::new(
                InvokeErrorKind::Trap,
                format!("the guest called exit({}) instead of returning", exit.0),
            );
        }
        if instantiating {
            return Self::new(
                InvokeErrorKind::Instantiate,
                format!("instantiation failed: {error:#}"),
            );
        }
        // A trap, or values that break the component ABI (bad UTF-8, out-of-bounds lists).
        match trap {
            Some(_) => Self::new(
                InvokeErrorKind::Trap,
                format!("the guest trapped: {detail}"),
            ),
            None => Self::new(
                InvokeErrorKind::Trap,
                format!("the guest broke the component ABI or a WASI rule: {detail}"),
            ),
        }
    }

    /// The guest returned a value of `size` bytes, over the payload limit.
    pub(super) fn output_too_large(size: usize, max_payload: u64) -> Self {
        Self::new(
            InvokeErrorKind::OutputTooLarge,
            format!(
                "the guest returned {size} bytes, over the payload limit of {max_payload} bytes"
            ),
        )
    }

    /// The input (event, arguments, proposal) is `size` bytes, over the payload limit: the
    /// call is refused before anything runs.
    pub(super) fn input_too_large(size: usize, max_payload: u64) -> Self {
        Self::new(
            InvokeErrorKind::InputTooLarge,
            format!("the input is {size} bytes, over the payload limit of {max_payload} bytes"),
        )
    }

    /// Component `name`, a `world`, was called as a `wanted` (a listener run as a script...).
    pub(super) fn wrong_world(name: &str, world: World, wanted: World) -> Self {
        Self::new(
            InvokeErrorKind::Host,
            format!("`{name}` is a {world}, not a {wanted}"),
        )
    }

    /// The component's slots were closed while the call waited for one.
    pub(super) fn unloading() -> Self {
        Self::new(
            InvokeErrorKind::Host,
            "the component is being unloaded".into(),
        )
    }

    /// The host-wide memory budget was closed while the call waited for its share.
    pub(super) fn shutting_down() -> Self {
        Self::new(InvokeErrorKind::Host, "the sandbox is shutting down".into())
    }

    /// The error of a call refused before it started: nothing used, nothing logged.
    pub(super) fn before_start(self) -> InvokeError {
        self.after(Metering::default(), LogSummary::default())
    }

    /// The error of a call that started, with what it used and logged until it stopped.
    pub(super) fn after(self, metering: Metering, log: LogSummary) -> InvokeError {
        InvokeError {
            kind: self.kind,
            message: self.message,
            metering,
            log,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imports::log::GuestLanguage;

    fn bounds() -> Bounds {
        Bounds {
            deadline: Duration::from_millis(1500),
            memory: 16 << 20,
            fuel: Some(1_000),
            max_wasm_stack: 512 << 10,
            hostcall_budget: 1 << 20,
            max_payload: 960 << 10,
        }
    }

    fn nothing_seen() -> Evidence {
        Evidence {
            timed_out: false,
            memory_cap_hit: false,
            panic: None,
            exception: None,
        }
    }

    fn panicked() -> Evidence {
        Evidence {
            panic: Some(GuestPanic {
                location: "src/lib.rs:7:5".into(),
                message: "boom".into(),
            }),
            ..nothing_seen()
        }
    }

    #[test]
    fn an_uncaught_exception_is_told_in_the_guests_words_before_the_runtimes_panic() {
        let evidence = Evidence {
            exception: Some(GuestException {
                language: GuestLanguage::Python,
                message: "KeyError: 'actor'\u{1b}[31m".into(),
            }),
            ..panicked()
        };
        // In the language's own words, quotes and all; only control characters (which could
        // colour a terminal) are blanked.
        assert_eq!(
            classify(trapped(Trap::UnreachableCodeReached), evidence),
            failure(
                InvokeErrorKind::Panic,
                "the guest raised an uncaught Python exception: KeyError: 'actor' [31m"
            )
        );
    }

    #[test]
    fn text_that_looks_like_an_exception_never_hides_the_memory_cap() {
        let evidence = Evidence {
            memory_cap_hit: true,
            exception: Some(GuestException {
                language: GuestLanguage::JavaScript,
                message: "all is fine".into(),
            }),
            ..nothing_seen()
        };
        let failure = classify(trapped(Trap::UnreachableCodeReached), evidence);
        assert_eq!(failure.kind, InvokeErrorKind::MemoryLimit, "{failure:?}");
    }

    fn trapped(trap: Trap) -> Stage {
        Stage::Call(trap.into())
    }

    fn classify(stage: Stage, evidence: Evidence) -> Failure {
        Failure::classify(stage, &evidence, &bounds())
    }

    fn failure(kind: InvokeErrorKind, message: &str) -> Failure {
        Failure::new(kind, message.into())
    }

    #[test]
    fn the_hosts_timer_firing_is_a_timeout_in_a_host_call() {
        assert_eq!(
            classify(Stage::HostDeadline, panicked()),
            failure(
                InvokeErrorKind::Timeout,
                "the call ran past its deadline of 1s 500ms while waiting in a host call"
            )
        );
    }

    #[test]
    fn a_deadline_seen_by_the_epoch_callback_is_a_timeout_whatever_the_trap_says() {
        let evidence = Evidence {
            timed_out: true,
            ..panicked()
        };
        assert_eq!(
            classify(trapped(Trap::UnreachableCodeReached), evidence),
            failure(
                InvokeErrorKind::Timeout,
                "the call ran past its deadline of 1s 500ms"
            )
        );
    }

    #[test]
    fn an_interrupt_trap_is_a_timeout() {
        assert_eq!(
            classify(trapped(Trap::Interrupt), nothing_seen()).kind,
            InvokeErrorKind::Timeout
        );
    }

    #[test]
    fn a_stack_overflow_names_the_engines_stack_even_when_the_guest_panicked() {
        assert_eq!(
            classify(trapped(Trap::StackOverflow), panicked()),
            failure(
                InvokeErrorKind::StackOverflow,
                "the guest overflowed its wasm stack of 524288 bytes"
            )
        );
    }

    #[test]
    fn running_out_of_fuel_names_the_fuel_limit() {
        assert_eq!(
            classify(trapped(Trap::OutOfFuel), nothing_seen()),
            failure(
                InvokeErrorKind::OutOfFuel,
                "the call used up its fuel of 1000"
            )
        );
    }

    #[test]
    fn a_panic_line_names_the_cause_better_than_a_refused_allocation() {
        let evidence = Evidence {
            memory_cap_hit: true,
            ..panicked()
        };
        assert_eq!(
            classify(trapped(Trap::UnreachableCodeReached), evidence),
            failure(
                InvokeErrorKind::Panic,
                "the guest panicked at src/lib.rs:7:5: boom"
            )
        );
    }

    #[test]
    fn a_trap_after_the_memory_cap_refused_a_growth_is_a_memory_limit() {
        let evidence = Evidence {
            memory_cap_hit: true,
            ..nothing_seen()
        };
        assert_eq!(
            classify(trapped(Trap::UnreachableCodeReached), evidence),
            failure(
                InvokeErrorKind::MemoryLimit,
                &format!(
                    "the guest hit its memory limit of 16777216 bytes ({})",
                    Trap::UnreachableCodeReached
                )
            )
        );
    }

    #[test]
    fn exhausting_the_hostcall_fuel_is_an_output_too_large() {
        let error = wasmtime::Error::msg("fuel allocated for hostcalls has been exhausted");
        assert_eq!(
            classify(Stage::Call(error), nothing_seen()),
            failure(
                InvokeErrorKind::OutputTooLarge,
                "the guest passed or returned more than 1048576 bytes in one go, over its \
                 payload limit of 983040 bytes"
            )
        );
    }

    #[test]
    fn calling_exit_is_a_trap_that_names_the_code() {
        let error = wasmtime::Error::from(wasmtime_wasi::I32Exit(3));
        assert_eq!(
            classify(Stage::Call(error), nothing_seen()),
            failure(
                InvokeErrorKind::Trap,
                "the guest called exit(3) instead of returning"
            )
        );
    }

    #[test]
    fn any_other_error_while_instantiating_is_an_instantiate_failure() {
        let error = wasmtime::Error::msg("no free slot");
        assert_eq!(
            classify(Stage::Instantiate(error), nothing_seen()),
            failure(
                InvokeErrorKind::Instantiate,
                "instantiation failed: no free slot"
            )
        );
    }

    #[test]
    fn any_other_trap_of_the_export_is_the_guests_trap() {
        assert_eq!(
            classify(trapped(Trap::UnreachableCodeReached), nothing_seen()),
            failure(
                InvokeErrorKind::Trap,
                &format!("the guest trapped: {}", Trap::UnreachableCodeReached)
            )
        );
    }

    #[test]
    fn any_other_error_of_the_export_is_a_broken_abi() {
        let error = wasmtime::Error::msg("invalid utf-8");
        assert_eq!(
            classify(Stage::Call(error), nothing_seen()),
            failure(
                InvokeErrorKind::Trap,
                "the guest broke the component ABI or a WASI rule: invalid utf-8"
            )
        );
    }

    #[test]
    fn an_output_over_the_payload_limit_says_both_sizes() {
        assert_eq!(
            Failure::output_too_large(2048, 1024),
            failure(
                InvokeErrorKind::OutputTooLarge,
                "the guest returned 2048 bytes, over the payload limit of 1024 bytes"
            )
        );
    }

    #[test]
    fn a_call_refused_before_it_started_used_and_logged_nothing() {
        let error = Failure::input_too_large(2048, 1024).before_start();
        assert_eq!(error.kind, InvokeErrorKind::InputTooLarge);
        assert_eq!(
            error.message,
            "the input is 2048 bytes, over the payload limit of 1024 bytes"
        );
        assert_eq!(error.metering, Metering::default());
        assert_eq!(error.log, LogSummary::default());
    }
}
