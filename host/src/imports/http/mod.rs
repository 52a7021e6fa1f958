//! `wasi:http` (0.2), present and denied: a guest may import it, and every outgoing request
//! it sends fails with `HTTP-request-denied`, written to its log.
//!
//! Why present at all: componentize-js links `wasi:http/types` and `outgoing-handler` into
//! every component (for `fetch`), used or not, and a component whose imports a host does not
//! provide cannot be instantiated. So, as with sockets, the interface is there and empty: the
//! default output of the JavaScript toolchain runs unchanged, and a guest that does call
//! `fetch` gets an error it can handle (`NetworkError` in JavaScript), never the network.
//! Header and body resources work, but small: they are host memory the guest's memory cap
//! does not see, so a header map holds at most [`FIELD_BYTES`] and a body buffers at most
//! [`BODY_CHUNK`] bytes ahead (with the resource table's 4,096 handles, a guest can hold about
//! 32 MiB of each at most). Only sending is refused. A future grant may allow named hosts.

use http_body_util::BodyExt as _;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::log::{InvocationLog, LogLevel, LogOrigin};
use crate::sandbox::InvocationState;

/// Largest header map (in `wasi:http`'s own measure of a map's memory).
pub const FIELD_BYTES: usize = 8 << 10;
/// Largest write into an outgoing body; one such write is buffered per body.
pub const BODY_CHUNK: usize = 4 << 10;

/// Per-invocation `wasi:http` state: the library's context and the hooks that deny.
pub struct HttpState {
    ctx: WasiHttpCtx,
    hooks: DenyAll,
}

impl HttpState {
    /// State whose denials are written to `log`.
    pub fn new(log: InvocationLog) -> Self {
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(FIELD_BYTES);
        Self {
            ctx,
            hooks: DenyAll { log },
        }
    }
}

/// Refuses every outgoing request, saying so in the guest's log.
struct DenyAll {
    log: InvocationLog,
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for DenyAll {
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        self.log.write(
            LogLevel::Warn,
            LogOrigin::Host,
            format!(
                "outgoing HTTP request denied: {} {} (sandbus guests have no network)",
                request.method(),
                crate::text::echo(&request.uri().to_string())
            ),
        );
        // The body is read to its end before the denial: a guest writing a request body
        // (componentize-js's `fetch` with a body) must see its writes succeed and the
        // request fail, not its body stream break under it. A body never finished is cut
        // off by the call's deadline like any other wait.
        let mut body = request.into_body();
        Box::new(async move {
            while let Some(Ok(_)) = body.frame().await {}
            Err(HttpError::HttpRequestDenied)
        })
    }
}

impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

/// Adds `wasi:http/types` and `wasi:http/outgoing-handler` (0.2) to `linker`.
pub fn add_to_linker(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}
