//! Re-encodes between stores on temporary directories (the fixtures of `tests.rs`): every codec
//! read back row for row, block sizes, resume after an interruption, a row altered before the
//! read-back, refused targets, a clone as the source, rows with a TTL.

use super::reencode::REENCODE_DIR;
use super::tests::{
    assert_rows, database, files, fixture, more_rows, options as copy_options, Fixture, KEYS,
    TIMEOUT,
};
use super::*;
use crate::engine::manifest_guard::CODECS;
use crate::engine::sample::{sample_row, sample_settings, write_sample_db};
use crate::engine::store_layers::{FaultPlan, InstrumentedStore};
use crate::engine::{initialize_clone, CloneConfig, Store, Verification};
use slatedb::config::{CompressionCodec, FlushOptions, FlushType, PutOptions, SstBlockSize, Ttl};
use slatedb::{DbReader, DbReaderMode};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

fn reencode_options(codec: Option<CompressionCodec>) -> ReencodeOptions {
    ReencodeOptions {
        compression: codec,
        ..Default::default()
    }
}

impl Fixture {
    async fn reencode(
        &self,
        checkpoint: &CheckpointInfo,
        target: &Database,
        options: &ReencodeOptions,
    ) -> Result<ReencodeReport, EngineError> {
        let id = CloneSourceCheckpoint::Id(checkpoint.id);
        reencode_checkpoint(&self.source, &id, target, options, |_| {}).await
    }

    /// Runs the re-encode in a task whose progress callback panics once `stop` says so (the run
    /// is then over at that point, as if the process had died); returns the last progress seen.
    async fn interrupted(
        &self,
        path: &str,
        options: &ReencodeOptions,
        stop: impl Fn(&ReencodeProgress) -> bool + Send + Sync + 'static,
    ) -> ReencodeProgress {
        let (source, target) = (self.source.clone(), self.target(path));
        let (options, id) = (
            options.clone(),
            CloneSourceCheckpoint::Id(self.checkpoint.id),
        );
        let last = Arc::new(Mutex::new(None));
        let seen = last.clone();
        let task = tokio::spawn(async move {
            reencode_checkpoint(&source, &id, &target, &options, move |p| {
                let stopping = stop(&p);
                *seen.lock().unwrap() = Some(p);
                if stopping {
                    panic!("test: the run stops here");
                }
            })
            .await
        });
        let ended = task.await;
        assert!(
            ended.as_ref().is_err_and(|e| e.is_panic()),
            "the run finished before it was stopped: {ended:?}"
        );
        let last = last.lock().unwrap().clone();
        last.unwrap()
    }
}

/// The codec of every SST in the target's latest manifest (at least one).
async fn target_codecs(target: &Database) -> Vec<Option<CompressionCodec>> {
    let manifest = target.latest_manifest().await.unwrap();
    let codecs: Vec<_> = manifest
        .all_sst_views()
        .map(|v| v.sst.info.compression_codec)
        .collect();
    assert!(!codecs.is_empty());
    codecs
}

#[tokio::test]
async fn every_codec_round_trips_every_row_and_the_target_ssts_use_it() {
    let f = fixture(4).await;
    let source_files = files(f.source_dir.path());
    let mut digests = Vec::new();
    let mut uncompressed_bytes = 0;
    for (_, codec, name) in CODECS {
        let path = format!("re/{name}");
        let target = f.target(&path);
        let seen = Mutex::new(Vec::<ReencodeProgress>::new());
        let id = CloneSourceCheckpoint::Id(f.checkpoint.id);
        let report = reencode_checkpoint(&f.source, &id, &target, &reencode_options(codec), |p| {
            seen.lock().unwrap().push(p)
        })
        .await
        .unwrap();
        assert_eq!(report.rows, KEYS as u64, "{name}");
        assert_eq!((report.rows_written, report.rows_skipped), (KEYS as u64, 0));
        assert!(report.committed && !report.resumed && !report.already_complete);
        assert_eq!(report.compression, codec);
        assert!(report.target_ssts > 0, "{report:?}");
        assert!(target_codecs(&target).await.iter().all(|c| *c == codec));
        assert_rows(&f.target_store, &path, KEYS).await;
        let percents: Vec<u32> = seen.lock().unwrap().iter().map(|p| p.percent()).collect();
        assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
        assert_eq!(percents.last(), Some(&100));
        match codec {
            None => uncompressed_bytes = report.target_bytes,
            Some(_) => assert!(
                report.target_bytes < uncompressed_bytes,
                "{name}: {} bytes, {uncompressed_bytes} uncompressed",
                report.target_bytes
            ),
        }
        digests.push(report.digest.clone());

        // Finished: a second run is a no-op that writes nothing.
        let before = f.target_files(&path);
        assert!(before.contains_key(&format!("{REENCODE_DIR}/done.json")));
        let again = f
            .reencode(&f.checkpoint, &target, &reencode_options(codec))
            .await
            .unwrap();
        assert!(again.already_complete && again.committed, "{again:?}");
        assert_eq!((again.digest, again.rows_written), (report.digest, 0));
        assert_eq!(f.target_files(&path), before);
    }
    digests.dedup();
    assert_eq!(digests.len(), 1, "rows are rows, whatever the codec");
    assert_eq!(
        files(f.source_dir.path()),
        source_files,
        "the source is byte-identical"
    );
}

#[tokio::test]
async fn the_block_size_shapes_the_target_ssts() {
    let f = fixture(1).await;
    let mut blocks = Vec::new();
    for size in [SstBlockSize::Block1Kib, SstBlockSize::Block64Kib] {
        let path = format!("re/{}", size.as_bytes());
        let target = f.target(&path);
        let options = ReencodeOptions {
            block_size: size,
            ..reencode_options(Some(CompressionCodec::Lz4))
        };
        let report = f.reencode(&f.checkpoint, &target, &options).await.unwrap();
        assert_eq!(report.block_size, size.as_bytes());
        let checked = target
            .fingerprint(report.target_manifest_id, true)
            .await
            .unwrap();
        blocks.push(checked.blocks_checked.unwrap());
        assert_rows(&f.target_store, &path, KEYS).await;
    }
    // ~22 KiB of rows: many 1 KiB blocks, one 64 KiB block.
    assert!(blocks[0] >= 10 && blocks[1] == 1, "{blocks:?}");
    assert_eq!(sst_block_size(4096).unwrap(), SstBlockSize::Block4Kib);
    assert!(sst_block_size(3000).is_err());
}

#[tokio::test]
async fn an_interrupted_reencode_resumes_after_the_recorded_key_with_the_same_digest() {
    let f = fixture(4).await;
    let reference = f
        .reencode(
            &f.checkpoint,
            &f.target("re/whole"),
            &reencode_options(None),
        )
        .await
        .unwrap();
    // A resume point after about every 50 rows.
    let small = ReencodeOptions {
        batch_bytes: 256,
        record_every_bytes: 1024,
        ..reencode_options(Some(CompressionCodec::Zstd))
    };
    let stopped = f
        .interrupted("re/r", &small, |p| {
            p.phase == ReencodePhase::Rewrite && p.rows_recorded >= 300
        })
        .await;
    let recorded = stopped.rows_recorded;
    assert!(
        (300..KEYS as u64).contains(&recorded),
        "{recorded} rows recorded"
    );
    assert!(
        !f.target_files("re/r")
            .contains_key(&format!("{REENCODE_DIR}/done.json")),
        "not finished"
    );

    let target = f.target("re/r");
    let seen = Mutex::new(Vec::<ReencodeProgress>::new());
    let id = CloneSourceCheckpoint::Id(f.checkpoint.id);
    let report = reencode_checkpoint(&f.source, &id, &target, &small, |p| {
        seen.lock().unwrap().push(p)
    })
    .await
    .unwrap();
    assert!(report.resumed && report.committed, "{report:?}");
    assert_eq!(
        report.rows_skipped, recorded,
        "continued after the recorded key"
    );
    assert_eq!(report.rows_written, KEYS as u64 - recorded);
    assert_eq!(report.rows, KEYS as u64);
    assert_eq!(report.digest, reference.digest, "the same rows");
    let first = seen.lock().unwrap()[1].clone();
    assert_eq!(
        (first.phase, first.rows_done),
        (ReencodePhase::Rewrite, recorded),
        "the resumed run starts at the recorded rows"
    );
    assert!(target_codecs(&target)
        .await
        .iter()
        .all(|c| *c == small.compression));
    assert_rows(&f.target_store, "re/r", KEYS).await;
    // Only started.json and done.json are left of the records.
    let records: Vec<String> = f
        .target_files("re/r")
        .into_keys()
        .filter(|p| p.starts_with(REENCODE_DIR))
        .collect();
    assert_eq!(
        records,
        [
            format!("{REENCODE_DIR}/done.json"),
            format!("{REENCODE_DIR}/started.json")
        ]
    );
}

#[tokio::test]
async fn a_row_altered_at_the_target_before_the_read_back_fails_the_digest_and_is_removed() {
    let f = fixture(2).await;
    let options = reencode_options(Some(CompressionCodec::Snappy));
    f.interrupted("re/m", &options, |p| p.phase == ReencodePhase::Verify)
        .await;
    // Everything is written and recorded; someone changes a row before the read-back.
    let writer = slatedb::Db::builder("re/m", f.target_store.main.clone())
        .with_settings(sample_settings(Some(CompressionCodec::Snappy)))
        .build()
        .await
        .unwrap();
    let (key, _) = sample_row(17);
    writer.put(key.as_bytes(), b"altered").await.unwrap();
    let memtable = FlushOptions {
        flush_type: FlushType::MemTable,
    };
    writer.flush_with_options(memtable).await.unwrap();
    writer.close().await.unwrap();

    let target = f.target("re/m");
    let error = f
        .reencode(&f.checkpoint, &target, &options)
        .await
        .unwrap_err();
    let EngineError::ChecksumMismatch { objects, .. } = &error else {
        panic!("expected ChecksumMismatch, got {error}");
    };
    assert!(objects[0].contains("read back"), "{objects:?}");
    assert_eq!(error.reason(), "ChecksumMismatch");
    assert_eq!(
        f.target_files("re/m"),
        BTreeMap::new(),
        "the known-wrong work is removed"
    );
}

#[tokio::test]
async fn a_target_holding_anything_else_is_refused_as_diverged_and_left_alone() {
    let f = fixture(2).await;
    let options = reencode_options(Some(CompressionCodec::Zstd));
    let refused = |error: EngineError, says: &str| {
        assert!(matches!(error, EngineError::Diverged { .. }), "{error}");
        assert!(error.to_string().contains(says), "{error}");
    };

    // A database some SlateDB writer made.
    write_sample_db(&f.target_store, "re/db", 10, 1)
        .await
        .unwrap();
    let before = f.target_files("re/db");
    let error = f
        .reencode(&f.checkpoint, &f.target("re/db"), &options)
        .await;
    refused(error.unwrap_err(), "no re-encode wrote");
    assert_eq!(f.target_files("re/db"), before);

    // A byte copy, and a directory with someone's file.
    let copy = f.target("re/copy");
    f.copy(&f.checkpoint, &copy, &copy_options()).await.unwrap();
    let before = f.target_files("re/copy");
    refused(
        f.reencode(&f.checkpoint, &copy, &options)
            .await
            .unwrap_err(),
        "no re-encode wrote",
    );
    assert_eq!(f.target_files("re/copy"), before);
    let other = f.target_dir.path().join("re/other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let into_other = f.target("re/other");
    let error = f.reencode(&f.checkpoint, &into_other, &options).await;
    refused(error.unwrap_err(), "notes.txt");
    assert_eq!(files(&other).len(), 1);

    // A re-encode with another codec, or of another checkpoint.
    let done = f.target("re/done");
    f.reencode(&f.checkpoint, &done, &options).await.unwrap();
    let before = f.target_files("re/done");
    let lz4 = reencode_options(Some(CompressionCodec::Lz4));
    refused(
        f.reencode(&f.checkpoint, &done, &lz4).await.unwrap_err(),
        "codec zstd",
    );
    let newer = more_rows(&f.source_store, KEYS, KEYS + 10, false).await;
    refused(
        f.reencode(&newer, &done, &options).await.unwrap_err(),
        "another checkpoint",
    );
    // A target that is its source's path.
    let inside = database(&f.source_store, "parent/re");
    let error = f.reencode(&f.checkpoint, &inside, &options).await;
    assert!(error.unwrap_err().to_string().contains("overlaps"));
    assert_eq!(f.target_files("re/done"), before);
}

#[tokio::test]
async fn a_clone_is_reencoded_row_for_row_into_a_flat_database() {
    let f = fixture(2).await;
    let parent = f
        .reencode(
            &f.checkpoint,
            &f.target("re/parent"),
            &reencode_options(None),
        )
        .await
        .unwrap();
    let config = CloneConfig {
        store: f.source_store.clone(),
        source_path: "parent".into(),
        source_checkpoint: CloneSourceCheckpoint::Id(f.checkpoint.id),
        key_range: None,
        target_path: "clone".into(),
        verify: Verification::Metadata,
        admin_timeout: TIMEOUT,
        retry: RetryPolicy::default(),
        owner: None,
    };
    initialize_clone(config, |_| {}).await.unwrap();
    let clone = database(&f.source_store, "clone");
    let latest = CloneSourceCheckpoint::Latest {
        name: "reencode:clone".into(),
    };
    let target = f.target("re/clone");
    let options = reencode_options(Some(CompressionCodec::Zlib));
    let report = reencode_checkpoint(&clone, &latest, &target, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(
        report.digest, parent.digest,
        "the clone's rows are its parent's"
    );
    assert_rows(&f.target_store, "re/clone", KEYS).await;
    let manifest = target.latest_manifest().await.unwrap();
    assert!(manifest.external_dbs().is_empty(), "nothing refers back");
    let left = clone.list_checkpoints(Some("reencode:clone")).await;
    assert!(
        left.unwrap().is_empty(),
        "the temporary checkpoint is deleted"
    );
}

#[tokio::test]
async fn rows_with_a_ttl_keep_their_expiry_time() {
    let f = fixture(1).await;
    let in_a_day = chrono::Utc::now().timestamp_millis() + 86_400_000;
    let db = slatedb::Db::builder("parent", f.source_store.main.clone())
        .with_settings(sample_settings(None))
        .build()
        .await
        .unwrap();
    let ttl = PutOptions {
        ttl: Ttl::ExpireAtMillis(in_a_day),
    };
    db.put_with_options(b"expiring", b"soon", &ttl, &Default::default())
        .await
        .unwrap();
    for flush_type in [FlushType::Wal, FlushType::MemTable] {
        db.flush_with_options(FlushOptions { flush_type })
            .await
            .unwrap();
    }
    db.close().await.unwrap();
    let (checkpoint, _) = f.source.obtain_checkpoint("ttl", None).await.unwrap();
    let target = f.target("re/ttl");
    let report = f
        .reencode(&checkpoint, &target, &reencode_options(None))
        .await
        .unwrap();
    assert_eq!(report.rows, KEYS as u64 + 1);
    let reader = DbReader::builder("re/ttl", f.target_store.main.clone())
        .with_reader_mode(DbReaderMode::FollowLatest)
        .build()
        .await
        .unwrap();
    let row = reader.get_key_value(b"expiring").await.unwrap().unwrap();
    assert_eq!(row.expire_ts, Some(in_a_day));
    let (key, _) = sample_row(0);
    let row = reader.get_key_value(key.as_bytes()).await.unwrap().unwrap();
    assert_eq!(row.expire_ts, None);
    reader.close().await.unwrap();
}

#[test]
fn the_row_digest_is_order_independent_resumable_and_length_prefixed() {
    let rows: Vec<(String, String)> = (0..100).map(sample_row).collect();
    let digest_of = |rows: &[(String, String)]| {
        let mut digest = RowDigest::default();
        for (k, v) in rows {
            digest.add(k.as_bytes(), v.as_bytes(), None);
        }
        digest
    };
    let whole = digest_of(&rows);
    let mut reversed = rows.clone();
    reversed.reverse();
    assert_eq!(digest_of(&reversed), whole);
    // Resumed: the state after the first half, continued with the second.
    let mut resumed = digest_of(&rows[..40]);
    for (k, v) in &rows[40..] {
        resumed.add(k.as_bytes(), v.as_bytes(), None);
    }
    assert_eq!(resumed, whole);
    assert_eq!(whole.compare(&resumed, 0), Ok(0));
    // Split into batches digested apart (as the reading task does), then merged.
    let mut merged = digest_of(&rows[..40]);
    merged.merge(&digest_of(&rows[40..]));
    assert_eq!(merged, whole);

    let mut altered = rows.clone();
    altered[3].1.push('!');
    assert!(whole.compare(&digest_of(&altered), 0).is_err());
    let mut doubled = rows.clone();
    doubled.push(rows[5].clone());
    assert_ne!(
        digest_of(&doubled).hex(),
        whole.hex(),
        "a sum counts a row twice"
    );
    let (mut a, mut b) = (RowDigest::default(), RowDigest::default());
    a.add(b"ab", b"c", None);
    b.add(b"a", b"bc", None);
    assert_ne!(a.hex(), b.hex());
}

#[test]
fn rows_whose_ttl_passed_before_the_read_back_may_be_missing_and_no_others() {
    let mut source = RowDigest::default();
    source.add(b"lasting", b"v", None);
    source.add(b"expiring", b"v", Some(1_000));
    let mut target = RowDigest::default();
    target.add(b"lasting", b"v", None);
    assert_eq!(source.compare(&target, 2_000), Ok(1), "expired by then");
    assert!(source.compare(&target, 500).is_err(), "not expired yet");
    let mut altered = RowDigest::default();
    altered.add(b"lasting", b"w", None);
    assert!(source.compare(&altered, 2_000).is_err());
}

#[tokio::test]
async fn a_fresh_target_whose_run_loses_its_checkpoint_is_left_empty() {
    let f = fixture(2).await;
    // A slow target and a resume point after every batch, so that the run is still writing when
    // the checkpoint goes.
    let faults = FaultPlan {
        latency: Duration::from_millis(20),
        ..Default::default()
    };
    let slow = Store {
        main: Arc::new(InstrumentedStore::new(
            f.target_store.main.clone(),
            Some(faults),
        )),
        wal: None,
    };
    let small = ReencodeOptions {
        batch_bytes: 256,
        record_every_bytes: 256,
        checkpoint_lifetime: Duration::from_secs(2),
        ..reencode_options(None)
    };
    let (checkpoint, _) = f.source.obtain_checkpoint("short", None).await.unwrap();
    let writing = Arc::new(tokio::sync::Notify::new());
    let notify = writing.clone();
    let run = {
        let (source, target) = (f.source.clone(), database(&slow, "re/fresh"));
        tokio::spawn(async move {
            let id = CloneSourceCheckpoint::Id(checkpoint.id);
            reencode_checkpoint(&source, &id, &target, &small, move |p| {
                if p.rows_recorded >= 50 {
                    notify.notify_one();
                }
            })
            .await
        })
    };
    writing.notified().await;
    f.source.delete_checkpoint(checkpoint.id).await.unwrap();
    let error = run.await.unwrap().unwrap_err();
    assert!(
        matches!(error, EngineError::CheckpointMissing { .. }),
        "{error}"
    );
    assert_eq!(
        f.target_files("re/fresh"),
        BTreeMap::new(),
        "nothing is left"
    );
}

#[tokio::test]
async fn a_source_with_its_wal_in_another_store_is_read_through_it() {
    let f = fixture(1).await;
    let wal_dir = tempfile::tempdir().unwrap();
    let wal_store = super::tests::file_store(&wal_dir);
    let store = Store {
        main: f.source_store.main.clone(),
        wal: Some(wal_store.main.clone()),
    };
    // Rows only in WAL objects of the WAL store, pinned by the writer's durable checkpoint.
    let db = slatedb::Db::builder("walled", store.main.clone())
        .with_wal_object_store(wal_store.main.clone())
        .with_settings(sample_settings(None))
        .build()
        .await
        .unwrap();
    for i in 0..200 {
        let (key, value) = sample_row(i);
        db.put(key.as_bytes(), value.as_bytes()).await.unwrap();
    }
    let wal = FlushOptions {
        flush_type: FlushType::Wal,
    };
    db.flush_with_options(wal).await.unwrap();
    let scope = slatedb::config::CheckpointScope::Durable;
    let made = db.create_checkpoint(scope, &Default::default()).await;
    let made = made.unwrap();
    db.close().await.unwrap();
    let walled = database(&store, "walled");
    let id = CloneSourceCheckpoint::Id(made.id);
    let target = f.target("re/walled");
    let options = reencode_options(Some(CompressionCodec::Lz4));
    let report = reencode_checkpoint(&walled, &id, &target, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(report.rows, 200, "{report:?}");
    assert_rows(&f.target_store, "re/walled", 200).await;
}

#[tokio::test]
async fn an_empty_checkpoint_becomes_an_empty_database() {
    let f = fixture(1).await;
    write_sample_db(&f.source_store, "empty", 0, 1)
        .await
        .unwrap();
    let empty = database(&f.source_store, "empty");
    let (checkpoint, _) = empty.obtain_checkpoint("empty", None).await.unwrap();
    let id = CloneSourceCheckpoint::Id(checkpoint.id);
    let target = f.target("re/empty");
    let report = reencode_checkpoint(&empty, &id, &target, &reencode_options(None), |_| {})
        .await
        .unwrap();
    assert_eq!((report.rows, report.target_ssts), (0, 0), "{report:?}");
    assert!(report.committed);
    assert_eq!(report.digest, RowDigest::default().hex());
    assert_rows(&f.target_store, "re/empty", 0).await;
}
