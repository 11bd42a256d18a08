//! Reconcilers, one file per kind: read observed state, decide with a pure function, apply.

pub mod checkpoint;
pub mod clone;
mod conditions;
pub mod metrics;
pub mod operator;
#[cfg(test)]
mod properties;
pub mod server;

use crate::api::StoreSpec;
use crate::engine::{EngineError, Fault, Store, StoreConfig};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use conditions::set_condition;

/// Field manager of every status the operator writes (server-side apply).
pub const FIELD_MANAGER: &str = "slatedb-operator";

/// Operator settings that come from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Bound on each SlateDB admin call.
    pub admin_timeout: Duration,
    /// First retry delay after a transient failure; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How many clones run at once.
    pub clone_concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            admin_timeout: crate::engine::DEFAULT_ADMIN_TIMEOUT,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            clone_concurrency: 8,
        }
    }
}

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    /// Clone work in flight.
    pub clones: clone::ClonePool,
    pub metrics: metrics::Metrics,
    /// Controllers started, and those whose watch caches have synced; ready when equal.
    controllers_started: AtomicUsize,
    controllers_synced: AtomicUsize,
    /// Consecutive transient failures per object uid, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings) -> Context {
        let reporter = Reporter {
            controller: "slatedb-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            clones: clone::ClonePool::new(settings.clone_concurrency),
            metrics: metrics::Metrics::default(),
            controllers_started: AtomicUsize::new(0),
            controllers_synced: AtomicUsize::new(0),
            settings,
            failures: Mutex::default(),
        }
    }

    /// Records one more transient failure of `uid` and returns how long to wait before retrying:
    /// base × 2^(n-1), capped, with up to 20% jitter so many failing objects do not retry in step.
    pub fn next_backoff(&self, uid: &str) -> Duration {
        let attempt = {
            let mut failures = self
                .failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let n = failures.entry(uid.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        backoff_delay(&self.settings, attempt, jitter_fraction(uid, attempt))
    }

    /// An Api over one namespace, or over all.
    pub fn scoped_api<K>(&self, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    /// Registers a starting controller; readiness waits for its cache to sync.
    pub fn controller_started<K>(self: &Arc<Self>, store: kube::runtime::reflector::Store<K>)
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        self.controllers_started.fetch_add(1, Ordering::SeqCst);
        let ctx = self.clone();
        tokio::spawn(async move {
            // The store's readiness is a one-shot channel that wakes only its latest waiter, and
            // the controller waits on it too: poll again every second instead of waiting once.
            loop {
                match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
                    Ok(Ok(())) => {
                        ctx.controllers_synced.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "a controller's watch cache never synced");
                        return;
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// Ready when every started controller's watch cache has synced (a standby starts none).
    pub fn is_ready(&self) -> bool {
        self.controllers_synced.load(Ordering::SeqCst)
            >= self.controllers_started.load(Ordering::SeqCst)
    }

    /// Records an event on `object`; `secondary` names a related object (e.g. a clone's source).
    pub async fn publish<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        secondary: Option<k8s_openapi::api::core::v1::ObjectReference>,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, "could not record event");
        }
    }

    /// The error policy of both controllers: count, log, and retry with per-object backoff.
    pub fn requeue_after_error<K: kube::Resource>(
        &self,
        kind: &'static str,
        object: &K,
        error: &Error,
    ) -> Action {
        use kube::ResourceExt;
        self.metrics.error(kind, error.metric_label());
        let delay = self.next_backoff(&object.uid().unwrap_or_default());
        tracing::warn!(namespace = %object.namespace().unwrap_or_default(), name = %object.name_any(), %error,
            retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    }

    pub fn reset_backoff(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(uid);
    }
}

fn jitter_fraction(uid: &str, attempt: u32) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (uid, attempt, std::time::SystemTime::now()).hash(&mut hasher);
    (hasher.finish() % 1000) as f64 / 1000.0
}

/// The delay before retry number `attempt` (1-based); `jitter` in [0, 1) adds up to 20%.
pub fn backoff_delay(settings: &Settings, attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let delay = settings
        .backoff_base
        .saturating_mul(1u32 << exponent)
        .min(settings.backoff_max);
    delay
        .mul_f64(1.0 + 0.2 * jitter.clamp(0.0, 1.0))
        .min(settings.backoff_max)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer error: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("{0}")]
    Blocked(String),
}

impl Error {
    /// A short label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApi",
            Error::Finalizer(_) => "Finalizer",
            Error::Engine(e) => e.reason(),
            Error::Blocked(_) => "Blocked",
        }
    }
}

/// Why the object-store options of a store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretProblem {
    #[error(
        "Secret {namespace}/{name} not found; create it with the object-store options as keys"
    )]
    NotFound { namespace: String, name: String },
    #[error("key {key:?} of Secret {namespace}/{name} is not UTF-8 text")]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
}

/// Why work on an object cannot proceed, in the words a condition needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub fault: Fault,
    pub reason: String,
    pub message: String,
}

impl From<&EngineError> for Problem {
    fn from(error: &EngineError) -> Self {
        Problem {
            fault: error.fault(),
            reason: error.reason().into(),
            message: error.to_string(),
        }
    }
}

/// Opens the store a spec names, with the options of its Secret.
pub async fn open_store(
    client: &Client,
    namespace: &str,
    spec: &StoreSpec,
) -> Result<Result<Store, Problem>, kube::Error> {
    let secret = spec.secret_ref.as_ref().map(|s| s.name.as_str());
    let options = match store_options(client, namespace, secret).await? {
        Ok(options) => options,
        Err(problem) => {
            let (fault, reason) = match problem {
                SecretProblem::NotFound { .. } => (Fault::Transient, "SecretNotFound"),
                SecretProblem::NotText { .. } => (Fault::Permanent, "InvalidSecret"),
            };
            return Ok(Err(Problem {
                fault,
                reason: reason.into(),
                message: problem.to_string(),
            }));
        }
    };
    let config = StoreConfig {
        url: spec.url.0.clone(),
        options,
        wal_url: spec.wal_url.as_ref().map(|u| u.0.clone()),
        ignore_unknown_options: false,
    };
    Ok(open_shared(config).map_err(|e| Problem::from(&e)))
}

/// Stores opened so far, by configuration. Each opened store is an HTTP client with its own TLS
/// setup and connection pool; 500 clones of one parent share one instead of holding 500.
static OPENED_STORES: std::sync::LazyLock<Mutex<HashMap<StoreConfig, Store>>> =
    std::sync::LazyLock::new(Mutex::default);

/// Bound on [`OPENED_STORES`]; past it (rotated credentials, many stores) it starts over.
const OPENED_STORES_MAX: usize = 64;

fn open_shared(config: StoreConfig) -> Result<Store, EngineError> {
    let mut opened = OPENED_STORES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(store) = opened.get(&config) {
        return Ok(store.clone());
    }
    let store = Store::open(&config)?;
    if opened.len() >= OPENED_STORES_MAX {
        opened.clear();
    }
    opened.insert(config, store.clone());
    Ok(store)
}

/// Reads a Secret's keys as object-store options.
pub async fn store_options(
    client: &Client,
    namespace: &str,
    secret: Option<&str>,
) -> Result<Result<BTreeMap<String, String>, SecretProblem>, kube::Error> {
    let Some(name) = secret else {
        return Ok(Ok(BTreeMap::new()));
    };
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
    else {
        return Ok(Err(SecretProblem::NotFound {
            namespace: namespace.into(),
            name: name.into(),
        }));
    };
    let mut options = BTreeMap::new();
    for (key, value) in secret.data.unwrap_or_default() {
        match String::from_utf8(value.0) {
            Ok(text) => options.insert(key, text),
            Err(_) => {
                return Ok(Err(SecretProblem::NotText {
                    namespace: namespace.into(),
                    name: name.into(),
                    key,
                }))
            }
        };
    }
    for (key, value) in secret.string_data.unwrap_or_default() {
        options.insert(key, value);
    }
    Ok(Ok(options))
}

/// Converts SlateDB's chrono times to the Kubernetes API's time type.
pub fn to_k8s_time(
    time: chrono::DateTime<chrono::Utc>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let timestamp = k8s_openapi::jiff::Timestamp::from_millisecond(time.timestamp_millis())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(timestamp)
}

/// How long the cleanup of a deleted object waits for its store's missing credentials Secret to
/// come back before it leaves the data behind: deleting a namespace deletes its Secrets too, and
/// must not hang on our finalizers.
pub const SECRET_GONE_GRACE: Duration = Duration::from_secs(60);

/// Whether cleanup stops waiting for the store and leaves the data (with a Warning event): the
/// store's Secret is missing and the object has been deleting for longer than the grace.
pub fn leave_data_behind(
    problem: &Problem,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let deleting_for = meta.deletion_timestamp.as_ref().map(|since| {
        now.timestamp_millis()
            .saturating_sub(since.0.as_millisecond())
    });
    problem.reason == "SecretNotFound"
        && deleting_for.is_some_and(|ms| ms >= SECRET_GONE_GRACE.as_millis() as i64)
}

/// Backoff of the controllers' watches after an error: doubling from 250 ms up to 3 s. kube's
/// default grows to 30 s and resets only after 2 error-free minutes, so after an API-server restart
/// (refused connections, then "too old resource version" on every resumed watch) new objects sat
/// unseen for up to a minute.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(3);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_is_left_behind_only_when_the_secret_stays_gone_past_the_grace() {
        let missing = super::Problem {
            fault: super::Fault::Transient,
            reason: "SecretNotFound".into(),
            message: "gone".into(),
        };
        let now = chrono::Utc::now();
        let deleting_since =
            |seconds: i64| k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                deletion_timestamp: Some(super::to_k8s_time(
                    now - chrono::TimeDelta::seconds(seconds),
                )),
                ..Default::default()
            };
        assert!(!super::leave_data_behind(
            &missing,
            &deleting_since(10),
            now
        ));
        assert!(super::leave_data_behind(&missing, &deleting_since(61), now));
        assert!(!super::leave_data_behind(
            &missing,
            &Default::default(),
            now
        ));
        let denied = super::Problem {
            reason: "CredentialsRejected".into(),
            ..missing
        };
        assert!(!super::leave_data_behind(
            &denied,
            &deleting_since(600),
            now
        ));
    }

    #[test]
    fn watch_backoff_doubles_to_its_cap_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut backoff = super::WatchBackoff::default();
        let delays: Vec<u64> = (&mut backoff)
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 3000, 3000]);
        backoff.reset();
        assert_eq!(backoff.next().map(|d| d.as_millis()), Some(250));
    }

    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let settings = Settings {
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            ..Settings::default()
        };
        assert_eq!(backoff_delay(&settings, 1, 0.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(&settings, 2, 0.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(&settings, 4, 0.0), Duration::from_secs(16));
        assert_eq!(backoff_delay(&settings, 30, 0.0), Duration::from_secs(60));
        assert_eq!(backoff_delay(&settings, 30, 0.99), Duration::from_secs(60));
        let jittered = backoff_delay(&settings, 2, 0.5);
        assert!(
            jittered > Duration::from_secs(4) && jittered <= Duration::from_secs(5),
            "{jittered:?}"
        );
    }
}
