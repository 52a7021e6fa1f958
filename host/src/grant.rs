//! What a component's manifest grants it beyond its own space, as given on the command line
//! (`--grant publish=events.billing.>`, `--grant kv-read=billing`) and checked before
//! anything is recorded.
//!
//! A manifest stores the two kinds apart: publish subjects (checked by the `bus` import) and
//! the names of the components whose key-value spaces it may read (checked by `kv-read`).

use std::fmt;

use crate::sandbox::validate_component_name;
use crate::subject::SubjectPattern;

/// The grant forms, for error messages.
const FORMS: &str = "publish=SUBJECT (e.g. publish=events.billing.>) or kv-read=COMPONENT \
                     (e.g. kv-read=billing)";

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// May publish on subjects matching the pattern.
    Publish(SubjectPattern),
    /// May read the key-value space of the named component.
    KvRead(String),
}

/// A grant that could not be read; the text says what is wrong and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid grant `{grant}`: {why}")]
pub struct GrantError {
    /// The grant as given.
    pub grant: String,
    /// What is wrong with it.
    pub why: String,
}

impl Grant {
    /// Reads `publish=SUBJECT` or `kv-read=COMPONENT`.
    pub fn parse(text: &str) -> Result<Self, GrantError> {
        let error = |why: String| GrantError {
            grant: text.to_owned(),
            why,
        };
        match text.split_once('=') {
            Some(("publish", subject)) => SubjectPattern::parse(subject)
                .map(Grant::Publish)
                .map_err(error),
            Some(("kv-read", name)) => validate_component_name(name)
                .map(|()| Grant::KvRead(name.to_owned()))
                .map_err(|e| error(e.message)),
            _ => Err(error(format!("expected {FORMS}"))),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Publish(subject) => write!(f, "publish={subject}"),
            Grant::KvRead(name) => write!(f, "kv-read={name}"),
        }
    }
}

/// Grants as a manifest stores them: publish subjects and readable key-value spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestGrants {
    /// Subject patterns it may publish on.
    pub publish: Vec<String>,
    /// Components whose key-value spaces it may read.
    pub kv_read: Vec<String>,
}

impl ManifestGrants {
    /// Reads every `--grant` value; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(grants: &[S]) -> Result<Self, GrantError> {
        let mut out = Self::default();
        for grant in grants {
            match Grant::parse(grant.as_ref())? {
                Grant::Publish(subject) => out.publish.push(subject.as_str().to_owned()),
                Grant::KvRead(name) => out.kv_read.push(name),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_kinds_and_names_what_is_wrong() {
        let grants =
            ManifestGrants::parse(&["publish=events.billing.>", "kv-read=billing"]).unwrap();
        assert_eq!(grants.publish, ["events.billing.>"]);
        assert_eq!(grants.kv_read, ["billing"]);
        for (bad, want) in [
            ("events.billing.>", "expected publish=SUBJECT"),
            ("read=billing", "kv-read=COMPONENT"),
            ("publish=a..b", "invalid grant `publish=a..b`"),
            ("kv-read=Bad Name", "invalid grant `kv-read=Bad Name`"),
            ("kv-read=", "invalid grant `kv-read=`"),
        ] {
            let e = ManifestGrants::parse(&[bad]).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert_eq!(
            Grant::parse("kv-read=billing").unwrap().to_string(),
            "kv-read=billing"
        );
    }
}
