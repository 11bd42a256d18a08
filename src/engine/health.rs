//! Continuous health of a finished clone: every object its manifest pins is present and every
//! parent still holds the clone's final checkpoint. Checks of many clones share one
//! [`HealthRounds`]: within a round (wall-clock aligned, one period long) each distinct directory
//! is listed and each parent's manifest read at most once, whatever the number of clones. What the
//! round's read lacks is read again before it is called gone (it may have been written since).

use super::error::EngineError;
use super::Database;
use futures::TryStreamExt;
use object_store::path::Path;
use slatedb::PathResolver;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// A store (by the identity of its shared client) and a path in it.
type Key = (usize, String);
/// Read once per round: the objects in a directory.
type Listing = Arc<OnceCell<Arc<BTreeSet<Path>>>>;
/// Read once per round: the checkpoint ids of a database, `None` when it has gone.
type Checkpoints = Arc<OnceCell<Arc<Option<BTreeSet<Uuid>>>>>;

/// The listings and parent checkpoints read in the current round.
#[derive(Default)]
struct Round {
    index: u128,
    listings: HashMap<Key, Listing>,
    checkpoints: HashMap<Key, Checkpoints>,
}

/// What the health checks of one process share: the period and the current round's reads.
pub struct HealthRounds {
    period: Duration,
    round: Mutex<Round>,
    listings_made: AtomicU64,
}

impl HealthRounds {
    pub fn new(period: Duration) -> HealthRounds {
        HealthRounds {
            period: period.max(Duration::from_secs(1)),
            round: Mutex::default(),
            listings_made: AtomicU64::new(0),
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    fn now_millis() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    }

    /// How long until the next round starts (checks then see a fresh store).
    pub fn until_next_round(&self) -> Duration {
        let period = self.period.as_millis().max(1);
        let left = period - Self::now_millis() % period;
        Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX))
    }

    /// Directory listings made so far (for tests and metrics).
    pub fn listings_made(&self) -> u64 {
        self.listings_made.load(Ordering::Relaxed)
    }

    /// The current round, started afresh when the wall clock has moved into a new one.
    fn current(&self) -> std::sync::MutexGuard<'_, Round> {
        let index = Self::now_millis() / self.period.as_millis().max(1);
        let mut round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        if round.index != index {
            *round = Round {
                index,
                ..Default::default()
            };
        }
        round
    }

    /// The objects in `directory`: this round's listing, or a fresh one when `fresh` (a miss in
    /// the round's listing may be an object written since; only a fresh read proves it gone).
    async fn listing(
        &self,
        db: &Database,
        directory: &Path,
        fresh: bool,
    ) -> Result<Arc<BTreeSet<Path>>, EngineError> {
        let key = (store_identity(db), directory.to_string());
        let list = || async {
            self.listings_made.fetch_add(1, Ordering::Relaxed);
            let listing = db.store.main.list(Some(directory)).try_collect::<Vec<_>>();
            let objects = db
                .bounded_store("list for the health check", listing)
                .await?;
            let listed: BTreeSet<Path> = objects.into_iter().map(|o| o.location).collect();
            Ok::<_, EngineError>(Arc::new(listed))
        };
        if fresh {
            let listed = list().await?;
            let cell = OnceCell::new_with(Some(listed.clone()));
            self.current().listings.insert(key, Arc::new(cell));
            return Ok(listed);
        }
        let cell = self.current().listings.entry(key).or_default().clone();
        cell.get_or_try_init(list).await.cloned()
    }

    /// The checkpoint ids in the latest manifest of the database at `path`, `None` when there is
    /// no database there: this round's read, or a fresh one when `fresh`.
    async fn checkpoints(
        &self,
        db: &Database,
        path: &str,
        fresh: bool,
    ) -> Result<Arc<Option<BTreeSet<Uuid>>>, EngineError> {
        let key = (store_identity(db), path.to_string());
        let read = || async {
            let parent = Database::new(db.store.clone(), path, db.timeout);
            let manifest = parent.try_latest_manifest().await?;
            Ok::<_, EngineError>(Arc::new(
                manifest.map(|m| m.checkpoints().iter().map(|c| c.id).collect()),
            ))
        };
        if fresh {
            let held = read().await?;
            let cell = OnceCell::new_with(Some(held.clone()));
            self.current().checkpoints.insert(key, Arc::new(cell));
            return Ok(held);
        }
        let cell = self.current().checkpoints.entry(key).or_default().clone();
        cell.get_or_try_init(read).await.cloned()
    }
}

/// A store by the identity of its shared client (one per configuration, see the controller).
fn store_identity(db: &Database) -> usize {
    Arc::as_ptr(&db.store.main) as *const () as usize
}

impl Database {
    /// Fails with [`EngineError::DataMissing`] when an object this database's latest manifest
    /// pins is gone, or a parent no longer holds its final checkpoint.
    pub async fn check_health(&self, rounds: &HealthRounds) -> Result<(), EngineError> {
        let manifest = self.latest_manifest().await?;
        self.check_manifest_health(&manifest, rounds).await
    }

    /// [`Database::check_health`] of the manifest a checkpoint pins.
    pub async fn check_checkpoint_health(
        &self,
        manifest_id: u64,
        rounds: &HealthRounds,
    ) -> Result<(), EngineError> {
        let manifest = self.pinned_manifest(manifest_id).await?;
        self.check_manifest_health(&manifest, rounds).await
    }

    async fn check_manifest_health(
        &self,
        manifest: &slatedb::VersionedManifest,
        rounds: &HealthRounds,
    ) -> Result<(), EngineError> {
        let resolver = PathResolver::new(self.path.clone(), manifest);
        let mut by_directory: BTreeMap<Path, Vec<Path>> = BTreeMap::new();
        for view in manifest.all_sst_views() {
            let path = resolver.sst_path(&view.sst.id);
            let directory = path
                .as_ref()
                .rsplit_once('/')
                .map_or(Path::default(), |(dir, _)| Path::from(dir));
            by_directory.entry(directory).or_default().push(path);
        }
        for (directory, wanted) in by_directory {
            let missing =
                |listed: &BTreeSet<Path>| wanted.iter().find(|p| !listed.contains(*p)).cloned();
            let mut gone = missing(rounds.listing(self, &directory, false).await?.as_ref());
            if gone.is_some() {
                gone = missing(rounds.listing(self, &directory, true).await?.as_ref());
            }
            if let Some(object) = gone {
                return Err(EngineError::DataMissing {
                    path: self.path.to_string(),
                    missing: format!("object {object}"),
                });
            }
        }
        for parent in manifest.external_dbs() {
            let Some(id) = parent.final_checkpoint_id else {
                continue;
            };
            let missing = |held: &Option<BTreeSet<Uuid>>| match held {
                None => Some(format!("the parent database {:?}", parent.path)),
                Some(ids) if !ids.contains(&id) => Some(format!(
                    "checkpoint {id} on the parent database {:?}",
                    parent.path
                )),
                Some(_) => None,
            };
            let mut gone = missing(
                rounds
                    .checkpoints(self, &parent.path, false)
                    .await?
                    .as_ref(),
            );
            if gone.is_some() {
                gone = missing(rounds.checkpoints(self, &parent.path, true).await?.as_ref());
            }
            if let Some(missing) = gone {
                return Err(EngineError::DataMissing {
                    path: self.path.to_string(),
                    missing,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sample::write_sample_db;
    use crate::engine::{
        initialize_clone, CloneConfig, CloneSourceCheckpoint, RetryPolicy, Store, StoreConfig,
        Verification,
    };

    fn clone_config(store: &Store, checkpoint: Uuid, target: &str) -> CloneConfig {
        CloneConfig {
            store: store.clone(),
            source_path: "parent".into(),
            source_checkpoint: CloneSourceCheckpoint::Id(checkpoint),
            key_range: None,
            target_path: target.into(),
            verify: Verification::None,
            admin_timeout: Duration::from_secs(20),
            retry: RetryPolicy::default(),
            owner: None,
        }
    }

    #[tokio::test]
    async fn many_clones_share_one_listing_of_their_parent_and_breaks_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        })
        .unwrap();
        write_sample_db(&store, "parent", 600, 3).await.unwrap();
        let parent = Database::new(store.clone(), "parent", Duration::from_secs(20));
        let (checkpoint, _) = parent.obtain_checkpoint("nightly", None).await.unwrap();
        let clones: Vec<Database> = (0..6)
            .map(|i| {
                Database::new(
                    store.clone(),
                    &format!("clones/c{i}"),
                    Duration::from_secs(20),
                )
            })
            .collect();
        for clone in &clones {
            initialize_clone(
                clone_config(&store, checkpoint.id, clone.path().as_ref()),
                |_| {},
            )
            .await
            .unwrap();
        }
        let rounds = HealthRounds::new(Duration::from_secs(3600));
        for clone in &clones {
            clone.check_health(&rounds).await.unwrap();
        }
        assert_eq!(
            rounds.listings_made(),
            1,
            "one listing of the parent's SST directory for six clones"
        );

        // A clone made after this round read its parent is not taken for a broken one.
        let late = Database::new(store.clone(), "clones/late", Duration::from_secs(20));
        initialize_clone(clone_config(&store, checkpoint.id, "clones/late"), |_| {})
            .await
            .unwrap();
        late.check_health(&rounds).await.unwrap();

        // An SST removed behind the clones' back: the next round names it.
        let pinned = parent.pinned_objects(checkpoint.manifest_id).await.unwrap();
        let sst = pinned.iter().find(|o| o.key.starts_with("sst/")).unwrap();
        std::fs::remove_file(dir.path().join(sst.path.as_ref())).unwrap();
        let next = HealthRounds::new(Duration::from_secs(3600));
        let error = clones[0].check_health(&next).await.unwrap_err();
        assert_eq!(error.reason(), "SourceDataMissing");
        assert!(error.to_string().contains(sst.path.as_ref()), "{error}");

        // A parent that no longer holds a clone's final checkpoint.
        write_sample_db(&store, "other", 100, 1).await.unwrap();
        let other = Database::new(store.clone(), "other", Duration::from_secs(20));
        let (source, _) = other.obtain_checkpoint("src", None).await.unwrap();
        let mut config = clone_config(&store, source.id, "clones/of-other");
        config.source_path = "other".into();
        initialize_clone(config, |_| {}).await.unwrap();
        let of_other = Database::new(store.clone(), "clones/of-other", Duration::from_secs(20));
        let final_checkpoint = of_other.parents().await.unwrap()[0]
            .final_checkpoint_id
            .unwrap();
        other.delete_checkpoint(final_checkpoint).await.unwrap();
        let error = of_other
            .check_health(&HealthRounds::new(Duration::from_secs(3600)))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains(&final_checkpoint.to_string()),
            "{error}"
        );
    }
}
