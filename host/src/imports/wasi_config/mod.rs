//! `wasi:config/store@0.2.0-draft`: the values the component's operator set
//! ([`ComponentConfig`], from `sandbus upload --config KEY=VALUE` or `sandbus configure`), as
//! wasmCloud and Spin components read their configuration.
//!
//! The values are the ones of the manifest version the call runs under: a change reaches the
//! calls that start after every daemon has loaded the new version, never a call halfway. A
//! read never fails (the values are in memory); a key that is not set is `none`.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use crate::bindings::wasi_config::wasi::config::store::{self as wit, Error};
use crate::component_config::ComponentConfig;

/// What a call's `wasi:config/store` reads: the component's values, shared by every call.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    values: Arc<ComponentConfig>,
}

impl ConfigState {
    /// A call's view of `values`.
    pub fn new(values: Arc<ComponentConfig>) -> Self {
        Self { values }
    }
}

impl wit::Host for ConfigState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        Ok(Ok(self.values.get(&key).map(str::to_owned)))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        Ok(Ok(self
            .values
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()))
    }
}

/// `HasData` marker: the host functions see the call's [`ConfigState`].
struct WasiConfig;

impl HasData for WasiConfig {
    type Data<'a> = &'a mut ConfigState;
}

/// Adds `wasi:config/store@0.2.0-draft` to `linker`; `get` finds the call's [`ConfigState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ConfigState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, WasiConfig>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wit::Host as _;

    #[test]
    fn a_read_gives_the_operators_values_and_none_for_an_unset_key() {
        let values = ComponentConfig::from_settings(&["b=2", "a=1"]).expect("valid");
        let mut state = ConfigState::new(Arc::new(values));
        assert_eq!(
            state.get("a".into()).expect("no trap"),
            Ok(Some("1".into()))
        );
        assert_eq!(state.get("zz".into()).expect("no trap"), Ok(None));
        assert_eq!(
            state.get_all().expect("no trap"),
            Ok(vec![("a".into(), "1".into()), ("b".into(), "2".into())])
        );
    }
}
