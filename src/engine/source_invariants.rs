//! The promise "the operator only ever adds or removes checkpoints on a source", tested: every
//! engine path that makes SlateDB write a database's manifest on the operator's behalf, on a
//! database written by a SlateDB application with each compression codec. After each step the
//! parent's latest manifest equals the one before in every field but the checkpoint list (read
//! through SlateDB's public API), its SST and WAL objects are byte-identical, and at the end an
//! application reads the parent and every clone back row for row.

use super::clone::{
    initialize_clone, CloneConfig, CloneSourceCheckpoint, RetryPolicy, Verification,
};
use super::manifest_guard::CODECS;
use super::sample::{sample_row, sample_settings, write_compressed_sample_db};
use super::{CheckpointSelector, Database, Store, StoreConfig};
use bytes::Bytes;
use serde_json::{json, Value};
use slatedb::config::CompressionCodec;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::time::Duration;

const KEYS: usize = 1_200;
/// Rows the live parent's writer left only in its WAL.
const TAIL_KEYS: usize = 50;
const TIMEOUT: Duration = Duration::from_secs(30);

fn json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap()
}

/// Every field of the latest manifest that SlateDB exposes, except its id and its checkpoints.
async fn manifest_view(db: &Database) -> Value {
    let m = db.latest_manifest().await.unwrap();
    json!({
        "initialized": m.initialized(),
        "writer_epoch": m.writer_epoch(),
        "compactor_epoch": m.compactor_epoch(),
        "external_dbs": json(m.external_dbs()),
        "last_compacted_l0_sst_view_id": m.last_compacted_l0_sst_view_id().map(|u| u.to_string()),
        "last_compacted_l0_sst_id": m.last_compacted_l0_sst_id().map(|u| u.to_string()),
        "l0": json(m.l0()),
        "compacted": json(m.compacted()),
        "next_wal_sst_id": m.next_wal_sst_id(),
        "replay_after_wal_id": m.replay_after_wal_id(),
        "last_l0_clock_tick": m.last_l0_clock_tick(),
        "last_l0_seq": m.last_l0_seq(),
        "recent_snapshot_min_seq": m.recent_snapshot_min_seq(),
        "sequence_tracker": json(m.sequence_tracker()),
        "wal_object_store_uri": m.wal_object_store_uri(),
        "segment_extractor_name": m.segment_extractor_name(),
        "segments": json(m.segments()),
    })
}

/// The bytes of every SST and WAL object under `db` on disk.
fn data_objects(root: &Path, db: &str) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.map(|e| e.unwrap().path()) {
            if path.is_dir() {
                walk(&path, into);
            } else {
                into.insert(path.display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut objects = BTreeMap::new();
    for sub in ["compacted", "wal"] {
        walk(&root.join(db).join(sub), &mut objects);
    }
    objects
}

/// A parent database and what must not change about it.
struct Parent {
    db: Database,
    name: String,
    view: Value,
    objects: BTreeMap<String, Vec<u8>>,
    codec: Option<CompressionCodec>,
}

impl Parent {
    async fn new(
        store: &Store,
        root: &Path,
        name: String,
        codec: Option<CompressionCodec>,
    ) -> Self {
        let db = Database::new(store.clone(), &name, TIMEOUT);
        let view = manifest_view(&db).await;
        // The view carries each SST's codec, so a manifest that lost it differs.
        let l0 = view["l0"].as_array().unwrap();
        assert!(!l0.is_empty());
        for sst in l0 {
            assert_eq!(
                sst["sst"]["info"]["compression_codec"],
                json(codec),
                "{sst}"
            );
        }
        let objects = data_objects(root, &name);
        assert!(!objects.is_empty());
        Parent {
            db,
            name,
            view,
            objects,
            codec,
        }
    }

    /// Asserts that `step` changed nothing about the parent but its checkpoints.
    async fn unchanged_after(&self, root: &Path, step: &str) {
        let view = manifest_view(&self.db).await;
        let fields = self.view.as_object().unwrap();
        for (field, before) in fields {
            assert_eq!(
                &view[field], before,
                "{} ({:?}): manifest field {field} changed by {step}",
                self.name, self.codec
            );
        }
        assert!(
            data_objects(root, &self.name) == self.objects,
            "{} ({:?}): SST or WAL bytes changed by {step}",
            self.name,
            self.codec
        );
        self.db.ensure_manifest_preserved().await.unwrap();
    }
}

fn clone_config(
    store: &Store,
    parent: &Parent,
    source: CloneSourceCheckpoint,
    target: &str,
    key_range: Option<(Bound<Bytes>, Bound<Bytes>)>,
    verify: Verification,
) -> CloneConfig {
    CloneConfig {
        store: store.clone(),
        source_path: parent.name.clone(),
        source_checkpoint: source,
        key_range,
        target_path: target.into(),
        verify,
        admin_timeout: TIMEOUT,
        retry: RetryPolicy::default(),
        owner: None,
    }
}

/// The codec of every SST in the clone's manifest is the one the parent's application wrote.
async fn assert_codecs(store: &Store, path: &str, codec: Option<CompressionCodec>) {
    let clone = Database::new(store.clone(), path, TIMEOUT);
    let manifest = clone.latest_manifest().await.unwrap();
    assert!(manifest.all_sst_views().count() > 0);
    for view in manifest.all_sst_views() {
        assert_eq!(view.sst.info.compression_codec, codec, "{path}");
    }
    clone.ensure_manifest_preserved().await.unwrap();
}

/// Opens `path` as an application configured with `codec` and reads rows `keys` (with the
/// live parent's WAL-only tail when `tail`), expecting exactly `visible` of them.
async fn read_back(
    store: &Store,
    path: &str,
    codec: Option<CompressionCodec>,
    visible: impl Fn(usize) -> bool,
    tail: bool,
) {
    let db = slatedb::Db::builder(path, store.main.clone())
        .with_settings(sample_settings(codec))
        .build()
        .await
        .unwrap();
    for i in 0..KEYS {
        let (key, value) = sample_row(i);
        let got = db.get(key.as_bytes()).await.unwrap();
        let expected = visible(i).then(|| Bytes::from(value));
        assert_eq!(got, expected, "{path} ({codec:?}) row {i}");
    }
    if tail {
        for i in 0..TAIL_KEYS {
            let key = format!("tail-{i:04}");
            assert!(
                db.get(key.as_bytes()).await.unwrap().is_some(),
                "{path} {key}"
            );
        }
    }
    db.close().await.unwrap();
}

/// A parent whose writer left `TAIL_KEYS` rows in its WAL only.
async fn write_live_parent(store: &Store, path: &str, codec: Option<CompressionCodec>) {
    write_compressed_sample_db(store, path, KEYS, 3, codec)
        .await
        .unwrap();
    let db = slatedb::Db::builder(path, store.main.clone())
        .with_settings(sample_settings(codec))
        .build()
        .await
        .unwrap();
    for i in 0..TAIL_KEYS {
        db.put(format!("tail-{i:04}").as_bytes(), b"tail")
            .await
            .unwrap();
    }
    db.close().await.unwrap();
}

async fn every_write_path_keeps_the_source(codec: Option<CompressionCodec>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = Store::open(&StoreConfig {
        url: format!("file://{}", root.display()),
        ..Default::default()
    })
    .unwrap();

    // A parent with a WAL tail: checkpoints, clones of a checkpoint and of the latest state.
    write_live_parent(&store, "live", codec).await;
    let live = Parent::new(&store, root, "live".into(), codec).await;
    let (checkpoint, _) = live
        .db
        .obtain_checkpoint("k8s:team/nightly/uid", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    live.unchanged_after(root, "checkpoint create").await;
    live.db
        .obtain_checkpoint("k8s:team/nightly/uid", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    live.db
        .find_checkpoint(&CheckpointSelector::Name("k8s:team/nightly/uid".into()))
        .await
        .unwrap();
    live.unchanged_after(root, "adopt").await;
    live.db
        .refresh_checkpoint(checkpoint.id, Some(Duration::from_secs(7200)))
        .await
        .unwrap();
    live.unchanged_after(root, "refresh").await;
    let fingerprint = live
        .db
        .fingerprint(checkpoint.manifest_id, true)
        .await
        .unwrap();
    assert!(fingerprint.blocks_checked.unwrap_or(0) > 0);

    for (target, source, verify) in [
        (
            "clones/of-checkpoint",
            CloneSourceCheckpoint::Id(checkpoint.id),
            Verification::Content,
        ),
        (
            "clones/of-latest",
            CloneSourceCheckpoint::Latest {
                name: "k8s:team/latest/uid".into(),
            },
            Verification::Metadata,
        ),
    ] {
        initialize_clone(
            clone_config(&store, &live, source, target, None, verify),
            |_| {},
        )
        .await
        .unwrap();
        live.unchanged_after(root, target).await;
        assert_codecs(&store, target, codec).await;
        read_back(&store, target, codec, |_| true, true).await;
    }
    Database::new(store.clone(), "clones/of-checkpoint", TIMEOUT)
        .delete_database()
        .await
        .unwrap();
    live.unchanged_after(root, "clone cleanup").await;
    assert!(live.db.delete_checkpoint(checkpoint.id).await.unwrap());
    live.unchanged_after(root, "checkpoint expiry").await;
    Database::new(store.clone(), "clones/of-latest", TIMEOUT)
        .delete_database()
        .await
        .unwrap();
    live.unchanged_after(root, "clone expiry").await;
    assert!(live.db.list_checkpoints(None).await.unwrap().is_empty());

    // A quiesced parent: clones projected to a key range.
    write_compressed_sample_db(&store, "quiet", KEYS, 3, codec)
        .await
        .unwrap();
    let quiet = Parent::new(&store, root, "quiet".into(), codec).await;
    let (checkpoint, _) = quiet
        .db
        .obtain_checkpoint("k8s:team/quiet/uid", None)
        .await
        .unwrap();
    let range = || {
        Some((
            Bound::Included(Bytes::from(sample_row(100).0)),
            Bound::Excluded(Bytes::from(sample_row(900).0)),
        ))
    };
    for (target, source) in [
        (
            "clones/range-of-checkpoint",
            CloneSourceCheckpoint::Id(checkpoint.id),
        ),
        (
            "clones/range-of-latest",
            CloneSourceCheckpoint::Latest {
                name: "k8s:team/range/uid".into(),
            },
        ),
    ] {
        let config = clone_config(
            &store,
            &quiet,
            source,
            target,
            range(),
            Verification::Content,
        );
        initialize_clone(config, |_| {}).await.unwrap();
        quiet.unchanged_after(root, target).await;
        assert_codecs(&store, target, codec).await;
        read_back(&store, target, codec, |i| (100..900).contains(&i), false).await;
        Database::new(store.clone(), target, TIMEOUT)
            .delete_database()
            .await
            .unwrap();
        quiet.unchanged_after(root, "ranged clone cleanup").await;
    }
    quiet.db.delete_checkpoint(checkpoint.id).await.unwrap();
    quiet.unchanged_after(root, "checkpoint delete").await;

    // The application reads both parents back, row for row.
    read_back(&store, "live", codec, |_| true, true).await;
    read_back(&store, "quiet", codec, |_| true, false).await;
}

#[tokio::test]
async fn every_write_path_keeps_an_uncompressed_source() {
    every_write_path_keeps_the_source(None).await;
}

#[tokio::test]
async fn every_write_path_keeps_compressed_sources() {
    for (_, codec, _) in CODECS.into_iter().filter(|c| c.1.is_some()) {
        every_write_path_keeps_the_source(codec).await;
    }
}
