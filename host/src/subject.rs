//! Subjects: validation, grant patterns and the names the platform builds.
//!
//! Every subject sandbus publishes on is built by a function here, never by a `format!`
//! somewhere else, so the naming scheme can be read (and changed) in one place. This module
//! is pure string logic: the sandbox uses it to check grants without depending on NATS.

use std::fmt;

/// Prefix of the subjects canonical events are published on: `events.<type>`.
pub const EVENTS_PREFIX: &str = "events";

/// Longest subject accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 512;

/// First token of every subject sandbus itself uses outside the events stream: the control
/// API (`sandbus.api.>`), run logs (`sandbus.run.>`), dead letters (`sandbus.dead-letter.>`).
pub const SANDBUS_PREFIX: &str = "sandbus";

/// First token of the event types sandbus daemons emit about themselves
/// (`sandbus.lease.released`, `sandbus.metering`...). Listeners such as billing charge on these
/// events, so only daemons may publish them: a guest's `emit`, the `event.publish` endpoint and
/// every grant refuse this type space (see [`ReservedSpace::HostEvents`]).
pub const HOST_EVENT_PREFIX: &str = "sandbus";

/// The subject a canonical event of type `ty` is published on.
pub fn event_subject(ty: &str) -> String {
    format!("{EVENTS_PREFIX}.{ty}")
}

/// Whether `ty` is a host event type: its first token is [`HOST_EVENT_PREFIX`].
pub fn is_host_event_type(ty: &str) -> bool {
    ty.split('.').next() == Some(HOST_EVENT_PREFIX)
}

/// How every reply inbox's first token starts: NATS's `_INBOX` and the roles' own
/// (`_INBOX_viewer`...). A daemon answers a control request only on such a subject: the
/// reply goes out with the daemon's rights, so a requester must not pick where it lands.
pub const REPLY_INBOX_PREFIX: &str = "_INBOX";

/// The inbox a daemon receives its own replies on (JetStream answers, consumer deliveries).
/// Not a reply inbox ([`is_reply_inbox`]): no request can make a daemon answer into it.
pub const DAEMON_INBOX_PREFIX: &str = "_SANDBUS_DAEMON";

/// Whether `subject` is a reply inbox a daemon may answer on: its first token is `_INBOX`
/// or starts with `_INBOX_` (a role's or a person's inbox), or it is a reply subject the NATS
/// server made itself (`_R_.…` for a service imported from another account,
/// `_GR_.<cluster>.<server>.<reply>` across a gateway: clients may not publish with those),
/// and it is a valid subject to publish on.
pub fn is_reply_inbox(subject: &str) -> bool {
    if validate_publish_subject(subject).is_err() {
        return false;
    }
    let mut tokens = subject.splitn(4, '.');
    match tokens.next() {
        Some("_R_") => true,
        Some("_GR_") => match (tokens.next(), tokens.next(), tokens.next()) {
            (Some(_), Some(_), Some(reply)) => is_reply_inbox(reply),
            _ => false,
        },
        Some(first) => {
            first == REPLY_INBOX_PREFIX
                || first
                    .strip_prefix(REPLY_INBOX_PREFIX)
                    .is_some_and(|rest| rest.starts_with('_') && rest.len() > 1)
        }
        None => false,
    }
}

/// The CloudEvents `source` prefix of the events daemons emit (`/sandbus/hosts/<id>`): like
/// host event types, no one else may claim it.
pub const HOST_SOURCE_PREFIX: &str = "/sandbus/hosts/";

/// Why an event that is not a daemon's must not be published as it is: it has a host event
/// type, or it claims a daemon as its source. `None` when it may go.
pub fn host_claim(ty: &str, source: &str) -> Option<String> {
    if is_host_event_type(ty) {
        return Some(format!(
            "the type `{}` is reserved: `{HOST_EVENT_PREFIX}.*` events come only from sandbus \
             daemons (billing charges on them); use a type of your own",
            crate::text::echo(ty)
        ));
    }
    if source.starts_with(HOST_SOURCE_PREFIX) {
        return Some(format!(
            "the source `{}` is reserved: `{HOST_SOURCE_PREFIX}…` names a sandbus daemon; use \
             a source of your own",
            crate::text::echo(source)
        ));
    }
    None
}

/// A part of the subject space that only NATS and sandbus daemons may publish on. No grant
/// may reach into one, and a guest's publish there is refused at run time too (a manifest
/// recorded by an older version, or written by hand, cannot get around it).
///
/// Reserving whole first tokens keeps the rule one that a person can check by eye and that
/// the NATS permissions `sandbus permissions` prints can state exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservedSpace {
    /// A pattern whose first token is a wildcard (`>`, `*.>`): it covers every space below.
    Everything,
    /// `$…`: NATS and JetStream machinery (`$JS.API`, `$KV`, `$O`, `$SRV`, `$SYS`...).
    System,
    /// `_…`: reply inboxes (`_INBOX.>`) and other NATS-internal subjects.
    Internal,
    /// `sandbus.>`: the control API, run logs and dead letters.
    Sandbus,
    /// `events.sandbus.>`: host events, which only daemons emit.
    HostEvents,
}

impl ReservedSpace {
    /// Every reserved space, for messages and docs.
    pub const ALL: [ReservedSpace; 4] = [
        ReservedSpace::System,
        ReservedSpace::Internal,
        ReservedSpace::Sandbus,
        ReservedSpace::HostEvents,
    ];

    /// The space as a pattern a person reads.
    pub fn pattern(self) -> &'static str {
        match self {
            ReservedSpace::Everything => ">",
            ReservedSpace::System => "$*.>",
            ReservedSpace::Internal => "_*.>",
            ReservedSpace::Sandbus => "sandbus.>",
            ReservedSpace::HostEvents => "events.sandbus.>",
        }
    }

    /// What lives there.
    pub fn what(self) -> &'static str {
        match self {
            ReservedSpace::Everything => "every subject, the reserved ones included",
            ReservedSpace::System => "NATS and JetStream APIs ($JS, $KV, $O, $SRV, $SYS)",
            ReservedSpace::Internal => "reply inboxes (_INBOX) and NATS-internal subjects",
            ReservedSpace::Sandbus => "sandbus's control API, run logs and dead letters",
            ReservedSpace::HostEvents => "host events, which only sandbus daemons emit",
        }
    }

    /// The reserved space a subject or pattern reaches into, if any. `subject` may hold
    /// wildcards: `events.>` reaches into [`ReservedSpace::HostEvents`], `>` into everything.
    pub fn reached_by(subject: &str) -> Option<ReservedSpace> {
        let mut tokens = subject.split('.');
        let first = tokens.next().unwrap_or_default();
        match first {
            "*" | ">" => Some(ReservedSpace::Everything),
            _ if first.starts_with('$') => Some(ReservedSpace::System),
            _ if first.starts_with('_') => Some(ReservedSpace::Internal),
            SANDBUS_PREFIX => Some(ReservedSpace::Sandbus),
            EVENTS_PREFIX => match tokens.next() {
                Some("*" | ">" | HOST_EVENT_PREFIX) => Some(ReservedSpace::HostEvents),
                _ => None,
            },
            _ => None,
        }
    }

    /// One line listing what is reserved, for error messages.
    pub fn summary() -> String {
        Self::ALL
            .iter()
            .map(|s| format!("{} ({})", s.pattern(), s.what()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ReservedSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.pattern(), self.what())
    }
}

/// What is wrong with a subject, an event type or a subject pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectErrorKind {
    /// It is empty.
    Empty,
    /// It is longer than [`MAX_SUBJECT_LEN`] bytes (an event type: its subject would be).
    TooLong,
    /// It has a character it may not have (whitespace or a control character; in an event
    /// type, anything but `[A-Za-z0-9_-]` and dots).
    Character,
    /// One of its dot-separated tokens is empty.
    EmptyToken,
    /// A wildcard where a concrete subject is needed.
    Wildcard,
    /// A wildcard that is not a whole token, or a `>` that is not the last one.
    MisplacedWildcard,
}

/// A subject, event type or pattern that is not valid; the message says what is wrong.
pub type SubjectError = crate::error::Error<SubjectErrorKind>;

/// Checks that `subject` is a concrete subject a message can be published on: dot separated
/// tokens, none empty, no wildcards, no whitespace or control characters.
pub fn validate_publish_subject(subject: &str) -> Result<(), SubjectError> {
    validate_tokens(subject, false)
}

/// Checks that `ty` can be an event type: the same rules as a subject, and tokens limited to
/// `[A-Za-z0-9_-]` so the type reads the same in every tool.
pub fn validate_event_type(ty: &str) -> Result<(), SubjectError> {
    validate_tokens(ty, false)?;
    if event_subject(ty).len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::new(
            SubjectErrorKind::TooLong,
            format!(
                "the type is longer than {} bytes (its subject would be too long)",
                MAX_SUBJECT_LEN - EVENTS_PREFIX.len() - 1
            ),
        ));
    }
    if let Some(bad) = ty
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(SubjectError::new(
            SubjectErrorKind::Character,
            format!("`{ty}` has the character {bad:?}; use [A-Za-z0-9_-] and dots"),
        ));
    }
    Ok(())
}

fn validate_tokens(subject: &str, wildcards: bool) -> Result<(), SubjectError> {
    let invalid = |kind, message: String| Err(SubjectError::new(kind, message));
    if subject.is_empty() {
        return invalid(SubjectErrorKind::Empty, "the subject is empty".into());
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return invalid(
            SubjectErrorKind::TooLong,
            format!("the subject is longer than {MAX_SUBJECT_LEN} bytes"),
        );
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return invalid(
            SubjectErrorKind::Character,
            format!("`{subject}` contains the character {c:?}"),
        );
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return invalid(
                SubjectErrorKind::EmptyToken,
                format!("`{subject}` has an empty token"),
            );
        }
        let is_wildcard = *token == "*" || *token == ">";
        if !wildcards && (is_wildcard || token.contains(['*', '>'])) {
            return invalid(
                SubjectErrorKind::Wildcard,
                format!("`{subject}` contains a wildcard; publish on a concrete subject"),
            );
        }
        if wildcards {
            if token.len() > 1 && token.contains(['*', '>']) {
                return invalid(
                    SubjectErrorKind::MisplacedWildcard,
                    format!("`{subject}`: a wildcard must be a whole token"),
                );
            }
            if *token == ">" && i + 1 != tokens.len() {
                return invalid(
                    SubjectErrorKind::MisplacedWildcard,
                    format!("`{subject}`: `>` may only be the last token"),
                );
            }
        }
    }
    Ok(())
}

/// A subject pattern with NATS wildcards: `*` matches one token, a final `>` one or more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectPattern(String);

impl SubjectPattern {
    /// Parses a pattern such as `events.billing.>` or `metrics.*.cpu`.
    pub fn parse(pattern: &str) -> Result<Self, SubjectError> {
        validate_tokens(pattern, true)?;
        Ok(Self(pattern.to_owned()))
    }

    /// Whether the concrete `subject` matches this pattern.
    pub fn matches(&self, subject: &str) -> bool {
        let mut pattern = self.0.split('.');
        let mut tokens = subject.split('.');
        loop {
            match (pattern.next(), tokens.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(t)) if p == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether some concrete subject matches both patterns (NATS calls this a collision; a
    /// consumer's filters must not collide).
    pub fn overlaps(&self, other: &SubjectPattern) -> bool {
        fn overlap(a: &[&str], b: &[&str]) -> bool {
            match (a.split_first(), b.split_first()) {
                (None, None) => true,
                (Some((&">", _)), Some(_)) | (Some(_), Some((&">", _))) => true,
                (Some((x, a)), Some((y, b))) if *x == "*" || *y == "*" || x == y => overlap(a, b),
                _ => false,
            }
        }
        let a: Vec<&str> = self.0.split('.').collect();
        let b: Vec<&str> = other.0.split('.').collect();
        overlap(&a, &b)
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The subjects a component may publish on. Empty by default: nothing is granted unless the
/// component's manifest says so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishGrants {
    patterns: Vec<SubjectPattern>,
}

impl PublishGrants {
    /// Grants built from patterns.
    pub fn new(patterns: impl IntoIterator<Item = SubjectPattern>) -> Self {
        Self {
            patterns: patterns.into_iter().collect(),
        }
    }

    /// Whether `subject` is covered by at least one grant.
    pub fn allows(&self, subject: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(subject))
    }

    /// The granted patterns.
    pub fn patterns(&self) -> &[SubjectPattern] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> SubjectPattern {
        SubjectPattern::parse(p).unwrap()
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(pattern("events.billing.>").matches("events.billing.usage"));
        assert!(pattern("events.billing.>").matches("events.billing.usage.daily"));
        assert!(!pattern("events.billing.>").matches("events.billing"));
        assert!(pattern("a.*.c").matches("a.b.c"));
        assert!(!pattern("a.*.c").matches("a.b.d"));
        assert!(!pattern("a.*").matches("a.b.c"));
        assert!(pattern("a.b").matches("a.b"));
        assert!(!pattern("a.b").matches("a.b.c"));
    }

    #[test]
    fn patterns_overlap_when_some_subject_matches_both() {
        for (a, b, overlap) in [
            ("vm.*", "vm.started", true),
            ("vm.>", "vm.a.b", true),
            ("vm.>", "vm", false),
            ("vm.*", "vm.a.b", false),
            ("*.started", "vm.*", true),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            (">", "x", true),
            ("a.*.c", "a.b.*", true),
            ("a.*.c", "a.b.d", false),
        ] {
            assert_eq!(pattern(a).overlaps(&pattern(b)), overlap, "{a} / {b}");
            assert_eq!(pattern(b).overlaps(&pattern(a)), overlap, "{b} / {a}");
        }
    }

    #[test]
    fn reserved_spaces_are_named_for_subjects_and_patterns() {
        for (subject, space) in [
            ("$JS.API.STREAM.PURGE.X", Some(ReservedSpace::System)),
            ("_INBOX.abc", Some(ReservedSpace::Internal)),
            (
                "sandbus.api.viewer.component.list",
                Some(ReservedSpace::Sandbus),
            ),
            ("events.sandbus.metering", Some(ReservedSpace::HostEvents)),
            ("events.sandbus", Some(ReservedSpace::HostEvents)),
            ("events.>", Some(ReservedSpace::HostEvents)),
            (">", Some(ReservedSpace::Everything)),
            ("events.billing.usage", None),
            ("events", None),
            ("alerts.sandbus", None),
        ] {
            assert_eq!(ReservedSpace::reached_by(subject), space, "{subject}");
        }
        assert!(is_host_event_type("sandbus.lease.released"));
        assert!(!is_host_event_type("sandboxes.created"));
        for inbox in [
            "_INBOX.abc.def",
            "_INBOX_viewer.abc",
            "_R_.abc.def",
            "_GR_.c1.s1._INBOX_viewer.abc",
        ] {
            assert!(is_reply_inbox(inbox), "{inbox}");
        }
        for not_inbox in [
            "$JS.API.STREAM.DELETE.X",
            "events.sandbus.x",
            "_INBOX.*",
            "x._INBOX",
            "_INBOXfoo.x",
            "_INBOX_.x",
            "_SANDBUS_DAEMON.abc.def",
            "_GR_.c1.s1.$JS.API.STREAM.DELETE.X",
            "_GR_.c1",
        ] {
            assert!(!is_reply_inbox(not_inbox), "{not_inbox}");
        }
        assert!(host_claim("sandbus.metering", "/cli").is_some());
        assert!(host_claim("vm.started", "/sandbus/hosts/h1").is_some());
        assert_eq!(host_claim("vm.started", "/sandbus/cli"), None);
    }

    #[test]
    fn malformed_patterns_and_subjects_are_refused() {
        for bad in ["", "a..b", "a.>.b", "a.b*", "a b", ".a"] {
            assert!(SubjectPattern::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["a.*", "a.>", "a..b", "", "a\tb"] {
            assert!(validate_publish_subject(bad).is_err(), "{bad:?}");
        }
        assert!(validate_event_type("vm.started").is_ok());
        let long = "t".repeat(MAX_SUBJECT_LEN - EVENTS_PREFIX.len());
        let too_long = validate_event_type(&long).unwrap_err();
        assert!(too_long.message.contains("too long"), "{too_long}");
        assert_eq!(too_long.kind, SubjectErrorKind::TooLong);
        assert!(validate_event_type("vm.st@rted").is_err());
    }

    #[test]
    fn a_refused_subject_says_which_rule_it_broke() {
        let kind = |result: Result<(), SubjectError>| result.map_err(|e| e.kind).err();
        assert_eq!(
            kind(validate_publish_subject("")),
            Some(SubjectErrorKind::Empty)
        );
        assert_eq!(
            kind(validate_publish_subject("a b")),
            Some(SubjectErrorKind::Character)
        );
        assert_eq!(
            kind(validate_publish_subject("a..b")),
            Some(SubjectErrorKind::EmptyToken)
        );
        assert_eq!(
            kind(validate_publish_subject("a.*")),
            Some(SubjectErrorKind::Wildcard)
        );
        assert_eq!(
            kind(SubjectPattern::parse("a.>.b").map(|_| ())),
            Some(SubjectErrorKind::MisplacedWildcard)
        );
        assert_eq!(
            kind(validate_event_type("vm.st@rted")),
            Some(SubjectErrorKind::Character)
        );
        // The message is the text callers (and guests, in `invalid-subject`) have always had.
        assert_eq!(
            validate_publish_subject("a.*").unwrap_err().to_string(),
            "`a.*` contains a wildcard; publish on a concrete subject"
        );
    }

    #[test]
    fn nothing_is_granted_by_default() {
        assert!(!PublishGrants::default().allows("events.anything"));
        let grants = PublishGrants::new([pattern("events.billing.>")]);
        assert!(grants.allows(&event_subject("billing.usage")));
        assert!(!grants.allows("secret.payroll"));
    }
}
