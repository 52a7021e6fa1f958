//! `wasi:http` (0.2), present and denied: a guest may import it, and every outgoing request
//! it sends fails with `HTTP-request-denied`, written to its log.
//!
//! Why present at all: componentize-js links `wasi:http/types` and `outgoing-handler` into
//! every component (for `fetch`), used or not, and a component whose imports a host does not
//! provide cannot be instantiated. So, as with sockets, the interface is there and empty: the
//! default output of the JavaScript toolchain runs unchanged, and a guest that does call
//! `fetch` gets an error it can handle (`NetworkError` in JavaScript), never the network.
//! Header and body resources work (they are only memory, bounded by the resource table's cap
//! and `wasi:http`'s own field size limit); only sending is refused. A future grant may allow
//! named hosts.

use http_body_util::BodyExt as _;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::log::{InvocationLog, LogLevel, LogOrigin};
use crate::sandbox::InvocationState;

/// Per-invocation `wasi:http` state: the library's context and the hooks that deny.
pub struct HttpState {
    ctx: WasiHttpCtx,
    hooks: DenyAll,
}

impl HttpState {
    /// State whose denials are written to `log`.
    pub fn new(log: InvocationLog) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
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
