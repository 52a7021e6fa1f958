//! Control API bodies: the first byte picks an endpoint, the rest is the body, read and
//! validated the way the daemon reads every request. Never a panic; an accepted publish is a
//! valid event of a type that is not a host event's.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbus::api::{Request, endpoint};

fuzz_target!(|data: &[u8]| {
    let Some((pick, body)) = data.split_first() else {
        return;
    };
    let endpoint = &endpoint::ALL[usize::from(*pick) % endpoint::ALL.len()];
    if let Ok(Request::Publish(event)) = Request::parse(endpoint.name, body) {
        assert!(event.validate().is_ok());
        assert!(!sandbus::subject::is_host_event_type(&event.ty));
    }
});
