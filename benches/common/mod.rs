//! Shared by the benches: parent databases of a chosen size and SST count on a `file://` store,
//! timing statistics, CPU time from `getrusage`, a request-counting object store, and a watchdog
//! so that every bench stops by itself.
#![allow(dead_code)]

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use slatedb::config::{
    FlushOptions, FlushType, GarbageCollectorDirectoryOptions, GarbageCollectorOptions, Settings,
};
use slatedb_operator::engine::{Database, Store, StoreConfig};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
/// Value size of the generated rows: ~1 KiB of incompressible bytes each.
pub const VALUE_BYTES: usize = 1024;
/// Bound on each SlateDB call made through the engine.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(300);
pub const PARENT: &str = "parent";

/// A goal's verdict as the reports print it.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

pub fn full() -> bool {
    std::env::var("BENCH_FULL")
        .map(|v| v == "1")
        .unwrap_or(false)
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Exits the process (status 3) when the bench runs longer than `BENCH_DEADLINE_SECS` (or the
/// default given), so a stuck store call can never hold a run for ever.
pub fn start_watchdog(default_secs: u64) {
    let secs = env_usize("BENCH_DEADLINE_SECS", default_secs as usize) as u64;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("bench watchdog: deadline of {secs} s reached, exiting");
        println!("\n**Bench aborted by its watchdog after {secs} s; the rows above are complete, the rest is missing.**\n");
        std::process::exit(3);
    });
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn human_bytes(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / KIB as f64)
    }
}

/// Median, minimum and maximum of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        assert!(!samples.is_empty());
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stats {
            median,
            min: s[0],
            max: s[n - 1],
            n,
        }
    }

    /// `median (min–max)` in milliseconds, from seconds.
    pub fn ms(&self) -> String {
        format!(
            "{:.1} ({:.1}–{:.1})",
            self.median * 1e3,
            self.min * 1e3,
            self.max * 1e3
        )
    }
}

/// A tiny xorshift generator: incompressible values without a dependency.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// A parent database in its own temporary directory (the store's root); dropped with it.
pub struct Parent {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub rows: u64,
    /// L0 SSTs in the parent's latest manifest.
    pub ssts: usize,
    /// Bytes and files under the parent's directory, as `cp -r` sees them.
    pub bytes: u64,
    pub files: u64,
    pub build_secs: f64,
}

impl Parent {
    pub fn root(&self) -> &std::path::Path {
        self.dir.path()
    }
    pub fn parent_dir(&self) -> std::path::PathBuf {
        self.dir.path().join(PARENT)
    }
    pub fn database(&self) -> Database {
        Database::new(self.store.clone(), PARENT, ADMIN_TIMEOUT)
    }
}

pub fn file_store(dir: &std::path::Path) -> Store {
    Store::open(&StoreConfig {
        url: format!("file://{}", dir.display()),
        ..Default::default()
    })
    .expect("file store")
}

fn build_settings() -> Settings {
    Settings {
        // Nothing may merge or delete SSTs behind the bench's back; SSTs are cut by explicit flushes.
        compactor_options: None,
        garbage_collector_options: None,
        l0_sst_size_bytes: 8 * GIB as usize,
        l0_max_ssts: 1_000_000,
        l0_max_ssts_per_key: 1_000_000,
        max_unflushed_bytes: 16 * GIB as usize,
        ..Default::default()
    }
}

/// Sum of file sizes and number of files under `dir`.
pub fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

/// Writes a parent of about `target_bytes` of ~1 KiB incompressible values, cut into exactly
/// `ssts` L0 SSTs with disjoint key ranges (a WAL flush then a memtable flush per SST), closes it,
/// and runs SlateDB's garbage collector once over the WAL and manifest directories (min age 0), so
/// the directory holds the live database and not the history of how it was written.
pub async fn build_parent(target_bytes: u64, ssts: usize) -> Parent {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("slatedb-bench-")
        .tempdir()
        .expect("tempdir");
    let store = file_store(dir.path());
    let rows = (target_bytes / (VALUE_BYTES as u64 + 16)).max(ssts as u64);
    let db = slatedb::Db::builder(PARENT, store.main.clone())
        .with_settings(build_settings())
        .build()
        .await
        .expect("open parent");
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15 ^ target_bytes ^ ssts as u64);
    let mut value = vec![0u8; VALUE_BYTES];
    let ssts_u = ssts as u64;
    for i in 0..rows {
        rng.fill(&mut value);
        let key = format!("key-{i:012}");
        db.put(key.as_bytes(), &value).await.expect("put");
        // Cut an SST whenever the row index crosses the next of `ssts` equal shares.
        if (i + 1) * ssts_u / rows > i * ssts_u / rows {
            db.flush_with_options(FlushOptions {
                flush_type: FlushType::Wal,
            })
            .await
            .expect("flush WAL");
            db.flush_with_options(FlushOptions {
                flush_type: FlushType::MemTable,
            })
            .await
            .expect("flush memtable");
        }
    }
    db.close().await.expect("close parent");

    let gc_dir = GarbageCollectorDirectoryOptions {
        interval: None,
        min_age: Duration::ZERO,
        dry_run: false,
    };
    let admin = slatedb::admin::Admin::builder(PARENT, store.main.clone()).build();
    admin
        .run_gc_once(GarbageCollectorOptions {
            manifest_options: Some(gc_dir),
            wal_options: Some(gc_dir),
            wal_fence_options: None,
            compacted_options: None,
            compactions_options: None,
            detach_options: None,
            metric_level: None,
            // The local file system has no conditional overwrite.
            boundary_files_enabled: false,
            object_store_max_retries: Some(3),
        })
        .await
        .expect("gc");

    let description = Database::new(store.clone(), PARENT, ADMIN_TIMEOUT)
        .describe()
        .await
        .expect("describe parent");
    let (bytes, files) = dir_usage(&dir.path().join(PARENT));
    Parent {
        dir,
        store,
        rows,
        ssts: description.sst_count,
        bytes,
        files,
        build_secs: started.elapsed().as_secs_f64(),
    }
}

/// Runs a command to completion, panicking on failure; returns its wall time in seconds.
pub fn run_timed(cmd: &mut std::process::Command) -> f64 {
    let started = Instant::now();
    let status = cmd.status().expect("spawn");
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "{cmd:?} failed: {status}");
    secs
}

/// `sync(1)`: writes dirty pages back so that one measurement does not pay for the last one's
/// write-back. Never timed.
pub fn sync() {
    let _ = std::process::Command::new("sync").status();
}

// ---- CPU time ------------------------------------------------------------------------------

#[repr(C)]
#[derive(Default)]
struct Timeval {
    sec: i64,
    usec: i64,
}

#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [i64; 14],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

const RUSAGE_SELF: i32 = 0;
const RUSAGE_CHILDREN: i32 = -1;

fn cpu_seconds(who: i32) -> f64 {
    let mut usage = Rusage::default();
    // SAFETY: `usage` is a properly sized, writable `struct rusage` (x86_64/aarch64 Linux layout).
    let rc = unsafe { getrusage(who, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let t = |tv: &Timeval| tv.sec as f64 + tv.usec as f64 / 1e6;
    t(&usage.utime) + t(&usage.stime)
}

/// User + system CPU seconds of this process (all threads).
pub fn self_cpu() -> f64 {
    cpu_seconds(RUSAGE_SELF)
}

/// User + system CPU seconds of waited-for descendants.
pub fn children_cpu() -> f64 {
    cpu_seconds(RUSAGE_CHILDREN)
}

// ---- machine facts -------------------------------------------------------------------------

pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

// ---- a request-counting object store --------------------------------------------------------

/// Requests one operation made, by kind.
#[derive(Debug, Default)]
pub struct Counts {
    pub head: AtomicU64,
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    pub copy: AtomicU64,
}

impl Counts {
    pub fn snapshot(&self) -> [u64; 6] {
        [
            self.head.load(Ordering::Relaxed),
            self.get.load(Ordering::Relaxed),
            self.put.load(Ordering::Relaxed),
            self.list.load(Ordering::Relaxed),
            self.delete.load(Ordering::Relaxed),
            self.copy.load(Ordering::Relaxed),
        ]
    }
    pub fn summary(&self) -> String {
        let [head, get, put, list, delete, copy] = self.snapshot();
        format!("{head} HEAD, {get} GET, {put} PUT, {list} LIST, {delete} DELETE, {copy} COPY")
    }
    pub fn total(&self) -> u64 {
        self.snapshot().iter().sum()
    }
}

/// Wraps a store and counts the requests made through it (the "profile" of a clone: how many
/// object-store round trips it costs).
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    pub counts: Arc<Counts>,
}

impl CountingStore {
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> (Arc<dyn ObjectStore>, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        (
            Arc::new(CountingStore {
                inner,
                counts: counts.clone(),
            }),
            counts,
        )
    }
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = object_store::Result<T>> + Send + 'a>>;

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

// Written out as `async_trait` expands the trait, so the bench needs no extra dependency.
impl ObjectStore for CountingStore {
    fn put_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> BoxFut<'async_trait, PutResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        bump(&self.counts.put);
        self.inner.put_opts(location, payload, opts)
    }

    fn put_multipart_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 Path,
        opts: PutMultipartOptions,
    ) -> BoxFut<'async_trait, Box<dyn MultipartUpload>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        bump(&self.counts.put);
        self.inner.put_multipart_opts(location, opts)
    }

    fn get_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 Path,
        options: GetOptions,
    ) -> BoxFut<'async_trait, GetResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if options.head {
            bump(&self.counts.head);
        } else {
            bump(&self.counts.get);
        }
        self.inner.get_opts(location, options)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        bump(&self.counts.delete);
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        bump(&self.counts.list);
        self.inner.list(prefix)
    }

    fn list_with_delimiter<'life0, 'life1, 'async_trait>(
        &'life0 self,
        prefix: Option<&'life1 Path>,
    ) -> BoxFut<'async_trait, ListResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        bump(&self.counts.list);
        self.inner.list_with_delimiter(prefix)
    }

    fn copy_opts<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        from: &'life1 Path,
        to: &'life2 Path,
        options: CopyOptions,
    ) -> BoxFut<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        bump(&self.counts.copy);
        self.inner.copy_opts(from, to, options)
    }
}
