//! One target, one owner: before its first write a clone claims its target path with a record
//! created only if absent, beside the database (`<path>.owner`, outside the prefix SlateDB's
//! `delete_db` removes, so cleanup can delete it last, after the data). A clone resumes only a
//! target it owns, and deleting an object never touches a target someone else owns.

use super::error::EngineError;
use super::Database;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

/// Who owns a target: a Kubernetes object (namespace, name, uid), or another tool by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} (uid {})", self.namespace, self.name, self.uid)
    }
}

impl Database {
    fn owner_record(&self) -> Path {
        Path::from(format!("{}.owner", self.path))
    }

    /// The target's owner, if a record names one.
    pub async fn owner(&self) -> Result<Option<Owner>, EngineError> {
        let record = self.owner_record();
        let read = self
            .bounded_store("read owner record", async {
                match self.store.main.get(&record).await {
                    Ok(found) => found.bytes().await.map(Some),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        read.map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| EngineError::Corrupt {
                object: record.to_string(),
                detail: format!("not an owner record: {e}"),
            })
        })
        .transpose()
    }

    /// Claims the target for `owner`: creates the record if absent. Fails with `TargetOwned`
    /// when it names anyone else.
    pub async fn claim(&self, owner: &Owner) -> Result<(), EngineError> {
        let body =
            serde_json::to_vec(owner).map_err(|e| EngineError::StoreConfig(e.to_string()))?;
        let record = self.owner_record();
        let created = self
            .create_if_absent("create owner record", &record, body.into())
            .await?;
        if created {
            return Ok(());
        }
        match self.owner().await? {
            Some(existing) if existing.uid == owner.uid => Ok(()),
            Some(existing) => Err(EngineError::TargetOwned {
                path: self.path.to_string(),
                owner: existing.to_string(),
            }),
            // Released between our create and our read: claim again.
            None => Box::pin(self.claim(owner)).await,
        }
    }

    /// Fails with `TargetOwned` when a record names someone other than `owner` (or anyone, when
    /// `owner` is `None`).
    pub async fn ensure_not_owned_by_another(
        &self,
        owner: Option<&Owner>,
    ) -> Result<(), EngineError> {
        match self.owner().await? {
            Some(existing) if Some(existing.uid.as_str()) != owner.map(|o| o.uid.as_str()) => {
                Err(EngineError::TargetOwned {
                    path: self.path.to_string(),
                    owner: existing.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Removes `owner`'s record (after its data is gone); a record naming someone else stays.
    pub async fn release(&self, owner: &Owner) -> Result<(), EngineError> {
        if self.owner().await?.is_some_and(|o| o.uid == owner.uid) {
            let record = self.owner_record();
            self.bounded_store("delete owner record", async {
                match self.store.main.delete(&record).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    other => other,
                }
            })
            .await?;
        }
        Ok(())
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

    fn owner(name: &str) -> Owner {
        Owner {
            namespace: "team".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    #[tokio::test]
    async fn a_target_has_one_owner_and_a_second_clone_neither_writes_nor_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        })
        .unwrap();
        write_sample_db(&store, "parent", 300, 1).await.unwrap();
        let parent = Database::new(store.clone(), "parent", Duration::from_secs(20));
        let (checkpoint, _) = parent.obtain_checkpoint("nightly", None).await.unwrap();
        let config = |who: Option<Owner>| CloneConfig {
            store: store.clone(),
            source_path: "parent".into(),
            source_checkpoint: CloneSourceCheckpoint::Id(checkpoint.id),
            key_range: None,
            target_path: "clones/shared".into(),
            verify: Verification::Metadata,
            admin_timeout: Duration::from_secs(20),
            retry: RetryPolicy::default(),
            owner: who,
        };
        initialize_clone(config(Some(owner("own-a"))), |_| {})
            .await
            .unwrap();
        let target = Database::new(store.clone(), "clones/shared", Duration::from_secs(20));
        assert_eq!(target.owner().await.unwrap(), Some(owner("own-a")));
        // Resuming its own target is fine; anyone else, or a caller that claims nothing, is refused.
        initialize_clone(config(Some(owner("own-a"))), |_| {})
            .await
            .unwrap();
        for other in [Some(owner("own-b")), None] {
            let error = initialize_clone(config(other), |_| {}).await.unwrap_err();
            assert_eq!(error.reason(), "TargetOwned", "{error}");
            assert!(error.to_string().contains("team/own-a"), "{error}");
        }
        // Releasing needs the owner; the data stays readable meanwhile.
        target.release(&owner("own-b")).await.unwrap();
        assert_eq!(target.owner().await.unwrap(), Some(owner("own-a")));
        let db = slatedb::Db::builder("clones/shared", store.main.clone())
            .build()
            .await
            .unwrap();
        let (key, value) = sample_row(7);
        assert_eq!(
            db.get(key.as_bytes()).await.unwrap().as_deref(),
            Some(value.as_bytes())
        );
        db.close().await.unwrap();
        target.release(&owner("own-a")).await.unwrap();
        assert_eq!(target.owner().await.unwrap(), None);
        target.claim(&owner("own-b")).await.unwrap();
        assert_eq!(target.owner().await.unwrap(), Some(owner("own-b")));
    }
}
