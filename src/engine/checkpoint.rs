//! Checkpoint operations on one database, each SlateDB call bounded by the database's timeout.

use super::error::EngineError;
use super::manifest_writes::lock_manifest_writes;
use super::Database;
use chrono::{DateTime, Utc};
use slatedb::config::CheckpointOptions;
use slatedb::Checkpoint;
use std::time::Duration;
use uuid::Uuid;

/// A SlateDB checkpoint as the operator reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub id: Uuid,
    pub manifest_id: u64,
    pub name: Option<String>,
    pub create_time: DateTime<Utc>,
    pub expire_time: Option<DateTime<Utc>>,
}

impl From<&Checkpoint> for CheckpointInfo {
    fn from(c: &Checkpoint) -> Self {
        CheckpointInfo {
            id: c.id,
            manifest_id: c.manifest_id,
            name: c.name.clone(),
            create_time: c.create_time,
            expire_time: c.expire_time,
        }
    }
}

/// What a checkpoint includes of its database's writes. A detached checkpoint pins the last
/// manifest the writer wrote: durable writes still only in WAL objects beyond that manifest are
/// not in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// The writer's clock at the newest write flushed to L0 in the pinned manifest (writes in the
    /// WAL objects it pins may be a little newer).
    pub last_l0_write: Option<DateTime<Utc>>,
    /// WAL objects that existed when the checkpoint was made (to the second) but lie beyond what it
    /// pins.
    pub wal_objects_not_included: u64,
}

/// Whether [`Database::obtain_checkpoint`] made a new checkpoint or found the one it made before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obtained {
    Created,
    Adopted,
}

/// Picks an existing checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointSelector {
    Id(Uuid),
    Name(String),
}

impl std::fmt::Display for CheckpointSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointSelector::Id(id) => write!(f, "with id {id}"),
            CheckpointSelector::Name(name) => write!(f, "named {name:?}"),
        }
    }
}

/// What a database's latest manifest says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbDescription {
    pub initialized: bool,
    pub manifest_id: u64,
    pub sst_count: usize,
    pub wal_count: u64,
    pub checkpoint_count: usize,
    pub external_db_count: usize,
}

impl Database {
    /// What `checkpoint` covers: its manifest's last L0 write, and the WAL objects written no later
    /// than the checkpoint that it does not pin (durable writes it misses).
    pub async fn coverage(&self, checkpoint: &CheckpointInfo) -> Result<Coverage, EngineError> {
        let manifest = self.pinned_manifest(checkpoint.manifest_id).await?;
        let tick = manifest.last_l0_clock_tick();
        // The default clock counts milliseconds since the epoch; anything else is not a time.
        let plausible = DateTime::from_timestamp_millis(tick).filter(|t| {
            t.timestamp() > 946_684_800 && *t <= checkpoint.create_time + chrono::TimeDelta::days(1)
        });
        let objects = self.wal_objects().await?;
        let first_not_pinned = manifest.next_wal_sst_id();
        // The manifest keeps a checkpoint's creation time in whole seconds.
        let made_by = checkpoint.create_time + chrono::TimeDelta::seconds(1);
        let wal_objects_not_included = objects
            .iter()
            .filter(|o| o.last_modified < made_by)
            .filter_map(|o| {
                o.location
                    .filename()?
                    .strip_suffix(".sst")?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|id| *id >= first_not_pinned)
            .count() as u64;
        Ok(Coverage {
            last_l0_write: plausible,
            wal_objects_not_included,
        })
    }

    pub async fn describe(&self) -> Result<DbDescription, EngineError> {
        self.probe().await?;
        let manifest = self.latest_manifest().await?;
        Ok(DbDescription {
            initialized: manifest.initialized(),
            manifest_id: manifest.id(),
            sst_count: manifest.all_sst_views().count(),
            wal_count: manifest
                .next_wal_sst_id()
                .saturating_sub(manifest.replay_after_wal_id() + 1),
            checkpoint_count: manifest.checkpoints().len(),
            external_db_count: manifest.external_dbs().len(),
        })
    }

    pub async fn list_checkpoints(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<CheckpointInfo>, EngineError> {
        let all = self
            .bounded("list_checkpoints", self.admin().list_checkpoints(name))
            .await?;
        Ok(all.iter().map(CheckpointInfo::from).collect())
    }

    /// Returns the checkpoint named `name`, creating a detached one of the latest manifest when
    /// none exists. The name is deterministic per Kubernetes object, so a crash between creating the
    /// checkpoint and recording it leaves nothing orphaned: the next call adopts it.
    pub async fn obtain_checkpoint(
        &self,
        name: &str,
        lifetime: Option<Duration>,
    ) -> Result<(CheckpointInfo, Obtained), EngineError> {
        self.probe().await?;
        let existing = self.list_checkpoints(Some(name)).await?;
        if let Some(found) = existing.into_iter().max_by_key(|c| c.create_time) {
            return Ok((found, Obtained::Adopted));
        }
        let _writing = lock_manifest_writes(&[self]).await;
        let checked = self.ensure_manifest_preserved().await?;
        let options = CheckpointOptions {
            lifetime,
            source: None,
            name: Some(name.to_string()),
        };
        let created = self
            .bounded(
                "create_detached_checkpoint",
                self.admin().create_detached_checkpoint(&options),
            )
            .await?;
        self.confirm_manifest_preserved(checked).await?;
        let info = self
            .find_checkpoint(&CheckpointSelector::Id(created.id))
            .await?;
        Ok((info, Obtained::Created))
    }

    /// Finds one existing checkpoint by id or by (unique) name.
    pub async fn find_checkpoint(
        &self,
        selector: &CheckpointSelector,
    ) -> Result<CheckpointInfo, EngineError> {
        let missing = || EngineError::CheckpointMissing {
            path: self.path.to_string(),
            selector: selector.to_string(),
        };
        match selector {
            CheckpointSelector::Id(id) => {
                let all = self.list_checkpoints(None).await?;
                all.into_iter().find(|c| c.id == *id).ok_or_else(missing)
            }
            CheckpointSelector::Name(name) => {
                let mut matching = self.list_checkpoints(Some(name)).await?;
                match matching.len() {
                    0 => Err(missing()),
                    1 => Ok(matching.remove(0)),
                    count => Err(EngineError::CheckpointAmbiguous {
                        path: self.path.to_string(),
                        name: name.clone(),
                        count,
                    }),
                }
            }
        }
    }

    /// Sets the checkpoint's expiry to now + `lifetime`, or to never.
    pub async fn refresh_checkpoint(
        &self,
        id: Uuid,
        lifetime: Option<Duration>,
    ) -> Result<CheckpointInfo, EngineError> {
        let _writing = lock_manifest_writes(&[self]).await;
        let checked = self.ensure_manifest_preserved().await?;
        self.bounded(
            "refresh_checkpoint",
            self.admin().refresh_checkpoint(id, lifetime),
        )
        .await?;
        self.confirm_manifest_preserved(checked).await?;
        self.find_checkpoint(&CheckpointSelector::Id(id)).await
    }

    /// Deletes the checkpoint; returns whether it existed. SlateDB writes a manifest version even for
    /// an absent id, so the listing comes first.
    pub async fn delete_checkpoint(&self, id: Uuid) -> Result<bool, EngineError> {
        let exists = self
            .list_checkpoints(None)
            .await?
            .iter()
            .any(|c| c.id == id);
        if exists {
            let _writing = lock_manifest_writes(&[self]).await;
            let checked = self.ensure_manifest_preserved().await?;
            self.bounded("delete_checkpoint", self.admin().delete_checkpoint(id))
                .await?;
            self.confirm_manifest_preserved(checked).await?;
        }
        Ok(exists)
    }
}
