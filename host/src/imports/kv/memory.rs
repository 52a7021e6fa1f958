//! [`MemoryKv`]: an in-memory [`KvStore`] for the dev loop and tests.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use super::{KvFootprint, KvStore, KvStoreError};

/// Keys per namespace in ordered maps behind one mutex; every operation is atomic.
#[derive(Debug, Default)]
pub struct MemoryKv {
    spaces: Mutex<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl MemoryKv {
    /// Every key and value of one namespace, in key order.
    pub fn snapshot(&self, namespace: &str) -> BTreeMap<String, Vec<u8>> {
        self.lock().get(namespace).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Vec<u8>>>> {
        self.spaces.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvStoreError> {
        Ok(self.lock().get(ns).and_then(|s| s.get(key)).cloned())
    }

    async fn set(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<(), KvStoreError> {
        self.lock()
            .entry(ns.to_owned())
            .or_default()
            .insert(key.to_owned(), value);
        Ok(())
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvStoreError> {
        Ok(self
            .lock()
            .get_mut(ns)
            .is_some_and(|s| s.remove(key).is_some()))
    }

    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvStoreError> {
        let mut spaces = self.lock();
        let space = spaces.entry(ns.to_owned()).or_default();
        if space.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        space.insert(key.to_owned(), new);
        Ok(true)
    }

    async fn footprint(&self, ns: &str, key: &str) -> Result<KvFootprint, KvStoreError> {
        let spaces = self.lock();
        let Some(space) = spaces.get(ns) else {
            return Ok(KvFootprint::default());
        };
        let size = |k: &String, v: &Vec<u8>| (k.len() + v.len()) as u64;
        Ok(KvFootprint {
            bytes: space.iter().map(|(k, v)| size(k, v)).sum(),
            keys: space.len() as u64,
            key_bytes: space.get_key_value(key).map(|(k, v)| size(k, v)),
        })
    }

    async fn list_keys(&self, ns: &str, prefix: &str) -> Result<Vec<String>, KvStoreError> {
        Ok(self
            .lock()
            .get(ns)
            .map(|s| {
                s.range(prefix.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}
