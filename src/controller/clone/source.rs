//! Resolving a clone's source: the DatabaseCheckpoint it names (Ready, not Stalled) or a
//! database's latest state, the key range, and the store, into the engine's clone configuration.

use super::decide::{Start, SCHEDULE_NOT_FOUND, SOURCE_STALLED};
use crate::api::conditions::{READY, STALLED};
use crate::api::DatabaseCheckpointSchedule;
use crate::api::{DatabaseCheckpoint, DatabaseClone, StoreSpec, VerifyMode};
use crate::controller::conditions::is_true;
use crate::controller::schedule::{self, decide::ChildState};
use crate::controller::stores::{open_store, PathUse};
use crate::controller::{Context, Outcome, Problem};
use crate::engine::{CloneConfig, CloneSourceCheckpoint, Fault, Owner, RetryPolicy, Verification};
use kube::{Api, ResourceExt};
use std::sync::Arc;

/// A resolved source: what the engine needs, and the store to record in the status.
pub struct Resolved {
    pub config: CloneConfig,
    pub start: Start,
}

/// The SlateDB name of the temporary checkpoint a clone of the latest state makes on its parent.
pub fn latest_checkpoint_name(object: &DatabaseClone) -> String {
    format!(
        "k8s-clone:{}/{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any(),
        object.uid().unwrap_or_default()
    )
}

/// The object as the owner of its target.
pub fn owner_of(object: &DatabaseClone) -> Owner {
    Owner {
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
        uid: object.uid().unwrap_or_default(),
    }
}

fn problem<T>(fault: Fault, reason: &str, message: String) -> Outcome<T> {
    Ok(Err(Problem {
        fault,
        reason: reason.into(),
        message,
    }))
}

/// Resolves the source into the engine's clone configuration, or says why it cannot be yet.
pub async fn resolve(object: &DatabaseClone, ctx: &Context) -> Outcome<Resolved> {
    let namespace = object.namespace().unwrap_or_default();
    let source = &object.spec.source;
    let (store_spec, source_path, source_checkpoint, checkpoint_name) = match &source.database {
        Some(database) => (
            database.store.clone(),
            database.path.0.clone(),
            CloneSourceCheckpoint::Latest {
                name: latest_checkpoint_name(object),
            },
            None,
        ),
        None => {
            let name = match (&source.checkpoint_ref, &source.schedule_ref) {
                (Some(reference), _) => reference.name.clone(),
                (None, Some(schedule)) => {
                    match scheduled_source(object, &schedule.name, ctx).await? {
                        Ok(name) => name,
                        Err(problem) => return Ok(Err(problem)),
                    }
                }
                (None, None) => {
                    return problem(
                        Fault::Permanent,
                        "InvalidSpec",
                        "spec.source names no source".into(),
                    )
                }
            };
            let (store, path, id) = match checkpoint_source(&namespace, &name, ctx).await? {
                Ok(found) => found,
                Err(problem) => return Ok(Err(problem)),
            };
            (store, path, CloneSourceCheckpoint::Id(id), Some(name))
        }
    };
    if source_path == object.spec.target.path.0 {
        return problem(
            Fault::Permanent,
            "InvalidSpec",
            "spec.target.path is the source database's path".into(),
        );
    }
    let key_range = match source.key_range.as_ref().map(|range| range.bounds()) {
        None => None,
        Some(Ok(bounds)) => Some(bounds),
        Some(Err(message)) => return problem(Fault::Permanent, "InvalidKeyRange", message),
    };
    let uses = [
        PathUse::Read(&source_path),
        PathUse::Write(&object.spec.target.path.0),
    ];
    let store = match open_store(ctx, &namespace, &store_spec, &uses).await? {
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
        owner: Some(owner_of(object)),
    };
    Ok(Ok(Resolved {
        config,
        start: Start {
            store: store_spec,
            source_checkpoint: checkpoint_name,
        },
    }))
}

/// The store, database path and SlateDB checkpoint of DatabaseCheckpoint `name`, once it is Ready.
pub(crate) async fn checkpoint_source(
    namespace: &str,
    name: &str,
    ctx: &Context,
) -> Outcome<(StoreSpec, String, uuid::Uuid)> {
    // A Ready checkpoint's id, store and path never change, so the watch cache answers for one
    // without a round trip to the API server; anything else is read afresh.
    let cached = ctx
        .cached_checkpoint(namespace, name)
        .filter(|c| c.metadata.deletion_timestamp.is_none() && ready_id(c).is_some());
    let checkpoint = match cached {
        Some(checkpoint) => Some(checkpoint),
        None => Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(Arc::new),
    };
    let Some(checkpoint) = checkpoint else {
        return problem(
            Fault::Transient,
            "SourceNotFound",
            format!("DatabaseCheckpoint {namespace}/{name} does not exist"),
        );
    };
    let status = checkpoint.status.clone().unwrap_or_default();
    match ready_id(&checkpoint) {
        Some(id) => Ok(Ok((
            checkpoint.spec.database.store.clone(),
            checkpoint.spec.database.path.0.clone(),
            id,
        ))),
        // Stalled until the checkpoint recovers; its changes trigger a reconcile.
        _ if is_true(&status.conditions, STALLED) => {
            let why = status
                .conditions
                .iter()
                .find(|c| c.type_ == STALLED)
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default();
            problem(
                Fault::Permanent,
                SOURCE_STALLED,
                format!(
                    "DatabaseCheckpoint {namespace}/{name} is Stalled ({why}); fix it and this \
                     proceeds"
                ),
            )
        }
        _ => problem(
            Fault::Transient,
            "SourceNotReady",
            format!("DatabaseCheckpoint {namespace}/{name} is not Ready"),
        ),
    }
}

/// The SlateDB checkpoint id of a Ready DatabaseCheckpoint.
fn ready_id(checkpoint: &DatabaseCheckpoint) -> Option<uuid::Uuid> {
    let status = checkpoint.status.as_ref()?;
    let id = status.checkpoint_id.as_deref()?.parse().ok()?;
    is_true(&status.conditions, READY).then_some(id)
}

/// The DatabaseCheckpoint a clone of schedule `name` is made from: the one recorded when its work
/// started (a retry resumes the same clone), else the schedule's newest Ready checkpoint.
async fn scheduled_source(object: &DatabaseClone, name: &str, ctx: &Context) -> Outcome<String> {
    if let Some(recorded) = object
        .status
        .as_ref()
        .and_then(|s| s.source_checkpoint.clone())
    {
        return Ok(Ok(recorded));
    }
    newest_of_schedule(&object.namespace().unwrap_or_default(), name, ctx).await
}

/// The newest Ready DatabaseCheckpoint of schedule `name`.
pub(crate) async fn newest_of_schedule(
    namespace: &str,
    name: &str,
    ctx: &Context,
) -> Outcome<String> {
    let schedules = Api::<DatabaseCheckpointSchedule>::namespaced(ctx.client.clone(), namespace);
    let Some(schedule) = schedules.get_opt(name).await? else {
        return problem(
            Fault::Permanent,
            SCHEDULE_NOT_FOUND,
            format!(
                "DatabaseCheckpointSchedule {namespace}/{name} does not exist; create it (or fix \
                 spec.source.scheduleRef) and this proceeds"
            ),
        );
    };
    let checkpoints = Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), namespace);
    let children = schedule::children_of(&schedule, &checkpoints).await?;
    match children
        .iter()
        .find(|(_, child)| child.state == ChildState::Ready && !child.deleting)
    {
        Some((checkpoint, _)) => Ok(Ok(checkpoint.name_any())),
        None => {
            let next = schedule
                .status
                .as_ref()
                .and_then(|s| s.next_schedule_time.as_ref())
                .map(|t| format!(" (next tick at {})", t.0))
                .unwrap_or_default();
            problem(
                Fault::Transient,
                "NoReadyCheckpoint",
                format!(
                    "DatabaseCheckpointSchedule {namespace}/{name} has no Ready checkpoint yet{next}; \
                     the work starts from the first one"
                ),
            )
        }
    }
}
