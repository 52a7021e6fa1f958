//! Host implementations of the WIT interfaces guests import: one module per interface.
//!
//! Each module owns exactly one interface: a per-invocation state struct, a `HasData` marker,
//! a documented `add_to_linker`, and `host.rs` with the `Host` impl. What an interface needs
//! from the outside world (the bus, the key-value store, where log lines go) comes in through
//! a small `Send + Sync` trait, so the daemon plugs in NATS and the dev loop plugs in memory,
//! and the host functions can be tested by calling them directly, without wasm.

pub mod bus;
pub mod http;
pub mod kv;
pub mod kv_read;
pub mod log;
pub mod usb;
pub mod wasi;
pub mod wasi_config;
pub mod wasi_keyvalue;
pub mod wasi_logging;
pub mod wasmcloud_messaging;
