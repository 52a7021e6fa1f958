//! `sandbus:host/log`: the invocation's log stream.
//!
//! Every invocation gets one [`InvocationLog`]. The `log` import and the guest's captured
//! stdout/stderr (see [`crate::imports::wasi`]) both write into it, line by line. Each line
//! goes to the host's tracing (target `sandbus::guest`, with the component and invocation as
//! fields) and to the [`LogSink`] the caller handed the invocation, which is how `dev run`
//! prints a log live and how the daemon will stream it.
//!
//! The stream has a byte cap. Past it, lines are dropped and counted, never an error: a guest
//! that floods its log keeps running, and the stream ends with one line saying what was lost.

mod exception;
mod host;

use std::sync::{Arc, Mutex, PoisonError};
use wasmtime::component::{HasData, Linker};

use crate::bindings::log as wit;
use crate::invocation::InvocationId;
use exception::ExceptionScan;
pub use exception::{GuestException, GuestLanguage};

/// Severity of a log line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the guest handled.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The lowercase name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl From<wit::Level> for LogLevel {
    fn from(level: wit::Level) -> Self {
        match level {
            wit::Level::Trace => LogLevel::Trace,
            wit::Level::Debug => LogLevel::Debug,
            wit::Level::Info => LogLevel::Info,
            wit::Level::Warn => LogLevel::Warn,
            wit::Level::Error => LogLevel::Error,
        }
    }
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogOrigin {
    /// The `log` import.
    Log,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// The host itself, about this invocation (for example the truncation notice).
    Host,
}

/// One line of an invocation's log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// Where it came from.
    pub origin: LogOrigin,
    /// The text, without a trailing newline.
    pub message: String,
}

/// Receives an invocation's log lines as they are written.
///
/// Called on the thread running the guest, while the guest waits: keep it quick (print,
/// push to a channel). It must not block on the invocation itself.
pub trait LogSink: Send + Sync {
    /// One line.
    fn line(&self, line: &LogLine);
}

/// A sink that keeps nothing (tracing still sees every line).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardLog;

impl LogSink for DiscardLog {
    fn line(&self, _line: &LogLine) {}
}

/// A sink that keeps every line in memory, for tests and for `dev replay --json`.
#[derive(Debug, Default)]
pub struct MemoryLog {
    lines: Mutex<Vec<LogLine>>,
}

impl MemoryLog {
    /// Takes the lines written so far.
    pub fn take(&self) -> Vec<LogLine> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl LogSink for MemoryLog {
    fn line(&self, line: &LogLine) {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line.clone());
    }
}

/// How much an invocation logged, returned with its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogSummary {
    /// Lines delivered to the sink.
    pub lines: u64,
    /// Bytes delivered to the sink.
    pub bytes: u64,
    /// Lines dropped because the cap was reached.
    pub dropped_lines: u64,
    /// Bytes dropped because the cap was reached.
    pub dropped_bytes: u64,
}

/// A panic a Rust guest reported on stderr before it aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPanic {
    /// `file:line:column` where it panicked.
    pub location: String,
    /// The panic message.
    pub message: String,
}

/// The log stream of one invocation. Cheap to clone; all clones write to the same stream.
#[derive(Clone)]
pub struct InvocationLog {
    inner: Arc<Mutex<LogInner>>,
}

struct LogInner {
    sink: Arc<dyn LogSink>,
    cap: u64,
    component: Arc<str>,
    invocation: InvocationId,
    summary: LogSummary,
    stdout_partial: Vec<u8>,
    stderr_partial: Vec<u8>,
    panic: PanicScan,
    exception: ExceptionScan,
    finished: bool,
}

#[derive(Default)]
enum PanicScan {
    #[default]
    Idle,
    Collecting(GuestPanic),
    Done(GuestPanic),
}

impl InvocationLog {
    /// A new stream writing to `sink`, keeping at most `cap` bytes of messages.
    pub fn new(
        sink: Arc<dyn LogSink>,
        cap: u64,
        component: Arc<str>,
        invocation: InvocationId,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogInner {
                sink,
                cap,
                component,
                invocation,
                summary: LogSummary::default(),
                stdout_partial: Vec::new(),
                stderr_partial: Vec::new(),
                panic: PanicScan::Idle,
                exception: ExceptionScan::default(),
                finished: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes one line, subject to the cap.
    pub fn write(&self, level: LogLevel, origin: LogOrigin, message: String) {
        self.lock().write(level, origin, message);
    }

    /// Appends raw bytes from the guest's stdout or stderr; complete lines are written.
    pub fn write_output(&self, origin: LogOrigin, bytes: &[u8]) {
        let mut inner = self.lock();
        let level = if origin == LogOrigin::Stderr {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        let mut partial = std::mem::take(match origin {
            LogOrigin::Stderr => &mut inner.stderr_partial,
            _ => &mut inner.stdout_partial,
        });
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, ends_line) = match chunk.strip_suffix(b"\n") {
                Some(line) => (line, true),
                None => (chunk, false),
            };
            // Buffer only what could still fit under the cap; count the rest as dropped,
            // so a guest writing one endless line holds no more host memory than the cap.
            let room = inner
                .cap
                .saturating_sub(inner.summary.bytes)
                .saturating_sub(partial.len() as u64);
            let keep = body.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            partial.extend_from_slice(&body[..keep]);
            inner.summary.dropped_bytes += (body.len() - keep) as u64;
            if ends_line {
                let line = String::from_utf8_lossy(&partial).into_owned();
                partial.clear();
                inner.write(level, origin, line);
            }
        }
        *match origin {
            LogOrigin::Stderr => &mut inner.stderr_partial,
            _ => &mut inner.stdout_partial,
        } = partial;
    }

    /// Ends the stream: flushes partial output lines and, if anything was dropped, writes
    /// one host line saying how much. Returns the summary. Later writes are dropped.
    pub fn finish(&self) -> LogSummary {
        let mut inner = self.lock();
        if inner.finished {
            return inner.summary;
        }
        for origin in [LogOrigin::Stdout, LogOrigin::Stderr] {
            let partial = std::mem::take(match origin {
                LogOrigin::Stderr => &mut inner.stderr_partial,
                _ => &mut inner.stdout_partial,
            });
            if !partial.is_empty() {
                let level = if origin == LogOrigin::Stderr {
                    LogLevel::Warn
                } else {
                    LogLevel::Info
                };
                inner.write(
                    level,
                    origin,
                    String::from_utf8_lossy(&partial).into_owned(),
                );
            }
        }
        if inner.summary.dropped_bytes > 0 {
            let s = inner.summary;
            let notice = LogLine {
                level: LogLevel::Warn,
                origin: LogOrigin::Host,
                message: format!(
                    "log truncated: {} bytes in {} lines dropped over the cap of {} bytes",
                    s.dropped_bytes, s.dropped_lines, inner.cap
                ),
            };
            inner.emit(&notice);
        }
        inner.finished = true;
        inner.summary
    }

    /// The panic a Rust guest printed on stderr, if any.
    pub fn guest_panic(&self) -> Option<GuestPanic> {
        match &self.lock().panic {
            PanicScan::Collecting(p) | PanicScan::Done(p) => Some(p.clone()),
            PanicScan::Idle => None,
        }
    }

    /// The uncaught exception a Python or JavaScript guest printed on stderr, if any.
    pub fn guest_exception(&self) -> Option<GuestException> {
        self.lock().exception.found().cloned()
    }
}

impl LogInner {
    fn write(&mut self, level: LogLevel, origin: LogOrigin, message: String) {
        if origin == LogOrigin::Stderr {
            self.scan_for_panic(&message);
            self.exception.line(&message);
        }
        // A line costs its bytes and its newline, so empty lines can't flood past the cap.
        let len = message.len() as u64 + 1;
        if self.finished || self.summary.bytes + len > self.cap {
            self.summary.dropped_lines += 1;
            self.summary.dropped_bytes += len;
            return;
        }
        self.summary.lines += 1;
        self.summary.bytes += len;
        self.emit(&LogLine {
            level,
            origin,
            message,
        });
    }

    fn emit(&self, line: &LogLine) {
        let (component, invocation, message) = (&*self.component, self.invocation, &line.message);
        let origin = match line.origin {
            LogOrigin::Log => "log",
            LogOrigin::Stdout => "stdout",
            LogOrigin::Stderr => "stderr",
            LogOrigin::Host => "host",
        };
        match line.level {
            LogLevel::Trace => {
                tracing::trace!(target: "sandbus::guest", component, %invocation, origin, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "sandbus::guest", component, %invocation, origin, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "sandbus::guest", component, %invocation, origin, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "sandbus::guest", component, %invocation, origin, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "sandbus::guest", component, %invocation, origin, "{message}")
            }
        }
        self.sink.line(line);
    }

    /// Rust's panic hook prints `thread '…' panicked at FILE:L:C:` (newer versions add the
    /// thread id: `thread '…' (1) panicked at`), then the message lines, then a `note:` line.
    fn scan_for_panic(&mut self, line: &str) {
        match &mut self.panic {
            PanicScan::Idle => {
                let rest = line
                    .strip_prefix("thread '")
                    .and_then(|l| l.split_once(" panicked at "))
                    .map(|(_, rest)| rest);
                if let Some(rest) = rest {
                    self.panic = PanicScan::Collecting(GuestPanic {
                        location: rest.trim_end_matches(':').to_owned(),
                        message: String::new(),
                    });
                }
            }
            PanicScan::Collecting(p) => {
                if line.starts_with("note: ") || line.is_empty() {
                    self.panic = PanicScan::Done(p.clone());
                } else if p.message.len() < 4096 {
                    if !p.message.is_empty() {
                        p.message.push('\n');
                    }
                    p.message.push_str(line);
                }
            }
            PanicScan::Done(_) => {}
        }
    }
}

/// Per-invocation state of the `log` interface.
pub struct LogState {
    /// The invocation's stream.
    pub log: InvocationLog,
}

/// `HasData` marker: the `log` host functions see a [`LogState`].
pub struct Log;

impl HasData for Log {
    type Data<'a> = &'a mut LogState;
}

/// Adds `sandbus:host/log` to `linker`; `get` finds the invocation's [`LogState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Log>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(cap: u64) -> (Arc<MemoryLog>, InvocationLog) {
        let sink = Arc::new(MemoryLog::default());
        let log = InvocationLog::new(sink.clone(), cap, "c".into(), InvocationId::next());
        (sink, log)
    }

    #[test]
    fn output_is_split_into_lines_across_writes() {
        let (sink, log) = stream(1024);
        log.write_output(LogOrigin::Stdout, b"hel");
        log.write_output(LogOrigin::Stdout, b"lo\nwor");
        log.write_output(LogOrigin::Stdout, b"ld\ntail");
        log.finish();
        let lines: Vec<String> = sink.take().into_iter().map(|l| l.message).collect();
        assert_eq!(lines, ["hello", "world", "tail"]);
    }

    #[test]
    fn lines_past_the_cap_are_dropped_and_counted() {
        let (sink, log) = stream(10);
        for _ in 0..5 {
            log.write(LogLevel::Info, LogOrigin::Log, "1234".into());
        }
        let summary = log.finish();
        assert_eq!((summary.lines, summary.bytes), (2, 10));
        assert_eq!((summary.dropped_lines, summary.dropped_bytes), (3, 15));
        let lines = sink.take();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].origin, LogOrigin::Host);
        assert!(lines[2].message.contains("15 bytes in 3 lines dropped"));
    }

    #[test]
    fn an_endless_line_or_empty_lines_cannot_pass_the_cap() {
        let (sink, log) = stream(100);
        for _ in 0..1000 {
            log.write_output(LogOrigin::Stdout, &[b'x'; 1000]);
        }
        log.write_output(LogOrigin::Stdout, b"\n");
        for _ in 0..1000 {
            log.write_output(LogOrigin::Stderr, b"\n\n\n");
        }
        let summary = log.finish();
        assert!(summary.bytes <= 100, "{summary:?}");
        assert!(summary.dropped_bytes >= 1_000_000 - 100, "{summary:?}");
        let kept: usize = sink.take().iter().map(|l| l.message.len() + 1).sum();
        assert!(kept <= 100 + 200, "{kept}");
    }

    #[test]
    fn a_rust_panic_on_stderr_is_recognised() {
        let (_sink, log) = stream(4096);
        log.write_output(
            LogOrigin::Stderr,
            b"\nthread '<unnamed>' (1) panicked at src/lib.rs:9:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n",
        );
        let panic = log.guest_panic().unwrap();
        assert_eq!(panic.location, "src/lib.rs:9:5");
        assert_eq!(panic.message, "boom");
        let (_sink, older) = stream(4096);
        older.write_output(
            LogOrigin::Stderr,
            b"thread 'main' panicked at a.rs:1:2:\nold format\n",
        );
        assert_eq!(older.guest_panic().unwrap().message, "old format");
    }
}
