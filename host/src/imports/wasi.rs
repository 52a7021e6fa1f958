//! The locked-down WASI a guest gets: clocks, random, and stdout/stderr into its log.
//!
//! Components built with `cargo build --target wasm32-wasip2` import `wasi:cli`, `wasi:io`,
//! `wasi:filesystem`, `wasi:sockets`... even when they never use them, so the host links the
//! whole of WASI 0.2 and makes each capability empty instead: no preopened directory (every
//! path fails), no environment variables, no arguments, stdin closed, TCP and UDP disabled,
//! every socket address denied, name lookup disabled. Clocks and random are real. What the
//! guest prints goes line by line into its [`InvocationLog`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::log::{InvocationLog, LogOrigin};

/// Largest `get-random-bytes` request served, so a guest can't make the host allocate
/// beyond what it could receive anyway.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Builds the WASI context of one invocation.
pub fn locked_down_ctx(log: &InvocationLog) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(GuestOutput::new(log.clone(), LogOrigin::Stdout))
        .stderr(GuestOutput::new(log.clone(), LogOrigin::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .max_random_size(MAX_RANDOM_BYTES)
        .build()
}

/// A guest's stdout or stderr, written into its log.
#[derive(Clone)]
pub struct GuestOutput {
    log: InvocationLog,
    origin: LogOrigin,
}

impl GuestOutput {
    /// Output that lands in `log`, tagged with `origin`.
    pub fn new(log: InvocationLog, origin: LogOrigin) -> Self {
        Self { log, origin }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.write_output(self.origin, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.log.write_output(self.origin, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
