//! [`MemoryKv`]: an in-memory [`KvStore`] for the dev loop and tests.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use super::{KvFootprint, KvStore, KvStoreError};

/// Keys per namespace in ordered maps behind one mutex; every operation is atomic.
#[derive(Debug, Default)]
pub struct MemoryKv {
    spaces: Mutex<BTreeMap<String, Space>>,
}

/// One namespace: its entries and their size, kept as they change, so that the quota check
/// before every write costs the same however many keys the space holds (`dev replay` of a
/// large events file writes thousands).
#[derive(Debug, Default)]
struct Space {
    entries: BTreeMap<String, Vec<u8>>,
    /// Sum of key and value lengths over `entries`.
    bytes: u64,
}

/// What a key and its value count against the quota.
fn entry_size(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl Space {
    fn insert(&mut self, key: &str, value: Vec<u8>) {
        self.bytes += entry_size(key, &value);
        if let Some(old) = self.entries.insert(key.to_owned(), value) {
            self.bytes -= entry_size(key, &old);
        }
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(old) => {
                self.bytes -= entry_size(key, &old);
                true
            }
            None => false,
        }
    }
}

impl MemoryKv {
    /// Every key and value of one namespace, in key order.
    pub fn snapshot(&self, namespace: &str) -> BTreeMap<String, Vec<u8>> {
        self.lock()
            .get(namespace)
            .map(|s| s.entries.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Space>> {
        self.spaces.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvStoreError> {
        Ok(self
            .lock()
            .get(ns)
            .and_then(|s| s.entries.get(key))
            .cloned())
    }

    async fn set(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<(), KvStoreError> {
        self.lock()
            .entry(ns.to_owned())
            .or_default()
            .insert(key, value);
        Ok(())
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvStoreError> {
        Ok(self.lock().get_mut(ns).is_some_and(|s| s.remove(key)))
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
        if space.entries.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        space.insert(key, new);
        Ok(true)
    }

    async fn footprint(&self, ns: &str, key: &str) -> Result<KvFootprint, KvStoreError> {
        let spaces = self.lock();
        let Some(space) = spaces.get(ns) else {
            return Ok(KvFootprint::default());
        };
        Ok(KvFootprint {
            bytes: space.bytes,
            keys: space.entries.len() as u64,
            key_bytes: space.entries.get(key).map(|v| entry_size(key, v)),
        })
    }

    async fn list_keys(&self, ns: &str, prefix: &str) -> Result<Vec<String>, KvStoreError> {
        Ok(self
            .lock()
            .get(ns)
            .map(|s| {
                s.entries
                    .range(prefix.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The footprint the kept total must equal: every entry summed.
    fn recounted(kv: &MemoryKv, ns: &str) -> u64 {
        kv.snapshot(ns).iter().map(|(k, v)| entry_size(k, v)).sum()
    }

    #[tokio::test]
    async fn the_footprint_follows_every_write_overwrite_swap_and_delete() {
        let kv = MemoryKv::default();
        kv.set("ns", "a", b"12345".to_vec()).await.unwrap();
        kv.set("ns", "bb", b"1".to_vec()).await.unwrap();
        kv.set("ns", "a", b"12".to_vec()).await.unwrap();
        assert!(
            kv.compare_and_swap("ns", "bb", Some(b"1"), b"xyz".to_vec())
                .await
                .unwrap()
        );
        assert!(
            !kv.compare_and_swap("ns", "bb", Some(b"1"), b"lost".to_vec())
                .await
                .unwrap()
        );
        assert!(
            kv.compare_and_swap("ns", "c", None, b"new".to_vec())
                .await
                .unwrap()
        );
        assert!(kv.delete("ns", "c").await.unwrap());
        assert!(!kv.delete("ns", "c").await.unwrap());
        kv.set("other", "zzz", b"9".to_vec()).await.unwrap();

        let f = kv.footprint("ns", "bb").await.unwrap();
        assert_eq!(f.bytes, recounted(&kv, "ns"));
        assert_eq!(f.bytes, (1 + 2) + (2 + 3));
        assert_eq!(f.keys, 2);
        assert_eq!(f.key_bytes, Some(2 + 3));
        assert_eq!(kv.footprint("ns", "gone").await.unwrap().key_bytes, None);
        assert_eq!(kv.footprint("other", "zzz").await.unwrap().bytes, 4);
        assert_eq!(
            kv.footprint("none", "x").await.unwrap(),
            KvFootprint::default()
        );
    }
}
