//! The `DatabaseCheckpointSchedule` controller: makes the DatabaseCheckpoints of a schedule (owned
//! by it, labelled with its name, annotated with their tick), prunes them by its retention rules
//! and reports the last and next run. [`decide`] holds the pure decision; this file the effects
//! and the watches.

pub mod decide;

use crate::api::conditions::{IN_USE, READY, STALLED};
use crate::api::{
    DatabaseCheckpoint, DatabaseCheckpointSchedule, SCHEDULED_TIME_ANNOTATION, SCHEDULE_LABEL,
};
use crate::controller::conditions::is_true;
use crate::controller::predicates;
use crate::controller::shell::{self, Reconcile};
use crate::controller::{Context, Error, Notice};
use chrono::{DateTime, Utc};
use decide::{decide, Child, ChildState};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use tracing::info;

/// The shell's cleanup finalizer; a schedule has nothing of its own to clean up (its
/// checkpoints are owned by it and go through the garbage collector, each kept by its own
/// protection while clones are made from it).
pub const CLEANUP_FINALIZER: &str = "slatedb.io/schedule-cleanup";

impl Reconcile for DatabaseCheckpointSchedule {
    const CLEANUP_FINALIZER: &'static str = CLEANUP_FINALIZER;

    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self> {
        shell::namespaced_api(client, namespace)
    }

    async fn apply(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        apply(&object, &ctx).await
    }

    async fn cleanup(_object: Arc<Self>, _ctx: Arc<Context>) -> Result<Action, Error> {
        Ok(Action::await_change())
    }
}

/// The checkpoints `object` made, newest first: those with its label and owned by its uid.
pub async fn children_of(
    object: &DatabaseCheckpointSchedule,
    checkpoints: &Api<DatabaseCheckpoint>,
) -> Result<Vec<(DatabaseCheckpoint, Child)>, kube::Error> {
    let uid = object.uid().unwrap_or_default();
    let selector = format!("{SCHEDULE_LABEL}={}", object.name_any());
    let list = checkpoints
        .list(&ListParams::default().labels(&selector))
        .await?;
    let mut children: Vec<(DatabaseCheckpoint, Child)> = list
        .items
        .into_iter()
        .filter(|c| c.owner_references().iter().any(|o| o.uid == uid))
        .filter_map(|c| {
            let child = as_child(&c)?;
            Some((c, child))
        })
        .collect();
    children.sort_by_key(|(_, child)| std::cmp::Reverse(child.tick));
    Ok(children)
}

/// A checkpoint as the decision sees it; `None` when its tick annotation is unreadable.
fn as_child(checkpoint: &DatabaseCheckpoint) -> Option<Child> {
    let tick = checkpoint
        .annotations()
        .get(SCHEDULED_TIME_ANNOTATION)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())?
        .with_timezone(&Utc);
    let status = checkpoint.status.clone().unwrap_or_default();
    let state = if is_true(&status.conditions, READY) {
        ChildState::Ready
    } else if let Some(stalled) = status
        .conditions
        .iter()
        .find(|c| c.type_ == STALLED && c.status == "True")
    {
        ChildState::Stalled {
            reason: stalled.reason.clone(),
            message: stalled.message.clone(),
        }
    } else {
        ChildState::InProgress
    };
    Some(Child {
        name: checkpoint.name_any(),
        tick,
        state,
        checkpoint_id: status.checkpoint_id.clone(),
        in_use: is_true(&status.conditions, IN_USE),
        deleting: checkpoint.metadata.deletion_timestamp.is_some(),
    })
}

async fn apply(object: &DatabaseCheckpointSchedule, ctx: &Context) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let checkpoints = Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), &namespace);
    let children: Vec<Child> = children_of(object, &checkpoints)
        .await?
        .into_iter()
        .map(|(_, child)| child)
        .collect();
    let decision = decide(object, &children, Utc::now());
    if let Some((name, tick)) = &decision.create {
        let checkpoint = scheduled_checkpoint(object, name, *tick);
        match checkpoints
            .create(&PostParams::default(), &checkpoint)
            .await
        {
            Ok(_) => {
                info!(checkpoint = %name, tick = %tick.to_rfc3339(), "made a scheduled checkpoint");
                let note = format!(
                    "created DatabaseCheckpoint {name} for {}",
                    tick.to_rfc3339()
                );
                ctx.publish(object, None, &Notice::normal("Schedule", "Created", note));
            }
            // A retry of the same tick after a lost response finds its own checkpoint.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
    }
    for name in &decision.prune {
        match checkpoints.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                info!(checkpoint = %name, "pruned a scheduled checkpoint");
                let note = format!("deleted DatabaseCheckpoint {name} (retention)");
                ctx.publish(object, None, &Notice::normal("Prune", "Deleted", note));
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    if object.status.as_ref() != Some(&decision.status) {
        let api = Api::<DatabaseCheckpointSchedule>::namespaced(ctx.client.clone(), &namespace);
        shell::write_status(ctx, &api, object, &decision.status).await?;
    }
    Ok(shell::requeue(decision.requeue_after))
}

/// The DatabaseCheckpoint for `tick`: the template, owned by the schedule, with its label and
/// tick annotation.
fn scheduled_checkpoint(
    object: &DatabaseCheckpointSchedule,
    name: &str,
    tick: DateTime<Utc>,
) -> DatabaseCheckpoint {
    let template = &object.spec.checkpoint_template;
    let mut checkpoint = DatabaseCheckpoint::new(name, template.spec.clone());
    let meta = &mut checkpoint.metadata;
    meta.namespace = object.namespace();
    if let Some(template_meta) = &template.metadata {
        meta.labels = Some(template_meta.labels.clone());
        meta.annotations = Some(template_meta.annotations.clone());
    }
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(SCHEDULE_LABEL.into(), object.name_any());
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(SCHEDULED_TIME_ANNOTATION.into(), tick.to_rfc3339());
    meta.owner_references = object.controller_owner_ref(&()).map(|o| vec![o]);
    checkpoint
}

/// Runs the schedule controller until a shutdown signal: woken by its objects, at each tick, and
/// by its checkpoints becoming Ready, Stalled, in use or gone.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let namespace = namespace.as_deref();
    let (controller, _) = shell::controller::<DatabaseCheckpointSchedule>(&ctx, namespace);
    let checkpoint_changes = watcher(
        ctx.scoped_api::<DatabaseCheckpoint>(namespace),
        watcher::Config::default().labels(SCHEDULE_LABEL),
    )
    .backoff(shell::WatchBackoff::default())
    .touched_objects()
    .predicate_filter(
        predicates::checkpoint_change_for_schedule,
        Default::default(),
    );
    let controller = controller.owns_stream(checkpoint_changes);
    shell::run(controller, ctx).await;
}
