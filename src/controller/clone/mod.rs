//! The `DatabaseClone` controller: resolves the source ([`source`]), runs the clone off the
//! reconcile loop in a bounded pool ([`pool`]), publishes progress, gates `Ready` on SlateDB's
//! `initialized` flag and verification, expires, and deletes the clone's data with the object.
//! [`decide`] holds the pure decision; this file the effects and the watches.

mod connection;
pub mod decide;
mod pool;
pub(crate) mod source;

pub use decide::{decide, settled, Decision, Effect, SettledCheck, Work, PROGRESS_INTERVAL};
pub use pool::{clone_pool, ClonePool};

use crate::api::conditions::READY;
use crate::api::{
    DatabaseCheckpoint, DatabaseCheckpointSchedule, DatabaseClone, DeletionPolicy, VerifyMode,
    START_RECORD_ANNOTATION,
};
use crate::controller::shell::{self, FinalizerPatch, Reconcile};
use crate::controller::stores::{leave_data_behind, open_store, PathUse};
use crate::controller::work_pool::Observed;
use crate::controller::{predicates, store};
use crate::controller::{Context, Error, Notice, Problem};
use crate::engine::{Database, Fault};
use chrono::Utc;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use source::{latest_checkpoint_name, owner_of, resolve, Resolved};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Held while the clone's data must be deleted with the object.
pub const CLEANUP_FINALIZER: &str = "slatedb.io/clone-cleanup";

impl Reconcile for DatabaseClone {
    const CLEANUP_FINALIZER: &'static str = CLEANUP_FINALIZER;
    // The first start's record rides on the finalizer patch.
    const SEND_FINALIZER_AT_ONCE: bool = false;

    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self> {
        shell::namespaced_api(client, namespace)
    }

    async fn apply(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        apply(&object, &ctx, FinalizerPatch::none()).await
    }

    // The start record goes with the finalizer (or a status beside it): both are stored before
    // the work starts.
    async fn apply_while_finalizing(
        object: Arc<Self>,
        ctx: Arc<Context>,
        finalizer: FinalizerPatch<Self>,
    ) -> Result<Action, Error> {
        apply(&object, &ctx, finalizer).await
    }

    async fn cleanup(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        cleanup(&with_start_record(&object), &ctx).await
    }
}

/// How long the reconcile that starts a clone's first work waits for its outcome before it writes
/// the start status: most clones are done sooner, and their status is then written once, Ready.
const START_STATUS_AFTER: Duration = Duration::from_millis(100);

/// The object with its start record as its status while it has none written
/// ([`DatabaseClone::recorded_status`]).
fn with_start_record(object: &DatabaseClone) -> std::borrow::Cow<'_, DatabaseClone> {
    match (&object.status, object.recorded_status()) {
        (None, Some(record)) => std::borrow::Cow::Owned(DatabaseClone {
            status: Some(record.into_owned()),
            ..object.clone()
        }),
        _ => std::borrow::Cow::Borrowed(object),
    }
}

/// The clone's source checkpoint, as an event's related object.
fn source_ref(object: &DatabaseClone) -> Option<ObjectReference> {
    object.source_checkpoint().map(|name| ObjectReference {
        api_version: Some(DatabaseCheckpoint::api_version(&()).into()),
        kind: Some(DatabaseCheckpoint::kind(&()).into()),
        name: Some(name.to_string()),
        namespace: object.namespace(),
        ..Default::default()
    })
}

/// Every effect waits for `finalizer`; the status write goes beside it, or for the first start,
/// the start record goes with it.
async fn apply(
    stored: &DatabaseClone,
    ctx: &Context,
    mut finalizer: FinalizerPatch<DatabaseClone>,
) -> Result<Action, Error> {
    let object = with_start_record(stored);
    let object = object.as_ref();
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseClone>::namespaced(ctx.client.clone(), &namespace);
    let uid = object.uid().unwrap_or_default();
    if decide::reset_requested(object) {
        finalizer.stored(ctx).await?;
        return reset(object, ctx, &api).await;
    }
    let mut start = None;
    let work = match ctx.clones.observe(&uid) {
        Some(Observed::Running(progress)) => Work::Running(progress),
        Some(Observed::Finished(outcome)) => Work::Finished(outcome),
        None if settled(object) => {
            finalizer.stored(ctx).await?;
            Work::Settled(check_settled(object, ctx).await?)
        }
        None => match resolve(object, ctx).await? {
            Ok(Resolved {
                config,
                start: what,
            }) => {
                start = Some(config);
                Work::Startable(what)
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
        let phases: Vec<String> = report
            .phases
            .iter()
            .map(|(phase, took)| format!("{phase}={:.1}", took.as_secs_f64() * 1000.0))
            .collect();
        info!(
            duration_ms = report.duration.as_millis() as u64,
            phases_ms = %phases.join(","),
            attempts = report.attempts,
            "clone work finished"
        );
    }
    let decision = decide(object, &work, Utc::now(), retry_delay);
    let publish_event = || {
        if let Some(notice) = &decision.event {
            ctx.publish(object, source_ref(object), notice);
        }
    };
    // An event of an effect goes before it; any other after the status it tells of, so that the
    // status write (the Ready one above all) does not share the API server with it.
    if matches!(decision.effect, Effect::DeleteObject | Effect::ExpireData) {
        publish_event();
    }
    // Expiry acts before the status says so; a start is recorded before the work runs, so an
    // attempt is on record even if the process dies.
    if matches!(decision.effect, Effect::DeleteObject | Effect::ExpireData) {
        finalizer.stored(ctx).await?;
    }
    match &decision.effect {
        Effect::DeleteObject => {
            info!("expired; deleting the object");
            api.delete(&object.name_any(), &DeleteParams::default())
                .await?;
            return Ok(Action::await_change());
        }
        Effect::ExpireData => {
            // Not deleting the object, so the data is never left behind here; decide checked the
            // holders, and one that appeared since keeps the data.
            if let DataDeletion::Held(holders) = delete_data(object, ctx).await? {
                return Err(Error::Blocked(format!(
                    "the clone's data is held by {}",
                    holders.join(", ")
                )));
            }
            connection::remove(&ctx.client, object).await?;
            ctx.connection_seen(&uid, false);
        }
        Effect::StartWork | Effect::None => {}
    }
    // The first start goes on record with the finalizer, in its patch.
    let recorded_with_finalizer = match (&decision.effect, &stored.status) {
        (Effect::StartWork, None) => {
            let record = serde_json::to_string(&decision.status.start_record())
                .map_err(|e| Error::Blocked(format!("recording the start: {e}")))?;
            finalizer
                .stored_with_annotation(ctx, START_RECORD_ANNOTATION, &record)
                .await?
        }
        _ => None,
    };
    if recorded_with_finalizer.is_none() {
        if object.status.as_ref() != Some(&decision.status) {
            finalizer
                .write_status_beside(ctx, &api, object, &decision.status)
                .await?;
        } else {
            finalizer.stored(ctx).await?;
        }
    }
    if !matches!(decision.effect, Effect::DeleteObject | Effect::ExpireData) {
        publish_event();
    }
    // The connection details appear only once the status says Ready, so an application waiting
    // for them never opens a clone that is not.
    let ready_now = decision.status.connection_config_map.is_some()
        && crate::controller::conditions::is_true(&decision.status.conditions, READY);
    if ready_now && !ctx.connection_known(&uid) {
        let published = DatabaseClone {
            status: Some(decision.status.clone()),
            ..object.clone()
        };
        let exists = !matches!(work, Work::Finished(_))
            && connection::exists(&ctx.client, &published).await?;
        if !exists {
            connection::publish(&ctx.client, &published).await?;
        }
        ctx.connection_seen(&uid, true);
    }
    if let (Effect::StartWork, Some(config)) = (&decision.effect, start) {
        info!(target_path = %config.target_path, "starting clone work");
        ctx.clones
            .spawn(&uid, ObjectRef::from_obj(object), move |report| {
                crate::engine::initialize_clone(config, report)
            });
        if let Some(patched) = recorded_with_finalizer {
            let started = DatabaseClone {
                status: Some(decision.status.clone()),
                ..patched
            };
            if ctx.clones.finished_within(&uid, START_STATUS_AFTER).await {
                // The outcome's status is the clone's first status write.
                return Box::pin(apply(&started, ctx, FinalizerPatch::none())).await;
            }
            shell::write_status(ctx, &api, &started, &decision.status).await?;
        }
    }
    Ok(shell::requeue(decision.requeue_after))
}

/// Replaces the clone's data with a fresh clone of its source (its `spec.resetToken` changed):
/// the work in flight stops, the connection details go, then the data, unless others depend on
/// it; the status starts over, so the next reconcile resolves the source again (for
/// `scheduleRef`, its newest checkpoint now).
async fn reset(
    object: &DatabaseClone,
    ctx: &Context,
    api: &Api<DatabaseClone>,
) -> Result<Action, Error> {
    let uid = object.uid().unwrap_or_default();
    ctx.clones.cancel(&uid);
    connection::remove(&ctx.client, object).await?;
    ctx.connection_seen(&uid, false);
    let now = Utc::now();
    match delete_data(object, ctx).await? {
        DataDeletion::Deleted | DataDeletion::NotOwned(_) => {
            info!("reset: the clone's data was deleted; cloning its source again");
            let status = decide::reset_status(object, now);
            shell::write_status(ctx, api, object, &status).await?;
            let note = format!(
                "spec.resetToken changed to {:?}: the clone's data was deleted and is made again",
                object.spec.reset_token.as_deref().unwrap_or_default()
            );
            ctx.publish(
                object,
                source_ref(object),
                &Notice::normal("Reset", "Reset", note),
            );
            Ok(Action::requeue(Duration::ZERO))
        }
        DataDeletion::Held(holders) => {
            let status = decide::reset_blocked(object, &holders, now);
            if object.status.as_ref() != Some(&status) {
                shell::write_status(ctx, api, object, &status).await?;
            }
            Ok(Action::requeue(decide::HELD_RECHECK))
        }
        DataDeletion::LeftBehind => Err(Error::Blocked(
            "the clone's data cannot be deleted for its reset: its store's Secret is missing"
                .into(),
        )),
    }
}

async fn cleanup(object: &DatabaseClone, ctx: &Context) -> Result<Action, Error> {
    let uid = object.uid().unwrap_or_default();
    ctx.clones.cancel(&uid);
    connection::remove(&ctx.client, object).await?;
    // Forgotten with the object, or the set grows with every clone ever made.
    ctx.connection_seen(&uid, false);
    if object.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let notice = match delete_data(object, ctx).await {
        Ok(DataDeletion::Deleted) => {
            Notice::normal("Delete", "Deleted", "deleted the clone's data")
        }
        Ok(DataDeletion::LeftBehind) => return Ok(Action::await_change()),
        Ok(DataDeletion::NotOwned(owner)) => Notice::normal(
            "Delete",
            "DataNotOwned",
            format!(
                "the data at {} belongs to {owner}, so deleting this object leaves it",
                object.spec.target.path.0
            ),
        ),
        Ok(DataDeletion::Held(holders)) => {
            let (status, event) = decide::deletion_blocked(object, &holders, Utc::now());
            let api = Api::<DatabaseClone>::namespaced(
                ctx.client.clone(),
                &object.namespace().unwrap_or_default(),
            );
            shell::write_status(ctx, &api, object, &status).await?;
            if let Some(notice) = &event {
                ctx.publish(object, source_ref(object), notice);
            }
            return Err(Error::Blocked(format!(
                "the clone's data is held by {}",
                holders.join(", ")
            )));
        }
        Err(error) => {
            let notice = Notice::warning("Delete", "DeleteFailed", error.to_string());
            ctx.publish(object, source_ref(object), &notice);
            return Err(error);
        }
    };
    ctx.publish(object, source_ref(object), &notice);
    Ok(Action::await_change())
}

/// What became of a clone's data when it was to be deleted.
enum DataDeletion {
    Deleted,
    /// Left in the store because its Secret stayed missing (see [`leave_data_behind`]).
    LeftBehind,
    /// Someone else owns the target: it was not touched.
    NotOwned(String),
    /// Kept: these depend on it.
    Held(Vec<String>),
}

/// The checks of a settled clone: when it is Ready, its data's health (when checks are on) and,
/// when its expiry is due, what depends on its data.
async fn check_settled(object: &DatabaseClone, ctx: &Context) -> Result<SettledCheck, Error> {
    let mut check = SettledCheck::default();
    let ready = object
        .status
        .as_ref()
        .is_some_and(|s| crate::controller::conditions::is_true(&s.conditions, READY));
    let expiry_due = decide::expiry_due(object, Utc::now());
    if !ready || (ctx.health.is_none() && !expiry_due) {
        return Ok(check);
    }
    let Some(target) = target_database(object, ctx).await? else {
        return Ok(check);
    };
    if let Some(rounds) = &ctx.health {
        match target.check_health(rounds).await {
            Ok(()) => ctx.metrics.health_checked(),
            Err(error) if error.fault() == Fault::Permanent => {
                ctx.metrics.health_checked();
                check.broken = Some(Problem::from(&error));
            }
            // A store that does not answer now says nothing about the data; look next round.
            Err(error) => tracing::warn!(%error, "health check of a Ready clone failed"),
        }
        let spread = object.uid().map_or(0, |uid| uid.len() as u64 * 37 % 1000);
        check.next_check = Some(rounds.until_next_round() + Duration::from_millis(spread));
    }
    if expiry_due {
        check.holders = holders_of(object, ctx, &target).await?;
    }
    Ok(check)
}

/// The clone's database, from the store its status records; `None` when work never started or the
/// store cannot be opened now.
async fn target_database(object: &DatabaseClone, ctx: &Context) -> Result<Option<Database>, Error> {
    let Some(store_spec) = object.status.as_ref().and_then(|s| s.store.clone()) else {
        return Ok(None);
    };
    let namespace = object.namespace().unwrap_or_default();
    let path = &object.spec.target.path.0;
    Ok(
        open_store(ctx, &namespace, &store_spec, &[PathUse::Write(path)])
            .await?
            .ok()
            .map(|store| Database::new(store, path, ctx.settings.admin_timeout)),
    )
}

/// What holds checkpoints of the clone's data, in words: the operator's own objects by name,
/// others counted with their checkpoint ids.
async fn holders_of(
    object: &DatabaseClone,
    ctx: &Context,
    target: &Database,
) -> Result<Vec<String>, Error> {
    let own = latest_checkpoint_name(object);
    let held = target
        .holders(Utc::now(), |c| c.name.as_deref() == Some(own.as_str()))
        .await?;
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let namespace = object.namespace().unwrap_or_default();
    let clones = Api::<DatabaseClone>::namespaced(ctx.client.clone(), &namespace)
        .list(&Default::default())
        .await?;
    let path = &object.spec.target.path.0;
    let mut named = Vec::new();
    let mut others = Vec::new();
    for checkpoint in held {
        let id = checkpoint.id.to_string();
        let clone = clones.items.iter().find(|c| {
            c.recorded_status().is_some_and(|s| {
                s.lineage
                    .iter()
                    .any(|l| &l.path == path && l.final_checkpoint_id.as_deref() == Some(&id))
            })
        });
        let name = checkpoint.name.as_deref().unwrap_or_default();
        match (
            clone,
            name.strip_prefix("k8s:"),
            name.strip_prefix("k8s-clone:"),
        ) {
            (Some(clone), _, _) => named.push(format!(
                "DatabaseClone {}/{}",
                clone.namespace().unwrap_or_default(),
                clone.name_any()
            )),
            (None, Some(object), _) => {
                named.push(format!("DatabaseCheckpoint {}", object_name(object)))
            }
            (None, _, Some(object)) => named.push(format!("DatabaseClone {}", object_name(object))),
            _ => others.push(id),
        }
    }
    if !others.is_empty() {
        named.push(format!(
            "{} other checkpoint(s) (ids {})",
            others.len(),
            others.join(", ")
        ));
    }
    Ok(named)
}

/// `namespace/name` of a SlateDB checkpoint name's `namespace/name/uid` part.
fn object_name(qualified: &str) -> &str {
    qualified
        .rsplit_once('/')
        .map_or(qualified, |(object, _)| object)
}

/// Deletes the clone's data, given the store recorded in its status: only a target this object
/// owns, and only while nothing else depends on it.
async fn delete_data(object: &DatabaseClone, ctx: &Context) -> Result<DataDeletion, Error> {
    let Some(store_spec) = object.status.as_ref().and_then(|s| s.store.clone()) else {
        return Ok(DataDeletion::Deleted); // work never started, so there is nothing to delete
    };
    let namespace = object.namespace().unwrap_or_default();
    let path = &object.spec.target.path.0;
    let store = match open_store(ctx, &namespace, &store_spec, &[PathUse::Write(path)]).await? {
        Ok(store) => store,
        Err(problem) if leave_data_behind(&problem, &object.metadata, Utc::now()) => {
            let note = format!(
                "{}, so the clone's data at {} under {} is left in the store; delete it by hand",
                problem.message, object.spec.target.path.0, store_spec
            );
            let notice = Notice::warning("Delete", "DataLeftBehind", note);
            ctx.publish(object, source_ref(object), &notice);
            return Ok(DataDeletion::LeftBehind);
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
    let owner = owner_of(object);
    match target.owner().await? {
        Some(existing) if existing.uid == owner.uid => {}
        Some(existing) => return Ok(DataDeletion::NotOwned(existing.to_string())),
        // No record: the work never claimed the target (it stalled before), so nothing there is ours.
        None => return Ok(DataDeletion::NotOwned("no one this operator knows".into())),
    }
    let holders = holders_of(object, ctx, &target).await?;
    if !holders.is_empty() {
        return Ok(DataDeletion::Held(holders));
    }
    target.delete_database().await?;
    target.release(&owner).await?;
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
    Ok(DataDeletion::Deleted)
}

/// A checkpoint's change wakes the clones made from it, and the clone whose database it is a
/// checkpoint of (its deletion may free that clone's held data).
fn clones_related_to_checkpoint(
    clones: Store<DatabaseClone>,
) -> impl Fn(Arc<DatabaseCheckpoint>) -> Vec<ObjectRef<DatabaseClone>> {
    move |checkpoint| {
        let namespace = checkpoint.namespace();
        let name = checkpoint.name_any();
        let path = &checkpoint.spec.database.path.0;
        // A clone of a schedule wakes for each of the schedule's checkpoints: one that turns
        // Ready may be the newest it waits for.
        let schedule = checkpoint.labels().get(crate::api::SCHEDULE_LABEL).cloned();
        let related = |c: &DatabaseClone| {
            let of_schedule = c.spec.source.schedule_ref.as_ref().map(|r| &r.name);
            c.source_checkpoint().as_deref() == Some(name.as_str())
                || &c.spec.target.path.0 == path
                || (of_schedule.is_some() && of_schedule == schedule.as_ref())
        };
        clones
            .state_filter(|c| c.metadata.namespace == namespace && related(c))
            .iter()
            .map(|c| ObjectRef::from_obj(&**c))
            .collect()
    }
}

/// A schedule's change wakes the clones of it.
fn clones_of_schedule(
    clones: Store<DatabaseClone>,
) -> impl Fn(DatabaseCheckpointSchedule) -> Vec<ObjectRef<DatabaseClone>> {
    move |schedule| {
        let namespace = schedule.namespace();
        let name = schedule.name_any();
        clones
            .state_filter(|c| {
                c.metadata.namespace == namespace
                    && c.spec
                        .source
                        .schedule_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
            })
            .iter()
            .map(|c| ObjectRef::from_obj(&**c))
            .collect()
    }
}

/// A clone's change (its deletion above all) wakes the clones whose data it references: they may
/// be waiting for it to go.
fn parents_of_clone(
    clones: Store<DatabaseClone>,
) -> impl Fn(Arc<DatabaseClone>) -> Vec<ObjectRef<DatabaseClone>> {
    move |child| {
        let status = child.recorded_status();
        let lineage = status.as_ref().map_or(&[][..], |s| s.lineage.as_slice());
        if lineage.is_empty() {
            return Vec::new();
        }
        // Every clone passes once when the watch starts, and each looks at every other: compared in
        // place, without copies, or 10 000 clones are 10^8 copied strings.
        clones
            .state_filter(|c| {
                c.metadata.namespace == child.metadata.namespace
                    && lineage
                        .iter()
                        .any(|parent| parent.path == c.spec.target.path.0)
            })
            .iter()
            .map(|c| ObjectRef::from_obj(&**c))
            .collect()
    }
}

/// Runs the clone controller until a shutdown signal: woken by its objects, by the DatabaseStores
/// they name, by the checkpoints they clone and by the clones that reference them. It reads only
/// the Secrets its stores name, and watches none: a Secret created after its object is picked up by the retry of the
/// `SecretNotFound` wait.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let namespace = namespace.as_deref();
    // One watch of the clones for the controller, its parents trigger and the checkpoint
    // controller.
    let watch = ctx.clone_watch(namespace);
    let (controller, clones) = shell::controller_on(&ctx, &watch);
    let controller = controller.reconcile_on(ctx.clones.finished_jobs(namespace));
    let controller = store::watch_stores(controller, &ctx, clones.clone(), |clone, name| {
        let source = clone.spec.source.database.as_ref().map(|d| &d.store);
        let status = clone.recorded_status();
        let recorded = status.as_ref().and_then(|s| s.store.as_ref());
        store::names_store(source, name) || store::names_store(recorded, name)
    });
    // Only the changes a clone acts on pass: progress, dependents counts and other status updates
    // of the checkpoints and clones around it would re-queue every one of its clones each time.
    let checkpoint_changes = ctx
        .checkpoint_watch(namespace)
        .changes(predicates::checkpoint_change_for_clones);
    let clone_changes = watch.changes(predicates::clone_change_for_parents);
    // A schedule's creation (or going) wakes the clones naming it; its checkpoints turning Ready
    // wake them through the checkpoint watch.
    let schedule_changes = watcher(
        ctx.scoped_api::<DatabaseCheckpointSchedule>(namespace),
        watcher::Config::default(),
    )
    .backoff(shell::WatchBackoff::default())
    .touched_objects()
    .predicate_filter(predicates::lifecycle, Default::default());
    let controller = controller
        .watches_shared_stream(
            checkpoint_changes,
            clones_related_to_checkpoint(clones.clone()),
        )
        .watches_stream(schedule_changes, clones_of_schedule(clones.clone()))
        .watches_shared_stream(clone_changes, parents_of_clone(clones));
    shell::run(controller, ctx).await;
}
