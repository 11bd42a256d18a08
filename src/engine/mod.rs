//! SlateDB and object-store work: checkpoints and their fingerprints. Knows nothing of
//! Kubernetes, so the CLI and tests use it directly.

mod checkpoint;
mod clone;
mod error;
mod fingerprint;
mod instrumented;
pub mod manifest_guard;
pub mod sample;
#[cfg(test)]
mod source_invariants;
mod store;

pub use checkpoint::{CheckpointInfo, CheckpointSelector, DbDescription, Obtained};
pub use clone::{
    initialize_clone, CloneConfig, CloneProgress, CloneReport, CloneSourceCheckpoint, CloneStep,
    RetryPolicy, TargetState, Verification, CRASH_POINT_ENV,
};
pub use error::{EngineError, Fault};
pub use fingerprint::{Fingerprint, PinnedObject};
pub use instrumented::{
    counting_retries, store_stats, FaultPlan, Operation, StoreStats, FAULTS_ENV,
};
pub use store::{Store, StoreConfig};

use object_store::path::Path;
use slatedb::admin::Admin;
use std::future::Future;
use std::time::Duration;

/// Default bound on one SlateDB admin call; SlateDB's admin retries store errors for ever.
pub const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One SlateDB database: a store and a path in it.
#[derive(Clone, Debug)]
pub struct Database {
    store: Store,
    path: Path,
    timeout: Duration,
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

    fn admin(&self) -> Admin {
        let builder = Admin::builder(self.path.clone(), self.store.main.clone());
        match &self.store.wal {
            Some(wal) => builder.with_wal_object_store(wal.clone()).build(),
            None => builder.build(),
        }
    }

    /// Runs a SlateDB admin call under the timeout, mapping its error.
    async fn bounded<T>(
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
    async fn bounded_store<T>(
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

    /// One plain, non-retrying listing of the manifest directory. SlateDB's own calls retry every
    /// error for ever, so this is how rejected credentials or an unreachable endpoint show up as a
    /// clear error rather than a timeout.
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
}
