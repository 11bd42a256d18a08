//! The controllers. One shared reconcile shell ([`shell`]: fresh GET, finalizer, apply or
//! cleanup, status by server-side apply, requeue, error policy, wiring) and one folder per kind
//! holding only what differs, each split the same way:
//!
//! - `<kind>/mod.rs`: the kind's I/O (its `Reconcile` impl: observe, apply effects, cleanup, the
//!   watches that wake it);
//! - `<kind>/decide.rs`: the pure decision from what was observed to the status, event, effect and
//!   requeue, with its unit tests ([`decide_properties`] holds the property tests of both);
//! - further files for the kind's own concerns (the clone's source resolution and work pool, the
//!   checkpoint's observation of SlateDB).
//!
//! Beside them: [`conditions`] (condition bookkeeping), [`store`] (the DatabaseStore kind's controller), [`stores`]
//! (opening the stores objects name: DatabaseStores and inline stores, with their Secrets), [`store_policy`] (which inline stores may be opened at all), [`runtime`] (leader election, the controllers' tasks), [`server`]
//! (`/healthz`, `/readyz`, `/metrics`) and [`metrics`].

pub mod checkpoint;
pub mod clone;
pub mod conditions;
pub mod copy;
#[cfg(test)]
mod decide_properties;
pub mod metrics;
pub mod predicates;
pub mod runtime;
pub mod schedule;
pub mod server;
pub mod shell;
pub mod store;
pub mod store_policy;
pub mod stores;
pub mod work_pool;

use crate::engine::{Backoff, EngineError, Fault};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Field manager of every status the operator writes (server-side apply).
pub const FIELD_MANAGER: &str = "slatedb-operator";

/// How long a checkpoint's reconcile waits for the watch cache of clones before it lists them.
const CLONE_CACHE_SYNC: Duration = Duration::from_secs(60);

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
    /// How often a Ready clone's data is re-checked; `None` turns the checks off.
    pub health_check_period: Option<Duration>,
    /// Which inline stores objects may use.
    pub store_policy: store_policy::StorePolicy,
    /// The namespace the operator runs in, where DatabaseStores' credentials Secrets live.
    pub operator_namespace: String,
    /// The namespaces whose objects the operator reconciles; empty means all.
    pub namespaces: Vec<String>,
    /// The labels of the DatabaseStores this operator serves (all when empty), so several
    /// operators can share a cluster.
    pub store_selector: std::collections::BTreeMap<String, String>,
    /// How copies run as Jobs.
    pub copy_jobs: copy::job::JobSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            admin_timeout: crate::engine::DEFAULT_ADMIN_TIMEOUT,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            clone_concurrency: 8,
            health_check_period: Some(Duration::from_secs(600)),
            store_policy: store_policy::StorePolicy::default(),
            operator_namespace: "default".into(),
            namespaces: Vec::new(),
            store_selector: Default::default(),
            copy_jobs: copy::job::JobSettings {
                threshold_bytes: 1 << 30,
                ..Default::default()
            },
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
    /// Copy work in flight in the operator.
    pub copies: copy::CopyPool,
    /// The reads the health checks of Ready clones share per round, when checks are on.
    pub health: Option<crate::engine::HealthRounds>,
    pub metrics: metrics::Metrics,
    /// Controllers started, and those whose watch caches have synced; ready when equal.
    controllers_started: AtomicUsize,
    controllers_synced: AtomicUsize,
    /// Consecutive transient failures per object uid, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The clones (by uid) whose connection ConfigMap this process wrote or saw, so a settled
    /// clone looks it up once per process, not at every reconcile.
    connections_seen: Mutex<std::collections::HashSet<String>>,
    /// The resourceVersion of this process's last write of each object (by uid): a cached copy of
    /// that version is as fresh as a GET (see [`shell::reconcile`]).
    pub written: shell::WrittenVersions,
    /// The one watch of DatabaseClones per watched namespace (`None`: all), which the clone and
    /// checkpoint controllers share: a checkpoint's reconcile counts its clones in its cache
    /// instead of listing every clone of its namespace, which with 10 000 clones was a
    /// 10 000-object LIST per clone created.
    clone_watches: shell::SharedWatches<crate::api::DatabaseClone>,
    /// The one watch of DatabaseCheckpoints per watched namespace, shared by the checkpoint
    /// controller and the triggers of clones and copies; a clone's start reads its source from it.
    checkpoint_watches: shell::SharedWatches<crate::api::DatabaseCheckpoint>,
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
            // Every call of a clone is bounded by the admin timeout; a job silent for many of them
            // is stuck.
            clones: clone::clone_pool(
                settings.clone_concurrency,
                (settings.admin_timeout * 6).max(Duration::from_secs(60)),
            ),
            // A copy settles objects one at a time per transfer slot; a large object takes a
            // while, so a copy is stuck only after much longer than a clone.
            copies: copy::copy_pool(
                settings.clone_concurrency,
                (settings.admin_timeout * 20).max(Duration::from_secs(600)),
            ),
            health: settings
                .health_check_period
                .map(crate::engine::HealthRounds::new),
            metrics: metrics::Metrics::default(),
            controllers_started: AtomicUsize::new(0),
            controllers_synced: AtomicUsize::new(0),
            settings,
            failures: Mutex::default(),
            connections_seen: Mutex::default(),
            written: shell::WrittenVersions::default(),
            clone_watches: shell::SharedWatches::default(),
            checkpoint_watches: shell::SharedWatches::default(),
        }
    }

    /// The watch of DatabaseClones in `scope` (all namespaces when `None`), started by its first
    /// user.
    pub fn clone_watch(
        &self,
        scope: Option<&str>,
    ) -> shell::SharedWatch<crate::api::DatabaseClone> {
        self.clone_watches.get_or_start(self, scope)
    }

    /// The watch of DatabaseCheckpoints in `scope` (all namespaces when `None`), started by its
    /// first user.
    pub fn checkpoint_watch(
        &self,
        scope: Option<&str>,
    ) -> shell::SharedWatch<crate::api::DatabaseCheckpoint> {
        self.checkpoint_watches.get_or_start(self, scope)
    }

    /// DatabaseCheckpoint `namespace/name` as the watch cache holds it now; `None` when no synced
    /// cache covers the namespace or it does not hold the object.
    pub fn cached_checkpoint(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<crate::api::DatabaseCheckpoint>> {
        let watch = self.checkpoint_watches.covering(namespace)?;
        if !watch.is_ready() {
            return None;
        }
        watch
            .store()
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
    }

    /// The DatabaseClones of `namespace` from the watch cache that covers it, once it holds a first
    /// full list; `None` when there is none, or it has not synced within a minute.
    pub async fn cached_clones(
        &self,
        namespace: &str,
    ) -> Option<Vec<Arc<crate::api::DatabaseClone>>> {
        let watch = self.clone_watches.covering(namespace)?;
        // Waiting, not listing: at a restart every checkpoint reconciles before the cache has
        // synced, and a LIST of every clone per checkpoint was most of the operator's peak memory.
        if !tokio::time::timeout(CLONE_CACHE_SYNC, watch.ready())
            .await
            .unwrap_or(false)
        {
            return None;
        }
        // Compared in place: each checkpoint's reconcile looks at every clone.
        Some(
            watch
                .store()
                .state_filter(|clone| clone.metadata.namespace.as_deref() == Some(namespace)),
        )
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
        Backoff {
            base: self.settings.backoff_base,
            max: self.settings.backoff_max,
        }
        .jittered(attempt)
    }

    /// An Api over one namespace, or over all.
    pub fn scoped_api<K>(&self, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        shell::namespaced_api(self.client.clone(), namespace)
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

    /// Records `notice` as an event on `object`; `secondary` names a related object (e.g. a
    /// clone's source).
    pub fn publish<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        secondary: Option<k8s_openapi::api::core::v1::ObjectReference>,
        notice: &Notice,
    ) {
        let event = Event {
            type_: notice.type_,
            reason: notice.reason.clone(),
            note: Some(notice.note.chars().take(1000).collect()),
            action: notice.action.into(),
            secondary,
        };
        let (recorder, reference) = (self.recorder.clone(), object.object_ref(&()));
        // Off the reconcile's path: an event is a record for people, not a step of the work.
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(%error, "could not record event");
            }
        });
    }

    /// The error policy of every controller: count, log, and retry with per-object backoff.
    pub fn requeue_after_error<K: kube::Resource>(
        &self,
        kind: &str,
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

    /// Records whether the connection ConfigMap of clone `uid` is known to exist; returns
    /// whether it was known before.
    pub fn connection_seen(&self, uid: &str, seen: bool) -> bool {
        let mut known = self
            .connections_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen {
            !known.insert(uid.to_string())
        } else {
            known.remove(uid)
        }
    }

    /// Whether the connection ConfigMap of clone `uid` is known to exist.
    pub fn connection_known(&self, uid: &str) -> bool {
        self.connections_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(uid)
    }
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

/// An event a decision asks to record: what the operator did (`action`, a verb such as `Create`
/// or `Clone`) and what came of it (`reason`, `note`).
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub type_: EventType,
    pub action: &'static str,
    pub reason: String,
    pub note: String,
}

impl Notice {
    pub fn normal(action: &'static str, reason: &str, note: impl Into<String>) -> Notice {
        Notice {
            type_: EventType::Normal,
            action,
            reason: reason.into(),
            note: note.into(),
        }
    }

    pub fn warning(action: &'static str, reason: &str, note: impl Into<String>) -> Notice {
        Notice {
            type_: EventType::Warning,
            ..Notice::normal(action, reason, note)
        }
    }
}

/// What most I/O steps of a reconcile return. Outer: retry the reconcile (the API server failed
/// us); inner: tell the user (a [`Problem`] for the object's conditions).
pub type Outcome<T> = Result<Result<T, Problem>, Error>;

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

/// Converts SlateDB's chrono times to the Kubernetes API's time type.
pub fn to_k8s_time(
    time: chrono::DateTime<chrono::Utc>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let timestamp = k8s_openapi::jiff::Timestamp::from_millisecond(time.timestamp_millis())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(timestamp)
}
