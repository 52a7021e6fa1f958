//! Sandbox tests: components run through the library, with in-memory capabilities and no
//! bus. They prove containment (every hostile fixture is stopped with the right error kind
//! and the same sandbox serves the next call normally), the WASI lock-down, validation of
//! bad uploads, the compile cache's integrity checks, the compile budget (compiles in worker
//! processes, run from the `sandbus` binary cargo builds for these tests), and the billing
//! listener's exactness.
//!
//! Needs the guests built by `scripts/build-guests.sh` (inline-WAT fixtures need nothing).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test, with its message"
)]

#[path = "../../../tests/support/mod.rs"]
mod support;

mod billing;
mod budget;
mod compile_budget;
mod hooks;
mod hostile;
mod loading;
mod lockdown;
mod messaging;
mod spans;
mod trust;
mod usb;

use std::sync::{Arc, OnceLock};

use sandbus::event::CanonicalEvent;
use sandbus::imports::bus::RecordingPublisher;
use sandbus::imports::kv::MemoryKv;
use sandbus::imports::log::MemoryLog;
use sandbus::sandbox::{
    Capabilities, ComponentSpec, Limits, PreparedComponent, Sandbox, SandboxConfig, World,
};
use sandbus::subject::{PublishGrants, SubjectPattern};

/// One sandbox for the whole binary, as in the daemon: hostile calls share it with
/// well-behaved ones.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            pool_instances: 32,
            ..SandboxConfig::default()
        })
        .unwrap()
    })
}

/// In-memory capabilities, kept so tests can look at what the guest did.
struct Harness {
    kv: Arc<MemoryKv>,
    publisher: Arc<RecordingPublisher>,
    log: Arc<MemoryLog>,
    caps: Capabilities,
}

impl Harness {
    fn new() -> Self {
        let kv = Arc::new(MemoryKv::default());
        let publisher = Arc::new(RecordingPublisher::default());
        let log = Arc::new(MemoryLog::default());
        let caps = Capabilities {
            log: log.clone(),
            publisher: publisher.clone(),
            kv: kv.clone(),
            usb: None,
        };
        Self {
            kv,
            publisher,
            log,
            caps,
        }
    }
}

fn spec(name: &str, world: World, grants: &[&str], limits: &[&str]) -> ComponentSpec {
    let mut l = Limits::for_world(world);
    for setting in limits {
        l.apply(setting).unwrap();
    }
    ComponentSpec {
        name: name.into(),
        expect: Some(world),
        grants: PublishGrants::new(grants.iter().map(|g| SubjectPattern::parse(g).unwrap())),
        kv_read: Default::default(),
        limits: l,
        config: Default::default(),
    }
}

fn listener(name: &str, bytes: &[u8], limits: &[&str]) -> PreparedComponent {
    sandbox()
        .prepare(spec(name, World::Listener, &[], limits), bytes)
        .unwrap()
}

fn event(ty: &str, id: &str, data: &str) -> CanonicalEvent {
    CanonicalEvent {
        id: id.into(),
        source: "/tests".into(),
        ty: ty.into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".into()),
        data: data.as_bytes().to_vec(),
        depth: 0,
    }
}
