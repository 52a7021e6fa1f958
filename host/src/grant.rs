//! What a component may reach, checked once: the trust boundary between an uploader and the
//! daemon.
//!
//! A manifest carries publish grants (`--grant publish=events.billing.>`), `kv-read` grants
//! (`--grant kv-read=billing`) and limit settings (`--limit memory=64MiB`). They come from
//! people and programs sandbus does not trust, and they reach sandbus through three doors:
//! the CLI (before anything is uploaded), the control API (before anything is recorded; a
//! client need not be our CLI) and every daemon (before a manifest is loaded; a manifest may
//! have been written by hand, or by an older version). All three call
//! [`ComponentPolicy::check`], so the rules are the same at every door:
//!
//! - a publish grant is a valid pattern whose first token is literal, and it reaches into no
//!   [`ReservedSpace`] (`$JS.>`, `$KV.>`, `_INBOX.>`, `sandbus.>`, `events.sandbus.>`...):
//!   a guest can never publish as the bus's machinery, the control API or a daemon;
//! - a `kv-read` grant names a component (so `evil.x` cannot mean "evil's keys under `x.`");
//! - every limit is known, and within its bounds ([`Limits::validate`]).

use std::fmt;

use crate::imports::kv_read::KvReadGrants;
use crate::sandbox::{LimitError, Limits, World, validate_component_name};
use crate::subject::{PublishGrants, ReservedSpace, SubjectPattern};

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

/// A grant that could not be read or is not allowed; the text says what is wrong and what
/// is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid grant `{grant}`: {why}")]
pub struct GrantError {
    /// The grant as given.
    pub grant: String,
    /// Which rule it broke.
    pub kind: GrantErrorKind,
    /// What is wrong with it, and what to write instead.
    pub why: String,
}

/// Which rule a grant broke, for callers that react to one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantErrorKind {
    /// Not `publish=…` or `kv-read=…`, or not a valid subject pattern or component name.
    Malformed,
    /// A publish grant that reaches into a reserved part of the subject space.
    Reserved,
}

impl Grant {
    /// Reads `publish=SUBJECT` or `kv-read=COMPONENT`, and checks it.
    pub fn parse(text: &str) -> Result<Self, GrantError> {
        match text.split_once('=') {
            Some(("publish", subject)) => Self::publish(subject)
                .map(Grant::Publish)
                .map_err(|e| e.with_grant(text)),
            Some(("kv-read", name)) => Self::kv_read(name)
                .map(Grant::KvRead)
                .map_err(|e| e.with_grant(text)),
            _ => Err(GrantError {
                grant: text.to_owned(),
                kind: GrantErrorKind::Malformed,
                why: format!("expected {FORMS}"),
            }),
        }
    }

    /// Checks one publish grant as a manifest stores it (the pattern, without `publish=`).
    pub fn publish(pattern: &str) -> Result<SubjectPattern, GrantError> {
        let error = |kind, why: String| GrantError {
            grant: format!("publish={pattern}"),
            kind,
            why,
        };
        let parsed = SubjectPattern::parse(pattern)
            .map_err(|e| error(GrantErrorKind::Malformed, e.message))?;
        if let Some(space) = ReservedSpace::reached_by(pattern) {
            let hint = match space {
                ReservedSpace::Everything => {
                    "a grant names the subjects it is for: its first token can't be a \
                     wildcard"
                        .to_owned()
                }
                ReservedSpace::HostEvents => format!(
                    "it covers {space}; grant the event types the component emits, e.g. \
                     events.billing.>"
                ),
                _ => format!("it covers {space}"),
            };
            return Err(error(
                GrantErrorKind::Reserved,
                format!(
                    "{hint}. No grant can reach these: {}",
                    ReservedSpace::summary()
                ),
            ));
        }
        Ok(parsed)
    }

    /// Checks one `kv-read` grant as a manifest stores it (the component name).
    pub fn kv_read(name: &str) -> Result<String, GrantError> {
        validate_component_name(name)
            .map(|()| name.to_owned())
            .map_err(|e| GrantError {
                grant: format!("kv-read={name}"),
                kind: GrantErrorKind::Malformed,
                why: e.message,
            })
    }
}

impl GrantError {
    fn with_grant(mut self, text: &str) -> Self {
        self.grant = text.to_owned();
        self
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

/// Why a component's policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The name is not a valid component name.
    #[error("{0}")]
    Name(String),
    /// A grant is malformed or reaches into a reserved space.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// A limit setting is unknown, malformed or out of bounds.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A `wasi:config` value is malformed or past the bounds.
    #[error(transparent)]
    Config(#[from] crate::component_config::ConfigValueError),
}

/// Everything a manifest lets a component do, checked. See the module docs: this is the one
/// check every entry point runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentPolicy {
    /// Subjects it may publish on.
    pub publish: PublishGrants,
    /// Components whose key-value spaces it may read.
    pub kv_read: KvReadGrants,
    /// Its limits: the world's defaults with the settings applied.
    pub limits: Limits,
}

impl ComponentPolicy {
    /// Checks a manifest's fields as they are stored and sent: the component's `name`, its
    /// `world`, publish patterns, `kv-read` names and `NAME=VALUE` limit settings. The first
    /// problem is the error.
    pub fn check<S: AsRef<str>>(
        name: &str,
        world: World,
        publish: &[S],
        kv_read: &[S],
        limits: &[S],
    ) -> Result<Self, PolicyError> {
        validate_component_name(name).map_err(|e| PolicyError::Name(e.message))?;
        let publish = publish
            .iter()
            .map(|p| Grant::publish(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let kv_read = kv_read
            .iter()
            .map(|n| Grant::kv_read(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut resolved = Limits::for_world(world);
        for setting in limits {
            resolved.apply(setting.as_ref())?;
        }
        Ok(Self {
            publish: PublishGrants::new(publish),
            kv_read: KvReadGrants::new(kv_read),
            limits: resolved,
        })
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

    #[test]
    fn no_publish_grant_reaches_a_reserved_space() {
        for (grant, space) in [
            (">", ReservedSpace::Everything),
            ("*", ReservedSpace::Everything),
            ("*.>", ReservedSpace::Everything),
            ("*.billing", ReservedSpace::Everything),
            ("$JS.API.>", ReservedSpace::System),
            (
                "$JS.API.STREAM.PURGE.SANDBUS_DEAD_LETTERS",
                ReservedSpace::System,
            ),
            ("$KV.sandbus-kv.billing.total/acme", ReservedSpace::System),
            ("$KV.>", ReservedSpace::System),
            ("$O.>", ReservedSpace::System),
            ("$SRV.>", ReservedSpace::System),
            ("$SYS.>", ReservedSpace::System),
            ("_INBOX.>", ReservedSpace::Internal),
            ("_INBOX_viewer.abc", ReservedSpace::Internal),
            ("sandbus.>", ReservedSpace::Sandbus),
            (
                "sandbus.api.operator.component.remove",
                ReservedSpace::Sandbus,
            ),
            ("sandbus.dead-letter.billing", ReservedSpace::Sandbus),
            ("events.>", ReservedSpace::HostEvents),
            ("events.*", ReservedSpace::HostEvents),
            ("events.*.released", ReservedSpace::HostEvents),
            ("events.sandbus.lease.released", ReservedSpace::HostEvents),
            ("events.sandbus.>", ReservedSpace::HostEvents),
        ] {
            let error = Grant::parse(&format!("publish={grant}")).unwrap_err();
            assert_eq!(error.kind, GrantErrorKind::Reserved, "{grant}: {error}");
            assert!(error.why.contains(space.pattern()), "{grant}: {error}");
            // Every refusal says what is reserved, whatever the grant hit.
            for reserved in ReservedSpace::ALL {
                assert!(error.why.contains(reserved.pattern()), "{error}");
            }
        }
        for allowed in [
            "events.billing.>",
            "events.vm.started",
            "events.sandboxed.x",
            "alerts.>",
            "echo.*",
            "sandbus-like.x",
            "a.sandbus.b",
        ] {
            assert!(
                Grant::parse(&format!("publish={allowed}")).is_ok(),
                "{allowed}"
            );
        }
    }

    #[test]
    fn the_policy_check_refuses_what_a_hand_written_manifest_may_hold() {
        let ok = ComponentPolicy::check(
            "billing",
            World::Listener,
            &["events.billing.>"],
            &["quota"],
            &["memory=32MiB"],
        )
        .unwrap();
        assert!(ok.publish.allows("events.billing.usage"));
        assert!(ok.kv_read.allows("quota"));
        assert_eq!(ok.limits.memory, 32 << 20);
        let refused = |publish: &[&str], kv_read: &[&str], limits: &[&str]| {
            ComponentPolicy::check("billing", World::Listener, publish, kv_read, limits)
                .unwrap_err()
        };
        assert!(matches!(
            refused(&[">"], &[], &[]),
            PolicyError::Grant(GrantError {
                kind: GrantErrorKind::Reserved,
                ..
            })
        ));
        for name in ["", "*", "..", "a.b", "evil.x", "../etc/passwd"] {
            assert!(
                matches!(refused(&[], &[name], &[]), PolicyError::Grant(_)),
                "kv-read={name}"
            );
        }
        for limit in ["payload=1TiB", "log=0", "memory=1TiB", "colour=red"] {
            assert!(
                matches!(refused(&[], &[], &[limit]), PolicyError::Limit(_)),
                "{limit}"
            );
        }
        assert!(matches!(
            ComponentPolicy::check::<&str>("../etc", World::Listener, &[], &[], &[]),
            Err(PolicyError::Name(_))
        ));
    }
}
