//! [`BucketError`]: what a [`JsonBucket`] operation met, for the store calling it to match on
//! ([`BucketErrorKind`]) and to report in its own words ([`BucketError::into_bus_error`]).

use std::error::Error as StdError;

use super::cas::is_lost_race;
#[cfg(doc)]
use super::json_bucket::{JsonBucket, is_valid_key};
use super::{BusError, BusErrorKind};

/// What kind of failure a [`JsonBucket`] operation met. `Copy`, for callers to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BucketErrorKind {
    /// The request failed, was refused or timed out; retrying later may work.
    Unavailable,
    /// A conditional write ([`JsonBucket::create`], [`JsonBucket::update`],
    /// [`JsonBucket::delete_at`]) found the key changed: another writer got there first. An
    /// expected outcome, not an outage: read again and decide again.
    LostRace,
    /// The stored value is not a record of this type (written by another version, or
    /// damaged).
    Undecodable,
    /// The value could not be encoded as JSON.
    Unencodable,
    /// Not a key a KV bucket takes ([`is_valid_key`]); refused before asking the server.
    InvalidKey,
}

/// A failed [`JsonBucket`] operation: its kind, the bucket and key it was about, and the
/// error underneath (the client's, the server's or serde's), kept as the `source`.
#[derive(Debug, thiserror::Error)]
pub(crate) struct BucketError {
    kind: BucketErrorKind,
    bucket: String,
    /// Empty for operations on the whole bucket (listing its keys, watching it).
    key: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl BucketError {
    pub(super) fn new(
        kind: BucketErrorKind,
        bucket: &str,
        key: &str,
        source: Option<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            source,
        }
    }

    /// A request about `key` (empty: the whole bucket) that failed with `error`: a
    /// [`BucketErrorKind::LostRace`] if it lost a compare-and-set race, else
    /// [`BucketErrorKind::Unavailable`].
    pub(super) fn failed(
        bucket: &str,
        key: &str,
        error: impl StdError + Send + Sync + 'static,
    ) -> Self {
        let kind = if is_lost_race(&error) {
            BucketErrorKind::LostRace
        } else {
            BucketErrorKind::Unavailable
        };
        Self::new(kind, bucket, key, Some(Box::new(error)))
    }

    /// What kind of failure it was.
    pub(crate) fn kind(&self) -> BucketErrorKind {
        self.kind
    }

    /// The error a store reports, `what` saying what it was doing ("read the run record"):
    /// [`BusErrorKind::Unavailable`] for a failed request (and, as the client reports it, a
    /// key the bucket does not take), [`BusErrorKind::Conflict`] for a lost race,
    /// [`BusErrorKind::Corrupt`] for a value that does not decode or encode.
    ///
    /// Its source is the error its message quotes: this one, or for a failed request the
    /// client's error (stores have always reported a failed request in the client's words).
    pub(crate) fn into_bus_error(self, what: &str) -> BusError {
        match self.kind {
            BucketErrorKind::Unavailable => match self.source {
                Some(source) => BusError::unavailable(what, source),
                None => BusError::unavailable(what, self),
            },
            BucketErrorKind::InvalidKey => BusError::unavailable(what, self),
            BucketErrorKind::LostRace => {
                let message = format!("cannot {what}: {self}; try again");
                BusError::new(BusErrorKind::Conflict, message).caused_by(self)
            }
            BucketErrorKind::Undecodable | BucketErrorKind::Unencodable => {
                let message = format!("cannot {what}: {self}");
                BusError::new(BusErrorKind::Corrupt, message).caused_by(self)
            }
        }
    }
}

impl std::fmt::Display for BucketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (bucket, key) = (&self.bucket, &self.key);
        match (self.kind, key.is_empty()) {
            (BucketErrorKind::Unavailable, true) => {
                write!(f, "a request to the KV bucket {bucket} failed")?
            }
            (BucketErrorKind::Unavailable, false) => {
                write!(f, "a request for `{key}` in the KV bucket {bucket} failed")?
            }
            (BucketErrorKind::LostRace, _) => {
                write!(f, "`{key}` in the KV bucket {bucket} changed meanwhile")?
            }
            (BucketErrorKind::Undecodable, _) => write!(
                f,
                "the stored `{key}` in the KV bucket {bucket} is not valid"
            )?,
            (BucketErrorKind::Unencodable, _) => {
                write!(f, "the value of `{key}` cannot be encoded")?
            }
            (BucketErrorKind::InvalidKey, _) => write!(
                f,
                "`{}` is not a KV key (letters, digits and -/_=. only, not starting or \
                 ending with a dot)",
                crate::text::echo(key)
            )?,
        }
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::kv;

    use super::*;

    #[test]
    fn a_lost_race_is_told_from_a_failure_and_becomes_a_conflict() {
        let lost = BucketError::failed(
            "b",
            "k",
            kv::UpdateError::new(kv::UpdateErrorKind::WrongLastRevision),
        );
        assert_eq!(lost.kind(), BucketErrorKind::LostRace);
        let conflict = lost.into_bus_error("store it");
        assert_eq!(conflict.kind, BusErrorKind::Conflict);
        // The message quotes the bucket's error, which is kept as the source, and the
        // client's error under it.
        let bucket = conflict
            .source()
            .and_then(|s| s.downcast_ref::<BucketError>())
            .expect("the bucket's error is the source");
        assert_eq!(bucket.kind(), BucketErrorKind::LostRace);
        assert!(
            bucket.source().is_some_and(|s| s.is::<kv::UpdateError>()),
            "{bucket:?}"
        );
        let failed = BucketError::failed(
            "b",
            "k",
            kv::UpdateError::new(kv::UpdateErrorKind::TimedOut),
        );
        assert_eq!(failed.kind(), BucketErrorKind::Unavailable);
        let bus = failed.into_bus_error("store it");
        assert_eq!(bus.kind, BusErrorKind::Unavailable);
        // The message a store gave before there was a JsonBucket: what, then the client's
        // error, which is the source.
        assert_eq!(bus.message, "cannot store it: timed out");
        assert!(
            bus.source().is_some_and(|s| s.is::<kv::UpdateError>()),
            "{bus:?}"
        );
    }

    #[test]
    fn an_invalid_key_is_reported_as_the_client_reported_it() {
        let error = BucketError::new(BucketErrorKind::InvalidKey, "b", "a b", None);
        assert!(
            error.to_string().contains("`a b` is not a KV key"),
            "{error}"
        );
        assert_eq!(
            error.into_bus_error("read it").kind,
            BusErrorKind::Unavailable
        );
    }
}
