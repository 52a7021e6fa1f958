//! Telling a lost compare-and-set race from a failure, whatever form the server answers in.
//!
//! Every conditional KV write sandbus makes (an `update` on a revision, a `create` that must
//! find the key absent, a `delete_expect_revision`) is a compare-and-set: when someone else
//! wrote the key first, the write is refused, and the caller reads again and decides again.
//! That refusal is an expected outcome, not an outage, so it must never surface as
//! [`BusErrorKind::Unavailable`](super::BusErrorKind::Unavailable).
//!
//! async-nats 0.51 recognises the refusal only by JetStream error code 10071 ("wrong last
//! sequence: N"). The leader of a replicated stream on a clustered nats-server 2.15 sends that
//! when the key's last revision differs, but when another write of the same key is still in
//! process (proposed, not yet applied: the usual case when writers race) it refuses with
//! 10164, the "constant" form of the same error (no sequence to name), which async-nats files
//! under `UpdateErrorKind::Other` (and `CreateErrorKind::Other`). [`is_lost_race`] accepts
//! both, so callers match on one predicate instead of on the client's kinds.

use async_nats::jetstream::kv;
use async_nats::jetstream::{self, ErrorCode};

/// Whether a failed conditional KV write lost a race: the key's revision was not the one
/// expected, because another writer got there first. Read the key again and retry (or report
/// a conflict); anything else is a real failure.
///
/// Looks at the error and every error in its `source()` chain: an [`kv::UpdateError`] (also
/// what `delete_expect_revision` returns) of kind `WrongLastRevision`, a [`kv::CreateError`]
/// of kind `AlreadyExists`, a conditional publish's `PublishError` of kind `WrongLastSequence`, or the server's own [`jetstream::Error`] with code 10071 or 10164
/// (see the [module docs](self) for why both).
pub(crate) fn is_lost_race(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(update) = error.downcast_ref::<kv::UpdateError>() {
            if update.kind() == kv::UpdateErrorKind::WrongLastRevision {
                return true;
            }
        } else if let Some(create) = error.downcast_ref::<kv::CreateError>() {
            if create.kind() == kv::CreateErrorKind::AlreadyExists {
                return true;
            }
        } else if let Some(publish) = error.downcast_ref::<jetstream::context::PublishError>() {
            // A raw conditional publish (a delete marker on a revision).
            if publish.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                return true;
            }
        } else if let Some(server) = error.downcast_ref::<jetstream::Error>() {
            return is_wrong_last_sequence(server.error_code());
        }
        next = error.source();
    }
    false
}

/// The JetStream error codes that mean "the expected last sequence did not match".
fn is_wrong_last_sequence(code: ErrorCode) -> bool {
    code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
        || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server error reply, as async-nats decodes it.
    fn server_error(err_code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": err_code,
            "description": "wrong last sequence: 7",
        }))
        .unwrap_or_else(|e| panic!("a server error decodes: {e}"))
    }

    #[test]
    fn both_forms_of_wrong_last_sequence_are_a_lost_race() {
        // What async-nats builds from a single server's 10071.
        let single = kv::UpdateError::with_source(
            kv::UpdateErrorKind::WrongLastRevision,
            server_error(10071),
        );
        assert!(is_lost_race(&single));
        // What it builds from a clustered server's 10164: kind Other, the code underneath.
        let clustered =
            kv::UpdateError::with_source(kv::UpdateErrorKind::Other, server_error(10164));
        assert!(is_lost_race(&clustered));
        // A create that failed on it, two levels down.
        let create = kv::CreateError::with_source(kv::CreateErrorKind::Other, clustered);
        assert!(is_lost_race(&create));
        assert!(is_lost_race(&kv::CreateError::new(
            kv::CreateErrorKind::AlreadyExists
        )));
    }

    #[test]
    fn other_failures_are_not_a_lost_race() {
        assert!(!is_lost_race(&kv::UpdateError::new(
            kv::UpdateErrorKind::TimedOut
        )));
        // 10077: maximum messages per subject exceeded.
        let other = kv::UpdateError::with_source(kv::UpdateErrorKind::Other, server_error(10077));
        assert!(!is_lost_race(&other));
        assert!(!is_lost_race(&kv::CreateError::new(
            kv::CreateErrorKind::Publish
        )));
        assert!(!is_lost_race(&std::io::Error::other("broken pipe")));
    }
}
