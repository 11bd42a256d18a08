//! Reconciler of `DatabaseCheckpoint`: makes or adopts the SlateDB checkpoint, fingerprints it,
//! tracks its expiry and dependants, and deletes it (per `deletionPolicy`) when the object goes.

use super::conditions::{clear_condition, is_true, set_condition};
use super::{leave_data_behind, open_store, to_k8s_time, Context, Error, Problem, FIELD_MANAGER};
use crate::api::{
    CheckpointPhase, CheckpointSourceMode, Checksum, ChecksumMode, DatabaseCheckpoint,
    DatabaseCheckpointStatus, DatabaseClone, DeletionPolicy,
};
use crate::engine::{
    CheckpointInfo, CheckpointSelector, Database, EngineError, Fault, Fingerprint, Obtained,
    CRASH_POINT_ENV,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn, Instrument};

const KIND: &str = "DatabaseCheckpoint";

/// Held while the object owns a SlateDB checkpoint that must be deleted with it.
pub const CLEANUP_FINALIZER: &str = "slatedb.io/checkpoint-cleanup";
/// Held while a DatabaseClone that references this checkpoint is still being initialized.
pub const PROTECTION_FINALIZER: &str = "slatedb.io/clone-source-protection";
/// A checkpoint that in-progress clones depend on is kept alive at least this long.
const DEPENDANT_GRACE: Duration = Duration::from_secs(600);

/// The SlateDB checkpoint name of a Kubernetes object: deterministic, so a retry finds its own work.
pub fn checkpoint_name(namespace: &str, name: &str, uid: &str) -> String {
    format!("k8s:{namespace}/{name}/{uid}")
}

/// What one reconcile learned from SlateDB.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    Present {
        checkpoint: CheckpointInfo,
        /// Set when this reconcile created or adopted the checkpoint.
        obtained: Option<Obtained>,
        /// A new fingerprint, or `None` when the recorded one still applies.
        fingerprint: Option<Fingerprint>,
    },
    Failed {
        fault: Fault,
        reason: String,
        message: String,
    },
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
    pub event: Option<(EventType, String, String)>,
    pub requeue_after: Option<Duration>,
}

/// The pure heart of the reconciler: from the object, what SlateDB said and the dependants, the new
/// status, the event to record and when to requeue. `retry_delay` is the backoff for a transient
/// failure.
pub fn decide(
    object: &DatabaseCheckpoint,
    observation: &Observation,
    dependents: &Dependents,
    now: DateTime<Utc>,
    retry_delay: Duration,
) -> Decision {
    let previous = object.status.clone().unwrap_or_default();
    let generation = object.metadata.generation;
    let now_k8s = to_k8s_time(now);
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.dependents = Some(dependents.total as i32);
    let conditions = &mut status.conditions;
    if dependents.in_progress.is_empty() {
        set_condition(
            conditions,
            "InUse",
            false,
            "NoClonesInProgress",
            "",
            generation,
            &now_k8s,
        );
    } else {
        let message = format!(
            "clones being initialized from it: {}",
            dependents.in_progress.join(", ")
        );
        set_condition(
            conditions,
            "InUse",
            true,
            "ClonesInProgress",
            &message,
            generation,
            &now_k8s,
        );
    }

    let (event, requeue_after) = match observation {
        Observation::Present {
            checkpoint,
            obtained,
            fingerprint,
        } => {
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
                    verified_time: fingerprint.content_root.as_ref().map(|_| now_k8s.clone()),
                });
            }
            clear_condition(conditions, "Stalled");
            clear_condition(conditions, "Reconciling");
            let remaining = checkpoint
                .expire_time
                .map(|at| at.signed_duration_since(now));
            match remaining {
                Some(left) if left <= chrono::TimeDelta::zero() => {
                    let message = format!(
                        "the checkpoint expired at {}",
                        checkpoint.expire_time.unwrap_or(now)
                    );
                    set_condition(
                        conditions,
                        "Expired",
                        true,
                        "LifetimeElapsed",
                        &message,
                        generation,
                        &now_k8s,
                    );
                    set_condition(
                        conditions, "Ready", false, "Expired", &message, generation, &now_k8s,
                    );
                    status.phase = Some(CheckpointPhase::Expired);
                    let event = (!is_true(&previous.conditions, "Expired"))
                        .then(|| (EventType::Normal, "Expired".to_string(), message.clone()));
                    (event, None)
                }
                _ => {
                    set_condition(
                        conditions,
                        "Expired",
                        false,
                        "NotExpired",
                        "",
                        generation,
                        &now_k8s,
                    );
                    let message = format!(
                        "checkpoint {} pins manifest {}",
                        checkpoint.id, checkpoint.manifest_id
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
                    status.phase = Some(CheckpointPhase::Ready);
                    let event = match obtained {
                        Some(Obtained::Created) => {
                            Some((EventType::Normal, "Created".into(), message))
                        }
                        Some(Obtained::Adopted) => {
                            Some((EventType::Normal, "Adopted".into(), message))
                        }
                        None => None,
                    };
                    // Wake up exactly at expiry.
                    let requeue = remaining
                        .and_then(|left| left.to_std().ok())
                        .map(|d| d + Duration::from_millis(200));
                    (event, requeue)
                }
            }
        }
        Observation::Failed {
            reason, message, ..
        } if reason == "CheckpointMissing" && expired_before(&previous, now) => {
            // SlateDB's GC removed the checkpoint after it expired: that is the expected end.
            let message = format!("the checkpoint expired and was garbage-collected ({message})");
            set_condition(
                conditions,
                "Expired",
                true,
                "LifetimeElapsed",
                &message,
                generation,
                &now_k8s,
            );
            set_condition(
                conditions, "Ready", false, "Expired", &message, generation, &now_k8s,
            );
            clear_condition(conditions, "Stalled");
            clear_condition(conditions, "Reconciling");
            status.phase = Some(CheckpointPhase::Expired);
            (None, None)
        }
        Observation::Failed {
            fault: Fault::Transient,
            reason,
            message,
        } => {
            let message = format!("{message}; retrying in {}s", retry_delay.as_secs().max(1));
            set_condition(
                conditions,
                "Reconciling",
                true,
                reason,
                &message,
                generation,
                &now_k8s,
            );
            clear_condition(conditions, "Stalled");
            if !is_true(conditions, "Ready") {
                set_condition(
                    conditions, "Ready", false, reason, &message, generation, &now_k8s,
                );
                status.phase = Some(CheckpointPhase::Pending);
            }
            let event = (previous_reason(&previous, "Reconciling") != Some(reason.as_str()))
                .then(|| (EventType::Warning, reason.clone(), message.clone()));
            (event, Some(retry_delay))
        }
        Observation::Failed {
            fault: Fault::Permanent,
            reason,
            message,
        } => {
            set_condition(
                conditions, "Stalled", true, reason, message, generation, &now_k8s,
            );
            set_condition(
                conditions, "Ready", false, reason, message, generation, &now_k8s,
            );
            clear_condition(conditions, "Reconciling");
            status.phase = Some(CheckpointPhase::Failed);
            let event = (previous_reason(&previous, "Stalled") != Some(reason.as_str()))
                .then(|| (EventType::Warning, reason.clone(), message.clone()));
            // A spec change or a watched Secret wakes it; the slow requeue catches store-side fixes.
            (event, Some(Duration::from_secs(600)))
        }
    };
    Decision {
        status,
        event,
        requeue_after,
    }
}

fn expired_before(status: &DatabaseCheckpointStatus, now: DateTime<Utc>) -> bool {
    status
        .expiration_time
        .as_ref()
        .is_some_and(|t| t.0.as_millisecond() <= now.timestamp_millis())
}

fn previous_reason<'a>(status: &'a DatabaseCheckpointStatus, type_: &str) -> Option<&'a str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.as_str())
}

fn failure(error: &EngineError) -> Observation {
    Observation::Failed {
        fault: error.fault(),
        reason: error.reason().into(),
        message: error.to_string(),
    }
}

/// Opens the object's database, or says why it cannot.
async fn open_database(
    object: &DatabaseCheckpoint,
    ctx: &Context,
) -> Result<Result<Database, Problem>, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let store = open_store(&ctx.client, &namespace, &object.spec.database.store).await?;
    Ok(store.map(|store| {
        Database::new(
            store,
            &object.spec.database.path.0,
            ctx.settings.admin_timeout,
        )
    }))
}

/// Finds or makes the SlateDB checkpoint and fingerprints it when needed.
async fn observe(
    object: &DatabaseCheckpoint,
    db: &Database,
    dependents: &Dependents,
) -> Observation {
    match observe_checkpoint(object, db, dependents).await {
        Ok(observation) => observation,
        Err(error) => failure(&error),
    }
}

async fn observe_checkpoint(
    object: &DatabaseCheckpoint,
    db: &Database,
    dependents: &Dependents,
) -> Result<Observation, EngineError> {
    let status = object.status.clone().unwrap_or_default();
    let lifetime = object
        .spec
        .lifetime
        .as_ref()
        .map(|d| d.to_std())
        .transpose()
        .map_err(|message| EngineError::StoreConfig(format!("spec.lifetime: {message}")))?;
    let recorded = status
        .checkpoint_id
        .as_deref()
        .and_then(|id| id.parse().ok());
    let (mut checkpoint, obtained) = match (recorded, object.spec.source.mode) {
        (Some(id), _) => (db.find_checkpoint(&CheckpointSelector::Id(id)).await?, None),
        (None, CheckpointSourceMode::Create) => {
            let name = checkpoint_name(
                &object.namespace().unwrap_or_default(),
                &object.name_any(),
                &object.uid().unwrap_or_default(),
            );
            let (checkpoint, obtained) = db.obtain_checkpoint(&name, lifetime).await?;
            if obtained == Obtained::Created
                && std::env::var(CRASH_POINT_ENV).as_deref() == Ok("after-checkpoint-create")
            {
                warn!(checkpoint = %checkpoint.id, "crash point reached: exiting before the status is written");
                std::process::exit(86);
            }
            (checkpoint, Some(obtained))
        }
        (None, CheckpointSourceMode::Adopt) => {
            let adopt = object
                .spec
                .source
                .adopt
                .clone()
                .unwrap_or(crate::api::AdoptCheckpoint {
                    id: None,
                    name: None,
                });
            let selector = match (adopt.id, adopt.name) {
                (Some(id), _) => CheckpointSelector::Id(id.parse().map_err(|_| {
                    EngineError::CheckpointMissing {
                        path: db.path().to_string(),
                        selector: format!("with id {id:?} (not a UUID)"),
                    }
                })?),
                (None, Some(name)) => CheckpointSelector::Name(name),
                (None, None) => {
                    return Err(EngineError::StoreConfig(
                        "spec.source.adopt needs an id or a name".into(),
                    ));
                }
            };
            (
                db.find_checkpoint(&selector).await?,
                Some(Obtained::Adopted),
            )
        }
    };
    // Never let a checkpoint expire under clones that are still being made from it.
    if !dependents.in_progress.is_empty() {
        if let Some(expires) = checkpoint.expire_time {
            if expires < Utc::now() + DEPENDANT_GRACE {
                checkpoint = db
                    .refresh_checkpoint(checkpoint.id, Some(DEPENDANT_GRACE))
                    .await?;
            }
        }
    }
    let want_content = object.spec.checksum == ChecksumMode::Content;
    let recorded_fingerprint_applies = status.checkpoint_id.as_deref()
        == Some(checkpoint.id.to_string().as_str())
        && status
            .checksum
            .as_ref()
            .is_some_and(|c| !want_content || c.content_root.is_some());
    let fingerprint = if recorded_fingerprint_applies {
        None
    } else {
        Some(db.fingerprint(checkpoint.manifest_id, want_content).await?)
    };
    Ok(Observation::Present {
        checkpoint,
        obtained,
        fingerprint,
    })
}

async fn dependents_of(
    object: &DatabaseCheckpoint,
    ctx: &Context,
) -> Result<Dependents, kube::Error> {
    let namespace = object.namespace().unwrap_or_default();
    let clones = Api::<DatabaseClone>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await?;
    let name = object.name_any();
    let mut dependents = Dependents::default();
    for clone in clones.items.iter().filter(|c| {
        c.spec
            .source
            .checkpoint_ref
            .as_ref()
            .is_some_and(|r| r.name == name)
    }) {
        dependents.total += 1;
        let conditions = clone
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let settled = is_true(conditions, "Initialized") || is_true(conditions, "Stalled");
        if !settled && clone.metadata.deletion_timestamp.is_none() {
            dependents.in_progress.push(clone.name_any());
        }
    }
    Ok(dependents)
}

/// Adds or removes the protection finalizer with a guarded JSON patch.
async fn set_protection(
    object: &DatabaseCheckpoint,
    api: &Api<DatabaseCheckpoint>,
    protect: bool,
) -> Result<(), Error> {
    let finalizers = object.finalizers();
    let present = finalizers.iter().position(|f| f == PROTECTION_FINALIZER);
    let patch = match (protect, present) {
        (true, None) if finalizers.is_empty() => {
            json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                   {"op": "add", "path": "/metadata/finalizers", "value": [PROTECTION_FINALIZER]}])
        }
        (true, None) => {
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": PROTECTION_FINALIZER}])
        }
        (false, Some(index)) => json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": PROTECTION_FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")}]),
        _ => return Ok(()),
    };
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| Error::Blocked(e.to_string()))?;
    api.patch(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}

async fn apply(object: Arc<DatabaseCheckpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx = ctx.as_ref();
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), &namespace);
    let uid = object.uid().unwrap_or_default();
    let dependents = dependents_of(&object, ctx).await?;
    set_protection(&object, &api, !dependents.in_progress.is_empty()).await?;
    let observation = match open_database(&object, ctx).await? {
        Ok(db) => observe(&object, &db, &dependents).await,
        Err(p) => Observation::Failed {
            fault: p.fault,
            reason: p.reason,
            message: p.message,
        },
    };
    let retry_delay = match &observation {
        Observation::Failed {
            fault: Fault::Transient,
            ..
        } => ctx.next_backoff(&uid),
        _ => {
            ctx.reset_backoff(&uid);
            Duration::ZERO
        }
    };
    let decision = decide(&object, &observation, &dependents, Utc::now(), retry_delay);
    if let Some((type_, reason, note)) = &decision.event {
        ctx.publish(object.as_ref(), None, *type_, reason, note)
            .await;
    }
    let patch = json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint", "status": decision.status});
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(match decision.requeue_after {
        Some(delay) => Action::requeue(delay),
        None => Action::await_change(),
    })
}

async fn cleanup(object: Arc<DatabaseCheckpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ctx = ctx.as_ref();
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), &namespace);
    let dependents = dependents_of(&object, ctx).await?;
    if !dependents.in_progress.is_empty() {
        set_protection(&object, &api, true).await?;
        let message = format!(
            "deletion waits for clones being initialized from this checkpoint: {}",
            dependents.in_progress.join(", ")
        );
        ctx.publish(
            &*object,
            None,
            EventType::Warning,
            "DeletionBlocked",
            &message,
        )
        .await;
        return Err(Error::Blocked(message));
    }
    if object.spec.deletion_policy == DeletionPolicy::Delete {
        delete_slatedb_checkpoints(&object, ctx).await?;
    }
    set_protection(&object, &api, false).await?;
    Ok(Action::await_change())
}

/// Deletes the checkpoint the status records and, for created checkpoints, any made under the
/// object's deterministic name (a crash may have left one unrecorded).
async fn delete_slatedb_checkpoints(
    object: &DatabaseCheckpoint,
    ctx: &Context,
) -> Result<(), Error> {
    let db = match open_database(object, ctx).await? {
        Ok(db) => db,
        Err(problem) if leave_data_behind(&problem, &object.metadata, chrono::Utc::now()) => {
            let message = format!(
                "{}, so the SlateDB checkpoint is left in the database at {}; delete it with \
                 `slatedb-operator checkpoint delete`",
                problem.message, object.spec.database.path.0
            );
            ctx.publish(object, None, EventType::Warning, "DataLeftBehind", &message)
                .await;
            return Ok(());
        }
        Err(Problem { message, .. }) => {
            ctx.publish(object, None, EventType::Warning, "DeleteFailed", &message)
                .await;
            return Err(Error::Blocked(format!(
                "cannot delete the SlateDB checkpoint: {message}; fix it or set deletionPolicy: Retain"
            )));
        }
    };
    let mut ids: Vec<uuid::Uuid> = Vec::new();
    if let Some(id) = object
        .status
        .as_ref()
        .and_then(|s| s.checkpoint_id.as_deref())
        .and_then(|id| id.parse().ok())
    {
        ids.push(id);
    }
    let gone = |e: &EngineError| {
        matches!(
            e,
            EngineError::NotADatabase { .. } | EngineError::CheckpointMissing { .. }
        )
    };
    if object.spec.source.mode == CheckpointSourceMode::Create {
        let name = checkpoint_name(
            &object.namespace().unwrap_or_default(),
            &object.name_any(),
            &object.uid().unwrap_or_default(),
        );
        match db.list_checkpoints(Some(&name)).await {
            Ok(found) => ids.extend(
                found
                    .into_iter()
                    .map(|c| c.id)
                    .filter(|id| !ids.contains(id))
                    .collect::<Vec<_>>(),
            ),
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    for id in ids {
        match db.delete_checkpoint(id).await {
            Ok(true) => {
                info!(checkpoint = %id, "deleted SlateDB checkpoint");
                ctx.publish(
                    object,
                    None,
                    EventType::Normal,
                    "Deleted",
                    &format!("deleted SlateDB checkpoint {id}"),
                )
                .await;
            }
            Ok(false) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub async fn reconcile(
    object: Arc<DatabaseCheckpoint>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), &namespace);
    let span = tracing::info_span!("reconcile", kind = "DatabaseCheckpoint", namespace = %namespace, name = %object.name_any());
    // The watch cache may lag our own writes: a stale copy would make the finalizer patch fail
    // its precondition.
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

pub fn error_policy(object: Arc<DatabaseCheckpoint>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.requeue_after_error(KIND, object.as_ref(), error)
}

/// Runs the checkpoint controller until a shutdown signal.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let namespace = namespace.as_deref();
    let controller = Controller::new(
        ctx.scoped_api::<DatabaseCheckpoint>(namespace),
        watcher::Config::default().any_semantic(),
    )
    .trigger_backoff(super::WatchBackoff::default());
    let checkpoints = controller.store();
    ctx.controller_started(checkpoints.clone());
    controller
        .watches(
            ctx.scoped_api::<DatabaseClone>(namespace),
            watcher::Config::default(),
            |clone| {
                let namespace = clone.namespace().unwrap_or_default();
                clone
                    .spec
                    .source
                    .checkpoint_ref
                    .map(|r| ObjectRef::new(&r.name).within(&namespace))
            },
        )
        .watches(
            ctx.scoped_api::<Secret>(namespace),
            watcher::Config::default(),
            move |secret| {
                let namespace = secret.namespace().unwrap_or_default();
                let name = secret.name_any();
                checkpoints
                    .state()
                    .into_iter()
                    .filter(|cp| {
                        cp.namespace().as_deref() == Some(namespace.as_str())
                            && cp
                                .spec
                                .database
                                .store
                                .secret_ref
                                .as_ref()
                                .is_some_and(|s| s.name == name)
                    })
                    .map(|cp| ObjectRef::from_obj(&*cp))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "checkpoint controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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
        assert_eq!(d.event.as_ref().unwrap().1, "Created");
        assert_eq!(d.requeue_after, None, "no expiry, nothing to wake up for");
    }

    #[test]
    fn a_lifetime_requeues_for_exactly_the_remaining_time_then_expires() {
        let live = Observation::Present {
            checkpoint: checkpoint(Some(30)),
            obtained: None,
            fingerprint: None,
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
        assert_eq!(d2.event.as_ref().unwrap().1, "Expired");
        assert_eq!(d2.status.phase, Some(CheckpointPhase::Expired));
        // Garbage-collected after expiry: still Expired, not Stalled.
        let gone = Observation::Failed {
            fault: Fault::Permanent,
            reason: "CheckpointMissing".into(),
            message: "gone".into(),
        };
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
        let failed = Observation::Failed {
            fault: Fault::Transient,
            reason: "SecretNotFound".into(),
            message: "no secret".into(),
        };
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
        assert_eq!(d.event.as_ref().unwrap().0, EventType::Warning);
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
        let failed = Observation::Failed {
            fault: Fault::Permanent,
            reason: "NotADatabase".into(),
            message: "no manifest".into(),
        };
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
    fn dependants_in_progress_mark_it_in_use() {
        let ok = Observation::Present {
            checkpoint: checkpoint(None),
            obtained: None,
            fingerprint: Some(fingerprint()),
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
