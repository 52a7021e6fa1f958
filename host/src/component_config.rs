//! [`ComponentConfig`]: the values a component reads through `wasi:config/store`, set per
//! component by its operator (`sandbus upload --config KEY=VALUE`, changed later with
//! `sandbus configure` without uploading the bytes again) and kept in its manifest.
//!
//! They are configuration, not secrets: operators see them (`sandbus ls`), and so does
//! whoever reads events (a manifest is in its `sandbus.component.added` event). The bounds
//! keep a manifest small: `component.list` answers every manifest in one message (1 MiB by
//! default), and the manifest bucket keeps 32 versions of each name.

use std::collections::BTreeMap;
use std::fmt;

/// Most values one component may have.
pub const MAX_ENTRIES: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 4 << 10;
/// Most bytes of keys and values together.
pub const MAX_TOTAL_BYTES: usize = 8 << 10;

/// A component's config values, by key (sorted, so a manifest's JSON is stable).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ComponentConfig(BTreeMap<String, String>);

/// How config values can be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigValueErrorKind {
    /// A `KEY=VALUE` setting without `=`.
    NoEquals,
    /// A key empty, too long, or holding `=`, spaces or control characters.
    Key,
    /// A value, or all of them together, past the bounds; or too many of them.
    TooLarge,
    /// A change unsets a key that is not set, or sets and unsets the same key.
    Change,
}

/// Why config values were refused; the message says what was wrong and what to do.
pub type ConfigValueError = crate::error::Error<ConfigValueErrorKind>;

impl ComponentConfig {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `KEY=VALUE` settings (the CLI's `--config`), later ones overriding earlier ones
    /// of the same key, and checks the result.
    pub fn from_settings<S: AsRef<str>>(settings: &[S]) -> Result<Self, ConfigValueError> {
        let mut config = Self::new();
        for setting in settings {
            let (key, value) = parse_setting(setting.as_ref())?;
            config.0.insert(key, value);
        }
        config.check()?;
        Ok(config)
    }

    /// Takes values as they are (from a manifest or a request) and checks them.
    pub fn from_map(values: BTreeMap<String, String>) -> Result<Self, ConfigValueError> {
        let config = Self(values);
        config.check()?;
        Ok(config)
    }

    /// This config with `set` applied and then the keys of `unset` removed, checked. A key
    /// in `unset` that is not set is an error (a typo would otherwise pass silently).
    pub fn changed(
        &self,
        set: &BTreeMap<String, String>,
        unset: &[String],
    ) -> Result<Self, ConfigValueError> {
        let mut next = self.clone();
        for (key, value) in set {
            next.0.insert(key.clone(), value.clone());
        }
        for key in unset {
            if set.contains_key(key) {
                return Err(ConfigValueError::new(
                    ConfigValueErrorKind::Change,
                    format!("`{key}` is both set and unset; give it once"),
                ));
            }
            if next.0.remove(key).is_none() {
                return Err(ConfigValueError::new(
                    ConfigValueErrorKind::Change,
                    format!(
                        "there is no config value `{key}` to unset; `sandbus configure NAME` lists \
                     the keys"
                    ),
                ));
            }
        }
        next.check()?;
        Ok(next)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every key and value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values as a map (for a request).
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Checks the keys and the bounds.
    fn check(&self) -> Result<(), ConfigValueError> {
        if self.0.len() > MAX_ENTRIES {
            return Err(ConfigValueError::new(
                ConfigValueErrorKind::TooLarge,
                format!(
                    "{} config values; a component has at most {MAX_ENTRIES}",
                    self.0.len()
                ),
            ));
        }
        let mut total = 0;
        for (key, value) in &self.0 {
            check_key(key)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(ConfigValueError::new(
                    ConfigValueErrorKind::TooLarge,
                    format!(
                        "the config value `{key}` is {} bytes; a value is at most {MAX_VALUE_BYTES} \
                     bytes (keep large data in the component's kv space)",
                        value.len()
                    ),
                ));
            }
            total += key.len() + value.len();
        }
        if total > MAX_TOTAL_BYTES {
            return Err(ConfigValueError::new(
                ConfigValueErrorKind::TooLarge,
                format!(
                    "the config values come to {total} bytes; a component's are at most \
                 {MAX_TOTAL_BYTES} bytes together (keep large data in its kv space)"
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ComponentConfig {
    /// `KEY=VALUE` lines, sorted by key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.0 {
            writeln!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// Splits `KEY=VALUE` at its first `=`; the value may be empty and may hold `=`.
pub fn parse_setting(setting: &str) -> Result<(String, String), ConfigValueError> {
    let (key, value) = setting.split_once('=').ok_or_else(|| {
        ConfigValueError::new(
            ConfigValueErrorKind::NoEquals,
            format!(
                "config setting `{setting}` has no `=`; write it KEY=VALUE (an empty value is KEY=)"
            ),
        )
    })?;
    check_key(key)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// A key is 1 to [`MAX_KEY_BYTES`] bytes of printable text without `=` or spaces, so that
/// every key can be written as a `KEY=VALUE` setting and read back the same.
pub fn check_key(key: &str) -> Result<(), ConfigValueError> {
    if key.is_empty() {
        return Err(ConfigValueError::new(
            ConfigValueErrorKind::Key,
            "a config key is empty; write KEY=VALUE with a key such as `log.level`",
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ConfigValueError::new(
            ConfigValueErrorKind::Key,
            format!(
                "the config key `{}` is {} bytes; a key is at most {MAX_KEY_BYTES} bytes",
                crate::text::echo(key),
                key.len()
            ),
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| *c == '=' || c.is_whitespace() || c.is_control())
    {
        return Err(ConfigValueError::new(
            ConfigValueErrorKind::Key,
            format!(
                "the config key `{}` holds {c:?}; a key has no `=`, spaces or control characters",
                crate::text::echo(key)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_split_at_the_first_equals_sign_and_later_ones_win() {
        let config = ComponentConfig::from_settings(&[
            "url=nats://a?x=1",
            "level=info",
            "level=debug",
            "empty=",
        ])
        .expect("valid");
        assert_eq!(config.get("url"), Some("nats://a?x=1"));
        assert_eq!(config.get("level"), Some("debug"));
        assert_eq!(config.get("empty"), Some(""));
        assert_eq!(config.len(), 3);
        assert_eq!(
            config.to_string(),
            "empty=\nlevel=debug\nurl=nats://a?x=1\n"
        );
    }

    #[test]
    fn a_setting_without_a_key_or_an_equals_sign_is_refused_with_the_form_to_use() {
        let no_equals = ComponentConfig::from_settings(&["level"]).expect_err("no =");
        assert!(no_equals.message.contains("KEY=VALUE"), "{no_equals}");
        assert_eq!(no_equals.kind, ConfigValueErrorKind::NoEquals);
        let no_key = ComponentConfig::from_settings(&["=x"]).expect_err("empty key");
        assert!(no_key.message.contains("empty"), "{no_key}");
        let space = ComponentConfig::from_settings(&["log level=x"]).expect_err("space");
        assert!(space.message.contains("spaces"), "{space}");
        assert_eq!(space.kind, ConfigValueErrorKind::Key);
    }

    #[test]
    fn values_past_the_bounds_are_refused() {
        let long_value = format!("k={}", "v".repeat(MAX_VALUE_BYTES + 1));
        let e = ComponentConfig::from_settings(&[long_value]).expect_err("too long");
        assert!(e.message.contains("at most"), "{e}");
        let long_key = format!("{}=v", "k".repeat(MAX_KEY_BYTES + 1));
        assert!(ComponentConfig::from_settings(&[long_key]).is_err());
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("k{i}=v")).collect();
        assert!(ComponentConfig::from_settings(&many).is_err());
        let big: Vec<String> = (0..5)
            .map(|i| format!("k{i}={}", "v".repeat(MAX_VALUE_BYTES)))
            .collect();
        let e = ComponentConfig::from_settings(&big).expect_err("too much together");
        assert!(e.message.contains("together"), "{e}");
        let bad_map = BTreeMap::from([("a=b".to_owned(), "c".to_owned())]);
        assert!(ComponentConfig::from_map(bad_map).is_err());
    }

    #[test]
    fn a_change_sets_then_unsets_and_refuses_unknown_or_contradictory_keys() {
        let config = ComponentConfig::from_settings(&["a=1", "b=2"]).expect("valid");
        let set = BTreeMap::from([
            ("a".to_owned(), "10".to_owned()),
            ("c".to_owned(), "3".to_owned()),
        ]);
        let next = config
            .changed(&set, &["b".to_owned()])
            .expect("valid change");
        assert_eq!(next.to_string(), "a=10\nc=3\n");
        assert_eq!(config.get("b"), Some("2"), "the original is unchanged");
        let e = config
            .changed(&BTreeMap::new(), &["nope".to_owned()])
            .expect_err("unknown key");
        assert!(e.message.contains("no config value `nope`"), "{e}");
        assert_eq!(e.kind, ConfigValueErrorKind::Change);
        assert!(config.changed(&set, &["a".to_owned()]).is_err());
    }

    #[test]
    fn the_manifest_form_is_a_plain_json_object() {
        let config = ComponentConfig::from_settings(&["b=2", "a=1"]).expect("valid");
        let json = serde_json::to_string(&config).expect("serialises");
        assert_eq!(json, r#"{"a":"1","b":"2"}"#);
        let back: ComponentConfig = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, config);
    }
}
