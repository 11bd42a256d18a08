//! What the checkpoint controller reads: the SlateDB checkpoint (found, made or adopted, and
//! fingerprinted when needed) and the DatabaseClones that depend on it.

use super::decide::{Dependents, Observation};
use crate::api::conditions::{INITIALIZED, READY, STALLED};
use crate::api::{
    AdoptCheckpoint, CheckpointSourceMode, ChecksumMode, DatabaseCheckpoint, DatabaseClone,
};
use crate::controller::conditions::is_true;
use crate::controller::stores::{open_store, PathUse};
use crate::controller::{Context, Outcome, Problem};
use crate::engine::{
    crash_point, CheckpointSelector, Database, EngineError, HealthRounds, Obtained,
};
use chrono::Utc;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use std::time::Duration;

/// A checkpoint that in-progress clones depend on is kept alive at least this long.
const DEPENDENT_GRACE: Duration = Duration::from_secs(600);

/// The name under which the operator creates `object`'s SlateDB checkpoint: deterministic, so a
/// retry finds its own work.
pub(super) fn own_checkpoint_name(object: &DatabaseCheckpoint) -> String {
    format!(
        "k8s:{}/{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any(),
        object.uid().unwrap_or_default()
    )
}

/// Opens the object's database, or says why it cannot.
pub(super) async fn open_database(object: &DatabaseCheckpoint, ctx: &Context) -> Outcome<Database> {
    let namespace = object.namespace().unwrap_or_default();
    let path = &object.spec.database.path.0;
    let store = open_store(
        ctx,
        &namespace,
        &object.spec.database.store,
        &[PathUse::Read(path)],
    )
    .await?;
    Ok(store.map(|store| Database::new(store, path, ctx.settings.admin_timeout)))
}

/// Finds or makes the SlateDB checkpoint and fingerprints it when needed.
pub(super) async fn observe(
    object: &DatabaseCheckpoint,
    db: &Database,
    dependents: &Dependents,
    health: Option<&HealthRounds>,
) -> Observation {
    match observe_checkpoint(object, db, dependents, health).await {
        Ok(observation) => observation,
        Err(error) => Observation::Failed(Problem::from(&error)),
    }
}

async fn observe_checkpoint(
    object: &DatabaseCheckpoint,
    db: &Database,
    dependents: &Dependents,
    health: Option<&HealthRounds>,
) -> Result<Observation, EngineError> {
    let status = object.status.clone().unwrap_or_default();
    let lifetime = object
        .spec
        .lifetime
        .as_ref()
        .map(|d| d.to_std())
        .transpose()
        .map_err(|message| EngineError::StoreConfig(format!("spec.lifetime: {message}")))?;
    let recorded = status
        .checkpoint_id
        .as_deref()
        .and_then(|id| id.parse().ok());
    let (mut checkpoint, obtained) = match (recorded, object.spec.source.mode) {
        (Some(id), _) => (db.find_checkpoint(&CheckpointSelector::Id(id)).await?, None),
        (None, CheckpointSourceMode::Create) => {
            let (checkpoint, obtained) = db
                .obtain_checkpoint(&own_checkpoint_name(object), lifetime)
                .await?;
            if obtained == Obtained::Created {
                tracing::info!(checkpoint = %checkpoint.id, "created SlateDB checkpoint");
                crash_point("after-checkpoint-create");
            }
            (checkpoint, Some(obtained))
        }
        (None, CheckpointSourceMode::Adopt) => {
            let selector = adopted(object.spec.source.adopt.as_ref(), db)?;
            (
                db.find_checkpoint(&selector).await?,
                Some(Obtained::Adopted),
            )
        }
    };
    // Never let a checkpoint expire under clones that are still being made from it.
    if !dependents.in_progress.is_empty() {
        if let Some(expires) = checkpoint.expire_time {
            if expires < Utc::now() + DEPENDENT_GRACE {
                checkpoint = db
                    .refresh_checkpoint(checkpoint.id, Some(DEPENDENT_GRACE))
                    .await?;
            }
        }
    }
    let want_content = object.spec.checksum == ChecksumMode::Content;
    let recorded_fingerprint_applies = status.checkpoint_id.as_deref()
        == Some(checkpoint.id.to_string().as_str())
        && status
            .checksum
            .as_ref()
            .is_some_and(|c| !want_content || c.content_root.is_some());
    let (fingerprint, coverage) = if recorded_fingerprint_applies {
        (None, None)
    } else {
        (
            Some(db.fingerprint(checkpoint.manifest_id, want_content).await?),
            Some(db.coverage(&checkpoint).await?),
        )
    };
    // A checkpoint already Ready: is everything it pins still there?
    let was_ready = is_true(&status.conditions, READY) && obtained.is_none();
    let recheck_in = match health {
        Some(rounds) if was_ready => {
            db.check_checkpoint_health(checkpoint.manifest_id, rounds)
                .await?;
            Some(rounds.until_next_round())
        }
        Some(rounds) => Some(rounds.until_next_round()),
        None => None,
    };
    Ok(Observation::Present {
        checkpoint,
        obtained,
        fingerprint,
        recheck_in,
        coverage,
    })
}

/// The checkpoint `spec.source.adopt` names.
fn adopted(
    adopt: Option<&AdoptCheckpoint>,
    db: &Database,
) -> Result<CheckpointSelector, EngineError> {
    match adopt.map(|a| (a.id.as_ref(), a.name.as_ref())) {
        Some((Some(id), _)) => {
            id.parse()
                .map(CheckpointSelector::Id)
                .map_err(|_| EngineError::CheckpointMissing {
                    path: db.path().to_string(),
                    selector: format!("with id {id:?} (not a UUID)"),
                })
        }
        Some((None, Some(name))) => Ok(CheckpointSelector::Name(name.clone())),
        _ => Err(EngineError::StoreConfig(
            "spec.source.adopt needs an id or a name".into(),
        )),
    }
}

/// How fresh the count of a checkpoint's clones must be.
pub(super) enum Freshness {
    /// The watch cache will do (status and protection while the checkpoint lives: a clone it has
    /// not seen yet wakes the checkpoint when it arrives).
    Cached,
    /// A LIST now (before the checkpoint's data goes).
    Now,
}

/// The DatabaseClones of the object's namespace that reference it.
pub(super) async fn dependents_of(
    object: &DatabaseCheckpoint,
    ctx: &Context,
    freshness: Freshness,
) -> Result<Dependents, kube::Error> {
    let namespace = object.namespace().unwrap_or_default();
    let cached = match freshness {
        Freshness::Cached => ctx.cached_clones(&namespace).await,
        Freshness::Now => None,
    };
    let clones: Vec<std::sync::Arc<DatabaseClone>> = match cached {
        Some(clones) => clones,
        None => Api::<DatabaseClone>::namespaced(ctx.client.clone(), &namespace)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(std::sync::Arc::new)
            .collect(),
    };
    let name = object.name_any();
    let mut dependents = Dependents::default();
    for clone in clones
        .iter()
        .filter(|c| c.source_checkpoint().as_deref() == Some(name.as_str()))
    {
        dependents.total += 1;
        let status = clone.recorded_status();
        let conditions = status.as_ref().map_or(&[][..], |s| s.conditions.as_slice());
        let settled = is_true(conditions, INITIALIZED) || is_true(conditions, STALLED);
        if !settled && clone.metadata.deletion_timestamp.is_none() {
            dependents.in_progress.push(clone.name_any());
        }
    }
    Ok(dependents)
}
