//! Manifests (as a daemon reads them from the bucket, possibly written by hand) and grant and
//! limit text (as the CLI and the API take them): never a panic, and whatever passes the
//! policy check reaches no reserved subject space and stays within the limits' bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbus::bus::ComponentManifest;
use sandbus::grant::{ComponentPolicy, Grant};
use sandbus::subject::ReservedSpace;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = serde_json::from_slice::<ComponentManifest>(data) {
        if let Ok(policy) = ComponentPolicy::check(
            &manifest.name,
            manifest.world,
            &manifest.grants,
            &manifest.kv_read,
            &manifest.limits,
        ) {
            for pattern in policy.publish.patterns() {
                assert_eq!(
                    ReservedSpace::reached_by(pattern.as_str()),
                    None,
                    "{pattern}"
                );
            }
            assert!(policy.limits.validate().is_ok());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(Grant::Publish(pattern)) = Grant::parse(text) {
            assert_eq!(
                ReservedSpace::reached_by(pattern.as_str()),
                None,
                "{pattern}"
            );
        }
        let mut limits = sandbus::sandbox::Limits::default();
        let before = limits.clone();
        match limits.apply(text) {
            Ok(()) => assert!(limits.validate().is_ok()),
            Err(_) => assert_eq!(limits, before, "a refused setting changed nothing"),
        }
    }
});
