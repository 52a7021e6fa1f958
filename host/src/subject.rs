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

/// The subject a canonical event of type `ty` is published on.
pub fn event_subject(ty: &str) -> String {
    format!("{EVENTS_PREFIX}.{ty}")
}

/// Checks that `subject` is a concrete subject a message can be published on: dot separated
/// tokens, none empty, no wildcards, no whitespace or control characters.
pub fn validate_publish_subject(subject: &str) -> Result<(), String> {
    validate_tokens(subject, false)
}

/// Checks that `ty` can be an event type: the same rules as a subject, and tokens limited to
/// `[A-Za-z0-9_-]` so the type reads the same in every tool.
pub fn validate_event_type(ty: &str) -> Result<(), String> {
    validate_tokens(ty, false)?;
    if event_subject(ty).len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "the type is longer than {} bytes (its subject would be too long)",
            MAX_SUBJECT_LEN - EVENTS_PREFIX.len() - 1
        ));
    }
    if let Some(bad) = ty
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{ty}` has the character {bad:?}; use [A-Za-z0-9_-] and dots"
        ));
    }
    Ok(())
}

fn validate_tokens(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the subject is empty".into());
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(format!(
            "the subject is longer than {MAX_SUBJECT_LEN} bytes"
        ));
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("`{subject}` contains the character {c:?}"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("`{subject}` has an empty token"));
        }
        let is_wildcard = *token == "*" || *token == ">";
        if !wildcards && (is_wildcard || token.contains(['*', '>'])) {
            return Err(format!(
                "`{subject}` contains a wildcard; publish on a concrete subject"
            ));
        }
        if wildcards {
            if token.len() > 1 && token.contains(['*', '>']) {
                return Err(format!("`{subject}`: a wildcard must be a whole token"));
            }
            if *token == ">" && i + 1 != tokens.len() {
                return Err(format!("`{subject}`: `>` may only be the last token"));
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
    pub fn parse(pattern: &str) -> Result<Self, String> {
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
    fn malformed_patterns_and_subjects_are_refused() {
        for bad in ["", "a..b", "a.>.b", "a.b*", "a b", ".a"] {
            assert!(SubjectPattern::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["a.*", "a.>", "a..b", "", "a\tb"] {
            assert!(validate_publish_subject(bad).is_err(), "{bad:?}");
        }
        assert!(validate_event_type("vm.started").is_ok());
        let long = "t".repeat(MAX_SUBJECT_LEN - EVENTS_PREFIX.len());
        assert!(validate_event_type(&long).unwrap_err().contains("too long"));
        assert!(validate_event_type("vm.st@rted").is_err());
    }

    #[test]
    fn nothing_is_granted_by_default() {
        assert!(!PublishGrants::default().allows("events.anything"));
        let grants = PublishGrants::new([pattern("events.billing.>")]);
        assert!(grants.allows(&event_subject("billing.usage")));
        assert!(!grants.allows("secret.payroll"));
    }
}
