//! `impl kv::Host`: key and size checks, namespacing, and `increment` /
//! `set-if-absent` built on the store's compare-and-swap.

use super::{KvState, KvStoreError, validate_key, validate_prefix};
use crate::bindings::kv::{Host, KvError};
use bytesize::ByteSize;

/// Most keys one `list-keys` returns (the first ones in byte order).
pub const MAX_LISTED_KEYS: usize = 10_000;

/// How often `increment` retries a lost compare-and-swap race before giving up. Contention
/// on one counter from many concurrent invocations (and hosts) is normal; the call's
/// deadline bounds the whole loop anyway.
const INCREMENT_ATTEMPTS: usize = 1000;

impl From<KvStoreError> for KvError {
    fn from(e: KvStoreError) -> Self {
        match e {
            KvStoreError::Unavailable(why) => KvError::Unavailable(why),
        }
    }
}

impl KvState {
    fn check(&self, key: &str, value: Option<&[u8]>) -> Result<(), KvError> {
        validate_key(key).map_err(|e| KvError::InvalidKey(e.message))?;
        if value.is_some_and(|v| v.len() as u64 > self.max_value) {
            return Err(KvError::ValueTooLarge(self.max_value));
        }
        Ok(())
    }

    /// Refuses a write of `value_len` bytes under `key` that would take the namespace past
    /// its quota. A write that does not grow the space (an overwrite with a value no larger,
    /// which includes every delete) always passes, so a space over its quota (its quota was
    /// lowered) can be cleaned up.
    ///
    /// The error is `unavailable` with a text that starts with "quota exceeded" (the WIT of
    /// `sandbus:host@0.1` has no case of its own for it; adding one would break every
    /// component built against it).
    async fn room_for(&self, key: &str, value_len: usize) -> Result<(), KvError> {
        let used = self.store.footprint(&self.namespace, key).await?;
        let entry = (key.len() + value_len) as u64;
        let bytes = used.bytes - used.key_bytes.unwrap_or(0).min(used.bytes) + entry;
        let keys = used.keys + u64::from(used.key_bytes.is_none());
        if used.key_bytes.is_none() && keys > self.quota.keys {
            return Err(KvError::Unavailable(format!(
                "quota exceeded: `{key}` would be key number {keys} of this component's space, \
                 over its kv-keys quota of {}; delete keys, or have the operator raise \
                 --limit kv-keys",
                self.quota.keys
            )));
        }
        if bytes > self.quota.bytes && bytes > used.bytes {
            return Err(KvError::Unavailable(format!(
                "quota exceeded: writing {} under `{key}` would make this component's space \
                 {}, over its kv-bytes quota of {}; delete keys, or have the operator raise \
                 --limit kv-bytes",
                ByteSize(entry).display().iec(),
                ByteSize(bytes).display().iec(),
                ByteSize(self.quota.bytes).display().iec()
            )));
        }
        Ok(())
    }

    async fn increment_by(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.check(key, None)?;
        for attempt in 0..INCREMENT_ATTEMPTS {
            if attempt > 0 {
                // Lost a race: back off a random moment so the contenders spread out.
                let max_ms = attempt.min(8) as u64;
                tokio::time::sleep(std::time::Duration::from_micros(
                    rand::random::<u64>() % (max_ms * 1000 + 1),
                ))
                .await;
            }
            let current = self.store.get(&self.namespace, key).await?;
            let old = match &current {
                None => 0,
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .ok_or(KvError::NotANumber)?,
            };
            let new = old.checked_add(delta).ok_or(KvError::Overflow)?;
            let text = new.to_string();
            self.room_for(key, text.len()).await?;
            let swapped = self
                .store
                .compare_and_swap(&self.namespace, key, current.as_deref(), text.into_bytes())
                .await?;
            if swapped {
                return Ok(new);
            }
        }
        Err(KvError::Unavailable(format!(
            "increment of `{key}` lost {INCREMENT_ATTEMPTS} races in a row; try again"
        )))
    }

    async fn list_keys_checked(&self, prefix: String) -> Result<Vec<String>, KvError> {
        validate_prefix(&prefix).map_err(|e| KvError::InvalidKey(e.message))?;
        let mut keys = self.store.list_keys(&self.namespace, &prefix).await?;
        keys.truncate(MAX_LISTED_KEYS);
        Ok(keys)
    }
}

impl Host for KvState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, KvError>> {
        if let Err(e) = self.check(&key, None) {
            return Ok(Err(e));
        }
        Ok(self
            .store
            .get(&self.namespace, &key)
            .await
            .map_err(Into::into))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), KvError>> {
        if let Err(e) = self.check(&key, Some(&value)) {
            return Ok(Err(e));
        }
        if let Err(e) = self.room_for(&key, value.len()).await {
            return Ok(Err(e));
        }
        Ok(self
            .store
            .set(&self.namespace, &key, value)
            .await
            .map_err(Into::into))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, KvError>> {
        if let Err(e) = self.check(&key, None) {
            return Ok(Err(e));
        }
        Ok(self
            .store
            .delete(&self.namespace, &key)
            .await
            .map_err(Into::into))
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, KvError>> {
        Ok(self.increment_by(&key, delta).await)
    }

    async fn set_if_absent(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, KvError>> {
        if let Err(e) = self.check(&key, Some(&value)) {
            return Ok(Err(e));
        }
        if let Err(e) = self.room_for(&key, value.len()).await {
            return Ok(Err(e));
        }
        Ok(self
            .store
            .compare_and_swap(&self.namespace, &key, None, value)
            .await
            .map_err(Into::into))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, KvError>> {
        if let Err(e) = self.check(&key, Some(&new)) {
            return Ok(Err(e));
        }
        if let Err(e) = self.room_for(&key, new.len()).await {
            return Ok(Err(e));
        }
        Ok(self
            .store
            .compare_and_swap(&self.namespace, &key, expected.as_deref(), new)
            .await
            .map_err(Into::into))
    }

    async fn list_keys(
        &mut self,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, KvError>> {
        Ok(self.list_keys_checked(prefix).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imports::kv::MemoryKv;
    use std::sync::Arc;

    fn state(store: Arc<MemoryKv>, ns: &str) -> KvState {
        KvState {
            store,
            namespace: ns.into(),
            max_value: 8,
            quota: super::super::KvQuota::NONE,
        }
    }

    #[tokio::test]
    async fn namespaces_are_private() {
        let store = Arc::new(MemoryKv::default());
        let mut a = state(store.clone(), "a");
        let mut b = state(store, "b");
        a.set("k".into(), b"1".to_vec()).await.unwrap().unwrap();
        assert_eq!(b.get("k".into()).await.unwrap().unwrap(), None);
        assert_eq!(
            b.list_keys(String::new()).await.unwrap().unwrap(),
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn increment_set_if_absent_and_cas_behave() {
        let mut kv = state(Arc::new(MemoryKv::default()), "c");
        assert_eq!(kv.increment("n".into(), 5).await.unwrap(), Ok(5));
        assert_eq!(kv.increment("n".into(), -7).await.unwrap(), Ok(-2));
        assert_eq!(kv.get("n".into()).await.unwrap(), Ok(Some(b"-2".to_vec())));
        kv.set("s".into(), b"abc".to_vec()).await.unwrap().unwrap();
        assert_eq!(
            kv.increment("s".into(), 1).await.unwrap(),
            Err(KvError::NotANumber)
        );
        assert_eq!(
            kv.set_if_absent("x".into(), b"1".to_vec()).await.unwrap(),
            Ok(true)
        );
        assert_eq!(
            kv.set_if_absent("x".into(), b"2".to_vec()).await.unwrap(),
            Ok(false)
        );
        assert_eq!(
            kv.compare_and_swap("x".into(), Some(b"9".to_vec()), b"3".to_vec())
                .await
                .unwrap(),
            Ok(false)
        );
        assert_eq!(
            kv.compare_and_swap("x".into(), Some(b"1".to_vec()), b"3".to_vec())
                .await
                .unwrap(),
            Ok(true)
        );
        assert_eq!(kv.delete("x".into()).await.unwrap(), Ok(true));
        assert_eq!(kv.delete("x".into()).await.unwrap(), Ok(false));
    }

    #[tokio::test]
    async fn writes_past_the_quota_are_refused_and_shrinking_ones_pass() {
        use super::super::KvQuota;
        let store = Arc::new(MemoryKv::default());
        let mut kv = KvState {
            quota: KvQuota { bytes: 20, keys: 2 },
            max_value: 64,
            ..state(store.clone(), "q")
        };
        // "a" + 8 bytes = 9, "b" + 8 = 9: 18 bytes, 2 keys.
        kv.set("a".into(), vec![1; 8]).await.unwrap().unwrap();
        kv.set("b".into(), vec![1; 8]).await.unwrap().unwrap();
        let third = kv.set("c".into(), vec![1]).await.unwrap().unwrap_err();
        assert!(
            matches!(&third, KvError::Unavailable(why) if why.starts_with("quota exceeded") && why.contains("kv-keys quota of 2")),
            "{third:?}"
        );
        assert_eq!(
            kv.set_if_absent("c".into(), vec![1]).await.unwrap(),
            Err(third.clone())
        );
        // Overwriting a key does not add one; growing past the bytes does not pass.
        let grow = kv
            .compare_and_swap("a".into(), Some(vec![1; 8]), vec![1; 8])
            .await
            .unwrap();
        assert_eq!(grow, Ok(true));
        let over = kv.set("a".into(), vec![2; 12]).await.unwrap().unwrap_err();
        assert!(
            matches!(&over, KvError::Unavailable(why) if why.contains("kv-bytes quota of 20 B")),
            "{over:?}"
        );
        assert_eq!(store.snapshot("q")["a"], vec![1; 8], "nothing changed");
        // Over the quota (it was lowered): shrinking writes and deletes still work.
        kv.quota = KvQuota { bytes: 10, keys: 1 };
        kv.set("a".into(), vec![1; 2]).await.unwrap().unwrap();
        assert_eq!(kv.delete("b".into()).await.unwrap(), Ok(true));
        assert_eq!(
            kv.increment("a".into(), 1).await.unwrap(),
            Err(KvError::NotANumber)
        );
    }

    #[tokio::test]
    async fn list_keys_checks_its_prefix() {
        let mut kv = state(Arc::new(MemoryKv::default()), "c");
        kv.set("usage/acme/vm-1".into(), b"1".to_vec())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            kv.list_keys("usage/".into()).await.unwrap(),
            Ok(vec!["usage/acme/vm-1".to_owned()])
        );
        for bad in ["*", "a>", ".a", "a b"] {
            let r = kv.list_keys(bad.into()).await.unwrap();
            assert!(matches!(r, Err(KvError::InvalidKey(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_key_says_which_rule_it_broke_and_guests_read_its_message() {
        use crate::imports::kv::{KeyErrorKind, MAX_KEY_LEN};

        let kind = |key: &str| validate_key(key).map_err(|e| e.kind).err();
        assert_eq!(kind(""), Some(KeyErrorKind::Empty));
        assert_eq!(
            kind(&"k".repeat(MAX_KEY_LEN + 1)),
            Some(KeyErrorKind::TooLong)
        );
        assert_eq!(kind("a b"), Some(KeyErrorKind::Character));
        assert_eq!(kind("a..b"), Some(KeyErrorKind::EmptyPart));
        assert_eq!(
            validate_prefix("a b").map_err(|e| e.kind),
            Err(KeyErrorKind::Prefix)
        );
        let kv = state(Arc::new(MemoryKv::default()), "c");
        assert_eq!(
            kv.check("a..b", None),
            Err(KvError::InvalidKey(
                "the key `a..b` has an empty `.`-separated part".into()
            ))
        );
    }

    #[tokio::test]
    async fn bad_keys_and_large_values_are_refused() {
        let mut kv = state(Arc::new(MemoryKv::default()), "c");
        for bad in ["", "a b", ".a", "a..b", "ä"] {
            assert!(
                matches!(
                    kv.get(bad.into()).await.unwrap(),
                    Err(KvError::InvalidKey(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            kv.set("k".into(), vec![0; 9]).await.unwrap(),
            Err(KvError::ValueTooLarge(8))
        );
        assert_eq!(
            kv.increment("big".into(), i64::MAX).await.unwrap(),
            Ok(i64::MAX)
        );
        assert_eq!(
            kv.increment("big".into(), 1).await.unwrap(),
            Err(KvError::Overflow)
        );
    }
}
