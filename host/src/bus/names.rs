//! Every NATS name sandbus uses: streams, buckets, consumers and subjects.
//!
//! Built here and nowhere else, so that the layout of the bus can be read in one place and
//! two daemons (or a daemon and a CLI) can never disagree on it. Event subjects themselves
//! (`events.<type>`) come from [`crate::subject`].

use crate::subject::EVENTS_PREFIX;

/// Default name of the JetStream stream that holds the canonical events (`events.>`).
pub const EVENTS_STREAM: &str = "SANDBUS_EVENTS";

/// Subjects captured by the events stream.
pub fn events_stream_subjects() -> Vec<String> {
    vec![format!("{EVENTS_PREFIX}.>")]
}

/// Name of the stream holding dead-lettered events.
pub const DEAD_LETTER_STREAM: &str = "SANDBUS_DEAD_LETTERS";

/// Prefix of the dead-letter subjects; one subject per listener.
pub const DEAD_LETTER_PREFIX: &str = "sandbus.dead-letter";

/// Subjects captured by the dead-letter stream.
pub fn dead_letter_stream_subjects() -> Vec<String> {
    vec![format!("{DEAD_LETTER_PREFIX}.>")]
}

/// Where a listener's dead letters go.
pub fn dead_letter_subject(listener: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}.{listener}")
}

/// Object store bucket holding component bytes, one object per sha256 digest.
pub const COMPONENTS_BUCKET: &str = "sandbus-components";

/// KV bucket of component manifests, one key per component name.
pub const MANIFESTS_BUCKET: &str = "sandbus-manifests";

/// KV bucket of listener subscriptions, one key per listener.
pub const SUBSCRIPTIONS_BUCKET: &str = "sandbus-subscriptions";

/// KV bucket of per-listener status (last error), one key per listener.
pub const LISTENER_STATUS_BUCKET: &str = "sandbus-listener-status";

/// KV bucket of live hosts; entries expire unless the host heartbeats.
pub const HOSTS_BUCKET: &str = "sandbus-hosts";

/// KV bucket of device leases, one key per device; entries expire unless renewed.
pub const LEASES_BUCKET: &str = "sandbus-leases";

/// KV bucket of the device inventory: every host's devices, one key per device.
pub const DEVICES_BUCKET: &str = "sandbus-devices";

/// KV bucket of extension points (policy, deadline, registered hooks), one key per point.
pub const HOOK_POINTS_BUCKET: &str = "sandbus-hook-points";

/// KV bucket of script runs, one key per run id.
pub const RUNS_BUCKET: &str = "sandbus-runs";

/// Stream holding every run's log lines and its report.
pub const RUNS_STREAM: &str = "SANDBUS_RUNS";

/// Prefix of the run subjects: `sandbus.run.<id>.log`, `sandbus.run.<id>.report`.
pub const RUN_PREFIX: &str = "sandbus.run";

/// Subjects captured by the runs stream.
pub fn runs_stream_subjects() -> Vec<String> {
    vec![format!("{RUN_PREFIX}.>")]
}

/// Subject of a run's log lines.
pub fn run_log_subject(run: &str) -> String {
    format!("{RUN_PREFIX}.{run}.log")
}

/// Every subject of one run (its log lines, then its report): what a follower reads.
pub fn run_subjects(run: &str) -> String {
    format!("{RUN_PREFIX}.{run}.>")
}

/// Subject of a run's final report.
pub fn run_report_subject(run: &str) -> String {
    format!("{RUN_PREFIX}.{run}.report")
}

/// Key of a device in [`LEASES_BUCKET`] and [`DEVICES_BUCKET`].
pub fn lease_key(host: &str, device: &str) -> String {
    format!("{host}.{device}")
}

/// Subject prefix of one host's own endpoints (runs go to the host that has the device).
pub fn host_api_prefix(host: &str) -> String {
    format!("sandbus.host.{host}")
}

/// KV bucket holding every component's private key-value space.
pub const GUEST_KV_BUCKET: &str = "sandbus-kv";

/// Key of a manifest in [`MANIFESTS_BUCKET`].
pub fn manifest_key(component: &str) -> String {
    format!("component.{component}")
}

/// Key of a guest's key in [`GUEST_KV_BUCKET`]: the component's namespace, then its key.
pub fn guest_kv_key(namespace: &str, key: &str) -> String {
    format!("{namespace}.{key}")
}

/// Filter that selects one namespace's keys in [`GUEST_KV_BUCKET`].
pub fn guest_kv_namespace_filter(namespace: &str) -> String {
    format!("{namespace}.>")
}

/// Durable consumer name of a listener's subscription on the events stream.
pub fn listener_consumer(listener: &str) -> String {
    format!("sandbus-listener-{listener}")
}

/// Name of the control service (`$SRV.PING.sandbus`...).
pub const SERVICE_NAME: &str = "sandbus";

/// Subject prefix of the control API endpoints.
pub const API_PREFIX: &str = "sandbus.api";

/// Subject of one control API endpoint, e.g. `sandbus.api.component.upload`.
pub fn api_subject(endpoint: &str) -> String {
    format!("{API_PREFIX}.{endpoint}")
}

/// CloudEvents `source` of the events a daemon emits about itself.
pub fn host_source(host_id: &str) -> String {
    format!("/sandbus/hosts/{host_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_nats_tokens() {
        for name in [
            manifest_key("billing"),
            guest_kv_key("billing", "total/acme"),
            listener_consumer("billing"),
            dead_letter_subject("billing"),
            api_subject("component.upload"),
        ] {
            assert!(!name.contains(' ') && !name.contains("..") && !name.is_empty());
        }
        assert_eq!(dead_letter_subject("audit"), "sandbus.dead-letter.audit");
        assert_eq!(listener_consumer("audit"), "sandbus-listener-audit");
    }
}
