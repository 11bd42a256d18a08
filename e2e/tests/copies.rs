//! The DatabaseCopy controller on the real API server: copies of a parent on the S3-protocol test
//! server to another store (a `file://` one), read back row for row with SlateDB, refreshed
//! incrementally, resumed after the operator is killed, refused on a diverged target, promoted.

use crate::clones::{create, objects_under, wait_checkpoint_ready, PARENT};
use crate::support::{eventually, write_sample_db, Operator, StoreKind, TestEnv, TestStore};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use slatedb::{DbReader, DbReaderMode};
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseCopy};
use slatedb_operator::engine::sample::{append_sample_rows, sample_row};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const TARGET: &str = "copies/orders";

fn condition(object: &DatabaseCopy, type_: &str) -> Option<(String, String, String)> {
    let status = object.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until copy `name` has condition `type_` True (and `check` holds).
async fn wait_copy(
    env: &TestEnv,
    name: &str,
    type_: &str,
    timeout: Duration,
    check: impl Fn(&DatabaseCopy) -> bool,
) -> DatabaseCopy {
    let api = env.api::<DatabaseCopy>();
    eventually(timeout, &format!("copy {name} {type_}=True"), || async {
        let object = api.get(name).await.ok()?;
        (condition(&object, type_)?.0 == "True" && check(&object)).then_some(object)
    })
    .await
}

/// Reads the database at `path` back with a SlateDB reader (which writes nothing) and checks it
/// holds exactly the sample rows `0..keys`.
async fn assert_rows(store: &TestStore, path: &str, keys: usize) {
    let reader = DbReader::builder(path, store.open().main)
        .with_reader_mode(DbReaderMode::FollowLatest)
        .build()
        .await
        .unwrap();
    let mut scan = reader.scan(..).await.unwrap();
    let mut read = Vec::new();
    while let Some(row) = scan.next().await.unwrap() {
        read.push((
            String::from_utf8_lossy(&row.key).to_string(),
            String::from_utf8_lossy(&row.value).to_string(),
        ));
    }
    let expected: Vec<(String, String)> = (0..keys).map(sample_row).collect();
    assert_eq!(read.len(), expected.len(), "{path}: row count");
    assert!(read == expected, "{path}: rows differ from the sample");
    reader.close().await.unwrap();
}

/// A checkpoint of the parent with a content root.
async fn checkpoint(env: &TestEnv, store: &TestStore, name: &str) -> DatabaseCheckpoint {
    create(
        env,
        "DatabaseCheckpoint",
        name,
        json!({"database": {"store": store.store_spec(), "path": PARENT}, "checksum": "Content"}),
    )
    .await;
    wait_checkpoint_ready(env, name).await
}

fn content_root_of(checkpoint: &DatabaseCheckpoint) -> Option<String> {
    checkpoint
        .status
        .as_ref()?
        .checksum
        .as_ref()?
        .content_root
        .clone()
}

/// The copy's data objects (SSTs, WAL objects, manifests) relative to `path`.
fn data_files(root: &std::path::Path, path: &str) -> BTreeMap<String, (u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fn walk(
        dir: &std::path::Path,
        base: &std::path::Path,
        into: &mut BTreeMap<String, (u64, u64)>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, into);
            } else if let Ok(meta) = entry.metadata() {
                let relative = path.strip_prefix(base).unwrap().display().to_string();
                if !relative.starts_with(".slatedb-operator") {
                    into.insert(relative, (meta.ino(), meta.size()));
                }
            }
        }
    }
    let base = root.join(path);
    let mut found = BTreeMap::new();
    walk(&base, &base, &mut found);
    found
}

/// Writes `rows` rows (`row(i)`) at [`PARENT`] as one L0 SST per 10 rows, more than SlateDB's
/// default L0 limit allows without compaction: a parent of many objects.
pub(crate) async fn write_l0_parent(
    store: &TestStore,
    rows: usize,
    row: impl Fn(usize) -> (String, Vec<u8>),
) {
    let settings = slatedb::config::Settings {
        l0_max_ssts: rows / 10 + 20,
        l0_max_ssts_per_key: rows / 10 + 20,
        ..slatedb_operator::engine::sample::sample_settings(None)
    };
    let db = slatedb::Db::builder(PARENT, store.open().main)
        .with_settings(settings)
        .build()
        .await
        .unwrap();
    for i in 0..rows {
        let (key, value) = row(i);
        db.put(key.as_bytes(), &value).await.unwrap();
        if i % 10 == 9 {
            for flush_type in [
                slatedb::config::FlushType::Wal,
                slatedb::config::FlushType::MemTable,
            ] {
                let options = slatedb::config::FlushOptions { flush_type };
                db.flush_with_options(options).await.unwrap();
            }
        }
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_copy_to_another_store_reads_back_refreshes_incrementally_and_promotes() {
    let env = TestEnv::new("copy").await;
    let source = TestStore::new(StoreKind::S3, &env.namespace);
    let target = TestStore::new(StoreKind::File, &env.namespace);
    source.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    write_sample_db(&source, PARENT, 1_000, 4).await;
    let first = checkpoint(&env, &source, "nightly").await;
    let source_before = objects_under(&source, PARENT).await;

    create(
        &env,
        "DatabaseCopy",
        "dr",
        json!({
            "source": {"checkpointRef": {"name": "nightly"}},
            "target": {"store": {"url": target.url}, "path": TARGET},
            "verify": "Content",
            "parallelism": 4
        }),
    )
    .await;
    let ready = wait_copy(&env, "dr", "Ready", Duration::from_secs(120), |_| true).await;
    let status = ready.status.clone().unwrap();
    let first_id = first.status.as_ref().unwrap().checkpoint_id.clone();
    assert_eq!(status.copied_checkpoint_id, first_id);
    assert_eq!(condition(&ready, "Verified").unwrap().1, "ContentMatches");
    assert_eq!(
        status
            .checksum
            .as_ref()
            .and_then(|c| c.content_root.clone()),
        content_root_of(&first),
        "the copy's content root is the source checkpoint's"
    );
    let run = status.last_run.clone().unwrap();
    assert_eq!(run.objects_transferred, run.objects_total, "{run:?}");
    assert_eq!(status.progress.unwrap().percent, "100%");
    assert_rows(&target, TARGET, 1_000).await;
    assert_eq!(
        objects_under(&source, PARENT).await,
        source_before,
        "the source's objects are byte-identical"
    );

    // 5% more rows and a newer checkpoint: only the new objects are transferred.
    append_sample_rows(&source.open(), PARENT, 1_000..1_050)
        .await
        .unwrap();
    let second = checkpoint(&env, &source, "nightly-2").await;
    let before = data_files(&target.local_root, TARGET);
    env.api::<DatabaseCopy>()
        .patch(
            "dr",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"source": {"checkpointRef": {"name": "nightly-2"}}}})),
        )
        .await
        .unwrap();
    let second_id = second.status.as_ref().unwrap().checkpoint_id.clone();
    let refreshed = wait_copy(&env, "dr", "Ready", Duration::from_secs(120), |c| {
        c.status.as_ref().unwrap().copied_checkpoint_id == second_id
    })
    .await;
    let after = data_files(&target.local_root, TARGET);
    let written: Vec<&String> = after
        .iter()
        .filter(|(path, id)| before.get(*path) != Some(id))
        .map(|(path, _)| path)
        .collect();
    let run = refreshed.status.clone().unwrap().last_run.unwrap();
    assert_eq!(
        written.len() as i64,
        run.objects_transferred,
        "the files written are the ones the copy says it transferred: {written:?}"
    );
    assert!(
        before.iter().all(|(path, id)| after.get(path) == Some(id)),
        "no object of the first copy was written again"
    );
    assert!(
        run.objects_transferred < run.objects_total && run.objects_skipped > 0,
        "incremental: {run:?}"
    );
    assert!(
        written.iter().any(|p| p.starts_with("manifest/")),
        "the new manifest is among them: {written:?}"
    );
    assert_eq!(
        refreshed
            .status
            .as_ref()
            .unwrap()
            .checksum
            .as_ref()
            .and_then(|c| c.content_root.clone()),
        content_root_of(&second)
    );
    assert_rows(&target, TARGET, 1_050).await;

    // Promotion: the copy opens as a writer and accepts writes; the source is untouched.
    let source_before = objects_under(&source, PARENT).await;
    env.api::<DatabaseCopy>()
        .patch(
            "dr",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"promote": true}})),
        )
        .await
        .unwrap();
    let promoted = wait_copy(&env, "dr", "Promoted", Duration::from_secs(60), |_| true).await;
    assert_eq!(
        promoted
            .status
            .unwrap()
            .phase
            .map(|p| format!("{p:?}"))
            .as_deref(),
        Some("Promoted")
    );
    let writer = slatedb::Db::builder(TARGET, target.open().main)
        .build()
        .await
        .unwrap();
    writer
        .put(b"written-after-promotion", b"yes")
        .await
        .unwrap();
    let (key, value) = sample_row(1_049);
    assert_eq!(
        writer.get(key.as_bytes()).await.unwrap().as_deref(),
        Some(value.as_bytes())
    );
    writer.close().await.unwrap();
    assert_eq!(objects_under(&source, PARENT).await, source_before);
    let undo = env
        .api::<DatabaseCopy>()
        .patch(
            "dr",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"promote": false}})),
        )
        .await;
    assert!(
        undo.is_err_and(|e| e.to_string().contains("cannot be undone")),
        "admission refuses to undo a promotion"
    );

    // Retain (the default) keeps the data when the object goes.
    env.kubectl(&[
        "delete",
        "databasecopy",
        "dr",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(!data_files(&target.local_root, TARGET).is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn a_copy_refuses_a_diverged_target_and_deletes_only_its_own_data() {
    let env = TestEnv::new("copy-safety").await;
    let source = TestStore::new(StoreKind::S3, &env.namespace);
    let target = TestStore::new(StoreKind::File, &env.namespace);
    source.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    write_sample_db(&source, PARENT, 200, 2).await;
    checkpoint(&env, &source, "nightly").await;
    // A database a SlateDB writer made at the target path.
    write_sample_db(&target, "copies/taken", 10, 1).await;
    let taken_before = data_files(&target.local_root, "copies/taken");
    let spec = |path: &str, policy: &str| {
        json!({
            "source": {"checkpointRef": {"name": "nightly"}},
            "target": {"store": {"url": target.url}, "path": path},
            "deletionPolicy": policy
        })
    };
    create(
        &env,
        "DatabaseCopy",
        "intruder",
        spec("copies/taken", "Delete"),
    )
    .await;
    let stalled = wait_copy(&env, "intruder", "Stalled", Duration::from_secs(60), |_| {
        true
    })
    .await;
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "Diverged", "{message}");
    assert_eq!(condition(&stalled, "Ready").unwrap().0, "False");
    env.kubectl(&[
        "delete",
        "databasecopy",
        "intruder",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert_eq!(
        data_files(&target.local_root, "copies/taken"),
        taken_before,
        "the database it did not create is untouched, also by the deletion"
    );

    create(
        &env,
        "DatabaseCopy",
        "scratch",
        spec("copies/scratch", "Delete"),
    )
    .await;
    wait_copy(&env, "scratch", "Ready", Duration::from_secs(60), |_| true).await;
    assert_rows(&target, "copies/scratch", 200).await;
    env.kubectl(&[
        "delete",
        "databasecopy",
        "scratch",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(
        data_files(&target.local_root, "copies/scratch").is_empty(),
        "deletionPolicy: Delete removed the copy"
    );
    assert!(!target.local_root.join("copies/scratch.owner").exists());
    env.cleanup().await;
}

#[tokio::test]
async fn a_copy_whose_operator_is_killed_five_times_ends_complete_and_verified() {
    let env = TestEnv::new("copy-resume").await;
    let source = TestStore::new(StoreKind::File, &env.namespace);
    let target = TestStore::new(StoreKind::File, &env.namespace);
    source.create_secret(&env).await;
    // Slow requests, so that every kill lands in the middle of the transfer.
    let slow = [(slatedb_operator::engine::FAULTS_ENV, "latency=50ms")];
    write_l0_parent(&source, 1_000, |i| {
        let (key, value) = sample_row(i);
        (key, value.into_bytes())
    })
    .await;
    let mut operator = Operator::start(&env.namespace, &slow);
    let first = checkpoint(&env, &source, "nightly").await;
    create(
        &env,
        "DatabaseCopy",
        "dr",
        json!({
            "source": {"checkpointRef": {"name": "nightly"}},
            "target": {"store": {"url": target.url}, "path": TARGET},
            "parallelism": 2
        }),
    )
    .await;
    // Every (path, inode) the target held at some point: an object written again gets a new inode.
    let mut writes: BTreeSet<(String, u64)> = BTreeSet::new();
    let api = env.api::<DatabaseCopy>();
    let mut kills = 0;
    while kills < 5 {
        let in_transfer = eventually(Duration::from_secs(60), "the copy transferring", || async {
            let copy = api.get("dr").await.ok()?;
            let status = copy.status?;
            if status.copied_checkpoint_id.is_some() {
                return Some(false);
            }
            let progress = status.progress?;
            (progress.step == "Transfer").then_some(true)
        })
        .await;
        if !in_transfer {
            break;
        }
        let pause = 300 + (kills as u64 * 337) % 900;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        operator.kill();
        kills += 1;
        writes.extend(
            data_files(&target.local_root, TARGET)
                .into_iter()
                .map(|(path, (inode, _))| (path, inode)),
        );
        operator = Operator::start(&env.namespace, &slow);
    }
    assert_eq!(
        kills, 5,
        "the copy finished before it was killed five times"
    );
    let ready = wait_copy(&env, "dr", "Ready", Duration::from_secs(300), |_| true).await;
    writes.extend(
        data_files(&target.local_root, TARGET)
            .into_iter()
            .map(|(path, (inode, _))| (path, inode)),
    );
    let status = ready.status.unwrap();
    assert!(status.attempts.unwrap_or(0) >= 2, "{:?}", status.attempts);
    let run = status.last_run.unwrap();
    assert!(run.objects_skipped > 0, "the last run resumed: {run:?}");
    assert_eq!(
        status.checksum.and_then(|c| c.content_root),
        content_root_of(&first)
    );
    assert_rows(&target, TARGET, 1_000).await;
    // At most the closure, plus per kill the objects in flight (parallelism) and those finished
    // but not yet journalled (the journal batch).
    let closure = run.objects_total as usize;
    let bound = closure + kills * (2 + 16);
    assert!(
        writes.len() <= bound,
        "{} writes for a closure of {closure} (bound {bound})",
        writes.len()
    );
    drop(operator);
    env.cleanup().await;
}

#[tokio::test]
async fn a_copy_refused_by_its_target_leaves_a_fresh_target_empty_and_an_earlier_copy_intact() {
    let env = TestEnv::new("copy-refused").await;
    let source = TestStore::new(StoreKind::File, &env.namespace);
    let target = TestStore::new(StoreKind::File, &env.namespace);
    write_sample_db(&source, PARENT, 500, 2).await;
    // The target store refuses every write of an SST (403), a permanent failure.
    let refusing = [(
        slatedb_operator::engine::FAULTS_ENV,
        "deny=copies/fresh/compacted,deny=copies/reused/compacted",
    )];
    let spec = |path: &str, checkpoint: &str| {
        json!({
            "source": {"checkpointRef": {"name": checkpoint}},
            "target": {"store": {"url": target.url}, "path": path}
        })
    };

    // A complete copy first, by an operator the store does not refuse.
    let operator = Operator::start(&env.namespace, &[]);
    checkpoint(&env, &source, "nightly").await;
    create(
        &env,
        "DatabaseCopy",
        "reused",
        spec("copies/reused", "nightly"),
    )
    .await;
    wait_copy(&env, "reused", "Ready", Duration::from_secs(60), |_| true).await;
    let complete = data_files(&target.local_root, "copies/reused");
    drop(operator);

    let _operator = Operator::start(&env.namespace, &refusing);
    create(
        &env,
        "DatabaseCopy",
        "fresh",
        spec("copies/fresh", "nightly"),
    )
    .await;
    let stalled = wait_copy(&env, "fresh", "Stalled", Duration::from_secs(60), |_| true).await;
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(
        condition(&stalled, "Ready").unwrap().0,
        "False",
        "{reason}: {message}"
    );
    assert!(
        data_files(&target.local_root, "copies/fresh").is_empty(),
        "a fresh target is left empty: {:?}",
        data_files(&target.local_root, "copies/fresh")
    );
    assert!(
        !target
            .local_root
            .join("copies/fresh/.slatedb-operator")
            .exists()
            || std::fs::read_dir(
                target
                    .local_root
                    .join("copies/fresh/.slatedb-operator/copy")
            )
            .map(|d| d.flatten().all(|e| e.path().is_dir()))
            .unwrap_or(true),
        "nor any record of the failed copy"
    );

    // A newer checkpoint whose copy the target refuses: the earlier copy stays Ready and intact.
    append_sample_rows(&source.open(), PARENT, 500..600)
        .await
        .unwrap();
    checkpoint(&env, &source, "nightly-2").await;
    env.api::<DatabaseCopy>()
        .patch(
            "reused",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"source": {"checkpointRef": {"name": "nightly-2"}}}})),
        )
        .await
        .unwrap();
    let refused = wait_copy(&env, "reused", "Stalled", Duration::from_secs(60), |_| true).await;
    assert_eq!(
        condition(&refused, "Ready").unwrap().0,
        "True",
        "the earlier complete copy is still there to read"
    );
    assert_eq!(data_files(&target.local_root, "copies/reused"), complete);
    assert_rows(&target, "copies/reused", 500).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_reencoded_copy_rewrites_every_row_with_its_codec_and_is_verified_by_their_digest() {
    let env = TestEnv::new("copy-reencode").await;
    let source = TestStore::new(StoreKind::S3, &env.namespace);
    let target = TestStore::new(StoreKind::File, &env.namespace);
    source.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    write_sample_db(&source, PARENT, 1_000, 3).await;
    checkpoint(&env, &source, "nightly").await;
    let source_before = objects_under(&source, PARENT).await;
    create(
        &env,
        "DatabaseCopy",
        "zstd",
        json!({
            "source": {"checkpointRef": {"name": "nightly"}},
            "target": {"store": {"url": target.url}, "path": TARGET},
            "reencode": {"compression": "Zstd", "blockSize": 8192}
        }),
    )
    .await;
    let ready = wait_copy(&env, "zstd", "Ready", Duration::from_secs(120), |_| true).await;
    assert_eq!(condition(&ready, "Verified").unwrap().1, "RowDigestMatches");
    let checksum = ready.status.clone().unwrap().checksum.unwrap();
    assert_eq!(checksum.algorithm, "sha256-row-sum");
    assert!(!checksum.metadata_digest.is_empty());
    assert_rows(&target, TARGET, 1_000).await;
    assert_eq!(
        objects_under(&source, PARENT).await,
        source_before,
        "the source is untouched"
    );
    // The target is a database of its own: its SSTs are not the source's.
    let source_ssts: BTreeSet<String> = source_before
        .keys()
        .filter(|k| k.contains("/compacted/"))
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect();
    let target_ssts: BTreeSet<String> = data_files(&target.local_root, TARGET)
        .into_keys()
        .filter(|k| k.starts_with("compacted/"))
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect();
    assert!(!target_ssts.is_empty() && source_ssts.is_disjoint(&target_ssts));
    let undo = env
        .api::<DatabaseCopy>()
        .patch(
            "zstd",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"promote": true}})),
        )
        .await;
    assert!(
        undo.is_err_and(|e| e.to_string().contains("spec.promote does not apply")),
        "admission refuses promoting a re-encoded copy"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_object_corrupted_at_the_target_is_caught_by_verification_and_only_it_is_sent_again() {
    let env = TestEnv::new("copy-retransmit").await;
    let source = TestStore::new(StoreKind::File, &env.namespace);
    let target = TestStore::new(StoreKind::File, &env.namespace);
    write_sample_db(&source, PARENT, 1_000, 4).await;
    // One SST of the closure: its first write at the target stores altered bytes.
    let ssts: Vec<String> = data_files(&source.local_root, PARENT)
        .into_keys()
        .filter(|k| k.starts_with("compacted/"))
        .collect();
    let victim = format!("{TARGET}/{}", ssts[ssts.len() / 2]);
    let corrupt = format!("corrupt={victim}");
    let _operator = Operator::start(
        &env.namespace,
        &[(slatedb_operator::engine::FAULTS_ENV, corrupt.as_str())],
    );
    let nightly = checkpoint(&env, &source, "nightly").await;
    create(
        &env,
        "DatabaseCopy",
        "dr",
        json!({
            "source": {"checkpointRef": {"name": "nightly"}},
            "target": {"store": {"url": target.url}, "path": TARGET},
            "verify": "Content"
        }),
    )
    .await;
    let ready = wait_copy(&env, "dr", "Ready", Duration::from_secs(60), |_| true).await;
    let status = ready.status.unwrap();
    let run = status.last_run.clone().unwrap();
    assert_eq!(
        run.objects_retransmitted, 1,
        "only the corrupted object: {run:?}"
    );
    assert_eq!(run.objects_transferred, run.objects_total, "{run:?}");
    assert_eq!(
        status.checksum.and_then(|c| c.content_root),
        content_root_of(&nightly)
    );
    let at_target = std::fs::read(target.local_root.join(&victim)).unwrap();
    let at_source = std::fs::read(
        source
            .local_root
            .join(PARENT)
            .join(&victim[TARGET.len() + 1..]),
    )
    .unwrap();
    assert!(at_target == at_source, "the object was sent again intact");
    assert_rows(&target, TARGET, 1_000).await;
    env.cleanup().await;
}
