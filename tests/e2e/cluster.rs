//! The harness of the daemon tests: a real `nats-server` on a free port (or a NATS cluster of
//! several), real `sandbus daemon` processes, the real CLI, and a direct NATS connection for
//! what a test must see or do underneath (publish a thousand events, read a listener's kv,
//! read dead letters).
//!
//! Everything is torn down on drop: daemons are killed, the servers are killed and their
//! stores removed. Compiled components are cached in one directory shared by every test of a
//! run, so each guest is compiled once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use serde_json::Value;

use super::support::nats::{NatsCluster, NatsServer, log_tails};
use super::support::workspace_root;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(180);

/// Publishes [`Cluster::publish_raw`] has in flight at most. Below async-nats' own limit
/// (5,000 unacknowledged publishes per context), where a publish would wait for an ack that
/// is only read once it returns.
const PUBLISH_WINDOW: usize = 1_000;

/// A NATS server (or a NATS cluster), some daemons, and a client.
pub struct Cluster {
    /// The server; on a NATS cluster ([`Cluster::with_nats_cluster`]), its first node.
    pub nats: NatsServer,
    /// The other nodes of a NATS cluster, in order after [`nats`](Self::nats); none on one
    /// server.
    pub nats_peers: Vec<NatsServer>,
    /// Per-test files (daemon data directories, logs).
    pub dir: tempfile::TempDir,
    /// Extra arguments for every daemon and CLI call (e.g. credentials).
    pub auth: Vec<String>,
    /// Credentials for the daemons instead of [`auth`](Self::auth), when they have their own
    /// NATS user (the roles tests).
    pub daemon_auth: Option<Vec<String>>,
    /// Directories that must live as long as the cluster (a server's configuration files).
    pub keep: Vec<tempfile::TempDir>,
    /// The async runtime the test's direct NATS calls run on.
    pub rt: tokio::runtime::Runtime,
    daemons: BTreeMap<String, Child>,
    _slot: ClusterSlot,
}

/// Clusters alive at once in one test run. Each runs a nats-server and debug-built daemons
/// that handle hundreds of events; more at once than this on a two-core machine only makes
/// every test slower and deadlines flaky. A cluster on a NATS cluster counts as all of them:
/// its several servers and daemons alone keep the machine busy.
const MAX_CLUSTERS: usize = 2;

static RUNNING: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static FREED: std::sync::Condvar = std::sync::Condvar::new();

/// Some of the [`MAX_CLUSTERS`] places, held by one cluster; given back on drop.
struct ClusterSlot {
    /// How many places are held.
    places: usize,
}

impl ClusterSlot {
    /// One place: a cluster on one nats-server.
    fn take() -> Self {
        Self::take_places(1)
    }

    /// Every place: a cluster on a NATS cluster runs alone.
    fn take_all() -> Self {
        Self::take_places(MAX_CLUSTERS)
    }

    /// Waits until `places` places are free and takes them.
    fn take_places(places: usize) -> Self {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running + places > MAX_CLUSTERS {
            running = FREED.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += places;
        ClusterSlot { places }
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) -= self.places;
        // Every waiter: one that needs all the places must see them free too.
        FREED.notify_all();
    }
}

/// The compile cache shared by the tests of one run.
fn shared_cache() -> PathBuf {
    workspace_root().join("target").join("e2e-compile-cache")
}

impl Cluster {
    /// A fresh server with no daemon yet.
    pub fn new() -> Self {
        let slot = ClusterSlot::take();
        Self::build(slot, vec![NatsServer::start()], Vec::new())
    }

    /// A cluster on `nats`; `auth` is passed to every daemon and CLI call.
    pub fn with_server(nats: NatsServer, auth: Vec<String>) -> Self {
        Self::build(ClusterSlot::take(), vec![nats], auth)
    }

    /// A fresh NATS cluster of `nodes` nodes with clustered JetStream ([`NatsCluster`]), and no
    /// daemon yet. The CLI and a daemon connect to the first node, unless given another one
    /// with `--nats` (see [`node_url`](Self::node_url)); [`connect`](Self::connect) to any.
    /// Waits until no other cluster runs, and runs alone.
    pub fn with_nats_cluster(nodes: usize) -> Self {
        let slot = ClusterSlot::take_all();
        Self::build(slot, NatsCluster::start(nodes).into_nodes(), Vec::new())
    }

    /// `nodes` holds one server, or the nodes of one NATS cluster.
    fn build(slot: ClusterSlot, nodes: Vec<NatsServer>, auth: Vec<String>) -> Self {
        let mut nodes = nodes.into_iter();
        let nats = nodes.next().expect("a cluster needs a NATS server");
        Self {
            nats,
            nats_peers: nodes.collect(),
            dir: tempfile::tempdir().unwrap(),
            auth,
            daemon_auth: None,
            keep: Vec::new(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            daemons: BTreeMap::new(),
            _slot: slot,
        }
    }

    /// The client URL of every NATS server, [`nats`](Self::nats) first.
    fn nats_urls(&self) -> Vec<String> {
        (0..=self.nats_peers.len())
            .map(|node| self.node_url(node))
            .collect()
    }

    /// The client URL of NATS node `node`: 0 is [`nats`](Self::nats), 1 the first of
    /// [`nats_peers`](Self::nats_peers)...
    pub fn node_url(&self, node: usize) -> String {
        match node {
            0 => self.nats.url(),
            _ => self.nats_peers[node - 1].url(),
        }
    }

    /// A command for the `sandbus` binary with this cluster's URL and auth.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sandbus"));
        command
            .args(args)
            .env("SANDBUS_NATS_URL", self.nats.url())
            .env("SANDBUS_CACHE_DIR", shared_cache())
            .env_remove("SANDBUS_LOG")
            .env_remove("SANDBUS_CONFIG")
            // The nats CLI settings of whoever runs the tests (its variables, its selected
            // context) must not reach them.
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"));
        for var in [
            "NATS_URL",
            "NATS_CONTEXT",
            "NATS_USER",
            "NATS_PASSWORD",
            "NATS_TOKEN",
            "NATS_CREDS",
            "NATS_NKEY",
            "NATS_CA",
            "NATS_CERT",
            "NATS_KEY",
        ] {
            command.env_remove(var);
        }
        command
    }

    /// Runs the CLI with `args` (plus the auth flags) and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.auth.iter().map(String::as_str));
        self.command(&all).output().unwrap()
    }

    /// Runs the CLI and asserts it succeeded; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "sandbus {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI with `--json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.cli_ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Every stored event whose type matches `pattern` (`sandbus events PATTERN --json`),
    /// oldest first.
    pub fn events(&self, pattern: &str) -> Vec<Value> {
        self.cli_ok(&["events", pattern, "--json"])
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// Starts a daemon with host id `id` and waits until it answers and is listed.
    pub fn start_daemon(&mut self, id: &str) {
        self.start_daemon_with(id, &[]);
    }

    /// [`start_daemon`](Self::start_daemon) with more daemon flags, `extra`.
    pub fn start_daemon_with(&mut self, id: &str, extra: &[&str]) {
        self.spawn_daemon(id, extra);
        self.wait_for_host(id);
    }

    /// Starts a daemon without waiting; `extra` are more daemon flags.
    pub fn spawn_daemon(&mut self, id: &str, extra: &[&str]) {
        let data = self.dir.path().join(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{id}.log")))
            .unwrap();
        let mut args = vec![
            "daemon",
            "--host-id",
            id,
            "--data-dir",
            data.to_str().unwrap(),
            "--shutdown-grace",
            "5s",
        ];
        args.extend(extra);
        args.extend(
            self.daemon_auth
                .as_ref()
                .unwrap_or(&self.auth)
                .iter()
                .map(String::as_str),
        );
        let child = self
            .command(&args)
            .env("SANDBUS_LOG", "info,async_nats=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.insert(id.to_owned(), child);
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{id}.log"))).unwrap_or_default()
    }

    /// Waits until `sandbus hosts` lists `id`.
    pub fn wait_for_host(&mut self, id: &str) {
        self.wait(&format!("host {id} to be listed"), |c| {
            let out = c.cli(&["hosts", "--json"]);
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout)
                    .ok()
                    .and_then(|v| v.as_array().cloned())
                    .is_some_and(|hosts| hosts.iter().any(|h| h["id"] == id))
        });
    }

    /// Waits until host `id` reports component `name` at `version`.
    pub fn wait_for_component(&mut self, id: &str, name: &str, version: u64) {
        self.wait(&format!("{id} to load {name} v{version}"), |c| {
            let out = c.cli(&["hosts", "--json"]);
            serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|hosts| {
                    hosts
                        .iter()
                        .any(|h| h["id"] == id && h["components"][name] == version)
                })
        });
    }

    /// Polls `done` every 100 ms until it holds; panics with the daemons' logs after
    /// [`PATIENCE`].
    pub fn wait(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            if Instant::now() > deadline {
                self.fail(&format!("timed out waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails the test: panics with `message` and the tail of every running daemon's log (and,
    /// on a NATS cluster, of every node's log).
    pub fn fail(&self, message: &str) -> ! {
        let mut logs: Vec<String> = self
            .daemons
            .keys()
            .map(|id| format!("--- {id} ---\n{}", tail(&self.daemon_log(id), 60)))
            .collect();
        if !self.nats_peers.is_empty() {
            logs.push(log_tails(
                std::iter::once(&self.nats).chain(&self.nats_peers),
            ));
        }
        panic!("{message}\n{}", logs.join("\n"));
    }

    /// SIGKILLs a daemon.
    pub fn kill_daemon(&mut self, id: &str) {
        if let Some(mut child) = self.daemons.remove(id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. `STOP`) to a daemon, which stays listed as running.
    pub fn signal_daemon(&mut self, id: &str, signal: &str) {
        let child = self.daemons.get(id).expect("a running daemon");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {id}");
    }

    /// SIGTERMs a daemon and returns its exit code (waits up to 30 s).
    pub fn terminate_daemon(&mut self, id: &str) -> Option<i32> {
        if !self.daemons.contains_key(id) {
            return None;
        }
        self.signal_daemon(id, "TERM");
        let mut child = self.daemons.remove(id)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon {id} did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A direct NATS connection (for what the test does underneath the CLI), to any server.
    pub fn connect(&self) -> async_nats::Client {
        let urls = self.nats_urls();
        let auth = self.auth.clone();
        self.rt.block_on(async move {
            let mut options = async_nats::ConnectOptions::new();
            if let Some(i) = auth.iter().position(|a| a == "--user") {
                let password = auth
                    .iter()
                    .position(|a| a == "--password")
                    .map(|j| auth[j + 1].clone())
                    .unwrap_or_default();
                options = options.user_and_password(auth[i + 1].clone(), password);
            }
            if let Some(i) = auth.iter().position(|a| a == "--token") {
                options = options.token(auth[i + 1].clone());
            }
            options.connect(urls.as_slice()).await.unwrap()
        })
    }

    /// Publishes raw payloads on subjects through JetStream, [`PUBLISH_WINDOW`] in flight at
    /// once, with `Nats-Msg-Id` when given; waits until every one is stored.
    pub fn publish_raw(&self, messages: Vec<(String, Option<String>, Vec<u8>)>) {
        let client = self.connect();
        self.rt.block_on(async move {
            let js = async_nats::jetstream::new(client);
            let mut acks = Vec::new();
            for (subject, id, payload) in messages {
                let mut headers = HeaderMap::new();
                if let Some(id) = id {
                    headers.insert("Nats-Msg-Id", id.as_str());
                }
                acks.push(
                    js.publish_with_headers(subject, headers, payload.into())
                        .await
                        .unwrap(),
                );
                if acks.len() == PUBLISH_WINDOW {
                    for ack in acks.drain(..) {
                        ack.await.unwrap();
                    }
                }
            }
            for ack in acks {
                ack.await.unwrap();
            }
        });
    }

    /// Publishes CloudEvents JSON objects on `events.<type>`, de-duplicated by their source and
    /// id as a daemon's are (`Nats-Msg-Id`).
    pub fn publish_events(&self, events: &[Value]) {
        self.publish_raw(
            events
                .iter()
                .map(|e| {
                    (
                        format!("events.{}", e["type"].as_str().unwrap()),
                        Some(sandbus::event::dedup_key(
                            e["source"].as_str().unwrap(),
                            e["id"].as_str().unwrap(),
                        )),
                        e.to_string().into_bytes(),
                    )
                })
                .collect(),
        );
    }

    /// A guest's kv entries under `prefix` (namespace = component name).
    pub fn kv(&self, namespace: &str, prefix: &str) -> BTreeMap<String, String> {
        let client = self.connect();
        let namespace = namespace.to_owned();
        let prefix = prefix.to_owned();
        self.rt.block_on(async move {
            use futures::TryStreamExt as _;
            let js = async_nats::jetstream::new(client);
            let kv = js.get_key_value("sandbus-kv").await.unwrap();
            let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
            let mut out = BTreeMap::new();
            for key in keys {
                let Some(local) = key.strip_prefix(&format!("{namespace}.")) else {
                    continue;
                };
                if local.starts_with(&prefix)
                    && let Some(value) = kv.get(key.as_str()).await.unwrap()
                {
                    out.insert(
                        local.to_owned(),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
            }
            out
        })
    }

    /// One kv value of a guest, as text.
    pub fn kv_get(&self, namespace: &str, key: &str) -> Option<String> {
        let client = self.connect();
        let key = format!("{namespace}.{key}");
        self.rt.block_on(async move {
            let js = async_nats::jetstream::new(client);
            let kv = js.get_key_value("sandbus-kv").await.ok()?;
            kv.get(key)
                .await
                .unwrap()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        })
    }

    /// The dead letters of `listener`: (headers as a map, payload).
    pub fn dead_letters(&self, listener: &str) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
        let client = self.connect();
        let subject = format!("sandbus.dead-letter.{listener}");
        self.rt.block_on(async move {
            use futures::StreamExt as _;
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream("SANDBUS_DEAD_LETTERS").await.unwrap();
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::Config {
                    filter_subject: subject,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut out = Vec::new();
            let mut batch = consumer
                .fetch()
                .max_messages(10_000)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .unwrap();
            while let Some(Ok(message)) = batch.next().await {
                let headers = message
                    .headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            v.first().map(|v| v.to_string()).unwrap_or_default(),
                        )
                    })
                    .collect();
                out.push((headers, message.payload.to_vec()));
            }
            out
        })
    }

    /// `sandbus status NAME --json`.
    pub fn status(&self, listener: &str) -> Value {
        self.cli_json(&["status", listener])
    }

    /// Waits until the listener's consumer has nothing pending and nothing in flight.
    pub fn wait_drained(&mut self, listener: &str) {
        self.wait(&format!("{listener} to drain"), |c| {
            let out = c.cli(&["status", listener, "--json"]);
            serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|s| s["pending"] == 0 && s["in_flight"] == 0)
        });
    }

    /// The path of a file in this test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.daemons) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A guest component's path, as a string for the CLI.
pub fn guest(name: &str) -> String {
    super::support::guest_path(name)
        .to_str()
        .unwrap()
        .to_owned()
}

/// A `vm.started` / `vm.stopped` event for the billing listener.
pub fn vm_event(kind: &str, tenant: &str, instance: &str, at: u64) -> Value {
    let time = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(at));
    serde_json::json!({
        "specversion": "1.0", "id": format!("{kind}-{instance}"), "source": "/compute",
        "type": format!("vm.{kind}"), "time": time.to_string(),
        "datacontenttype": "application/json",
        "data": { "tenant": tenant, "instance": instance }
    })
}

/// `instances` VMs over three tenants (two events each, start and stop), and the billed
/// seconds per tenant they must add up to.
pub fn billing_scenario(instances: u64) -> (Vec<Value>, BTreeMap<String, u64>) {
    let mut events = Vec::new();
    let mut expected = BTreeMap::new();
    for i in 0..instances {
        let tenant = ["acme", "globex", "initech"][(i % 3) as usize];
        let start = 1_800_000_000 + i * 13;
        let stop = start + 10 + (i * 7) % 500;
        *expected.entry(tenant.to_owned()).or_default() += stop - start;
        events.push(vm_event("started", tenant, &format!("i-{i}"), start));
        events.push(vm_event("stopped", tenant, &format!("i-{i}"), stop));
    }
    (events, expected)
}

/// The billing listener's totals, per tenant.
pub fn billing_totals(cluster: &Cluster, listener: &str) -> BTreeMap<String, u64> {
    cluster
        .kv(listener, "total/")
        .into_iter()
        .map(|(k, v)| {
            (
                k.trim_start_matches("total/").to_owned(),
                v.parse().unwrap(),
            )
        })
        .collect()
}

/// Uploads the billing listener as `name` and subscribes it to `vm.*`. Its deadline is
/// raised to 10 s: the daemon under test is a debug build on a shared machine.
pub fn billing_listener(cluster: &Cluster, name: &str) {
    cluster.cli_ok(&[
        "upload",
        &guest("billing-listener"),
        "--name",
        name,
        "--grant",
        "publish=events.billing.>",
        "--limit",
        "timeout=10s",
    ]);
    cluster.cli_ok(&["subscribe", name, "--events", "vm.*", "--backoff", "100ms"]);
}

/// Writes `text` to a file in the test's directory; its path.
pub fn write(cluster: &Cluster, name: &str, bytes: &[u8]) -> String {
    let path: &Path = &cluster.path(name);
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}
