//! Promotion: a copy becomes an independent, writable database.
//!
//! A byte copy keeps its source's manifest, and with it the source's checkpoint list: entries
//! that point at manifest versions which exist only at the source. A SlateDB writer's garbage
//! collector reads every manifest a checkpoint names, so a writer must not run on a copy until
//! those are gone. [`promote_copy`] deletes them through SlateDB's own `Admin::delete_checkpoint`
//! (each deletion writes one new manifest version: the only manifest writes), after removing any
//! unfinished copy work a writer would otherwise pick up (WAL objects past the copy's manifest
//! are replayed by a writer that opens it). From then on the target is no longer a copy: a
//! later copy to it is refused as `Diverged`.

use super::super::error::EngineError;
use super::super::ownership::Owner;
use super::super::Database;
use super::records::{
    create_record, delete_objects, promotion_path, Inventory, Promotion, TargetState,
};
use uuid::Uuid;

/// What a promotion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromoteReport {
    /// The copy's manifest that was promoted.
    pub copy_manifest_id: u64,
    /// Inherited checkpoints deleted by this call (none when an earlier call already did).
    pub checkpoints_deleted: Vec<Uuid>,
    /// Objects of unfinished copies removed first.
    pub objects_removed: usize,
    /// The database's latest manifest afterwards.
    pub manifest_id: u64,
}

/// Promotes the complete copy at `target` (see the module doc). Idempotent: a promotion that was
/// interrupted finishes, one that finished does nothing.
pub async fn promote_copy(
    target: &Database,
    owner: Option<&Owner>,
) -> Result<PromoteReport, EngineError> {
    target.probe().await?;
    target.ensure_not_owned_by_another(owner).await?;
    let inventory = Inventory::read(target).await?;
    let mut objects_removed = 0;
    let promotion = match &inventory.promotion {
        Some(promotion) => promotion.clone(),
        None => {
            let label = inventory
                .committed()
                .last()
                .map(|r| r.source.clone())
                .unwrap_or_default();
            let TargetState::Copy {
                latest: Some(latest),
            } = inventory.classify(target, &label).await?
            else {
                return Err(EngineError::NotADatabase {
                    path: target.path.to_string(),
                });
            };
            objects_removed = delete_objects(target, &inventory.unreferenced()).await?;
            let manifest = target.latest_manifest().await?;
            if manifest.id() != latest {
                return Err(EngineError::Diverged {
                    path: target.path.to_string(),
                    detail: format!(
                        "its latest manifest is {}, not the copy's {latest}",
                        manifest.id()
                    ),
                });
            }
            let promotion = Promotion::new(
                latest,
                manifest
                    .checkpoints()
                    .iter()
                    .map(|c| c.id.to_string())
                    .collect(),
            );
            // Another promotion may have raced this one: the first record stands.
            let path = promotion_path(&target.path)?;
            if !create_record(target, &path, &promotion, |a, b| {
                a.manifest_id == b.manifest_id
            })
            .await?
            {
                tracing::info!(target = %target.path, "resuming a promotion");
            }
            promotion
        }
    };
    let mut checkpoints_deleted = Vec::new();
    for id in &promotion.checkpoints {
        let id = Uuid::parse_str(id).map_err(|e| EngineError::Corrupt {
            object: format!("{}/promoted.json", target.path),
            detail: format!("checkpoint id {id:?}: {e}"),
        })?;
        if target.delete_checkpoint(id).await? {
            checkpoints_deleted.push(id);
        }
    }
    let manifest_id = target.latest_manifest().await?.id();
    tracing::info!(target = %target.path, deleted = checkpoints_deleted.len(), manifest_id,
        "copy promoted into an independent database");
    Ok(PromoteReport {
        copy_manifest_id: promotion.manifest_id,
        checkpoints_deleted,
        objects_removed,
        manifest_id,
    })
}
