//! The layers every opened store goes through: [`RetryingStore`] retries transient failures of
//! idempotent requests (a few times, with backoff), over [`InstrumentedStore`], which counts the
//! requests that reach the store and, only when the test hook [`FAULTS_ENV`] asks for it, injects
//! faults and latency.
//!
//! SlateDB wraps the store in its own retrying layer too, but that one retries without bound; this
//! one keeps our own calls (probes, HEADs, hashing, deletes) from failing on one lost request.

use super::backoff::Backoff;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Test hook: a fault plan for every store the process opens, e.g.
/// `transient=0.05,latency=2ms,deny=parent/,seed=7` (the format `FaultPlan::parse` reads).
pub const FAULTS_ENV: &str = "SLATEDB_OPERATOR_FAULTS";

/// The kinds of store request, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Get,
    Head,
    Put,
    Delete,
    List,
    Copy,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::Get,
        Operation::Head,
        Operation::Put,
        Operation::Delete,
        Operation::List,
        Operation::Copy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Head => "head",
            Operation::Put => "put",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Copy => "copy",
        }
    }
}

/// Process-wide counts of store traffic, for metrics and tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    requests: [AtomicU64; 6],
    retries: AtomicU64,
    injected_transient: AtomicU64,
    injected_denied: AtomicU64,
}

impl StoreStats {
    /// Requests of this kind that reached the store (each attempt counts).
    pub fn requests(&self, operation: Operation) -> u64 {
        self.requests[operation as usize].load(Ordering::Relaxed)
    }

    pub fn total_requests(&self) -> u64 {
        Operation::ALL.iter().map(|&o| self.requests(o)).sum()
    }

    /// Requests repeated by [`RetryingStore`] after a transient failure.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Faults injected by the test hook: (transient, access denied).
    pub fn injected(&self) -> (u64, u64) {
        (
            self.injected_transient.load(Ordering::Relaxed),
            self.injected_denied.load(Ordering::Relaxed),
        )
    }
}

static STATS: std::sync::LazyLock<StoreStats> = std::sync::LazyLock::new(StoreStats::default);

/// Store traffic of this process so far.
pub fn store_stats() -> &'static StoreStats {
    &STATS
}

tokio::task_local! {
    static TASK_RETRIES: Arc<AtomicU64>;
}

/// Runs `work` and also returns how many store requests it (in this task) had to retry.
pub async fn counting_retries<F: Future>(work: F) -> (F::Output, u64) {
    let counter = Arc::new(AtomicU64::new(0));
    let output = TASK_RETRIES.scope(counter.clone(), work).await;
    (output, counter.load(Ordering::Relaxed))
}

/// `work`, counting its retries where the current task counts them (for work spawned as a task
/// of its own).
pub(crate) async fn in_retry_scope_of_caller<F: Future>(work: F) -> F::Output {
    match TASK_RETRIES.try_with(Arc::clone) {
        Ok(counter) => TASK_RETRIES.scope(counter, work).await,
        Err(_) => work.await,
    }
}

/// Faults to inject, for tests of the operator's behaviour on a flaky or hostile store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Share of requests (0–1) that fail with a transient error (timeout, 503, throttling).
    pub transient_rate: f64,
    /// Delay added before every request.
    pub latency: Duration,
    /// Paths (prefixes, relative to the store's root) every request to which is refused (403).
    pub denied_prefixes: Vec<String>,
    /// Paths (prefixes) whose first write in this process stores altered bytes, as a faulty
    /// disk or a bad transfer would: what a copy's verification must catch.
    pub corrupted_prefixes: Vec<String>,
    pub seed: u64,
}

impl FaultPlan {
    /// Parses `key=value` pairs separated by commas: `transient=<0..1>`, `latency=<n>ms`,
    /// `deny=<prefix>` (repeatable), `corrupt=<prefix>` (repeatable), `seed=<n>`.
    pub fn parse(text: &str) -> Result<FaultPlan, String> {
        let mut plan = FaultPlan::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not key=value"))?;
            let bad = |e: &dyn fmt::Display| format!("{key}={value:?}: {e}");
            match key {
                "transient" => {
                    plan.transient_rate = value.parse().map_err(|e| bad(&e))?;
                    if !(0.0..=1.0).contains(&plan.transient_rate) {
                        return Err(bad(&"must be between 0 and 1"));
                    }
                }
                "latency" => {
                    let millis = value.strip_suffix("ms").ok_or_else(|| bad(&"needs ms"))?;
                    plan.latency = Duration::from_millis(millis.parse().map_err(|e| bad(&e))?);
                }
                "deny" => plan.denied_prefixes.push(value.to_string()),
                "corrupt" => plan.corrupted_prefixes.push(value.to_string()),
                "seed" => plan.seed = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown fault setting {key:?}")),
            }
        }
        Ok(plan)
    }

    /// The plan named by [`FAULTS_ENV`], if any. A malformed plan is reported, not ignored.
    pub fn from_env() -> Result<Option<FaultPlan>, String> {
        match std::env::var(FAULTS_ENV) {
            Ok(text) if !text.trim().is_empty() => FaultPlan::parse(&text).map(Some),
            _ => Ok(None),
        }
    }
}

/// Counts requests and injects the faults of an optional [`FaultPlan`].
#[derive(Clone, Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    faults: Option<Arc<FaultPlan>>,
}

/// Draws of the fault injector, numbered process-wide: stores are opened per reconcile, and each
/// must not replay the same sequence.
static DRAWS: AtomicU64 = AtomicU64::new(0);

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Option<FaultPlan>) -> InstrumentedStore {
        InstrumentedStore {
            inner,
            faults: faults.map(Arc::new),
        }
    }

    /// A uniform draw in [0, 1): splitmix64 of the seed and the draw's number.
    fn draw(seed: u64) -> f64 {
        let n = DRAWS.fetch_add(1, Ordering::Relaxed);
        let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Counts one request and decides whether it fails.
    async fn admit(&self, operation: Operation, path: &Path) -> object_store::Result<()> {
        STATS.requests[operation as usize].fetch_add(1, Ordering::Relaxed);
        let Some(plan) = &self.faults else {
            return Ok(());
        };
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        if plan
            .denied_prefixes
            .iter()
            .any(|prefix| path.as_ref().starts_with(prefix.as_str()))
        {
            STATS.injected_denied.fetch_add(1, Ordering::Relaxed);
            return Err(object_store::Error::PermissionDenied {
                path: path.to_string(),
                source: "403 Forbidden (injected)".into(),
            });
        }
        let draw = Self::draw(plan.seed);
        if draw < plan.transient_rate {
            STATS.injected_transient.fetch_add(1, Ordering::Relaxed);
            let kind = [
                "503 Service Unavailable",
                "503 SlowDown",
                "request timed out",
            ][(draw / plan.transient_rate * 3.0) as usize % 3];
            return Err(object_store::Error::Generic {
                store: "fault injection",
                source: format!("{kind} (injected) on {operation:?} {path}").into(),
            });
        }
        Ok(())
    }
}

/// Paths whose first write [`FaultPlan::corrupted_prefixes`] altered, process-wide.
static CORRUPTED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// `payload` with its last byte inverted, when `location` matches a corrupt prefix of `plan` and
/// was not written before in this process; else `payload` as it is.
fn corrupted_once(plan: &FaultPlan, location: &Path, payload: PutPayload) -> PutPayload {
    let path = location.as_ref();
    if !plan
        .corrupted_prefixes
        .iter()
        .any(|p| path.starts_with(p.as_str()))
    {
        return payload;
    }
    let first = CORRUPTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(path.to_string());
    if !first {
        return payload;
    }
    let mut bytes: Vec<u8> = payload
        .iter()
        .flat_map(|chunk| chunk.iter().copied())
        .collect();
    if let Some(last) = bytes.last_mut() {
        *last = !*last;
    }
    tracing::warn!(%path, "fault injection: this write stores altered bytes");
    PutPayload::from(bytes)
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.admit(Operation::Put, location).await?;
        let payload = match &self.faults {
            Some(plan) => corrupted_once(plan, location, payload),
            None => payload,
        };
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.admit(Operation::Put, location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let operation = if options.head {
            Operation::Head
        } else {
            Operation::Get
        };
        self.admit(operation, location).await?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        delete_each(locations, move |location| {
            let this = this.clone();
            async move {
                this.admit(Operation::Delete, &location).await?;
                this.inner.delete(&location).await
            }
        })
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            this.admit(Operation::List, &prefix.clone().unwrap_or_default())
                .await?;
            Ok::<_, object_store::Error>(this.inner.list(prefix.as_ref()))
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.admit(Operation::List, &prefix.cloned().unwrap_or_default())
            .await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.admit(Operation::Copy, from).await?;
        self.admit(Operation::Copy, to).await?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// Deletes each location with `delete`, up to 8 at once, in order (the layers here act on every
/// request, so a batch delete becomes single ones).
fn delete_each<F, Fut>(
    locations: BoxStream<'static, object_store::Result<Path>>,
    delete: F,
) -> BoxStream<'static, object_store::Result<Path>>
where
    F: Fn(Path) -> Fut + Send + 'static,
    Fut: Future<Output = object_store::Result<()>> + Send + 'static,
{
    locations
        .map(move |location| {
            let deleted = location.map(|location| (delete(location.clone()), location));
            async move {
                let (deleting, location) = deleted?;
                deleting.await?;
                Ok(location)
            }
        })
        .buffered(8)
        .boxed()
}

/// How [`RetryingStore`] retries.
#[derive(Clone, Copy, Debug)]
pub struct StoreRetry {
    /// Attempts per request, the first included.
    pub attempts: u32,
    pub backoff: Backoff,
}

impl Default for StoreRetry {
    fn default() -> Self {
        StoreRetry {
            attempts: 4,
            backoff: Backoff {
                base: Duration::from_millis(50),
                max: Duration::from_secs(1),
            },
        }
    }
}

/// Retries transient failures (5xx, throttling, timeouts, dropped connections) of requests that
/// are safe to repeat: reads, listings, deletes, and unconditional writes. Conditional writes are
/// left to the caller (SlateDB checks whether a lost reply's write landed before retrying).
#[derive(Debug)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: StoreRetry,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: StoreRetry) -> RetryingStore {
        RetryingStore { inner, policy }
    }
}

/// Whether a failed request may succeed when repeated.
pub(crate) fn is_retryable(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    ) && !super::error::is_access_denied(error)
}

async fn with_retries<T, F, Fut>(policy: StoreRetry, mut request: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match request().await {
            Err(error) if attempt < policy.attempts && is_retryable(&error) => {
                let delay = policy.backoff.jittered(attempt);
                tracing::debug!(%error, attempt, ?delay, "retrying a store request");
                STATS.retries.fetch_add(1, Ordering::Relaxed);
                let _ = TASK_RETRIES.try_with(|c| c.fetch_add(1, Ordering::Relaxed));
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if !matches!(opts.mode, PutMode::Overwrite) {
            return self.inner.put_opts(location, payload, opts).await;
        }
        with_retries(self.policy, || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        with_retries(self.policy, || {
            self.inner.get_opts(location, options.clone())
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (inner, policy) = (self.inner.clone(), self.policy);
        delete_each(locations, move |location| {
            let inner = inner.clone();
            async move { with_retries(policy, || inner.delete(&location)).await }
        })
    }

    /// Listings are gathered whole so that a failure part-way can be retried from the start.
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (inner, policy, prefix) = (self.inner.clone(), self.policy, prefix.cloned());
        futures::stream::once(async move {
            let listing = with_retries(policy, || {
                inner.list(prefix.as_ref()).try_collect::<Vec<_>>()
            })
            .await?;
            Ok::<_, object_store::Error>(futures::stream::iter(listing.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        with_retries(self.policy, || self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        if !matches!(options.mode, CopyMode::Overwrite) {
            return self.inner.copy_opts(from, to, options).await;
        }
        with_retries(self.policy, || {
            self.inner.copy_opts(from, to, options.clone())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn fault_plans_parse_and_bad_ones_are_errors() {
        let plan =
            FaultPlan::parse("transient=0.05, latency=3ms,deny=a/,deny=b/,corrupt=c/,seed=9")
                .unwrap();
        assert_eq!(plan.corrupted_prefixes, vec!["c/"]);
        let once = |path: &str| {
            let written = corrupted_once(&plan, &Path::from(path), PutPayload::from(vec![1u8, 2]));
            written
                .iter()
                .flat_map(|c| c.iter().copied())
                .collect::<Vec<u8>>()
        };
        assert_eq!(once("c/x.sst"), [1, !2], "the first write is altered");
        assert_eq!(once("c/x.sst"), [1, 2], "a second write of it is not");
        assert_eq!(once("d/x.sst"), [1, 2], "other paths are not");
        assert_eq!(plan.transient_rate, 0.05);
        assert_eq!(plan.latency, Duration::from_millis(3));
        assert_eq!(plan.denied_prefixes, vec!["a/", "b/"]);
        assert_eq!(plan.seed, 9);
        for bad in ["transient=2", "latency=3s", "nope=1", "transient", "seed=x"] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn fresh_stores_do_not_replay_the_same_faults() {
        let plan = FaultPlan {
            transient_rate: 0.2,
            seed: 3,
            ..Default::default()
        };
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut failed = 0;
        // One request per store, as when every reconcile opens its store anew.
        for _ in 0..1000 {
            let store = InstrumentedStore::new(inner.clone(), Some(plan.clone()));
            if store.list_with_delimiter(None).await.is_err() {
                failed += 1;
            }
        }
        assert!(
            (150..=250).contains(&failed),
            "{failed} of 1000 failed at a 20% rate"
        );
    }

    #[tokio::test]
    async fn transient_faults_are_retried_and_denied_paths_are_not() {
        let plan = FaultPlan {
            transient_rate: 0.3,
            denied_prefixes: vec!["secret/".into()],
            seed: 1,
            ..Default::default()
        };
        let faulty: Arc<dyn ObjectStore> = Arc::new(InstrumentedStore::new(
            Arc::new(InMemory::new()),
            Some(plan),
        ));
        let store = RetryingStore::new(
            faulty,
            StoreRetry {
                attempts: 10,
                backoff: Backoff {
                    base: Duration::from_millis(1),
                    max: Duration::from_millis(1),
                },
            },
        );
        let ((), retries) = counting_retries(async {
            for i in 0..50 {
                let path = Path::from(format!("data/{i}"));
                store.put(&path, vec![i as u8].into()).await.unwrap();
                let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
                assert_eq!(bytes.as_ref(), &[i as u8]);
            }
            let listed: Vec<_> = store
                .list(Some(&Path::from("data")))
                .try_collect()
                .await
                .unwrap();
            assert_eq!(listed.len(), 50);
            let locations =
                futures::stream::iter(listed.into_iter().map(|m| Ok(m.location))).boxed();
            let deleted: Vec<Path> = store.delete_stream(locations).try_collect().await.unwrap();
            assert_eq!(deleted.len(), 50);
            let left: Vec<_> = store
                .list(Some(&Path::from("data")))
                .try_collect()
                .await
                .unwrap();
            assert!(left.is_empty(), "{left:?}");
        })
        .await;
        assert!(
            retries > 10,
            "about 30% of 101 requests fail once: {retries}"
        );

        let denied = store.head(&Path::from("secret/x")).await.unwrap_err();
        assert!(
            matches!(denied, object_store::Error::PermissionDenied { .. }),
            "{denied}"
        );
        assert!(!is_retryable(&denied));
    }
}
