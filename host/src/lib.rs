//! sandbus: run untrusted WebAssembly components next to real hardware, wired to a bus.
//!
//! The crate is the `sandbus` daemon and CLI, and a library with three visible boundaries:
//!
//! - [`sandbox`]: the wasmtime engine, limits, compilation, instantiation and calls. It
//!   knows nothing of the bus or of devices.
//! - [`imports`]: the host side of each WIT interface a guest imports (`log`, `bus`, `kv`,
//!   and a locked-down WASI), each behind a small trait the outside plugs into.
//! - the bus (NATS) and [`devices`] (USB, real through libusb or simulated from a TOML
//!   file), which implement those traits.
//!
//! Data flows one way: message → [`event::CanonicalEvent`] → dispatcher → sandbox call →
//! ack. [`dev`] is the local loop that runs guests with in-memory capabilities.

#![warn(missing_docs)]

pub mod api;
pub mod bindings;
pub mod bus;
pub mod component_config;
pub mod daemon;
pub mod dev;
pub mod devices;
pub mod error;
pub mod event;
pub mod grant;
pub mod imports;
pub mod invocation;
pub mod sandbox;
pub mod subject;
pub mod subject_index;
pub mod text;
