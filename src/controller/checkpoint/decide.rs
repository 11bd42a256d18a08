//! The pure decision of the checkpoint controller: from the object, what SlateDB said and the
//! clones that depend on it, the new status, the event to record and when to look again.

use crate::api::conditions::{
    reason, EXPIRED, INCLUDES_DURABLE_WRITES, IN_USE, READY, RECONCILING, STALLED,
};
use crate::api::{
    CheckpointCoverage, CheckpointPhase, Checksum, DatabaseCheckpoint, DatabaseCheckpointStatus,
};
use crate::controller::conditions::{is_true, true_reason, Conditions};
use crate::controller::{to_k8s_time, Notice, Problem};
use crate::engine::{CheckpointInfo, Coverage, Fault, Fingerprint, Obtained};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// How long a Stalled checkpoint waits before looking again (a spec change or a watched Secret
/// wakes it sooner; this catches fixes made in the store).
pub const STALLED_RECHECK: Duration = Duration::from_secs(600);

/// What one reconcile learned from SlateDB.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    Present {
        checkpoint: CheckpointInfo,
        /// Set when this reconcile created or adopted the checkpoint.
        obtained: Option<Obtained>,
        /// A new fingerprint, or `None` when the recorded one still applies.
        fingerprint: Option<Fingerprint>,
        /// When to check the health of its data again (when checks are on).
        recheck_in: Option<Duration>,
        /// What it covers of the database's writes, when this reconcile looked (with a new
        /// fingerprint).
        coverage: Option<Coverage>,
    },
    Failed(Problem),
}

/// The DatabaseClones that reference a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependents {
    pub total: usize,
    /// Names of those not yet initialized, failed for good, or being deleted: they need the checkpoint.
    pub in_progress: Vec<String>,
}

/// What to do after a reconcile: the status to write, an event, and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: DatabaseCheckpointStatus,
    pub event: Option<Notice>,
    pub requeue_after: Option<Duration>,
}

/// The pure heart of the reconciler. `retry_delay` is the backoff for a transient failure.
pub fn decide(
    object: &DatabaseCheckpoint,
    observation: &Observation,
    dependents: &Dependents,
    now: DateTime<Utc>,
    retry_delay: Duration,
) -> Decision {
    let previous = object.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = object.metadata.generation;
    status.dependents = Some(dependents.total as i32);
    let mut conditions = Conditions::new(
        &mut status.conditions,
        object.metadata.generation,
        to_k8s_time(now),
    );
    if dependents.in_progress.is_empty() {
        conditions.set(IN_USE, false, "NoClonesInProgress", "");
    } else {
        let message = format!(
            "clones being initialized from it: {}",
            dependents.in_progress.join(", ")
        );
        conditions.set(IN_USE, true, "ClonesInProgress", &message);
    }

    let (phase, event, requeue_after) = match observation {
        Observation::Present {
            checkpoint,
            obtained,
            recheck_in,
            ..
        } => {
            conditions.clear(STALLED);
            conditions.clear(RECONCILING);
            let remaining = checkpoint
                .expire_time
                .map(|at| at.signed_duration_since(now));
            match remaining {
                Some(left) if left <= chrono::TimeDelta::zero() => {
                    let message = format!(
                        "the checkpoint expired at {}",
                        checkpoint.expire_time.unwrap_or(now)
                    );
                    conditions.set(EXPIRED, true, "LifetimeElapsed", &message);
                    conditions.set(READY, false, reason::EXPIRED, &message);
                    let event = (!is_true(&previous.conditions, EXPIRED))
                        .then(|| Notice::normal("Expire", reason::EXPIRED, message));
                    (Some(CheckpointPhase::Expired), event, None)
                }
                _ => {
                    conditions.set(EXPIRED, false, reason::NOT_EXPIRED, "");
                    let message = format!(
                        "checkpoint {} pins manifest {}",
                        checkpoint.id, checkpoint.manifest_id
                    );
                    conditions.set(READY, true, reason::SUCCEEDED, &message);
                    let event = match obtained {
                        Some(Obtained::Created) => {
                            Some(Notice::normal("Create", "Created", message))
                        }
                        Some(Obtained::Adopted) => {
                            Some(Notice::normal("Adopt", "Adopted", message))
                        }
                        None => None,
                    };
                    // Wake up exactly at expiry, or for the next health check if sooner.
                    let at_expiry = remaining
                        .and_then(|left| left.to_std().ok())
                        .map(|d| d + Duration::from_millis(200));
                    let requeue = match (at_expiry, *recheck_in) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    (Some(CheckpointPhase::Ready), event, requeue)
                }
            }
        }
        Observation::Failed(problem)
            if problem.reason == "CheckpointMissing" && expired_before(&previous, now) =>
        {
            // SlateDB's GC removed the checkpoint after it expired: that is the expected end.
            let message = format!(
                "the checkpoint expired and was garbage-collected ({})",
                problem.message
            );
            conditions.set(EXPIRED, true, "LifetimeElapsed", &message);
            conditions.set(READY, false, reason::EXPIRED, &message);
            conditions.clear(STALLED);
            conditions.clear(RECONCILING);
            (Some(CheckpointPhase::Expired), None, None)
        }
        Observation::Failed(problem) if problem.fault == Fault::Transient => {
            let message = format!(
                "{}; retrying in {}s",
                problem.message,
                retry_delay.as_secs().max(1)
            );
            let stays_ready = conditions.retrying(&problem.reason, &message);
            let phase = if stays_ready {
                previous.phase
            } else {
                Some(CheckpointPhase::Pending)
            };
            let event = (true_reason(&previous.conditions, RECONCILING)
                != Some(problem.reason.as_str()))
            .then(|| Notice::warning("Checkpoint", &problem.reason, message.clone()));
            (phase, event, Some(retry_delay))
        }
        Observation::Failed(problem) => {
            conditions.stall(&problem.reason, &problem.message);
            let event = (true_reason(&previous.conditions, STALLED)
                != Some(problem.reason.as_str()))
            .then(|| Notice::warning("Checkpoint", &problem.reason, problem.message.clone()));
            (Some(CheckpointPhase::Failed), event, Some(STALLED_RECHECK))
        }
    };
    status.phase = phase;
    if let Observation::Present {
        checkpoint,
        fingerprint,
        coverage,
        ..
    } = observation
    {
        record_checkpoint(&mut status, checkpoint, fingerprint.as_ref(), now);
        if let Some(coverage) = coverage {
            record_coverage(&mut status, coverage, object, now);
        }
    }
    Decision {
        status,
        event,
        requeue_after,
    }
}

/// What the checkpoint covers, and the `IncludesDurableWrites` condition saying so.
fn record_coverage(
    status: &mut DatabaseCheckpointStatus,
    coverage: &Coverage,
    object: &DatabaseCheckpoint,
    now: DateTime<Utc>,
) {
    status.coverage = Some(CheckpointCoverage {
        last_l0_write_time: coverage.last_l0_write.map(to_k8s_time),
        wal_objects_not_included: i64::try_from(coverage.wal_objects_not_included)
            .unwrap_or(i64::MAX),
    });
    let mut conditions = Conditions::new(
        &mut status.conditions,
        object.metadata.generation,
        to_k8s_time(now),
    );
    match coverage.wal_objects_not_included {
        0 => conditions.set(
            INCLUDES_DURABLE_WRITES,
            true,
            "NoWalTail",
            "no WAL object of the database lay beyond the checkpoint's manifest when it was made",
        ),
        n => {
            let message = format!(
                "{n} WAL object(s) the writer had made durable were beyond the checkpoint's \
                 manifest when it was made: their writes are not in this checkpoint. For a \
                 checkpoint with every durable write, let the application take one with \
                 Db::create_checkpoint(CheckpointScope::Durable) and adopt it (spec.source.mode: \
                 Adopt), or checkpoint the database after its writer closed"
            );
            conditions.set(
                INCLUDES_DURABLE_WRITES,
                false,
                "WalTailNotIncluded",
                &message,
            );
        }
    }
}

/// The facts of the checkpoint, and its fingerprint when one was taken.
fn record_checkpoint(
    status: &mut DatabaseCheckpointStatus,
    checkpoint: &CheckpointInfo,
    fingerprint: Option<&Fingerprint>,
    now: DateTime<Utc>,
) {
    status.checkpoint_id = Some(checkpoint.id.to_string());
    status.manifest_id = i64::try_from(checkpoint.manifest_id).ok();
    status.create_time = Some(to_k8s_time(checkpoint.create_time));
    status.expiration_time = checkpoint.expire_time.map(to_k8s_time);
    if let Some(fingerprint) = fingerprint {
        status.size_bytes = i64::try_from(fingerprint.size_bytes).ok();
        status.object_count = i64::try_from(fingerprint.object_count).ok();
        status.checksum = Some(Checksum {
            algorithm: "sha256".into(),
            metadata_digest: fingerprint.metadata_digest.clone(),
            content_root: fingerprint.content_root.clone(),
            verified_time: fingerprint.content_root.as_ref().map(|_| to_k8s_time(now)),
        });
    }
}

fn expired_before(status: &DatabaseCheckpointStatus, now: DateTime<Utc>) -> bool {
    status
        .expiration_time
        .as_ref()
        .is_some_and(|t| t.0.as_millisecond() <= now.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use kube::runtime::events::EventType;
    use serde_json::json;

    fn object(status: Option<DatabaseCheckpointStatus>) -> DatabaseCheckpoint {
        let mut object: DatabaseCheckpoint = serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint",
            "metadata": {"name": "nightly", "namespace": "prod", "uid": "u1", "generation": 3},
            "spec": {"database": {"store": {"url": "file:///data"}, "path": "orders"}}
        }))
        .unwrap();
        object.status = status;
        object
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
    }

    fn checkpoint(expire_in: Option<i64>) -> CheckpointInfo {
        CheckpointInfo {
            id: uuid::Uuid::from_u128(7),
            manifest_id: 42,
            name: None,
            create_time: now() - chrono::TimeDelta::seconds(5),
            expire_time: expire_in.map(|s| now() + chrono::TimeDelta::seconds(s)),
        }
    }

    fn fingerprint() -> Fingerprint {
        Fingerprint {
            metadata_digest: "d".repeat(64),
            content_root: None,
            blocks_checked: None,
            size_bytes: 100,
            object_count: 6,
        }
    }

    fn condition<'a>(
        decision: &'a Decision,
        type_: &str,
    ) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        decision.status.conditions.iter().find(|c| c.type_ == type_)
    }

    #[test]
    fn a_new_checkpoint_is_ready_with_its_facts_and_a_created_event() {
        let observation = Observation::Present {
            checkpoint: checkpoint(None),
            obtained: Some(Obtained::Created),
            fingerprint: Some(fingerprint()),
            coverage: None,
            recheck_in: None,
        };
        let d = decide(
            &object(None),
            &observation,
            &Dependents::default(),
            now(),
            Duration::ZERO,
        );
        assert_eq!(condition(&d, "Ready").unwrap().status, "True");
        assert!(condition(&d, "Stalled").is_none() && condition(&d, "Reconciling").is_none());
        assert_eq!(d.status.observed_generation, Some(3));
        assert_eq!(d.status.manifest_id, Some(42));
        assert_eq!(d.status.object_count, Some(6));
        assert_eq!(d.status.phase, Some(CheckpointPhase::Ready));
        assert_eq!(d.event.as_ref().unwrap().reason, "Created");
        assert_eq!(d.requeue_after, None, "no expiry, nothing to wake up for");
    }

    #[test]
    fn a_lifetime_requeues_for_exactly_the_remaining_time_then_expires() {
        let live = Observation::Present {
            checkpoint: checkpoint(Some(30)),
            obtained: None,
            fingerprint: None,
            coverage: None,
            recheck_in: None,
        };
        let d = decide(
            &object(None),
            &live,
            &Dependents::default(),
            now(),
            Duration::ZERO,
        );
        let requeue = d.requeue_after.unwrap();
        assert!(
            requeue >= Duration::from_secs(30) && requeue < Duration::from_secs(31),
            "{requeue:?}"
        );
        assert!(d.event.is_none());
        let ended = Observation::Present {
            checkpoint: checkpoint(Some(-1)),
            obtained: None,
            fingerprint: None,
            coverage: None,
            recheck_in: None,
        };
        let d2 = decide(
            &object(Some(d.status)),
            &ended,
            &Dependents::default(),
            now(),
            Duration::ZERO,
        );
        assert_eq!(condition(&d2, "Expired").unwrap().status, "True");
        assert_eq!(condition(&d2, "Ready").unwrap().status, "False");
        assert_eq!(d2.event.as_ref().unwrap().reason, "Expired");
        assert_eq!(d2.status.phase, Some(CheckpointPhase::Expired));
        // Garbage-collected after expiry: still Expired, not Stalled.
        let gone = Observation::Failed(Problem {
            fault: Fault::Permanent,
            reason: "CheckpointMissing".into(),
            message: "gone".into(),
        });
        let d3 = decide(
            &object(Some(d2.status)),
            &gone,
            &Dependents::default(),
            now(),
            Duration::ZERO,
        );
        assert!(condition(&d3, "Stalled").is_none());
        assert_eq!(condition(&d3, "Expired").unwrap().status, "True");
    }

    #[test]
    fn transient_failures_reconcile_with_backoff_and_keep_ready_once_reached() {
        let failed = Observation::Failed(Problem {
            fault: Fault::Transient,
            reason: "SecretNotFound".into(),
            message: "no secret".into(),
        });
        let d = decide(
            &object(None),
            &failed,
            &Dependents::default(),
            now(),
            Duration::from_secs(8),
        );
        assert_eq!(
            condition(&d, "Reconciling").unwrap().reason,
            "SecretNotFound"
        );
        assert!(condition(&d, "Reconciling")
            .unwrap()
            .message
            .contains("retrying in 8s"));
        assert_eq!(condition(&d, "Ready").unwrap().status, "False");
        assert_eq!(d.requeue_after, Some(Duration::from_secs(8)));
        assert_eq!(d.event.as_ref().unwrap().type_, EventType::Warning);
        // The same failure again records no second event.
        let again = decide(
            &object(Some(d.status.clone())),
            &failed,
            &Dependents::default(),
            now(),
            Duration::from_secs(16),
        );
        assert!(again.event.is_none());
        // A Ready checkpoint that hits a transient error stays Ready.
        let ready = Observation::Present {
            checkpoint: checkpoint(None),
            obtained: None,
            fingerprint: Some(fingerprint()),
            coverage: None,
            recheck_in: None,
        };
        let ready = decide(
            &object(None),
            &ready,
            &Dependents::default(),
            now(),
            Duration::ZERO,
        );
        let blip = decide(
            &object(Some(ready.status)),
            &failed,
            &Dependents::default(),
            now(),
            Duration::from_secs(1),
        );
        assert_eq!(condition(&blip, "Ready").unwrap().status, "True");
        assert_eq!(condition(&blip, "Reconciling").unwrap().status, "True");
    }

    #[test]
    fn permanent_failures_stall_without_a_hot_loop() {
        let failed = Observation::Failed(Problem {
            fault: Fault::Permanent,
            reason: "NotADatabase".into(),
            message: "no manifest".into(),
        });
        let d = decide(
            &object(None),
            &failed,
            &Dependents::default(),
            now(),
            Duration::ZERO,
        );
        assert_eq!(condition(&d, "Stalled").unwrap().reason, "NotADatabase");
        assert_eq!(condition(&d, "Ready").unwrap().status, "False");
        assert_eq!(d.status.phase, Some(CheckpointPhase::Failed));
        assert!(d.requeue_after.unwrap() >= Duration::from_secs(300));
        // Recovery clears Stalled.
        let ok = Observation::Present {
            checkpoint: checkpoint(None),
            obtained: None,
            fingerprint: Some(fingerprint()),
            coverage: None,
            recheck_in: None,
        };
        let d2 = decide(
            &object(Some(d.status)),
            &ok,
            &Dependents::default(),
            now(),
            Duration::ZERO,
        );
        assert!(condition(&d2, "Stalled").is_none());
    }

    #[test]
    fn dependents_in_progress_mark_it_in_use() {
        let ok = Observation::Present {
            checkpoint: checkpoint(None),
            obtained: None,
            fingerprint: Some(fingerprint()),
            coverage: None,
            recheck_in: None,
        };
        let dependents = Dependents {
            total: 3,
            in_progress: vec!["pr-1".into(), "pr-2".into()],
        };
        let d = decide(&object(None), &ok, &dependents, now(), Duration::ZERO);
        assert_eq!(d.status.dependents, Some(3));
        let in_use = condition(&d, "InUse").unwrap();
        assert_eq!(in_use.status, "True");
        assert!(in_use.message.contains("pr-1, pr-2"));
    }
}
