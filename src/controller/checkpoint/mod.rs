//! The `DatabaseCheckpoint` controller: makes or adopts the SlateDB checkpoint, fingerprints it,
//! tracks its expiry and the clones that depend on it, and deletes it (per `deletionPolicy`) when
//! the object goes. [`decide`] holds the pure decision, [`observe`] what is read from SlateDB and
//! the API server; this file the effects and the watches.

pub mod decide;
mod observe;

pub use decide::{decide, Decision, Dependents, Observation};

use crate::api::{CheckpointSourceMode, DatabaseCheckpoint, DeletionPolicy};
use crate::controller::shell::{self, Reconcile};
use crate::controller::stores::leave_data_behind;
use crate::controller::{predicates, store};
use crate::controller::{Context, Error, Notice, Problem};
use crate::engine::{EngineError, Fault};
use chrono::Utc;
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use observe::{dependents_of, observe, open_database, own_checkpoint_name, Freshness};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Held while the object owns a SlateDB checkpoint that must be deleted with it.
pub const CLEANUP_FINALIZER: &str = "slatedb.io/checkpoint-cleanup";
/// Held while a DatabaseClone that references this checkpoint is still being initialized.
pub const PROTECTION_FINALIZER: &str = "slatedb.io/clone-source-protection";

impl Reconcile for DatabaseCheckpoint {
    const CLEANUP_FINALIZER: &'static str = CLEANUP_FINALIZER;

    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self> {
        shell::namespaced_api(client, namespace)
    }

    async fn apply(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        apply(&object, &ctx).await
    }

    async fn cleanup(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        cleanup(&object, &ctx).await
    }
}

async fn apply(object: &DatabaseCheckpoint, ctx: &Context) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), &namespace);
    let uid = object.uid().unwrap_or_default();
    let dependents = dependents_of(object, ctx, Freshness::Cached).await?;
    set_protection(object, &api, !dependents.in_progress.is_empty()).await?;
    let observation = match open_database(object, ctx).await? {
        Ok(db) => observe(object, &db, &dependents, ctx.health.as_ref()).await,
        Err(problem) => Observation::Failed(problem),
    };
    let retry_delay = match &observation {
        Observation::Failed(Problem {
            fault: Fault::Transient,
            ..
        }) => ctx.next_backoff(&uid),
        _ => {
            ctx.reset_backoff(&uid);
            Duration::ZERO
        }
    };
    let decision = decide(object, &observation, &dependents, Utc::now(), retry_delay);
    if let Some(notice) = &decision.event {
        ctx.publish(object, None, notice);
    }
    // An unchanged status is not written again (a restart of the operator writes nothing).
    if object.status.as_ref() != Some(&decision.status) {
        shell::write_status(ctx, &api, object, &decision.status).await?;
    }
    Ok(shell::requeue(decision.requeue_after))
}

async fn cleanup(object: &DatabaseCheckpoint, ctx: &Context) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), &namespace);
    let dependents = dependents_of(object, ctx, Freshness::Now).await?;
    if !dependents.in_progress.is_empty() {
        set_protection(object, &api, true).await?;
        let message = format!(
            "deletion waits for clones being initialized from this checkpoint: {}",
            dependents.in_progress.join(", ")
        );
        ctx.publish(
            object,
            None,
            &Notice::warning("Delete", "DeletionBlocked", message.clone()),
        );
        return Err(Error::Blocked(message));
    }
    if object.spec.deletion_policy == DeletionPolicy::Delete {
        delete_slatedb_checkpoints(object, ctx).await?;
    }
    set_protection(object, &api, false).await?;
    Ok(Action::await_change())
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

/// Deletes the checkpoint the status records and, for created checkpoints, any made under the
/// object's deterministic name (a crash may have left one unrecorded).
async fn delete_slatedb_checkpoints(
    object: &DatabaseCheckpoint,
    ctx: &Context,
) -> Result<(), Error> {
    let db = match open_database(object, ctx).await? {
        Ok(db) => db,
        Err(problem) if leave_data_behind(&problem, &object.metadata, Utc::now()) => {
            let message = format!(
                "{}, so the SlateDB checkpoint is left in the database at {}; delete it with \
                 `slatedb-operator checkpoint delete`",
                problem.message, object.spec.database.path.0
            );
            ctx.publish(
                object,
                None,
                &Notice::warning("Delete", "DataLeftBehind", message),
            );
            return Ok(());
        }
        Err(Problem { message, .. }) => {
            ctx.publish(
                object,
                None,
                &Notice::warning("Delete", "DeleteFailed", message.clone()),
            );
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
        match db
            .list_checkpoints(Some(&own_checkpoint_name(object)))
            .await
        {
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
                let note = format!("deleted SlateDB checkpoint {id}");
                ctx.publish(object, None, &Notice::normal("Delete", "Deleted", note));
            }
            Ok(false) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How late a clone's change reaches its checkpoint (see [`run`]).
const CLONE_CHANGE_DELAY: Duration = Duration::from_millis(200);

/// How many clone changes may wait out [`CLONE_CHANGE_DELAY`] at once; more wait in the watch's
/// channel.
const CLONE_CHANGES_DELAYED_AT_ONCE: usize = 4096;

/// Runs the checkpoint controller until a shutdown signal: woken by its objects, by the
/// DatabaseStores they name and by the clones that reference them. It reads only the Secrets its
/// stores name, and watches none: a Secret created after its object is picked up by the retry of
/// the `SecretNotFound` wait.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let namespace = namespace.as_deref();
    let (controller, checkpoints) = shell::controller_on(&ctx, &ctx.checkpoint_watch(namespace));
    let controller = store::watch_stores(controller, &ctx, checkpoints, |checkpoint, name| {
        store::names_store(Some(&checkpoint.spec.database.store), name)
    });
    // A clone's progress updates do not concern its checkpoint: only its being made (Ready,
    // Stalled, Initialized) and its going. The watch of clones is the clone controller's.
    // Each change reaches the checkpoint a moment late: a clone is usually Ready within it, so
    // the checkpoint records it once, rather than adding and removing its protection and
    // writing its status twice while the clone's own writes wait for the same API server.
    let clone_changes = ctx
        .clone_watch(namespace)
        .changes(predicates::clone_change_for_checkpoint)
        .map(|clone| async move {
            tokio::time::sleep(CLONE_CHANGE_DELAY).await;
            clone
        })
        .buffer_unordered(CLONE_CHANGES_DELAYED_AT_ONCE);
    let controller = controller.watches_shared_stream(clone_changes, |clone| {
        let namespace = clone.namespace().unwrap_or_default();
        clone
            .source_checkpoint()
            .map(|name| ObjectRef::new(&name).within(&namespace))
    });
    shell::run(controller, ctx).await;
}
