//! The pure decision of the copy controller: from the object and what one reconcile observed of
//! its work (in the operator's pool or as a Job), the new status, the event, the effect to carry
//! out and when to look again.

use crate::api::conditions::{reason, READY, RECONCILING, STALLED, VERIFIED};
use crate::api::{
    Checksum, CloneProgress as StatusProgress, CopyJobStatus, CopyPhase as Phase, CopyRun,
    CopyVerify, DatabaseCopy, DatabaseCopyStatus, Failure, StoreSpec,
};
use crate::controller::conditions::{is_true, true_reason, Conditions};
use crate::controller::{to_k8s_time, Notice, Problem};
use crate::engine::{CopyPhase, CopyProgress, CopyReport, Fault, PromoteReport, ReencodeReport};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Condition: the copy was turned into an independent writable database.
pub const PROMOTED: &str = "Promoted";
/// Reason while copy work runs.
pub const COPYING: &str = "Copying";
/// Reason of a copy whose Job failed for good.
pub const JOB_FAILED: &str = "CopyJobFailed";
/// How often a running copy's progress is published.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// Default completions of a copy's Job: one per this many bytes, at most [`MAX_DEFAULT_SHARES`].
const BYTES_PER_SHARE: u64 = 1 << 30;
const MAX_DEFAULT_SHARES: u64 = 8;

/// What one finished pool run did.
#[derive(Clone, Debug, PartialEq)]
pub enum Done {
    /// A copy run (alone, or the commit after a Job's shares).
    Copied {
        report: CopyReport,
        by_job: bool,
    },
    Reencoded(ReencodeReport),
    Promoted(PromoteReport),
}

/// A resolved source, ready to copy.
#[derive(Clone, Debug, PartialEq)]
pub struct Start {
    pub source_store: StoreSpec,
    /// The DatabaseCheckpoint copied, if the source is one (or a schedule's).
    pub source_checkpoint: Option<String>,
    /// Its SlateDB checkpoint and size; `None` for a database's latest state.
    pub checkpoint: Option<SourceCheckpoint>,
    /// Whether a Job can run the copy: both stores are DatabaseStores, whose credentials Secrets
    /// the Job's pods mount (an inline store's Secret is in the object's namespace).
    pub jobs_possible: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceCheckpoint {
    pub id: String,
    pub size_bytes: Option<u64>,
    pub objects: Option<u64>,
}

/// The state of a copy as one reconcile sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// The source or a store is not usable yet, or for good.
    Waiting(Problem),
    /// The source is resolved and differs from what the target holds.
    Startable(Start),
    /// The target already holds a complete copy of the source.
    UpToDate,
    /// Ready, and `spec.promote` asks for a promotion that has not happened.
    Promotable,
    /// Pool work in flight.
    Running(Option<CopyProgress>),
    Finished(Result<Done, Problem>),
    /// The Job runs: objects and bytes of the closure at the target so far.
    JobRunning {
        objects: u64,
        bytes: u64,
    },
    /// Every share of the Job succeeded: the operator commits.
    JobSucceeded,
    /// The Job failed for good, or is gone.
    JobFailed(Problem),
    /// Nothing to do (promoted, or a database's latest state copied once).
    Settled,
}

/// What the reconciler carries out besides writing the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Run the whole copy in the operator.
    Copy,
    /// Launch the Job with this many shares.
    StartJob {
        shares: u32,
    },
    /// Commit after the Job (a copy run without a share), and remove the Job.
    CommitJob,
    Promote,
    /// Remove the Job (it failed for good).
    RemoveJob,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: DatabaseCopyStatus,
    pub event: Option<Notice>,
    pub effect: Effect,
    pub requeue_after: Option<Duration>,
}

/// Whether a copy with no work in flight has nothing left to do: promoted, a database's latest
/// state copied once, or stalled at this generation on a cause only the user can change.
pub fn settled(object: &DatabaseCopy) -> bool {
    let Some(status) = &object.status else {
        return false;
    };
    let conditions = &status.conditions;
    let copied_once =
        object.spec.source.database.is_some() && status.copied_checkpoint_id.is_some();
    is_true(conditions, PROMOTED)
        || (copied_once && is_true(conditions, READY) && !object.spec.promotes())
        || (is_true(conditions, STALLED)
            && status.observed_generation == object.metadata.generation
            && !matches!(
                true_reason(conditions, STALLED),
                Some(crate::controller::clone::decide::SOURCE_STALLED)
                    | Some(crate::controller::clone::decide::SCHEDULE_NOT_FOUND)
            )
            && object.spec.source.schedule_ref.is_none())
}

/// The shares a copy of `size` bytes runs as a Job with, or `None` to run it in the operator.
/// `default_threshold` is `None` when the operator runs no Jobs.
pub fn job_shares(
    object: &DatabaseCopy,
    size: Option<u64>,
    default_threshold: Option<u64>,
) -> Option<u32> {
    let job = object.spec.job.as_ref();
    let default_threshold = default_threshold?;
    let threshold = job
        .and_then(|j| j.threshold_bytes)
        .map_or(default_threshold, |t| t.max(0) as u64);
    let size = size?;
    if size < threshold {
        return None;
    }
    let shares = match job.and_then(|j| j.shares) {
        Some(shares) => shares.max(1) as u64,
        None => size.div_ceil(BYTES_PER_SHARE).clamp(1, MAX_DEFAULT_SHARES),
    };
    Some(shares as u32)
}

fn progress_status(p: &CopyProgress) -> StatusProgress {
    StatusProgress {
        step: p.phase.name().into(),
        steps_done: p.phase as i32,
        steps_total: CopyPhase::Done as i32,
        objects_done: p.objects_done as i64,
        objects_total: p.objects_total as i64,
        bytes_done: p.bytes_done as i64,
        bytes_total: p.bytes_total as i64,
        percent: format!("{}%", p.percent()),
    }
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The pure heart of the reconciler. `retry_delay` is the backoff for a transient failure and
/// `job_threshold` the operator's default size from which a copy runs as a Job (`None`: no Jobs).
pub fn decide(
    object: &DatabaseCopy,
    work: &Work,
    now: DateTime<Utc>,
    retry_delay: Duration,
    job_threshold: Option<u64>,
) -> Decision {
    let previous = object.status.clone().unwrap_or_default();
    let now_k8s = to_k8s_time(now);
    let mut status = previous.clone();
    status.observed_generation = object.metadata.generation;
    // A complete earlier copy stays readable while a newer one is made or fails.
    let holds_copy = previous.copied_checkpoint_id.is_some();
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
        Work::Settled => {}
        Work::UpToDate => {
            conditions.clear(RECONCILING);
            conditions.clear(STALLED);
        }
        Work::Waiting(problem) => {
            let again = true_reason(&previous.conditions, RECONCILING) == Some(&problem.reason)
                || true_reason(&previous.conditions, STALLED) == Some(&problem.reason);
            (phase, requeue_after) = failed(&mut conditions, problem, retry_delay, holds_copy);
            if !again {
                event = Some(Notice::warning(
                    "Copy",
                    &problem.reason,
                    problem.message.clone(),
                ));
            }
        }
        Work::Startable(start) => {
            let same_failure = is_true(&previous.conditions, STALLED)
                && previous.observed_generation == object.metadata.generation
                && start.checkpoint.as_ref().map(|c| &c.id)
                    == previous.source_checkpoint_id.as_ref();
            if same_failure {
                // Stalled on this very checkpoint: a newer one, or a spec change, starts again.
                return Decision {
                    status,
                    event: None,
                    effect: Effect::None,
                    requeue_after: None,
                };
            }
            let size = start.checkpoint.as_ref().and_then(|c| c.size_bytes);
            let shares = start
                .checkpoint
                .as_ref()
                .filter(|_| start.jobs_possible)
                .and_then(|_| job_shares(object, size, job_threshold));
            status.source_store = Some(start.source_store.clone());
            status.source_checkpoint = start.source_checkpoint.clone();
            status.source_checkpoint_id = start.checkpoint.as_ref().map(|c| c.id.clone());
            status.attempts = Some(previous.attempts.unwrap_or(0).saturating_add(1));
            status.start_time = Some(now_k8s.clone());
            status.progress = Some(StatusProgress {
                step: CopyPhase::Prepare.name().into(),
                steps_total: CopyPhase::Done as i32,
                objects_total: start
                    .checkpoint
                    .as_ref()
                    .and_then(|c| c.objects)
                    .map_or(0, as_i64),
                bytes_total: size.map_or(0, as_i64),
                percent: "0%".into(),
                ..Default::default()
            });
            let what = match &start.source_checkpoint {
                Some(name) => format!("DatabaseCheckpoint {name}"),
                None => "the latest state of the source database".into(),
            };
            let message = match shares {
                Some(shares) => {
                    effect = Effect::StartJob { shares };
                    format!("copying {what} with a Job of {shares} share(s)")
                }
                None => {
                    effect = Effect::Copy;
                    format!("copying {what}")
                }
            };
            conditions.set(RECONCILING, true, COPYING, &message);
            if !holds_copy {
                conditions.set(READY, false, COPYING, &message);
            }
            conditions.clear(STALLED);
            phase = Some(Phase::Copying);
            event = Some(Notice::normal("Copy", COPYING, message));
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::Running(progress) => {
            if let Some(progress) = progress {
                let message = format!(
                    "{}: {} of {} objects",
                    progress.phase.name(),
                    progress.objects_done,
                    progress.objects_total
                );
                conditions.set(RECONCILING, true, progress.phase.name(), &message);
                status.progress = Some(progress_status(progress));
            }
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::JobRunning { objects, bytes } => {
            let mut progress = previous.progress.clone().unwrap_or_default();
            progress.step = CopyPhase::Transfer.name().into();
            progress.steps_done = CopyPhase::Transfer as i32;
            progress.objects_done = as_i64(*objects).min(progress.objects_total.max(0));
            progress.bytes_done = as_i64(*bytes).min(progress.bytes_total.max(0));
            let percent = CopyProgress {
                phase: CopyPhase::Transfer,
                objects_done: progress.objects_done as u64,
                objects_total: progress.objects_total.max(0) as u64,
                bytes_done: progress.bytes_done as u64,
                bytes_total: progress.bytes_total.max(0) as u64,
            }
            .percent();
            progress.percent = format!("{percent}%");
            let job = previous.job.as_ref().map_or(String::new(), |j| {
                format!("Job {}/{} ({} shares): ", j.namespace, j.name, j.shares)
            });
            let message = format!(
                "{job}{} of {} objects at the target",
                progress.objects_done, progress.objects_total
            );
            conditions.set(RECONCILING, true, COPYING, &message);
            status.progress = Some(progress);
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::JobSucceeded => {
            effect = Effect::CommitJob;
            let message = "every share of the Job succeeded; committing the copy";
            conditions.set(RECONCILING, true, CopyPhase::Commit.name(), message);
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::JobFailed(problem) => {
            effect = Effect::RemoveJob;
            status.job = None;
            status.last_failure = Some(failure(problem, &now_k8s));
            (phase, requeue_after) = failed(&mut conditions, problem, retry_delay, holds_copy);
            event = Some(Notice::warning(
                "Copy",
                &problem.reason,
                problem.message.clone(),
            ));
        }
        Work::Promotable => {
            effect = Effect::Promote;
            let message = "promoting the copy into an independent database";
            conditions.set(RECONCILING, true, "Promoting", message);
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::Finished(Ok(Done::Promoted(report))) => {
            let message = format!(
                "the copy is an independent writable database: {} inherited checkpoint(s) dropped \
                 (manifest {})",
                report.checkpoints_deleted.len(),
                report.manifest_id
            );
            conditions.set(PROMOTED, true, "Promoted", &message);
            conditions.clear(RECONCILING);
            status.promotion_time = Some(now_k8s.clone());
            phase = Some(Phase::Promoted);
            event = Some(Notice::normal("Promote", "Promoted", message));
        }
        Work::Finished(Ok(Done::Copied { report, by_job })) => {
            status.job = None;
            status.copied_checkpoint_id = Some(report.checkpoint_id.to_string());
            status.copied_manifest_id = Some(as_i64(report.manifest_id));
            status.source_checkpoint_id = Some(report.checkpoint_id.to_string());
            status.completion_time = Some(now_k8s.clone());
            status.checksum = Some(Checksum {
                algorithm: "sha256".into(),
                metadata_digest: report.manifest_sha256.clone(),
                content_root: Some(report.content_root.clone()),
                verified_time: (object.spec.verify != CopyVerify::Metadata)
                    .then(|| now_k8s.clone()),
            });
            status.last_run = Some(CopyRun {
                objects_total: as_i64(report.objects_total),
                bytes_total: as_i64(report.bytes_total),
                objects_transferred: as_i64(report.objects_transferred),
                bytes_transferred: as_i64(report.bytes_transferred),
                objects_skipped: as_i64(report.objects_skipped),
                bytes_skipped: as_i64(report.bytes_skipped),
                objects_retransmitted: as_i64(report.objects_retransmitted),
                objects_read_back: as_i64(report.objects_read_back),
                by_job: *by_job,
                duration_seconds: report.duration.as_secs_f64(),
            });
            status.progress = Some(progress_status(&CopyProgress {
                phase: CopyPhase::Done,
                objects_done: report.objects_total,
                objects_total: report.objects_total,
                bytes_done: report.bytes_total,
                bytes_total: report.bytes_total,
            }));
            let (verified, verified_message) = match object.spec.verify {
                CopyVerify::Metadata => (
                    "SizesMatch",
                    "every object is at the target at the source's size",
                ),
                CopyVerify::Content | CopyVerify::Full => (
                    "ContentMatches",
                    "the target's content root equals the source checkpoint's, every object read \
                     back and every SST block's CRC checked",
                ),
            };
            conditions.set(VERIFIED, true, verified, verified_message);
            let message = format!(
                "copy of checkpoint {} (manifest {}) complete: {} objects, {} transferred ({} \
                 bytes), {} already there{}",
                report.checkpoint_id,
                report.manifest_id,
                report.objects_total,
                report.objects_transferred,
                report.bytes_transferred,
                report.objects_skipped,
                if report.objects_retransmitted > 0 {
                    format!(", {} transferred again", report.objects_retransmitted)
                } else {
                    String::new()
                }
            );
            conditions.set(READY, true, reason::SUCCEEDED, &message);
            conditions.clear(RECONCILING);
            conditions.clear(STALLED);
            phase = Some(Phase::Ready);
            event = Some(Notice::normal("Copy", "Ready", message));
            if object.spec.promotes() {
                requeue_after = Some(Duration::ZERO);
            }
        }
        Work::Finished(Ok(Done::Reencoded(report))) => {
            status.copied_checkpoint_id = Some(report.checkpoint_id.to_string());
            status.copied_manifest_id = Some(as_i64(report.target_manifest_id));
            status.source_checkpoint_id = Some(report.checkpoint_id.to_string());
            status.completion_time = Some(now_k8s.clone());
            status.checksum = Some(Checksum {
                algorithm: "sha256-row-sum".into(),
                metadata_digest: report.digest.clone(),
                content_root: None,
                verified_time: Some(now_k8s.clone()),
            });
            status.last_run = Some(CopyRun {
                objects_total: as_i64(report.target_ssts),
                bytes_total: as_i64(report.target_bytes),
                objects_transferred: as_i64(report.target_ssts),
                bytes_transferred: as_i64(report.target_bytes),
                duration_seconds: report.duration.as_secs_f64(),
                ..Default::default()
            });
            status.progress = Some(progress_status(&CopyProgress {
                phase: CopyPhase::Done,
                objects_done: report.rows,
                objects_total: report.rows,
                bytes_done: report.bytes,
                bytes_total: report.bytes,
            }));
            let verified =
                "the target's rows, read back, have the digest of the source checkpoint's";
            conditions.set(VERIFIED, true, "RowDigestMatches", verified);
            let message = format!(
                "re-encode of checkpoint {} complete: {} rows ({} written by this run) in {} SSTs, \
                 {} bytes (the source: {})",
                report.checkpoint_id,
                report.rows,
                report.rows_written,
                report.target_ssts,
                report.target_bytes,
                report.source_bytes
            );
            conditions.set(READY, true, reason::SUCCEEDED, &message);
            conditions.clear(RECONCILING);
            conditions.clear(STALLED);
            phase = Some(Phase::Ready);
            event = Some(Notice::normal("Copy", "Ready", message));
        }
        Work::Finished(Err(problem)) => {
            status.job = None;
            status.last_failure = Some(failure(problem, &now_k8s));
            (phase, requeue_after) = failed(&mut conditions, problem, retry_delay, holds_copy);
            event = Some(Notice::warning(
                "Copy",
                &problem.reason,
                problem.message.clone(),
            ));
        }
    }
    if let Effect::StartJob { shares } = effect {
        status.job = Some(CopyJobStatus {
            namespace: String::new(),
            name: String::new(),
            shares: shares as i32,
        });
    }
    status.phase = phase;
    Decision {
        status,
        event,
        effect,
        requeue_after,
    }
}

fn failure(
    problem: &Problem,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Failure {
    Failure {
        time: now.clone(),
        reason: problem.reason.clone(),
        message: problem.message.clone(),
    }
}

/// A failure the copy cannot get past now: retried with backoff when transient, a stall when
/// permanent. An earlier complete copy stays Ready: it is intact at the target.
fn failed(
    conditions: &mut Conditions,
    problem: &Problem,
    retry_delay: Duration,
    holds_copy: bool,
) -> (Option<Phase>, Option<Duration>) {
    let kept = |otherwise| Some(if holds_copy { Phase::Ready } else { otherwise });
    match problem.fault {
        Fault::Transient => {
            let retry_in = retry_delay.as_secs().max(1);
            let message = format!("{}; retrying in {retry_in}s", problem.message);
            conditions.retrying(&problem.reason, &message);
            (kept(Phase::Pending), Some(retry_delay))
        }
        Fault::Permanent => {
            if holds_copy {
                conditions.set(STALLED, true, &problem.reason, &problem.message);
                conditions.clear(RECONCILING);
            } else {
                conditions.stall(&problem.reason, &problem.message);
            }
            (kept(Phase::Failed), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn copy(extra: serde_json::Value, status: Option<DatabaseCopyStatus>) -> DatabaseCopy {
        let mut spec = json!({
            "source": {"checkpointRef": {"name": "nightly"}},
            "target": {"store": {"ref": "dr"}, "path": "copies/orders"}
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let mut object: DatabaseCopy = serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCopy",
            "metadata": {"name": "dr", "namespace": "team-a", "uid": "u1", "generation": 1},
            "spec": spec
        }))
        .unwrap();
        object.status = status;
        object
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    fn start(id: &str, size: u64) -> Work {
        Work::Startable(Start {
            source_store: StoreSpec::inline("s3://prod"),
            source_checkpoint: Some("nightly".into()),
            checkpoint: Some(SourceCheckpoint {
                id: id.into(),
                size_bytes: Some(size),
                objects: Some(12),
            }),
            jobs_possible: true,
        })
    }

    fn report(id: uuid::Uuid) -> CopyReport {
        CopyReport {
            checkpoint_id: id,
            manifest_id: 7,
            objects_total: 12,
            bytes_total: 1200,
            objects_transferred: 3,
            bytes_transferred: 300,
            objects_skipped: 9,
            bytes_skipped: 900,
            objects_retransmitted: 0,
            bytes_retransmitted: 0,
            objects_read_back: 3,
            blocks_checked: 30,
            content_root: "root".into(),
            manifest_sha256: "sha".into(),
            already_complete: false,
            resumed: false,
            committed: true,
            duration: Duration::from_millis(1500),
        }
    }

    fn is(status: &DatabaseCopyStatus, type_: &str) -> bool {
        is_true(&status.conditions, type_)
    }

    #[test]
    fn a_copy_runs_as_a_job_only_from_its_threshold_and_only_when_jobs_are_available() {
        let plain = copy(json!({}), None);
        assert_eq!(
            job_shares(&plain, Some(10), None),
            None,
            "no image, no Jobs"
        );
        assert_eq!(job_shares(&plain, Some(10), Some(100)), None);
        assert_eq!(job_shares(&plain, Some(100), Some(100)), Some(1));
        assert_eq!(job_shares(&plain, Some(5 << 30), Some(0)), Some(5));
        assert_eq!(job_shares(&plain, Some(100 << 30), Some(0)), Some(8));
        assert_eq!(job_shares(&plain, None, Some(0)), None, "unknown size");
        let own = copy(json!({"job": {"thresholdBytes": 0, "shares": 3}}), None);
        assert_eq!(job_shares(&own, Some(1), Some(1 << 40)), Some(3));
    }

    #[test]
    fn a_first_start_is_not_ready_and_a_refresh_stays_ready() {
        let object = copy(json!({}), None);
        let decision = decide(&object, &start("a", 10), now(), Duration::ZERO, None);
        assert_eq!(decision.effect, Effect::Copy);
        assert!(!is(&decision.status, READY) && is(&decision.status, RECONCILING));
        assert_eq!(decision.status.attempts, Some(1));
        assert_eq!(decision.status.source_checkpoint_id.as_deref(), Some("a"));
        assert_eq!(decision.status.progress.as_ref().unwrap().bytes_total, 10);

        let id = uuid::Uuid::new_v4();
        let done = Work::Finished(Ok(Done::Copied {
            report: report(id),
            by_job: false,
        }));
        let ready = decide(&object, &done, now(), Duration::ZERO, None).status;
        assert!(is(&ready, READY) && is(&ready, VERIFIED) && !is(&ready, RECONCILING));
        assert_eq!(ready.copied_checkpoint_id, Some(id.to_string()));
        assert_eq!(
            ready.checksum.as_ref().unwrap().content_root.as_deref(),
            Some("root")
        );
        assert_eq!(ready.last_run.as_ref().unwrap().objects_skipped, 9);
        assert_eq!(ready.progress.as_ref().unwrap().percent, "100%");

        let refreshing = copy(json!({}), Some(ready.clone()));
        let decision = decide(&refreshing, &start("b", 10), now(), Duration::ZERO, Some(0));
        assert_eq!(decision.effect, Effect::StartJob { shares: 1 });
        assert!(
            is(&decision.status, READY),
            "the earlier copy stays readable"
        );
        assert_eq!(decision.status.job.as_ref().map(|j| j.shares), Some(1));
    }

    #[test]
    fn a_permanent_failure_keeps_an_earlier_copy_ready_and_is_not_retried_for_the_same_checkpoint()
    {
        let problem = Problem {
            fault: Fault::Permanent,
            reason: "Diverged".into(),
            message: "a writer opened it".into(),
        };
        let fresh = copy(json!({}), None);
        let started = decide(&fresh, &start("a", 1), now(), Duration::ZERO, None).status;
        let failed = decide(
            &copy(json!({}), Some(started)),
            &Work::Finished(Err(problem.clone())),
            now(),
            Duration::ZERO,
            None,
        );
        assert!(is(&failed.status, STALLED) && !is(&failed.status, READY));
        assert_eq!(failed.status.phase, Some(Phase::Failed));
        assert_eq!(failed.requeue_after, None);
        let again = decide(
            &copy(json!({}), Some(failed.status.clone())),
            &start("a", 1),
            now(),
            Duration::ZERO,
            None,
        );
        assert_eq!(
            again.effect,
            Effect::None,
            "stalled on this very checkpoint"
        );
        let newer = decide(
            &copy(json!({}), Some(failed.status)),
            &start("b", 1),
            now(),
            Duration::ZERO,
            None,
        );
        assert_eq!(
            newer.effect,
            Effect::Copy,
            "a newer checkpoint starts again"
        );

        let ready = DatabaseCopyStatus {
            copied_checkpoint_id: Some("old".into()),
            phase: Some(Phase::Ready),
            ..Default::default()
        };
        let kept = decide(
            &copy(json!({}), Some(ready)),
            &Work::Finished(Err(problem)),
            now(),
            Duration::ZERO,
            None,
        );
        assert!(is(&kept.status, STALLED));
        assert_eq!(kept.status.phase, Some(Phase::Ready));
    }

    #[test]
    fn a_job_reports_what_is_at_the_target_and_its_success_commits() {
        let object = copy(json!({}), None);
        let started = decide(&object, &start("a", 1000), now(), Duration::ZERO, Some(0)).status;
        let running = decide(
            &copy(json!({}), Some(started.clone())),
            &Work::JobRunning {
                objects: 30,
                bytes: 500,
            },
            now(),
            Duration::ZERO,
            Some(0),
        );
        let progress = running.status.progress.unwrap();
        assert_eq!(
            (progress.objects_done, progress.bytes_done),
            (12, 500),
            "capped at the totals"
        );
        assert_eq!(progress.percent, "48%");
        let commit = decide(
            &copy(json!({}), Some(started)),
            &Work::JobSucceeded,
            now(),
            Duration::ZERO,
            Some(0),
        );
        assert_eq!(commit.effect, Effect::CommitJob);
    }

    #[test]
    fn promotion_follows_readiness_and_settles_the_copy() {
        let ready = DatabaseCopyStatus {
            copied_checkpoint_id: Some("a".into()),
            ..Default::default()
        };
        let object = copy(json!({"promote": true}), Some(ready));
        let decision = decide(&object, &Work::Promotable, now(), Duration::ZERO, None);
        assert_eq!(decision.effect, Effect::Promote);
        let promoted = Work::Finished(Ok(Done::Promoted(PromoteReport {
            copy_manifest_id: 7,
            checkpoints_deleted: vec![uuid::Uuid::nil()],
            objects_removed: 0,
            manifest_id: 8,
        })));
        let done = decide(&object, &promoted, now(), Duration::ZERO, None).status;
        assert!(is(&done, PROMOTED));
        assert!(settled(&copy(json!({"promote": true}), Some(done))));
    }
}
