//! `sandbus:host/kv`: each component's private key-value space.
//!
//! The host functions (in `host.rs`) validate keys and value sizes and scope every key to the
//! calling component's namespace; the storage itself is a [`KvStore`]: [`MemoryKv`] for the
//! dev loop and tests, a NATS KV bucket in the daemon. A guest cannot name another
//! component's namespace: it only ever passes the key, the host adds the namespace.

mod host;
mod memory;

pub use host::MAX_LISTED_KEYS;

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use crate::bindings::kv as wit;
pub use memory::MemoryKv;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Why the store could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvStoreError {
    /// The store is unreachable or failed; retrying later may work.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
}

/// How much of a component's key-value space is used, and by one key: what a quota is
/// checked against. An entry's size is its key's length plus its value's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvFootprint {
    /// Bytes held by the namespace, keys and values.
    pub bytes: u64,
    /// Keys held by the namespace.
    pub keys: u64,
    /// Bytes held by the key asked about, if it holds a value.
    pub key_bytes: Option<u64>,
}

/// A component's key-value quota (its `kv-bytes` and `kv-keys` limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Most bytes, keys and values.
    pub bytes: u64,
    /// Most keys.
    pub keys: u64,
}

impl KvQuota {
    /// No quota: the dev loop's default when none is given.
    pub const NONE: KvQuota = KvQuota {
        bytes: u64::MAX,
        keys: u64::MAX,
    };
}

/// Storage behind the `kv` interface. Every call names the component's namespace; keys are
/// already validated. Each operation must be atomic on its key.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync {
    /// The value under `key`.
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvStoreError>;
    /// Stores `value`, replacing what was there.
    async fn set(&self, namespace: &str, key: &str, value: Vec<u8>) -> Result<(), KvStoreError>;
    /// Removes `key`; whether it existed.
    async fn delete(&self, namespace: &str, key: &str) -> Result<bool, KvStoreError>;
    /// Replaces the value only if it currently equals `expected` (`None`: absent).
    async fn compare_and_swap(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvStoreError>;
    /// Keys starting with `prefix`, in byte order.
    async fn list_keys(&self, namespace: &str, prefix: &str) -> Result<Vec<String>, KvStoreError>;
    /// How much of `namespace` is used, and by `key`. May lag a moment behind writes made
    /// elsewhere (another host's): a quota holds to within the writes in flight at once.
    async fn footprint(&self, namespace: &str, key: &str) -> Result<KvFootprint, KvStoreError>;
}

/// What is wrong with a key or a `list-keys` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyErrorKind {
    /// The key is empty.
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] bytes.
    TooLong,
    /// The key has a character outside `[A-Za-z0-9._=/-]`.
    Character,
    /// The key starts or ends with `.`, or has `..`.
    EmptyPart,
    /// The prefix has characters no key can have.
    Prefix,
}

/// A key or prefix no store can hold; the message says what is wrong (guests get it as
/// `invalid-key`).
pub type KeyError = crate::error::Error<KeyErrorKind>;

/// Checks a key: non-empty, at most [`MAX_KEY_LEN`] bytes, `[A-Za-z0-9._=/-]` only, and not
/// starting or ending with `.` (the rules of a NATS KV key, so every store can hold it).
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    let invalid = |kind, message: String| Err(KeyError::new(kind, message));
    if key.is_empty() {
        return invalid(KeyErrorKind::Empty, "the key is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return invalid(
            KeyErrorKind::TooLong,
            format!("the key is longer than {MAX_KEY_LEN} bytes"),
        );
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '/' | '-')))
    {
        return invalid(
            KeyErrorKind::Character,
            format!("the key `{key}` has the character {c:?}; use [A-Za-z0-9._=/-]"),
        );
    }
    if key.starts_with('.') || key.ends_with('.') || key.contains("..") {
        return invalid(
            KeyErrorKind::EmptyPart,
            format!("the key `{key}` has an empty `.`-separated part"),
        );
    }
    Ok(())
}

/// Checks a `list-keys` prefix: empty, or a key being typed (the key characters, and it may
/// end in `.` or `/`).
pub fn validate_prefix(prefix: &str) -> Result<(), KeyError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let probe = format!("{}x", prefix.trim_start_matches('.'));
    if prefix.starts_with('.') || validate_key(&probe).is_err() {
        return Err(KeyError::new(
            KeyErrorKind::Prefix,
            format!(
                "the prefix `{}` has characters a key can't have",
                prefix.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// Per-invocation state of the `kv` interface.
pub struct KvState {
    /// The storage.
    pub store: Arc<dyn KvStore>,
    /// The calling component's namespace.
    pub namespace: Arc<str>,
    /// Largest value accepted, in bytes.
    pub max_value: u64,
    /// How much the namespace may hold.
    pub quota: KvQuota,
}

/// `HasData` marker: the `kv` host functions see a [`KvState`].
pub struct Kv;

impl HasData for Kv {
    type Data<'a> = &'a mut KvState;
}

/// Adds `sandbus:host/kv` to `linker`; `get` finds the invocation's [`KvState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut KvState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Kv>(linker, get)
}
