//! The reconcile shell every kind shares. A kind implements [`Reconcile`] (its cleanup finalizer,
//! `apply` and `cleanup`) and gets: a fresh GET (the watch cache may lag our own writes), the
//! finalizer added or run, the status written by server-side apply, the requeue mapping, the error
//! policy (count, log, per-object backoff), and the controller wiring with the watch backoff and
//! the readiness registration.

use super::{Context, Error, FIELD_MANAGER};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::Store;
use kube::runtime::WatchStreamExt;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

/// What a kind's controller provides to the shared shell.
pub trait Reconcile:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// Held while the object's data must be cleaned up with it.
    const CLEANUP_FINALIZER: &'static str;

    /// Whether the patch adding the cleanup finalizer is sent before `apply_while_finalizing`
    /// runs. A kind that adds to it ([`FinalizerPatch::stored_with_annotation`]) sends it itself.
    const SEND_FINALIZER_AT_ONCE: bool = true;

    /// The kind's API in `namespace` (all namespaces when `None`; cluster-scoped kinds ignore it).
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;

    /// The watch of the kind's controller. Its lists come in pages of 500 (kube's default): a list
    /// of "any" version (`resourceVersion=0`) is served from the API server's cache in one piece,
    /// whatever the limit, and with 10 000 DatabaseClones that one response was tens of MB in the
    /// operator's memory at once.
    fn watch_config(_ctx: &Context) -> watcher::Config {
        watcher::Config::default()
    }

    /// Brings the world in line with the object (finalizer present, not being deleted).
    fn apply(
        object: Arc<Self>,
        ctx: Arc<Context>,
    ) -> impl Future<Output = Result<Action, Error>> + Send;

    /// `apply` of an object whose cleanup finalizer is being added by `finalizer`, a patch in
    /// flight (or unsent, see [`Self::SEND_FINALIZER_AT_ONCE`]): by default it waits for the patch. A kind whose first reconcile writes a status
    /// before any effect overrides it to send that status beside the patch
    /// ([`FinalizerPatch::write_status_beside`]): one round trip less before its work starts. An
    /// override waits for the patch ([`FinalizerPatch::stored`]) before any effect, so nothing
    /// that needs cleaning up happens before the finalizer that cleans it up is stored.
    fn apply_while_finalizing(
        object: Arc<Self>,
        ctx: Arc<Context>,
        mut finalizer: FinalizerPatch<Self>,
    ) -> impl Future<Output = Result<Action, Error>> + Send {
        async move {
            let object = finalizer
                .stored(&ctx)
                .await?
                .unwrap_or_else(|| (*object).clone());
            Self::apply(Arc::new(object), ctx).await
        }
    }

    /// Cleans up after the object (being deleted); success releases the finalizer.
    fn cleanup(
        object: Arc<Self>,
        ctx: Arc<Context>,
    ) -> impl Future<Output = Result<Action, Error>> + Send;
}

/// One reconcile of any kind: a fresh GET, then `apply` or `cleanup` under the finalizer.
pub async fn reconcile<K: Reconcile>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let kind = K::kind(&());
    let _timer = ctx.metrics.reconcile(&kind);
    let namespace = object.namespace();
    let api = K::api(ctx.client.clone(), namespace.as_deref());
    let namespace = namespace.unwrap_or_default();
    let span = tracing::info_span!("reconcile", kind = %kind, namespace = %namespace, name = %object.name_any());
    // The watch cache may lag our own writes (the finalizer, the status): a stale copy would make
    // the finalizer patch fail its precondition, and decisions must build on the stored status.
    // A cached copy that holds our last write is as fresh, and saves a round trip per reconcile.
    let object = match ctx.written.classify(object.as_ref()) {
        CachedCopy::Current => Arc::unwrap_or_clone(object),
        // Deciding now would decide on what is already out of date (and a reconcile during a
        // clone would publish what the next one publishes anyway); the write's own event comes.
        CachedCopy::Superseded => {
            tracing::debug!(parent: &span, "cached copy predates our last write; waiting for it");
            return Ok(Action::await_change());
        }
        CachedCopy::Unknown => {
            let Some(fresh) = api.get_opt(&object.name_any()).await? else {
                ctx.written.forget(&object.uid().unwrap_or_default());
                return Ok(Action::await_change());
            };
            fresh
        }
    };
    let object = match add_cleanup_finalizer::<K>(&api, object) {
        (object, None) => object,
        (object, Some(patch)) => {
            return K::apply_while_finalizing(Arc::new(object), ctx, patch)
                .instrument(span)
                .await;
        }
    };
    finalizer(
        &api,
        K::CLEANUP_FINALIZER,
        Arc::new(object),
        |event| async {
            match event {
                FinalizerEvent::Apply(object) => K::apply(object, ctx.clone()).await,
                FinalizerEvent::Cleanup(object) => {
                    let uid = object.uid().unwrap_or_default();
                    let done = K::cleanup(object, ctx.clone()).await;
                    // The finalizer goes next, and the object with it.
                    if done.is_ok() {
                        ctx.written.forget(&uid);
                    }
                    done
                }
            }
        },
    )
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The object with its cleanup finalizer and, when a live object lacked it, the patch that adds
/// it, sent now unless the kind sends it itself ([`Reconcile::SEND_FINALIZER_AT_ONCE`]). kube's
/// finalizer helper adds it and returns, so the work would wait for the watch to bring the patched
/// object back; the patch in flight lets the first reconcile go on.
fn add_cleanup_finalizer<K: Reconcile>(
    api: &Api<K>,
    mut object: K,
) -> (K, Option<FinalizerPatch<K>>) {
    let finalizers = object.finalizers();
    if object.meta().deletion_timestamp.is_some()
        || finalizers.iter().any(|f| f == K::CLEANUP_FINALIZER)
    {
        return (object, None);
    }
    // The guards make the patch fail, rather than drop another writer's finalizers, when the
    // list changed since the GET.
    let operations = match &object.meta().finalizers {
        None => vec![
            serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": null}),
            serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": [K::CLEANUP_FINALIZER]}),
        ],
        Some(list) => vec![
            serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": list}),
            serde_json::json!({"op": "add", "path": "/metadata/finalizers/-", "value": K::CLEANUP_FINALIZER}),
        ],
    };
    let mut patch = FinalizerPatch {
        state: PatchState::Unsent(Box::new(UnsentPatch {
            api: api.clone(),
            name: object.name_any(),
            operations,
            has_annotations: object.meta().annotations.is_some(),
        })),
    };
    if K::SEND_FINALIZER_AT_ONCE {
        patch.send();
    }
    object
        .meta_mut()
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(K::CLEANUP_FINALIZER.into());
    (object, Some(patch))
}

/// The patch adding an object's cleanup finalizer: unsent, or sent and not yet answered.
pub struct FinalizerPatch<K> {
    state: PatchState<K>,
}

enum PatchState<K> {
    /// No patch: the object holds its finalizer, or the patch was answered.
    Done,
    Unsent(Box<UnsentPatch<K>>),
    InFlight(tokio::task::JoinHandle<Result<K, Error>>),
}

struct UnsentPatch<K> {
    api: Api<K>,
    name: String,
    /// JSON-patch operations.
    operations: Vec<serde_json::Value>,
    /// Whether the object had annotations at the GET (an annotation is added to the map, or the
    /// map is added under a guard that it is still absent).
    has_annotations: bool,
}

/// The JSON-patch operations that set the annotation `key: value` on an object that had
/// annotations at the GET, or had none: then the map is added, guarded by its being still absent
/// (an `add` of the map would replace one written since).
fn annotation_operations(has_annotations: bool, key: &str, value: &str) -> Vec<serde_json::Value> {
    if has_annotations {
        let member = key.replace('~', "~0").replace('/', "~1");
        vec![serde_json::json!(
            {"op": "add", "path": format!("/metadata/annotations/{member}"), "value": value}
        )]
    } else {
        vec![
            serde_json::json!({"op": "test", "path": "/metadata/annotations", "value": null}),
            serde_json::json!({"op": "add", "path": "/metadata/annotations", "value": {key: value}}),
        ]
    }
}

impl<K: Reconcile> UnsentPatch<K> {
    fn annotate(&mut self, key: &str, value: &str) {
        let operations = annotation_operations(self.has_annotations, key, value);
        self.operations.extend(operations);
    }

    fn send(self) -> tokio::task::JoinHandle<Result<K, Error>> {
        tokio::spawn(async move {
            let patch: json_patch::Patch = serde_json::from_value(self.operations.into())
                .map_err(|e| Error::Blocked(e.to_string()))?;
            let params = PatchParams::default();
            Ok(self
                .api
                .patch(&self.name, &params, &Patch::Json::<()>(patch))
                .await?)
        })
    }
}

impl<K: Reconcile> FinalizerPatch<K> {
    fn send(&mut self) {
        self.state = match std::mem::replace(&mut self.state, PatchState::Done) {
            PatchState::Unsent(unsent) => PatchState::InFlight(unsent.send()),
            other => other,
        };
    }

    fn take_in_flight(&mut self) -> Option<tokio::task::JoinHandle<Result<K, Error>>> {
        self.send();
        match std::mem::replace(&mut self.state, PatchState::Done) {
            PatchState::InFlight(in_flight) => Some(in_flight),
            _ => None,
        }
    }

    /// Waits until the finalizer is stored; the object as the patch returned it, the first time.
    pub async fn stored(&mut self, ctx: &Context) -> Result<Option<K>, Error> {
        let Some(in_flight) = self.take_in_flight() else {
            return Ok(None);
        };
        let patched = joined(in_flight.await)?;
        ctx.written.record(&patched);
        Ok(Some(patched))
    }

    /// Sends the unsent patch with the annotation `key: value` added, and waits until both are
    /// stored: the object as the patch returned it. `None` when there was no unsent patch to carry
    /// the annotation (the finalizer was stored, or its patch is in flight) and nothing was sent.
    pub async fn stored_with_annotation(
        &mut self,
        ctx: &Context,
        key: &str,
        value: &str,
    ) -> Result<Option<K>, Error> {
        let PatchState::Unsent(unsent) = &mut self.state else {
            return Ok(None);
        };
        unsent.annotate(key, value);
        self.stored(ctx).await
    }

    /// Writes the object's status (as [`write_status`]) while the finalizer patch is in flight,
    /// and waits for both.
    pub async fn write_status_beside(
        &mut self,
        ctx: &Context,
        api: &Api<K>,
        object: &K,
        status: &impl Serialize,
    ) -> Result<(), Error> {
        let Some(in_flight) = self.take_in_flight() else {
            return Ok(write_status(ctx, api, object, status).await?);
        };
        let (patched, written) = tokio::join!(in_flight, status_written(api, object, status));
        let written = written?;
        let patched = match joined(patched) {
            Ok(patched) => patched,
            Err(error) => {
                ctx.written.record(&written);
                return Err(error);
            }
        };
        for write in in_write_order(patched, written) {
            ctx.written.record(&write);
        }
        Ok(())
    }
}

/// The finalizer patch's and the status write's answers in the order the API server applied them:
/// the second answers with both changes, and recorded last, it is the one a cached copy must hold
/// to stand for a GET.
fn in_write_order<K: Reconcile>(patched: K, status_written: K) -> [K; 2] {
    let status_was_second = status_written
        .finalizers()
        .iter()
        .any(|f| f == K::CLEANUP_FINALIZER);
    if status_was_second {
        [patched, status_written]
    } else {
        [status_written, patched]
    }
}

impl<K> FinalizerPatch<K> {
    /// No patch: the object holds its finalizer.
    pub fn none() -> Self {
        FinalizerPatch {
            state: PatchState::Done,
        }
    }
}

fn joined<K>(outcome: Result<Result<K, Error>, tokio::task::JoinError>) -> Result<K, Error> {
    outcome.map_err(|e| Error::Blocked(format!("adding the cleanup finalizer: {e}")))?
}

/// The error policy of every kind: count, log, and retry with per-object backoff.
pub fn error_policy<K: Reconcile>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.requeue_after_error(&K::kind(&()), object.as_ref(), error)
}

/// [`Reconcile::api`] of a namespaced kind.
pub fn namespaced_api<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    }
}

/// A decision's "look again after" as the controller's action: no delay waits for a change.
pub fn requeue(after: Option<Duration>) -> Action {
    match after {
        Some(delay) => Action::requeue(delay),
        None => Action::await_change(),
    }
}

/// The server-side-apply body that sets `status` on an object of kind `K`.
pub fn status_patch<K: Resource<DynamicType = ()>>(status: &impl Serialize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Writes the object's status by server-side apply, as the operator's field manager.
pub async fn write_status<K: Reconcile>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    status: &impl Serialize,
) -> Result<(), kube::Error> {
    let written = status_written(api, object, status).await?;
    ctx.written.record(&written);
    Ok(())
}

async fn status_written<K: Reconcile>(
    api: &Api<K>,
    object: &K,
    status: &impl Serialize,
) -> Result<K, kube::Error> {
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&status_patch::<K>(status)),
    )
    .await
}

/// A controller of `K` in `namespace` (or all), on a watch of its own (see [`SharedWatch`]), registered
/// for readiness; and the store of its watch cache.
pub fn controller<K: Reconcile>(
    ctx: &Arc<Context>,
    namespace: Option<&str>,
) -> (Controller<K>, Store<K>) {
    controller_on(ctx, &SharedWatch::start(ctx, namespace))
}

/// A controller of the objects of `watch`, registered for readiness; and the watch's store.
pub fn controller_on<K: Reconcile>(
    ctx: &Arc<Context>,
    watch: &SharedWatch<K>,
) -> (Controller<K>, Store<K>) {
    let store = watch.store();
    let controller = Controller::for_shared_stream(watch.subscribe(), store.clone());
    ctx.controller_started(store.clone());
    (controller, store)
}

/// One watch of kind `K` whose cache and events several controllers share: the clone
/// controller, its parents trigger and the checkpoint controller each held a watch (and two a
/// cache) of every DatabaseClone, three initial lists and two copies of 10 000 objects. The watch
/// runs in a task of its own, from its start until the process ends.
pub struct SharedWatch<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<UnboundedSender<Arc<K>>>>>,
    /// Whether the store holds a first full list. The store's own readiness wakes only its latest
    /// waiter (a one-shot channel), so every reconcile waiting on it needs this instead.
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for SharedWatch<K> {
    fn clone(&self) -> Self {
        SharedWatch {
            store: self.store.clone(),
            subscribers: self.subscribers.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K: Reconcile> SharedWatch<K> {
    /// Starts the watch of `K` in `namespace` (or all), with the operator's watch backoff.
    pub fn start(ctx: &Context, namespace: Option<&str>) -> SharedWatch<K> {
        let events = watcher(K::api(ctx.client.clone(), namespace), K::watch_config(ctx))
            .backoff(WatchBackoff::default())
            .modify(trimmed);
        SharedWatch::of(events)
    }

    /// The shared cache and events of a watch's `events`.
    fn of(
        events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    ) -> SharedWatch<K> {
        let (store, mut writer) = kube::runtime::reflector::store::<K>();
        let (set_ready, ready) = tokio::sync::watch::channel(false);
        let subscribers: Arc<Mutex<Vec<UnboundedSender<Arc<K>>>>> = Arc::default();
        let (reader, sinks) = (store.clone(), subscribers.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, kind = %K::kind(&()), "watch");
                        continue;
                    }
                };
                writer.apply_watcher_event(&event);
                // Subscribers get the cached copies; a relist's objects come once it is complete,
                // when the store holds them (reconciles wait for that anyway).
                let touched = match event {
                    watcher::Event::Apply(object) => reader
                        .get(&kube::runtime::reflector::ObjectRef::from_obj(&object))
                        .into_iter()
                        .collect(),
                    watcher::Event::Delete(object) => vec![Arc::new(object)],
                    watcher::Event::InitDone => {
                        set_ready.send_replace(true);
                        reader.state()
                    }
                    watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
                };
                if !touched.is_empty() {
                    lock(&sinks).retain(|sink| {
                        touched
                            .iter()
                            .all(|object| sink.unbounded_send(object.clone()).is_ok())
                    });
                }
            }
        });
        SharedWatch {
            store,
            subscribers,
            ready,
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> SharedWatch<K> {
    /// The watch cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Whether the cache holds a first full list now.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the cache holds a first full list (`false`: the watch task is gone).
    pub async fn ready(&self) -> bool {
        self.ready.clone().wait_for(|ready| *ready).await.is_ok()
    }

    /// Every object the watch applies or deletes from now on, and those the cache already holds:
    /// a controller that subscribes after the first list (they start in any order) misses none.
    /// An object may come twice; a trigger does not mind.
    pub fn subscribe(&self) -> UnboundedReceiver<Arc<K>> {
        let (sink, events) = unbounded();
        // Under the subscribers' lock: an event applied after the copy below is sent to `sink`.
        let mut subscribers = lock(&self.subscribers);
        if *self.ready.borrow() {
            for object in self.store.state() {
                let _ = sink.unbounded_send(object);
            }
        }
        subscribers.push(sink);
        events
    }

    /// The objects whose `predicate` hash changed since they last passed, and those gone, as kube's
    /// `predicate_filter` passes them from a watch of its own.
    pub fn changes(
        &self,
        predicate: fn(&K) -> Option<u64>,
    ) -> impl futures::Stream<Item = Arc<K>> + Send + 'static
    where
        K: Send + Sync,
    {
        let store = self.store.clone();
        let mut seen: HashMap<String, u64> = HashMap::new();
        self.subscribe().filter(move |object| {
            let uid = object.meta().uid.clone().unwrap_or_default();
            let cached = store.get(&kube::runtime::reflector::ObjectRef::from_obj(&**object));
            let gone = cached.is_none_or(|cached| cached.meta().uid != object.meta().uid);
            let pass = if gone {
                // Forgotten with the object, so the hashes do not grow with every object ever seen.
                seen.remove(&uid);
                true
            } else {
                predicate(object).is_none_or(|hash| seen.insert(uid, hash) != Some(hash))
            };
            futures::future::ready(pass)
        })
    }
}

/// How a cached copy of an object stands against this process's own writes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachedCopy {
    /// It holds the process's last write, or the process never wrote the object (its cache then
    /// holds every write before the process started): as fresh as a GET.
    Current,
    /// It holds an earlier write of the process: the watch has yet to deliver the later one,
    /// whose event reconciles the object again.
    Superseded,
    /// Someone else wrote it since, or it cannot be told: read it afresh.
    Unknown,
}

/// How many earlier writes of one object are remembered: the watch cache may lag a few writes
/// of a busy object, rarely more.
const EARLIER_WRITES_KEPT: usize = 4;

/// The resourceVersions of this process's last writes of each object (by uid). A cached copy of
/// the last one is as fresh as a GET: a watch cache lags only the writes it has not delivered.
#[derive(Default)]
pub struct WrittenVersions {
    versions: Mutex<HashMap<String, Writes>>,
}

struct Writes {
    last: String,
    earlier: VecDeque<String>,
}

impl WrittenVersions {
    /// Records `written`, an object as one of this process's writes returned it.
    pub fn record<K: Resource>(&self, written: &K) {
        let meta = written.meta();
        if let (Some(uid), Some(version)) = (&meta.uid, &meta.resource_version) {
            let mut versions = lock(&self.versions);
            match versions.get_mut(uid) {
                Some(writes) => {
                    let previous = std::mem::replace(&mut writes.last, version.clone());
                    writes.earlier.push_front(previous);
                    writes.earlier.truncate(EARLIER_WRITES_KEPT);
                }
                None => {
                    let writes = Writes {
                        last: version.clone(),
                        earlier: VecDeque::new(),
                    };
                    versions.insert(uid.clone(), writes);
                }
            }
        }
    }

    /// Forgets an object that is gone.
    pub fn forget(&self, uid: &str) {
        lock(&self.versions).remove(uid);
    }

    /// How `cached` stands against this process's writes of the object.
    pub fn classify<K: Resource>(&self, cached: &K) -> CachedCopy {
        let meta = cached.meta();
        let (Some(uid), Some(version)) = (&meta.uid, &meta.resource_version) else {
            return CachedCopy::Unknown;
        };
        match lock(&self.versions).get(uid) {
            None => CachedCopy::Current,
            Some(writes) if &writes.last == version => CachedCopy::Current,
            Some(writes) if writes.earlier.contains(version) => CachedCopy::Superseded,
            Some(_) => CachedCopy::Unknown,
        }
    }
}

/// The shared watches of kind `K`, one per scope (a namespace, or all when `None`), each started
/// by its first user.
pub struct SharedWatches<K: Resource<DynamicType = ()> + 'static> {
    watches: Mutex<Vec<(Option<String>, SharedWatch<K>)>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Default for SharedWatches<K> {
    fn default() -> Self {
        SharedWatches {
            watches: Mutex::default(),
        }
    }
}

impl<K: Reconcile> SharedWatches<K> {
    /// The watch of `scope`, started now if it is the first use.
    pub fn get_or_start(&self, ctx: &Context, scope: Option<&str>) -> SharedWatch<K> {
        let mut watches = lock(&self.watches);
        if let Some((_, watch)) = watches.iter().find(|(s, _)| s.as_deref() == scope) {
            return watch.clone();
        }
        let watch = SharedWatch::start(ctx, scope);
        watches.push((scope.map(String::from), watch.clone()));
        watch
    }

    /// A watch whose scope covers `namespace`, if one was started.
    pub fn covering(&self, namespace: &str) -> Option<SharedWatch<K>> {
        lock(&self.watches)
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))
            .map(|(_, watch)| watch.clone())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// kubectl's copy of the last applied object, in the annotations of objects made by
/// `kubectl apply`: as large as the spec, and read by no decision.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no decision reads from an object before it is cached (the reconcile reads the object
/// afresh): its `managedFields`, with 10 000 objects a large share of the operator's memory, and
/// kubectl's last-applied copy.
fn trimmed<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// How many reconciles of one controller run at once. Unbounded, a restart with 10 000 Ready
/// clones started 10 000 reconciles together: as many connections to the API server (HTTP/1.1
/// has one request per connection), each with its buffers, and as many health checks holding a
/// manifest. The work of a clone runs in its pool, not in a reconcile, so the bound does not hold
/// clones back.
const RECONCILES_AT_ONCE: u16 = 64;

/// Runs `controller` with the shared reconcile and error policy until a shutdown signal.
pub async fn run<K: Reconcile>(controller: Controller<K>, ctx: Arc<Context>)
where
    K::DynamicType: Eq + std::hash::Hash + Clone + Debug + Unpin,
{
    let kind = K::kind(&());
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILES_AT_ONCE))
        .shutdown_on_signal()
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| {
            let kind = kind.clone();
            async move {
                if let Err(error) = result {
                    tracing::warn!(%error, %kind, "controller");
                }
            }
        })
        .await;
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
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_object_stands_for_a_get_only_when_it_holds_the_last_write() {
        let versions = WrittenVersions::default();
        let at = |version: &str| {
            let mut object = clone_object("a", "u1", 1);
            object.metadata.resource_version = Some(version.into());
            object
        };
        assert_eq!(
            versions.classify(&at("5")),
            CachedCopy::Current,
            "never written: the cache holds it all"
        );
        versions.record(&at("7"));
        assert_eq!(
            versions.classify(&at("5")),
            CachedCopy::Unknown,
            "older than our write"
        );
        assert_eq!(versions.classify(&at("7")), CachedCopy::Current);
        assert_eq!(
            versions.classify(&at("9")),
            CachedCopy::Unknown,
            "someone wrote since: read it afresh"
        );
        versions.record(&at("11"));
        assert_eq!(
            versions.classify(&at("7")),
            CachedCopy::Superseded,
            "our own earlier write: the later one is on its way"
        );
        assert_eq!(versions.classify(&at("9")), CachedCopy::Unknown);
        assert_eq!(versions.classify(&at("11")), CachedCopy::Current);
        for version in 12..12 + EARLIER_WRITES_KEPT {
            versions.record(&at(&version.to_string()));
        }
        assert_eq!(
            versions.classify(&at("7")),
            CachedCopy::Unknown,
            "only the last few writes are remembered"
        );
        assert_eq!(versions.classify(&at("11")), CachedCopy::Superseded);
        versions.forget("u1");
        assert_eq!(versions.classify(&at("11")), CachedCopy::Current);
        let mut no_uid = at("7");
        no_uid.metadata.uid = None;
        assert_eq!(versions.classify(&no_uid), CachedCopy::Unknown);
    }

    #[test]
    fn of_a_finalizer_patch_and_a_status_write_the_one_holding_both_is_recorded_last() {
        let answer = |version: &str, finalized: bool, attempts: i32| {
            let mut object = clone_object("a", "u1", attempts);
            object.metadata.resource_version = Some(version.into());
            if finalized {
                object.metadata.finalizers = Some(vec![DatabaseClone::CLEANUP_FINALIZER.into()]);
            }
            object
        };
        let versions = |order: [DatabaseClone; 2]| {
            order.map(|o| o.metadata.resource_version.unwrap_or_default())
        };
        // The status went second: its answer holds the finalizer.
        let order = in_write_order(answer("5", true, 0), answer("6", true, 1));
        assert_eq!(versions(order), ["5", "6"]);
        // The finalizer went second: the status write's answer lacks it.
        let order = in_write_order(answer("6", true, 1), answer("5", false, 1));
        assert_eq!(versions(order), ["5", "6"]);
    }

    #[test]
    fn an_annotation_joins_the_ones_there_and_never_replaces_a_map_written_since() {
        let apply = |has_annotations: bool, object: serde_json::Value| {
            let operations = annotation_operations(has_annotations, "slatedb.io/a~b", "v");
            let patch: json_patch::Patch =
                serde_json::from_value(operations.into()).expect("a JSON patch");
            let mut object = object;
            json_patch::patch(&mut object, &patch).map(|()| object)
        };
        let kept = apply(true, json!({"metadata": {"annotations": {"other": "x"}}})).unwrap();
        assert_eq!(
            kept["metadata"]["annotations"],
            json!({"other": "x", "slatedb.io/a~b": "v"})
        );
        // None at the GET: the map, guarded as the finalizer list is (the API server's `test` of
        // an absent member against null passes; every clone the e2e suite creates without
        // annotations goes this way).
        assert_eq!(
            annotation_operations(false, "slatedb.io/a~b", "v"),
            vec![
                json!({"op": "test", "path": "/metadata/annotations", "value": null}),
                json!({"op": "add", "path": "/metadata/annotations", "value": {"slatedb.io/a~b": "v"}}),
            ]
        );
        // Annotations written since the GET that saw none: the patch fails, and drops nothing.
        assert!(apply(false, json!({"metadata": {"annotations": {"other": "x"}}})).is_err());
    }

    #[test]
    fn watch_backoff_doubles_to_its_cap_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u64> = (&mut backoff)
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 3000, 3000]);
        backoff.reset();
        assert_eq!(backoff.next().map(|d| d.as_millis()), Some(250));
    }

    use crate::api::{DatabaseCheckpoint, DatabaseClone, DatabaseCloneStatus};

    fn clone_object(name: &str, uid: &str, attempts: i32) -> DatabaseClone {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
            "metadata": {"name": name, "namespace": "a", "uid": uid, "managedFields": [{"manager": "x"}],
                "annotations": {LAST_APPLIED: "{}", "keep": "1"}},
            "spec": {"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": format!("clones/{name}")}},
            "status": {"conditions": [], "attempts": attempts}
        }))
        .unwrap()
    }

    /// The names of what `events` holds now, in order.
    fn names(events: &mut UnboundedReceiver<Arc<DatabaseClone>>) -> Vec<String> {
        std::iter::from_fn(|| events.try_recv().ok())
            .map(|c| c.name_any())
            .collect()
    }

    /// Until `condition` holds (the watch's task runs beside the test).
    async fn eventually(condition: impl Fn() -> bool) {
        for _ in 0..200 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the condition never held");
    }

    #[tokio::test]
    async fn a_shared_watch_gives_every_subscriber_each_object_early_or_late() {
        let (feed, events) = unbounded::<watcher::Result<watcher::Event<DatabaseClone>>>();
        let watch = SharedWatch::of(events.map(|event| event.map(|e| e.modify(trimmed))));
        let mut early = watch.subscribe();
        let send = |event| feed.unbounded_send(Ok(event)).unwrap();
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(clone_object("a", "u1", 1)));
        send(watcher::Event::InitApply(clone_object("b", "u2", 1)));
        send(watcher::Event::InitDone);
        assert!(watch.ready().await);
        let mut listed = names(&mut early);
        listed.sort();
        assert_eq!(listed, ["a", "b"], "the first list, once complete");
        let mut late = watch.subscribe();
        let mut replayed = names(&mut late);
        replayed.sort();
        assert_eq!(replayed, ["a", "b"], "a late subscriber gets the cache");

        send(watcher::Event::Apply(clone_object("c", "u3", 1)));
        send(watcher::Event::Delete(clone_object("a", "u1", 1)));
        eventually(|| {
            watch.store().len() == 2 && watch.store().state().iter().any(|c| c.name_any() == "c")
        })
        .await;
        for events in [&mut early, &mut late] {
            let mut seen = Vec::new();
            for _ in 0..2 {
                if let Some(object) = events.next().await {
                    seen.push(object.name_any());
                }
            }
            assert_eq!(seen, ["c", "a"], "applied, then deleted");
        }
        let cached = watch.store().state();
        let c = cached.iter().find(|c| c.name_any() == "c").unwrap();
        assert!(
            c.metadata.managed_fields.is_none(),
            "cached without managedFields"
        );
        assert_eq!(c.annotations().keys().collect::<Vec<_>>(), ["keep"]);
    }

    #[tokio::test]
    async fn changes_pass_what_the_predicate_sees_change_and_what_goes() {
        let (feed, events) = unbounded::<watcher::Result<watcher::Event<DatabaseClone>>>();
        let watch = SharedWatch::of(events);
        let attempts: fn(&DatabaseClone) -> Option<u64> =
            |c| c.status.as_ref().and_then(|s| s.attempts).map(|a| a as u64);
        let mut changes = std::pin::pin!(watch.changes(attempts));
        let send = |event| feed.unbounded_send(Ok(event)).unwrap();
        send(watcher::Event::Init);
        send(watcher::Event::InitApply(clone_object("a", "u1", 1)));
        send(watcher::Event::InitDone);
        let attempts_of =
            |c: Option<Arc<DatabaseClone>>| c.and_then(|c| c.status.as_ref()?.attempts);
        assert_eq!(attempts_of(changes.next().await), Some(1), "first seen");
        send(watcher::Event::Apply(clone_object("a", "u1", 1)));
        send(watcher::Event::Apply(clone_object("a", "u1", 2)));
        assert_eq!(
            attempts_of(changes.next().await),
            Some(2),
            "the unchanged one does not pass"
        );
        send(watcher::Event::Delete(clone_object("a", "u1", 2)));
        assert_eq!(attempts_of(changes.next().await), Some(2), "its going");
    }

    #[test]
    fn a_decision_without_a_delay_waits_for_a_change() {
        assert_eq!(requeue(None), Action::await_change());
        assert_eq!(
            requeue(Some(Duration::from_secs(2))),
            Action::requeue(Duration::from_secs(2))
        );
    }

    #[test]
    fn the_status_patch_names_the_kind_and_carries_only_the_status() {
        let status = DatabaseCloneStatus {
            attempts: Some(2),
            ..Default::default()
        };
        let patch = status_patch::<crate::api::DatabaseClone>(&status);
        assert_eq!(patch["apiVersion"], "slatedb.io/v1alpha1");
        assert_eq!(patch["kind"], "DatabaseClone");
        assert_eq!(patch["status"]["attempts"], 2);
        let keys: Vec<&String> = patch.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["apiVersion", "kind", "status"]);
        let other = status_patch::<DatabaseCheckpoint>(&serde_json::json!({}));
        assert_eq!(other["kind"], "DatabaseCheckpoint");
    }
}
