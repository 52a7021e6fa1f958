//! Every NATS name sandbus uses: streams, buckets, consumers and subjects.
//!
//! Built here and nowhere else, so that the layout of the bus can be read in one place and
//! two daemons (or a daemon and a CLI) can never disagree on it. Event subjects themselves
//! (`events.<type>`) come from [`crate::subject`].

use crate::api::endpoint::{Endpoint, Role};
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

/// KV bucket holding every component's private key-value space.
pub const GUEST_KV_BUCKET: &str = "sandbus-kv";

/// KV bucket of component bytes staged part by part for an upload (`component.stage`),
/// one key per part; parts expire when no upload follows.
pub const UPLOADS_BUCKET: &str = "sandbus-uploads";

/// Key of one staged part in [`UPLOADS_BUCKET`]: `<digest>.<parts>.<part>`.
pub fn staged_part_key(digest: &str, parts: u32, part: u32) -> String {
    format!("{digest}.{parts}.{part}")
}

/// Every KV bucket a daemon creates.
pub const KV_BUCKETS: &[&str] = &[
    MANIFESTS_BUCKET,
    SUBSCRIPTIONS_BUCKET,
    LISTENER_STATUS_BUCKET,
    HOSTS_BUCKET,
    LEASES_BUCKET,
    DEVICES_BUCKET,
    HOOK_POINTS_BUCKET,
    RUNS_BUCKET,
    GUEST_KV_BUCKET,
    UPLOADS_BUCKET,
];

/// The stream behind KV bucket `bucket`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The stream behind object store `bucket`.
pub fn object_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

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

/// Subject prefix of one role's endpoints, `sandbus.api.<role>`: what that role's NATS
/// permission allows (`sandbus.api.viewer.>`).
pub fn api_role_prefix(role: Role) -> String {
    format!("{API_PREFIX}.{role}")
}

/// Subject prefix of one host's own endpoints of a role, `sandbus.api.<role>.host.<id>`
/// (runs go to the host that has the device).
pub fn host_api_prefix(role: Role, host: &str) -> String {
    format!("{}.host.{host}", api_role_prefix(role))
}

/// Subject of one control API endpoint, e.g. `sandbus.api.operator.component.upload`; for a
/// per-host endpoint, the one of `host` (`sandbus.api.operator.host.lab-7.run.start`).
/// `None` for a per-host endpoint without a host.
pub fn api_subject(endpoint: &Endpoint, host: Option<&str>) -> Option<String> {
    match (endpoint.per_host, host) {
        (false, _) => Some(format!(
            "{}.{}",
            api_role_prefix(endpoint.role),
            endpoint.name
        )),
        (true, Some(host)) => Some(format!(
            "{}.{}",
            host_api_prefix(endpoint.role, host),
            endpoint.name
        )),
        (true, None) => None,
    }
}

/// CloudEvents `source` of the events a daemon emits about itself.
pub fn host_source(host_id: &str) -> String {
    format!("{}{host_id}", crate::subject::HOST_SOURCE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_sandbus_uses_is_in_its_reserved_space() {
        use crate::subject::ReservedSpace;
        let mut subjects = vec![
            dead_letter_subject("billing"),
            run_log_subject("r-1"),
            run_report_subject("r-1"),
            api_role_prefix(Role::Viewer),
        ];
        subjects.extend(
            crate::api::endpoint::ALL
                .iter()
                .filter_map(|e| api_subject(e, Some("h1"))),
        );
        for subject in subjects {
            assert_eq!(
                ReservedSpace::reached_by(&subject),
                Some(ReservedSpace::Sandbus),
                "{subject}"
            );
        }
    }

    #[test]
    fn names_are_valid_nats_tokens() {
        for name in [
            manifest_key("billing"),
            guest_kv_key("billing", "total/acme"),
            listener_consumer("billing"),
            dead_letter_subject("billing"),
            api_subject(&crate::api::endpoint::ALL[0], None).unwrap_or_default(),
        ] {
            assert!(!name.contains(' ') && !name.contains("..") && !name.is_empty());
        }
        let upload = Endpoint::find(crate::api::endpoint::UPLOAD).unwrap();
        assert_eq!(
            api_subject(upload, None).unwrap(),
            "sandbus.api.operator.component.upload"
        );
        let start = Endpoint::find(crate::api::endpoint::RUN_START).unwrap();
        assert_eq!(api_subject(start, None), None);
        assert_eq!(
            api_subject(start, Some("lab-7")).unwrap(),
            "sandbus.api.operator.host.lab-7.run.start"
        );
        assert_eq!(dead_letter_subject("audit"), "sandbus.dead-letter.audit");
        assert_eq!(listener_consumer("audit"), "sandbus-listener-audit");
    }
}
