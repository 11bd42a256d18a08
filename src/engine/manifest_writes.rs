//! A few writers at a time per manifest, within this process. Every clone created or deleted
//! writes its parent's manifest once (a final checkpoint added, then removed), and so do
//! checkpoints made, refreshed and deleted; SlateDB writes through a compare-and-swap, so
//! concurrent writers of one manifest conflict and retry, and the manifest guard's after-write
//! check reads every manifest written since its own check. Unbounded (500 clones deleted at
//! once), the writers mostly lose the race and time out; one at a time, a clone's whole build
//! (its own manifest writes too) is serialized behind each parent. [`PARENT_WRITERS`] at a time
//! keeps the conflicts and the guard's reads bounded while builds overlap.

use super::Database;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many of the operator's writers may work on one database's manifest at once.
pub const PARENT_WRITERS: usize = 4;

/// A database's identity for the lock: the opened store (one shared client per configuration)
/// and the path in it.
type Key = (usize, String);

static LOCKS: LazyLock<Mutex<HashMap<Key, Weak<Semaphore>>>> = LazyLock::new(Mutex::default);

/// Held while the operator writes the manifests of some databases; dropping it lets the next
/// writer of each in.
#[must_use = "the lock is released when this is dropped"]
pub struct ManifestWriteLock {
    _held: Vec<OwnedSemaphorePermit>,
}

fn key(database: &Database) -> Key {
    let store = Arc::as_ptr(&database.store().main) as *const () as usize;
    (store, database.path().to_string())
}

/// Waits for, and takes, a writer's place at every database in `databases`. They are taken in
/// one global order, so two writers that need overlapping sets never wait for each other in a
/// cycle.
pub async fn lock_manifest_writes(databases: &[&Database]) -> ManifestWriteLock {
    let mut keys: Vec<Key> = databases.iter().map(|db| key(db)).collect();
    keys.sort();
    keys.dedup();
    let semaphores: Vec<Arc<Semaphore>> = {
        let mut locks = LOCKS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget the databases nobody is writing any more.
        locks.retain(|_, lock| lock.strong_count() > 0);
        keys.into_iter()
            .map(|key| {
                let existing = locks.get(&key).and_then(Weak::upgrade);
                existing.unwrap_or_else(|| {
                    let fresh = Arc::new(Semaphore::new(PARENT_WRITERS));
                    locks.insert(key, Arc::downgrade(&fresh));
                    fresh
                })
            })
            .collect()
    };
    let mut held = Vec::with_capacity(semaphores.len());
    for semaphore in semaphores {
        // The semaphore is never closed, so acquiring fails only if it were.
        if let Ok(permit) = semaphore.acquire_owned().await {
            held.push(permit);
        }
    }
    ManifestWriteLock { _held: held }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Store, StoreConfig};
    use std::time::Duration;

    fn database(store: &Store, path: &str) -> Database {
        Database::new(store.clone(), path, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn writers_of_one_database_beyond_the_bound_queue_and_others_pass() {
        let store = Store::open(&StoreConfig::with_options("memory:///", &[])).unwrap();
        let parent = database(&store, "parent");
        let mut held = Vec::new();
        for _ in 0..PARENT_WRITERS {
            held.push(lock_manifest_writes(&[&parent]).await);
        }
        let same = database(&store, "parent");
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), lock_manifest_writes(&[&same])).await;
        assert!(waiting.is_err(), "one writer too many got in");
        let other = database(&store, "other");
        let _other =
            tokio::time::timeout(Duration::from_millis(50), lock_manifest_writes(&[&other]))
                .await
                .expect("another database is not held");
        let elsewhere = Store::open(&StoreConfig::with_options("memory:///", &[])).unwrap();
        let _elsewhere = tokio::time::timeout(
            Duration::from_millis(50),
            lock_manifest_writes(&[&database(&elsewhere, "parent")]),
        )
        .await
        .expect("the same path in another store is another database");
        held.pop();
        let _next = tokio::time::timeout(Duration::from_millis(50), lock_manifest_writes(&[&same]))
            .await
            .expect("the lock is released on drop");
    }

    #[tokio::test]
    async fn overlapping_sets_taken_in_opposite_orders_do_not_deadlock() {
        let store = Store::open(&StoreConfig::with_options("memory:///", &[])).unwrap();
        let (a, b) = (database(&store, "a"), database(&store, "b"));
        let rounds = (0..200).map(|i| {
            let (a, b) = (a.clone(), b.clone());
            tokio::spawn(async move {
                let _held = match i % 2 {
                    0 => lock_manifest_writes(&[&a, &b]).await,
                    _ => lock_manifest_writes(&[&b, &a, &b]).await,
                };
                tokio::task::yield_now().await;
            })
        });
        tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(rounds))
            .await
            .expect("the writers deadlocked");
        // Nobody writes a or b any more: their entries are dead, and the next lock drops them.
        let (key_a, key_b) = (key(&a), key(&b));
        drop(lock_manifest_writes(&[&database(&store, "c")]).await);
        let locks = LOCKS.lock().unwrap();
        assert!(!locks.contains_key(&key_a) && !locks.contains_key(&key_b));
    }
}
