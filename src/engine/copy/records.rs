//! What a copy keeps at its target besides the database itself, and how it reads a target back.
//!
//! Everything lives under `<target>/.slatedb-operator/copy/`, inside the database's prefix (so
//! SlateDB's `delete_db` removes it with the database) but in a directory SlateDB never reads:
//!
//! - `commits/<manifest id:020>.json`, a [`CommitRecord`]: written (create-if-absent) right
//!   before the copy writes manifest `<id>`, it holds that manifest's size and sha256, the source
//!   it came from, the content root, and the size and sha256 of every object of its closure.
//!   **A manifest at the target is "written by a copy" exactly when a record of its id exists and
//!   agrees with its size (and, for the latest manifest, its sha256).** A writer, a `DbReader`
//!   that manages its own checkpoint, a garbage collector, SlateDB's admin: each of them writes a
//!   manifest with a new id and no record, so the next copy sees it and refuses (`Diverged`).
//!   Records are immutable, like manifests, so no compare-and-swap is needed (the local file
//!   system has none for overwrites).
//! - `journal/<manifest id:020>-<run>-<seq:06>.json`, a [`JournalBatch`]: the size and sha256 (taken
//!   while reading the source) of objects a run has finished transferring, written every few
//!   objects. A resumed copy skips an object the journal names when the target holds it at that
//!   size, so the target itself is the resume state. On a target without a complete copy, batch 0
//!   of each run lists nothing: it marks the target as a copy's before the first data object is
//!   written. Journals are deleted once a copy commits (its record then holds every hash).
//! - `promoted.json`, a [`Promotion`]: written when a copy is promoted into an independent
//!   database, with the checkpoints the promotion deletes (so a resumed promotion knows them).

use super::super::error::EngineError;
use super::super::Database;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The directory of the copy's own records, relative to the database root.
pub(super) const COPY_DIR: &str = ".slatedb-operator/copy";

/// The format of the records written here.
const FORMAT: u32 = 1;

/// The directories of a SlateDB root a copy writes into (besides [`COPY_DIR`]).
const DATA_DIRS: [&str; 2] = ["compacted", "wal"];

/// One object of a closure: where it is relative to the root, its size and content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ObjectHash {
    /// Logical key (`sst/<ULID>` or `wal/<id>`), as in the content root.
    pub key: String,
    /// Path relative to the database root, e.g. `compacted/<ULID>.sst`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Read back from the target and found equal.
    #[serde(default)]
    pub verified: bool,
}

/// The record a copy writes before the manifest it commits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CommitRecord {
    pub format: u32,
    /// The source, as the caller labelled it (by default its path).
    pub source: String,
    pub checkpoint_id: String,
    pub manifest_id: u64,
    pub manifest_size: u64,
    pub manifest_sha256: String,
    pub content_root: String,
    pub committed_at: DateTime<Utc>,
    pub objects: Vec<ObjectHash>,
}

/// Objects one run finished transferring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JournalBatch {
    pub format: u32,
    pub source: String,
    pub manifest_id: u64,
    pub run: String,
    pub objects: Vec<ObjectHash>,
}

/// The record of a promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Promotion {
    pub format: u32,
    /// The copy's manifest that was promoted.
    pub manifest_id: u64,
    /// The checkpoints it inherited from its source, which the promotion deletes.
    pub checkpoints: Vec<String>,
    pub promoted_at: DateTime<Utc>,
}

impl CommitRecord {
    pub fn new(
        source: String,
        checkpoint_id: uuid::Uuid,
        manifest_id: u64,
        manifest: &Bytes,
        content_root: String,
        objects: Vec<ObjectHash>,
    ) -> CommitRecord {
        CommitRecord {
            format: FORMAT,
            source,
            checkpoint_id: checkpoint_id.to_string(),
            manifest_id,
            manifest_size: manifest.len() as u64,
            manifest_sha256: hex::encode(Sha256::digest(manifest)),
            content_root,
            committed_at: Utc::now(),
            objects,
        }
    }
}

impl JournalBatch {
    pub fn new(source: &str, manifest_id: u64, run: &str, objects: Vec<ObjectHash>) -> Self {
        JournalBatch {
            format: FORMAT,
            source: source.to_string(),
            manifest_id,
            run: run.to_string(),
            objects,
        }
    }
}

impl Promotion {
    pub fn new(manifest_id: u64, checkpoints: Vec<String>) -> Promotion {
        Promotion {
            format: FORMAT,
            manifest_id,
            checkpoints,
            promoted_at: Utc::now(),
        }
    }
}

/// `root/relative`, for a relative path made of valid parts.
pub(super) fn under(root: &Path, relative: &str) -> Result<Path, EngineError> {
    let joined = match root.as_ref() {
        "" => relative.to_string(),
        root => format!("{root}/{relative}"),
    };
    Path::parse(&joined).map_err(|e| EngineError::StoreConfig(format!("path {joined:?}: {e}")))
}

/// `path` relative to `root`, when it is under it.
pub(super) fn relative_to(path: &Path, root: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .prefix_match(root)?
        .map(|part| part.as_ref().to_string())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

pub(super) fn commit_path(root: &Path, manifest_id: u64) -> Result<Path, EngineError> {
    under(root, &format!("{COPY_DIR}/commits/{manifest_id:020}.json"))
}

pub(super) fn journal_path(
    root: &Path,
    manifest_id: u64,
    run: &str,
    seq: u32,
) -> Result<Path, EngineError> {
    under(
        root,
        &format!("{COPY_DIR}/journal/{manifest_id:020}-{run}-{seq:06}.json"),
    )
}

pub(super) fn promotion_path(root: &Path) -> Result<Path, EngineError> {
    under(root, &format!("{COPY_DIR}/promoted.json"))
}

/// A source label as compared between runs: trailing slashes do not matter.
pub(super) fn normalized_label(label: &str) -> String {
    label.trim_end_matches('/').to_string()
}

/// What a target holds, read in one listing plus the copy's records.
#[derive(Debug, Default)]
pub(super) struct Inventory {
    /// Every object under the target, by path relative to its root, with its size.
    pub objects: BTreeMap<String, u64>,
    /// Manifest ids present.
    pub manifests: BTreeSet<u64>,
    /// Every commit record, by manifest id (committed or not: see [`Inventory::committed`]).
    pub records: BTreeMap<u64, CommitRecord>,
    pub journals: Vec<(String, JournalBatch)>,
    pub promotion: Option<Promotion>,
}

/// What [`Inventory::classify`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TargetState {
    /// Nothing there.
    Empty,
    /// Only what copies of this source wrote: earlier complete copies (`latest` committed
    /// manifest), unfinished work, or both.
    Copy { latest: Option<u64> },
}

impl Inventory {
    /// Lists the target and reads the copy's records.
    pub async fn read(target: &Database) -> Result<Inventory, EngineError> {
        let listing = target
            .bounded_store(
                "list copy target",
                target
                    .store
                    .main
                    .list(Some(&target.path))
                    .try_collect::<Vec<_>>(),
            )
            .await?;
        let mut inventory = Inventory::default();
        for meta in listing {
            if let Some(relative) = relative_to(&meta.location, &target.path) {
                inventory.objects.insert(relative, meta.size);
            }
        }
        inventory.manifests = inventory
            .objects
            .keys()
            .filter_map(|p| p.strip_prefix("manifest/")?.strip_suffix(".manifest"))
            .filter_map(|id| id.parse().ok())
            .collect();
        let ours: Vec<String> = inventory
            .objects
            .keys()
            .filter(|p| p.starts_with(COPY_DIR) && p.ends_with(".json"))
            .cloned()
            .collect();
        let reads = ours.into_iter().map(|relative| async move {
            let bytes = read_object(target, &relative).await?;
            Ok::<_, EngineError>((relative, bytes))
        });
        let read: Vec<(String, Option<Bytes>)> = futures::stream::iter(reads)
            .buffer_unordered(8)
            .try_collect()
            .await?;
        for (relative, bytes) in read {
            // Gone between the listing and the read: a concurrent cleanup; it no longer counts.
            let Some(bytes) = bytes else { continue };
            let corrupt = |e: serde_json::Error| EngineError::Corrupt {
                object: format!("{}/{relative}", target.path),
                detail: format!("not a copy record: {e}"),
            };
            let rest = &relative[COPY_DIR.len()..];
            if rest.starts_with("/commits/") {
                let record: CommitRecord = serde_json::from_slice(&bytes).map_err(corrupt)?;
                inventory.records.insert(record.manifest_id, record);
            } else if rest.starts_with("/journal/") {
                let batch: JournalBatch = serde_json::from_slice(&bytes).map_err(corrupt)?;
                inventory.journals.push((relative, batch));
            } else if rest == "/promoted.json" {
                inventory.promotion = Some(serde_json::from_slice(&bytes).map_err(corrupt)?);
            }
        }
        Ok(inventory)
    }

    /// Records whose manifest is at the target: the complete copies.
    pub fn committed(&self) -> impl Iterator<Item = &CommitRecord> {
        self.records
            .values()
            .filter(|r| self.manifests.contains(&r.manifest_id))
    }

    /// Whether the target holds only what copies of `source` wrote (see the module doc), and
    /// which manifest is its latest complete copy. Reads the latest manifest's bytes to compare
    /// them with its record.
    pub async fn classify(
        &self,
        target: &Database,
        source: &str,
    ) -> Result<TargetState, EngineError> {
        let path = target.path.to_string();
        let diverged = |detail: String| EngineError::Diverged {
            path: path.clone(),
            detail,
        };
        if self.objects.is_empty() {
            return Ok(TargetState::Empty);
        }
        if self.promotion.is_some() {
            return Err(diverged(
                "it was promoted into an independent database".into(),
            ));
        }
        for id in &self.manifests {
            let size = self
                .objects
                .get(&format!("manifest/{id:020}.manifest"))
                .copied();
            match self.records.get(id) {
                None => {
                    return Err(diverged(format!(
                        "manifest {id} has no copy's commit record: a SlateDB writer, reader or \
                         admin wrote it"
                    )))
                }
                Some(record) if Some(record.manifest_size) != size => {
                    return Err(diverged(format!(
                        "manifest {id} is not the one the copy committed ({size:?} bytes, the \
                         copy wrote {})",
                        record.manifest_size
                    )))
                }
                Some(_) => {}
            }
        }
        let latest = self.manifests.iter().next_back().copied();
        if let Some(id) = latest {
            let bytes = read_object(target, &format!("manifest/{id:020}.manifest"))
                .await?
                .unwrap_or_default();
            let sha = hex::encode(Sha256::digest(&bytes));
            if self.records.get(&id).map(|r| &r.manifest_sha256) != Some(&sha) {
                return Err(diverged(format!(
                    "manifest {id}'s content is not what the copy committed"
                )));
            }
        }
        let label = normalized_label(source);
        if let Some(other) = self
            .committed()
            .map(|r| &r.source)
            .find(|s| normalized_label(s) != label)
        {
            return Err(diverged(format!(
                "it holds a copy of another source, {other:?}"
            )));
        }
        let has_journal = !self.journals.is_empty();
        if let Some((_, batch)) = self
            .journals
            .iter()
            .find(|(_, b)| normalized_label(&b.source) != label)
        {
            return Err(diverged(format!(
                "it holds an unfinished copy of another source, {:?}",
                batch.source
            )));
        }
        let managed = |p: &str| {
            p.starts_with(COPY_DIR)
                || p.starts_with("manifest/")
                || DATA_DIRS.iter().any(|d| p.starts_with(&format!("{d}/")))
        };
        let foreign = match self.objects.keys().find(|p| !managed(p)) {
            Some(foreign) => Some(foreign),
            // Data but no record of a copy at all: not ours either.
            None if !has_journal && self.records.is_empty() => self.objects.keys().next(),
            None => None,
        };
        if let Some(example) = foreign {
            return Err(diverged(format!(
                "it holds objects no copy wrote, e.g. {example:?}"
            )));
        }
        Ok(TargetState::Copy { latest })
    }

    /// Paths (relative) that complete copies need: their manifests, records and closures.
    pub fn kept(&self) -> BTreeSet<String> {
        let mut kept = BTreeSet::new();
        for record in self.committed() {
            kept.insert(format!("manifest/{:020}.manifest", record.manifest_id));
            kept.insert(format!(
                "{COPY_DIR}/commits/{:020}.json",
                record.manifest_id
            ));
            kept.extend(record.objects.iter().map(|o| o.path.clone()));
        }
        kept
    }

    /// Content hashes known for objects, by relative path, and whether the object was read back
    /// and found equal: from complete copies and from journals (hashes taken while reading the
    /// source; read back unless the copy ran with `Metadata` verification).
    pub fn known_hashes(&self) -> BTreeMap<String, (ObjectHash, bool)> {
        let mut known = BTreeMap::new();
        for (_, batch) in &self.journals {
            for object in &batch.objects {
                known.insert(object.path.clone(), (object.clone(), object.verified));
            }
        }
        for record in self.committed() {
            for object in &record.objects {
                known.insert(object.path.clone(), (object.clone(), object.verified));
            }
        }
        known
    }

    /// Objects under the copy's directories that no complete copy needs: unfinished work.
    pub fn unreferenced(&self) -> Vec<String> {
        unreferenced(self.objects.keys(), &self.kept())
    }

    /// [`Inventory::unreferenced`] once a copy has committed `manifest_id` after writing the
    /// objects `written` (relative paths: its closure and its journals).
    pub fn unreferenced_after(&self, manifest_id: u64, written: &[String]) -> Vec<String> {
        let mut kept = self.kept();
        kept.insert(format!("{COPY_DIR}/commits/{manifest_id:020}.json"));
        let closure = written.iter().filter(|p| !p.starts_with(COPY_DIR));
        kept.extend(closure.cloned());
        let present: BTreeSet<&String> = self.objects.keys().chain(written).collect();
        unreferenced(present.into_iter(), &kept)
    }
}

fn unreferenced<'a>(
    present: impl Iterator<Item = &'a String>,
    kept: &BTreeSet<String>,
) -> Vec<String> {
    present
        .filter(|p| {
            p.starts_with(COPY_DIR) || DATA_DIRS.iter().any(|d| p.starts_with(&format!("{d}/")))
        })
        .filter(|p| !kept.contains(*p) && !p.ends_with("/promoted.json"))
        .cloned()
        .collect()
}

/// An object's bytes, or `None` when it does not exist.
pub(super) async fn read_object(
    database: &Database,
    relative: &str,
) -> Result<Option<Bytes>, EngineError> {
    let path = under(&database.path, relative)?;
    database
        .bounded_store("read copy record", async {
            match database.store.main.get(&path).await {
                Ok(found) => found.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
}

/// Creates `path` with `body` unless it exists; returns the existing bytes when it does.
pub(super) async fn create_object(
    database: &Database,
    path: &Path,
    body: Bytes,
) -> Result<Option<Bytes>, EngineError> {
    if database
        .create_if_absent("create copy object", path, body)
        .await?
    {
        return Ok(None);
    }
    let relative = relative_to(path, &database.path).unwrap_or_default();
    Ok(Some(
        read_object(database, &relative).await?.unwrap_or_default(),
    ))
}

/// Writes a JSON record with create-if-absent; `Ok(false)` when one was already there.
pub(super) async fn create_record<T: Serialize + for<'de> Deserialize<'de> + PartialEq>(
    database: &Database,
    path: &Path,
    record: &T,
    same: impl Fn(&T, &T) -> bool,
) -> Result<bool, EngineError> {
    let body =
        serde_json::to_vec_pretty(record).map_err(|e| EngineError::StoreConfig(e.to_string()))?;
    match create_object(database, path, body.into()).await? {
        None => Ok(true),
        Some(existing) => {
            let existing: T =
                serde_json::from_slice(&existing).map_err(|e| EngineError::Corrupt {
                    object: path.to_string(),
                    detail: format!("not a copy record: {e}"),
                })?;
            if same(&existing, record) {
                Ok(false)
            } else {
                Err(EngineError::Diverged {
                    path: database.path.to_string(),
                    detail: format!("{path} already holds another copy's record"),
                })
            }
        }
    }
}

/// Deletes objects (relative paths) under the database, a chunk at a time under the timeout.
pub(super) async fn delete_objects(
    database: &Database,
    relative: &[String],
) -> Result<usize, EngineError> {
    let mut deleted = 0;
    for chunk in relative.chunks(256) {
        let paths: Vec<Path> = chunk
            .iter()
            .map(|r| under(&database.path, r))
            .collect::<Result<_, _>>()?;
        let locations = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let removed = database
            .bounded_store("delete copy objects", async {
                database
                    .store
                    .main
                    .delete_stream(locations)
                    .filter(|r| {
                        let missing = matches!(r, Err(object_store::Error::NotFound { .. }));
                        std::future::ready(!missing)
                    })
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?;
        deleted += removed.len();
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_relocate_between_roots() {
        let root = Path::from("a/b");
        let object = Path::from("a/b/compacted/X.sst");
        assert_eq!(
            relative_to(&object, &root).as_deref(),
            Some("compacted/X.sst")
        );
        assert_eq!(relative_to(&object, &Path::from("a/c")), None);
        assert_eq!(
            under(&Path::from("x"), "compacted/X.sst").unwrap(),
            Path::from("x/compacted/X.sst")
        );
        assert_eq!(
            under(&Path::from(""), "wal/1.sst").unwrap(),
            Path::from("wal/1.sst")
        );
        assert_eq!(
            relative_to(&Path::from("wal/1.sst"), &Path::from("")).as_deref(),
            Some("wal/1.sst")
        );
        assert_eq!(normalized_label("s3://b/db/"), "s3://b/db");
    }
}
