//! The processes of a soak run: a NATS cluster (the end-to-end tests' [`NatsCluster`], so the
//! same server configuration: routes, cluster name, JetStream on every node), the daemons
//! (streams and buckets replicated on every node, each daemon given every node, its own
//! first), and the CLI against them. It keeps each process's CPU time across its restarts,
//! and kills everything when dropped: at the end, on a failure, or on Ctrl-C (see
//! [`check_interrupted`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::nats::NatsCluster;
use crate::support::{cpu_micros, sandbus_binary};

/// How long a daemon may take to be listed by `sandbus hosts` after it starts.
const HOST_PATIENCE: Duration = Duration::from_secs(120);
/// How many lines of each log a failure message shows.
const TAIL_LINES: usize = 30;

/// Set once Ctrl-C (SIGINT) or SIGTERM reached the soak; see [`check_interrupted`].
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Panics when the soak was interrupted, so that unwinding drops the [`Fleet`] and with it
/// every process and directory. Every wait of the soak calls it between two polls.
pub fn check_interrupted() {
    if INTERRUPTED.load(Ordering::Relaxed) {
        panic!("interrupted: every daemon and nats-server is being stopped");
    }
}

/// One daemon of the fleet, across its restarts.
struct DaemonSlot {
    /// Its host id, `h1`, `h2`...
    id: String,
    /// The NATS URLs it is given, its own node first.
    nats: String,
    /// The running process, if any.
    child: Option<Child>,
    /// CPU µs used by its earlier (killed) processes.
    earlier_cpu: f64,
}

/// The NATS cluster and the daemons of a soak run.
pub struct Fleet {
    /// The NATS nodes, `n1` first.
    pub nats: NatsCluster,
    /// Daemon `i` prefers node `i`.
    daemons: Vec<DaemonSlot>,
    /// CPU µs used by earlier processes of each node (before a restart).
    node_earlier_cpu: Vec<f64>,
    /// The daemons' data directories and logs, and their config file.
    dir: PathBuf,
    /// The daemons' config file (`[events] replicas` = one replica per node).
    config: PathBuf,
}

impl Fleet {
    /// Starts a cluster of `nodes` nodes and `daemons` daemons (daemon `i` on node
    /// `i % nodes` first), with their files in `dir`, and waits until every daemon is listed.
    pub fn start(dir: &Path, nodes: usize, daemons: usize) -> Self {
        let nats = NatsCluster::start(nodes);
        let config = dir.join("sandbus.toml");
        std::fs::write(&config, format!("[events]\nreplicas = {nodes}\n"))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let urls = nats.urls();
        let daemons = (0..daemons)
            .map(|i| {
                let mut order = urls.clone();
                order.rotate_left(i % nodes);
                DaemonSlot {
                    id: format!("h{}", i + 1),
                    nats: order.join(","),
                    child: None,
                    earlier_cpu: 0.0,
                }
            })
            .collect();
        let mut fleet = Self {
            nats,
            daemons,
            node_earlier_cpu: vec![0.0; nodes],
            dir: dir.to_owned(),
            config,
        };
        for daemon in 0..fleet.daemons.len() {
            fleet.spawn_daemon(daemon);
        }
        for daemon in 0..fleet.daemons.len() {
            fleet.wait_for_host(daemon);
        }
        fleet
    }

    /// Every node's client URL, comma separated (what the CLI is given).
    pub fn urls(&self) -> String {
        self.nats.urls().join(",")
    }

    /// The host id of daemon `daemon`.
    pub fn daemon_id(&self, daemon: usize) -> &str {
        &self.daemons[daemon].id
    }

    /// Starts daemon `daemon` (again), without waiting for it; its log is appended to
    /// `<id>.log`. Each daemon has its own data directory and compile cache, as on its own
    /// machine; a restarted one finds the billing listener compiled by its earlier life.
    pub fn spawn_daemon(&mut self, daemon: usize) {
        let slot = &self.daemons[daemon];
        let log_path = self.dir.join(format!("{}.log", slot.id));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let child = Command::new(sandbus_binary())
            .args(["daemon", "--host-id", &slot.id, "--nats", &slot.nats])
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.join(&slot.id))
            .args(["--shutdown-grace", "5s"])
            .env("SANDBUS_LOG", "warn")
            .env_remove("SANDBUS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the daemon `{}`: {e}; build it (cargo build --release -p \
                     sandbus) or point SANDBUS_BINARY at one",
                    sandbus_binary().display()
                )
            });
        self.daemons[daemon].child = Some(child);
    }

    /// Waits until `sandbus hosts` lists daemon `daemon`; fails the run after
    /// [`HOST_PATIENCE`].
    pub fn wait_for_host(&self, daemon: usize) {
        let id = &self.daemons[daemon].id;
        let deadline = Instant::now() + HOST_PATIENCE;
        loop {
            check_interrupted();
            let listed = self.cli(&["hosts", "--json"]).ok().is_some_and(|out| {
                serde_json::from_str::<serde_json::Value>(&out)
                    .ok()
                    .and_then(|hosts| hosts.as_array().cloned())
                    .is_some_and(|hosts| hosts.iter().any(|h| h["id"] == id.as_str()))
            });
            if listed {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "daemon {id} was not listed by `sandbus hosts` within {} s of its start",
                    HOST_PATIENCE.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGKILLs daemon `daemon`, keeping the CPU time it used.
    pub fn kill_daemon(&mut self, daemon: usize) {
        let slot = &mut self.daemons[daemon];
        if let Some(mut child) = slot.child.take() {
            slot.earlier_cpu += cpu_micros(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts node `node` the way an operator would: SIGTERM, wait for it to exit, start it
    /// again with the same store and port. Returns once it serves clients again.
    pub fn restart_node(&mut self, node: usize) {
        if let Some(pid) = self.nats.node(node).pid() {
            self.node_earlier_cpu[node] += cpu_micros(pid);
        }
        self.nats.node(node).restart();
    }

    /// The CPU time each process has used so far, in µs, earlier lives included:
    /// (name, µs), the daemons first, then the nodes.
    pub fn cpu(&mut self) -> Vec<(String, f64)> {
        let mut all: Vec<(String, f64)> = self
            .daemons
            .iter()
            .map(|slot| {
                let now = slot.child.as_ref().map_or(0.0, |c| cpu_micros(c.id()));
                (format!("daemon {}", slot.id), slot.earlier_cpu + now)
            })
            .collect();
        for node in 0..self.node_earlier_cpu.len() {
            let now = self.nats.node(node).pid().map_or(0.0, cpu_micros);
            all.push((
                format!("nats-server n{}", node + 1),
                self.node_earlier_cpu[node] + now,
            ));
        }
        all
    }

    /// Runs the CLI against every node; its stdout, or what went wrong.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(sandbus_binary())
            .args(args)
            .args(["--nats", &self.urls()])
            .env_remove("SANDBUS_LOG")
            .env_remove("SANDBUS_CONFIG")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", sandbus_binary().display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "sandbus {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// [`cli`](Self::cli), failing the run when the command fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        self.cli(args).unwrap_or_else(|e| self.fail(&e))
    }

    /// Fails the run: panics with `message` and the last lines of every daemon's and node's
    /// log.
    pub fn fail(&self, message: &str) -> ! {
        // What failed after Ctrl-C failed because of it.
        check_interrupted();
        let daemons: Vec<String> = self
            .daemons
            .iter()
            .map(|slot| {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", slot.id)))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(TAIL_LINES);
                format!("--- daemon {} ---\n{}", slot.id, lines[from..].join("\n"))
            })
            .collect();
        panic!(
            "soak failed: {message}\n{}\n{}",
            daemons.join("\n"),
            self.nats.log_tails()
        );
    }
}

impl Drop for Fleet {
    /// Kills every daemon; the nodes are killed (and their stores removed) when `nats` drops.
    fn drop(&mut self) {
        for slot in &mut self.daemons {
            if let Some(mut child) = slot.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
