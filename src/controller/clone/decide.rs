//! The pure decision of the clone controller: from the object and the state of its clone work,
//! the new status, the event to record, the effect to carry out and when to look again; and
//! [`settled`], whether a clone without work in flight has anything left to do.

use crate::api::conditions::{
    reason, DELETION_BLOCKED, EXPIRED, EXPIRY_BLOCKED, INITIALIZED, READY, RECONCILING, STALLED,
    VERIFIED,
};
use crate::api::{
    Checksum, ClonePhase, CloneProgress as StatusProgress, DatabaseClone, DatabaseCloneStatus,
    ExpirationPolicy, Failure, Lineage, StoreSpec, VerifyMode,
};
use crate::controller::conditions::{is_true, true_reason, Conditions};
use crate::controller::{to_k8s_time, Notice, Problem};
use crate::engine::{CloneProgress, CloneReport, CloneStep, Fault};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// How often a running clone's progress is published.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// How long clone work runs before its progress is first published: a clone done sooner goes
/// from started straight to Ready (or its failure), with no progress and no `Cloning` event
/// written between; a burst of clones is bound by such writes.
pub const FIRST_PROGRESS_AFTER: Duration = Duration::from_secs(5);

/// Reason of a clone stalled because its source checkpoint is: it is resolved again whenever the
/// checkpoint changes.
pub const SOURCE_STALLED: &str = "SourceStalled";
/// Reason of a clone whose `scheduleRef` names no schedule: resolved again when one appears.
pub const SCHEDULE_NOT_FOUND: &str = "ScheduleNotFound";
/// Reason while clone work runs, before it reports a step.
pub const CLONING: &str = "Cloning";

/// The state of clone work as one reconcile sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// The clone has not started: the source is not usable yet, or for good.
    Waiting(Problem),
    /// The source is resolved; work can start.
    Startable(Start),
    Running(Option<CloneProgress>),
    Finished(Result<CloneReport, Problem>),
    /// Nothing in flight and the status says there is nothing to do (see [`settled`]), with what
    /// the reconcile checked of a Ready clone.
    Settled(SettledCheck),
}

/// A resolved source, as the status records it when work starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Start {
    /// The store holding source and clone.
    pub store: StoreSpec,
    /// The DatabaseCheckpoint the clone is made from, if any.
    pub source_checkpoint: Option<String>,
}

impl From<StoreSpec> for Start {
    fn from(store: StoreSpec) -> Self {
        Start {
            store,
            source_checkpoint: None,
        }
    }
}

/// What a reconcile checked of a settled, Ready clone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SettledCheck {
    /// Its data broke: an object it pins, or a parent's checkpoint it holds, is gone.
    pub broken: Option<Problem>,
    /// What depends on its data (looked up when its expiry is due): while anything does, it
    /// does not expire.
    pub holders: Vec<String>,
    /// When to check its health again (when checks are on).
    pub next_check: Option<Duration>,
}

/// How often a clone held by others looks again (their going also wakes it).
pub const HELD_RECHECK: Duration = Duration::from_secs(30);

/// Whether a Ready clone's expiry has come.
pub fn expiry_due(object: &DatabaseClone, now: DateTime<Utc>) -> bool {
    object.status.as_ref().is_some_and(|status| {
        is_true(&status.conditions, READY)
            && status
                .expiration_time
                .as_ref()
                .is_some_and(|t| t.0.as_millisecond() <= now.timestamp_millis())
    })
}

/// The status and event of a clone whose deletion waits because `holders` depend on its data.
pub fn deletion_blocked(
    object: &DatabaseClone,
    holders: &[String],
    now: DateTime<Utc>,
) -> (DatabaseCloneStatus, Option<Notice>) {
    let mut status = object.status.clone().unwrap_or_default();
    let newly = !is_true(&status.conditions, DELETION_BLOCKED);
    let message = held_message("deletion", holders);
    Conditions::new(
        &mut status.conditions,
        object.metadata.generation,
        to_k8s_time(now),
    )
    .set(DELETION_BLOCKED, true, reason::DEPENDENTS_EXIST, &message);
    let event = newly.then(|| Notice::warning("Delete", "DeletionBlocked", message));
    (status, event)
}

fn held_message(what: &str, holders: &[String]) -> String {
    format!(
        "the clone's data stays while others depend on it: {}; its {what} proceeds once they are gone",
        holders.join(", ")
    )
}

/// Reason while a clone's data is replaced after its `spec.resetToken` changed.
pub const RESETTING: &str = "Resetting";

/// Whether the clone's `spec.resetToken` asks for fresh data: work has started at least once,
/// for another token, and the object is not being deleted.
pub fn reset_requested(object: &DatabaseClone) -> bool {
    object.metadata.deletion_timestamp.is_none()
        && object.status.as_ref().is_some_and(|status| {
            status.attempts.is_some() && status.reset_token != object.spec.reset_token
        })
}

/// The status after a reset deleted the clone's data: as before work started, with the new token
/// and the history (attempts, the last failure) kept.
pub fn reset_status(object: &DatabaseClone, now: DateTime<Utc>) -> DatabaseCloneStatus {
    let previous = object.status.clone().unwrap_or_default();
    let mut status = DatabaseCloneStatus {
        observed_generation: object.metadata.generation,
        conditions: previous.conditions,
        phase: Some(ClonePhase::Pending),
        attempts: previous.attempts,
        last_failure: previous.last_failure,
        reset_token: object.spec.reset_token.clone(),
        ..Default::default()
    };
    let message = "spec.resetToken changed: the clone's data was deleted and is being made again";
    let mut conditions = Conditions::new(
        &mut status.conditions,
        object.metadata.generation,
        to_k8s_time(now),
    );
    conditions.set(RECONCILING, true, RESETTING, message);
    conditions.set(READY, false, RESETTING, message);
    conditions.set(INITIALIZED, false, RESETTING, "");
    for gone in [STALLED, VERIFIED, EXPIRED, EXPIRY_BLOCKED] {
        conditions.clear(gone);
    }
    status
}

/// The status of a clone whose reset waits because `holders` depend on its data: it stays as it
/// is (Ready, if it was), and `Stalled` says why the reset does not happen.
pub fn reset_blocked(
    object: &DatabaseClone,
    holders: &[String],
    now: DateTime<Utc>,
) -> DatabaseCloneStatus {
    let mut status = object.status.clone().unwrap_or_default();
    status.observed_generation = object.metadata.generation;
    let message = format!(
        "spec.resetToken changed, but the clone's data is not reset while others depend on it: \
         {}; it is reset once they are gone",
        holders.join(", ")
    );
    Conditions::new(
        &mut status.conditions,
        object.metadata.generation,
        to_k8s_time(now),
    )
    .set(STALLED, true, reason::DEPENDENTS_EXIST, &message);
    status
}

/// What the reconciler should do besides writing the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    StartWork,
    DeleteObject,
    ExpireData,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: DatabaseCloneStatus,
    pub event: Option<Notice>,
    pub effect: Effect,
    pub requeue_after: Option<Duration>,
}

/// Whether a clone with no work in flight has nothing to do but wait for its expiry: Ready,
/// Expired, or Stalled at this generation. A clone stalled on its source checkpoint is not
/// settled: it resolves its source again whenever the checkpoint changes.
pub fn settled(object: &DatabaseClone) -> bool {
    let Some(status) = &object.status else {
        return false;
    };
    let conditions = &status.conditions;
    let stalled_on_source = matches!(
        true_reason(conditions, STALLED),
        Some(SOURCE_STALLED | SCHEDULE_NOT_FOUND)
    );
    is_true(conditions, READY)
        || is_true(conditions, EXPIRED)
        || (is_true(conditions, STALLED)
            && !stalled_on_source
            && status.observed_generation == object.metadata.generation)
}

fn progress_status(p: &CloneProgress) -> StatusProgress {
    StatusProgress {
        step: p.step.name().into(),
        steps_done: p.step.done_before() as i32,
        steps_total: CloneStep::TOTAL as i32,
        objects_done: p.objects_done as i64,
        objects_total: p.objects_total as i64,
        bytes_done: p.bytes_done as i64,
        bytes_total: p.bytes_total as i64,
        percent: format!("{}%", p.percent()),
    }
}

/// The pure heart of the reconciler. `retry_delay` is the backoff for a transient failure.
pub fn decide(
    object: &DatabaseClone,
    work: &Work,
    now: DateTime<Utc>,
    retry_delay: Duration,
) -> Decision {
    let previous = object.status.clone().unwrap_or_default();
    let now_k8s = to_k8s_time(now);
    let mut status = previous.clone();
    status.observed_generation = object.metadata.generation;
    let mut conditions = Conditions::new(
        &mut status.conditions,
        object.metadata.generation,
        now_k8s.clone(),
    );
    let mut phase = previous.phase;
    let mut event = None;
    let mut effect = Effect::None;
    let mut requeue_after = None;
    match work {
        Work::Settled(check) => {
            let ready = is_true(&previous.conditions, READY);
            if let Some(problem) = check.broken.as_ref().filter(|_| ready) {
                (phase, requeue_after) = failed(&mut conditions, problem, retry_delay);
                event = Some(Notice::warning(
                    "Check",
                    &problem.reason,
                    problem.message.clone(),
                ));
            } else if let Some(expires) = previous.expiration_time.as_ref().filter(|_| ready) {
                let left = expires.0.as_millisecond() - now.timestamp_millis();
                if left <= 0 && !check.holders.is_empty() {
                    let message = held_message("expiry", &check.holders);
                    if !conditions.is_true(EXPIRY_BLOCKED) {
                        event = Some(Notice::warning("Expire", "ExpiryBlocked", message.clone()));
                    }
                    conditions.set(EXPIRY_BLOCKED, true, reason::DEPENDENTS_EXIST, &message);
                    requeue_after = Some(HELD_RECHECK);
                } else if left <= 0 {
                    conditions.clear(EXPIRY_BLOCKED);
                    match object.spec.expiration_policy {
                        ExpirationPolicy::Delete => effect = Effect::DeleteObject,
                        ExpirationPolicy::ExpireData => {
                            effect = Effect::ExpireData;
                            status.connection_config_map = None;
                            let message =
                                "the clone expired; its data was deleted and the object kept";
                            conditions.set(EXPIRED, true, "ExpireAfterElapsed", message);
                            conditions.set(READY, false, reason::EXPIRED, message);
                            phase = Some(ClonePhase::Expired);
                        }
                    }
                    let note = format!("expireAfter elapsed at {}", expires.0);
                    event = Some(Notice::normal("Expire", reason::EXPIRED, note));
                } else {
                    requeue_after = Some(Duration::from_millis(left as u64 + 200));
                }
            }
            if ready && check.broken.is_none() && effect == Effect::None {
                // Clones made before connection details existed get them too.
                if status.connection_config_map.is_none() {
                    status.connection_config_map = Some(super::connection::config_map_name(object));
                }
                requeue_after = match (requeue_after, check.next_check) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Work::Waiting(problem) => {
            (phase, requeue_after) = failed(&mut conditions, problem, retry_delay);
            if previous_reason(&previous) != Some(problem.reason.as_str()) {
                event = Some(Notice::warning(
                    "Clone",
                    &problem.reason,
                    problem.message.clone(),
                ));
            }
        }
        Work::Startable(start) => {
            effect = Effect::StartWork;
            status.store = Some(start.store.clone());
            status.source_checkpoint = start.source_checkpoint.clone();
            status.reset_token = object.spec.reset_token.clone();
            status.attempts = Some(previous.attempts.unwrap_or(0).saturating_add(1));
            status.start_time = previous.start_time.clone().or(Some(now_k8s.clone()));
            conditions.set(RECONCILING, true, CLONING, "clone work started");
            conditions.set(READY, false, CLONING, "clone work started");
            conditions.set(INITIALIZED, false, CLONING, "");
            conditions.clear(STALLED);
            phase = Some(ClonePhase::Cloning);
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::Running(progress) => {
            // A clone Ready before its first progress report is due (`FIRST_PROGRESS_AFTER`)
            // gets one event, its `Ready`; one that takes longer is announced at its first
            // progress report. An event is a write to the API server, and many clones at once
            // are bound by those.
            if let Some(progress) = progress {
                if previous.progress.is_none() && previous.attempts == Some(1) {
                    event = Some(Notice::normal("Clone", CLONING, "clone work started"));
                }
                let step = progress.step.name();
                let message = format!(
                    "{step}: {} of {} objects",
                    progress.objects_done, progress.objects_total
                );
                conditions.set(RECONCILING, true, step, &message);
                conditions.set(READY, false, step, &message);
                if progress.step > CloneStep::MarkInitialized {
                    let message = "SlateDB marked the clone initialized";
                    conditions.set(INITIALIZED, true, "Initialized", message);
                }
                phase = Some(if progress.step >= CloneStep::Verify {
                    ClonePhase::Verifying
                } else {
                    ClonePhase::Cloning
                });
                status.progress = Some(progress_status(progress));
            }
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::Finished(Ok(report)) => {
            let (verified, verified_message) = match object.spec.verify {
                VerifyMode::None => ("NotRequested", "verification is off (spec.verify: None)"),
                VerifyMode::Metadata => (
                    "MetadataResolved",
                    "every object the clone's manifest pins exists",
                ),
                VerifyMode::Content => (
                    "ContentMatches",
                    "content hashes match the source checkpoint and every block's CRC checks out",
                ),
            };
            let mut message = format!(
                "clone of checkpoint {} ready: {} objects referenced, {} copied ({} bytes)",
                report.source_checkpoint_id,
                report.objects_referenced,
                report.objects_copied,
                report.bytes_copied
            );
            if report.store_retries > 0 {
                message += &format!(
                    "; {} object-store requests failed transiently and were retried",
                    report.store_retries
                );
            }
            let initialized = "SlateDB marked the clone initialized";
            conditions.set(INITIALIZED, true, "Initialized", initialized);
            let verify_on = object.spec.verify != VerifyMode::None;
            conditions.set(VERIFIED, verify_on, verified, verified_message);
            conditions.set(READY, true, reason::SUCCEEDED, &message);
            conditions.set(EXPIRED, false, reason::NOT_EXPIRED, "");
            conditions.clear(RECONCILING);
            conditions.clear(STALLED);
            phase = Some(ClonePhase::Ready);
            record_report(&mut status, report, now);
            status.connection_config_map = Some(super::connection::config_map_name(object));
            if let Some(after) = object
                .spec
                .expire_after
                .as_ref()
                .and_then(|d| d.to_std().ok())
            {
                // Far-future expiries (an object admitted by an older CRD) saturate.
                let expires = chrono::TimeDelta::from_std(after)
                    .ok()
                    .and_then(|after| now.checked_add_signed(after))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                status.expiration_time = Some(to_k8s_time(expires));
                requeue_after = Some(after.saturating_add(Duration::from_millis(200)));
            }
            event = Some(Notice::normal("Clone", "Ready", message));
        }
        Work::Finished(Err(problem)) => {
            status.last_failure = Some(Failure {
                time: now_k8s.clone(),
                reason: problem.reason.clone(),
                message: problem.message.clone(),
            });
            (phase, requeue_after) = failed(&mut conditions, problem, retry_delay);
            event = Some(Notice::warning(
                "Clone",
                &problem.reason,
                problem.message.clone(),
            ));
        }
    }
    status.phase = phase;
    Decision {
        status,
        event,
        effect,
        requeue_after,
    }
}

/// A failure the clone cannot get past now: retried with backoff when transient (`Pending`), a
/// stall when permanent (`Failed`). Returns the phase and when to look again.
fn failed(
    conditions: &mut Conditions,
    problem: &Problem,
    retry_delay: Duration,
) -> (Option<ClonePhase>, Option<Duration>) {
    match problem.fault {
        Fault::Transient => {
            let retry_in = retry_delay.as_secs().max(1);
            let message = format!("{}; retrying in {retry_in}s", problem.message);
            conditions.retrying(&problem.reason, &message);
            (Some(ClonePhase::Pending), Some(retry_delay))
        }
        Fault::Permanent => {
            conditions.stall(&problem.reason, &problem.message);
            (Some(ClonePhase::Failed), None)
        }
    }
}

/// What a finished clone reported: its source, checksum and final progress.
fn record_report(status: &mut DatabaseCloneStatus, report: &CloneReport, now: DateTime<Utc>) {
    let now = to_k8s_time(now);
    status.source_checkpoint_id = Some(report.source_checkpoint_id.to_string());
    status.lineage = report
        .parents
        .iter()
        .map(|parent| Lineage {
            path: parent.path.clone(),
            source_checkpoint_id: parent.source_checkpoint_id.to_string(),
            final_checkpoint_id: parent.final_checkpoint_id.map(|id| id.to_string()),
        })
        .collect();
    status.completion_time = Some(now.clone());
    status.store_retries = Some(i64::try_from(report.store_retries).unwrap_or(i64::MAX));
    status.progress = Some(progress_status(&CloneProgress {
        step: CloneStep::Done,
        objects_done: report.objects_copied,
        objects_total: report.objects_copied,
        bytes_done: report.bytes_copied,
        bytes_total: report.bytes_copied,
    }));
    status.checksum = Some(Checksum {
        algorithm: "sha256".into(),
        metadata_digest: report.metadata_digest.clone(),
        content_root: report.content_root.clone(),
        verified_time: report.content_root.as_ref().map(|_| now.clone()),
    });
}

/// The reason of the abnormal condition (`Reconciling` or `Stalled`) the status shows, if any.
fn previous_reason(status: &DatabaseCloneStatus) -> Option<&str> {
    true_reason(&status.conditions, RECONCILING).or(true_reason(&status.conditions, STALLED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn object(spec: serde_json::Value, status: Option<DatabaseCloneStatus>) -> DatabaseClone {
        let mut object: DatabaseClone = serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
            "metadata": {"name": "pr-1", "namespace": "dev", "uid": "u1", "generation": 2},
            "spec": spec
        }))
        .unwrap();
        object.status = status;
        object
    }

    fn spec() -> serde_json::Value {
        json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/pr-1"}})
    }

    fn store() -> StoreSpec {
        StoreSpec::inline("file:///data")
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
    }

    fn report() -> CloneReport {
        CloneReport {
            source_checkpoint_id: uuid::Uuid::from_u128(9),
            parents: Vec::new(),
            objects_referenced: 5,
            bytes_referenced: 1000,
            objects_copied: 1,
            bytes_copied: 10,
            metadata_digest: "a".repeat(64),
            content_root: None,
            resumed: false,
            attempts: 1,
            store_retries: 3,
            duration: Duration::from_millis(5),
            phases: Vec::new(),
        }
    }

    fn cond<'a>(
        d: &'a Decision,
        t: &str,
    ) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        d.status.conditions.iter().find(|c| c.type_ == t)
    }

    fn problem(fault: Fault, reason: &str) -> Problem {
        Problem {
            fault,
            reason: reason.into(),
            message: format!("{reason} happened"),
        }
    }

    #[test]
    fn a_waiting_source_reconciles_with_backoff() {
        let d = decide(
            &object(spec(), None),
            &Work::Waiting(problem(Fault::Transient, "SourceNotReady")),
            now(),
            Duration::from_secs(4),
        );
        assert_eq!(cond(&d, "Reconciling").unwrap().reason, "SourceNotReady");
        assert_eq!(cond(&d, "Ready").unwrap().status, "False");
        assert_eq!(d.requeue_after, Some(Duration::from_secs(4)));
        assert_eq!(d.status.phase, Some(ClonePhase::Pending));
        assert_eq!(d.status.observed_generation, Some(2));
        assert_eq!(d.effect, Effect::None);
    }

    #[test]
    fn a_startable_clone_starts_and_counts_the_attempt() {
        let d = decide(
            &object(spec(), None),
            &Work::Startable(store().into()),
            now(),
            Duration::ZERO,
        );
        assert_eq!(d.effect, Effect::StartWork);
        assert_eq!(
            d.status.store,
            Some(store()),
            "the status records the store"
        );
        assert_eq!(d.status.attempts, Some(1));
        assert!(d.status.start_time.is_some());
        assert_eq!(d.status.phase, Some(ClonePhase::Cloning));
        assert_eq!(d.requeue_after, Some(PROGRESS_INTERVAL));
        let again = decide(
            &object(spec(), Some(d.status)),
            &Work::Startable(store().into()),
            now(),
            Duration::ZERO,
        );
        assert_eq!(again.status.attempts, Some(2));
        assert!(
            d.event.is_none() && again.event.is_none(),
            "a start alone publishes no event"
        );
    }

    #[test]
    fn a_clone_still_running_at_its_first_progress_report_is_announced_once() {
        let started = decide(
            &object(spec(), None),
            &Work::Startable(store().into()),
            now(),
            Duration::ZERO,
        );
        let progress = CloneProgress {
            step: CloneStep::Verify,
            objects_done: 1,
            objects_total: 6,
            bytes_done: 10,
            bytes_total: 60,
        };
        let first = decide(
            &object(spec(), Some(started.status.clone())),
            &Work::Running(Some(progress.clone())),
            now(),
            Duration::ZERO,
        );
        assert_eq!(
            first.event.as_ref().map(|e| e.reason.as_str()),
            Some(CLONING)
        );
        let second = decide(
            &object(spec(), Some(first.status)),
            &Work::Running(Some(progress.clone())),
            now(),
            Duration::ZERO,
        );
        assert!(second.event.is_none(), "announced once");
        let retried = decide(
            &object(spec(), Some(started.status)),
            &Work::Startable(store().into()),
            now(),
            Duration::ZERO,
        );
        let retry_report = decide(
            &object(spec(), Some(retried.status)),
            &Work::Running(Some(progress)),
            now(),
            Duration::ZERO,
        );
        assert!(
            retry_report.event.is_none(),
            "one Cloning event per clone, not per attempt"
        );
    }

    #[test]
    fn running_work_publishes_progress() {
        let progress = CloneProgress {
            step: CloneStep::Verify,
            objects_done: 3,
            objects_total: 6,
            bytes_done: 30,
            bytes_total: 60,
        };
        let d = decide(
            &object(spec(), None),
            &Work::Running(Some(progress)),
            now(),
            Duration::ZERO,
        );
        let p = d.status.progress.clone().unwrap();
        assert_eq!(
            (p.step.as_str(), p.objects_done, p.objects_total),
            ("Verify", 3, 6)
        );
        assert_eq!(p.percent, "91%");
        assert_eq!(d.status.phase, Some(ClonePhase::Verifying));
        assert_eq!(cond(&d, "Initialized").unwrap().status, "True");
        assert_eq!(d.requeue_after, Some(PROGRESS_INTERVAL));
    }

    #[test]
    fn finished_work_is_ready_with_an_exact_expiry() {
        let mut s = spec();
        s["expireAfter"] = json!("15s");
        let d = decide(
            &object(s, None),
            &Work::Finished(Ok(report())),
            now(),
            Duration::ZERO,
        );
        assert_eq!(cond(&d, "Ready").unwrap().status, "True");
        assert_eq!(cond(&d, "Initialized").unwrap().status, "True");
        assert_eq!(cond(&d, "Verified").unwrap().reason, "MetadataResolved");
        assert_eq!(d.status.phase, Some(ClonePhase::Ready));
        assert_eq!(d.status.progress.as_ref().unwrap().percent, "100%");
        assert_eq!(d.status.store_retries, Some(3));
        assert!(cond(&d, "Ready")
            .unwrap()
            .message
            .contains("3 object-store requests"));
        let expires = d.status.expiration_time.clone().unwrap().0;
        assert_eq!(expires.as_second() - now().timestamp(), 15);
        assert!(d.requeue_after.unwrap() >= Duration::from_secs(15));
        assert_eq!(d.event.as_ref().unwrap().reason, "Ready");
    }

    #[test]
    fn expiry_deletes_the_object_or_the_data_per_policy() {
        let mut s = spec();
        s["expireAfter"] = json!("15s");
        let ready = decide(
            &object(s.clone(), None),
            &Work::Finished(Ok(report())),
            now(),
            Duration::ZERO,
        )
        .status;
        let later = now() + chrono::TimeDelta::seconds(16);
        let early = decide(
            &object(s.clone(), Some(ready.clone())),
            &Work::Settled(SettledCheck::default()),
            now() + chrono::TimeDelta::seconds(5),
            Duration::ZERO,
        );
        assert_eq!(early.effect, Effect::None);
        assert!(early.requeue_after.unwrap() >= Duration::from_secs(10));
        let delete = decide(
            &object(s.clone(), Some(ready.clone())),
            &Work::Settled(SettledCheck::default()),
            later,
            Duration::ZERO,
        );
        assert_eq!(delete.effect, Effect::DeleteObject);
        s["expirationPolicy"] = json!("ExpireData");
        let expire = decide(
            &object(s, Some(ready)),
            &Work::Settled(SettledCheck::default()),
            later,
            Duration::ZERO,
        );
        assert_eq!(expire.effect, Effect::ExpireData);
        assert_eq!(cond(&expire, "Expired").unwrap().status, "True");
        assert_eq!(cond(&expire, "Ready").unwrap().status, "False");
        assert_eq!(expire.status.phase, Some(ClonePhase::Expired));
    }

    #[test]
    fn failures_record_last_failure_and_stall_only_when_permanent() {
        let transient = decide(
            &object(spec(), None),
            &Work::Finished(Err(problem(Fault::Transient, "StoreTimeout"))),
            now(),
            Duration::from_secs(2),
        );
        assert_eq!(
            cond(&transient, "Reconciling").unwrap().reason,
            "StoreTimeout"
        );
        assert!(cond(&transient, "Stalled").is_none());
        assert_eq!(
            transient.status.last_failure.as_ref().unwrap().reason,
            "StoreTimeout"
        );
        let permanent = decide(
            &object(spec(), None),
            &Work::Finished(Err(problem(Fault::Permanent, "TargetNotEmpty"))),
            now(),
            Duration::ZERO,
        );
        assert_eq!(
            cond(&permanent, "Stalled").unwrap().reason,
            "TargetNotEmpty"
        );
        assert!(cond(&permanent, "Reconciling").is_none());
        assert_eq!(permanent.status.phase, Some(ClonePhase::Failed));
        assert_eq!(permanent.requeue_after, None, "no hot loop");
    }
}

#[cfg(test)]
mod settled_tests {
    use super::*;
    use serde_json::json;

    fn with_conditions(conditions: serde_json::Value, observed: i64) -> DatabaseClone {
        serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
            "metadata": {"name": "pr-1", "namespace": "dev", "uid": "u1", "generation": 2},
            "spec": {"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "c"}},
            "status": {"observedGeneration": observed, "conditions": conditions}
        }))
        .unwrap()
    }

    fn condition(type_: &str, status: &str, reason: &str) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": reason, "message": "",
               "lastTransitionTime": "2026-11-26T12:00:00Z"})
    }

    #[test]
    fn ready_expired_and_stalled_clones_are_settled_but_not_one_stalled_on_its_source() {
        let ready = condition(READY, "True", "Succeeded");
        let expired = condition(EXPIRED, "True", "ExpireAfterElapsed");
        let stalled = condition(STALLED, "True", "NotADatabase");
        let on_source = condition(STALLED, "True", SOURCE_STALLED);
        assert!(settled(&with_conditions(json!([ready]), 2)));
        assert!(settled(&with_conditions(json!([expired]), 2)));
        assert!(settled(&with_conditions(json!([stalled.clone()]), 2)));
        assert!(
            !settled(&with_conditions(json!([stalled]), 1)),
            "a new generation is looked at again"
        );
        assert!(!settled(&with_conditions(json!([on_source]), 2)));
        assert!(!settled(&with_conditions(json!([]), 2)));
    }
}
