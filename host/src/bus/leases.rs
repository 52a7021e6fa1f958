//! Device leases: who may use a device right now, cluster-wide.
//!
//! A lease is one KV entry per device (`<host>.<device>`), created with compare-and-set, so
//! two runs can never hold one device: the second `create` fails. The bucket's `max_age` is
//! the lease TTL and the holder renews its entry (a revision-checked update) well within it;
//! a host that dies stops renewing and its leases vanish on their own within [`LEASE_TTL`].
//! A renewal that finds the revision moved means the lease was lost: the holder must stop
//! using the device at once.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self};

use super::cas::is_lost_race;
use super::names;
use super::store::ensure_kv;
use super::{BusError, BusErrorKind};

/// How long a lease lives without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often a holder renews its lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(3);

/// What a lease entry says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The run holding the device.
    pub run: String,
    /// The host the device is on.
    pub host: String,
    /// The device id on that host.
    pub device: String,
    /// When the run took the device (RFC 3339).
    pub acquired_at: String,
}

/// A lease this process holds: renew it, release it.
#[derive(Debug, Clone)]
pub struct HeldLease {
    /// The lease.
    pub lease: Lease,
    key: String,
    revision: u64,
}

/// The leases bucket.
#[derive(Clone)]
pub struct LeaseTable {
    leases: kv::Store,
}

impl LeaseTable {
    /// Creates the bucket if missing.
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let leases = ensure_kv(
            js,
            kv::Config {
                bucket: names::LEASES_BUCKET.to_owned(),
                description: "sandbus device leases (entries expire unless renewed)".into(),
                history: 1,
                max_age: LEASE_TTL,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self { leases })
    }

    /// Takes the device for `lease.run`. Fails with [`BusErrorKind::Conflict`] (naming the
    /// holder) when another run holds it.
    pub async fn acquire(&self, lease: Lease) -> Result<HeldLease, BusError> {
        let key = names::lease_key(&lease.host, &lease.device);
        let body = serde_json::to_vec(&lease)
            .map_err(|e| BusError::new(BusErrorKind::Corrupt, e.to_string()))?;
        match self.leases.create(key.as_str(), body.into()).await {
            Ok(revision) => Ok(HeldLease {
                lease,
                key,
                revision,
            }),
            Err(e) if is_lost_race(&e) => {
                match self.entry(&key).await? {
                    // Our own create went through but its reply was lost (a retry after a
                    // timeout): the lease is ours.
                    Some((holder, revision)) if holder.run == lease.run => Ok(HeldLease {
                        lease,
                        key,
                        revision,
                    }),
                    holder => Err(BusError::new(
                        BusErrorKind::Conflict,
                        format!(
                            "the device is leased by {}",
                            holder.map_or_else(|| "another run".into(), |(l, _)| l.run)
                        ),
                    )),
                }
            }
            Err(e) => Err(BusError::unavailable("take the device lease", e)),
        }
    }

    /// Renews a held lease. [`BusErrorKind::Conflict`] means it was lost (expired and taken,
    /// or removed): stop using the device.
    pub async fn renew(&self, held: &mut HeldLease) -> Result<(), BusError> {
        let body = serde_json::to_vec(&held.lease)
            .map_err(|e| BusError::new(BusErrorKind::Corrupt, e.to_string()))?;
        match self
            .leases
            .update(held.key.as_str(), body.into(), held.revision)
            .await
        {
            Ok(revision) => {
                held.revision = revision;
                Ok(())
            }
            Err(e) if is_lost_race(&e) => {
                match self.entry(&held.key).await? {
                    // Our previous renewal was applied but its reply was lost: adopt it.
                    Some((holder, revision)) if holder.run == held.lease.run => {
                        held.revision = revision;
                        Ok(())
                    }
                    _ => Err(BusError::new(
                        BusErrorKind::Conflict,
                        "the device lease was lost (it expired or was taken)",
                    )),
                }
            }
            Err(e) => Err(BusError::unavailable("renew the device lease", e)),
        }
    }

    /// Gives the device back, if this lease still holds it.
    pub async fn release(&self, held: HeldLease) -> Result<(), BusError> {
        match self
            .leases
            .delete_expect_revision(held.key.as_str(), Some(held.revision))
            .await
        {
            Ok(()) => Ok(()),
            // Someone else's now (ours expired): nothing of ours to release.
            Err(e) if is_lost_race(&e) => Ok(()),
            Err(e) => Err(BusError::unavailable("release the device lease", e)),
        }
    }

    /// Who holds a device now, if anyone.
    pub async fn holder(&self, host: &str, device: &str) -> Result<Option<Lease>, BusError> {
        Ok(self
            .entry(&names::lease_key(host, device))
            .await?
            .map(|(lease, _)| lease))
    }

    async fn entry(&self, key: &str) -> Result<Option<(Lease, u64)>, BusError> {
        match self.leases.entry(key).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => {
                Ok(serde_json::from_slice(&entry.value)
                    .ok()
                    .map(|lease| (lease, entry.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(BusError::unavailable("read the device lease", e)),
        }
    }
}
