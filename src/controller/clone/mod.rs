//! The `DatabaseClone` controller: resolves the source ([`source`]), runs the clone off the
//! reconcile loop in a bounded pool ([`pool`]), publishes progress, gates `Ready` on SlateDB's
//! `initialized` flag and verification, expires, and deletes the clone's data with the object.
//! [`decide`] holds the pure decision; this file the effects and the watches.

pub mod decide;
mod pool;
mod source;

pub use decide::{decide, settled, Decision, Effect, Work, PROGRESS_INTERVAL};
pub use pool::ClonePool;

use crate::api::{DatabaseCheckpoint, DatabaseClone, DeletionPolicy, VerifyMode};
use crate::controller::shell::{self, Reconcile};
use crate::controller::stores::{leave_data_behind, open_store};
use crate::controller::{Context, Error, Notice, Problem};
use crate::engine::{Database, Fault};
use chrono::Utc;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use source::{latest_checkpoint_name, resolve, Resolved};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Held while the clone's data must be deleted with the object.
pub const CLEANUP_FINALIZER: &str = "slatedb.io/clone-cleanup";

impl Reconcile for DatabaseClone {
    const CLEANUP_FINALIZER: &'static str = CLEANUP_FINALIZER;

    async fn apply(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        apply(&object, &ctx).await
    }

    async fn cleanup(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        cleanup(&object, &ctx).await
    }
}

/// The clone's source checkpoint, as an event's related object.
fn source_ref(object: &DatabaseClone) -> Option<ObjectReference> {
    object
        .spec
        .source
        .checkpoint_ref
        .as_ref()
        .map(|r| ObjectReference {
            api_version: Some(DatabaseCheckpoint::api_version(&()).into()),
            kind: Some(DatabaseCheckpoint::kind(&()).into()),
            name: Some(r.name.clone()),
            namespace: object.namespace(),
            ..Default::default()
        })
}

async fn apply(object: &DatabaseClone, ctx: &Context) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseClone>::namespaced(ctx.client.clone(), &namespace);
    let uid = object.uid().unwrap_or_default();
    let mut start = None;
    let work = match ctx.clones.observe(&uid) {
        Some(work) => work,
        None if settled(object) => Work::Settled,
        None => match resolve(object, ctx).await? {
            Ok(Resolved { config, store }) => {
                start = Some(config);
                Work::Startable(store)
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
    let decision = decide(object, &work, Utc::now(), retry_delay);
    if let Some(notice) = &decision.event {
        ctx.publish(object, source_ref(object), notice).await;
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
            delete_data(object, ctx).await?;
        }
        Effect::StartWork | Effect::None => {}
    }
    if object.status.as_ref() != Some(&decision.status) {
        shell::write_status(&api, object, &decision.status).await?;
    }
    if let (Effect::StartWork, Some(config)) = (&decision.effect, start) {
        info!(target_path = %config.target_path, "starting clone work");
        ctx.clones.spawn(&uid, config);
    }
    Ok(shell::requeue(decision.requeue_after))
}

async fn cleanup(object: &DatabaseClone, ctx: &Context) -> Result<Action, Error> {
    ctx.clones.cancel(&object.uid().unwrap_or_default());
    if object.spec.deletion_policy == DeletionPolicy::Delete {
        match delete_data(object, ctx).await {
            Ok(true) => {}
            Ok(false) => return Ok(Action::await_change()),
            Err(error) => {
                let notice = Notice::warning("Delete", "DeleteFailed", error.to_string());
                ctx.publish(object, source_ref(object), &notice).await;
                return Err(error);
            }
        }
        let notice = Notice::normal("Delete", "Deleted", "deleted the clone's data");
        ctx.publish(object, source_ref(object), &notice).await;
    }
    Ok(Action::await_change())
}

/// Deletes the clone's data, given the store recorded in its status; `Ok(false)` when it was left
/// behind because the store's Secret stayed missing (see [`leave_data_behind`]).
async fn delete_data(object: &DatabaseClone, ctx: &Context) -> Result<bool, Error> {
    let Some(store_spec) = object.status.as_ref().and_then(|s| s.store.clone()) else {
        return Ok(true); // work never started, so there is nothing to delete
    };
    let namespace = object.namespace().unwrap_or_default();
    let store = match open_store(&ctx.client, &namespace, &store_spec).await? {
        Ok(store) => store,
        Err(problem) if leave_data_behind(&problem, &object.metadata, Utc::now()) => {
            let note = format!(
                "{}, so the clone's data at {} under {} is left in the store; delete it by hand",
                problem.message, object.spec.target.path.0, store_spec.url.0
            );
            let notice = Notice::warning("Delete", "DataLeftBehind", note);
            ctx.publish(object, source_ref(object), &notice).await;
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
        let parent = Database::new(store, &database.path.0, ctx.settings.admin_timeout);
        if let Ok(leftovers) = parent
            .list_checkpoints(Some(&latest_checkpoint_name(object)))
            .await
        {
            for checkpoint in leftovers {
                parent.delete_checkpoint(checkpoint.id).await?;
            }
        }
    }
    Ok(true)
}

/// Runs the clone controller until a shutdown signal: woken by its objects, by the checkpoints
/// they clone, and by the Secrets their source stores name.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let namespace = namespace.as_deref();
    let (controller, clones) = shell::controller::<DatabaseClone>(&ctx, namespace);
    let controller = controller
        .watches(
            ctx.scoped_api::<DatabaseCheckpoint>(namespace),
            watcher::Config::default(),
            shell::objects_naming::<_, DatabaseCheckpoint>(clones.clone(), |clone| {
                let checkpoint = clone.spec.source.checkpoint_ref.as_ref();
                checkpoint.map(|r| r.name.as_str())
            }),
        )
        .watches(
            ctx.scoped_api::<Secret>(namespace),
            watcher::Config::default(),
            shell::objects_naming::<_, Secret>(clones, |clone| {
                let database = clone.spec.source.database.as_ref();
                database.and_then(|d| d.store.secret_ref.as_ref().map(|s| s.name.as_str()))
            }),
        );
    shell::run(controller, ctx).await;
}
