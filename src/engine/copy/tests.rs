//! Copies between two stores on temporary directories (and an in-memory store), with a target
//! store wrapper that counts, corrupts or refuses writes.

use super::records::COPY_DIR;
use super::*;
use crate::engine::sample::{sample_row, sample_settings, write_sample_db};
use crate::engine::store_layers::{FaultPlan, InstrumentedStore};
use crate::engine::{initialize_clone, CloneConfig, Store, StoreConfig, Verification};
use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions as StoreCopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use slatedb::config::{FlushOptions, FlushType};
use slatedb::{DbReader, DbReaderMode};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

pub(super) const TIMEOUT: Duration = Duration::from_secs(20);
pub(super) const KEYS: usize = 1_000;

pub(super) fn file_store(dir: &tempfile::TempDir) -> Store {
    let url = format!("file://{}", dir.path().display());
    Store::open(&StoreConfig::with_options(&url, &[])).unwrap()
}

pub(super) fn database(store: &Store, path: &str) -> Database {
    Database::new(store.clone(), path, TIMEOUT)
}

/// Every file under `dir` with its bytes, by path relative to `dir`.
pub(super) fn files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, into: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.map(|e| e.unwrap().path()) {
            if path.is_dir() {
                walk(root, &path, into);
            } else {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                into.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(dir, dir, &mut found);
    found
}

/// Two stores on temporary directories, a 1 000-row parent in `ssts` SSTs in the first, and a
/// checkpoint of it that never expires.
pub(super) struct Fixture {
    pub(super) source_dir: tempfile::TempDir,
    pub(super) target_dir: tempfile::TempDir,
    pub(super) source_store: Store,
    pub(super) target_store: Store,
    pub(super) source: Database,
    pub(super) checkpoint: CheckpointInfo,
}

pub(super) async fn fixture(ssts: usize) -> Fixture {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source_store, target_store) = (file_store(&source_dir), file_store(&target_dir));
    write_sample_db(&source_store, "parent", KEYS, ssts)
        .await
        .unwrap();
    let source = database(&source_store, "parent");
    let (checkpoint, _) = source.obtain_checkpoint("copy-test", None).await.unwrap();
    Fixture {
        source_dir,
        target_dir,
        source_store,
        target_store,
        source,
        checkpoint,
    }
}

impl Fixture {
    pub(super) fn target(&self, path: &str) -> Database {
        database(&self.target_store, path)
    }

    /// The files under `path` in the target directory.
    pub(super) fn target_files(&self, path: &str) -> BTreeMap<String, Vec<u8>> {
        files(&self.target_dir.path().join(path))
    }

    pub(super) async fn copy(
        &self,
        checkpoint: &CheckpointInfo,
        target: &Database,
        options: &CopyOptions,
    ) -> Result<CopyReport, EngineError> {
        let id = CloneSourceCheckpoint::Id(checkpoint.id);
        copy_checkpoint(&self.source, &id, target, options, |_| {}).await
    }

    /// The objects (relative paths) the checkpoint pins at the source.
    async fn closure(&self, checkpoint: &CheckpointInfo) -> BTreeSet<String> {
        let pinned = self.source.pinned_objects(checkpoint.manifest_id).await;
        pinned
            .unwrap()
            .iter()
            .map(|o| relative_to(&o.path, &self.source.path).unwrap())
            .collect()
    }

    /// The report's content root is the source checkpoint's, and the target's own fingerprint
    /// (computed by the fingerprint code from the target alone) agrees.
    async fn assert_same_content(
        &self,
        report: &CopyReport,
        checkpoint: &CheckpointInfo,
        target: &Database,
    ) {
        let id = checkpoint.manifest_id;
        let expected = self.source.fingerprint(id, true).await.unwrap();
        assert_eq!(Some(&report.content_root), expected.content_root.as_ref());
        let at_target = target.fingerprint(id, true).await.unwrap();
        assert_eq!(at_target.content_root, expected.content_root);
    }

    /// An SST of the checkpoint, and the target store behind a wrapper that corrupts the first
    /// `times` writes of it.
    async fn corrupting(&self, times: u32) -> (String, Store, Arc<Behaviour>) {
        let closure = self.closure(&self.checkpoint).await;
        let victim = closure.iter().find(|p| p.starts_with("compacted/"));
        let victim = victim.unwrap().clone();
        let behaviour = Behaviour {
            corrupt: Mutex::new(vec![(victim.clone(), times)]),
            ..Default::default()
        };
        let (store, behaviour) = behind_test_store(&self.target_store, behaviour);
        (victim, store, behaviour)
    }
}

/// Writes rows `from..to` into the parent (compaction off) and checkpoints it: detached after a
/// memtable flush, or, with `wal_tail`, with each row flushed to a WAL object of its own and the
/// writer's checkpoint (which pins those WAL objects, so a copy must copy them).
pub(super) async fn more_rows(
    store: &Store,
    from: usize,
    to: usize,
    wal_tail: bool,
) -> CheckpointInfo {
    let db = slatedb::Db::builder("parent", store.main.clone())
        .with_settings(sample_settings(None))
        .build()
        .await
        .unwrap();
    for i in from..to {
        let (key, value) = sample_row(i);
        db.put(key.as_bytes(), value.as_bytes()).await.unwrap();
        if wal_tail {
            let wal = FlushOptions {
                flush_type: FlushType::Wal,
            };
            db.flush_with_options(wal).await.unwrap();
        }
    }
    let name = format!("copy-test-{to}");
    let made = if wal_tail {
        let options = slatedb::config::CheckpointOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let scope = slatedb::config::CheckpointScope::Durable;
        Some(db.create_checkpoint(scope, &options).await.unwrap())
    } else {
        let memtable = FlushOptions {
            flush_type: FlushType::MemTable,
        };
        db.flush_with_options(memtable).await.unwrap();
        None
    };
    db.close().await.unwrap();
    let parent = database(store, "parent");
    match made {
        Some(made) => parent
            .find_checkpoint(&CheckpointSelector::Id(made.id))
            .await
            .unwrap(),
        None => parent.obtain_checkpoint(&name, None).await.unwrap().0,
    }
}

/// Reads rows `0..keys` back with SlateDB at the target (a reader that writes nothing).
pub(super) async fn assert_rows(store: &Store, path: &str, keys: usize) {
    let reader = DbReader::builder(path, store.main.clone())
        .with_reader_mode(DbReaderMode::FollowLatest)
        .build()
        .await
        .unwrap();
    for i in 0..keys {
        let (key, value) = sample_row(i);
        assert_eq!(
            reader.get(key.as_bytes()).await.unwrap().as_deref(),
            Some(value.as_bytes()),
            "row {i} at {path}"
        );
    }
    let (key, _) = sample_row(keys);
    assert!(reader.get(key.as_bytes()).await.unwrap().is_none());
    reader.close().await.unwrap();
}

pub(super) fn options() -> CopyOptions {
    CopyOptions {
        parallelism: 4,
        ..Default::default()
    }
}

/// What the test target store does besides passing requests on.
#[derive(Debug, Default)]
struct Behaviour {
    /// Every write (PUT or multipart upload), by path.
    puts: Mutex<Vec<String>>,
    /// Writes to paths ending so are corrupted (a byte flipped), this many more times.
    corrupt: Mutex<Vec<(String, u32)>>,
    /// Writes of data objects (`compacted/`, `wal/`) allowed before all further ones are refused.
    refuse_data_after: Option<usize>,
    data_puts: AtomicUsize,
}

impl Behaviour {
    fn puts_of(&self, path: &str) -> usize {
        let puts = self.puts.lock().unwrap();
        puts.iter().filter(|p| p.as_str() == path).count()
    }

    fn data_puts(&self) -> Vec<String> {
        let puts = self.puts.lock().unwrap();
        puts.iter()
            .filter(|p| p.contains("/compacted/") || p.contains("/wal/"))
            .cloned()
            .collect()
    }

    fn admit(&self, path: &Path) -> object_store::Result<()> {
        self.puts.lock().unwrap().push(path.to_string());
        let data = path.as_ref().contains("/compacted/") || path.as_ref().contains("/wal/");
        if let (true, Some(limit)) = (data, self.refuse_data_after) {
            if self.data_puts.fetch_add(1, Ordering::SeqCst) >= limit {
                return Err(object_store::Error::PermissionDenied {
                    path: path.to_string(),
                    source: "403 Forbidden (test: quota exceeded)".into(),
                });
            }
        }
        Ok(())
    }

    fn maybe_corrupt(&self, path: &Path, payload: PutPayload) -> PutPayload {
        let mut corrupt = self.corrupt.lock().unwrap();
        let Some(entry) = corrupt
            .iter_mut()
            .find(|(suffix, left)| *left > 0 && path.as_ref().ends_with(suffix.as_str()))
        else {
            return payload;
        };
        entry.1 -= 1;
        let mut bytes: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        bytes.into()
    }
}

#[derive(Debug)]
struct TestStore {
    inner: Arc<dyn ObjectStore>,
    behaviour: Arc<Behaviour>,
}

impl std::fmt::Display for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Test({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for TestStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.behaviour.admit(location)?;
        let payload = self.behaviour.maybe_corrupt(location, payload);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.behaviour.admit(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: StoreCopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// `store` behind a [`TestStore`].
fn behind_test_store(store: &Store, behaviour: Behaviour) -> (Store, Arc<Behaviour>) {
    let behaviour = Arc::new(behaviour);
    let main: Arc<dyn ObjectStore> = Arc::new(TestStore {
        inner: store.main.clone(),
        behaviour: behaviour.clone(),
    });
    (Store { main, wal: None }, behaviour)
}

#[tokio::test]
async fn a_copy_to_another_store_reads_back_row_for_row_and_leaves_the_source_as_it_was() {
    let f = fixture(4).await;
    let source_files = files(f.source_dir.path());
    let target = f.target("copies/a");
    let seen = Mutex::new(Vec::<CopyProgress>::new());
    let id = CloneSourceCheckpoint::Id(f.checkpoint.id);
    let report = copy_checkpoint(&f.source, &id, &target, &options(), |p| {
        seen.lock().unwrap().push(p)
    })
    .await
    .unwrap();

    assert_eq!(
        files(f.source_dir.path()),
        source_files,
        "the source is byte-identical"
    );
    f.assert_same_content(&report, &f.checkpoint, &target).await;
    let closure = f.closure(&f.checkpoint).await;
    assert_eq!(report.checkpoint_id, f.checkpoint.id);
    assert_eq!(report.objects_total, closure.len() as u64 + 1);
    assert_eq!(report.objects_transferred, report.objects_total);
    assert_eq!(report.objects_read_back, closure.len() as u64);
    assert_eq!(report.bytes_total, report.bytes_transferred);
    assert!(report.blocks_checked > 0);
    assert_eq!(
        (report.objects_skipped, report.objects_retransmitted),
        (0, 0)
    );
    assert!(!report.resumed && !report.already_complete);
    let percents: Vec<u32> = seen
        .lock()
        .unwrap()
        .iter()
        .map(CopyProgress::percent)
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100));
    assert_rows(&f.target_store, "copies/a", KEYS).await;

    // The same relative names, the same bytes; besides them only the commit record.
    let copied = f.target_files("copies/a");
    let mut extra = Vec::new();
    for (relative, bytes) in &copied {
        match source_files.get(&format!("parent/{relative}")) {
            Some(original) => assert_eq!(original, bytes, "{relative}"),
            None => extra.push(relative.clone()),
        }
    }
    let record = format!("{COPY_DIR}/commits/{:020}.json", f.checkpoint.manifest_id);
    assert_eq!(extra, vec![record], "no journal or other object is left");

    let again = f.copy(&f.checkpoint, &target, &options()).await.unwrap();
    assert!(again.already_complete, "{again:?}");
    assert_eq!((again.objects_transferred, again.objects_read_back), (0, 0));
    assert_eq!(again.content_root, report.content_root);
    assert_eq!(f.target_files("copies/a"), copied);
}

#[tokio::test]
async fn a_second_copy_after_five_percent_more_rows_transfers_only_the_new_objects() {
    let f = fixture(4).await;
    let first = &f.checkpoint;
    f.copy(first, &f.target("copies/i"), &options())
        .await
        .unwrap();

    let second = more_rows(&f.source_store, KEYS, KEYS + KEYS / 20, false).await;
    let (before, after) = (f.closure(first).await, f.closure(&second).await);
    let new: BTreeSet<String> = after.difference(&before).cloned().collect();
    assert!(!new.is_empty() && new.len() < after.len(), "{new:?}");

    let (counted, behaviour) = behind_test_store(&f.target_store, Behaviour::default());
    let target = database(&counted, "copies/i");
    let report = f.copy(&second, &target, &options()).await.unwrap();
    let sent: BTreeSet<String> = behaviour
        .data_puts()
        .iter()
        .map(|p| p.strip_prefix("copies/i/").unwrap().to_string())
        .collect();
    assert_eq!(sent, new, "exactly the new objects were written");
    assert_eq!(behaviour.data_puts().len(), new.len(), "each once");
    assert_eq!(
        report.objects_transferred,
        new.len() as u64 + 1,
        "and the manifest"
    );
    let unchanged = after.intersection(&before).count() as u64;
    assert_eq!(report.objects_skipped, unchanged);
    assert_eq!(
        report.objects_read_back,
        new.len() as u64,
        "only new objects"
    );
    f.assert_same_content(&report, &second, &target).await;
    assert_rows(&f.target_store, "copies/i", KEYS + KEYS / 20).await;

    // Full verification reads everything back and still transfers nothing.
    let full = CopyOptions {
        verify: CopyVerification::Full,
        ..options()
    };
    let again = f.copy(&second, &target, &full).await.unwrap();
    assert_eq!(again.objects_transferred, 0);
    assert_eq!(again.objects_read_back, after.len() as u64);

    // The older checkpoint cannot become the target's latest state.
    let error = f.copy(first, &target, &options()).await.unwrap_err();
    assert!(matches!(error, EngineError::TargetNewer { .. }), "{error}");
}

#[tokio::test]
async fn an_interrupted_copy_resumes_and_transfers_only_what_is_missing() {
    let f = fixture(4).await;
    let checkpoint = more_rows(&f.source_store, KEYS, KEYS + 24, true).await;
    let total = f.closure(&checkpoint).await.len();
    assert!(total >= 30, "{total} objects");
    // A slow target, counted, so that the copy is still running when it is cancelled.
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
    let (slow, behaviour) = behind_test_store(&slow, Behaviour::default());
    let interrupted = CopyOptions {
        parallelism: 2,
        journal_batch: 1,
        ..options()
    };
    let recorded = Arc::new(AtomicU64::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let mut task = {
        let (source, target) = (f.source.clone(), database(&slow, "copies/r"));
        let (recorded, reached, options) = (recorded.clone(), reached.clone(), interrupted.clone());
        tokio::spawn(async move {
            let id = CloneSourceCheckpoint::Id(checkpoint.id);
            copy_checkpoint(&source, &id, &target, &options, move |p| {
                if p.phase == CopyPhase::Transfer {
                    recorded.fetch_max(p.objects_done, Ordering::SeqCst);
                    if p.objects_done >= 8 {
                        reached.notify_one();
                    }
                }
            })
            .await
        })
    };
    tokio::select! {
        finished = &mut task => panic!("the copy finished before it was cancelled: {finished:?}"),
        _ = reached.notified() => task.abort(),
    }
    assert!(task.await.unwrap_err().is_cancelled());
    // Its transfers are aborted with it; give those inside a blocking file write time to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first_run = behaviour.data_puts().len();
    let recorded = recorded.load(Ordering::SeqCst) as usize;
    assert!(
        recorded >= 8 && first_run < total,
        "{recorded} recorded, {first_run} of {total}"
    );
    let manifests = f.target_dir.path().join("copies/r/manifest");
    assert!(
        !manifests.exists(),
        "no manifest before the copy is complete"
    );

    let target = f.target("copies/r");
    let report = f.copy(&checkpoint, &target, &options()).await.unwrap();
    assert!(report.resumed);
    let transferred = report.objects_transferred as usize - 1;
    assert!(
        transferred <= total - recorded,
        "{transferred} transferred again, {recorded} of {total} were recorded"
    );
    assert!(
        first_run + transferred <= total + interrupted.parallelism,
        "{first_run} + {transferred} transfers for {total} objects"
    );
    assert_eq!(report.objects_skipped as usize + transferred, total);
    let read_back = report.objects_read_back as usize;
    assert_eq!(
        read_back, transferred,
        "what the first run verified is not read again"
    );
    // Both runs' journals are gone: the closure, its manifest and its record are left.
    let left: BTreeSet<String> = f.target_files("copies/r").into_keys().collect();
    let mut expected = f.closure(&checkpoint).await;
    let id = checkpoint.manifest_id;
    expected.insert(format!("manifest/{id:020}.manifest"));
    expected.insert(format!("{COPY_DIR}/commits/{id:020}.json"));
    assert_eq!(left, expected);
    f.assert_same_content(&report, &checkpoint, &target).await;
    assert_rows(&f.target_store, "copies/r", KEYS + 24).await;
}

#[tokio::test]
async fn an_object_corrupted_at_the_target_is_detected_and_only_it_is_transferred_again() {
    let f = fixture(4).await;
    let (victim, corrupting, behaviour) = f.corrupting(1).await;
    let target = database(&corrupting, "copies/c");
    let report = f.copy(&f.checkpoint, &target, &options()).await.unwrap();
    assert_eq!(report.objects_retransmitted, 1, "{report:?}");
    let closure = f.closure(&f.checkpoint).await;
    for path in &closure {
        let expected = if *path == victim { 2 } else { 1 };
        let puts = behaviour.puts_of(&format!("copies/c/{path}"));
        assert_eq!(puts, expected, "{path}");
    }
    let read_back = closure.len() as u64 + 1;
    assert_eq!(report.objects_read_back, read_back, "the victim twice");
    f.assert_same_content(&report, &f.checkpoint, &target).await;
    assert_rows(&f.target_store, "copies/c", KEYS).await;
}

#[tokio::test]
async fn an_object_that_stays_corrupt_fails_the_copy_naming_it_and_leaves_nothing_behind() {
    let f = fixture(2).await;
    let (victim, corrupting, behaviour) = f.corrupting(u32::MAX).await;
    let stubborn = CopyOptions {
        max_retransmissions: 2,
        ..options()
    };
    let target = database(&corrupting, "copies/bad");
    let error = f.copy(&f.checkpoint, &target, &stubborn).await.unwrap_err();
    let EngineError::ChecksumMismatch {
        objects, rounds, ..
    } = &error
    else {
        panic!("expected ChecksumMismatch, got {error}");
    };
    assert_eq!(*rounds, 2);
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(objects[0].contains(&victim), "{objects:?}");
    assert_eq!(error.reason(), "ChecksumMismatch");
    assert_eq!(behaviour.puts_of(&format!("copies/bad/{victim}")), 3);
    assert_eq!(f.target_files("copies/bad"), BTreeMap::new());
}

#[tokio::test]
async fn a_target_that_refuses_writes_is_left_empty_or_as_its_earlier_copy() {
    let f = fixture(4).await;
    let refusing = |after| {
        let behaviour = Behaviour {
            refuse_data_after: Some(after),
            ..Default::default()
        };
        behind_test_store(&f.target_store, behaviour).0
    };

    // A fresh target: nothing is left.
    let fresh = database(&refusing(2), "copies/fresh");
    let error = f.copy(&f.checkpoint, &fresh, &options()).await.unwrap_err();
    assert_eq!(error.reason(), "CredentialsRejected", "{error}");
    assert_eq!(error.fault(), Fault::Permanent);
    assert_eq!(f.target_files("copies/fresh"), BTreeMap::new());

    // A target holding an earlier copy: it stays as it was, and readable.
    let reused = f.target("copies/reused");
    f.copy(&f.checkpoint, &reused, &options()).await.unwrap();
    let earlier = f.target_files("copies/reused");
    let second = more_rows(&f.source_store, KEYS, KEYS + 50, false).await;
    let refused = database(&refusing(1), "copies/reused");
    let error = f.copy(&second, &refused, &options()).await.unwrap_err();
    assert_eq!(error.reason(), "CredentialsRejected", "{error}");
    assert_eq!(f.target_files("copies/reused"), earlier);
    assert_rows(&f.target_store, "copies/reused", KEYS).await;

    // A later run with a store that accepts writes completes it.
    f.copy(&second, &reused, &options()).await.unwrap();
    assert_rows(&f.target_store, "copies/reused", KEYS + 50).await;
}

#[tokio::test]
async fn a_target_a_writer_has_opened_is_refused_as_diverged_and_left_alone() {
    let f = fixture(2).await;
    let target = f.target("copies/d");
    f.copy(&f.checkpoint, &target, &options()).await.unwrap();
    let writer = slatedb::Db::builder("copies/d", f.target_store.main.clone())
        .with_settings(sample_settings(None))
        .build()
        .await
        .unwrap();
    writer.put(b"written-at-the-target", b"x").await.unwrap();
    writer.close().await.unwrap();
    let opened = f.target_files("copies/d");

    let error = f
        .copy(&f.checkpoint, &target, &options())
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::Diverged { .. }), "{error}");
    assert_eq!(error.reason(), "Diverged");
    assert!(error.to_string().contains("commit record"), "{error}");
    assert_eq!(f.target_files("copies/d"), opened, "untouched");

    // Objects that are not a copy's are not overwritten either.
    let other = f.target_dir.path().join("copies/other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let into_other = f.target("copies/other");
    let error = f
        .copy(&f.checkpoint, &into_other, &options())
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::Diverged { .. }), "{error}");
    assert_eq!(files(&other).len(), 1);
    // Nor is the source itself, or a path inside it.
    for inside in ["parent", "parent/copy"] {
        let target = database(&f.source_store, inside);
        let error = f
            .copy(&f.checkpoint, &target, &options())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("overlaps"), "{error}");
    }
}

#[tokio::test]
async fn a_clone_is_refused_as_a_source() {
    let f = fixture(1).await;
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
        name: "copy:clone".into(),
    };
    let target = f.target("copies/clone");
    let copied = copy_checkpoint(&clone, &latest, &target, &options(), |_| {}).await;
    let error = copied.unwrap_err();
    assert!(
        matches!(error, EngineError::CopySourceUnsupported { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("parent"), "{error}");
    let left = clone.list_checkpoints(Some("copy:clone")).await.unwrap();
    assert!(left.is_empty(), "the temporary checkpoint is deleted");
    assert_eq!(files(f.target_dir.path()), BTreeMap::new());
}

#[tokio::test]
async fn a_promoted_copy_opens_as_a_writer_and_its_source_is_untouched() {
    let f = fixture(2).await;
    let source_files = files(f.source_dir.path());
    let target = f.target("copies/p");
    f.copy(&f.checkpoint, &target, &options()).await.unwrap();

    let promoted = promote_copy(&target, None).await.unwrap();
    assert_eq!(promoted.copy_manifest_id, f.checkpoint.manifest_id);
    assert_eq!(
        promoted.checkpoints_deleted,
        vec![f.checkpoint.id],
        "inherited"
    );
    assert!(target.list_checkpoints(None).await.unwrap().is_empty());
    let again = promote_copy(&target, None).await.unwrap();
    assert!(again.checkpoints_deleted.is_empty(), "{again:?}");

    let open = || slatedb::Db::builder("copies/p", f.target_store.main.clone()).build();
    let writer = open().await.unwrap();
    for i in (0..KEYS).step_by(37) {
        let (key, value) = sample_row(i);
        let found = writer.get(key.as_bytes()).await.unwrap();
        assert_eq!(found.as_deref(), Some(value.as_bytes()));
    }
    writer.put(b"after-promotion", b"mine").await.unwrap();
    writer.close().await.unwrap();
    let reopened = open().await.unwrap();
    let found = reopened.get(b"after-promotion").await.unwrap();
    assert_eq!(found.as_deref(), Some(&b"mine"[..]));
    reopened.close().await.unwrap();

    assert_eq!(
        files(f.source_dir.path()),
        source_files,
        "the source is untouched"
    );
    let source_reader = DbReader::builder("parent", f.source_store.main.clone())
        .with_reader_mode(DbReaderMode::FollowLatest)
        .build()
        .await
        .unwrap();
    assert!(source_reader
        .get(b"after-promotion")
        .await
        .unwrap()
        .is_none());
    source_reader.close().await.unwrap();

    let error = f
        .copy(&f.checkpoint, &target, &options())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("promoted"), "{error}");
}

#[tokio::test]
async fn a_copy_of_the_latest_state_in_parts_to_a_memory_store_drops_its_checkpoint() {
    let f = fixture(2).await;
    let memory = Store::open(&StoreConfig::with_options("memory:///", &[])).unwrap();
    let target = database(&memory, "copies/m");
    let in_parts = CopyOptions {
        multipart_threshold: 0,
        part_size: 5 << 20,
        ..options()
    };
    let latest = CloneSourceCheckpoint::Latest {
        name: "copy:latest".into(),
    };
    let copied = copy_checkpoint(&f.source, &latest, &target, &in_parts, |_| {}).await;
    let report = copied.unwrap();
    let left = f
        .source
        .list_checkpoints(Some("copy:latest"))
        .await
        .unwrap();
    assert!(left.is_empty(), "the temporary checkpoint is deleted");
    let at_target = target.fingerprint(report.manifest_id, true).await.unwrap();
    assert_eq!(at_target.content_root.as_ref(), Some(&report.content_root));
    assert_rows(&memory, "copies/m", KEYS).await;
}

#[tokio::test]
async fn a_checkpoint_expiring_during_the_copy_is_refreshed_and_a_long_lived_one_is_not() {
    let f = fixture(1).await;
    let source = &f.source;
    let day = Duration::from_secs(86_400);
    let minute = Duration::from_secs(60);
    let (short, _) = source
        .obtain_checkpoint("short", Some(minute))
        .await
        .unwrap();
    let (long, _) = source.obtain_checkpoint("long", Some(day)).await.unwrap();
    let lifetime = Duration::from_secs(600);
    keep_alive_once(source, short.id, lifetime).await.unwrap();
    keep_alive_once(source, long.id, lifetime).await.unwrap();
    let find = |id| async move {
        let found = source.find_checkpoint(&CheckpointSelector::Id(id)).await;
        found.unwrap().expire_time
    };
    let refreshed = find(short.id).await.unwrap();
    assert!(refreshed > chrono::Utc::now() + chrono::TimeDelta::seconds(500));
    assert_eq!(find(long.id).await, long.expire_time);
    // A checkpoint that is gone ends the copy.
    source.delete_checkpoint(short.id).await.unwrap();
    let gone = keep_alive(source, short.id, Duration::from_secs(2));
    let error = tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .unwrap();
    assert!(
        matches!(error, EngineError::CheckpointMissing { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn shares_copy_disjoint_objects_and_a_final_run_commits_only_the_manifest() {
    let f = fixture(4).await;
    let checkpoint = more_rows(&f.source_store, KEYS, KEYS + 24, true).await;
    let closure = f.closure(&checkpoint).await;
    let (counted, behaviour) = behind_test_store(&f.target_store, Behaviour::default());
    let target = database(&counted, "copies/s");
    let share = |index| CopyOptions {
        share: Some(CopyShare { index, count: 3 }),
        ..options()
    };
    let (first, second, third) = (share(0), share(1), share(2));
    let shares = tokio::join!(
        f.copy(&checkpoint, &target, &first),
        f.copy(&checkpoint, &target, &second),
        f.copy(&checkpoint, &target, &third),
    );
    let shares = [shares.0.unwrap(), shares.1.unwrap(), shares.2.unwrap()];
    assert!(shares
        .iter()
        .all(|r| !r.committed && r.objects_transferred > 0));
    let sent: u64 = shares.iter().map(|r| r.objects_transferred).sum();
    assert_eq!(sent, closure.len() as u64, "{shares:?}");
    assert_eq!(
        behaviour.data_puts().len(),
        closure.len(),
        "each object once"
    );
    let manifests = f.target_dir.path().join("copies/s/manifest");
    assert!(
        !manifests.exists(),
        "no manifest before every share is committed"
    );

    let report = f.copy(&checkpoint, &target, &options()).await.unwrap();
    assert!(report.committed);
    assert_eq!(report.objects_transferred, 1, "only the manifest");
    assert_eq!(
        report.objects_read_back, 0,
        "the shares verified everything"
    );
    f.assert_same_content(&report, &checkpoint, &target).await;
    assert_rows(&f.target_store, "copies/s", KEYS + 24).await;

    let latest = CloneSourceCheckpoint::Latest {
        name: "copy:share".into(),
    };
    let refused = copy_checkpoint(&f.source, &latest, &target, &first, |_| {}).await;
    assert!(refused.unwrap_err().to_string().contains("checkpoint id"));
}

#[tokio::test]
async fn deleting_a_copy_removes_every_object_unless_a_later_checkpoint_holds_it() {
    let f = fixture(2).await;
    let owner = Owner {
        namespace: "ns".into(),
        name: "copy".into(),
        uid: "uid-1".into(),
    };
    let copy_options = CopyOptions {
        owner: Some(owner.clone()),
        ..options()
    };
    let now = chrono::Utc::now();

    // A plain copy: its inherited checkpoint holds nothing; everything goes, owner record too.
    let plain = f.target("copies/plain");
    f.copy(&f.checkpoint, &plain, &copy_options).await.unwrap();
    let deleted = delete_copy(&plain, &owner, now).await.unwrap();
    assert!(
        matches!(deleted, CopyDeletion::Deleted(n) if n > 3),
        "{deleted:?}"
    );
    assert_eq!(f.target_files("copies/plain"), BTreeMap::new());
    assert!(plain.owner().await.unwrap().is_none());

    // A copy someone took a checkpoint of since (as a clone of it does): it stays.
    let held = f.target("copies/held");
    f.copy(&f.checkpoint, &held, &copy_options).await.unwrap();
    let before = f.target_files("copies/held");
    let (later, _) = held.obtain_checkpoint("a-clone-of-it", None).await.unwrap();
    let outcome = delete_copy(&held, &owner, now).await.unwrap();
    match outcome {
        CopyDeletion::Held(holders) => {
            assert_eq!(holders.iter().map(|c| c.id).collect::<Vec<_>>(), [later.id])
        }
        other => panic!("{other:?}"),
    }
    assert!(f.target_files("copies/held").len() >= before.len());

    // A target no copy claimed (a database a writer made) is left alone.
    let foreign = f.target("copies/foreign");
    write_sample_db(&f.target_store, "copies/foreign", 10, 1)
        .await
        .unwrap();
    let foreign_files = f.target_files("copies/foreign");
    let outcome = delete_copy(&foreign, &owner, now).await.unwrap();
    assert_eq!(outcome, CopyDeletion::Unclaimed);
    assert_eq!(f.target_files("copies/foreign"), foreign_files);

    // Someone else's target is left alone.
    let stranger = Owner {
        uid: "uid-2".into(),
        ..owner.clone()
    };
    let outcome = delete_copy(&held, &stranger, now).await.unwrap();
    assert_eq!(outcome, CopyDeletion::NotOwned(owner.clone()));

    // Once promoted, the database's own checkpoints hold it; with them gone it is deleted.
    let promoted = f.target("copies/promoted");
    f.copy(&f.checkpoint, &promoted, &copy_options)
        .await
        .unwrap();
    promote_copy(&promoted, Some(&owner)).await.unwrap();
    let (own, _) = promoted.obtain_checkpoint("users", None).await.unwrap();
    let outcome = delete_copy(&promoted, &owner, now).await.unwrap();
    assert!(
        matches!(&outcome, CopyDeletion::Held(h) if h.len() == 1),
        "{outcome:?}"
    );
    promoted.delete_checkpoint(own.id).await.unwrap();
    let deleted = delete_copy(&promoted, &owner, now).await.unwrap();
    assert!(matches!(deleted, CopyDeletion::Deleted(_)), "{deleted:?}");
    assert_eq!(f.target_files("copies/promoted"), BTreeMap::new());
}
