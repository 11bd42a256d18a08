//! Lineage: what a database depends on (the parents its manifest references) and what depends on
//! it (the checkpoints in its manifest: every clone leaves a final one, every DatabaseCheckpoint
//! one). A database that others depend on is never deleted.

use super::checkpoint::CheckpointInfo;
use super::error::EngineError;
use super::Database;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A parent of a clone: a database whose objects the clone's manifest references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLink {
    pub path: String,
    /// The parent's checkpoint the clone was made from.
    pub source_checkpoint_id: Uuid,
    /// The checkpoint the clone holds on the parent to keep those objects alive.
    pub final_checkpoint_id: Option<Uuid>,
}

impl From<&slatedb::manifest::ExternalDb> for ParentLink {
    fn from(e: &slatedb::manifest::ExternalDb) -> Self {
        ParentLink {
            path: e.path.clone(),
            source_checkpoint_id: e.source_checkpoint_id,
            final_checkpoint_id: e.final_checkpoint_id,
        }
    }
}

impl Database {
    /// The checkpoints that keep this database's data needed by others: every one that has not
    /// expired at `now`, except those `is_own` says belong to the caller and the unnamed ones with
    /// an expiry. Those are the database's own short-lived guards (SlateDB's compactor protects
    /// in-flight reads for 15 minutes with one, its clone builder for 5 with another); a clone,
    /// once made, holds an unnamed checkpoint without expiry. None for a path without a database.
    pub async fn holders(
        &self,
        now: DateTime<Utc>,
        is_own: impl Fn(&CheckpointInfo) -> bool,
    ) -> Result<Vec<CheckpointInfo>, EngineError> {
        let Some(manifest) = self.try_latest_manifest().await? else {
            return Ok(Vec::new());
        };
        Ok(manifest
            .checkpoints()
            .iter()
            .map(CheckpointInfo::from)
            .filter(|c| c.expire_time.is_none_or(|at| at > now))
            .filter(|c| c.name.is_some() || c.expire_time.is_none())
            .filter(|c| !is_own(c))
            .collect())
    }

    /// The databases this one's latest manifest references.
    pub async fn parents(&self) -> Result<Vec<ParentLink>, EngineError> {
        let Some(manifest) = self.try_latest_manifest().await? else {
            return Ok(Vec::new());
        };
        Ok(manifest
            .external_dbs()
            .iter()
            .map(ParentLink::from)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sample::{sample_row, write_sample_db};
    use crate::engine::{
        initialize_clone, CloneConfig, CloneSourceCheckpoint, RetryPolicy, Store, StoreConfig,
        Verification,
    };
    use std::time::Duration;

    #[tokio::test]
    async fn a_clone_of_a_clone_is_a_holder_of_its_parent_and_names_both_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        })
        .unwrap();
        write_sample_db(&store, "prod", 300, 1).await.unwrap();
        let db = |path: &str| Database::new(store.clone(), path, Duration::from_secs(20));
        let clone = |source: &str, checkpoint: Uuid, target: &str| CloneConfig {
            store: store.clone(),
            source_path: source.into(),
            source_checkpoint: CloneSourceCheckpoint::Id(checkpoint),
            key_range: None,
            target_path: target.into(),
            verify: Verification::Metadata,
            admin_timeout: Duration::from_secs(20),
            retry: RetryPolicy::default(),
            owner: None,
        };
        let (nightly, _) = db("prod").obtain_checkpoint("nightly", None).await.unwrap();
        initialize_clone(clone("prod", nightly.id, "c1"), |_| {})
            .await
            .unwrap();
        assert!(db("c1")
            .holders(Utc::now(), |_| false)
            .await
            .unwrap()
            .is_empty());
        // The application writes rows of its own into c1, then c1 is checkpointed and cloned.
        let writer = slatedb::Db::builder("c1", store.main.clone())
            .build()
            .await
            .unwrap();
        writer.put(b"only-in-c1", b"1").await.unwrap();
        writer.flush().await.unwrap();
        writer.close().await.unwrap();
        let (snap, _) = db("c1")
            .obtain_checkpoint("k8s:team/c1-snap/u", None)
            .await
            .unwrap();
        let report = initialize_clone(clone("c1", snap.id, "c2"), |_| {})
            .await
            .unwrap();
        let parents: Vec<&str> = report.parents.iter().map(|p| p.path.as_str()).collect();
        assert!(
            parents.contains(&"prod") && parents.contains(&"c1"),
            "{parents:?}"
        );
        assert!(report
            .parents
            .iter()
            .all(|p| p.final_checkpoint_id.is_some()));
        assert_eq!(db("c2").parents().await.unwrap(), report.parents);

        let final_on_c1 = report
            .parents
            .iter()
            .find(|p| p.path == "c1")
            .and_then(|p| p.final_checkpoint_id)
            .unwrap();
        let holders: Vec<Uuid> = db("c1")
            .holders(Utc::now(), |_| false)
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert!(
            holders.contains(&final_on_c1) && holders.contains(&snap.id),
            "{holders:?}"
        );
        let without_snap = db("c1")
            .holders(Utc::now(), |c| c.id == snap.id)
            .await
            .unwrap();
        assert_eq!(without_snap.len(), 1);
        // The database's own short-lived guards (unnamed, with an expiry) hold nothing.
        let guard = db("c1")
            .admin()
            .create_detached_checkpoint(&slatedb::config::CheckpointOptions {
                lifetime: Some(Duration::from_secs(900)),
                source: None,
                name: None,
            })
            .await
            .unwrap();
        let now_held = db("c1").holders(Utc::now(), |_| false).await.unwrap();
        assert!(now_held.iter().all(|c| c.id != guard.id), "{now_held:?}");
        // An expired checkpoint holds nothing.
        let later = Utc::now() + chrono::TimeDelta::days(1);
        db("c1")
            .refresh_checkpoint(snap.id, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(!db("c1")
            .holders(later, |_| false)
            .await
            .unwrap()
            .iter()
            .any(|c| c.id == snap.id));

        // Deleting c2 releases its holds; c1's rows, its own included, stay readable.
        db("c2").delete_database().await.unwrap();
        let left = db("c1").holders(Utc::now(), |_| false).await.unwrap();
        assert!(left.iter().all(|c| c.id != final_on_c1), "{left:?}");
        let reader = slatedb::Db::builder("c1", store.main.clone())
            .build()
            .await
            .unwrap();
        assert!(reader.get(b"only-in-c1").await.unwrap().is_some());
        let (key, _) = sample_row(5);
        assert!(reader.get(key.as_bytes()).await.unwrap().is_some());
        reader.close().await.unwrap();
    }
}
