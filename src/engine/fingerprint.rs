//! Fingerprints of what a checkpoint pins: a cheap metadata digest (HEADs only), a Merkle root over
//! object content, and a CRC walk of every SST block.

use super::error::EngineError;
use super::Database;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use slatedb::{PathResolver, SstReader, VersionedManifest};
use std::sync::Arc;
use std::time::Duration;

/// How many objects are hashed or CRC-walked at once.
const CONCURRENCY: usize = 8;

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

/// A checkpoint's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// sha256 over the pinned manifest's bytes and the sorted `path size etag` line of every object.
    pub metadata_digest: String,
    /// Merkle root over the content hashes of every pinned object, when content was read.
    pub content_root: Option<String>,
    pub size_bytes: u64,
    pub object_count: u64,
}

fn manifest_path(db: &Path, manifest_id: u64) -> Path {
    db.clone()
        .join("manifest")
        .join(format!("{manifest_id:020}.manifest"))
}

impl Database {
    async fn pinned_manifest(&self, manifest_id: u64) -> Result<VersionedManifest, EngineError> {
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

    /// Every SST and WAL object the checkpoint's manifest pins, with size and etag (one HEAD each).
    pub async fn pinned_objects(&self, manifest_id: u64) -> Result<Vec<PinnedObject>, EngineError> {
        let manifest = self.pinned_manifest(manifest_id).await?;
        let resolver = PathResolver::new(self.path.clone(), &manifest);
        let mut wanted: Vec<(String, Path, bool)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for view in manifest.all_sst_views() {
            let id = view.sst.id;
            if seen.insert(id.value()) {
                wanted.push((format!("sst/{}", id.value()), resolver.sst_path(&id), false));
            }
        }
        for wal_id in manifest.replay_after_wal_id() + 1..manifest.next_wal_sst_id() {
            let path = self
                .path
                .clone()
                .join("wal")
                .join(format!("{wal_id:020}.sst"));
            wanted.push((format!("wal/{wal_id:020}"), path, true));
        }
        let (main, wal, timeout) = (
            self.store.main.clone(),
            self.store.wal_or_main().clone(),
            self.timeout,
        );
        let mut objects: Vec<PinnedObject> = futures::stream::iter(wanted)
            .map(move |(key, path, is_wal)| {
                let store = if is_wal { wal.clone() } else { main.clone() };
                head_pinned(store, key, path, is_wal, timeout)
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// The checkpoint's fingerprint; `content` also hashes every pinned object (streaming, in
    /// parallel with bounded concurrency).
    pub async fn fingerprint(
        &self,
        manifest_id: u64,
        content: bool,
    ) -> Result<Fingerprint, EngineError> {
        let objects = self.pinned_objects(manifest_id).await?;
        let manifest = manifest_path(&self.path, manifest_id);
        let manifest_bytes = self
            .bounded_store("get manifest", async {
                self.store.main.get(&manifest).await?.bytes().await
            })
            .await?;
        let mut lines: Vec<String> = objects
            .iter()
            .map(|o| format!("{} {} {}", o.path, o.size, o.etag.as_deref().unwrap_or("-")))
            .collect();
        lines.sort();
        let mut digest = Sha256::new();
        digest.update(&manifest_bytes);
        for line in &lines {
            digest.update(line.as_bytes());
            digest.update(b"\n");
        }
        let content_root = if content {
            Some(self.content_root(&objects).await?)
        } else {
            None
        };
        Ok(Fingerprint {
            metadata_digest: hex::encode(digest.finalize()),
            content_root,
            size_bytes: objects.iter().map(|o| o.size).sum(),
            object_count: objects.len() as u64,
        })
    }

    async fn content_root(&self, objects: &[PinnedObject]) -> Result<String, EngineError> {
        let leaves = self.content_hashes(objects, &|_| {}).await?;
        let leaves: Vec<(String, [u8; 32])> = leaves
            .into_iter()
            .map(|(object, hash)| (object.key, hash))
            .collect();
        Ok(hex::encode(merkle_root(&leaves)))
    }

    /// The sha256 of every object's content, streamed in parallel with bounded concurrency, sorted
    /// by logical key; `on_hashed` is called with each object as it finishes.
    pub async fn content_hashes(
        &self,
        objects: &[PinnedObject],
        on_hashed: &(dyn Fn(&PinnedObject) + Sync),
    ) -> Result<Vec<(PinnedObject, [u8; 32])>, EngineError> {
        let (main, wal) = (self.store.main.clone(), self.store.wal_or_main().clone());
        let mut hashed = futures::stream::iter(objects.to_vec())
            .map(move |object| {
                let store = if object.is_wal {
                    wal.clone()
                } else {
                    main.clone()
                };
                async move {
                    let hash =
                        stream_sha256(store, object.path.clone())
                            .await
                            .map_err(|source| EngineError::Store {
                                operation: "read pinned object",
                                source,
                            })?;
                    Ok::<_, EngineError>((object, hash))
                }
            })
            .buffer_unordered(CONCURRENCY);
        let mut leaves = Vec::with_capacity(objects.len());
        while let Some(result) = hashed.next().await {
            let (object, hash) = result?;
            on_hashed(&object);
            leaves.push((object, hash));
        }
        leaves.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        Ok(leaves)
    }

    /// Reads every block of every pinned SST through SlateDB's reader, which checks each block's
    /// CRC; the first corrupt object is named in the error.
    pub async fn verify_blocks(&self, manifest_id: u64) -> Result<u64, EngineError> {
        let objects = self.pinned_objects(manifest_id).await?;
        self.verify_blocks_of(&objects).await
    }

    /// [`Database::verify_blocks`] for objects already listed.
    pub async fn verify_blocks_of(&self, objects: &[PinnedObject]) -> Result<u64, EngineError> {
        let objects = objects.to_vec();
        let (main, timeout) = (self.store.main.clone(), self.timeout);
        let ssts: Vec<PinnedObject> = objects.into_iter().filter(|o| !o.is_wal).collect();
        let blocks: Vec<u64> = futures::stream::iter(ssts)
            .map(move |object| verify_sst_blocks(main.clone(), object, timeout))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(blocks.iter().sum())
    }
}

async fn verify_sst_blocks(
    store: Arc<dyn ObjectStore>,
    object: PinnedObject,
    timeout: Duration,
) -> Result<u64, EngineError> {
    {
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
        let reader = SstReader::new(Path::from(owner), store, None, None);
        let sst = tokio::time::timeout(timeout, reader.open(ulid))
            .await
            .map_err(|_| EngineError::Timeout {
                operation: "open SST",
                after: timeout,
            })?
            .map_err(|e| corrupt(e.to_string()))?;
        let index = sst.index().await.map_err(|e| corrupt(e.to_string()))?;
        for block in 0..index.len() {
            sst.read_block(block)
                .await
                .map_err(|e| corrupt(format!("block {block}: {e}")))?;
        }
        Ok(index.len() as u64)
    }
}

async fn head_pinned(
    store: Arc<dyn ObjectStore>,
    key: String,
    path: Path,
    is_wal: bool,
    timeout: Duration,
) -> Result<PinnedObject, EngineError> {
    let meta = match tokio::time::timeout(timeout, store.head(&path)).await {
        Err(_) => {
            return Err(EngineError::Timeout {
                operation: "head pinned object",
                after: timeout,
            })
        }
        Ok(Err(object_store::Error::NotFound { .. })) => {
            return Err(EngineError::Corrupt {
                object: path.to_string(),
                detail: "pinned by the checkpoint but missing from the store".into(),
            })
        }
        Ok(Err(source)) => {
            return Err(EngineError::Store {
                operation: "head pinned object",
                source,
            })
        }
        Ok(Ok(meta)) => meta,
    };
    Ok(PinnedObject {
        key,
        path,
        size: meta.size,
        etag: meta.e_tag,
        is_wal,
    })
}

async fn stream_sha256(
    store: Arc<dyn ObjectStore>,
    path: Path,
) -> Result<[u8; 32], object_store::Error> {
    let mut stream = store.get(&path).await?.into_stream();
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk?);
    }
    Ok(hasher.finalize().into())
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
