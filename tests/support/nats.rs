//! A real `nats-server` for the daemon tests: started on a free loopback port with JetStream
//! and a private store directory, stopped gracefully or killed, and restarted on the same port
//! with the same store, so a test can take the bus away under the daemon and bring it back
//! with its streams and key-value buckets intact.
//!
//! The binary is `$SANDBUS_NATS_SERVER` when set, else `nats-server` from `PATH`. Each server
//! gets its own temporary directory holding the JetStream store (`store/`) and the server's
//! output (`nats-server.log`, appended to by every start), removed when the [`NatsServer`] is
//! dropped. A start waits until the server logs `Server is ready` (JetStream is up by then,
//! streams recovered) and accepts TCP connections on its port.
//!
//! [`NatsCluster`] starts several such servers as the nodes of one NATS cluster with clustered
//! JetStream, and waits until it elected a meta leader and can replicate a stream on every node.
//!
//! Everything here panics on failure, with what failed and the tail of the server's log: it
//! is test code, and a panic is a failed test with its reason.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Environment variable naming the `nats-server` binary to run.
pub const NATS_SERVER_ENV: &str = "SANDBUS_NATS_SERVER";

/// How long a start may take until the server is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a start keeps retrying while the port is still held by someone else.
const PORT_BUSY_RETRY: Duration = Duration::from_secs(5);
/// Pause between two checks of a starting or stopping server.
const POLL: Duration = Duration::from_millis(20);
/// What the server logs once it serves clients (after JetStream has started).
const READY_LINE: &str = "Server is ready";
/// What the server logs when it cannot listen on its port.
const PORT_BUSY_LINE: &str = "address already in use";
/// How many lines of the log a panic message shows.
const TAIL_LINES: usize = 40;

/// A running (or stopped) `nats-server` with JetStream, on `127.0.0.1`.
///
/// The port and the store directory stay the same for the life of the value, across
/// [`stop`](Self::stop) and [`start_again`](Self::start_again). Dropping it kills the server
/// and removes its directory.
pub struct NatsServer {
    /// The binary run.
    binary: OsString,
    /// Extra server arguments, after the ones the harness sets.
    extra_args: Vec<String>,
    /// The client port on `127.0.0.1`.
    port: u16,
    /// The JetStream store directory (`-sd`), inside `dir`.
    store: PathBuf,
    /// The server's stdout and stderr, appended to by every start, inside `dir`.
    log: PathBuf,
    /// The running server, if any.
    child: Option<Child>,
    /// Holds the store and the log; removed on drop (after the server is killed).
    dir: tempfile::TempDir,
}

/// Why one attempt to launch the server did not give a ready server.
enum LaunchError {
    /// The port was taken; the log of this attempt.
    PortBusy(String),
    /// The server exited before it was ready; its status and the log of this attempt.
    Exited(ExitStatus, String),
}

impl NatsServer {
    /// Starts a server with JetStream on a free loopback port and waits until it is ready.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with extra server arguments, for example
    /// `&["--user", "u", "--pass", "p"]` or `&["--auth", "TOKEN"]`. They are passed again on
    /// every restart.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_on(free_port(), args)
    }

    /// [`start_with`](Self::start_with) on client port `port` (another free one if it turns
    /// out to be taken).
    fn start_on(port: u16, args: &[&str]) -> Self {
        let binary = std::env::var_os(NATS_SERVER_ENV)
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| OsString::from("nats-server"));
        let dir = tempfile::Builder::new()
            .prefix("sandbus-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for nats-server: {e}"));
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap_or_else(|e| {
            panic!(
                "cannot create the nats-server store directory {}: {e}",
                store.display()
            )
        });
        let mut server = NatsServer {
            binary,
            extra_args: args.iter().map(|arg| (*arg).to_string()).collect(),
            port,
            store,
            log: dir.path().join("nats-server.log"),
            child: None,
            dir,
        };
        // Nothing depends on the port yet: if another process took it since we picked it,
        // pick another one.
        server.launch(true);
        server
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port on `127.0.0.1`; the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`); the same across restarts. JetStream keeps its
    /// data in `jetstream/` below it.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The file receiving the server's stdout and stderr (every start appends to it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole server log so far, for a test's failure message.
    pub fn log(&self) -> String {
        read_log(&self.log, 0)
    }

    /// The process id of the running server, or `None` when it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is running (it has not exited, nor been stopped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Stops the server gracefully: SIGTERM, then waits for it to exit (JetStream flushes its
    /// store). If it is still running after 10 s it is killed (SIGKILL). Does nothing when the
    /// server is already stopped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = child.id().to_string();
        // The child is not reaped until we wait on it, so the pid cannot have been reused.
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(sent, Ok(status) if status.success()) {
            // It may have exited between the check and the signal; if not, it is killed below.
            eprintln!("nats-server harness: `kill -TERM {pid}` failed ({sent:?})");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => sleep(POLL),
                Ok(None) => {
                    eprintln!(
                        "nats-server harness: nats-server (pid {pid}) still runs {} s after \
                         SIGTERM; killing it",
                        STOP_TIMEOUT.as_secs()
                    );
                    kill_and_reap(&mut child);
                    return;
                }
                Err(e) => panic!("cannot wait for nats-server (pid {pid}) to exit: {e}"),
            }
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would: JetStream gets no chance to
    /// flush. Does nothing when the server is already stopped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts the stopped server again on the same port with the same store directory and
    /// arguments, and waits until it is ready. Retries for a few seconds while the port is
    /// still busy. Panics if the server is running.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "start_again: nats-server on port {} is still running; stop it first",
            self.port
        );
        // Reap an exited process we still hold.
        self.child = None;
        self.launch(false);
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again): same port, same store.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Launches the server and waits until it is ready, retrying while the port is busy (with
    /// a new port when `may_change_port`). Sets `self.child`; panics if it cannot.
    fn launch(&mut self, may_change_port: bool) {
        let deadline = Instant::now() + PORT_BUSY_RETRY;
        loop {
            match self.launch_once() {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(LaunchError::PortBusy(log)) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "nats-server could not listen on 127.0.0.1:{}: the port stayed busy \
                             for {} s; its log:\n{}",
                            self.port,
                            PORT_BUSY_RETRY.as_secs(),
                            tail(&log)
                        );
                    }
                    if may_change_port {
                        self.port = free_port();
                    }
                    sleep(Duration::from_millis(100));
                }
                Err(LaunchError::Exited(status, log)) => panic!(
                    "nats-server ({}) on port {} exited before it was ready ({status}); its \
                     log:\n{}",
                    self.binary.to_string_lossy(),
                    self.port,
                    tail(&log)
                ),
            }
        }
    }

    /// One attempt: spawns the server and waits until it logs that it is ready and accepts a
    /// TCP connection. Panics if that takes longer than [`READY_TIMEOUT`] (after killing it).
    fn launch_once(&self) -> Result<Child, LaunchError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open the nats-server log {}: {e}",
                    self.log.display()
                )
            });
        let offset = log.metadata().map(|meta| meta.len()).unwrap_or_else(|e| {
            panic!(
                "cannot stat the nats-server log {}: {e}",
                self.log.display()
            )
        });
        let stderr = clone_file(&log, &self.log);
        let port = self.port.to_string();
        let mut child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(&self.store)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server (`{}`): {e}; install nats-server or set \
                     {NATS_SERVER_ENV} to its path",
                    self.binary.to_string_lossy()
                )
            });
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        loop {
            let text = read_log(&self.log, offset);
            match child.try_wait() {
                Ok(Some(status)) => {
                    // Read again: the last lines may have landed after the first read.
                    let text = read_log(&self.log, offset);
                    return Err(if text.contains(PORT_BUSY_LINE) {
                        LaunchError::PortBusy(text)
                    } else {
                        LaunchError::Exited(status, text)
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    kill_and_reap(&mut child);
                    panic!("cannot check whether nats-server on port {port} runs: {e}");
                }
            }
            if text.contains(READY_LINE)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(child);
            }
            if started.elapsed() > READY_TIMEOUT {
                kill_and_reap(&mut child);
                panic!(
                    "nats-server on port {port} was not ready (no `{READY_LINE}` in its log and a \
                     TCP connection) after {} s; its log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    tail(&read_log(&self.log, offset))
                );
            }
            sleep(POLL);
        }
    }
}

impl Drop for NatsServer {
    /// Kills the server and waits for it, before the directory is removed.
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a new [`NatsCluster`] may take, once every node is ready, to elect its JetStream
/// meta leader and accept a stream replicated on every node.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one request of a readiness probe of a new [`NatsCluster`] may take.
const CLUSTER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two readiness probes of a new [`NatsCluster`].
const CLUSTER_PROBE_PAUSE: Duration = Duration::from_millis(200);
/// The stream a new [`NatsCluster`] must create (then deletes) to count as ready.
const CLUSTER_PROBE_STREAM: &str = "HARNESS_CLUSTER_READY_PROBE";
/// The cluster name (`--cluster_name`) of every [`NatsCluster`]; clusters of one test run never
/// meet, as each one routes only to its own ports.
const CLUSTER_NAME: &str = "sandbus-test";

/// A NATS cluster: `nats-server` nodes with clustered JetStream, all on `127.0.0.1`.
///
/// Node `i` (from 0) is a [`NatsServer`] of its own (client port, store directory, log), named
/// `n<i+1>` (`--server_name`), listening for routes on a port of its own (`--cluster`) and
/// routing to every other node (`--routes`). [`start`](Self::start) returns once JetStream
/// works across the cluster: every node answers `$JS.API.INFO`, and a stream with one replica
/// per node could be created (then it is deleted), so a meta leader is elected and every node
/// is a peer that can hold a replica.
///
/// Dropping it kills every node and removes their directories.
pub struct NatsCluster {
    /// The nodes, `n1` first.
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a cluster of `nodes` nodes (at least 2) and waits until JetStream works across
    /// it (see the type's docs).
    pub fn start(nodes: usize) -> Self {
        assert!(
            nodes >= 2,
            "a NATS cluster needs at least 2 nodes, not {nodes}"
        );
        // Client and route ports picked together, so that none is picked twice.
        let ports = free_ports(2 * nodes);
        let (client_ports, route_ports) = ports.split_at(nodes);
        let route_url = |port: &u16| format!("nats://127.0.0.1:{port}");
        let started = (0..nodes)
            .map(|node| {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != node)
                    .map(|(_, port)| route_url(port))
                    .collect();
                let name = format!("n{}", node + 1);
                let listen = route_url(&route_ports[node]);
                let routes = routes.join(",");
                NatsServer::start_on(
                    client_ports[node],
                    &[
                        "--cluster",
                        &listen,
                        "--routes",
                        &routes,
                        "--cluster_name",
                        CLUSTER_NAME,
                        "--server_name",
                        &name,
                    ],
                )
            })
            .collect();
        let cluster = NatsCluster { nodes: started };
        cluster.wait_for_jetstream();
        cluster
    }

    /// The client URL of node `node` (from 0), `nats://127.0.0.1:<port>`.
    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    /// The client URL of every node, `n1` first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Node `node` (from 0), to stop, kill or restart it.
    pub fn node(&mut self, node: usize) -> &mut NatsServer {
        &mut self.nodes[node]
    }

    /// The nodes, `n1` first, for an owner that keeps them (they still form the cluster).
    pub fn into_nodes(self) -> Vec<NatsServer> {
        self.nodes
    }

    /// The last lines of every node's log, for a failure message.
    pub fn log_tails(&self) -> String {
        log_tails(&self.nodes)
    }

    /// Waits until JetStream works across the cluster (see the type's docs); panics with every
    /// node's log after [`CLUSTER_READY_TIMEOUT`].
    fn wait_for_jetstream(&self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a runtime to probe the NATS cluster: {e}"));
        let urls = self.urls();
        let replicas = self.nodes.len();
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let last_error = runtime.block_on(async {
            loop {
                let error = match probe_jetstream(&urls, replicas).await {
                    Ok(()) => return None,
                    Err(error) => error,
                };
                if Instant::now() >= deadline {
                    return Some(error);
                }
                tokio::time::sleep(CLUSTER_PROBE_PAUSE).await;
            }
        });
        if let Some(error) = last_error {
            panic!(
                "the NATS cluster ({}) did not get JetStream working within {} s; last \
                 error: {error}\n{}",
                urls.join(", "),
                CLUSTER_READY_TIMEOUT.as_secs(),
                self.log_tails()
            );
        }
    }
}

/// One readiness probe of a cluster: `$JS.API.INFO` on every node in `urls`, then a stream
/// with `replicas` replicas created through the first node and deleted. What failed, if any.
async fn probe_jetstream(urls: &[String], replicas: usize) -> Result<(), String> {
    let mut first = None;
    for url in urls {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url.as_str())
            .await
            .map_err(|e| format!("connect to {url}: {e}"))?;
        // Short: right after the election, a request may go unanswered; the next probe
        // comes soon.
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(CLUSTER_PROBE_TIMEOUT)
            .build(client);
        js.query_account()
            .await
            .map_err(|e| format!("$JS.API.INFO on {url}: {e}"))?;
        first.get_or_insert(js);
    }
    let js = first.ok_or("no node to probe")?;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: CLUSTER_PROBE_STREAM.to_owned(),
        subjects: vec!["harness.cluster-ready-probe".to_owned()],
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create an R{replicas} stream: {e}"))?;
    js.delete_stream(CLUSTER_PROBE_STREAM)
        .await
        .map_err(|e| format!("delete the R{replicas} probe stream: {e}"))?;
    Ok(())
}

/// The last lines of the logs of `nodes`, each under a header naming its port.
pub fn log_tails<'a>(nodes: impl IntoIterator<Item = &'a NatsServer>) -> String {
    nodes
        .into_iter()
        .map(|node| {
            format!(
                "--- nats-server on port {} ---\n{}",
                node.port(),
                tail(&node.log())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Ports on `127.0.0.1` that were free a moment ago, all different (bound together, read,
/// released).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|addr| addr.port())
                .unwrap_or_else(|e| panic!("cannot read the address of a bound port: {e}"))
        })
        .collect()
}

/// A port on `127.0.0.1` that was free a moment ago (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
}

/// A second handle on the log file, for the server's stderr.
fn clone_file(file: &File, path: &Path) -> File {
    file.try_clone().unwrap_or_else(|e| {
        panic!(
            "cannot duplicate the handle of the nats-server log {}: {e}",
            path.display()
        )
    })
}

/// The log from byte `offset` on, as text (empty if it cannot be read).
fn read_log(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last [`TAIL_LINES`] lines of `log`.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    if lines.is_empty() {
        return "(empty)".to_string();
    }
    lines[from..].join("\n")
}

/// SIGKILL, then wait, so no zombie is left behind. Errors are ignored: the process may
/// already be gone.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
