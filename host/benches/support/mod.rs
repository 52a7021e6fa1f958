//! What the end-to-end benchmarks share: a private `nats-server`, the release daemon, the
//! CLI, and the counters read from `/proc` and from a consumer's ack floor.

#![allow(
    dead_code,
    reason = "each benchmark binary uses a different part of this module"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

pub mod billing;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The `sandbus` binary the benchmarks run: `$SANDBUS_BINARY` when set (a release build made
/// elsewhere, to bench it without building here), else the one cargo built for the bench.
pub fn sandbus_binary() -> PathBuf {
    std::env::var_os("SANDBUS_BINARY")
        .filter(|path| !path.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_sandbus")),
            PathBuf::from,
        )
}

/// A built guest component (`scripts/build-guests.sh`).
pub fn guest(name: &str) -> PathBuf {
    let path = repo().join("target/guests").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "build the guests first: scripts/build-guests.sh ({} is missing)",
        path.display()
    );
    path
}

/// Rounds from `$SANDBUS_BENCH_ROUNDS`, else `default`.
pub fn rounds(default: usize) -> usize {
    std::env::var("SANDBUS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// A private `nats-server -js` on a free loopback port, killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = std::env::var("SANDBUS_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon under test ([`sandbus_binary`]), host id `bench`.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    /// Starts the daemon; `$SANDBUS_BENCH_WRAP` (e.g. `perf record -g -o daemon.perf --`)
    /// is put in front of the command, to profile it.
    pub fn start(url: &str, data: &Path) -> Self {
        Self::start_with(url, data, &[])
    }

    /// [`Self::start`] with more daemon flags, `extra`.
    pub fn start_with(url: &str, data: &Path, extra: &[&str]) -> Self {
        Self::start_as(url, data, "bench", extra)
    }

    /// [`Self::start_with`] under the host id `host`.
    pub fn start_as(url: &str, data: &Path, host: &str, extra: &[&str]) -> Self {
        let wrap = std::env::var("SANDBUS_BENCH_WRAP").unwrap_or_default();
        let mut words: Vec<String> = wrap.split_whitespace().map(str::to_owned).collect();
        words.push(sandbus_binary().to_string_lossy().into_owned());
        let child = Command::new(&words[0])
            .args(&words[1..])
            .args(["daemon", "--nats", url, "--host-id", host, "--data-dir"])
            .arg(data)
            .args(extra)
            .env(
                "SANDBUS_LOG",
                std::env::var("SANDBUS_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child }
    }

    /// SIGTERM, then waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Runs the CLI against `url`; its stdout. Panics with its stderr when it fails.
pub fn cli(url: &str, args: &[&str]) -> String {
    let out = Command::new(sandbus_binary())
        .args(args)
        .args(["--nats", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sandbus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the daemon `bench` is listed by `sandbus hosts`.
pub fn wait_for_host(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(sandbus_binary())
            .args(["hosts", "--json", "--nats", url])
            .output()
            .unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"bench\"") {
            return;
        }
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// CPU time (user + system) a process has used so far, in µs, from `/proc/<pid>/stat`.
pub fn cpu_micros(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The command name (field 2) may hold spaces; fields after its closing paren are fixed.
    let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(f64::NAN);
    // Linux reports in clock ticks of 1/100 s on every platform sandbus runs on.
    ticks * 10_000.0
}

/// Publishes `events` (subject, id, body) with their ids as `Nats-Msg-Id`, acks awaited in
/// windows of 4096.
pub async fn publish_all(js: &jetstream::Context, events: Vec<(String, String, Vec<u8>)>) {
    let mut acks = Vec::with_capacity(events.len().min(4096));
    for (subject, id, body) in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        acks.push(
            js.publish_with_headers(subject, headers, body.into())
                .await
                .unwrap(),
        );
        if acks.len() >= 4096 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// How fast a consumer drained, from its first ack to its last.
pub struct Drain {
    /// Events per second.
    pub rate: f64,
    /// CPU µs per event of each process watched.
    pub cpu_per_event: Vec<f64>,
}

/// Polls `consumer` until `total` messages are acked and nothing is pending; the rate from
/// the first ack seen, and the CPU each of `pids` used per event meanwhile.
pub async fn drain(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    total: u64,
    pids: &[u32],
) -> Drain {
    let stream = js.get_stream(stream).await.unwrap();
    let mut first: Option<(Instant, u64, Vec<f64>)> = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let info = stream.consumer_info(consumer).await.unwrap();
        let acked = info.ack_floor.consumer_sequence;
        let now = Instant::now();
        if first.is_none() && acked > 0 {
            first = Some((now, acked, pids.iter().map(|p| cpu_micros(*p)).collect()));
        }
        if info.num_pending == 0 && info.num_ack_pending == 0 && acked >= total {
            let (t0, a0, cpu0) = first.unwrap_or((now, 0, vec![0.0; pids.len()]));
            let secs = now.duration_since(t0).as_secs_f64().max(1e-6);
            let events = (total - a0).max(1) as f64;
            return Drain {
                rate: (total - a0) as f64 / secs,
                cpu_per_event: pids
                    .iter()
                    .zip(cpu0)
                    .map(|(p, c0)| (cpu_micros(*p) - c0) / events)
                    .collect(),
            };
        }
        assert!(now < deadline, "the consumer did not drain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
