//! CloudEvents JSON as the events stream, `dev replay` and the API read it: never a panic,
//! and an event that parses comes back the same through its own JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbus::event::CanonicalEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = CanonicalEvent::from_json(data) {
        let again = CanonicalEvent::from_json(&event.to_json())
            .unwrap_or_else(|e| panic!("an accepted event does not read back: {e}"));
        assert_eq!(again, event, "an accepted event changed through its JSON");
    }
});
