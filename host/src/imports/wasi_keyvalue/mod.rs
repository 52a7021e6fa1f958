//! `wasi:keyvalue` (`store`, `atomics`, `batch`; 0.2.0-draft): the standard key-value
//! interfaces, on the component's own kv space, so a component written for wasmCloud's or
//! Spin's key-value runs unchanged.
//!
//! - **A bucket is a prefix.** `open("audit")` gives the keys `audit/<key>` of the
//!   component's space; `open("")` the whole space (the keys `sandbus:host/kv` sees). An
//!   identifier is a key segment: `[A-Za-z0-9._=-]`, no `/`.
//! - **The same rules as `kv`.** Every operation goes through `sandbus:host/kv`'s host
//!   functions: key and value checks, the space's quota, reads from the daemon's copy,
//!   compare-and-swap for `increment`. Their errors become `error::other` with the same words.
//! - **`list-keys`** pages through the bucket's keys in byte order, [`PAGE`] at a time; the
//!   cursor is the number of keys already returned. Like `kv.list-keys`, it sees at most the
//!   first 10,000 keys.
//! - **`batch`** runs the keys one after another: not atomic (the proposal allows that); a
//!   failure stops it. A call names at most [`MAX_BATCH_KEYS`] keys, and `get-many` returns
//!   at most [`MAX_BATCH_BYTES`] of values (the same key named many times counts each time).

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::kv::KvState;
use crate::bindings::kv::{Host as KvHost, KvError};
use crate::bindings::wasi_keyvalue::wasi::keyvalue::{atomics, batch, store};

/// Keys one `list-keys` page holds.
pub const PAGE: usize = 1000;
/// Most keys one `batch` call names.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Most bytes of values one `get-many` returns: the host holds them all before the guest
/// gets them, and its memory cap does not see them.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// An open bucket: the prefix of its keys in the component's space.
#[derive(Debug)]
pub struct Bucket {
    prefix: String,
}

impl Bucket {
    /// The bucket `identifier`, or why it cannot be one.
    fn open(identifier: &str) -> Result<Self, String> {
        if identifier.is_empty() {
            return Ok(Self {
                prefix: String::new(),
            });
        }
        if identifier.contains('/') {
            return Err(format!(
                "bucket `{}`: an identifier is one key segment, without `/`",
                crate::text::echo(identifier)
            ));
        }
        super::kv::validate_key(identifier)
            .map_err(|e| format!("bucket `{}`: {}", crate::text::echo(identifier), e.message))?;
        Ok(Self {
            prefix: format!("{identifier}/"),
        })
    }

    /// The key in the component's space.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// What the host functions see: the component's kv state and the resource table the
/// buckets live in.
pub struct WasiKeyValue<'a> {
    /// The component's kv space, with its checks and quota.
    pub kv: &'a mut KvState,
    /// The invocation's resource table.
    pub table: &'a mut ResourceTable,
}

/// `HasData` marker for the `wasi:keyvalue` host functions.
struct WasiKv;

impl HasData for WasiKv {
    type Data<'a> = WasiKeyValue<'a>;
}

/// A `kv` error in the words `wasi:keyvalue` has for it.
fn other(error: KvError) -> store::Error {
    store::Error::Other(match error {
        KvError::InvalidKey(why) => format!("invalid key: {why}"),
        KvError::ValueTooLarge(max) => format!("the value is larger than {max} bytes"),
        KvError::NotANumber => "the value is not a number".into(),
        KvError::Overflow => "the counter would overflow".into(),
        KvError::Unavailable(why) => why,
    })
}

/// One page of `keys` (a bucket's keys, prefix stripped) from `cursor`.
fn page(keys: Vec<String>, cursor: Option<u64>) -> store::KeyResponse {
    let start = cursor
        .and_then(|c| usize::try_from(c).ok())
        .unwrap_or(0)
        .min(keys.len());
    let end = start.saturating_add(PAGE).min(keys.len());
    store::KeyResponse {
        cursor: (end < keys.len()).then_some(end as u64),
        keys: keys[start..end].to_vec(),
    }
}

type Outcome<T> = wasmtime::Result<Result<T, store::Error>>;

/// Refuses a batch of `n` keys over [`MAX_BATCH_KEYS`].
fn batch_size(n: usize) -> Result<(), store::Error> {
    if n > MAX_BATCH_KEYS {
        return Err(store::Error::Other(format!(
            "a batch of {n} keys is over the {MAX_BATCH_KEYS} one call may name; split it"
        )));
    }
    Ok(())
}

impl WasiKeyValue<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<&Bucket> {
        Ok(self.table.get(bucket)?)
    }

    async fn get(&mut self, key: String) -> Outcome<Option<Vec<u8>>> {
        Ok(KvHost::get(self.kv, key).await?.map_err(other))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Outcome<()> {
        Ok(KvHost::set(self.kv, key, value).await?.map_err(other))
    }

    async fn delete(&mut self, key: String) -> Outcome<()> {
        Ok(KvHost::delete(self.kv, key).await?.map(drop).map_err(other))
    }
}

impl store::Host for WasiKeyValue<'_> {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>> {
        match Bucket::open(&identifier) {
            Ok(bucket) => Ok(Ok(self.table.push(bucket)?)),
            Err(why) => Ok(Err(store::Error::Other(why))),
        }
    }
}

impl store::HostBucket for WasiKeyValue<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>> {
        let key = self.bucket(&bucket)?.key(&key);
        WasiKeyValue::get(self, key).await
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<()> {
        let key = self.bucket(&bucket)?.key(&key);
        WasiKeyValue::set(self, key, value).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<()> {
        let key = self.bucket(&bucket)?.key(&key);
        WasiKeyValue::delete(self, key).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<bool> {
        let key = self.bucket(&bucket)?.key(&key);
        Ok(WasiKeyValue::get(self, key).await?.map(|v| v.is_some()))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Outcome<store::KeyResponse> {
        let prefix = self.bucket(&bucket)?.prefix.clone();
        let keys = match KvHost::list_keys(self.kv, prefix.clone()).await? {
            Ok(keys) => keys,
            Err(e) => return Ok(Err(other(e))),
        };
        let keys = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        Ok(Ok(page(keys, cursor)))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for WasiKeyValue<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Outcome<u64> {
        let key = self.bucket(&bucket)?.key(&key);
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(store::Error::Other(format!(
                "a delta of {delta} is over the largest counter step, {}",
                i64::MAX
            ))));
        };
        Ok(match KvHost::increment(self.kv, key, delta).await? {
            Ok(n) => u64::try_from(n).map_err(|_| {
                store::Error::Other(format!(
                    "the counter is {n}, below 0 (set by sandbus:host/kv); wasi:keyvalue \
                     counters are unsigned"
                ))
            }),
            Err(e) => Err(other(e)),
        })
    }
}

impl batch::Host for WasiKeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<Option<(String, Vec<u8>)>>> {
        let prefix = self.bucket(&bucket)?.prefix.clone();
        if let Err(e) = batch_size(keys.len()) {
            return Ok(Err(e));
        }
        let mut values = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for key in keys {
            match WasiKeyValue::get(self, format!("{prefix}{key}")).await? {
                Ok(value) => {
                    bytes = bytes.saturating_add(value.as_ref().map_or(0, Vec::len));
                    if bytes > MAX_BATCH_BYTES {
                        return Ok(Err(store::Error::Other(format!(
                            "the values asked for are more than {MAX_BATCH_BYTES} bytes \
                             together; ask for fewer keys at once"
                        ))));
                    }
                    values.push(value.map(|v| (key, v)));
                }
                Err(e) => return Ok(Err(e)),
            }
            // Reads from the daemon's copy never wait: let the call's deadline fire.
            tokio::task::yield_now().await;
        }
        Ok(Ok(values))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<()> {
        let prefix = self.bucket(&bucket)?.prefix.clone();
        if let Err(e) = batch_size(key_values.len()) {
            return Ok(Err(e));
        }
        for (key, value) in key_values {
            if let Err(e) = WasiKeyValue::set(self, format!("{prefix}{key}"), value).await? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Outcome<()> {
        let prefix = self.bucket(&bucket)?.prefix.clone();
        if let Err(e) = batch_size(keys.len()) {
            return Ok(Err(e));
        }
        for key in keys {
            if let Err(e) = WasiKeyValue::delete(self, format!("{prefix}{key}")).await? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

/// Adds `wasi:keyvalue/{store, atomics, batch}@0.2.0-draft` to `linker`; `get` gives the
/// invocation's kv state and resource table.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> WasiKeyValue<'_>,
) -> wasmtime::Result<()> {
    crate::bindings::wasi_keyvalue::Imports::add_to_linker::<T, WasiKv>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_a_prefix_of_one_key_segment() {
        assert_eq!(Bucket::open("audit").unwrap().key("a/b"), "audit/a/b");
        assert_eq!(Bucket::open("").unwrap().key("a"), "a");
        assert!(Bucket::open("a/b").unwrap_err().contains("without `/`"));
        assert!(Bucket::open("a b").unwrap_err().contains("bucket `a b`"));
    }

    #[tokio::test]
    async fn get_many_stops_at_its_byte_limit_however_often_a_key_is_named() {
        use crate::imports::kv::{KvQuota, MemoryKv};
        use batch::Host as _;
        use store::Host as _;
        let mut kv = KvState {
            store: std::sync::Arc::new(MemoryKv::default()),
            namespace: "g".into(),
            max_value: 2 << 20,
            quota: KvQuota::NONE,
        };
        let mut table = ResourceTable::new();
        let mut view = WasiKeyValue {
            kv: &mut kv,
            table: &mut table,
        };
        let bucket = view.open("b".into()).await.unwrap().unwrap();
        let again = Resource::<Bucket>::new_borrow(bucket.rep());
        store::HostBucket::set(&mut view, again, "big".into(), vec![7; 1 << 20])
            .await
            .unwrap()
            .unwrap();
        let fits = vec!["big".to_owned(); 8];
        let borrowed = || Resource::<Bucket>::new_borrow(bucket.rep());
        let got = view.get_many(borrowed(), fits).await.unwrap().unwrap();
        assert_eq!(got.len(), 8);
        let over = vec!["big".to_owned(); 9];
        let Err(store::Error::Other(why)) = view.get_many(borrowed(), over).await.unwrap() else {
            panic!("9 MiB of values were returned");
        };
        assert!(why.contains("ask for fewer keys"), "{why}");
    }

    #[test]
    fn a_batch_over_the_key_limit_is_refused_saying_so() {
        assert!(batch_size(MAX_BATCH_KEYS).is_ok());
        let Err(store::Error::Other(why)) = batch_size(MAX_BATCH_KEYS + 1) else {
            panic!("a batch over the limit passed");
        };
        assert!(why.contains("1001 keys"), "{why}");
    }

    #[test]
    fn list_keys_pages_from_the_cursor_and_ends_without_one() {
        let keys: Vec<String> = (0..2500).map(|i| format!("k{i:04}")).collect();
        let first = page(keys.clone(), None);
        assert_eq!(first.keys.len(), PAGE);
        assert_eq!(first.cursor, Some(1000));
        let last = page(keys.clone(), Some(2000));
        assert_eq!(last.keys.first().map(String::as_str), Some("k2000"));
        assert_eq!(last.keys.len(), 500);
        assert_eq!(last.cursor, None);
        assert_eq!(page(keys, Some(9999)).keys.len(), 0);
    }
}
