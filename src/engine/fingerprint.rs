//! Fingerprints of what a checkpoint pins: a cheap metadata digest (listings and HEADs only), and
//! a Merkle root over object content read once, with a CRC walk of every SST block.

use super::error::EngineError;
use super::store_layers::in_retry_scope_of_caller;
use super::Database;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use slatedb::db_cache::{CachedEntry, CachedKey, DbCache};
use slatedb::{PathResolver, SstReader, VersionedManifest};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How many objects are looked up, hashed or CRC-walked at once.
const CONCURRENCY: usize = 8;

/// Directories with at least this many pinned objects are listed rather than HEADed object by
/// object.
const LIST_THRESHOLD: usize = 16;

/// Object content held in memory at once while checking content (an object larger than this
/// is still read whole, alone).
pub const CONTENT_BUDGET_MIB: u32 = 64;

/// One object a checkpoint pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedObject {
    /// Logical id, the same in a clone as in its source: `sst/<ULID>` or `wal/<id>`.
    pub key: String,
    /// Where the object is (in the WAL store for WAL objects of a database that has one).
    pub path: Path,
    pub size: u64,
    pub etag: Option<String>,
    is_wal: bool,
}

/// Which of a manifest's pinned objects to look up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pinned {
    All,
    Wal,
    Sst,
}

/// The logical key, path and store (WAL or main) of each object a manifest pins.
pub(crate) struct PinnedPaths(Vec<(String, Path, bool)>);

/// A checkpoint's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// sha256 over the pinned manifest's bytes and the sorted `path size etag` line of every object.
    pub metadata_digest: String,
    /// Merkle root over the content hashes of every pinned object, when content was read.
    pub content_root: Option<String>,
    /// SST blocks whose CRC was checked, when content was read.
    pub blocks_checked: Option<u64>,
    pub size_bytes: u64,
    pub object_count: u64,
}

impl Fingerprint {
    /// The fingerprint of a manifest's bytes and the objects it pins; `content` is the Merkle
    /// root and block count of their content, when it was read.
    pub(crate) fn of(
        manifest_bytes: &[u8],
        objects: &[PinnedObject],
        content: Option<(String, u64)>,
    ) -> Fingerprint {
        let mut lines: Vec<String> = objects
            .iter()
            .map(|o| format!("{} {} {}", o.path, o.size, o.etag.as_deref().unwrap_or("-")))
            .collect();
        lines.sort();
        let mut digest = Sha256::new();
        digest.update(manifest_bytes);
        for line in &lines {
            digest.update(line.as_bytes());
            digest.update(b"\n");
        }
        let (content_root, blocks_checked) = content.unzip();
        Fingerprint {
            metadata_digest: hex::encode(digest.finalize()),
            content_root,
            blocks_checked,
            size_bytes: objects.iter().map(|o| o.size).sum(),
            object_count: objects.len() as u64,
        }
    }
}

pub(super) fn manifest_path(db: &Path, manifest_id: u64) -> Path {
    db.clone()
        .join("manifest")
        .join(format!("{manifest_id:020}.manifest"))
}

impl Database {
    pub(crate) async fn pinned_manifest(
        &self,
        manifest_id: u64,
    ) -> Result<VersionedManifest, EngineError> {
        self.bounded(
            "read_manifest",
            self.admin().read_manifest(Some(manifest_id)),
        )
        .await?
        .ok_or_else(|| EngineError::Corrupt {
            object: manifest_path(&self.path, manifest_id).to_string(),
            detail: "the manifest the checkpoint pins is missing".into(),
        })
    }

    /// Every SST and WAL object the checkpoint's manifest pins, with size and etag. Objects are
    /// looked up by listing their directories (one request per 1 000 objects on S3), with a HEAD
    /// for the few in directories not worth listing and for any a listing missed.
    pub async fn pinned_objects(&self, manifest_id: u64) -> Result<Vec<PinnedObject>, EngineError> {
        let manifest = self.pinned_manifest(manifest_id).await?;
        self.pinned_objects_of(&manifest).await
    }

    /// [`Database::pinned_objects`] of a manifest already read.
    pub async fn pinned_objects_of(
        &self,
        manifest: &VersionedManifest,
    ) -> Result<Vec<PinnedObject>, EngineError> {
        self.look_up_pinned(manifest, Pinned::All, &[]).await
    }

    /// The `which` objects `manifest` pins, taking those at the path of an object in `known`
    /// (looked up a moment ago by the same operation) as they are.
    pub(crate) async fn look_up_pinned(
        &self,
        manifest: &VersionedManifest,
        which: Pinned,
        known: &[PinnedObject],
    ) -> Result<Vec<PinnedObject>, EngineError> {
        self.look_up(self.pinned_paths(manifest, which), known)
            .await
    }

    /// Where the `which` objects `manifest` pins are: what [`Database::look_up`] takes, so the
    /// lookup can run in a task of its own without the manifest.
    pub(crate) fn pinned_paths(&self, manifest: &VersionedManifest, which: Pinned) -> PinnedPaths {
        let resolver = PathResolver::new(self.path.clone(), manifest);
        let mut wanted: Vec<(String, Path, bool)> = Vec::new();
        if which != Pinned::Wal {
            let mut seen = std::collections::BTreeSet::new();
            for view in manifest.all_sst_views() {
                let id = view.sst.id;
                if seen.insert(id.value()) {
                    wanted.push((format!("sst/{}", id.value()), resolver.sst_path(&id), false));
                }
            }
        }
        if which != Pinned::Sst {
            for wal_id in manifest.replay_after_wal_id() + 1..manifest.next_wal_sst_id() {
                let path = self
                    .path
                    .clone()
                    .join("wal")
                    .join(format!("{wal_id:020}.sst"));
                wanted.push((format!("wal/{wal_id:020}"), path, true));
            }
        }
        PinnedPaths(wanted)
    }

    /// Looks up the objects at `wanted`, taking those at the path of an object in `known` as
    /// they are.
    pub(crate) async fn look_up(
        &self,
        PinnedPaths(mut wanted): PinnedPaths,
        known: &[PinnedObject],
    ) -> Result<Vec<PinnedObject>, EngineError> {
        let known: HashMap<&Path, &PinnedObject> = known.iter().map(|o| (&o.path, o)).collect();
        let mut objects = Vec::new();
        wanted.retain(|(key, path, _)| match known.get(path) {
            Some(object) => {
                objects.push(PinnedObject {
                    key: key.clone(),
                    ..(*object).clone()
                });
                false
            }
            None => true,
        });

        // Directory → (is WAL store, wanted objects in it).
        let mut by_directory: BTreeMap<(bool, String), Vec<(String, Path)>> = BTreeMap::new();
        for (key, path, is_wal) in wanted {
            let directory = path
                .as_ref()
                .rsplit_once('/')
                .map_or(String::new(), |(dir, _)| dir.to_string());
            by_directory
                .entry((is_wal, directory))
                .or_default()
                .push((key, path));
        }
        let mut to_head = Vec::new();
        for ((is_wal, directory), members) in by_directory {
            let store = if is_wal {
                self.store.wal_or_main().clone()
            } else {
                self.store.main.clone()
            };
            if members.len() < LIST_THRESHOLD {
                to_head.extend(members.into_iter().map(|(k, p)| (k, p, is_wal)));
                continue;
            }
            let listing = self
                .bounded_store(
                    "list pinned objects",
                    store
                        .list(Some(&Path::from(directory.as_str())))
                        .try_collect::<Vec<_>>(),
                )
                .await?;
            let mut listed: HashMap<Path, object_store::ObjectMeta> = listing
                .into_iter()
                .map(|meta| (meta.location.clone(), meta))
                .collect();
            for (key, path) in members {
                match listed.remove(&path) {
                    Some(meta) => objects.push(PinnedObject {
                        key,
                        path,
                        size: meta.size,
                        etag: meta.e_tag,
                        is_wal,
                    }),
                    None => to_head.push((key, path, is_wal)),
                }
            }
        }
        let (main, wal, timeout) = (
            self.store.main.clone(),
            self.store.wal_or_main().clone(),
            self.timeout,
        );
        let headed: Vec<PinnedObject> = futures::stream::iter(to_head)
            .map(move |(key, path, is_wal)| {
                let store = if is_wal { wal.clone() } else { main.clone() };
                head_pinned(store, key, path, is_wal, timeout)
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        objects.extend(headed);
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// The checkpoint's fingerprint; `content` also reads every pinned object once, hashing it
    /// and checking the CRC of every SST block (see [`Database::check_content`]).
    pub async fn fingerprint(
        &self,
        manifest_id: u64,
        content: bool,
    ) -> Result<Fingerprint, EngineError> {
        let objects = self.pinned_objects(manifest_id).await?;
        self.fingerprint_of(manifest_id, &objects, content).await
    }

    /// [`Database::fingerprint`] for the objects [`Database::pinned_objects`] returned.
    pub async fn fingerprint_of(
        &self,
        manifest_id: u64,
        objects: &[PinnedObject],
        content: bool,
    ) -> Result<Fingerprint, EngineError> {
        let manifest_bytes = self.manifest_bytes(manifest_id).await?;
        let content_root = if content {
            let checked = self.check_content(objects, &|_| {}).await?;
            let blocks = checked.iter().map(|c| c.blocks).sum();
            Some((hex::encode(merkle_root_of(&checked)), blocks))
        } else {
            None
        };
        Ok(Fingerprint::of(&manifest_bytes, objects, content_root))
    }

    /// The bytes of manifest `manifest_id`, as stored.
    pub(crate) async fn manifest_bytes(&self, manifest_id: u64) -> Result<Bytes, EngineError> {
        let manifest = manifest_path(&self.path, manifest_id);
        self.bounded_store("get manifest", async {
            self.store.main.get(&manifest).await?.bytes().await
        })
        .await
    }

    /// Reads every object once: its sha256, and for SSTs a walk of every block through SlateDB's
    /// reader, which checks each block's CRC (the first corrupt object is named in the error).
    /// Objects are checked in parallel; at most [`CONTENT_BUDGET_MIB`] of content is held in
    /// memory at once. Sorted by logical key; `on_checked` is called as each object finishes.
    pub async fn check_content(
        &self,
        objects: &[PinnedObject],
        on_checked: &(dyn Fn(&PinnedObject) + Sync),
    ) -> Result<Vec<CheckedObject>, EngineError> {
        let (main, wal, timeout) = (
            self.store.main.clone(),
            self.store.wal_or_main().clone(),
            self.timeout,
        );
        let budget = Arc::new(Semaphore::new(CONTENT_BUDGET_MIB as usize));
        let mut checks = futures::stream::iter(objects.to_vec())
            .map(move |object| {
                let store = if object.is_wal {
                    wal.clone()
                } else {
                    main.clone()
                };
                let budget = budget.clone();
                // A task per object, so hashing and block walks use every core.
                let task = tokio::spawn(in_retry_scope_of_caller(check_object(
                    store, object, budget, timeout,
                )));
                async move {
                    task.await.map_err(|e| EngineError::Store {
                        operation: "check object content",
                        source: object_store::Error::JoinError { source: e },
                    })?
                }
            })
            .buffer_unordered(CONCURRENCY);
        let mut checked = Vec::with_capacity(objects.len());
        while let Some(result) = checks.next().await {
            let object = result?;
            on_checked(&object.object);
            checked.push(object);
        }
        checked.sort_by(|a, b| a.object.key.cmp(&b.object.key));
        Ok(checked)
    }
}

/// An object whose content was read and checked.
#[derive(Clone, Debug)]
pub struct CheckedObject {
    pub object: PinnedObject,
    pub sha256: [u8; 32],
    /// SST blocks whose CRC was checked (0 for WAL objects).
    pub blocks: u64,
}

/// Merkle root over checked objects (sorted by key).
pub(crate) fn merkle_root_of(checked: &[CheckedObject]) -> [u8; 32] {
    let leaves: Vec<(String, [u8; 32])> = checked
        .iter()
        .map(|c| (c.object.key.clone(), c.sha256))
        .collect();
    merkle_root(&leaves)
}

async fn check_object(
    store: Arc<dyn ObjectStore>,
    object: PinnedObject,
    budget: Arc<Semaphore>,
    timeout: Duration,
) -> Result<CheckedObject, EngineError> {
    let mib = ((object.size >> 20) + 1).min(u64::from(CONTENT_BUDGET_MIB)) as u32;
    // The semaphore is never closed, so acquiring only waits.
    let _permit = budget.acquire_many(mib).await.ok();
    let content = pinned_request("read pinned object", &object.path, timeout, async {
        store.get(&object.path).await?.bytes().await
    })
    .await?;
    let for_hashing = content.clone();
    let hashing =
        tokio::task::spawn_blocking(move || -> [u8; 32] { Sha256::digest(&for_hashing).into() });
    let blocks = if object.is_wal {
        0
    } else {
        // SlateDB's reader retries what fails inside it; bound the walk like every other call.
        tokio::time::timeout(timeout, walk_sst_blocks(&object, content))
            .await
            .map_err(|_| EngineError::Timeout {
                operation: "check SST blocks",
                after: timeout,
            })??
    };
    let sha256 = hashing.await.map_err(|e| EngineError::Store {
        operation: "hash object content",
        source: object_store::Error::JoinError { source: e },
    })?;
    Ok(CheckedObject {
        object,
        sha256,
        blocks,
    })
}

/// Reads every block of an SST held in memory through SlateDB's reader (which checks each
/// block's CRC while decoding it).
async fn walk_sst_blocks(object: &PinnedObject, content: bytes::Bytes) -> Result<u64, EngineError> {
    let corrupt = |detail: String| EngineError::Corrupt {
        object: object.path.to_string(),
        detail,
    };
    // SstReader resolves `<root>/compacted/<ulid>.sst`, so root it at the SST's owner database.
    let path = object.path.as_ref();
    let (owner, file) = path
        .rsplit_once("/compacted/")
        .ok_or_else(|| corrupt("not under compacted/".into()))?;
    let ulid = file
        .trim_end_matches(".sst")
        .parse()
        .map_err(|_| corrupt("file name is not a ULID".into()))?;
    let memory = Arc::new(InMemory::new());
    memory
        .put(&object.path, content.into())
        .await
        .map_err(|e| corrupt(e.to_string()))?;
    let reader = SstReader::new(
        Path::from(owner),
        memory,
        Some(Arc::new(IndexOnlyCache::default())),
        None,
    );
    let sst = reader
        .open(ulid)
        .await
        .map_err(|e| corrupt(e.to_string()))?;
    let index = sst.index().await.map_err(|e| corrupt(e.to_string()))?;
    for block in 0..index.len() {
        sst.read_block(block)
            .await
            .map_err(|e| corrupt(format!("block {block}: {e}")))?;
    }
    Ok(index.len() as u64)
}

/// Keeps an SST's decoded index (and nothing else) while its blocks are walked; SlateDB's reader
/// otherwise decodes the whole index again for every block.
#[derive(Default)]
struct IndexOnlyCache {
    index_keys: Mutex<HashSet<CachedKey>>,
    entries: Mutex<HashMap<CachedKey, CachedEntry>>,
}

#[async_trait::async_trait]
impl DbCache for IndexOnlyCache {
    async fn get_block(&self, _key: &CachedKey) -> Result<Option<CachedEntry>, slatedb::Error> {
        Ok(None)
    }

    async fn get_index(&self, key: &CachedKey) -> Result<Option<CachedEntry>, slatedb::Error> {
        let found = lock(&self.entries).get(key).cloned();
        if found.is_none() {
            // The next insert under this key is the index the reader fetched.
            lock(&self.index_keys).insert(key.clone());
        }
        Ok(found)
    }

    async fn get_filter(&self, _key: &CachedKey) -> Result<Option<CachedEntry>, slatedb::Error> {
        Ok(None)
    }

    async fn get_stats(&self, _key: &CachedKey) -> Result<Option<CachedEntry>, slatedb::Error> {
        Ok(None)
    }

    async fn insert(&self, key: CachedKey, value: CachedEntry) {
        if lock(&self.index_keys).contains(&key) {
            lock(&self.entries).insert(key, value);
        }
    }

    async fn remove(&self, key: &CachedKey) {
        lock(&self.entries).remove(key);
    }

    fn entry_count(&self) -> u64 {
        lock(&self.entries).len() as u64
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A store request about an object a checkpoint pins, under the timeout; a missing object is
/// corruption (the checkpoint promised it).
async fn pinned_request<T>(
    operation: &'static str,
    path: &Path,
    timeout: Duration,
    request: impl std::future::Future<Output = Result<T, object_store::Error>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(timeout, request).await {
        Err(_) => Err(EngineError::Timeout {
            operation,
            after: timeout,
        }),
        Ok(Err(object_store::Error::NotFound { .. })) => Err(EngineError::Corrupt {
            object: path.to_string(),
            detail: "pinned by the checkpoint but missing from the store".into(),
        }),
        Ok(Err(source)) => Err(EngineError::Store { operation, source }),
        Ok(Ok(value)) => Ok(value),
    }
}

async fn head_pinned(
    store: Arc<dyn ObjectStore>,
    key: String,
    path: Path,
    is_wal: bool,
    timeout: Duration,
) -> Result<PinnedObject, EngineError> {
    let meta = pinned_request("head pinned object", &path, timeout, store.head(&path)).await?;
    Ok(PinnedObject {
        key,
        path,
        size: meta.size,
        etag: meta.e_tag,
        is_wal,
    })
}

/// Binary Merkle tree over `(key, content hash)` leaves sorted by key; domain-separated leaf and
/// node hashes, an odd node is carried up unchanged. The root of no leaves is sha256("").
pub(crate) fn merkle_root(leaves: &[(String, [u8; 32])]) -> [u8; 32] {
    let mut level: Vec<[u8; 32]> = leaves
        .iter()
        .map(|(key, hash)| {
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update(key.as_bytes());
            h.update([0u8]);
            h.update(hash);
            h.finalize().into()
        })
        .collect();
    if level.is_empty() {
        return Sha256::digest(b"").into();
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut h = Sha256::new();
                    h.update([1u8]);
                    h.update(left);
                    h.update(right);
                    h.finalize().into()
                }
                [single] => *single,
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_root_depends_on_keys_and_content() {
        let a = ("sst/a".to_string(), [1u8; 32]);
        let b = ("sst/b".to_string(), [2u8; 32]);
        let root = merkle_root(&[a.clone(), b.clone()]);
        assert_eq!(root, merkle_root(&[a.clone(), b.clone()]));
        assert_ne!(
            root,
            merkle_root(&[a.clone(), ("sst/b".to_string(), [3u8; 32])])
        );
        assert_ne!(
            root,
            merkle_root(&[a.clone(), ("sst/c".to_string(), [2u8; 32])])
        );
        assert_ne!(merkle_root(std::slice::from_ref(&a)), merkle_root(&[]));
        assert_eq!(merkle_root(&[]), <[u8; 32]>::from(Sha256::digest(b"")));
    }
}
