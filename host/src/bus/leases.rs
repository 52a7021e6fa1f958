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

/// A held lease renewed every [`LEASE_RENEW`] on a task of its own, made by
/// [`HeldLease::keep_renewed`]: the holder watches [`RenewedLease::lost`] while it uses the
/// device, and takes the lease back with [`RenewedLease::stop`] to release it.
pub struct RenewedLease {
    /// Cancelled once the lease is lost.
    lost: tokio_util::sync::CancellationToken,
    /// Ends the renewals.
    stop: tokio_util::sync::CancellationToken,
    /// The renewal task; it ends with the newest revision of the lease.
    task: tokio::task::JoinHandle<HeldLease>,
    /// The lease as it was taken, for when the task did not end normally.
    taken: HeldLease,
}

impl HeldLease {
    /// Renews this lease in `leases` every [`LEASE_RENEW`] until `stop` is cancelled (or
    /// [`RenewedLease::stop`] is called). The lease counts as lost, and renewing ends, when
    /// a renewal finds it taken ([`BusErrorKind::Conflict`]) or when it could not be renewed
    /// for nearly a [`LEASE_TTL`] (the bus is unreachable: it may expire before the next
    /// try). Other failed renewals are logged and tried again at the next one.
    pub fn keep_renewed(
        self,
        leases: &LeaseTable,
        stop: tokio_util::sync::CancellationToken,
    ) -> RenewedLease {
        let leases = leases.clone();
        RenewedLease::spawn(self, RENEWAL, stop, move |mut held| {
            let leases = leases.clone();
            async move {
                let renewed = leases.renew(&mut held).await;
                (held, renewed)
            }
        })
    }
}

impl RenewedLease {
    /// Renews `held` with `renew` (which hands the lease back, at its new revision when it
    /// renewed) on `schedule` until `stop`, as [`HeldLease::keep_renewed`] says.
    fn spawn<R, F>(
        held: HeldLease,
        schedule: RenewalSchedule,
        stop: tokio_util::sync::CancellationToken,
        mut renew: R,
    ) -> Self
    where
        R: FnMut(HeldLease) -> F + Send + 'static,
        F: Future<Output = (HeldLease, Result<(), BusError>)> + Send,
    {
        let lost = tokio_util::sync::CancellationToken::new();
        let taken = held.clone();
        let task = tokio::spawn({
            let lost = lost.clone();
            let stop = stop.clone();
            async move {
                let mut held = held;
                let mut renewed = std::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(schedule.every) => {}
                    }
                    let result;
                    (held, result) = renew(held).await;
                    let Err(e) = result else {
                        renewed = std::time::Instant::now();
                        continue;
                    };
                    match schedule.judge(e.kind, renewed.elapsed()) {
                        FailedRenewal::Taken => {
                            tracing::error!(error = %e, "lost the device lease; stopping the run");
                            lost.cancel();
                            break;
                        }
                        FailedRenewal::Expiring => {
                            tracing::error!(error = %e, "could not renew the device lease within its TTL; stopping the run");
                            lost.cancel();
                            break;
                        }
                        FailedRenewal::Retry => {
                            tracing::warn!(error = %e, "could not renew the device lease; retrying")
                        }
                    }
                }
                held
            }
        });
        Self {
            lost,
            stop,
            task,
            taken,
        }
    }

    /// Cancelled once the lease is lost (taken, or not renewable for nearly a TTL): stop
    /// using the device at once.
    pub fn lost(&self) -> &tokio_util::sync::CancellationToken {
        &self.lost
    }

    /// Stops renewing and gives back the lease at its newest revision, to release it.
    pub async fn stop(self) -> HeldLease {
        self.stop.cancel();
        self.task.await.unwrap_or(self.taken)
    }
}

/// How often a lease is renewed, and how long it lives without a renewal.
#[derive(Debug, Clone, Copy)]
struct RenewalSchedule {
    every: Duration,
    ttl: Duration,
}

/// The schedule of every held lease.
const RENEWAL: RenewalSchedule = RenewalSchedule {
    every: LEASE_RENEW,
    ttl: LEASE_TTL,
};

/// What a failed renewal means for the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailedRenewal {
    /// It expired and was taken, or was removed: lost.
    Taken,
    /// Not renewed for nearly a TTL: it may expire before the next try, so it counts as lost.
    Expiring,
    /// Still within its TTL at the next try: try again then.
    Retry,
}

impl RenewalSchedule {
    /// Judges a renewal that failed with `kind`, `since_renewed` after the last one that
    /// worked.
    fn judge(self, kind: BusErrorKind, since_renewed: Duration) -> FailedRenewal {
        if kind == BusErrorKind::Conflict {
            FailedRenewal::Taken
        } else if since_renewed + self.every >= self.ttl {
            FailedRenewal::Expiring
        } else {
            FailedRenewal::Retry
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    #[test]
    fn a_lease_found_taken_is_lost_however_recently_it_was_renewed() {
        assert_eq!(
            RENEWAL.judge(BusErrorKind::Conflict, Duration::ZERO),
            FailedRenewal::Taken
        );
    }

    #[test]
    fn a_failed_renewal_still_within_the_ttl_at_the_next_try_is_tried_again() {
        let last_chance = LEASE_TTL - LEASE_RENEW - Duration::from_millis(1);
        for since in [Duration::ZERO, LEASE_RENEW, last_chance] {
            assert_eq!(
                RENEWAL.judge(BusErrorKind::Unavailable, since),
                FailedRenewal::Retry,
                "{since:?} after the last renewal"
            );
        }
    }

    #[test]
    fn a_lease_not_renewable_for_nearly_a_ttl_is_lost_before_it_expires() {
        // The next try would come a renewal period later: at or past the TTL.
        for since in [LEASE_TTL - LEASE_RENEW, LEASE_TTL, LEASE_TTL * 2] {
            assert_eq!(
                RENEWAL.judge(BusErrorKind::Unavailable, since),
                FailedRenewal::Expiring,
                "{since:?} after the last renewal"
            );
        }
    }

    /// A lease table that answers renewals from a script (then renews), each renewal a
    /// new revision.
    #[derive(Clone, Default)]
    struct ScriptedRenewals {
        failures: Arc<Mutex<VecDeque<BusErrorKind>>>,
        tries: Arc<Mutex<u64>>,
        newest: Arc<Mutex<u64>>,
    }

    impl ScriptedRenewals {
        fn failing(failures: impl IntoIterator<Item = BusErrorKind>) -> Self {
            let scripted = Self::default();
            *lock(&scripted.failures) = failures.into_iter().collect();
            *lock(&scripted.newest) = held().revision;
            scripted
        }

        fn keep_renewed(&self, schedule: RenewalSchedule) -> RenewedLease {
            let scripted = self.clone();
            RenewedLease::spawn(held(), schedule, Default::default(), move |mut held| {
                *lock(&scripted.tries) += 1;
                let result = match lock(&scripted.failures).pop_front() {
                    Some(kind) => Err(BusError::new(kind, "scripted")),
                    None => {
                        let mut newest = lock(&scripted.newest);
                        *newest += 1;
                        held.revision = *newest;
                        Ok(())
                    }
                };
                std::future::ready((held, result))
            })
        }

        fn tries(&self) -> u64 {
            *lock(&self.tries)
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held() -> HeldLease {
        HeldLease {
            lease: Lease {
                run: "run-1".to_owned(),
                host: "host-1".to_owned(),
                device: "dev-1".to_owned(),
                acquired_at: "2026-01-01T00:00:00Z".to_owned(),
            },
            key: "host-1.dev-1".to_owned(),
            revision: 7,
        }
    }

    /// Renewals every 10 ms of a lease that lives `ttl`.
    fn fast(ttl: Duration) -> RenewalSchedule {
        RenewalSchedule {
            every: Duration::from_millis(10),
            ttl,
        }
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let waited = async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), waited)
            .await
            .unwrap_or_else(|_| panic!("{what} within 10 s"));
    }

    #[tokio::test]
    async fn a_renewal_that_finds_the_lease_taken_loses_it_and_renews_no_more() {
        let scripted = ScriptedRenewals::failing([BusErrorKind::Conflict]);
        let renewed = scripted.keep_renewed(fast(Duration::from_secs(60)));
        tokio::time::timeout(Duration::from_secs(10), renewed.lost().cancelled())
            .await
            .expect("the lease is lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(scripted.tries(), 1);
        assert_eq!(renewed.stop().await.revision, held().revision);
    }

    #[tokio::test]
    async fn failed_renewals_within_the_ttl_are_retried_and_stop_gives_the_newest_revision() {
        let scripted =
            ScriptedRenewals::failing([BusErrorKind::Unavailable, BusErrorKind::Unavailable]);
        let renewed = scripted.keep_renewed(fast(Duration::from_secs(60)));
        until("two failures and two renewals", || scripted.tries() >= 4).await;
        assert!(!renewed.lost().is_cancelled());
        let back = renewed.stop().await;
        assert!(
            back.revision > held().revision,
            "renewed: {}",
            back.revision
        );
        assert_eq!(back.revision, *lock(&scripted.newest));
    }

    #[tokio::test]
    async fn a_lease_not_renewable_for_nearly_a_ttl_is_given_up_after_retries() {
        let scripted = ScriptedRenewals::failing([BusErrorKind::Unavailable; 1000]);
        let renewed = scripted.keep_renewed(fast(Duration::from_millis(500)));
        tokio::time::timeout(Duration::from_secs(10), renewed.lost().cancelled())
            .await
            .expect("the lease is given up");
        assert!(scripted.tries() >= 2, "retried first: {}", scripted.tries());
        assert_eq!(renewed.stop().await.revision, held().revision);
    }
}
