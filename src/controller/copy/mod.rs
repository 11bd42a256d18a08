//! The `DatabaseCopy` controller: resolves the source (a checkpoint, a schedule's newest one, or a
//! database's latest state) and both stores, runs the copy in the operator's bounded pool or, from
//! a size on, as an Indexed Job ([`job`]) whose shares the operator then commits, publishes
//! progress, copies a newer checkpoint of the source incrementally, promotes, and deletes the
//! copy's data with the object when asked to. [`decide`] holds the pure decision.

pub mod decide;
pub mod job;

use crate::api::conditions::READY;
use crate::api::{
    CopyVerify, DatabaseCheckpoint, DatabaseCheckpointSchedule, DatabaseCopy, DeletionPolicy,
    StoreSpec,
};
use crate::controller::clone::source::{checkpoint_source, newest_of_schedule};
use crate::controller::conditions::is_true;
use crate::controller::shell::{self, Reconcile};
use crate::controller::stores::{leave_data_behind, open_store, store_config, PathUse};
use crate::controller::work_pool::{Observed, WorkPool, WorkProgress};
use crate::controller::{predicates, store, Context, Error, Notice, Outcome, Problem};
use crate::engine::{
    copy_checkpoint, delete_copy, promote_copy, reencode_checkpoint, source_label, sst_block_size,
    transferred_so_far, CloneSourceCheckpoint, CopyDeletion, CopyOptions, CopyPhase, CopyProgress,
    CopyVerification, Database, Fault, Owner, ReencodeOptions, ReencodePhase, ReencodeProgress,
};
use chrono::Utc;
use decide::{decide, settled, Done, Effect, SourceCheckpoint, Start, Work};
use job::{JobPlan, JobState, JobStore};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Held while the copy's data, Job and temporary checkpoint must be cleaned up with the object.
pub const CLEANUP_FINALIZER: &str = "slatedb.io/copy-cleanup";

/// Copy work in flight in the operator (whole copies, commits after Jobs, promotions).
pub type CopyPool = WorkPool<DatabaseCopy, CopyProgress, Done>;

impl WorkProgress for CopyProgress {
    const FIRST_STEP: &'static str = "Prepare";

    fn step_name(&self) -> &'static str {
        self.phase.name()
    }
}

/// A pool of `concurrency` copy slots; a copy reports each object it settles, so one silent for
/// `stuck_after` is stuck.
pub fn copy_pool(concurrency: usize, stuck_after: Duration) -> CopyPool {
    CopyPool::new(
        "copy",
        "CopyStuck",
        concurrency,
        stuck_after,
        // A copy's start is announced and written anyway; its transfer shows from the first report.
        Duration::ZERO,
        decide::PROGRESS_INTERVAL,
    )
}

impl Reconcile for DatabaseCopy {
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

/// The object as the owner of its target.
fn owner_of(object: &DatabaseCopy) -> Owner {
    Owner {
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
        uid: object.uid().unwrap_or_default(),
    }
}

/// The SlateDB name of the temporary checkpoint a copy of a database's latest state makes.
fn latest_checkpoint_name(object: &DatabaseCopy) -> String {
    format!(
        "k8s-copy:{}/{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any(),
        object.uid().unwrap_or_default()
    )
}

/// Everything a copy run needs, resolved.
struct Resolved {
    start: Start,
    source: Database,
    source_config: crate::engine::StoreConfig,
    source_path: String,
    target: Database,
    /// Both stores as a Job's pods reach them, when both are DatabaseStores.
    job_stores: Option<(JobStore, JobStore)>,
}

async fn apply(object: &DatabaseCopy, ctx: &Context) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<DatabaseCopy>::namespaced(ctx.client.clone(), &namespace);
    let uid = object.uid().unwrap_or_default();
    let jobs = &ctx.settings.copy_jobs;
    let job_namespace = ctx.settings.operator_namespace.clone();
    let mut resolved = None;
    let has_job = object.status.as_ref().is_some_and(|s| s.job.is_some());
    let work = match ctx.copies.observe(&uid) {
        Some(Observed::Running(progress)) => Work::Running(progress),
        Some(Observed::Finished(outcome)) => Work::Finished(outcome),
        None if has_job => match job::observe(&ctx.client, &job_namespace, object).await? {
            JobState::Succeeded => Work::JobSucceeded,
            JobState::Failed(problem) => Work::JobFailed(problem),
            JobState::Running => match target_database(object, ctx).await? {
                Ok(target) => {
                    let (objects, bytes) = transferred_so_far(&target).await?;
                    Work::JobRunning { objects, bytes }
                }
                Err(problem) => Work::Waiting(problem),
            },
        },
        None if settled(object) => Work::Settled,
        None if promotion_due(object) => Work::Promotable,
        None => match resolve(object, ctx).await? {
            Ok(found) => {
                let up_to_date = is_ready(object)
                    && found.start.checkpoint.as_ref().map(|c| &c.id)
                        == object
                            .status
                            .as_ref()
                            .and_then(|s| s.copied_checkpoint_id.as_ref());
                if up_to_date {
                    Work::UpToDate
                } else {
                    let start = found.start.clone();
                    resolved = Some(found);
                    Work::Startable(start)
                }
            }
            Err(problem) => Work::Waiting(problem),
        },
    };
    let retry_delay = match &work {
        Work::Waiting(Problem {
            fault: Fault::Transient,
            ..
        })
        | Work::JobFailed(Problem {
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
    let threshold = jobs.image.as_ref().map(|_| jobs.threshold_bytes);
    let mut decision = decide(object, &work, Utc::now(), retry_delay, threshold);
    if let Some(job) = decision.status.job.as_mut() {
        job.namespace = job_namespace.clone();
        job.name = job::job_name(object);
    }
    if let Some(notice) = &decision.event {
        ctx.publish(object, None, notice);
    }
    // A start is recorded before the work runs, so an attempt is on record even if the process dies.
    if object.status.as_ref() != Some(&decision.status) {
        shell::write_status(ctx, &api, object, &decision.status).await?;
    }
    let by_job = matches!(work, Work::Finished(Ok(Done::Copied { by_job: true, .. })));
    match (&decision.effect, resolved) {
        (Effect::Copy, Some(found)) => spawn_copy(object, ctx, found, false),
        (Effect::StartJob { shares }, Some(found)) => {
            let (Some(checkpoint), Some((source, target))) =
                (&found.start.checkpoint, &found.job_stores)
            else {
                return Err(Error::Blocked(
                    "a Job copies a checkpoint between DatabaseStores".into(),
                ));
            };
            let plan = JobPlan {
                object,
                namespace: &job_namespace,
                shares: *shares,
                source,
                source_path: &found.source_path,
                checkpoint,
                target,
                settings: jobs,
            };
            // The target is claimed before any pod writes, so the shares find it theirs.
            found.target.claim(&owner_of(object)).await?;
            job::launch(&ctx.client, &plan).await?;
        }
        (Effect::CommitJob, _) => match resolve(object, ctx).await? {
            Ok(found) => spawn_copy(object, ctx, found, true),
            Err(problem) => {
                return Err(Error::Blocked(format!(
                    "cannot commit the Job's copy: {}",
                    problem.message
                )))
            }
        },
        (Effect::Promote, _) => match target_database(object, ctx).await? {
            Ok(target) => {
                let owner = owner_of(object);
                ctx.copies
                    .spawn(&uid, ObjectRef::from_obj(object), move |_| async move {
                        promote_copy(&target, Some(&owner))
                            .await
                            .map(Done::Promoted)
                    });
            }
            Err(problem) => return Err(Error::Blocked(problem.message)),
        },
        (Effect::RemoveJob, _) => job::remove(&ctx.client, &job_namespace, object).await?,
        _ => {}
    }
    if by_job {
        job::remove(&ctx.client, &job_namespace, object).await?;
    }
    Ok(shell::requeue(decision.requeue_after))
}

fn is_ready(object: &DatabaseCopy) -> bool {
    object
        .status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, READY))
}

/// Ready, promotion asked for and not done.
fn promotion_due(object: &DatabaseCopy) -> bool {
    object.spec.promotes()
        && is_ready(object)
        && object.status.as_ref().is_some_and(|s| {
            !is_true(&s.conditions, decide::PROMOTED) && s.copied_checkpoint_id.is_some()
        })
}

/// Runs the copy in the pool: the whole copy, or (`after_job`) the commit of a Job's shares,
/// which transfers only what no share finished.
fn spawn_copy(object: &DatabaseCopy, ctx: &Context, found: Resolved, after_job: bool) {
    let checkpoint = match &found.start.checkpoint {
        Some(c) => match c.id.parse() {
            Ok(id) => CloneSourceCheckpoint::Id(id),
            Err(_) => CloneSourceCheckpoint::Latest {
                name: latest_checkpoint_name(object),
            },
        },
        None => CloneSourceCheckpoint::Latest {
            name: latest_checkpoint_name(object),
        },
    };
    let options = CopyOptions {
        parallelism: object.spec.parallelism.unwrap_or(16).clamp(1, 256) as usize,
        verify: match object.spec.verify {
            CopyVerify::Metadata => CopyVerification::Metadata,
            CopyVerify::Content => CopyVerification::Content,
            CopyVerify::Full => CopyVerification::Full,
        },
        source_label: Some(source_label(&found.source_config.url, &found.source_path)),
        owner: Some(owner_of(object)),
        ..CopyOptions::default()
    };
    info!(target_path = %object.spec.target.path.0, after_job, "starting copy work");
    let uid = object.uid().unwrap_or_default();
    if let Some(reencode) = &object.spec.reencode {
        let (source, target) = (found.source, found.target);
        let options = ReencodeOptions {
            compression: codec_of(reencode.compression),
            source_label: options.source_label,
            owner: options.owner,
            ..ReencodeOptions::default()
        };
        let block_size = reencode.block_size;
        ctx.copies.spawn(
            &uid,
            ObjectRef::from_obj(object),
            move |report| async move {
                let options = match block_size {
                    Some(bytes) => ReencodeOptions {
                        block_size: sst_block_size(bytes.max(0) as usize)?,
                        ..options
                    },
                    None => options,
                };
                // Rows stand in for objects in the copy's progress.
                let progress = move |p: ReencodeProgress| {
                    report(CopyProgress {
                        phase: match p.phase {
                            ReencodePhase::Prepare => CopyPhase::Prepare,
                            ReencodePhase::Rewrite | ReencodePhase::Verify => CopyPhase::Transfer,
                            ReencodePhase::Commit => CopyPhase::Commit,
                            ReencodePhase::Done => CopyPhase::Done,
                        },
                        objects_done: p.rows_done,
                        objects_total: p.rows_total.unwrap_or(0),
                        bytes_done: p.bytes_done,
                        bytes_total: p.bytes_total,
                    })
                };
                reencode_checkpoint(&source, &checkpoint, &target, &options, progress)
                    .await
                    .map(Done::Reencoded)
            },
        );
        return;
    }
    ctx.copies.spawn(
        &uid,
        ObjectRef::from_obj(object),
        move |report| async move {
            let source = found.source;
            let target = found.target;
            copy_checkpoint(&source, &checkpoint, &target, &options, report)
                .await
                .map(|report| Done::Copied {
                    report,
                    by_job: after_job,
                })
        },
    );
}

/// SlateDB's codec of a re-encoded copy.
fn codec_of(compression: crate::api::Compression) -> Option<slatedb::config::CompressionCodec> {
    use crate::api::Compression;
    use slatedb::config::CompressionCodec;
    match compression {
        Compression::None => None,
        Compression::Snappy => Some(CompressionCodec::Snappy),
        Compression::Lz4 => Some(CompressionCodec::Lz4),
        Compression::Zlib => Some(CompressionCodec::Zlib),
        Compression::Zstd => Some(CompressionCodec::Zstd),
    }
}

/// Resolves the source and both stores, or says why it cannot be yet.
async fn resolve(object: &DatabaseCopy, ctx: &Context) -> Outcome<Resolved> {
    let namespace = object.namespace().unwrap_or_default();
    let source = &object.spec.source;
    let (store_spec, source_path, source_checkpoint, checkpoint) = match &source.database {
        Some(database) => (database.store.clone(), database.path.0.clone(), None, None),
        None => {
            let name = match (&source.checkpoint_ref, &source.schedule_ref) {
                (Some(reference), _) => reference.name.clone(),
                (None, Some(schedule)) => {
                    match newest_of_schedule(&namespace, &schedule.name, ctx).await? {
                        Ok(name) => name,
                        Err(problem) => return Ok(Err(problem)),
                    }
                }
                (None, None) => {
                    return Ok(Err(Problem {
                        fault: Fault::Permanent,
                        reason: "InvalidSpec".into(),
                        message: "spec.source names no source".into(),
                    }))
                }
            };
            let (store, path, id) = match checkpoint_source(&namespace, &name, ctx).await? {
                Ok(found) => found,
                Err(problem) => return Ok(Err(problem)),
            };
            let status = Api::<DatabaseCheckpoint>::namespaced(ctx.client.clone(), &namespace)
                .get_opt(&name)
                .await?
                .and_then(|c| c.status);
            let checkpoint = SourceCheckpoint {
                id: id.to_string(),
                size_bytes: status
                    .as_ref()
                    .and_then(|s| s.size_bytes)
                    .map(|b| b.max(0) as u64),
                objects: status
                    .as_ref()
                    .and_then(|s| s.object_count)
                    .map(|n| n.max(0) as u64),
            };
            (store, path, Some(name), Some(checkpoint))
        }
    };
    let source_config =
        match store_config(ctx, &namespace, &store_spec, &[PathUse::Read(&source_path)]).await? {
            Ok(config) => config,
            Err(problem) => return Ok(Err(problem)),
        };
    let target_path = &object.spec.target.path.0;
    let target_spec = &object.spec.target.store;
    let target_config =
        match store_config(ctx, &namespace, target_spec, &[PathUse::Write(target_path)]).await? {
            Ok(config) => config,
            Err(problem) => return Ok(Err(problem)),
        };
    let open = |config: &crate::engine::StoreConfig, path: &str| {
        crate::controller::stores::open_shared(config.clone())
            .map(|store| Database::new(store, path, ctx.settings.admin_timeout))
            .map_err(|e| Problem::from(&e))
    };
    let (source_db, target_db) = match (
        open(&source_config, &source_path),
        open(&target_config, target_path),
    ) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(problem), _) | (_, Err(problem)) => return Ok(Err(problem)),
    };
    let job_stores = match (
        job_store(ctx, store_spec.store_ref.as_deref()).await?,
        job_store(ctx, target_spec.store_ref.as_deref()).await?,
    ) {
        (Some(source), Some(target)) => Some((source, target)),
        _ => None,
    };
    Ok(Ok(Resolved {
        start: Start {
            source_store: store_spec,
            source_checkpoint,
            checkpoint,
            // A re-encode is one writer: it cannot be split into shares.
            jobs_possible: job_stores.is_some() && object.spec.reencode.is_none(),
        },
        source: source_db,
        source_config,
        source_path,
        target: target_db,
        job_stores,
    }))
}

/// The DatabaseStore `name` as a Job's pods reach it (`None` for an inline store).
async fn job_store(ctx: &Context, name: Option<&str>) -> Result<Option<JobStore>, Error> {
    let Some(name) = name else {
        return Ok(None);
    };
    let stores = Api::<crate::api::DatabaseStore>::all(ctx.client.clone());
    Ok(stores.get_opt(name).await?.as_ref().map(JobStore::of))
}

/// The copy's target database.
async fn target_database(object: &DatabaseCopy, ctx: &Context) -> Outcome<Database> {
    let namespace = object.namespace().unwrap_or_default();
    let path = &object.spec.target.path.0;
    let store = open_store(
        ctx,
        &namespace,
        &object.spec.target.store,
        &[PathUse::Write(path)],
    )
    .await?;
    Ok(store.map(|store| Database::new(store, path, ctx.settings.admin_timeout)))
}

async fn cleanup(object: &DatabaseCopy, ctx: &Context) -> Result<Action, Error> {
    ctx.copies.cancel(&object.uid().unwrap_or_default());
    job::remove(&ctx.client, &ctx.settings.operator_namespace, object).await?;
    drop_temporary_checkpoint(object, ctx).await?;
    if object.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let path = &object.spec.target.path.0;
    let target = match target_database(object, ctx).await? {
        Ok(target) => target,
        Err(problem) if leave_data_behind(&problem, &object.metadata, Utc::now()) => {
            let note = format!(
                "{}, so the copy's data at {path} is left in the store; delete it by hand",
                problem.message
            );
            ctx.publish(
                object,
                None,
                &Notice::warning("Delete", "DataLeftBehind", note),
            );
            return Ok(Action::await_change());
        }
        Err(problem) => {
            return Err(Error::Blocked(format!(
                "cannot delete the copy's data: {}; fix it or set deletionPolicy: Retain",
                problem.message
            )))
        }
    };
    let notice = match delete_copy(&target, &owner_of(object), Utc::now()).await? {
        CopyDeletion::Deleted(objects) => Notice::normal(
            "Delete",
            "Deleted",
            format!("deleted the copy's {objects} objects at {path}"),
        ),
        CopyDeletion::Unclaimed => Notice::normal(
            "Delete",
            "DataNotOwned",
            format!("the copy never wrote to {path}, so deleting this object leaves what is there"),
        ),
        CopyDeletion::NotOwned(owner) => Notice::normal(
            "Delete",
            "DataNotOwned",
            format!("the data at {path} belongs to {owner}, so deleting this object leaves it"),
        ),
        CopyDeletion::Held(holders) => {
            let ids: Vec<String> = holders
                .iter()
                .map(|c| match &c.name {
                    Some(name) => format!("{name} ({})", c.id),
                    None => c.id.to_string(),
                })
                .collect();
            let message = format!(
                "the copy's data stays while checkpoints made since depend on it: {}",
                ids.join(", ")
            );
            ctx.publish(
                object,
                None,
                &Notice::warning("Delete", "DeletionBlocked", message.clone()),
            );
            return Err(Error::Blocked(message));
        }
    };
    ctx.publish(object, None, &notice);
    Ok(Action::await_change())
}

/// A copy of a database's latest state that did not finish leaves its temporary checkpoint on
/// the source; it pins the source's objects until it is deleted.
async fn drop_temporary_checkpoint(object: &DatabaseCopy, ctx: &Context) -> Result<(), Error> {
    let Some(database) = &object.spec.source.database else {
        return Ok(());
    };
    let namespace = object.namespace().unwrap_or_default();
    let path = &database.path.0;
    let Ok(store) = open_store(ctx, &namespace, &database.store, &[PathUse::Read(path)]).await?
    else {
        return Ok(());
    };
    let source = Database::new(store, path, ctx.settings.admin_timeout);
    if let Ok(leftovers) = source
        .list_checkpoints(Some(&latest_checkpoint_name(object)))
        .await
    {
        for checkpoint in leftovers {
            source.delete_checkpoint(checkpoint.id).await?;
        }
    }
    Ok(())
}

/// A checkpoint's change wakes the copies of it and of its schedule.
fn copies_of_checkpoint(
    copies: Store<DatabaseCopy>,
) -> impl Fn(Arc<DatabaseCheckpoint>) -> Vec<ObjectRef<DatabaseCopy>> {
    move |checkpoint| {
        let namespace = checkpoint.namespace();
        let name = checkpoint.name_any();
        let schedule = checkpoint.labels().get(crate::api::SCHEDULE_LABEL).cloned();
        copies
            .state()
            .into_iter()
            .filter(|c| {
                let source = &c.spec.source;
                c.namespace() == namespace
                    && (source
                        .checkpoint_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
                        || (schedule.is_some()
                            && source.schedule_ref.as_ref().map(|r| &r.name) == schedule.as_ref()))
            })
            .map(|c| ObjectRef::from_obj(&*c))
            .collect()
    }
}

/// A schedule's change wakes the copies of it.
fn copies_of_schedule(
    copies: Store<DatabaseCopy>,
) -> impl Fn(DatabaseCheckpointSchedule) -> Vec<ObjectRef<DatabaseCopy>> {
    move |schedule| {
        let namespace = schedule.namespace();
        let name = schedule.name_any();
        copies
            .state()
            .into_iter()
            .filter(|c| {
                c.namespace() == namespace
                    && c.spec
                        .source
                        .schedule_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
            })
            .map(|c| ObjectRef::from_obj(&*c))
            .collect()
    }
}

/// A copy Job's change wakes its copy (the labels name it: it lives in another namespace), when
/// the copy is in `scope` (all when `None`).
fn copy_of_job(scope: Option<String>) -> impl Fn(Job) -> Option<ObjectRef<DatabaseCopy>> {
    move |job| {
        let labels = job.labels();
        let name = labels.get(job::COPY_NAME_LABEL)?;
        let namespace = labels.get(job::COPY_NAMESPACE_LABEL)?;
        if scope.as_ref().is_some_and(|s| s != namespace) {
            return None;
        }
        Some(ObjectRef::new(name).within(namespace))
    }
}

/// Whether a store spec names DatabaseStore `name`.
fn names(spec: Option<&StoreSpec>, name: &str) -> bool {
    store::names_store(spec, name)
}

/// Runs the copy controller until a shutdown signal: woken by its objects, the DatabaseStores
/// they name, their checkpoints and schedules, their Jobs and their finished pool work.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let namespace = namespace.as_deref();
    let (controller, copies) = shell::controller::<DatabaseCopy>(&ctx, namespace);
    let controller = controller.reconcile_on(ctx.copies.finished_jobs(namespace));
    let controller = store::watch_stores(controller, &ctx, copies.clone(), |copy, name| {
        let source = copy.spec.source.database.as_ref().map(|d| &d.store);
        names(source, name) || names(Some(&copy.spec.target.store), name)
    });
    let checkpoint_changes = ctx
        .checkpoint_watch(namespace)
        .changes(predicates::checkpoint_change_for_clones);
    let schedule_changes = watcher(
        ctx.scoped_api::<DatabaseCheckpointSchedule>(namespace),
        watcher::Config::default(),
    )
    .backoff(shell::WatchBackoff::default())
    .touched_objects()
    .predicate_filter(predicates::lifecycle, Default::default());
    let controller = controller
        .watches_shared_stream(checkpoint_changes, copies_of_checkpoint(copies.clone()))
        .watches_stream(schedule_changes, copies_of_schedule(copies));
    let controller = if ctx.settings.copy_jobs.image.is_some() {
        let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ctx.settings.operator_namespace);
        let config = watcher::Config::default().labels(job::COMPONENT_SELECTOR);
        controller.watches(jobs, config, copy_of_job(namespace.map(String::from)))
    } else {
        controller
    };
    shell::run(controller, ctx).await;
}
