//! Trust boundaries end to end, on a real daemon: no grant reaches a reserved subject space,
//! whether it comes through the CLI, straight to the control API, or in a manifest written
//! by hand; host events come only from hosts; a listener that feeds itself stops at the depth
//! limit; every request gets an answer that fits in a message, however large what it echoes.

use std::time::{Duration, Instant};

use sandbus::api::{Endpoint, endpoint};
use sandbus::bus::names;
use sandbus::event::MAX_DEPTH;
use serde_json::{Value, json};

use super::cluster::{Cluster, guest, write};
use super::support::{guest as guest_bytes, wat_hook};

/// Sends `body` straight to an endpoint (no CLI, no client-side checks), as the harness's
/// user; the error code (None: success) and the error message or the reply body.
fn api_raw(cluster: &Cluster, name: &str, body: &[u8]) -> (Option<usize>, String) {
    let subject = names::api_subject(Endpoint::find(name).unwrap(), None).unwrap();
    let client = cluster.connect();
    let body = body.to_vec();
    let reply = cluster.rt.block_on(async move {
        tokio::time::timeout(
            Duration::from_secs(10),
            client.request(subject, body.into()),
        )
        .await
        .expect("an answer within 10 s")
        .expect("a reply")
    });
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.to_string())
    };
    match header("Nats-Service-Error-Code") {
        Some(code) => (
            code.parse().ok(),
            header("Nats-Service-Error").unwrap_or_default(),
        ),
        None => (None, String::from_utf8_lossy(&reply.payload).into_owned()),
    }
}

/// Stages a component's bytes with `component.stage` straight through the API; its digest.
fn stage_raw(cluster: &Cluster, bytes: &[u8]) -> String {
    use base64::Engine as _;
    let digest = sandbus::sandbox::Digest::of(bytes).as_str().to_owned();
    let body = json!({
        "digest": digest, "size": bytes.len(), "part": 0, "parts": 1,
        "data": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    let (code, reply) = api_raw(cluster, endpoint::STAGE, body.to_string().as_bytes());
    assert_eq!(code, None, "{reply}");
    digest
}

const RESERVED_GRANTS: &[&str] = &[
    ">",
    "*",
    "*.>",
    "$JS.API.>",
    "$JS.API.STREAM.PURGE.SANDBUS_DEAD_LETTERS",
    "$KV.sandbus-kv.billing.total/acme",
    "$O.>",
    "$SRV.>",
    "$SYS.>",
    "_INBOX.>",
    "sandbus.>",
    "sandbus.api.operator.component.remove",
    "events.>",
    "events.sandbus.lease.released",
];

#[test]
fn every_reserved_grant_is_refused_at_the_cli_the_api_and_load() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    // The CLI.
    for grant in RESERVED_GRANTS {
        let out = cluster.cli(&[
            "upload",
            &guest("noop-listener"),
            "--name",
            "greedy",
            "--grant",
            &format!("publish={grant}"),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{grant}: {stderr}");
        assert!(
            stderr.contains("No grant can reach these"),
            "{grant}: {stderr}"
        );
    }
    // The API, with no CLI in front of it: grants, kv-read names and limits the CLI refuses.
    let bytes = guest_bytes("noop-listener");
    let digest = stage_raw(&cluster, &bytes);
    let mut refusals: Vec<(Vec<&str>, Vec<&str>, Vec<&str>)> = RESERVED_GRANTS
        .iter()
        .map(|g| (vec![*g], vec![], vec![]))
        .collect();
    for name in ["", "*", "..", "a.b", "evil.x"] {
        refusals.push((vec![], vec![name], vec![]));
    }
    for limit in ["payload=1TiB", "log=0", "memory=1TiB", "instances=100000"] {
        refusals.push((vec![], vec![], vec![limit]));
    }
    for (grants, kv_read, limits) in refusals {
        stage_raw(&cluster, &bytes);
        let body = json!({
            "name": "greedy", "digest": digest, "grants": grants, "kv_read": kv_read,
            "limits": limits,
        });
        let (code, message) = api_raw(&cluster, endpoint::UPLOAD, body.to_string().as_bytes());
        assert_eq!(
            code,
            Some(400),
            "{grants:?} {kv_read:?} {limits:?}: {message}"
        );
    }
    // Nothing was recorded, and the bytes the refused uploads stored are gone again.
    assert_eq!(cluster.cli_json(&["ls"]), json!([]));
    let client = cluster.connect();
    let stored = cluster.rt.block_on(async move {
        let js = async_nats::jetstream::new(client);
        let store = js.get_object_store(names::COMPONENTS_BUCKET).await.unwrap();
        store.info(digest.as_str()).await.is_ok_and(|i| !i.deleted)
    });
    assert!(!stored, "a refused upload left its bytes in the store");

    // Load: a manifest written by hand, past the API, with a grant into $KV.
    cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", "victim"]);
    cluster.wait_for_component("h1", "victim", 1);
    let client = cluster.connect();
    cluster.rt.block_on(async move {
        let js = async_nats::jetstream::new(client);
        let manifests = js.get_key_value(names::MANIFESTS_BUCKET).await.unwrap();
        let key = names::manifest_key("victim");
        let mut manifest: Value =
            serde_json::from_slice(&manifests.get(&key).await.unwrap().unwrap()).unwrap();
        manifest["version"] = json!(2);
        manifest["grants"] = json!(["$KV.>"]);
        manifests
            .put(&key, manifest.to_string().into())
            .await
            .unwrap();
    });
    cluster.wait("the hand-written manifest refused at load", |c| {
        let hosts = c.cli_json(&["hosts"]);
        hosts[0]["not_ready"]["victim"]["reason"]
            .as_str()
            .is_some_and(|why| why.contains("$KV.>") && why.contains("No grant can reach"))
    });
    let hosts = cluster.cli_json(&["hosts"]);
    assert_eq!(
        hosts[0]["components"]["victim"], 1,
        "the version with valid grants stays loaded: {hosts}"
    );
    // Nor does a rollback bring such a version back.
    cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", "victim"]);
    let out = cluster.cli(&["rollback", "victim"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("version 2 of `victim` cannot be restored"),
        "{stderr}"
    );
}

/// Uploads the trust probe as `probe`, granted its own event types, and subscribes it.
fn probe(cluster: &mut Cluster, events: &str) {
    cluster.cli_ok(&[
        "upload",
        &guest("trust-probe-listener"),
        "--name",
        "probe",
        "--grant",
        "publish=events.probe.>",
        "--limit",
        "timeout=10s",
    ]);
    cluster.cli_ok(&[
        "subscribe",
        "probe",
        "--events",
        events,
        "--max-deliver",
        "1",
    ]);
    cluster.wait_for_component("h1", "probe", 1);
}

#[test]
fn host_events_come_only_from_hosts() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    // The API refuses the type, from the CLI and from any client.
    let out = cluster.cli(&[
        "publish",
        "sandbus.lease.released",
        "--data",
        r#"{"held_ms":86400000}"#,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let forged = json!({ "event": {
        "specversion": "1.0", "id": "forged-1", "source": "/sandbus/hosts/h1",
        "type": "sandbus.lease.released", "data": { "held_ms": 86_400_000 } } });
    let (code, message) = api_raw(&cluster, endpoint::PUBLISH, forged.to_string().as_bytes());
    assert_eq!(code, Some(400), "{message}");
    assert!(message.contains("reserved"), "{message}");
    // A guest may not emit one.
    probe(&mut cluster, "probe.forge");
    cluster.cli_ok(&["publish", "probe.forge", "--data", "{}", "--id", "f-1"]);
    cluster.wait("the probe's dead letter", |c| {
        !c.dead_letters("probe").is_empty()
    });
    let (headers, _) = &cluster.dead_letters("probe")[0];
    assert!(
        headers["Sandbus-Reason"].contains("NotGranted(\"events.sandbus.lease.released\")"),
        "{headers:?}"
    );
    assert!(
        cluster.events("sandbus.lease.released").is_empty(),
        "a forged host event reached the stream"
    );
    // Anyone who can publish onto the stream without sandbus (here: an account admin) can put
    // a host event's body on another type's subject; listeners do not take it as one.
    cluster.cli_ok(&[
        "upload",
        &guest("billing-listener"),
        "--name",
        "billing",
        "--grant",
        "publish=events.billing.>",
    ]);
    cluster.cli_ok(&[
        "subscribe",
        "billing",
        "--events",
        "vm.>",
        "--max-deliver",
        "1",
    ]);
    cluster.wait_for_component("h1", "billing", 1);
    let forged = json!({
        "specversion": "1.0", "id": "forged-2", "source": "/sandbus/hosts/h1",
        "type": "sandbus.lease.released",
        "data": { "run": "r-forged", "script": "victim", "held_ms": 86_400_000 } });
    cluster.publish_raw(vec![(
        "events.vm.forged".into(),
        None,
        forged.to_string().into_bytes(),
    )]);
    cluster.wait("the forgery dead-lettered", |c| {
        !c.dead_letters("billing").is_empty()
    });
    let (headers, _) = &cluster.dead_letters("billing")[0];
    assert!(
        headers["Sandbus-Reason"].contains("does not match the subject"),
        "{headers:?}"
    );
    assert_eq!(cluster.kv_get("billing", "lease-ms/total/victim"), None);
}

#[test]
fn no_one_suppresses_a_host_event_by_claiming_its_id_first() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.start_daemon("h2");
    let hosts = cluster.cli_json(&["hosts"]);
    let h1 = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "h1")
        .unwrap();
    let started_at = h1["started_at"].as_str().unwrap().to_owned();
    // The id the daemon's `sandbus.host.stopped` will have, claimed first by a publisher.
    let claimed = format!("sandbus.host.stopped/h1/{started_at}");
    cluster.cli_ok(&["publish", "vm.noise", "--data", "{}", "--id", &claimed]);
    assert_eq!(cluster.terminate_daemon("h1"), Some(0));
    let stopped = cluster.events("sandbus.host.stopped");
    assert_eq!(
        stopped.len(),
        1,
        "the daemon's event was stored: {stopped:?}"
    );
    assert_eq!(stopped[0]["id"], claimed);
}

#[test]
fn a_listener_that_emits_what_it_listens_to_stops_at_the_depth_limit() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    probe(&mut cluster, "probe.loop");
    cluster.cli_ok(&["publish", "probe.loop", "--data", "{}", "--id", "l"]);
    cluster.wait("the loop's dead letter", |c| {
        !c.dead_letters("probe").is_empty()
    });
    let chain = cluster.events("probe.loop");
    assert_eq!(
        chain.len(),
        1 + MAX_DEPTH as usize,
        "the first event and one per hop allowed: {chain:?}"
    );
    let deepest = chain.last().unwrap();
    assert_eq!(deepest["sandbusdepth"], MAX_DEPTH, "{deepest}");
    let (headers, _) = &cluster.dead_letters("probe")[0];
    assert!(
        headers["Sandbus-Reason"].contains("loop guard"),
        "{headers:?}"
    );
    // It stays stopped.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.events("probe.loop").len(), chain.len());
}

#[test]
fn a_loop_through_the_daemons_own_events_stops_at_the_depth_limit_too() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    cluster.cli_ok(&[
        "upload",
        &guest("trust-probe-listener"),
        "--name",
        "probe",
        "--grant",
        "publish=events.probe.>",
    ]);
    // Each rejected probe.reject is dead-lettered; each dead-letter notice makes another.
    cluster.cli_ok(&[
        "subscribe",
        "probe",
        "--events",
        "probe.reject",
        "--events",
        "sandbus.listener.dead-lettered",
        "--max-deliver",
        "1",
    ]);
    cluster.wait_for_component("h1", "probe", 1);
    cluster.cli_ok(&["publish", "probe.reject", "--data", "{}", "--id", "r"]);
    // Depths 0, 2, 4, 6, 8 for probe.reject; 1, 3, 5, 7 for the notices; the letter of the
    // one at depth 8 is stored, but its notice (depth 9) is not emitted.
    cluster.wait("the chain's five dead letters", |c| {
        c.dead_letters("probe").len() == 5
    });
    std::thread::sleep(Duration::from_secs(2));
    let rejects = cluster.events("probe.reject");
    let notices = cluster.events("sandbus.listener.dead-lettered");
    assert_eq!(rejects.len(), 5, "{rejects:?}");
    assert_eq!(notices.len(), 4, "{notices:?}");
    assert_eq!(notices.last().unwrap()["sandbusdepth"], 7);
    assert_eq!(
        cluster.dead_letters("probe").len(),
        5,
        "the loop stayed stopped"
    );
}

#[test]
fn one_roles_flood_is_answered_busy_and_never_holds_up_another() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let subject = |name: &str| names::api_subject(Endpoint::find(name).unwrap(), None).unwrap();
    let client = cluster.connect();
    let (events, kv_get) = (subject(endpoint::EVENTS), subject(endpoint::KV_GET));
    let (busy, other) = cluster.rt.block_on(async move {
        // Every viewer slot held by a long poll that has nothing to wait for.
        let mut polls = Vec::new();
        for _ in 0..16 {
            let client = client.clone();
            let events = events.clone();
            polls.push(tokio::spawn(async move {
                client
                    .request(events, r#"{"after":1000000000,"wait_ms":20000}"#.into())
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let busy = client
            .request(events.clone(), "{}".into())
            .await
            .expect("an answer, at once");
        let busy_after = started.elapsed();
        // An operator's request is answered meanwhile.
        let other = client
            .request(
                kv_get,
                r#"{"namespace":"billing","key":"total/acme"}"#.into(),
            )
            .await
            .expect("the operator's answer");
        for poll in polls {
            poll.abort();
        }
        ((busy, busy_after), other)
    });
    let (busy, after) = busy;
    let header = |m: &async_nats::Message, name: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.to_string())
    };
    assert_eq!(
        header(&busy, "Nats-Service-Error-Code").as_deref(),
        Some("503")
    );
    assert!(
        header(&busy, "Nats-Service-Error").is_some_and(|m| m.contains("busy")),
        "{busy:?}"
    );
    assert!(after < Duration::from_secs(2), "busy came after {after:?}");
    assert_eq!(header(&other, "Nats-Service-Error-Code"), None, "{other:?}");
}

#[test]
fn every_request_gets_an_answer_that_fits() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    // A huge name: refused at once, the echo clipped.
    let huge = "x".repeat(900 << 10);
    let started = Instant::now();
    let body = json!({ "name": huge }).to_string();
    let (code, message) = api_raw(&cluster, endpoint::STATUS, body.as_bytes());
    assert_eq!(code, Some(400), "{}", &message[..message.len().min(200)]);
    assert!(message.len() < 8 << 10, "{} bytes", message.len());
    assert!(message.contains("bytes in all"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Bad names and overlapping patterns are bad requests, not outages.
    for (name, body) in [
        (endpoint::REMOVE, json!({ "name": "../etc/passwd" })),
        (endpoint::UNSUBSCRIBE, json!({ "name": "a b" })),
        (
            endpoint::SUBSCRIBE,
            json!({ "name": "billing", "events": ["vm.*", "vm.started"] }),
        ),
        (endpoint::RUN, json!({ "run": "../../x" })),
    ] {
        let (code, message) = api_raw(&cluster, name, body.to_string().as_bytes());
        assert_eq!(code, Some(400), "{name}: {message}");
    }
    let out = cluster.cli(&["rm", "../etc/passwd"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cluster.cli(&[
        "subscribe",
        "x",
        "--events",
        "vm.*",
        "--events",
        "vm.started",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlap"));

    // A hook denying with a 900 KiB reason: the reply comes, clipped, and the denial is
    // recorded.
    let hook = wat_hook(
        r#"(func (export "sandbus:host/check@0.1.0#check") (param i32) (result i32)
             (drop (memory.grow (i32.const 15)))
             (i32.store8 (i32.const 64) (i32.const 0))
             (i32.store8 (i32.const 68) (i32.const 1))
             (i32.store (i32.const 72) (i32.const 131072))
             (i32.store (i32.const 76) (i32.const 921600))
             (i32.const 64))"#,
    );
    let file = write(&cluster, "verbose.wasm", &hook);
    cluster.cli_ok(&["upload", &file, "--name", "verbose"]);
    cluster.cli_ok(&["hook", "add", "verbose", "--point", "vm.pre-create"]);
    cluster.wait_for_component("h1", "verbose", 1);
    let started = Instant::now();
    let out = cluster.cli(&["hook", "call", "vm.pre-create", "--data", "{}", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "denied: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = reply["hooks"][0]["reason"].as_str().unwrap();
    assert!(
        reason.ends_with("(921600 bytes in all)"),
        "{}",
        reason.len()
    );
    cluster.wait("the denial recorded", |c| {
        !c.events("sandbus.hook.denied").is_empty()
    });
}

/// Uploads the trust probe as `name` with `limits`, subscribed to `probe.kv-flood` (one
/// delivery: a refusal is dead-lettered with its reason).
fn flood_probe(cluster: &mut Cluster, name: &str, limits: &[&str]) {
    let probe = guest("trust-probe-listener");
    let mut args = vec![
        "upload",
        probe.as_str(),
        "--name",
        name,
        "--limit",
        "timeout=30s",
    ];
    for limit in limits {
        args.extend(["--limit", limit]);
    }
    cluster.cli_ok(&args);
    cluster.wait_for_component("h1", name, 1);
}

/// Runs one kv flood of `value_size`-byte values on `name` (subscribed alone to the flood
/// type for the time of it); the dead letter's reason.
fn flood(cluster: &mut Cluster, name: &str, value_size: usize, id: &str) -> String {
    cluster.cli_ok(&[
        "subscribe",
        name,
        "--events",
        "probe.kv-flood",
        "--max-deliver",
        "1",
    ]);
    cluster.cli_ok(&[
        "publish",
        "probe.kv-flood",
        "--data",
        &value_size.to_string(),
        "--id",
        id,
    ]);
    cluster.wait(&format!("{name}'s flood refused"), |c| {
        !c.dead_letters(name).is_empty()
    });
    let (headers, _) = &cluster.dead_letters(name)[0];
    let reason = headers["Sandbus-Reason"].clone();
    // (Unsubscribing drops the listener's dead letters.)
    cluster.cli_ok(&["unsubscribe", name]);
    reason
}

#[test]
fn memory_kv_and_bucket_ceilings_hold_against_hostile_guests() {
    let mut cluster = Cluster::new();
    let config = write(
        &cluster,
        "sandbus.toml",
        b"[sandbox]\nmemory_budget = \"1GiB\"\n[kv]\nmax_bytes = \"8MiB\"\n",
    );
    cluster.start_daemon_with("h1", &["--config", &config]);
    // A component that could not fit the host's memory budget even alone: refused with the
    // numbers, nothing recorded.
    let out = cluster.cli(&[
        "upload",
        &guest("trust-probe-listener"),
        "--name",
        "hog",
        "--limit",
        "memory=1GiB",
        "--limit",
        "instances=6",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("6.0 GiB") && stderr.contains("memory budget of 1.0 GiB"),
        "{stderr}"
    );
    assert_eq!(cluster.cli_json(&["ls"]), json!([]));

    // kv-bytes: 64 KiB values into a 1 MiB quota.
    flood_probe(&mut cluster, "bytes", &["kv-bytes=1MiB"]);
    let reason = flood(&mut cluster, "bytes", 64 << 10, "flood-bytes");
    assert!(reason.contains("quota exceeded"), "{reason}");
    assert!(reason.contains("kv-bytes quota of 1.0 MiB"), "{reason}");
    let stored: usize = cluster
        .kv("bytes", "")
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert!(
        stored <= 1 << 20,
        "{stored} bytes stored over a 1 MiB quota"
    );
    assert!(
        stored > 900 << 10,
        "the quota, not something else, stopped it: {stored}"
    );

    // kv-keys: tiny values, 50 keys.
    flood_probe(&mut cluster, "keys", &["kv-keys=50"]);
    let reason = flood(&mut cluster, "keys", 1, "flood-keys");
    assert!(reason.contains("kv-keys quota of 50"), "{reason}");
    assert!(reason.contains("kv-flood: 50 writes"), "{reason}");
    assert_eq!(cluster.kv("keys", "").len(), 50);

    // The bucket's own bound, under a component quota larger than it.
    flood_probe(&mut cluster, "big", &["kv-bytes=64MiB", "kv-keys=1000000"]);
    let reason = flood(&mut cluster, "big", 64 << 10, "flood-big");
    assert!(reason.contains("the key-value bucket is full"), "{reason}");
    // The daemon is unharmed, and an operator can make room.
    cluster.cli_ok(&["kv", "rm", "big", "flood/0"]);
    let hosts = cluster.cli_json(&["hosts"]);
    assert_eq!(hosts[0]["id"], "h1", "the daemon is up: {hosts}");
}
