//! Independent copies of a database: [`copy_checkpoint`] copies the closure of one checkpoint
//! (its manifest, every SST it references, the WAL objects it replays) from a source store to
//! the same relative names under a path in a target store, which may be another bucket or
//! another provider. The target is a plain SlateDB root; nothing in it refers back to the source.
//!
//! The protocol (compare sleet's mirror, whose target layout it shares: a plain SlateDB root):
//!
//! 1. **Pin.** The checkpoint is kept alive while the copy runs: one that would expire within
//!    [`CopyOptions::checkpoint_lifetime`] is refreshed to that lifetime, again at half of it.
//!    `Latest { name }` makes (or, on resume, adopts) a checkpoint of that name and deletes it
//!    once the copy is committed.
//! 2. **Plan.** One listing of the target and the copy's records there (see `records.rs`) decide
//!    what to do. A target holding anything but copies of this source is refused (`Diverged`),
//!    as is one whose latest copy is newer than the checkpoint (`TargetNewer`). An object is
//!    skipped when the target holds it at the source's size and a record names its content hash
//!    (a complete earlier copy: incremental; or a journal of an interrupted run: resume).
//! 3. **Transfer and verify** the rest, `parallelism` objects at once: each is streamed and hashed
//!    (sha256) on the way, as one PUT or a multipart upload above `multipart_threshold`, retried
//!    after transient failures, then read back from the target (sha256 and the CRC of every SST
//!    block, by the fingerprint code; objects a complete earlier copy verified are not read
//!    again). One that differs from the hash taken at the source is transferred again, at most
//!    `max_retransmissions` times, then the copy stops with `ChecksumMismatch` naming every such
//!    object. Finished objects are journalled at the target every few objects.
//! 4. **Content root.** The fingerprint's Merkle root over every object's key and hash, as read
//!    back: the source checkpoint's content root.
//! 5. **Commit.** The commit record, then the manifest, both create-if-absent: the manifest is
//!    the last object written, so a reader never sees a half-made copy. Then journals and
//!    objects no complete copy references are removed.
//!
//! A copy that fails for good (a permanent error) removes what copies wrote that no complete
//! copy references; an earlier complete copy at the target stays intact. A transient failure
//! leaves everything for the next run to resume. A source that is a clone is refused: its SSTs
//! live in its parents, and SlateDB's public API cannot write a manifest without `external_dbs`,
//! so a flattened copy is not possible here. A source that keeps its WAL in another store is
//! refused too (the copied manifest would still name that store).
//!
//! [`promote_copy`] turns a copy into an independent writable database.
//!
//! [`reencode_checkpoint`] is the other kind of copy, for a target that should differ from its
//! source: it reads every row at the checkpoint and writes it into a new database at the target
//! with the chosen compression codec and SST block size, resumable by key range and verified by
//! a digest of the rows (see `reencode.rs`). Its records live under
//! `<target>/.slatedb-operator/reencode/`, and `done.json` there, written last, marks it
//! finished; unlike a byte copy it accepts a clone as its source.

mod delete;
mod promote;
mod records;
mod reencode;
#[cfg(test)]
mod reencode_tests;
#[cfg(test)]
mod tests;
mod transfer;

pub use delete::{delete_copy, CopyDeletion};
pub use promote::{promote_copy, PromoteReport};
pub use reencode::{
    codec_name, reencode_checkpoint, sst_block_size, ReencodeOptions, ReencodePhase,
    ReencodeProgress, ReencodeReport, RowDigest,
};

use super::checkpoint::{CheckpointInfo, CheckpointSelector};
use super::clone::{CloneSourceCheckpoint, RetryPolicy};
use super::crash_point::crash_point;
use super::error::{EngineError, Fault};
use super::fingerprint::{manifest_path, merkle_root, CONTENT_BUDGET_MIB};
use super::ownership::Owner;
use super::store_layers::in_retry_scope_of_caller;
use super::{Database, PinnedObject};
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use records::{
    commit_path, create_object, create_record, delete_objects, journal_path, normalized_label,
    relative_to, under, CommitRecord, Inventory, JournalBatch, ObjectHash, TargetState,
};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use transfer::{Mover, ObjectMove};
use uuid::Uuid;

/// How much of the target a copy reads back before it commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyVerification {
    /// Nothing is read back: every object is at the target at the source's size, and the content
    /// root is computed from the hashes taken while reading the source.
    Metadata,
    /// Every object not verified by an earlier complete copy of this target is read back
    /// (sha256, and the CRC of every SST block): what this run, or an interrupted one, wrote.
    #[default]
    Content,
    /// Every object is read back, also those an earlier copy verified.
    Full,
}

impl CopyVerification {
    pub fn name(self) -> &'static str {
        match self {
            CopyVerification::Metadata => "metadata",
            CopyVerification::Content => "content",
            CopyVerification::Full => "full",
        }
    }
}

/// How a copy runs.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Objects transferred (and read back) at once.
    pub parallelism: usize,
    pub verify: CopyVerification,
    /// Rounds of transferring again the objects that failed verification.
    pub max_retransmissions: u32,
    /// Objects of at least this many bytes are uploaded in parts.
    pub multipart_threshold: u64,
    /// Size of each part of a multipart upload (at least 5 MiB, S3's minimum).
    pub part_size: usize,
    /// Object content held in memory at once, across all transfers.
    pub memory_budget_mib: u32,
    /// The source checkpoint is kept alive at least this long ahead while the copy runs.
    pub checkpoint_lifetime: Duration,
    /// Attempts and backoff of each object's transfer after a transient failure.
    pub retry: RetryPolicy,
    /// Finished objects recorded per journal object at the target; a resumed copy transfers at
    /// most this many finished objects again (plus those that were in flight).
    pub journal_batch: usize,
    /// What identifies the source in the target's records (default: its path). A target that
    /// holds a copy of another source is refused; set it to the store URL and path.
    pub source_label: Option<String>,
    /// Who claims the target before the first write (see `ownership.rs`).
    pub owner: Option<Owner>,
    /// Only this share of the objects, and no commit (see [`CopyShare`]).
    pub share: Option<CopyShare>,
}

/// One of `count` disjoint shares of a copy's objects (by a hash of each object's key), for a
/// copy split across processes, such as the completions of an Indexed Job. A run with a share
/// transfers and verifies only its objects, journals them at the target, and commits nothing;
/// once every share has finished, a run without a share commits the copy, transferring and
/// reading back only what no share finished. A share needs a checkpoint id (not `Latest`), and a
/// share that fails for good removes nothing (the other shares' work is at the same target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyShare {
    pub index: u32,
    pub count: u32,
}

impl CopyShare {
    /// Whether the object of this logical key belongs to the share.
    pub fn includes(&self, key: &str) -> bool {
        let digest = Sha256::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % u64::from(self.count.max(1)) == u64::from(self.index)
    }
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            parallelism: 16,
            verify: CopyVerification::Content,
            max_retransmissions: 3,
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            memory_budget_mib: 4 * CONTENT_BUDGET_MIB,
            checkpoint_lifetime: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            journal_batch: 16,
            source_label: None,
            owner: None,
            share: None,
        }
    }
}

/// The phases of a copy, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CopyPhase {
    Prepare,
    /// Objects transferred and read back.
    Transfer,
    Commit,
    Done,
}

impl CopyPhase {
    pub fn name(self) -> &'static str {
        match self {
            CopyPhase::Prepare => "Prepare",
            CopyPhase::Transfer => "Transfer",
            CopyPhase::Commit => "Commit",
            CopyPhase::Done => "Done",
        }
    }
}

/// Progress of a copy. In `Transfer`, `objects_done` counts objects settled (skipped, or
/// transferred, read back as the mode asks, and recorded at the target: what a resumed copy
/// would not transfer again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyProgress {
    pub phase: CopyPhase,
    pub objects_done: u64,
    pub objects_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl CopyProgress {
    /// Overall completion in percent, never decreasing over a copy: the transfer is 0–97 (by
    /// bytes), the commit 99.
    pub fn percent(&self) -> u32 {
        let fraction = if self.bytes_total > 0 {
            self.bytes_done as f64 / self.bytes_total as f64
        } else if self.objects_total > 0 {
            self.objects_done as f64 / self.objects_total as f64
        } else {
            0.0
        }
        .min(1.0);
        match self.phase {
            CopyPhase::Prepare => 0,
            CopyPhase::Transfer => (fraction * 97.0).floor() as u32,
            CopyPhase::Commit => 99,
            CopyPhase::Done => 100,
        }
    }
}

/// What a finished copy did. Objects and bytes include the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyReport {
    pub checkpoint_id: Uuid,
    pub manifest_id: u64,
    pub objects_total: u64,
    pub bytes_total: u64,
    /// Written by this run (the first transfer of each object).
    pub objects_transferred: u64,
    pub bytes_transferred: u64,
    /// Already at the target (from an earlier copy, or an interrupted run).
    pub objects_skipped: u64,
    pub bytes_skipped: u64,
    /// Transferred again after failing verification (each counted once).
    pub objects_retransmitted: u64,
    pub bytes_retransmitted: u64,
    /// Objects read back from the target, and SST blocks whose CRC was checked.
    pub objects_read_back: u64,
    pub blocks_checked: u64,
    /// Merkle root over every object's key and content hash (the fingerprint's content root).
    pub content_root: String,
    pub manifest_sha256: String,
    /// The target held this copy already (nothing was missing).
    pub already_complete: bool,
    /// Objects of an interrupted run were found and reused.
    pub resumed: bool,
    /// The manifest is at the target (false only for a run with a [`CopyShare`], whose totals
    /// count its share alone).
    pub committed: bool,
    pub duration: Duration,
}

/// The objects and bytes of a database's closure at a copy's target so far (everything under
/// its path but the copy's own records): the progress of a copy that runs elsewhere, such as the
/// shares of a Job, as one listing shows it.
pub async fn transferred_so_far(target: &Database) -> Result<(u64, u64), EngineError> {
    let inventory = records::Inventory::read(target).await?;
    Ok(inventory
        .objects
        .iter()
        .filter(|(path, _)| !path.starts_with(records::COPY_DIR))
        .fold((0, 0), |(objects, bytes), (_, size)| {
            (objects + 1, bytes + size)
        }))
}

/// The label that identifies a source in a target's records ([`CopyOptions::source_label`]):
/// its store URL and path. Every caller (the CLI, the operator, Jobs) labels a source this way, so
/// that they may continue each other's copies.
pub fn source_label(store_url: &str, path: &str) -> String {
    format!(
        "{}/{}",
        store_url.trim_end_matches('/'),
        path.trim_matches('/')
    )
}

/// Copies the closure of `checkpoint` of `source` to `target` (see the module doc), calling
/// `progress` as it goes. Re-running after any failure resumes; re-running after success is a
/// cheap no-op (or, with a newer checkpoint, an incremental copy).
pub async fn copy_checkpoint(
    source: &Database,
    checkpoint: &CloneSourceCheckpoint,
    target: &Database,
    options: &CopyOptions,
    progress: impl Fn(CopyProgress) + Send + Sync,
) -> Result<CopyReport, EngineError> {
    let started = Instant::now();
    if target.store.wal.is_some() {
        return Err(EngineError::StoreConfig(
            "a copy target cannot keep its WAL in a separate store: the copied manifest names none"
                .into(),
        ));
    }
    refuse_overlap(source, target)?;
    progress(CopyProgress {
        phase: CopyPhase::Prepare,
        objects_done: 0,
        objects_total: 0,
        bytes_done: 0,
        bytes_total: 0,
    });
    if let Some(share) = options.share {
        let latest = matches!(checkpoint, CloneSourceCheckpoint::Latest { .. });
        if share.count == 0 || share.index >= share.count || latest {
            return Err(EngineError::StoreConfig(format!(
                "copy share {}/{} of {}: a share needs 0 <= index < count and a checkpoint id",
                share.index,
                share.count,
                if latest {
                    "the latest state"
                } else {
                    "a checkpoint"
                }
            )));
        }
    }
    source.probe().await?;
    target
        .ensure_not_owned_by_another(options.owner.as_ref())
        .await?;
    let lifetime = options.checkpoint_lifetime;
    let on_lost = OnLost::Drop;
    let mut report = while_pinned(
        source,
        checkpoint,
        lifetime,
        on_lost,
        |pinned, _| async move {
            tracing::info!(source = %source.path, target = %target.path, checkpoint = %pinned.id,
            manifest = pinned.manifest_id, "copying a checkpoint");
            copy_pinned(source, &pinned, target, options, &progress).await
        },
    )
    .await?;
    report.duration = started.elapsed();
    tracing::info!(target = %target.path, transferred = report.objects_transferred,
        skipped = report.objects_skipped, retransmitted = report.objects_retransmitted,
        seconds = report.duration.as_secs_f64(), "copy committed");
    Ok(report)
}

/// Refuses a target inside its source, or a source inside its target, in the same store.
fn refuse_overlap(source: &Database, target: &Database) -> Result<(), EngineError> {
    let same_store = std::sync::Arc::ptr_eq(&source.store.main, &target.store.main);
    if same_store
        && (target.path.prefix_matches(&source.path) || source.path.prefix_matches(&target.path))
    {
        return Err(EngineError::StoreConfig(format!(
            "the copy target {:?} overlaps its source {:?} in the same store",
            target.path.as_ref(),
            source.path.as_ref()
        )));
    }
    Ok(())
}

/// How [`while_pinned`] ends the work when the checkpoint cannot be kept alive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnLost {
    /// Drop the work's future at once.
    Drop,
    /// Set the flag given to the work and wait for it to return (so that it can close what it
    /// opened and clean up).
    Stop,
}

/// Runs `work` on the checkpoint while keeping it alive (see the module doc's step 1): an
/// existing one, or for `Latest { name }` one made (or adopted) under that name, deleted
/// afterwards unless the work failed transiently (so that the next run adopts it and resumes).
async fn while_pinned<T, F>(
    source: &Database,
    checkpoint: &CloneSourceCheckpoint,
    lifetime: Duration,
    on_lost: OnLost,
    work: impl FnOnce(CheckpointInfo, std::sync::Arc<AtomicBool>) -> F,
) -> Result<T, EngineError>
where
    F: Future<Output = Result<T, EngineError>>,
{
    let (pinned, temporary) = match checkpoint {
        CloneSourceCheckpoint::Id(id) => (
            source.find_checkpoint(&CheckpointSelector::Id(*id)).await?,
            false,
        ),
        CloneSourceCheckpoint::Latest { name } => (
            source.obtain_checkpoint(name, Some(lifetime)).await?.0,
            true,
        ),
    };
    refresh_if_expiring(source, &pinned, lifetime).await?;
    let id = pinned.id;
    let lost = std::sync::Arc::new(AtomicBool::new(false));
    let work = work(pinned, lost.clone());
    tokio::pin!(work);
    let result = tokio::select! {
        result = &mut work => result,
        error = keep_alive(source, id, lifetime) => {
            if on_lost == OnLost::Stop {
                lost.store(true, Ordering::SeqCst);
                if let Err(stopped) = work.await {
                    tracing::debug!(%stopped, "the work stopped: its checkpoint is lost");
                }
            }
            Err(error)
        }
    };
    let transient = matches!(&result, Err(e) if e.fault() == Fault::Transient);
    if temporary && !transient {
        if let Err(error) = source.delete_checkpoint(id).await {
            tracing::warn!(%error, checkpoint = %id, "could not delete the temporary checkpoint; it expires");
        }
    }
    result
}

/// Refreshes the checkpoint to `lifetime` from now when it would expire sooner.
async fn keep_alive_once(
    source: &Database,
    id: Uuid,
    lifetime: Duration,
) -> Result<(), EngineError> {
    let checkpoint = source.find_checkpoint(&CheckpointSelector::Id(id)).await?;
    refresh_if_expiring(source, &checkpoint, lifetime).await
}

/// [`keep_alive_once`] for a checkpoint as just read.
async fn refresh_if_expiring(
    source: &Database,
    checkpoint: &CheckpointInfo,
    lifetime: Duration,
) -> Result<(), EngineError> {
    let id = checkpoint.id;
    let horizon = chrono::Utc::now()
        + chrono::TimeDelta::from_std(lifetime).unwrap_or(chrono::TimeDelta::MAX);
    if checkpoint.expire_time.is_some_and(|at| at < horizon) {
        tracing::debug!(checkpoint = %id, ?lifetime, "refreshing the copy's source checkpoint");
        source.refresh_checkpoint(id, Some(lifetime)).await?;
    }
    Ok(())
}

/// Keeps the checkpoint alive at half its lifetime for as long as it is polled; returns only when
/// it cannot (the checkpoint is gone, or refreshing fails for good).
async fn keep_alive(source: &Database, id: Uuid, lifetime: Duration) -> EngineError {
    let period = (lifetime / 2).max(Duration::from_secs(1));
    let mut wait = period;
    loop {
        tokio::time::sleep(wait).await;
        match keep_alive_once(source, id, lifetime).await {
            Ok(()) => wait = period,
            Err(error) if error.fault() == Fault::Permanent => return error,
            Err(error) => {
                tracing::warn!(%error, checkpoint = %id, "refreshing the copy's source checkpoint failed; retrying");
                wait = period / 4;
            }
        }
    }
}

/// One object of the closure, at the source and at the target.
struct Item {
    /// Path relative to the database root.
    relative: String,
    source: PinnedObject,
    target: PinnedObject,
}

/// What a checkpoint pins, read from the source.
struct Closure {
    checkpoint: CheckpointInfo,
    manifest: Bytes,
    manifest_sha256: String,
    items: Vec<Item>,
}

async fn read_closure(
    source: &Database,
    checkpoint: &CheckpointInfo,
    target: &Database,
) -> Result<Closure, EngineError> {
    let manifest = source.pinned_manifest(checkpoint.manifest_id).await?;
    let unsupported = |reason: String| EngineError::CopySourceUnsupported {
        path: source.path.to_string(),
        reason,
    };
    if !manifest.external_dbs().is_empty() {
        let parents: Vec<&str> = manifest
            .external_dbs()
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        return Err(unsupported(format!(
            "it is a clone whose data partly lives in its parents ({}); a byte copy would \
             still depend on them, and flattening a clone is not supported. Copy the parent, or \
             a database the clone's data was compacted into",
            parents.join(", ")
        )));
    }
    if let Some(uri) = manifest.wal_object_store_uri() {
        return Err(unsupported(format!(
            "it keeps its WAL in a separate object store ({uri}), which the copied manifest \
             would still name"
        )));
    }
    let manifest_at = manifest_path(&source.path, checkpoint.manifest_id);
    let bytes = source
        .bounded_store("get manifest", async {
            source.store.main.get(&manifest_at).await?.bytes().await
        })
        .await?;
    let mut items = Vec::new();
    for object in source.pinned_objects(checkpoint.manifest_id).await? {
        let relative =
            relative_to(&object.path, &source.path).ok_or_else(|| EngineError::Corrupt {
                object: object.path.to_string(),
                detail: format!("pinned by {} but not under it", source.path),
            })?;
        let mut at_target = object.clone();
        at_target.path = under(&target.path, &relative)?;
        at_target.etag = None;
        items.push(Item {
            relative,
            source: object,
            target: at_target,
        });
    }
    Ok(Closure {
        checkpoint: checkpoint.clone(),
        manifest_sha256: hex::encode(Sha256::digest(&bytes)),
        manifest: bytes,
        items,
    })
}

async fn copy_pinned(
    source: &Database,
    checkpoint: &CheckpointInfo,
    target: &Database,
    options: &CopyOptions,
    progress: &(dyn Fn(CopyProgress) + Send + Sync),
) -> Result<CopyReport, EngineError> {
    let closure = read_closure(source, checkpoint, target).await?;
    let label = normalized_label(
        options
            .source_label
            .as_deref()
            .unwrap_or(source.path.as_ref()),
    );
    let inventory = Inventory::read(target).await?;
    let state = inventory.classify(target, &label).await?;
    if let TargetState::Copy {
        latest: Some(latest),
    } = state
    {
        if latest > checkpoint.manifest_id {
            return Err(EngineError::TargetNewer {
                path: target.path.to_string(),
                target_manifest: latest,
                source_manifest: checkpoint.manifest_id,
            });
        }
    }
    if let Some(owner) = &options.owner {
        target.claim(owner).await?;
    }
    let result = copy_closure(
        source, target, &closure, &inventory, &label, options, progress,
    )
    .await;
    match result {
        Err(error)
            if error.fault() == Fault::Permanent
                && !is_refusal(&error)
                && options.share.is_none() =>
        {
            tracing::warn!(%error, target = %target.path, "copy failed for good; removing what copies wrote that no complete copy needs");
            match sweep(target, &label).await {
                Ok((removed, complete)) => {
                    tracing::info!(
                        removed,
                        earlier_copy_kept = complete,
                        "copy target cleaned up"
                    );
                    if let (false, Some(owner)) = (complete, &options.owner) {
                        target.release(owner).await?;
                    }
                }
                Err(cleanup) => {
                    tracing::warn!(%cleanup, target = %target.path, "cleaning up the copy target failed")
                }
            }
            Err(error)
        }
        other => other,
    }
}

/// Errors that mean the target is not (only) ours: nothing there may be removed.
fn is_refusal(error: &EngineError) -> bool {
    matches!(
        error,
        EngineError::Diverged { .. }
            | EngineError::TargetNewer { .. }
            | EngineError::TargetOwned { .. }
    )
}

/// Removes what copies wrote at the target that no complete copy references (unfinished work);
/// does nothing to a target that is not only copies of `label`. Returns how many objects it
/// removed and whether a complete copy remains.
async fn sweep(target: &Database, label: &str) -> Result<(usize, bool), EngineError> {
    let inventory = Inventory::read(target).await?;
    inventory.classify(target, label).await?;
    let removed = delete_objects(target, &inventory.unreferenced()).await?;
    let complete = inventory.committed().next().is_some();
    Ok((removed, complete))
}

/// [`sweep`] right after this run committed `manifest_id`, from what the run knows (the target
/// as it was before, and what the run wrote) rather than from a fresh inventory: one listing of
/// the manifests checks that nobody else wrote one meanwhile.
async fn sweep_after_commit(
    target: &Database,
    before: &Inventory,
    manifest_id: u64,
    written: &[String],
) -> Result<usize, EngineError> {
    let directory = target.path.clone().join("manifest");
    let listing = target.store.main.list_with_delimiter(Some(&directory));
    let listing = target.bounded_store("list manifests", listing).await?;
    let foreign = listing.objects.iter().find(|o| {
        let id = o
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".manifest"));
        let id = id.and_then(|id| id.parse::<u64>().ok());
        id.is_some_and(|id| id != manifest_id && !before.manifests.contains(&id))
    });
    if let Some(foreign) = foreign {
        tracing::warn!(manifest = %foreign.location, "another writer wrote a manifest during the copy; leaving the target as it is");
        return Ok(0);
    }
    let unreferenced = before.unreferenced_after(manifest_id, written);
    delete_objects(target, &unreferenced).await
}

/// Where each closure object stands during a copy.
#[derive(Clone, Copy)]
struct Known {
    sha256: [u8; 32],
    /// Read back from the target by this copy or a complete earlier one.
    verified: bool,
}

async fn copy_closure(
    source: &Database,
    target: &Database,
    closure: &Closure,
    inventory: &Inventory,
    label: &str,
    options: &CopyOptions,
    progress: &(dyn Fn(CopyProgress) + Send + Sync),
) -> Result<CopyReport, EngineError> {
    let manifest_id = closure.checkpoint.manifest_id;
    let items = &closure.items;
    let manifest_size = closure.manifest.len() as u64;
    // The objects this run settles: all, or its share (which leaves the manifest to another run).
    let mine: Vec<bool> = items
        .iter()
        .map(|item| options.share.is_none_or(|s| s.includes(&item.source.key)))
        .collect();
    let commits = options.share.is_none();
    let manifest_size = if commits { manifest_size } else { 0 };
    let objects_total = mine.iter().filter(|m| **m).count() as u64 + u64::from(commits);
    let bytes_total = (items.iter().zip(&mine))
        .filter(|(_, m)| **m)
        .map(|(i, _)| i.source.size)
        .sum::<u64>()
        + manifest_size;
    let already_complete = inventory
        .committed()
        .any(|r| r.manifest_id == manifest_id && r.manifest_sha256 == closure.manifest_sha256);

    // Plan: what the target already holds, with a content hash a record vouches for.
    let known_hashes = inventory.known_hashes();
    let kept = inventory.kept();
    let mut known: Vec<Option<Known>> = vec![None; items.len()];
    let mut to_send = Vec::new();
    let resumed = !inventory.journals.is_empty();
    for (index, item) in items.iter().enumerate() {
        let present = inventory.objects.get(&item.relative).copied();
        let recorded = known_hashes
            .get(&item.relative)
            .filter(|(h, _)| h.size == item.source.size && h.key == item.source.key)
            .and_then(|(h, verified)| Some((parse_sha256(&h.sha256)?, *verified)));
        match (present, recorded) {
            (Some(size), Some((sha256, verified))) if size == item.source.size => {
                known[index] = Some(Known { sha256, verified });
            }
            (Some(size), _) if size != item.source.size && kept.contains(&item.relative) => {
                return Err(EngineError::Diverged {
                    path: target.path.to_string(),
                    detail: format!(
                        "{} of an earlier copy is {size} bytes, the source's is {}",
                        item.target.path, item.source.size
                    ),
                });
            }
            _ => to_send.push(index),
        }
    }
    let skipped: Vec<usize> = (0..items.len())
        .filter(|&i| mine[i] && known[i].is_some())
        .collect();
    let manifest_present = commits
        && inventory
            .objects
            .contains_key(&format!("manifest/{manifest_id:020}.manifest"));
    let mut report = CopyReport {
        checkpoint_id: closure.checkpoint.id,
        manifest_id,
        objects_total,
        bytes_total,
        objects_transferred: 0,
        bytes_transferred: 0,
        objects_skipped: skipped.len() as u64 + u64::from(manifest_present),
        bytes_skipped: skipped.iter().map(|&i| items[i].source.size).sum::<u64>()
            + if manifest_present { manifest_size } else { 0 },
        objects_retransmitted: 0,
        bytes_retransmitted: 0,
        objects_read_back: 0,
        blocks_checked: 0,
        content_root: String::new(),
        manifest_sha256: closure.manifest_sha256.clone(),
        already_complete: already_complete && to_send.is_empty(),
        resumed,
        committed: false,
        duration: Duration::ZERO,
    };
    tracing::info!(target = %target.path, total = items.len(), skip = skipped.len(),
        send = to_send.len(), resumed, "copy planned");

    // Transfer each object and read it back (retransmitting what differs), in one pipeline;
    // objects the target holds are only read back when no complete copy verified them.
    let read_back = |k: Option<Known>| match options.verify {
        CopyVerification::Metadata => false,
        CopyVerification::Content => !k.is_some_and(|k| k.verified),
        CopyVerification::Full => true,
    };
    let work: Vec<Work> = (0..items.len())
        .filter(|&index| mine[index])
        .filter_map(|index| {
            let send = known[index].is_none();
            let check = read_back(known[index]);
            (send || check).then_some(Work {
                index,
                send,
                check,
                known: known[index].map(|k| k.sha256),
            })
        })
        .collect();
    let mover = Mover::new(source, target, options);
    let mut journal = Journal::new(target, label, manifest_id, options.journal_batch);
    // A target without a complete copy gets an empty first batch before any data object, so
    // that what is written before the first real batch is recognisably a copy's.
    if work.iter().any(|w| w.send) && inventory.committed().next().is_none() {
        journal.start().await?;
    }
    let mut touched = vec![false; items.len()];
    for w in &work {
        touched[w.index] = true;
    }
    let untouched: Vec<usize> = (0..items.len())
        .filter(|&i| mine[i] && !touched[i])
        .collect();
    let untouched_bytes: u64 = untouched.iter().map(|&i| items[i].source.size).sum();
    let copy_progress = |journal: &Journal| CopyProgress {
        phase: CopyPhase::Transfer,
        objects_done: untouched.len() as u64 + journal.recorded,
        objects_total,
        bytes_done: untouched_bytes + journal.recorded_bytes,
        bytes_total,
    };
    progress(copy_progress(&journal));
    let stop = AtomicBool::new(false);
    let mut settled = settle_all(&mover, items, &work, options.max_retransmissions, &stop);
    let mut mismatches = Vec::new();
    while let Some(result) = settled.next().await {
        let recorded = match result {
            Ok((work, outcome)) => {
                let item = &items[work.index];
                report.objects_read_back += u64::from(outcome.read_back);
                report.blocks_checked += outcome.blocks;
                if work.send {
                    report.objects_transferred += 1;
                    report.bytes_transferred += item.source.size;
                }
                if outcome.retransmissions > 0 {
                    report.objects_retransmitted += 1;
                    report.bytes_retransmitted += item.source.size;
                }
                if let Some(why) = outcome.mismatch {
                    mismatches.push(format!("{} ({why})", item.target.path));
                    continue;
                }
                let settled = Known {
                    sha256: outcome.sha256,
                    verified: outcome.verified,
                };
                known[work.index] = Some(settled);
                journal.add(object_hash(item, settled)).await
            }
            Err(error) => Err(error),
        };
        match recorded {
            Ok(true) => progress(copy_progress(&journal)),
            Ok(false) => {}
            Err(error) => return Err(drain(&stop, settled, error).await),
        }
    }
    drop(settled);
    if journal.flush().await? {
        progress(copy_progress(&journal));
    }
    if !mismatches.is_empty() {
        mismatches.sort();
        return Err(EngineError::ChecksumMismatch {
            path: target.path.to_string(),
            objects: mismatches,
            rounds: options.max_retransmissions,
        });
    }
    if !commits {
        // The share's objects are settled and journalled; the commit is another run's.
        return Ok(report);
    }

    // The content root, over what the target now holds (as read back, or as sent).
    let mut hashes = Vec::with_capacity(items.len());
    let mut leaves = Vec::with_capacity(items.len());
    for (item, known) in items.iter().zip(&known) {
        let known = known.ok_or_else(|| EngineError::Corrupt {
            object: item.target.path.to_string(),
            detail: "neither transferred nor found at the target".into(),
        })?;
        hashes.push(object_hash(item, known));
        leaves.push((item.source.key.clone(), known.sha256));
    }
    leaves.sort();
    report.content_root = hex::encode(merkle_root(&leaves));

    crash_point("copy-transferred");
    // Commit: the record, then the manifest, last.
    progress(CopyProgress {
        phase: CopyPhase::Commit,
        objects_done: objects_total - 1,
        objects_total,
        bytes_done: bytes_total - manifest_size,
        bytes_total,
    });
    let record = CommitRecord::new(
        label.to_string(),
        closure.checkpoint.id,
        manifest_id,
        &closure.manifest,
        report.content_root.clone(),
        hashes,
    );
    create_record(
        target,
        &commit_path(&target.path, manifest_id)?,
        &record,
        |existing, ours| {
            existing.manifest_sha256 == ours.manifest_sha256
                && normalized_label(&existing.source) == normalized_label(&ours.source)
        },
    )
    .await?;
    crash_point("copy-recorded");
    let manifest_at = manifest_path(&target.path, manifest_id);
    match create_object(target, &manifest_at, closure.manifest.clone()).await? {
        None => {
            report.objects_transferred += 1;
            report.bytes_transferred += manifest_size;
        }
        Some(existing) if hex::encode(Sha256::digest(&existing)) == closure.manifest_sha256 => {}
        Some(_) => {
            return Err(EngineError::Diverged {
                path: target.path.to_string(),
                detail: format!("{manifest_at} was written by someone else during the copy"),
            })
        }
    }
    crash_point("copy-committed");
    // Committed: what is left of unfinished work (journals, objects of interrupted runs no
    // complete copy needs, such as WAL objects a writer would replay) goes.
    let written: Vec<String> = closure
        .items
        .iter()
        .map(|i| i.relative.clone())
        .chain(journal.written.iter().cloned())
        .collect();
    match sweep_after_commit(target, inventory, manifest_id, &written).await {
        Ok(removed) if removed > 0 => {
            tracing::debug!(
                removed,
                "removed the copy's journals and unreferenced objects"
            )
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, target = %target.path, "the copy is committed, but removing its journals failed")
        }
    }
    report.committed = true;
    progress(CopyProgress {
        phase: CopyPhase::Done,
        objects_done: objects_total,
        objects_total,
        bytes_done: bytes_total,
        bytes_total,
    });
    Ok(report)
}

fn object_hash(item: &Item, known: Known) -> ObjectHash {
    ObjectHash {
        key: item.source.key.clone(),
        path: item.relative.clone(),
        size: item.source.size,
        sha256: hex::encode(known.sha256),
        verified: known.verified,
    }
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// What to do with one object of the closure.
#[derive(Clone, Copy, Debug)]
struct Work {
    index: usize,
    /// Transfer it (it is not at the target, or no record vouches for it).
    send: bool,
    /// Read it back from the target afterwards.
    check: bool,
    /// Its content hash, when a record at the target names it.
    known: Option<[u8; 32]>,
}

/// Settles each piece of `work`, as many at once as the copy's parallelism, each in a task of its
/// own (aborted when the stream is dropped, so a cancelled copy stops); yields each finished one
/// with its outcome. Once `stop` is set no further object starts.
fn settle_all<'a>(
    mover: &'a Mover,
    items: &'a [Item],
    work: &'a [Work],
    max_retransmissions: u32,
    stop: &'a AtomicBool,
) -> impl futures::Stream<Item = Result<(Work, Settled), EngineError>> + 'a {
    futures::stream::iter(work.iter().copied())
        .take_while(move |_| std::future::ready(!stop.load(Ordering::SeqCst)))
        .map(move |work| {
            let mover = mover.clone();
            let item = &items[work.index];
            let object = ObjectMove {
                from: item.source.path.clone(),
                to: item.target.path.clone(),
                size: item.source.size,
            };
            let at_target = item.target.clone();
            let task = AbortOnDrop(tokio::spawn(in_retry_scope_of_caller(async move {
                settle(&mover, &object, &at_target, work, max_retransmissions).await
            })));
            async move {
                let outcome = task.await.map_err(|e| EngineError::Store {
                    operation: "copy object",
                    source: object_store::Error::JoinError { source: e },
                })??;
                Ok((work, outcome))
            }
        })
        .buffer_unordered(mover.parallelism)
}

/// How one object ended up.
#[derive(Debug)]
struct Settled {
    /// Its content hash: as read from the source when sent, else the recorded one.
    sha256: [u8; 32],
    /// Read back from the target and found equal.
    verified: bool,
    retransmissions: u32,
    read_back: u32,
    blocks: u64,
    /// What was still wrong after every retransmission.
    mismatch: Option<String>,
}

/// Transfers the object (if asked), then reads it back (if asked; sha256 and SST block CRCs, by
/// the fingerprint code) and transfers it again while it differs, at most `max_retransmissions`
/// times.
async fn settle(
    mover: &Mover,
    object: &ObjectMove,
    at_target: &PinnedObject,
    work: Work,
    max_retransmissions: u32,
) -> Result<Settled, EngineError> {
    let mut settled = Settled {
        sha256: work.known.unwrap_or_default(),
        verified: false,
        retransmissions: 0,
        read_back: 0,
        blocks: 0,
        mismatch: None,
    };
    let mut send = work.send;
    loop {
        if send {
            let sha256 = mover.transfer(object).await?;
            if settled.retransmissions > 0 && sha256 != settled.sha256 {
                tracing::warn!(object = %object.from, "the source object hashes differently than when it was first read");
            }
            settled.sha256 = sha256;
        }
        if !work.check {
            return Ok(settled);
        }
        settled.read_back += 1;
        let problem = match mover.read_back(at_target).await {
            Ok((sha256, blocks)) => {
                settled.blocks += blocks;
                (sha256 != settled.sha256).then(|| "its content differs from the source's".into())
            }
            Err(EngineError::Corrupt { detail, .. }) => Some(detail),
            Err(error) => return Err(error),
        };
        let Some(why) = problem else {
            settled.verified = true;
            return Ok(settled);
        };
        if settled.retransmissions >= max_retransmissions {
            settled.mismatch = Some(why);
            return Ok(settled);
        }
        tracing::warn!(object = %at_target.path, %why, "an object failed verification; transferring it again");
        settled.retransmissions += 1;
        send = true;
    }
}

/// After a failure: starts no further transfer and waits for those in flight (so that none
/// lands after a cleanup), then returns the failure.
async fn drain<S>(stop: &AtomicBool, mut transfers: S, error: EngineError) -> EngineError
where
    S: futures::Stream + Unpin,
{
    stop.store(true, Ordering::SeqCst);
    while transfers.next().await.is_some() {}
    error
}

/// A task that is aborted when its handle is dropped, so that a cancelled copy stops transferring.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// How long finished objects may wait before they are journalled.
const JOURNAL_INTERVAL: Duration = Duration::from_secs(1);

/// The journal of one run: batches of finished objects written at the target.
struct Journal<'a> {
    target: &'a Database,
    source: &'a str,
    manifest_id: u64,
    run: String,
    batch: usize,
    seq: u32,
    pending: Vec<ObjectHash>,
    last_flush: Instant,
    /// Objects and bytes recorded so far.
    recorded: u64,
    recorded_bytes: u64,
    /// The journal objects written (relative paths).
    written: Vec<String>,
}

impl<'a> Journal<'a> {
    fn new(target: &'a Database, source: &'a str, manifest_id: u64, batch: usize) -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = format!(
            "{:013x}{:05x}{:04x}",
            chrono::Utc::now().timestamp_micros(),
            std::process::id() & 0xfffff,
            RUNS.fetch_add(1, Ordering::Relaxed) & 0xffff
        );
        Journal {
            target,
            source,
            manifest_id,
            run,
            batch: batch.max(1),
            seq: 0,
            pending: Vec::new(),
            last_flush: Instant::now(),
            recorded: 0,
            recorded_bytes: 0,
            written: Vec::new(),
        }
    }

    /// Writes an empty batch: the target is a copy's before any data is written.
    async fn start(&mut self) -> Result<(), EngineError> {
        self.write(Vec::new()).await
    }

    /// Adds a finished object; returns whether a batch was written.
    async fn add(&mut self, object: ObjectHash) -> Result<bool, EngineError> {
        self.pending.push(object);
        if self.pending.len() >= self.batch || self.last_flush.elapsed() >= JOURNAL_INTERVAL {
            return self.flush().await;
        }
        Ok(false)
    }

    async fn flush(&mut self) -> Result<bool, EngineError> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let objects = std::mem::take(&mut self.pending);
        let (count, bytes) = (
            objects.len() as u64,
            objects.iter().map(|o| o.size).sum::<u64>(),
        );
        self.write(objects).await?;
        self.recorded += count;
        self.recorded_bytes += bytes;
        Ok(true)
    }

    async fn write(&mut self, objects: Vec<ObjectHash>) -> Result<(), EngineError> {
        let batch = JournalBatch::new(self.source, self.manifest_id, &self.run, objects);
        let body =
            serde_json::to_vec(&batch).map_err(|e| EngineError::StoreConfig(e.to_string()))?;
        let path = journal_path(&self.target.path, self.manifest_id, &self.run, self.seq)?;
        self.target
            .bounded_store(
                "write copy journal",
                self.target.store.main.put(&path, body.into()),
            )
            .await?;
        self.written.extend(relative_to(&path, &self.target.path));
        self.seq += 1;
        self.last_flush = Instant::now();
        Ok(())
    }
}
