//! Reconciler of `DatabaseClone`: resolves the source, runs the clone off the reconcile loop in a
//! bounded pool, publishes progress, gates `Ready` on SlateDB's `initialized` flag and
//! verification, expires, and deletes the clone's data with the object.

use super::conditions::{clear_condition, is_true, set_condition};
use super::{leave_data_behind, open_store, to_k8s_time, Context, Error, Problem, FIELD_MANAGER};
use crate::api::{
    Checksum, ClonePhase, CloneProgress as StatusProgress, DatabaseCheckpoint, DatabaseClone,
    DatabaseCloneStatus, DeletionPolicy, ExpirationPolicy, Failure, KeyBound, StoreSpec,
    VerifyMode,
};
use crate::engine::{
    initialize_clone, CloneConfig, CloneProgress, CloneReport, CloneSourceCheckpoint, CloneStep,
    Database, Fault, RetryPolicy, Verification,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

const KIND: &str = "DatabaseClone";

/// Held while the clone's data must be deleted with the object.
pub const CLEANUP_FINALIZER: &str = "slatedb.io/clone-cleanup";
/// How often a running clone's progress is published.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Clone work in flight, keyed by object uid, bounded by a semaphore.
pub struct ClonePool {
    slots: Arc<Semaphore>,
    jobs: Mutex<HashMap<String, Job>>,
}

struct Job {
    progress: Arc<Mutex<Option<CloneProgress>>>,
    outcome: Arc<Mutex<Option<Result<CloneReport, Problem>>>>,
    handle: JoinHandle<()>,
}

impl ClonePool {
    pub fn new(concurrency: usize) -> ClonePool {
        ClonePool {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            jobs: Mutex::default(),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the job of `uid` is doing, without blocking on it.
    fn observe(&self, uid: &str) -> Option<Work> {
        let mut jobs = self.jobs();
        let job = jobs.get(uid)?;
        let outcome = job.outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
        match outcome {
            Some(outcome) => {
                jobs.remove(uid);
                Some(Work::Finished(outcome))
            }
            None => Some(Work::Running(
                job.progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            )),
        }
    }

    fn spawn(&self, uid: &str, config: CloneConfig) {
        let progress = Arc::new(Mutex::new(None));
        let outcome = Arc::new(Mutex::new(None));
        let slots = self.slots.clone();
        let (progress_sink, outcome_sink) = (progress.clone(), outcome.clone());
        let handle = tokio::spawn(async move {
            let result = match slots.acquire_owned().await {
                Ok(_permit) => {
                    let work = initialize_clone(config, move |p| {
                        *progress_sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                    });
                    // A panic (a bug, ours or a library's) must still end the job with an outcome.
                    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
                        Ok(result) => result.map_err(|e| Problem::from(&e)),
                        Err(panic) => Err(Problem {
                            fault: Fault::Permanent,
                            reason: "InternalError".into(),
                            message: format!(
                                "clone work panicked: {}; please report this",
                                panic_message(panic.as_ref())
                            ),
                        }),
                    }
                }
                Err(_) => Err(Problem {
                    fault: Fault::Transient,
                    reason: "ShuttingDown".into(),
                    message: "the clone pool is closed".into(),
                }),
            };
            *outcome_sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        });
        self.jobs().insert(
            uid.to_string(),
            Job {
                progress,
                outcome,
                handle,
            },
        );
    }

    /// Stops the job of `uid`, if any; every clone step is safe to cancel.
    fn cancel(&self, uid: &str) {
        if let Some(job) = self.jobs().remove(uid) {
            job.handle.abort();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.jobs().len()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// The state of clone work as one reconcile sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// The clone has not started: the source is not usable yet, or is.
    Waiting(Problem),
    /// The source is resolved; work can start.
    Startable,
    Running(Option<CloneProgress>),
    Finished(Result<CloneReport, Problem>),
    /// Nothing in flight and the status already says Ready (or Stalled, or Expired).
    Settled,
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
    pub event: Option<(EventType, String, String)>,
    pub effect: Effect,
    pub requeue_after: Option<Duration>,
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

/// The pure heart of the reconciler.
pub fn decide(
    object: &DatabaseClone,
    work: &Work,
    now: DateTime<Utc>,
    retry_delay: Duration,
) -> Decision {
    let previous = object.status.clone().unwrap_or_default();
    let generation = object.metadata.generation;
    let now_k8s = to_k8s_time(now);
    let mut status = previous.clone();
    status.observed_generation = generation;
    let conditions = &mut status.conditions;
    let mut event = None;
    let mut effect = Effect::None;
    let mut requeue_after = None;
    match work {
        Work::Settled => {
            if let Some(expires) = previous
                .expiration_time
                .as_ref()
                .filter(|_| is_true(&previous.conditions, "Ready"))
            {
                let left = expires.0.as_millisecond() - now.timestamp_millis();
                if left <= 0 {
                    match object.spec.expiration_policy {
                        ExpirationPolicy::Delete => effect = Effect::DeleteObject,
                        ExpirationPolicy::ExpireData => {
                            effect = Effect::ExpireData;
                            let message =
                                "the clone expired; its data was deleted and the object kept";
                            set_condition(
                                conditions,
                                "Expired",
                                true,
                                "ExpireAfterElapsed",
                                message,
                                generation,
                                &now_k8s,
                            );
                            set_condition(
                                conditions, "Ready", false, "Expired", message, generation,
                                &now_k8s,
                            );
                            status.phase = Some(ClonePhase::Expired);
                        }
                    }
                    event = Some((
                        EventType::Normal,
                        "Expired".into(),
                        format!("expireAfter elapsed at {}", expires.0),
                    ));
                } else {
                    requeue_after = Some(Duration::from_millis(left as u64 + 200));
                }
            }
        }
        Work::Waiting(problem) => {
            let message = format!(
                "{}; retrying in {}s",
                problem.message,
                retry_delay.as_secs().max(1)
            );
            match problem.fault {
                Fault::Transient => {
                    set_condition(
                        conditions,
                        "Reconciling",
                        true,
                        &problem.reason,
                        &message,
                        generation,
                        &now_k8s,
                    );
                    set_condition(
                        conditions,
                        "Ready",
                        false,
                        &problem.reason,
                        &message,
                        generation,
                        &now_k8s,
                    );
                    clear_condition(conditions, "Stalled");
                    status.phase = Some(ClonePhase::Pending);
                    requeue_after = Some(retry_delay);
                }
                Fault::Permanent => stall(&mut status, problem, generation, &now_k8s),
            }
            if previous_reason(&previous) != Some(problem.reason.as_str()) {
                event = Some((
                    EventType::Warning,
                    problem.reason.clone(),
                    problem.message.clone(),
                ));
            }
        }
        Work::Startable => {
            effect = Effect::StartWork;
            status.attempts = Some(previous.attempts.unwrap_or(0).saturating_add(1));
            status.start_time = previous.start_time.clone().or(Some(now_k8s.clone()));
            set_condition(
                conditions,
                "Reconciling",
                true,
                "Cloning",
                "clone work started",
                generation,
                &now_k8s,
            );
            set_condition(
                conditions,
                "Ready",
                false,
                "Cloning",
                "clone work started",
                generation,
                &now_k8s,
            );
            set_condition(
                conditions,
                "Initialized",
                false,
                "Cloning",
                "",
                generation,
                &now_k8s,
            );
            clear_condition(conditions, "Stalled");
            status.phase = Some(ClonePhase::Cloning);
            if previous.attempts.is_none() {
                event = Some((
                    EventType::Normal,
                    "Cloning".into(),
                    "clone work started".into(),
                ));
            }
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::Running(progress) => {
            if let Some(progress) = progress {
                let step = progress.step.name();
                let message = format!(
                    "{step}: {} of {} objects",
                    progress.objects_done, progress.objects_total
                );
                set_condition(
                    conditions,
                    "Reconciling",
                    true,
                    step,
                    &message,
                    generation,
                    &now_k8s,
                );
                set_condition(
                    conditions, "Ready", false, step, &message, generation, &now_k8s,
                );
                if progress.step > CloneStep::MarkInitialized {
                    set_condition(
                        conditions,
                        "Initialized",
                        true,
                        "Initialized",
                        "SlateDB marked the clone initialized",
                        generation,
                        &now_k8s,
                    );
                }
                status.phase = Some(if progress.step >= CloneStep::Verify {
                    ClonePhase::Verifying
                } else {
                    ClonePhase::Cloning
                });
                status.progress = Some(progress_status(progress));
            }
            requeue_after = Some(PROGRESS_INTERVAL);
        }
        Work::Finished(Ok(report)) => {
            let verified = match object.spec.verify {
                VerifyMode::None => (
                    "NotRequested",
                    "verification is off (spec.verify: None)".to_string(),
                ),
                VerifyMode::Metadata => (
                    "MetadataResolved",
                    "every object the clone's manifest pins exists".to_string(),
                ),
                VerifyMode::Content => (
                    "ContentMatches",
                    "content hashes match the source checkpoint and every block's CRC checks out"
                        .to_string(),
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
            set_condition(
                conditions,
                "Initialized",
                true,
                "Initialized",
                "SlateDB marked the clone initialized",
                generation,
                &now_k8s,
            );
            set_condition(
                conditions,
                "Verified",
                object.spec.verify != VerifyMode::None,
                verified.0,
                &verified.1,
                generation,
                &now_k8s,
            );
            set_condition(
                conditions,
                "Ready",
                true,
                "Succeeded",
                &message,
                generation,
                &now_k8s,
            );
            set_condition(
                conditions,
                "Expired",
                false,
                "NotExpired",
                "",
                generation,
                &now_k8s,
            );
            clear_condition(conditions, "Reconciling");
            clear_condition(conditions, "Stalled");
            status.phase = Some(ClonePhase::Ready);
            status.source_checkpoint_id = Some(report.source_checkpoint_id.to_string());
            status.completion_time = Some(now_k8s.clone());
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
                verified_time: report.content_root.as_ref().map(|_| now_k8s.clone()),
            });
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
            event = Some((EventType::Normal, "Ready".into(), message));
        }
        Work::Finished(Err(problem)) => {
            status.last_failure = Some(Failure {
                time: now_k8s.clone(),
                reason: problem.reason.clone(),
                message: problem.message.clone(),
            });
            match problem.fault {
                Fault::Transient => {
                    let message = format!(
                        "{}; retrying in {}s",
                        problem.message,
                        retry_delay.as_secs().max(1)
                    );
                    set_condition(
                        conditions,
                        "Reconciling",
                        true,
                        &problem.reason,
                        &message,
                        generation,
                        &now_k8s,
                    );
                    set_condition(
                        conditions,
                        "Ready",
                        false,
                        &problem.reason,
                        &message,
                        generation,
                        &now_k8s,
                    );
                    status.phase = Some(ClonePhase::Pending);
                    requeue_after = Some(retry_delay);
                }
                Fault::Permanent => stall(&mut status, problem, generation, &now_k8s),
            }
            event = Some((
                EventType::Warning,
                problem.reason.clone(),
                problem.message.clone(),
            ));
        }
    }
    Decision {
        status,
        event,
        effect,
        requeue_after,
    }
}

fn stall(
    status: &mut DatabaseCloneStatus,
    problem: &Problem,
    generation: Option<i64>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    let conditions = &mut status.conditions;
    set_condition(
        conditions,
        "Stalled",
        true,
        &problem.reason,
        &problem.message,
        generation,
        now,
    );
    set_condition(
        conditions,
        "Ready",
        false,
        &problem.reason,
        &problem.message,
        generation,
        now,
    );
    clear_condition(conditions, "Reconciling");
    status.phase = Some(ClonePhase::Failed);
}

fn previous_reason(status: &DatabaseCloneStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| (c.type_ == "Reconciling" || c.type_ == "Stalled") && c.status == "True")
        .map(|c| c.reason.as_str())
}

fn key_bound(key: &Option<KeyBound>, inclusive: bool) -> Result<Bound<Bytes>, String> {
    let Some(KeyBound(text)) = key else {
        return Ok(Bound::Unbounded);
    };
    let bytes = match text.strip_prefix("base64:") {
        Some(encoded) => Bytes::from(
            decode_base64(encoded)
                .ok_or_else(|| format!("keyRange bound {text:?} is not valid base64"))?,
        ),
        None => Bytes::from(text.clone()),
    };
    Ok(if inclusive {
        Bound::Included(bytes)
    } else {
        Bound::Excluded(bytes)
    })
}

/// Standard padded base64, as the CRD admits it.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.as_bytes().chunks(4) {
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in &chunk[..4 - padding] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * padding as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - padding]);
    }
    Some(out)
}

/// Resolves the source into the engine's clone configuration, or says why it cannot be yet.
async fn resolve(
    object: &DatabaseClone,
    ctx: &Context,
) -> Result<Result<(CloneConfig, StoreSpec), Problem>, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let source = &object.spec.source;
    let problem = |fault, reason: &str, message: String| {
        Ok(Err(Problem {
            fault,
            reason: reason.into(),
            message,
        }))
    };
    let (store_spec, source_path, source_checkpoint) =
        match (&source.checkpoint_ref, &source.database) {
            (Some(reference), _) => {
                let checkpoints =
                    Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), &namespace);
                let Some(checkpoint) = checkpoints.get_opt(&reference.name).await? else {
                    return problem(
                        Fault::Transient,
                        "SourceNotFound",
                        format!(
                            "DatabaseCheckpoint {namespace}/{} does not exist",
                            reference.name
                        ),
                    );
                };
                let status = checkpoint.status.clone().unwrap_or_default();
                let id = status
                    .checkpoint_id
                    .as_deref()
                    .and_then(|id| id.parse().ok());
                match id {
                    Some(id) if is_true(&status.conditions, "Ready") => (
                        checkpoint.spec.database.store.clone(),
                        checkpoint.spec.database.path.0.clone(),
                        CloneSourceCheckpoint::Id(id),
                    ),
                    // Stalled until the checkpoint recovers; its changes trigger a reconcile.
                    _ if is_true(&status.conditions, "Stalled") => {
                        let why = status
                            .conditions
                            .iter()
                            .find(|c| c.type_ == "Stalled")
                            .map(|c| format!("{}: {}", c.reason, c.message))
                            .unwrap_or_default();
                        return problem(
                            Fault::Permanent,
                            "SourceStalled",
                            format!(
                                "DatabaseCheckpoint {namespace}/{} is Stalled ({why}); fix it \
                                 and this clone proceeds",
                                reference.name
                            ),
                        );
                    }
                    _ => {
                        return problem(
                            Fault::Transient,
                            "SourceNotReady",
                            format!(
                                "DatabaseCheckpoint {namespace}/{} is not Ready",
                                reference.name
                            ),
                        )
                    }
                }
            }
            (None, Some(database)) => {
                let name = format!(
                    "k8s-clone:{namespace}/{}/{}",
                    object.name_any(),
                    object.uid().unwrap_or_default()
                );
                (
                    database.store.clone(),
                    database.path.0.clone(),
                    CloneSourceCheckpoint::Latest { name },
                )
            }
            (None, None) => {
                return problem(
                    Fault::Permanent,
                    "InvalidSpec",
                    "spec.source names no source".into(),
                )
            }
        };
    if source_path == object.spec.target.path.0 {
        return problem(
            Fault::Permanent,
            "InvalidSpec",
            "spec.target.path is the source database's path".into(),
        );
    }
    let key_range = match &source.key_range {
        None => None,
        Some(range) => match (key_bound(&range.start, true), key_bound(&range.end, false)) {
            (Ok(start), Ok(end)) => match (&start, &end) {
                // Admission compares text bounds only; base64 ones are compared once decoded.
                (Bound::Included(low), Bound::Excluded(high)) if low >= high => {
                    return problem(
                        Fault::Permanent,
                        "InvalidKeyRange",
                        "spec.source.keyRange is empty: start must sort before end (compared \
                         as bytes, after base64 decoding)"
                            .into(),
                    )
                }
                _ => Some((start, end)),
            },
            (Err(message), _) | (_, Err(message)) => {
                return problem(Fault::Permanent, "InvalidKeyRange", message)
            }
        },
    };
    let store = match open_store(&ctx.client, &namespace, &store_spec).await? {
        Ok(store) => store,
        Err(p) => return Ok(Err(p)),
    };
    let verify = match object.spec.verify {
        VerifyMode::None => Verification::None,
        VerifyMode::Metadata => Verification::Metadata,
        VerifyMode::Content => Verification::Content,
    };
    let config = CloneConfig {
        store,
        source_path,
        source_checkpoint,
        key_range,
        target_path: object.spec.target.path.0.clone(),
        verify,
        admin_timeout: ctx.settings.admin_timeout,
        retry: RetryPolicy::default(),
    };
    Ok(Ok((config, store_spec)))
}

/// The clone's source checkpoint, as an event's related object.
fn source_ref(object: &DatabaseClone) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    object.spec.source.checkpoint_ref.as_ref().map(|r| {
        let mut reference = DatabaseCheckpoint::object_ref_from_name(&r.name);
        reference.namespace = object.namespace();
        reference
    })
}

trait ObjectRefFromName {
    fn object_ref_from_name(name: &str) -> k8s_openapi::api::core::v1::ObjectReference;
}

impl ObjectRefFromName for DatabaseCheckpoint {
    fn object_ref_from_name(name: &str) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("slatedb.io/v1alpha1".into()),
            kind: Some("DatabaseCheckpoint".into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }
}

/// Deletes the clone's data, given the store recorded in its status.
/// Deletes the clone's data; `Ok(false)` when it was left behind because the store's Secret
/// stayed missing (see [`leave_data_behind`]).
async fn delete_data(object: &DatabaseClone, ctx: &Context) -> Result<bool, Error> {
    let Some(store_spec) = object.status.as_ref().and_then(|s| s.store.clone()) else {
        return Ok(true); // work never started, so there is nothing to delete
    };
    let namespace = object.namespace().unwrap_or_default();
    let store = match open_store(&ctx.client, &namespace, &store_spec).await? {
        Ok(store) => store,
        Err(problem) if leave_data_behind(&problem, &object.metadata, Utc::now()) => {
            ctx.publish(
                object,
                source_ref(object),
                EventType::Warning,
                "DataLeftBehind",
                &format!(
                    "{}, so the clone's data at {} under {} is left in the store; delete it by hand",
                    problem.message, object.spec.target.path.0, store_spec.url.0
                ),
            )
            .await;
            return Ok(false);
        }
        Err(problem) => {
            return Err(Error::Blocked(format!(
                "cannot delete the clone's data: {}; fix it or set deletionPolicy: Retain",
                problem.message
            )))
        }
    };
    let target = Database::new(
        store.clone(),
        &object.spec.target.path.0,
        ctx.settings.admin_timeout,
    );
    target.delete_database().await?;
    if let Some(database) = &object.spec.source.database {
        // A temporary checkpoint of an unfinished clone of the latest state would pin the parent.
        let name = format!(
            "k8s-clone:{namespace}/{}/{}",
            object.name_any(),
            object.uid().unwrap_or_default()
        );
        let parent = Database::new(store, &database.path.0, ctx.settings.admin_timeout);
        if let Ok(leftovers) = parent.list_checkpoints(Some(&name)).await {
            for checkpoint in leftovers {
                parent.delete_checkpoint(checkpoint.id).await?;
            }
        }
    }
    Ok(true)
}

async fn apply(object: Arc<DatabaseClone>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx = ctx.as_ref();
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseClone>::namespaced(ctx.client.clone(), &namespace);
    let object = object.as_ref().clone();
    let uid = object.uid().unwrap_or_default();
    let status = object.status.clone().unwrap_or_default();
    // A clone stalled on its source checkpoint looks again whenever the checkpoint changes.
    let stalled_on_source = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Stalled" && c.reason == "SourceStalled");
    let settled = is_true(&status.conditions, "Ready")
        || is_true(&status.conditions, "Expired")
        || (is_true(&status.conditions, "Stalled")
            && !stalled_on_source
            && status.observed_generation == object.metadata.generation);
    let mut resolved = None;
    let work = match ctx.clones.observe(&uid) {
        Some(work) => work,
        None if settled => Work::Settled,
        None => match resolve(&object, ctx).await? {
            Ok(config) => {
                resolved = Some(config);
                Work::Startable
            }
            Err(problem) => Work::Waiting(problem),
        },
    };
    let retry_delay = match &work {
        Work::Waiting(Problem {
            fault: Fault::Transient,
            ..
        })
        | Work::Finished(Err(Problem {
            fault: Fault::Transient,
            ..
        })) => ctx.next_backoff(&uid),
        Work::Finished(Ok(_)) => {
            ctx.reset_backoff(&uid);
            Duration::ZERO
        }
        _ => Duration::ZERO,
    };
    if let Work::Finished(Ok(report)) = &work {
        let verified = if object.spec.verify == VerifyMode::Content {
            report.bytes_referenced + report.bytes_copied
        } else {
            0
        };
        ctx.metrics.clone_finished(report.duration, verified);
    }
    let mut decision = decide(&object, &work, Utc::now(), retry_delay);
    if let (Effect::StartWork, Some((_, store_spec))) = (&decision.effect, &resolved) {
        decision.status.store = Some(store_spec.clone());
    }
    if let Some((type_, reason, note)) = &decision.event {
        ctx.publish(&object, source_ref(&object), *type_, reason, note)
            .await;
    }
    // Expiry acts before the status says so; a start is recorded before the work runs, so an
    // attempt is on record even if the process dies.
    match &decision.effect {
        Effect::DeleteObject => {
            info!("expired; deleting the object");
            api.delete(&object.name_any(), &DeleteParams::default())
                .await?;
            return Ok(Action::await_change());
        }
        Effect::ExpireData => {
            // Not deleting the object, so the data is never left behind here.
            delete_data(&object, ctx).await?;
        }
        Effect::StartWork | Effect::None => {}
    }
    if decision.status != status || object.status.is_none() {
        let patch = json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone", "status": decision.status});
        api.patch_status(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    if let (Effect::StartWork, Some((config, _))) = (&decision.effect, resolved) {
        info!(target_path = %config.target_path, "starting clone work");
        ctx.clones.spawn(&uid, config);
    }
    Ok(match decision.requeue_after {
        Some(delay) => Action::requeue(delay),
        None => Action::await_change(),
    })
}

async fn cleanup(object: Arc<DatabaseClone>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx = ctx.as_ref();
    ctx.clones.cancel(&object.uid().unwrap_or_default());
    if object.spec.deletion_policy == DeletionPolicy::Delete {
        match delete_data(&object, ctx).await {
            Ok(true) => {}
            Ok(false) => return Ok(Action::await_change()),
            Err(error) => {
                ctx.publish(
                    &*object,
                    source_ref(&object),
                    EventType::Warning,
                    "DeleteFailed",
                    &error.to_string(),
                )
                .await;
                return Err(error);
            }
        }
        ctx.publish(
            &*object,
            source_ref(&object),
            EventType::Normal,
            "Deleted",
            "deleted the clone's data",
        )
        .await;
    }
    Ok(Action::await_change())
}

pub async fn reconcile(object: Arc<DatabaseClone>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(KIND);
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseClone>::namespaced(ctx.client.clone(), &namespace);
    let span = tracing::info_span!("reconcile", kind = "DatabaseClone", namespace = %namespace, name = %object.name_any());
    // The watch cache may lag our own writes (the finalizer, the status): a stale copy would make
    // the finalizer patch fail its precondition, and decisions must build on the stored status.
    let Some(object) = api.get_opt(&object.name_any()).await? else {
        return Ok(Action::await_change());
    };
    finalizer(&api, CLEANUP_FINALIZER, Arc::new(object), |event| async {
        match event {
            FinalizerEvent::Apply(object) => apply(object, ctx.clone()).await,
            FinalizerEvent::Cleanup(object) => cleanup(object, ctx.clone()).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(object: Arc<DatabaseClone>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.requeue_after_error(KIND, object.as_ref(), error)
}

/// Runs the clone controller until a shutdown signal.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let namespace = namespace.as_deref();
    let controller = Controller::new(
        ctx.scoped_api::<DatabaseClone>(namespace),
        watcher::Config::default().any_semantic(),
    )
    .trigger_backoff(super::WatchBackoff::default());
    let clones = controller.store();
    ctx.controller_started(clones.clone());
    let clones_for_secrets = clones.clone();
    controller
        .watches(
            ctx.scoped_api::<DatabaseCheckpoint>(namespace),
            watcher::Config::default(),
            move |checkpoint| {
                let namespace = checkpoint.namespace();
                let name = checkpoint.name_any();
                clones
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.namespace() == namespace
                            && c.spec
                                .source
                                .checkpoint_ref
                                .as_ref()
                                .is_some_and(|r| r.name == name)
                    })
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            ctx.scoped_api::<Secret>(namespace),
            watcher::Config::default(),
            move |secret| {
                let namespace = secret.namespace();
                let name = secret.name_any();
                clones_for_secrets
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.namespace() == namespace
                            && c.spec
                                .source
                                .database
                                .as_ref()
                                .and_then(|d| d.store.secret_ref.as_ref())
                                .is_some_and(|s| s.name == name)
                    })
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "clone controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
    }

    fn report() -> CloneReport {
        CloneReport {
            source_checkpoint_id: uuid::Uuid::from_u128(9),
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
            &Work::Startable,
            now(),
            Duration::ZERO,
        );
        assert_eq!(d.effect, Effect::StartWork);
        assert_eq!(d.status.attempts, Some(1));
        assert!(d.status.start_time.is_some());
        assert_eq!(d.status.phase, Some(ClonePhase::Cloning));
        assert_eq!(d.requeue_after, Some(PROGRESS_INTERVAL));
        let again = decide(
            &object(spec(), Some(d.status)),
            &Work::Startable,
            now(),
            Duration::ZERO,
        );
        assert_eq!(again.status.attempts, Some(2));
        assert!(
            again.event.is_none(),
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
        assert_eq!(d.event.as_ref().unwrap().1, "Ready");
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
            &Work::Settled,
            now() + chrono::TimeDelta::seconds(5),
            Duration::ZERO,
        );
        assert_eq!(early.effect, Effect::None);
        assert!(early.requeue_after.unwrap() >= Duration::from_secs(10));
        let delete = decide(
            &object(s.clone(), Some(ready.clone())),
            &Work::Settled,
            later,
            Duration::ZERO,
        );
        assert_eq!(delete.effect, Effect::DeleteObject);
        s["expirationPolicy"] = json!("ExpireData");
        let expire = decide(
            &object(s, Some(ready)),
            &Work::Settled,
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

    #[test]
    fn key_bounds_decode_text_and_base64() {
        assert_eq!(
            key_bound(&Some(KeyBound("abc".into())), true),
            Ok(Bound::Included(Bytes::from("abc")))
        );
        assert_eq!(
            key_bound(&Some(KeyBound("base64:AAH/".into())), false),
            Ok(Bound::Excluded(Bytes::from(vec![0u8, 1, 255])))
        );
        assert_eq!(
            key_bound(&Some(KeyBound("base64:/w==".into())), true),
            Ok(Bound::Included(Bytes::from(vec![255u8])))
        );
        assert_eq!(key_bound(&None, true), Ok(Bound::Unbounded));
        assert!(key_bound(&Some(KeyBound("base64:!!!!".into())), true).is_err());
    }
}
