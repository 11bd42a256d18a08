//! [`Database`]: one SlateDB database (a store and a path in it), how every SlateDB and
//! object-store call on it is bounded by a timeout, and the calls that are not about checkpoints,
//! fingerprints or clones: probing, reading the latest manifest, deleting.

use super::error::{self, EngineError};
use super::manifest_writes::lock_manifest_writes;
use super::Store;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use slatedb::admin::Admin;
use slatedb::VersionedManifest;
use std::future::Future;
use std::time::Duration;

/// One SlateDB database: a store and a path in it.
#[derive(Clone, Debug)]
pub struct Database {
    pub(super) store: Store,
    pub(super) path: Path,
    /// Bound on each call made on the database.
    pub(super) timeout: Duration,
}

impl Database {
    pub fn new(store: Store, path: &str, timeout: Duration) -> Database {
        Database {
            store,
            path: Path::from(path),
            timeout,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// SlateDB's admin handle on this database (and its WAL store, if it has one).
    pub(super) fn admin(&self) -> Admin {
        let builder = Admin::builder(self.path.clone(), self.store.main.clone());
        match &self.store.wal {
            Some(wal) => builder.with_wal_object_store(wal.clone()).build(),
            None => builder.build(),
        }
    }

    /// Runs a SlateDB admin call under the timeout, mapping its error.
    pub(super) async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, slatedb::Error>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| error::from_slatedb(operation, self.path.as_ref(), e)),
            Err(_) => Err(EngineError::Timeout {
                operation,
                after: self.timeout,
            }),
        }
    }

    /// Runs a plain object-store call under the timeout.
    pub(super) async fn bounded_store<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(object_store::Error::PermissionDenied { path, source }))
            | Ok(Err(object_store::Error::Unauthenticated { path, source })) => {
                Err(EngineError::AccessDenied {
                    path,
                    detail: source.to_string(),
                })
            }
            Ok(Err(source)) => Err(EngineError::Store { operation, source }),
            Err(_) => Err(EngineError::Timeout {
                operation,
                after: self.timeout,
            }),
        }
    }

    /// Writes `body` to `path` unless an object is there already (a conditional create, never
    /// retried blindly); returns whether it wrote.
    pub(super) async fn create_if_absent(
        &self,
        operation: &'static str,
        path: &Path,
        body: bytes::Bytes,
    ) -> Result<bool, EngineError> {
        self.bounded_store(operation, async {
            let options = object_store::PutOptions::from(object_store::PutMode::Create);
            match self.store.main.put_opts(path, body.into(), options).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// One plain, non-retrying listing of the manifest directory. SlateDB's own calls retry every
    /// error for ever, so this is how rejected credentials or an unreachable endpoint show up as a
    /// clear error rather than a timeout.
    /// The WAL objects present under the database (in its WAL store).
    pub(super) async fn wal_objects(&self) -> Result<Vec<object_store::ObjectMeta>, EngineError> {
        use futures::TryStreamExt;
        let prefix = self.path.clone().join("wal");
        let listing = self
            .store
            .wal_or_main()
            .list(Some(&prefix))
            .try_collect::<Vec<_>>();
        self.bounded_store("list WAL", listing).await
    }

    pub async fn probe(&self) -> Result<(), EngineError> {
        let manifests = self.path.clone().join("manifest");
        let listing = self.store.main.list_with_delimiter(Some(&manifests));
        let listing = self.bounded_store("list manifests", listing).await?;
        if listing.objects.is_empty() {
            return Err(EngineError::NotADatabase {
                path: self.path.to_string(),
            });
        }
        Ok(())
    }

    /// The latest manifest, or `None` when there is no database at the path.
    pub async fn try_latest_manifest(&self) -> Result<Option<VersionedManifest>, EngineError> {
        self.bounded("read_manifest", self.admin().read_manifest(None))
            .await
    }

    /// The latest manifest, found by one listing of the manifest directory and read by id. A
    /// refused or failed listing keeps its kind (SlateDB's own read retries what it cannot read,
    /// so a store that refuses the path would only time out).
    pub async fn latest_manifest_listed(&self) -> Result<VersionedManifest, EngineError> {
        let Some(id) = self.latest_manifest_id().await? else {
            return Err(EngineError::NotADatabase {
                path: self.path.to_string(),
            });
        };
        match self
            .bounded("read_manifest", self.admin().read_manifest(Some(id)))
            .await?
        {
            Some(manifest) => Ok(manifest),
            // Collected since the listing, so a newer one is the latest.
            None => self.latest_manifest().await,
        }
    }

    /// The id of the newest manifest object, from a listing of the manifest directory.
    pub(crate) async fn latest_manifest_id(&self) -> Result<Option<u64>, EngineError> {
        self.latest_manifest_id_since(None).await
    }

    /// [`Database::latest_manifest_id`] when manifest `known` was the latest a moment ago. Then it
    /// is the answer unless a newer one is listed: a newer one exists whenever `known` has been
    /// collected, since SlateDB never collects the latest.
    pub(crate) async fn latest_manifest_id_since(
        &self,
        known: Option<u64>,
    ) -> Result<Option<u64>, EngineError> {
        let newer = self.manifest_ids_after(known).await?.into_iter().max();
        Ok(newer.max(known))
    }

    /// The ids of the manifest objects, or only of those after manifest `after`: the store lists
    /// from there (S3's start-after; a local directory skips the status call of each older
    /// file), where a database with many versions made every listing long.
    pub(crate) async fn manifest_ids_after(
        &self,
        after: Option<u64>,
    ) -> Result<Vec<u64>, EngineError> {
        let id_of = |location: &object_store::path::Path| -> Option<u64> {
            location.filename()?.strip_suffix(".manifest")?.parse().ok()
        };
        let directory = self.path.clone().join("manifest");
        match after {
            None => {
                let listing = self.store.main.list_with_delimiter(Some(&directory));
                let listing = self.bounded_store("list manifests", listing).await?;
                Ok(listing
                    .objects
                    .iter()
                    .filter_map(|o| id_of(&o.location))
                    .collect())
            }
            Some(after) => {
                let offset = super::fingerprint::manifest_path(&self.path, after);
                let listing = self
                    .store
                    .main
                    .list_with_offset(Some(&directory), &offset)
                    .try_collect::<Vec<_>>();
                let listing = self.bounded_store("list newer manifests", listing).await?;
                Ok(listing
                    .iter()
                    // The listing is recursive; the manifests are the directory's own files.
                    .filter(|o| o.location.parts().count() == directory.parts().count() + 1)
                    .filter_map(|o| id_of(&o.location))
                    .filter(|&id| id > after)
                    .collect())
            }
        }
    }

    pub async fn latest_manifest(&self) -> Result<VersionedManifest, EngineError> {
        self.try_latest_manifest()
            .await?
            .ok_or_else(|| EngineError::NotADatabase {
                path: self.path.to_string(),
            })
    }

    /// Deletes the database with SlateDB's `delete_db` (which also drops its final checkpoints on
    /// parents) and checks that nothing is left under its path. A path with nothing is fine.
    pub async fn delete_database(&self) -> Result<(), EngineError> {
        let manifest = self.try_latest_manifest().await?;
        let has_marker = self
            .bounded_store("head .deleting", async {
                match self
                    .store
                    .main
                    .head(&self.path.clone().join(".deleting"))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        // delete_db removes this database's final checkpoints from its parents' manifests.
        let parents: Vec<Database> = manifest
            .iter()
            .flat_map(|m| m.external_dbs())
            .filter(|parent| parent.final_checkpoint_id.is_some())
            .map(|parent| Database::new(self.store.clone(), &parent.path, self.timeout))
            .collect();
        let _writing = lock_manifest_writes(&parents.iter().collect::<Vec<_>>()).await;
        let mut checked_parents = Vec::new();
        for parent in &parents {
            checked_parents.push((parent, parent.ensure_manifest_preserved().await?));
        }
        if manifest.is_some() || has_marker {
            self.bounded("delete_db", self.admin().delete_db(true))
                .await?;
        }
        for (parent, checked) in checked_parents {
            parent.confirm_manifest_preserved(checked).await?;
        }
        let leftover = self
            .bounded_store(
                "list after delete",
                self.store
                    .main
                    .list(Some(&self.path))
                    .try_collect::<Vec<_>>(),
            )
            .await?;
        if let Some(object) = leftover.first() {
            return Err(EngineError::Leftover {
                path: self.path.to_string(),
                count: leftover.len(),
                example: object.location.to_string(),
            });
        }
        Ok(())
    }
}
