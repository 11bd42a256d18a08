//! Deleting a copy: every object under its path, unless something made after the copy depends on
//! it (a clone of it, a checkpoint of the promoted database).

use super::records::{delete_objects, Inventory};
use crate::engine::{CheckpointInfo, Database, EngineError, Owner};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

/// What [`delete_copy`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyDeletion {
    /// Every object under the path is gone (this many were deleted).
    Deleted(usize),
    /// Nothing was deleted: these checkpoints, made after the copy, depend on its data.
    Held(Vec<CheckpointInfo>),
    /// The target belongs to someone else; it was not touched.
    NotOwned(Owner),
    /// No one claimed the target (the copy never started writing): nothing there is the
    /// caller's, and it was not touched.
    Unclaimed,
}

/// Deletes the copy at `target` that `owner` claimed. A copy's objects are all its own (it
/// references nothing of its source), so every object under the path goes — unless its manifest
/// holds a live checkpoint that the copied manifest did not bring along: one made by a clone of the
/// copy, or by a user of the promoted database. The checkpoints inherited from the source pin
/// nothing anyone else needs here.
pub async fn delete_copy(
    target: &Database,
    owner: &Owner,
    now: DateTime<Utc>,
) -> Result<CopyDeletion, EngineError> {
    match target.owner().await? {
        Some(existing) if existing.uid == owner.uid => {}
        Some(existing) => return Ok(CopyDeletion::NotOwned(existing)),
        None => return Ok(CopyDeletion::Unclaimed),
    }
    let inventory = Inventory::read(target).await?;
    let inherited: BTreeSet<String> = match &inventory.promotion {
        // Promotion deleted the inherited checkpoints; any there now are the database's own.
        Some(_) => BTreeSet::new(),
        None => match inventory.committed().last() {
            Some(record) => inherited_checkpoints(target, record.manifest_id).await?,
            None => BTreeSet::new(),
        },
    };
    let held = target
        .holders(now, |c| inherited.contains(&c.id.to_string()))
        .await?;
    if !held.is_empty() {
        return Ok(CopyDeletion::Held(held));
    }
    let everything: Vec<String> = inventory.objects.keys().cloned().collect();
    let deleted = delete_objects(target, &everything).await?;
    target.release(owner).await?;
    tracing::info!(target = %target.path, deleted, "copy deleted");
    Ok(CopyDeletion::Deleted(deleted))
}

/// The checkpoint ids of the manifest a copy committed (its source's, as copied).
async fn inherited_checkpoints(
    target: &Database,
    manifest_id: u64,
) -> Result<BTreeSet<String>, EngineError> {
    let manifest = target.pinned_manifest(manifest_id).await?;
    Ok(manifest
        .checkpoints()
        .iter()
        .map(|c| c.id.to_string())
        .collect())
}
