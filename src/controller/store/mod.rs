//! The DatabaseStore controller: probes each store an administrator made with its credentials and
//! reports whether it is Ready, and keeps a store from going while objects still use it (their
//! cleanup needs it).
//!
//! [`decide`] holds the pure decision; this file the effects and the watch.

pub mod decide;

use super::shell::{self, Reconcile};
use super::stores::{database_store_config, open_shared};
use super::{Context, Error, Problem};
use crate::api::{DatabaseCheckpoint, DatabaseClone, DatabaseCopy, DatabaseStore, StoreSpec};
use crate::controller::to_k8s_time;
use crate::engine::Fault;
use chrono::Utc;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Held while objects hold data through the store: their checks and cleanup need it.
pub const IN_USE_FINALIZER: &str = "slatedb.io/store-in-use";

impl Reconcile for DatabaseStore {
    const CLEANUP_FINALIZER: &'static str = IN_USE_FINALIZER;

    fn api(client: Client, _namespace: Option<&str>) -> Api<Self> {
        Api::all(client)
    }

    fn watch_config(ctx: &Context) -> watcher::Config {
        let config = watcher::Config::default().any_semantic();
        match selector_text(ctx) {
            Some(labels) => config.labels(&labels),
            None => config,
        }
    }

    async fn apply(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        apply(&object, &ctx).await
    }

    async fn cleanup(object: Arc<Self>, ctx: Arc<Context>) -> Result<Action, Error> {
        cleanup(&object, &ctx).await
    }
}

/// The operator's `--store-selector` as a label selector, when it has one.
fn selector_text(ctx: &Context) -> Option<String> {
    let labels = &ctx.settings.store_selector;
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

async fn apply(object: &DatabaseStore, ctx: &Context) -> Result<Action, Error> {
    let uid = object.uid().unwrap_or_default();
    let probe = probe(object, ctx).await?;
    let retry_delay = match &probe {
        Err(Problem {
            fault: Fault::Transient,
            ..
        }) => ctx.next_backoff(&uid),
        _ => {
            ctx.reset_backoff(&uid);
            Duration::ZERO
        }
    };
    let decision = decide::decide(object, &probe, to_k8s_time(Utc::now()), retry_delay);
    if object.status.as_ref() != Some(&decision.status) {
        let api = Api::<DatabaseStore>::all(ctx.client.clone());
        shell::write_status(ctx, &api, object, &decision.status).await?;
    }
    Ok(shell::requeue(decision.requeue_after))
}

/// Opens the store as objects would and lists a prefix no database uses: the store answered and
/// took the credentials, or the problem.
async fn probe(object: &DatabaseStore, ctx: &Context) -> Result<Result<(), Problem>, Error> {
    let config = match database_store_config(ctx, object).await? {
        Ok(config) => config,
        Err(problem) => return Ok(Err(problem)),
    };
    let store = match open_shared(config) {
        Ok(store) => store,
        Err(error) => return Ok(Err(Problem::from(&error))),
    };
    Ok(store
        .probe(ctx.settings.admin_timeout)
        .await
        .map_err(|e| Problem::from(&e)))
}

async fn cleanup(object: &DatabaseStore, ctx: &Context) -> Result<Action, Error> {
    let users = users_of(&object.name_any(), ctx).await?;
    if users.is_empty() {
        return Ok(Action::await_change());
    }
    let status = decide::deletion_blocked(object, &users, to_k8s_time(Utc::now()));
    let api = Api::<DatabaseStore>::all(ctx.client.clone());
    shell::write_status(ctx, &api, object, &status).await?;
    Err(Error::Blocked(format!(
        "DatabaseStore {} is used by {} object(s)",
        object.name_any(),
        users.len()
    )))
}

/// The checkpoints, clones and copies, in the namespaces the operator watches, that hold data
/// through store `name`: a checkpoint that made (or adopted) a SlateDB checkpoint, a clone whose
/// work started, a copy whose work started (in its target store). An object that merely names the store (refused, or not started) does not hold it, so
/// no namespace can keep an administrator from deleting a store by naming it.
async fn users_of(name: &str, ctx: &Context) -> Result<Vec<String>, Error> {
    let scopes: Vec<Option<&str>> = match ctx.settings.namespaces.as_slice() {
        [] => vec![None],
        namespaces => namespaces.iter().map(|n| Some(n.as_str())).collect(),
    };
    let mut users = Vec::new();
    for scope in scopes {
        let checkpoints = ctx
            .scoped_api::<DatabaseCheckpoint>(scope)
            .list(&Default::default())
            .await?;
        for checkpoint in checkpoints {
            let made = checkpoint
                .status
                .as_ref()
                .is_some_and(|s| s.checkpoint_id.is_some());
            if made && names_store(Some(&checkpoint.spec.database.store), name) {
                users.push(format!(
                    "DatabaseCheckpoint {}/{}",
                    checkpoint.namespace().unwrap_or_default(),
                    checkpoint.name_any()
                ));
            }
        }
        let clones = ctx
            .scoped_api::<DatabaseClone>(scope)
            .list(&Default::default())
            .await?;
        for clone in clones {
            let status = clone.recorded_status();
            let recorded = status.as_ref().and_then(|s| s.store.as_ref());
            if names_store(recorded, name) {
                users.push(format!(
                    "DatabaseClone {}/{}",
                    clone.namespace().unwrap_or_default(),
                    clone.name_any()
                ));
            }
        }
        let copies = ctx
            .scoped_api::<DatabaseCopy>(scope)
            .list(&Default::default())
            .await?;
        for copy in copies {
            let started = copy.status.as_ref().is_some_and(|s| s.attempts.is_some());
            if started && names_store(Some(&copy.spec.target.store), name) {
                users.push(format!(
                    "DatabaseCopy {}/{}",
                    copy.namespace().unwrap_or_default(),
                    copy.name_any()
                ));
            }
        }
    }
    Ok(users)
}

/// Adds to `controller` a watch of the DatabaseStores this operator serves: a change of one (an
/// administrator allowing a namespace, the store becoming Ready) wakes the objects of `objects`
/// that name it, as `names(object, store)` says.
pub fn watch_stores<K>(
    controller: kube::runtime::Controller<K>,
    ctx: &Context,
    objects: kube::runtime::reflector::Store<K>,
    names: impl Fn(&K, &str) -> bool + Send + Sync + 'static,
) -> kube::runtime::Controller<K>
where
    K: Reconcile,
{
    controller.watches(
        DatabaseStore::api(ctx.client.clone(), None),
        DatabaseStore::watch_config(ctx),
        move |store: DatabaseStore| {
            let name = store.name_any();
            objects
                .state()
                .into_iter()
                .filter(|object| names(object, &name))
                .map(|object| kube::runtime::reflector::ObjectRef::from_obj(&*object))
                .collect::<Vec<_>>()
        },
    )
}

/// Whether `spec` names DatabaseStore `name`.
pub fn names_store(spec: Option<&StoreSpec>, name: &str) -> bool {
    spec.and_then(|s| s.store_ref.as_deref()) == Some(name)
}

/// Runs the DatabaseStore controller until a shutdown signal.
pub async fn run(ctx: Arc<Context>) {
    let (controller, _) = shell::controller::<DatabaseStore>(&ctx, None);
    shell::run(controller, ctx).await;
}
