//! Device leases: who may use a device right now, cluster-wide.
//!
//! A lease is one KV entry per device (`<host>.<device>`), created with compare-and-set, so
//! two runs can never hold one device: the second `create` fails. The bucket's `max_age` is
//! the lease TTL and the holder renews its entry (a revision-checked update) well within it;
//! a host that dies stops renewing and its leases vanish on their own within [`LEASE_TTL`].
//! A renewal that finds the revision moved means the lease was lost: the holder must stop
//! using the device at once.

use std::time::Duration;

use async_nats::jetstream;

use super::bucket::BucketSpec;
use super::json_bucket::{BucketErrorKind, JsonBucket, Versioned};
use super::names;
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
    leases: JsonBucket<Lease>,
}

impl LeaseTable {
    /// Creates the bucket if missing.
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let spec = BucketSpec::new(
            names::LEASES_BUCKET,
            "sandbus device leases (entries expire unless renewed)",
            replicas,
        )
        .max_age(LEASE_TTL);
        Ok(Self {
            leases: JsonBucket::ensure(js, spec).await?,
        })
    }

    /// Takes the device for `lease.run`. Fails with [`BusErrorKind::Conflict`] (naming the
    /// holder) when another run holds it.
    pub async fn acquire(&self, lease: Lease) -> Result<HeldLease, BusError> {
        let key = names::lease_key(&lease.host, &lease.device);
        match self.leases.create(&key, &lease).await {
            Ok(revision) => Ok(HeldLease {
                lease,
                key,
                revision,
            }),
            Err(e) if e.kind() == BucketErrorKind::LostRace => {
                match self.entry(&key).await? {
                    // Our own create went through but its reply was lost (a retry after a
                    // timeout): the lease is ours.
                    Some(holder) if holder.value.run == lease.run => Ok(HeldLease {
                        lease,
                        key,
                        revision: holder.revision,
                    }),
                    holder => Err(BusError::new(
                        BusErrorKind::Conflict,
                        format!(
                            "the device is leased by {}",
                            holder.map_or_else(|| "another run".into(), |h| h.value.run)
                        ),
                    )),
                }
            }
            Err(e) => Err(e.into_bus_error("take the device lease")),
        }
    }

    /// Renews a held lease. [`BusErrorKind::Conflict`] means it was lost (expired and taken,
    /// or removed): stop using the device.
    pub async fn renew(&self, held: &mut HeldLease) -> Result<(), BusError> {
        match self
            .leases
            .update(&held.key, &held.lease, held.revision)
            .await
        {
            Ok(revision) => {
                held.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == BucketErrorKind::LostRace => {
                match self.entry(&held.key).await? {
                    // Our previous renewal was applied but its reply was lost: adopt it.
                    Some(holder) if holder.value.run == held.lease.run => {
                        held.revision = holder.revision;
                        Ok(())
                    }
                    _ => Err(BusError::new(
                        BusErrorKind::Conflict,
                        "the device lease was lost (it expired or was taken)",
                    )),
                }
            }
            Err(e) => Err(e.into_bus_error("renew the device lease")),
        }
    }

    /// Gives the device back, if this lease still holds it.
    pub async fn release(&self, held: HeldLease) -> Result<(), BusError> {
        match self.leases.delete_at(&held.key, held.revision).await {
            Ok(()) => Ok(()),
            // Someone else's now (ours expired): nothing of ours to release.
            Err(e) if e.kind() == BucketErrorKind::LostRace => Ok(()),
            Err(e) => Err(e.into_bus_error("release the device lease")),
        }
    }

    /// Who holds a device now, if anyone.
    pub async fn holder(&self, host: &str, device: &str) -> Result<Option<Lease>, BusError> {
        Ok(self
            .entry(&names::lease_key(host, device))
            .await?
            .map(|holder| holder.value))
    }

    /// The lease on `key` and its revision; none when the entry is not a lease this version
    /// can read (it expires on its own like any other).
    async fn entry(&self, key: &str) -> Result<Option<Versioned<Lease>>, BusError> {
        match self.leases.entry(key).await {
            Ok(lease) => Ok(lease),
            Err(e) if e.kind() == BucketErrorKind::Undecodable => Ok(None),
            Err(e) => Err(e.into_bus_error("read the device lease")),
        }
    }
}
