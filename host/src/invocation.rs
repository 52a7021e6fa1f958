//! [`InvocationId`]: names one call of one component, on every log line and in its result.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Identifies one invocation. Unique across daemons (a random per-process prefix) and within
/// one (a counter); making and copying one costs no allocation and no randomness, which
/// matters at a few microseconds per event. Displayed as `<prefix>-<n>`, e.g. `9f3a01c2-17`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvocationId(u64);

static NEXT: AtomicU64 = AtomicU64::new(1);

fn process_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| hex::encode(rand::random::<[u8; 4]>()))
}

impl InvocationId {
    /// A new id, never returned before by this process.
    pub fn next() -> Self {
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", process_prefix(), self.0)
    }
}

impl serde::Serialize for InvocationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_share_the_process_prefix() {
        let (a, b) = (InvocationId::next(), InvocationId::next());
        assert_ne!(a, b);
        let (ta, tb) = (a.to_string(), b.to_string());
        assert_eq!(ta.split('-').next(), tb.split('-').next());
        assert_eq!(ta.split('-').next().map(str::len), Some(8));
    }
}
