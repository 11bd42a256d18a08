//! Copy-on-write clones as a library call: [`initialize_clone`] resolves the source checkpoint,
//! runs SlateDB's clone builder (parent SSTs referenced, only the WAL tail copied), resumes
//! unfinished work, verifies the result, and removes its partial work when it gives up.

use super::backoff::Backoff;
use super::checkpoint::{CheckpointInfo, CheckpointSelector};
use super::crash_point::crash_point;
use super::error::{EngineError, Fault};
use super::fingerprint::{Fingerprint, Pinned};
use super::lineage::ParentLink;
use super::manifest_writes::{lock_manifest_writes, ManifestWriteLock};
use super::ownership::Owner;
use super::store_layers::{counting_retries, in_retry_scope_of_caller};
use super::{Database, Store};
use bytes::Bytes;
use object_store::path::Path;
use slatedb::{CloneSourceSpec, VersionedManifest};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Which state of the source to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloneSourceCheckpoint {
    /// An existing checkpoint.
    Id(Uuid),
    /// The latest state, through a checkpoint of this (deterministic) name that the clone makes,
    /// reuses on resume, and deletes once the clone is initialized (the clone's own final
    /// checkpoint on the parent keeps the data pinned from then on).
    Latest { name: String },
}

/// How the clone is checked before it is reported done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    None,
    /// Every object the clone's manifest pins exists.
    Metadata,
    /// Every pinned object's content hash equals the source's, and every SST block's CRC checks out.
    Content,
}

/// Bounded retries of a whole clone after a transient failure.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
        }
    }
}

/// Everything one clone needs.
#[derive(Clone, Debug)]
pub struct CloneConfig {
    /// The store holding both the source and the clone (SlateDB requires one store).
    pub store: Store,
    pub source_path: String,
    pub source_checkpoint: CloneSourceCheckpoint,
    /// Only keys in `[start, end)` are visible in the clone.
    pub key_range: Option<(Bound<Bytes>, Bound<Bytes>)>,
    pub target_path: String,
    pub verify: Verification,
    /// Bound on each SlateDB call.
    pub admin_timeout: Duration,
    pub retry: RetryPolicy,
    /// Who claims the target before the first write (see `ownership.rs`); `None` claims nothing
    /// but still refuses a target someone else owns.
    pub owner: Option<Owner>,
}

/// The steps of a clone, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloneStep {
    ResolveSource,
    WriteManifest,
    PinParent,
    CopyWal,
    MarkInitialized,
    Verify,
    Done,
}

impl CloneStep {
    pub const TOTAL: u32 = 6;

    pub fn name(self) -> &'static str {
        match self {
            CloneStep::ResolveSource => "ResolveSource",
            CloneStep::WriteManifest => "WriteManifest",
            CloneStep::PinParent => "PinParent",
            CloneStep::CopyWal => "CopyWal",
            CloneStep::MarkInitialized => "MarkInitialized",
            CloneStep::Verify => "Verify",
            CloneStep::Done => "Done",
        }
    }

    /// Steps finished once this one is under way.
    pub fn done_before(self) -> u32 {
        self as u32
    }
}

/// Progress of a clone; counts are measured in the store, not estimated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneProgress {
    pub step: CloneStep,
    pub objects_done: u64,
    pub objects_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl CloneProgress {
    /// Overall completion in percent: whole steps, plus the fraction of the current one.
    pub fn percent(&self) -> u32 {
        let within = if self.objects_total == 0 {
            0.0
        } else {
            self.objects_done as f64 / self.objects_total as f64
        };
        let done = self.step.done_before() as f64 + within.min(1.0);
        ((done / CloneStep::TOTAL as f64) * 100.0)
            .floor()
            .min(100.0) as u32
    }
}

/// What a finished clone did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneReport {
    pub source_checkpoint_id: Uuid,
    /// The databases the clone's manifest references (its source, and the source's parents).
    pub parents: Vec<ParentLink>,
    /// Parent SSTs the clone references without copying.
    pub objects_referenced: u64,
    pub bytes_referenced: u64,
    /// WAL objects copied into the clone.
    pub objects_copied: u64,
    pub bytes_copied: u64,
    /// The clone's own fingerprint (its latest manifest), with the content root when verified so.
    pub metadata_digest: String,
    pub content_root: Option<String>,
    /// Whether unfinished work of an earlier run was found and finished.
    pub resumed: bool,
    pub attempts: u32,
    /// Store requests that failed transiently and were retried.
    pub store_retries: u64,
    pub duration: Duration,
    /// Where the time of the run that finished went, phase by phase, for profiles.
    pub phases: Vec<(&'static str, Duration)>,
}

/// Times the phases of one clone run.
struct Phases {
    done: Vec<(&'static str, Duration)>,
    since: std::time::Instant,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            done: Vec::new(),
            since: std::time::Instant::now(),
        }
    }

    /// Ends phase `name` now.
    fn end(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((name, now - self.since));
        self.since = now;
    }
}

/// What the target path holds before the clone runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TargetState {
    Empty,
    /// This clone's unfinished work (attached to the same source checkpoint).
    Partial,
    /// This clone, finished.
    Initialized,
    /// Something else: another database, another clone, or foreign objects.
    Foreign(String),
}

/// What the target path holds, as read before the clone's source checkpoint is resolved.
enum TargetHeld {
    Nothing,
    /// Objects that are not a SlateDB database.
    Objects,
    Database(Box<VersionedManifest>),
}

impl TargetHeld {
    /// What it is to a clone of `source_path` at `checkpoint`.
    fn state_for(&self, source_path: &str, checkpoint: Uuid) -> TargetState {
        let manifest = match self {
            TargetHeld::Nothing => return TargetState::Empty,
            TargetHeld::Objects => {
                return TargetState::Foreign("objects that are not a SlateDB database".into())
            }
            TargetHeld::Database(manifest) => manifest,
        };
        let ours = manifest
            .external_dbs()
            .iter()
            .any(|e| e.path == source_path && e.source_checkpoint_id == checkpoint);
        match (ours, manifest.initialized()) {
            (true, true) => TargetState::Initialized,
            (true, false) => TargetState::Partial,
            (false, _) if manifest.external_dbs().is_empty() => {
                TargetState::Foreign("a SlateDB database".into())
            }
            (false, _) => TargetState::Foreign("a clone of another source or checkpoint".into()),
        }
    }
}

/// The crash point `clone-<Step>`, reached once that clone step is.
fn crash_point_at(step: CloneStep) {
    crash_point(&format!("clone-{}", step.name()));
}

/// Clones `config.source_path` at the chosen checkpoint into `config.target_path`, calling
/// `progress` as it goes. Re-running after a crash finishes the same clone. On a permanent error
/// the target is deleted (unless it held something else to begin with) and checked empty.
pub async fn initialize_clone(
    config: CloneConfig,
    progress: impl Fn(CloneProgress) + Send + Sync + 'static,
) -> Result<CloneReport, EngineError> {
    let started = Instant::now();
    let progress: Arc<dyn Fn(CloneProgress) + Send + Sync> = Arc::new(progress);
    let source = Database::new(
        config.store.clone(),
        &config.source_path,
        config.admin_timeout,
    );
    let target = Database::new(
        config.store.clone(),
        &config.target_path,
        config.admin_timeout,
    );
    let report = |step, done: u64, total: u64, bytes_done: u64, bytes_total: u64| {
        progress(CloneProgress {
            step,
            objects_done: done,
            objects_total: total,
            bytes_done,
            bytes_total,
        })
    };
    report(CloneStep::ResolveSource, 0, 0, 0, 0);
    let mut attempts = 0;
    let mut owns_target = false;
    let (result, store_retries) = counting_retries(async {
        loop {
            attempts += 1;
            match clone_once(&config, &source, &target, &progress, &mut owns_target).await {
                Ok(mut done) => {
                    done.attempts = attempts;
                    done.duration = started.elapsed();
                    return Ok(done);
                }
                Err(error) if error.fault() == Fault::Transient && attempts < config.retry.attempts => {
                    let delay = config.retry.backoff.jittered(attempts);
                    tracing::warn!(%error, attempt = attempts, retry_in = ?delay, "transient clone failure");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    })
    .await;
    match result {
        Ok(report) => Ok(CloneReport {
            store_retries,
            ..report
        }),
        Err(error) if owns_target && error.fault() == Fault::Permanent => {
            let holders = target.holders(chrono::Utc::now(), |_| false).await?;
            if let Some(holder) = holders.first() {
                tracing::warn!(%error, target = %config.target_path, checkpoint = %holder.id,
                    "clone failed for good; its partial work stays: checkpoints of it exist");
                return Err(error);
            }
            tracing::warn!(%error, target = %config.target_path, "clone failed for good; removing its partial work");
            target.delete_database().await?;
            if let Some(owner) = &config.owner {
                target.release(owner).await?;
            }
            Err(error)
        }
        Err(error) => Err(error),
    }
}

async fn clone_once(
    config: &CloneConfig,
    source: &Database,
    target: &Database,
    progress: &Arc<dyn Fn(CloneProgress) + Send + Sync>,
    owns_target: &mut bool,
) -> Result<CloneReport, EngineError> {
    let mut phases = Phases::start();
    // Resolve the source checkpoint, and what the clone will reference and copy. One read of the
    // source's latest manifest says that a database is there, holds the checkpoint, and names the
    // databases the source is a clone of: each read lists every manifest version of the source,
    // and many clones of one parent made that listing most of a clone's cost.
    // What the target holds is read at the same time: neither read changes anything, and a
    // target that is another's is refused before a temporary checkpoint is made on the source.
    let (source_manifest, held) = tokio::try_join!(source.latest_manifest_listed(), async {
        target
            .ensure_not_owned_by_another(config.owner.as_ref())
            .await?;
        target.held().await
    })?;
    let checkpoint = match &config.source_checkpoint {
        CloneSourceCheckpoint::Id(id) => source_manifest
            .checkpoints()
            .iter()
            .find(|c| c.id == *id)
            .map(CheckpointInfo::from)
            .ok_or_else(|| EngineError::CheckpointMissing {
                path: source.path.to_string(),
                selector: CheckpointSelector::Id(*id).to_string(),
            })?,
        CloneSourceCheckpoint::Latest { name } => {
            source
                .obtain_checkpoint(name, Some(Duration::from_secs(3600)))
                .await?
                .0
        }
    };
    let read_checkpoint_manifest;
    let checkpoint_manifest = if checkpoint.manifest_id == source_manifest.id() {
        &source_manifest
    } else {
        read_checkpoint_manifest = source.pinned_manifest(checkpoint.manifest_id).await?;
        &read_checkpoint_manifest
    };
    // The WAL tail the clone copies is looked up now, for progress; the SSTs it references are
    // listed while the clone is written (a directory of 10 000 SSTs took as long to list as the
    // clone builder's work), and their listing stands for them in the clone's Metadata check.
    let wal = source
        .look_up_pinned(checkpoint_manifest, Pinned::Wal, &[])
        .await?;
    let wal_total = wal.len() as u64;
    let wal_bytes: u64 = wal.iter().map(|o| o.size).sum();
    crash_point_at(CloneStep::ResolveSource);
    phases.end("resolve_source");

    // A task of its own, so the listing's CPU (a stat and a path per object on `file://`) runs on
    // another core than the builder's manifest decoding; it only reads, and runs to completion.
    let list_ssts = tokio::spawn(in_retry_scope_of_caller({
        let source = source.clone();
        let ssts = source.pinned_paths(checkpoint_manifest, Pinned::Sst);
        async move { source.look_up(ssts, &[]).await }
    }));
    let write_clone = write_clone(
        config,
        source,
        target,
        held.state_for(&config.source_path, checkpoint.id),
        &source_manifest,
        &checkpoint,
        progress,
        owns_target,
        (wal_total, wal_bytes),
        &mut phases,
    );
    let (ssts, state) = tokio::join!(list_ssts, write_clone);
    let (state, written) = state?;
    // The guard's confirmation only reads the manifests written meanwhile, so the clone's
    // manifest is read beside it; it runs whatever the listing found, since the write is done.
    let (confirmed, manifest) = tokio::join!(
        confirm_manifests_preserved(written),
        target.latest_manifest()
    );
    confirmed?;
    phases.end("guard_confirm_and_read_clone_manifest");
    let ssts = ssts.map_err(|e| EngineError::Store {
        operation: "list the source's SSTs",
        source: object_store::Error::JoinError { source: e },
    })??;
    let manifest = manifest?;
    let resumed = state == TargetState::Partial;
    let source_objects: Vec<_> = ssts.iter().cloned().chain(wal).collect();
    let step = step_shown_by(&manifest, &Path::from(config.source_path.as_str()));
    crash_point_at(CloneStep::MarkInitialized);
    if step != CloneStep::MarkInitialized {
        return Err(EngineError::Uninitialized {
            path: config.target_path.clone(),
        });
    }
    // The builder marks a clone initialized once every WAL object is copied.
    progress(CloneProgress {
        step,
        objects_done: wal_total,
        objects_total: wal_total,
        bytes_done: wal_bytes,
        bytes_total: wal_bytes,
    });
    if let CloneSourceCheckpoint::Latest { .. } = &config.source_checkpoint {
        // The clone's final checkpoint pins the parent now; the temporary one is not needed.
        source.delete_checkpoint(checkpoint.id).await?;
    }
    phases.end("mark_initialized");

    // Verify. Looking up what the clone pins is also the Metadata check: each object must exist.
    // The SSTs it shares with its source were listed while it was written, pinned by the source
    // checkpoint and then by the clone's final checkpoint, which SlateDB's collector respects.
    let (clone_objects, manifest_bytes) = tokio::try_join!(
        target.look_up_pinned(&manifest, Pinned::All, &ssts),
        target.manifest_bytes(manifest.id())
    )?;
    let verify_total = match config.verify {
        Verification::Content => clone_objects.len() as u64,
        _ => 0,
    };
    let verify_bytes: u64 = if verify_total > 0 {
        clone_objects.iter().map(|o| o.size).sum()
    } else {
        0
    };
    progress(CloneProgress {
        step: CloneStep::Verify,
        objects_done: 0,
        objects_total: verify_total,
        bytes_done: 0,
        bytes_total: verify_bytes,
    });
    let content_root = if config.verify == Verification::Content {
        Some(
            verify_content(
                source,
                target,
                &source_objects,
                &clone_objects,
                progress,
                verify_bytes,
            )
            .await?,
        )
    } else {
        None
    };
    phases.end("verify");
    let fingerprint = Fingerprint::of(&manifest_bytes, &clone_objects, None);
    phases.end("fingerprint");
    crash_point_at(CloneStep::Verify);
    progress(CloneProgress {
        step: CloneStep::Done,
        objects_done: 0,
        objects_total: 0,
        bytes_done: 0,
        bytes_total: 0,
    });
    let parents = manifest
        .external_dbs()
        .iter()
        .map(ParentLink::from)
        .collect();
    Ok(CloneReport {
        parents,
        source_checkpoint_id: checkpoint.id,
        objects_referenced: ssts.len() as u64,
        bytes_referenced: ssts.iter().map(|o| o.size).sum(),
        objects_copied: wal_total,
        bytes_copied: wal_bytes,
        metadata_digest: fingerprint.metadata_digest,
        content_root,
        resumed,
        attempts: 0,
        store_retries: 0,
        duration: Duration::ZERO,
        phases: phases.done,
    })
}

/// The manifests the clone builder may have written, each with the id of the manifest the guard
/// checked before it did, for [`Database::confirm_manifest_preserved`]; and the lock on writing
/// them, held until they are confirmed (so no other clone's write lands in between to be read).
struct GuardedWrites {
    checked: Vec<(Database, Option<u64>)>,
    _lock: Option<ManifestWriteLock>,
}

/// Writes the clone, unless the target holds it finished already: claims the target, checks that
/// every manifest the clone builder writes keeps what it holds, and runs the builder. Returns
/// what the target held before (`state`), and the manifests to confirm now that the builder ran.
#[allow(clippy::too_many_arguments)]
async fn write_clone(
    config: &CloneConfig,
    source: &Database,
    target: &Database,
    state: TargetState,
    source_manifest: &VersionedManifest,
    checkpoint: &CheckpointInfo,
    progress: &Arc<dyn Fn(CloneProgress) + Send + Sync>,
    owns_target: &mut bool,
    (wal_total, wal_bytes): (u64, u64),
    phases: &mut Phases,
) -> Result<(TargetState, GuardedWrites), EngineError> {
    match &state {
        TargetState::Foreign(what) => {
            return Err(EngineError::TargetNotEmpty {
                path: config.target_path.clone(),
                holds: what.clone(),
            })
        }
        TargetState::Empty | TargetState::Partial => *owns_target = true,
        TargetState::Initialized => {}
    }
    if let Some(owner) = &config.owner {
        target.claim(owner).await?;
    }
    phases.end("claim_target");
    if state == TargetState::Initialized {
        let nothing = GuardedWrites {
            checked: Vec::new(),
            _lock: None,
        };
        return Ok((state, nothing));
    }
    // The builder writes the manifest of the parent and of every database the parent is a
    // clone of (the clone's final checkpoints), and derives the clone's manifest from the
    // parent's as this build decodes it.
    // A database's lineage is fixed when it is made, so the manifest read before answers.
    let ancestors: Vec<Database> = source_manifest
        .external_dbs()
        .iter()
        .map(ParentLink::from)
        .map(|a| Database::new(config.store.clone(), &a.path, config.admin_timeout))
        .collect();
    let mut writing: Vec<&Database> = vec![source];
    writing.extend(&ancestors);
    let lock = lock_manifest_writes(&writing).await;
    phases.end("wait_for_parent_manifest");
    let mut written = Vec::new();
    for database in writing {
        // The source's manifest was read before; only what came since is listed.
        let known = std::ptr::eq(database, source).then_some(source_manifest);
        let checked = database.ensure_manifest_preserved_since(known).await?;
        written.push((database.clone(), checked));
    }
    phases.end("guard_check");
    run_clone_builder(config, target, checkpoint, progress, wal_total, wal_bytes).await?;
    phases.end("clone_builder");
    let written = GuardedWrites {
        checked: written,
        _lock: Some(lock),
    };
    Ok((state, written))
}

/// The guard's confirmation after the clone builder ran (see [`write_clone`]).
async fn confirm_manifests_preserved(written: GuardedWrites) -> Result<(), EngineError> {
    for (database, checked) in &written.checked {
        database.confirm_manifest_preserved(*checked).await?;
    }
    Ok(())
}

/// Runs SlateDB's clone builder under the timeout while a watcher reports the steps it observes in
/// the store: the clone manifest, the parent's pin, each copied WAL object, the initialized flag.
async fn run_clone_builder(
    config: &CloneConfig,
    target: &Database,
    checkpoint: &CheckpointInfo,
    progress: &Arc<dyn Fn(CloneProgress) + Send + Sync>,
    wal_total: u64,
    wal_bytes: u64,
) -> Result<(), EngineError> {
    let mut spec = CloneSourceSpec::with_checkpoint(config.source_path.as_str(), checkpoint.id);
    if let Some(range) = &config.key_range {
        spec = spec.with_projection_range(range.clone());
    }
    let finished = Arc::new(Finished::default());
    let watcher = tokio::spawn(watch_clone_steps(
        target.clone(),
        Path::from(config.source_path.as_str()),
        finished.clone(),
        progress.clone(),
        wal_total,
        wal_bytes,
    ));
    let admin = target.admin();
    let build = admin.create_clone_builder_from_source(spec).build();
    let outcome = target.bounded("clone", build).await;
    finished.set();
    let _ = watcher.await;
    outcome
}

/// Tells the watcher the builder is done, waking it from its sleep.
#[derive(Default)]
struct Finished {
    flag: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Finished {
    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

async fn watch_clone_steps(
    target: Database,
    source_path: Path,
    finished: Arc<Finished>,
    progress: Arc<dyn Fn(CloneProgress) + Send + Sync>,
    wal_total: u64,
    wal_bytes: u64,
) {
    let last = Mutex::new(None::<CloneProgress>);
    let emit = |p: CloneProgress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(&p) {
            progress(p.clone());
            *last = Some(p);
        }
    };
    emit(CloneProgress {
        step: CloneStep::WriteManifest,
        objects_done: 0,
        objects_total: 0,
        bytes_done: 0,
        bytes_total: 0,
    });
    // The round after the builder finished is the clone's own: it reads the clone's manifest
    // anyway (a decode of every SST the clone references).
    while !finished.is_set() {
        if let Ok(Some(manifest)) = target.try_latest_manifest().await {
            let step = step_shown_by(&manifest, &source_path);
            let (copied, copied_bytes) = target.wal_objects_present().await.unwrap_or((0, 0));
            let copied = copied.min(wal_total);
            emit(CloneProgress {
                step,
                objects_done: copied,
                objects_total: wal_total,
                bytes_done: copied_bytes.min(wal_bytes),
                bytes_total: wal_bytes,
            });
            if step == CloneStep::CopyWal && copied >= wal_total && wal_total > 0 {
                crash_point_at(CloneStep::CopyWal);
            }
        }
        tokio::select! {
            _ = finished.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// The builder's step that a manifest of the clone shows, passing the crash points of the steps
/// it shows done.
fn step_shown_by(manifest: &VersionedManifest, source_path: &Path) -> CloneStep {
    crash_point_at(CloneStep::WriteManifest);
    let pinned = manifest
        .external_dbs()
        .iter()
        .any(|e| e.path == source_path.as_ref() && e.final_checkpoint_id.is_some());
    let step = if manifest.initialized() {
        CloneStep::MarkInitialized
    } else if pinned {
        CloneStep::CopyWal
    } else {
        CloneStep::PinParent
    };
    if step >= CloneStep::CopyWal {
        crash_point_at(CloneStep::PinParent);
    }
    step
}

/// The source's objects of which the clone holds its own copy (its WAL tail); an object the
/// source does not pin is corruption.
fn copies_to_compare(
    source_objects: &[super::PinnedObject],
    clone_objects: &[super::PinnedObject],
) -> Result<Vec<super::PinnedObject>, EngineError> {
    let source_by_key: BTreeMap<&str, &super::PinnedObject> =
        source_objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut copies = Vec::new();
    for object in clone_objects {
        match source_by_key.get(object.key.as_str()) {
            Some(original) if original.path == object.path => {}
            Some(original) => copies.push((*original).clone()),
            None => {
                return Err(EngineError::Corrupt {
                    object: object.path.to_string(),
                    detail: "the clone pins an object its source checkpoint does not".into(),
                })
            }
        }
    }
    Ok(copies)
}

/// Reads every object the clone pins once (hash and SST block CRCs). Objects the clone shares
/// with its source are the same objects; each one it has its own copy of (the WAL tail) must hash
/// like the source's.
async fn verify_content(
    source: &Database,
    target: &Database,
    source_objects: &[super::PinnedObject],
    clone_objects: &[super::PinnedObject],
    progress: &Arc<dyn Fn(CloneProgress) + Send + Sync>,
    bytes_total: u64,
) -> Result<String, EngineError> {
    let copies_in_source = copies_to_compare(source_objects, clone_objects)?;
    let source_hashes: BTreeMap<String, [u8; 32]> = source
        .check_content(&copies_in_source, &|_| {})
        .await?
        .into_iter()
        .map(|c| (c.object.key, c.sha256))
        .collect();
    let counter = Mutex::new((0u64, 0u64));
    let total = clone_objects.len() as u64;
    let on_checked = |object: &super::PinnedObject| {
        let mut counter = counter.lock().unwrap_or_else(|e| e.into_inner());
        counter.0 += 1;
        counter.1 += object.size;
        progress(CloneProgress {
            step: CloneStep::Verify,
            objects_done: counter.0,
            objects_total: total,
            bytes_done: counter.1,
            bytes_total,
        });
    };
    let checked = target.check_content(clone_objects, &on_checked).await?;
    for c in &checked {
        if let Some(expected) = source_hashes.get(&c.object.key) {
            if *expected != c.sha256 {
                return Err(EngineError::Corrupt {
                    object: c.object.path.to_string(),
                    detail: "its content differs from the source checkpoint's".into(),
                });
            }
        }
    }
    Ok(hex::encode(super::fingerprint::merkle_root_of(&checked)))
}

impl Database {
    /// What the path holds, before the clone's source checkpoint is known.
    async fn held(&self) -> Result<TargetHeld, EngineError> {
        if let Some(manifest) = self.try_latest_manifest().await? {
            return Ok(TargetHeld::Database(Box::new(manifest)));
        }
        // Any object under the path, at any depth: the empty directories a local store keeps
        // after a deletion (a reset's, say) hold nothing.
        use futures::StreamExt;
        let mut listing = self.store.main.list(Some(&self.path));
        let first = self
            .bounded_store("list target", async { listing.next().await.transpose() })
            .await?;
        Ok(match first {
            None => TargetHeld::Nothing,
            Some(_) => TargetHeld::Objects,
        })
    }

    /// Number and total size of the WAL objects present under the database.
    async fn wal_objects_present(&self) -> Result<(u64, u64), EngineError> {
        let objects = self.wal_objects().await?;
        Ok((objects.len() as u64, objects.iter().map(|o| o.size).sum()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sample::{sample_row, write_sample_db};
    use crate::engine::StoreConfig;
    use object_store::ObjectStoreExt;

    /// Files (objects) under a local directory; the local store leaves empty directories behind.
    fn files_under(dir: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
            .sum()
    }

    fn file_store(dir: &tempfile::TempDir) -> Store {
        Store::open(&StoreConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        })
        .unwrap()
    }

    fn config(
        store: &Store,
        checkpoint: CloneSourceCheckpoint,
        target: &str,
        verify: Verification,
    ) -> CloneConfig {
        CloneConfig {
            store: store.clone(),
            source_path: "parent".into(),
            source_checkpoint: checkpoint,
            key_range: None,
            target_path: target.into(),
            verify,
            admin_timeout: Duration::from_secs(20),
            retry: RetryPolicy::default(),
            owner: None,
        }
    }

    /// A parent with flushed SSTs plus a WAL-only row, checkpointed by its writer (so the WAL
    /// tail is pinned and the clone must copy it).
    async fn parent_with_wal_tail(store: &Store) -> Uuid {
        write_sample_db(store, "parent", 2_000, 2).await.unwrap();
        let db = slatedb::Db::builder("parent", store.main.clone())
            .build()
            .await
            .unwrap();
        db.put(b"wal-only", b"tail").await.unwrap();
        let made = db
            .create_checkpoint(
                slatedb::config::CheckpointScope::Durable,
                &Default::default(),
            )
            .await
            .unwrap();
        db.close().await.unwrap();
        made.id
    }

    /// The clone's Metadata check takes the SSTs it shares with its source from the source's
    /// listing, and still looks up (and misses) the objects it holds itself.
    #[tokio::test]
    async fn objects_known_from_the_source_stand_for_themselves_and_the_clones_own_are_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        let checkpoint = parent_with_wal_tail(&store).await;
        initialize_clone(
            config(
                &store,
                CloneSourceCheckpoint::Id(checkpoint),
                "clones/k",
                Verification::Metadata,
            ),
            |_| {},
        )
        .await
        .unwrap();
        let source = Database::new(store.clone(), "parent", Duration::from_secs(20));
        let target = Database::new(store.clone(), "clones/k", Duration::from_secs(20));
        let source_manifest = source.latest_manifest().await.unwrap();
        let pinned_checkpoint = source_manifest
            .checkpoints()
            .iter()
            .find(|c| c.id == checkpoint)
            .unwrap()
            .manifest_id;
        let checkpoint_manifest = source.pinned_manifest(pinned_checkpoint).await.unwrap();
        let all = source
            .pinned_objects_of(&checkpoint_manifest)
            .await
            .unwrap();
        let wal = source
            .look_up_pinned(&checkpoint_manifest, Pinned::Wal, &[])
            .await
            .unwrap();
        let ssts = source
            .look_up_pinned(&checkpoint_manifest, Pinned::Sst, &[])
            .await
            .unwrap();
        assert!(!wal.is_empty() && !ssts.is_empty(), "{all:?}");
        assert!(wal.iter().all(|o| o.key.starts_with("wal/")));
        assert!(ssts.iter().all(|o| o.key.starts_with("sst/")));
        let parts: Vec<_> = ssts.iter().chain(&wal).cloned().collect();
        assert_eq!(parts, all);

        let clone_manifest = target.latest_manifest().await.unwrap();
        let looked_up = target.pinned_objects_of(&clone_manifest).await.unwrap();
        let with_known = target
            .look_up_pinned(&clone_manifest, Pinned::All, &ssts)
            .await
            .unwrap();
        assert_eq!(with_known, looked_up);

        // A known object is taken as it is (here: even once gone); one the clone copied is not.
        let shared = &ssts[0];
        store.main.delete(&shared.path).await.unwrap();
        let copy = looked_up
            .iter()
            .find(|o| o.key.starts_with("wal/"))
            .unwrap();
        assert!(copy.path.as_ref().starts_with("clones/k/"), "{copy:?}");
        let still = target
            .look_up_pinned(&clone_manifest, Pinned::All, &ssts)
            .await
            .unwrap();
        assert!(still.iter().any(|o| o.path == shared.path));
        store.main.delete(&copy.path).await.unwrap();
        let error = target
            .look_up_pinned(&clone_manifest, Pinned::All, &ssts)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(copy.path.as_ref()), "{error}");
    }

    #[tokio::test]
    async fn a_clone_reads_back_copies_only_the_wal_and_reports_monotonic_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        let checkpoint = parent_with_wal_tail(&store).await;
        let seen = Arc::new(Mutex::new(Vec::<CloneProgress>::new()));
        let sink = seen.clone();
        let report = initialize_clone(
            config(
                &store,
                CloneSourceCheckpoint::Id(checkpoint),
                "clones/a",
                Verification::Content,
            ),
            move |p| sink.lock().unwrap().push(p),
        )
        .await
        .unwrap();
        assert_eq!(report.source_checkpoint_id, checkpoint);
        assert!(report.objects_referenced >= 2, "{report:?}");
        assert!(report.objects_copied >= 1, "{report:?}");
        assert!(report.content_root.is_some());
        assert!(!report.resumed);

        let seen = seen.lock().unwrap().clone();
        let percents: Vec<u32> = seen.iter().map(CloneProgress::percent).collect();
        assert!(
            percents.windows(2).all(|w| w[0] <= w[1]),
            "not monotonic: {percents:?}"
        );
        assert_eq!(percents.last(), Some(&100));
        assert!(seen
            .iter()
            .any(|p| p.step == CloneStep::CopyWal || p.step == CloneStep::MarkInitialized));

        // The clone has every row, and the WAL-only one.
        let clone = slatedb::Db::builder("clones/a", store.main.clone())
            .build()
            .await
            .unwrap();
        for i in (0..2_000).step_by(97) {
            let (key, value) = sample_row(i);
            assert_eq!(
                clone.get(key.as_bytes()).await.unwrap().as_deref(),
                Some(value.as_bytes())
            );
        }
        clone.close().await.unwrap();

        // Running it again is a no-op that reports the same clone.
        let again = initialize_clone(
            config(
                &store,
                CloneSourceCheckpoint::Id(checkpoint),
                "clones/a",
                Verification::Metadata,
            ),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(again.source_checkpoint_id, checkpoint);
    }

    #[tokio::test]
    async fn a_corrupt_parent_fails_content_verification_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        let checkpoint = parent_with_wal_tail(&store).await;
        let parent = Database::new(store.clone(), "parent", Duration::from_secs(20));
        let checkpoints_before = parent.list_checkpoints(None).await.unwrap();
        // Corrupt an SST the checkpoint pins: the clone references it, so the CRC walk names it.
        let manifest_id = checkpoints_before
            .iter()
            .find(|c| c.id == checkpoint)
            .unwrap()
            .manifest_id;
        let pinned = parent.pinned_objects(manifest_id).await.unwrap();
        let sst = pinned.iter().find(|o| o.key.starts_with("sst/")).unwrap();
        let victim = dir.path().join(sst.path.as_ref());
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&victim, &bytes).unwrap();

        let error = initialize_clone(
            config(
                &store,
                CloneSourceCheckpoint::Id(checkpoint),
                "clones/bad",
                Verification::Content,
            ),
            |_| {},
        )
        .await
        .expect_err("a corrupt block must fail verification");
        assert_eq!(error.fault(), Fault::Permanent);
        let name = victim.file_name().unwrap().to_string_lossy().to_string();
        assert!(error.to_string().contains(&name), "{error}");
        assert_eq!(
            files_under(&dir.path().join("clones/bad")),
            0,
            "no object is left under the target"
        );
        let checkpoints_after = parent.list_checkpoints(None).await.unwrap();
        assert_eq!(
            checkpoints_before, checkpoints_after,
            "the parent's pins are as before"
        );
    }

    #[tokio::test]
    async fn a_target_holding_another_database_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        let checkpoint = parent_with_wal_tail(&store).await;
        write_sample_db(&store, "occupied", 10, 1).await.unwrap();
        let error = initialize_clone(
            config(
                &store,
                CloneSourceCheckpoint::Id(checkpoint),
                "occupied",
                Verification::Metadata,
            ),
            |_| {},
        )
        .await
        .expect_err("must not overwrite");
        assert!(
            matches!(error, EngineError::TargetNotEmpty { .. }),
            "{error}"
        );
        let occupied = Database::new(store.clone(), "occupied", Duration::from_secs(20));
        assert!(
            occupied.describe().await.unwrap().initialized,
            "the foreign database is untouched"
        );
    }

    #[tokio::test]
    async fn a_deleted_clone_on_a_local_store_can_be_made_again_at_the_same_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        let checkpoint = parent_with_wal_tail(&store).await;
        let source = CloneSourceCheckpoint::Id(checkpoint);
        let clone_config = || {
            config(
                &store,
                source.clone(),
                "clones/again",
                Verification::Metadata,
            )
        };
        initialize_clone(clone_config(), |_| {}).await.unwrap();
        let target = Database::new(store.clone(), "clones/again", Duration::from_secs(20));
        target.delete_database().await.unwrap();
        assert!(
            dir.path().join("clones/again").is_dir(),
            "the local store keeps the emptied directories this test is about"
        );
        assert_eq!(files_under(&dir.path().join("clones/again")), 0);
        let again = initialize_clone(clone_config(), |_| {}).await.unwrap();
        assert!(!again.resumed);
        assert!(target.describe().await.unwrap().initialized);
    }

    #[tokio::test]
    async fn a_clone_of_the_latest_state_cleans_up_its_temporary_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        write_sample_db(&store, "parent", 500, 1).await.unwrap();
        let latest = CloneSourceCheckpoint::Latest {
            name: "tmp:clone".into(),
        };
        let mut cfg = config(&store, latest, "clones/latest", Verification::Metadata);
        cfg.key_range = Some((
            Bound::Included(Bytes::from("key-000100")),
            Bound::Excluded(Bytes::from("key-000200")),
        ));
        initialize_clone(cfg, |_| {}).await.unwrap();
        let parent = Database::new(store.clone(), "parent", Duration::from_secs(20));
        assert!(parent
            .list_checkpoints(Some("tmp:clone"))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            parent.list_checkpoints(None).await.unwrap().len(),
            1,
            "only the clone's final checkpoint"
        );
        let clone = slatedb::Db::builder("clones/latest", store.main.clone())
            .build()
            .await
            .unwrap();
        assert!(clone.get(b"key-000150").await.unwrap().is_some());
        assert!(clone.get(b"key-000050").await.unwrap().is_none());
        assert!(clone.get(b"key-000200").await.unwrap().is_none());
        clone.close().await.unwrap();
    }
}
