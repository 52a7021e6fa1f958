//! Extension points and the hooks registered at them, in the `sandbus-hook-points` bucket.
//!
//! One key per point (the point's name, e.g. `vm.pre-create`), holding its policy, its
//! deadline and the names of the hook components registered there. Changes are
//! compare-and-set on the entry's revision, so two concurrent `hook add`s at one point both
//! land. A call reads the entry once, so it sees one consistent set of hooks.

use std::time::Duration;

use async_nats::jetstream;

use super::bucket::BucketSpec;
use super::json_bucket::{BucketErrorKind, JsonBucket, Unreadable, Versioned};
use super::names;
use super::{BusError, BusErrorKind};
use crate::error::{Input, InvalidInput};

/// Longest point name, in bytes.
pub const MAX_POINT_LEN: usize = 128;

/// Deadline of a point nobody configured.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// Longest deadline a point may have: a hook is asked while an operation waits.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);

/// How often a change retries a lost compare-and-set.
const UPDATE_TRIES: usize = 16;

/// What a hook that traps, returns an error or misses the deadline counts as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookPolicy {
    /// As an allow: a broken hook never blocks the operation (it is reported).
    FailOpen,
    /// As a deny: nothing goes ahead unless every hook said allow. The default, so a
    /// broken policy hook is noticed instead of silently waved through.
    #[default]
    FailClosed,
}

impl HookPolicy {
    /// The name used in the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            HookPolicy::FailOpen => "fail-open",
            HookPolicy::FailClosed => "fail-closed",
        }
    }
}

/// An extension point: where hooks are asked, and how their failures count.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookPoint {
    /// Its name, e.g. `vm.pre-create`.
    pub point: String,
    /// What a failed hook counts as.
    #[serde(default)]
    pub policy: HookPolicy,
    /// How long a call waits for the hooks, in milliseconds.
    pub deadline_ms: u64,
    /// The hook components registered here, sorted.
    #[serde(default)]
    pub hooks: Vec<String>,
}

impl HookPoint {
    /// A point with the default policy and deadline and no hooks.
    pub fn new(point: &str) -> Self {
        Self {
            point: point.to_owned(),
            policy: HookPolicy::default(),
            deadline_ms: DEFAULT_DEADLINE.as_millis() as u64,
            hooks: Vec::new(),
        }
    }

    /// How long a call waits for the hooks.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// Checks a point name: dot-separated parts of `[a-z0-9_-]`, none empty, at most
/// [`MAX_POINT_LEN`] bytes (`vm.pre-create`, `device.pre-lease`).
pub fn validate_point(point: &str) -> Result<(), InvalidInput> {
    let invalid = |message: String| Err(InvalidInput::new(Input::HookPoint, message));
    if point.is_empty() || point.len() > MAX_POINT_LEN {
        return invalid(format!(
            "an extension point name must be 1 to {MAX_POINT_LEN} bytes long"
        ));
    }
    let part_ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if !point.split('.').all(part_ok) {
        return invalid(format!(
            "`{point}` is not an extension point name: use dot-separated parts of lower-case \
             letters, digits, `-` and `_`, e.g. vm.pre-create"
        ));
    }
    Ok(())
}

/// Checks a point deadline: above zero and at most [`MAX_DEADLINE`].
pub fn validate_deadline(deadline: Duration) -> Result<(), InvalidInput> {
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        return Err(InvalidInput::new(
            Input::HookDeadline,
            format!(
                "a point's deadline must be above 0 and at most {}s",
                MAX_DEADLINE.as_secs()
            ),
        ));
    }
    Ok(())
}

/// The cluster's extension points.
#[derive(Clone)]
pub struct HookPoints {
    points: JsonBucket<HookPoint>,
}

impl HookPoints {
    /// Creates the bucket if missing (the daemon does this).
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let spec = BucketSpec::new(
            names::HOOK_POINTS_BUCKET,
            "sandbus extension points and their hooks",
            replicas,
        )
        .history(4);
        Ok(Self {
            points: JsonBucket::ensure(js, spec).await?,
        })
    }

    /// The point `point`, if anyone configured it or registered a hook there.
    pub async fn get(&self, point: &str) -> Result<Option<HookPoint>, BusError> {
        Ok(self.entry(point).await?.map(|point| point.value))
    }

    async fn entry(&self, point: &str) -> Result<Option<Versioned<HookPoint>>, BusError> {
        self.points
            .entry(point)
            .await
            .map_err(|e| e.into_bus_error("read the extension point"))
    }

    /// Every point, by name.
    pub async fn list(&self) -> Result<Vec<HookPoint>, BusError> {
        self.points
            .values(Unreadable::Fails)
            .await
            .map_err(|e| e.into_bus_error("list the extension points"))
    }

    /// The points `hook` is registered at.
    pub async fn points_of(&self, hook: &str) -> Result<Vec<String>, BusError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|p| p.hooks.iter().any(|h| h == hook))
            .map(|p| p.point)
            .collect())
    }

    /// Applies `change` to the point (a new one if absent) and stores it, compare-and-set
    /// on the revision read (retried when someone else changed it in between). `change`
    /// may refuse; then nothing is stored. Returns the point as stored. The caller checks
    /// the name first ([`validate_point`]).
    pub async fn update(
        &self,
        point: &str,
        mut change: impl FnMut(&mut HookPoint) -> Result<(), BusError>,
    ) -> Result<HookPoint, BusError> {
        for _ in 0..UPDATE_TRIES {
            let current = self.entry(point).await?;
            let revision = current.as_ref().map(|p| p.revision);
            let mut next = current.map_or_else(|| HookPoint::new(point), |p| p.value);
            change(&mut next)?;
            next.hooks.sort();
            next.hooks.dedup();
            let written = match revision {
                None => self.points.create(point, &next).await,
                Some(revision) => self.points.update(point, &next, revision).await,
            };
            match written {
                Ok(_) => return Ok(next),
                // Someone else changed it in between (a failed write may hide that too):
                // read again.
                Err(e)
                    if e.kind() == BucketErrorKind::LostRace
                        || e.kind() == BucketErrorKind::Unavailable
                            && self.entry(point).await?.map(|p| p.revision) != revision =>
                {
                    tracing::debug!(point, error = %e, "extension point changed meanwhile; retrying");
                }
                Err(e) => return Err(e.into_bus_error("store the extension point")),
            }
        }
        Err(BusError::new(
            BusErrorKind::Conflict,
            format!("the extension point `{point}` kept changing; try again"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_and_deadlines_are_checked() {
        for ok in ["vm.pre-create", "device.pre-lease", "a", "x_1.y-2"] {
            assert_eq!(validate_point(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "VM.create",
            "vm..create",
            ".vm",
            "vm.",
            "vm create",
            "vm.*",
            "vm.>",
        ] {
            assert!(validate_point(bad).is_err(), "{bad}");
        }
        assert!(validate_point(&"a".repeat(MAX_POINT_LEN + 1)).is_err());
        assert_eq!(
            validate_deadline(Duration::ZERO).map_err(|e| e.kind),
            Err(Input::HookDeadline)
        );
        assert!(validate_deadline(MAX_DEADLINE + Duration::from_millis(1)).is_err());
        assert_eq!(validate_deadline(Duration::from_millis(200)), Ok(()));
        assert_eq!(HookPoint::new("p").policy, HookPolicy::FailClosed);
        assert_eq!(HookPoint::new("p").deadline(), DEFAULT_DEADLINE);
    }
}
