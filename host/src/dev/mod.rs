//! The local dev loop: run a script or replay events into a listener with no bus at all.
//!
//! A [`DevHost`] is a sandbox with in-memory capabilities: a [`MemoryKv`] that lives for the
//! session (so replayed events see the state earlier ones left) and a
//! [`RecordingPublisher`] that keeps what guests published so it can be shown. The CLI's
//! `dev run` and `dev replay` are thin printers over this.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Input, InvalidInput};
use crate::event::{CanonicalEvent, EventError};
use crate::imports::bus::{OutboundMessage, RecordingPublisher};
use crate::imports::kv::MemoryKv;
use crate::imports::log::LogSink;
use crate::sandbox::{
    Capabilities, ComponentSpec, ConfigError, HandlerOutcome, Invocation, InvokeError, LoadError,
    PreparedComponent, Sandbox, SandboxConfig,
};

/// One line of an events file that is not a valid canonical event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct EventLineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub error: EventError,
}

/// Parses a JSON Lines file of CloudEvents. Blank lines are skipped. Every bad line is
/// reported (not just the first), and nothing is returned unless all lines are valid.
pub fn read_events(text: &str) -> Result<Vec<(usize, CanonicalEvent)>, Vec<EventLineError>> {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match CanonicalEvent::from_json(line.as_bytes()) {
            Ok(event) => events.push((i + 1, event)),
            Err(error) => errors.push(EventLineError { line: i + 1, error }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

/// Parses `NAME=VALUE` (for `--arg`). The name must be non-empty.
pub fn parse_arg(text: &str) -> Result<(String, String), InvalidInput> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(InvalidInput::new(
            Input::ScriptArg,
            format!("`{text}` is not NAME=VALUE"),
        )),
    }
}

/// Why the dev host could not load a component.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component was refused.
    #[error("{path}: {source}")]
    Load {
        /// The path.
        path: String,
        /// Why.
        source: LoadError,
    },
    /// The sandbox could not start.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A sandbox with in-memory capabilities, for one dev session.
pub struct DevHost {
    sandbox: Sandbox,
    /// The session's key-value store, shared by every invocation.
    pub kv: Arc<MemoryKv>,
    /// What guests published during the session.
    pub publisher: Arc<RecordingPublisher>,
}

impl DevHost {
    /// A dev host over a sandbox with `config`.
    pub fn new(config: SandboxConfig) -> Result<Self, DevError> {
        Ok(Self {
            sandbox: Sandbox::new(config)?,
            kv: Arc::new(MemoryKv::default()),
            publisher: Arc::new(RecordingPublisher::default()),
        })
    }

    /// Reads and prepares a component file.
    pub fn load(&self, path: &Path, spec: ComponentSpec) -> Result<PreparedComponent, DevError> {
        let display = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| DevError::Read {
            path: display.clone(),
            source,
        })?;
        self.sandbox
            .prepare(spec, &bytes)
            .map_err(|source| DevError::Load {
                path: display,
                source,
            })
    }

    /// Capabilities for one invocation, with its log going to `log`.
    pub fn capabilities(&self, log: Arc<dyn LogSink>) -> Capabilities {
        Capabilities {
            log,
            publisher: self.publisher.clone(),
            kv: self.kv.clone(),
            usb: None,
        }
    }
}

/// One delivery of one event during a replay.
#[derive(Debug)]
pub struct Delivery {
    /// Line of the event in the file.
    pub line: usize,
    /// The event id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// 1 for the first delivery, 2 for the first redelivery...
    pub attempt: u32,
    /// What the listener returned, or why the call failed.
    pub result: Result<Invocation<HandlerOutcome>, InvokeError>,
    /// What the listener published during this delivery.
    pub published: Vec<OutboundMessage>,
}

impl Delivery {
    /// Whether the event is done with (acknowledged): the listener returned ok.
    pub fn acked(&self) -> bool {
        matches!(&self.result, Ok(inv) if inv.output == HandlerOutcome::Ok)
    }
}

/// Feeds `events` to `listener` in order. An event that is not acknowledged is delivered
/// again right away, up to `max_deliver` deliveries in all, like the daemon's redelivery but
/// without waiting out delays. `on_delivery` sees each delivery as it completes.
pub async fn replay(
    host: &DevHost,
    listener: &PreparedComponent,
    events: Vec<(usize, CanonicalEvent)>,
    max_deliver: u32,
    log: Arc<dyn LogSink>,
    mut on_delivery: impl FnMut(&Delivery),
) -> Vec<Delivery> {
    let caps = host.capabilities(log);
    let mut deliveries = Vec::new();
    for (line, event) in events {
        for attempt in 1..=max_deliver.max(1) {
            let result = listener.handle(event.clone(), &caps).await;
            let delivery = Delivery {
                line,
                event_id: event.id.clone(),
                event_type: event.ty.clone(),
                attempt,
                result,
                published: host.publisher.take(),
            };
            on_delivery(&delivery);
            let done = delivery.acked();
            deliveries.push(delivery);
            if done {
                break;
            }
        }
    }
    deliveries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b\"}\n\nnot json\n{\"specversion\":\"1.0\",\"source\":\"/s\",\"type\":\"a.b\"}\n";
        let errors = read_events(text).unwrap_err();
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 4]);
        assert!(errors[1].to_string().contains("`id`"));
        let ok = read_events(
            "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"a.b\"}\n",
        )
        .unwrap();
        assert_eq!(ok[0].0, 1);
    }

    #[test]
    fn args_need_a_name() {
        assert_eq!(parse_arg("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_arg("=x").is_err());
        assert!(parse_arg("novalue").is_err());
    }
}
