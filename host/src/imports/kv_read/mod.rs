//! `sandbus:host/kv-read`: reading other components' key-value spaces, as granted.
//!
//! A component's manifest lists the spaces it may read (`--grant kv-read=NAME`); every call
//! names a space and is refused with `not-granted` unless it is listed, whether or not the
//! space exists. Reads go to the same [`KvStore`] as the component's own `kv`, so they see
//! what the owner wrote (each key read on its own: there is no snapshot across keys). There
//! is no write: a space stays its owner's to change.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use crate::bindings::kv::KvError;
use crate::bindings::kv_read::{self as wit, Host, KvReadError};
use crate::imports::kv::{KvStore, MAX_LISTED_KEYS, validate_key, validate_prefix};

/// The spaces a component may read, from its manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvReadGrants(Vec<String>);

impl KvReadGrants {
    /// Grants for these component names (exact names; no wildcards).
    pub fn new(namespaces: impl IntoIterator<Item = String>) -> Self {
        let mut names: Vec<String> = namespaces.into_iter().collect();
        names.sort();
        names.dedup();
        Self(names)
    }

    /// Whether `namespace` may be read.
    pub fn allows(&self, namespace: &str) -> bool {
        self.0.iter().any(|n| n == namespace)
    }

    /// The granted names, sorted.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// Per-invocation state of the `kv-read` interface.
pub struct KvReadState {
    /// The storage (the same one the `kv` interface uses).
    pub store: Arc<dyn KvStore>,
    /// What the component may read.
    pub grants: Arc<KvReadGrants>,
}

impl KvReadState {
    fn granted(&self, namespace: &str) -> Result<(), KvReadError> {
        if self.grants.allows(namespace) {
            Ok(())
        } else {
            Err(KvReadError::NotGranted(namespace.to_owned()))
        }
    }
}

impl Host for KvReadState {
    async fn get(
        &mut self,
        namespace: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, KvReadError>> {
        if let Err(e) = self.granted(&namespace) {
            return Ok(Err(e));
        }
        if let Err(why) = validate_key(&key) {
            return Ok(Err(KvReadError::Kv(KvError::InvalidKey(why.message))));
        }
        Ok(self
            .store
            .get(&namespace, &key)
            .await
            .map_err(|e| KvReadError::Kv(e.into())))
    }

    async fn list_keys(
        &mut self,
        namespace: String,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, KvReadError>> {
        if let Err(e) = self.granted(&namespace) {
            return Ok(Err(e));
        }
        if let Err(why) = validate_prefix(&prefix) {
            return Ok(Err(KvReadError::Kv(KvError::InvalidKey(why.message))));
        }
        Ok(self
            .store
            .list_keys(&namespace, &prefix)
            .await
            .map(|mut keys| {
                keys.truncate(MAX_LISTED_KEYS);
                keys
            })
            .map_err(|e| KvReadError::Kv(e.into())))
    }
}

/// `HasData` marker: the `kv-read` host functions see a [`KvReadState`].
pub struct KvRead;

impl HasData for KvRead {
    type Data<'a> = &'a mut KvReadState;
}

/// Adds `sandbus:host/kv-read` to `linker`; `get` finds the invocation's [`KvReadState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut KvReadState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, KvRead>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imports::kv::MemoryKv;

    #[tokio::test]
    async fn only_granted_spaces_can_be_read() {
        let store = Arc::new(MemoryKv::default());
        store
            .set("billing", "total/acme", b"42".to_vec())
            .await
            .unwrap();
        let mut reader = KvReadState {
            store,
            grants: Arc::new(KvReadGrants::new(["billing".to_owned()])),
        };
        assert_eq!(
            reader
                .get("billing".into(), "total/acme".into())
                .await
                .unwrap(),
            Ok(Some(b"42".to_vec()))
        );
        assert_eq!(
            reader
                .list_keys("billing".into(), "total/".into())
                .await
                .unwrap(),
            Ok(vec!["total/acme".to_owned()])
        );
        assert_eq!(
            reader.get("audit".into(), "k".into()).await.unwrap(),
            Err(KvReadError::NotGranted("audit".into()))
        );
        assert_eq!(
            reader
                .list_keys("audit".into(), String::new())
                .await
                .unwrap(),
            Err(KvReadError::NotGranted("audit".into()))
        );
        assert!(matches!(
            reader
                .get("billing".into(), "bad key".into())
                .await
                .unwrap(),
            Err(KvReadError::Kv(KvError::InvalidKey(_)))
        ));
        assert!(matches!(
            reader
                .list_keys("billing".into(), ".x".into())
                .await
                .unwrap(),
            Err(KvReadError::Kv(KvError::InvalidKey(_)))
        ));
    }
}
