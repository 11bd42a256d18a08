//! The reconcile shell every kind shares. A kind implements [`Reconcile`] (its cleanup finalizer,
//! `apply` and `cleanup`) and gets: a fresh GET (the watch cache may lag our own writes), the
//! finalizer added or run, the status written by server-side apply, the requeue mapping, the error
//! policy (count, log, per-object backoff), and the controller wiring with the watch backoff and
//! the readiness registration.

use super::{Context, Error, FIELD_MANAGER};
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
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// What a kind's controller provides to the shared shell.
pub trait Reconcile:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    /// Held while the object's data must be cleaned up with it.
    const CLEANUP_FINALIZER: &'static str;

    /// The kind's API in `namespace` (all namespaces when `None`; cluster-scoped kinds ignore it).
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;

    /// The watch of the kind's controller.
    fn watch_config(_ctx: &Context) -> watcher::Config {
        watcher::Config::default().any_semantic()
    }

    /// Brings the world in line with the object (finalizer present, not being deleted).
    fn apply(
        object: Arc<Self>,
        ctx: Arc<Context>,
    ) -> impl Future<Output = Result<Action, Error>> + Send;

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
    let Some(object) = api.get_opt(&object.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let object = with_cleanup_finalizer::<K>(&api, object).await?;
    finalizer(
        &api,
        K::CLEANUP_FINALIZER,
        Arc::new(object),
        |event| async {
            match event {
                FinalizerEvent::Apply(object) => K::apply(object, ctx.clone()).await,
                FinalizerEvent::Cleanup(object) => K::cleanup(object, ctx.clone()).await,
            }
        },
    )
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The object with its cleanup finalizer, added now when a live object lacks it. kube's
/// finalizer helper adds it and returns, so the work would wait for the watch to bring the patched
/// object back; adding it here lets the first reconcile go on with the patched object.
async fn with_cleanup_finalizer<K: Reconcile>(api: &Api<K>, object: K) -> Result<K, Error> {
    let finalizers = object.finalizers();
    if object.meta().deletion_timestamp.is_some()
        || finalizers.iter().any(|f| f == K::CLEANUP_FINALIZER)
    {
        return Ok(object);
    }
    // The guards make the patch fail, rather than drop another writer's finalizers, when the
    // list changed since the GET.
    let patch = match &object.meta().finalizers {
        None => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [K::CLEANUP_FINALIZER]}
        ]),
        Some(list) => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": K::CLEANUP_FINALIZER}
        ]),
    };
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| Error::Blocked(e.to_string()))?;
    Ok(api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?)
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
    api: &Api<K>,
    object: &K,
    status: &impl Serialize,
) -> Result<(), kube::Error> {
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&status_patch::<K>(status)),
    )
    .await?;
    Ok(())
}

/// A controller of `K` in `namespace` (or all), with the operator's watch backoff, registered
/// for readiness; and the store of its watch cache.
pub fn controller<K: Reconcile>(
    ctx: &Arc<Context>,
    namespace: Option<&str>,
) -> (Controller<K>, Store<K>) {
    let (store, writer) = kube::runtime::reflector::store();
    let objects = watcher(K::api(ctx.client.clone(), namespace), K::watch_config(ctx))
        .backoff(WatchBackoff::default())
        .modify(without_managed_fields)
        .reflect(writer)
        .touched_objects();
    let controller = Controller::for_stream(objects, store.clone());
    ctx.controller_started(store.clone());
    (controller, store)
}

/// Drops an object's `managedFields` before it is cached: no decision reads them, and with
/// 10 000 objects they were a large share of the operator's memory.
pub fn without_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Runs `controller` with the shared reconcile and error policy until a shutdown signal.
pub async fn run<K: Reconcile>(controller: Controller<K>, ctx: Arc<Context>)
where
    K::DynamicType: Eq + std::hash::Hash + Clone + Debug + Unpin,
{
    let kind = K::kind(&());
    controller
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

    use crate::api::{DatabaseCheckpoint, DatabaseCloneStatus};

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
