//! Opening the object stores that objects name: a DatabaseStore that allows the object's
//! namespace and paths (its credentials from a Secret in the operator's namespace, or the
//! operator's own identity when it says `ambient`), or an inline store the `--inline-stores`
//! policy admits (its options from a Secret in the object's namespace); one shared client per
//! configuration; and when a deleted object's cleanup gives up on a store that went away.

use super::store_policy::StorePolicy;
use super::{Context, Outcome, Problem};
use crate::api::conditions::reason;
use crate::api::store::NAMESPACE_PLACEHOLDER;
use crate::api::{DatabaseStore, StoreSpec};
use crate::engine::{EngineError, Fault, Store, StoreConfig};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

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

/// What an object does with a path in a store: reading is checkpointing a database and cloning
/// from it; writing is being a clone's target.
#[derive(Clone, Copy, Debug)]
pub enum PathUse<'a> {
    Read(&'a str),
    Write(&'a str),
}

fn problem<T>(fault: Fault, reason: &str, message: String) -> Outcome<T> {
    Ok(Err(Problem {
        fault,
        reason: reason.into(),
        message,
    }))
}

/// Opens the store a spec names for the object in `namespace` and its `uses`: a DatabaseStore
/// that allows them, or an inline store the operator's policy admits. Opening makes no request,
/// and a store that is refused is never opened.
pub async fn open_store(
    ctx: &Context,
    namespace: &str,
    spec: &StoreSpec,
    uses: &[PathUse<'_>],
) -> Outcome<Store> {
    let config = store_config(ctx, namespace, spec, uses).await?;
    Ok(config.and_then(|config| open_shared(config).map_err(|e| Problem::from(&e))))
}

/// The configuration [`open_store`] opens (URLs, options with the credentials): for work that
/// runs elsewhere with the same rights, such as a copy's Job.
pub async fn store_config(
    ctx: &Context,
    namespace: &str,
    spec: &StoreSpec,
    uses: &[PathUse<'_>],
) -> Outcome<StoreConfig> {
    Ok(match (&spec.store_ref, &spec.url) {
        (Some(name), _) => referenced_store_config(ctx, namespace, name, uses).await?,
        (None, Some(url)) => inline_store_config(ctx, namespace, spec, url).await?,
        (None, None) => {
            return problem(
                Fault::Permanent,
                "InvalidSpec",
                "the store names neither ref nor url".into(),
            )
        }
    })
}

async fn inline_store_config(
    ctx: &Context,
    namespace: &str,
    spec: &StoreSpec,
    url: &crate::api::StoreUrl,
) -> Outcome<StoreConfig> {
    let secret = spec.secret_ref.as_ref().map(|s| s.name.as_str());
    let options = match store_options(&ctx.client, namespace, secret).await? {
        Ok(options) => options,
        Err(problem) => return Ok(Err(problem.into())),
    };
    let config = StoreConfig {
        url: url.0.clone(),
        options,
        wal_url: spec.wal_url.as_ref().map(|u| u.0.clone()),
        ..Default::default()
    };
    // A bad URL or option is named before the policy's verdict.
    if let Err(error) = Store::open(&config) {
        return Ok(Err(Problem::from(&error)));
    }
    Ok(ctx
        .settings
        .store_policy
        .admit_inline(config)
        .map_err(|message| Problem {
            fault: Fault::Permanent,
            reason: reason::STORE_NOT_ALLOWED.into(),
            message,
        }))
}

/// The configuration of DatabaseStore `name` for the object in `namespace`, when the store
/// exists, this operator serves it, and it allows the namespace and every use.
async fn referenced_store_config(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uses: &[PathUse<'_>],
) -> Outcome<StoreConfig> {
    let Some(store) = Api::<DatabaseStore>::all(ctx.client.clone())
        .get_opt(name)
        .await?
    else {
        return problem(
            Fault::Transient,
            reason::STORE_NOT_FOUND,
            format!(
                "DatabaseStore {name} does not exist; ask an administrator for one that allows \
                 namespace {namespace}"
            ),
        );
    };
    let refused = |message: String| problem(Fault::Permanent, reason::STORE_NOT_ALLOWED, message);
    let selector = &ctx.settings.store_selector;
    if !selector.is_empty() && !Selector::from_iter(selector.clone()).matches(store.labels()) {
        return refused(format!(
            "DatabaseStore {name} is not served by this operator (it serves DatabaseStores \
             labelled {})",
            Selector::from_iter(selector.clone())
        ));
    }
    if let Some(message) = namespace_refusal(ctx, &store, namespace).await? {
        return refused(message);
    }
    for path_use in uses {
        let (path, prefixes, field, verb) = match path_use {
            PathUse::Read(path) => (path, &store.spec.read_prefixes, "readPrefixes", "read"),
            PathUse::Write(path) => (path, &store.spec.write_prefixes, "writePrefixes", "write"),
        };
        if !prefixes.iter().any(|p| p.covers(namespace, path)) {
            let allowed: Vec<String> = prefixes
                .iter()
                .map(|p| p.0.replace(NAMESPACE_PLACEHOLDER, namespace))
                .collect();
            return refused(format!(
                "DatabaseStore {name} lets namespace {namespace} {verb} only under [{}] \
                 (spec.{field}); {path} is outside",
                allowed.join(", ")
            ));
        }
    }
    database_store_config(ctx, &store)
        .await
        .map(|config| config.map_err(|p| p.about_store(name)))
}

/// Why DatabaseStore `store` does not let `namespace` use it, naming the rule; `None` when it
/// does.
async fn namespace_refusal(
    ctx: &Context,
    store: &DatabaseStore,
    namespace: &str,
) -> Result<Option<String>, kube::Error> {
    let allowed = &store.spec.namespaces;
    if allowed.names.iter().any(|n| n.0 == namespace) {
        return Ok(None);
    }
    let name = store.name_any();
    let names: Vec<&str> = allowed.names.iter().map(|n| n.0.as_str()).collect();
    let Some(label_selector) = &allowed.selector else {
        return Ok(Some(format!(
            "DatabaseStore {name} does not allow namespace {namespace} (spec.namespaces.names: \
             [{}])",
            names.join(", ")
        )));
    };
    let selector = match Selector::try_from(label_selector.clone()) {
        Ok(selector) => selector,
        Err(error) => {
            return Ok(Some(format!(
                "DatabaseStore {name} has an invalid spec.namespaces.selector: {error}"
            )))
        }
    };
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(namespace)
        .await?
        .map(|ns| ns.labels().clone())
        .unwrap_or_default();
    let named = match names.is_empty() {
        true => String::new(),
        false => format!("names [{}], ", names.join(", ")),
    };
    Ok((!selector.matches(&labels)).then(|| {
        format!(
            "DatabaseStore {name} does not allow namespace {namespace} (spec.namespaces: \
             {named}selector {selector}; the namespace's labels do not match)"
        )
    }))
}

/// The configuration of a DatabaseStore: its URLs, its `options`, the keys of its credentials
/// Secret in the operator's namespace, or the operator's environment when `ambient`.
pub async fn database_store_config(ctx: &Context, store: &DatabaseStore) -> Outcome<StoreConfig> {
    let spec = &store.spec;
    let scheme = spec.url.0.split_once("://").map_or("", |(s, _)| s);
    if let Some(key) = StorePolicy::secret_option_in_spec(scheme, spec.options.keys()) {
        return problem(
            Fault::Permanent,
            reason::INVALID_STORE,
            format!(
                "spec.options.{key} is a credential or points at an identity; put credentials in \
                 the Secret of credentials.secretRef, or use credentials.ambient"
            ),
        );
    }
    let secret = spec
        .credentials
        .secret_ref
        .as_ref()
        .map(|s| s.name.as_str());
    let mut options = spec.options.clone();
    match store_options(&ctx.client, &ctx.settings.operator_namespace, secret).await? {
        Ok(credentials) => options.extend(credentials),
        Err(problem) => return Ok(Err(problem.into())),
    }
    let config = StoreConfig {
        url: spec.url.0.clone(),
        options,
        wal_url: spec.wal_url.as_ref().map(|u| u.0.clone()),
        ignore_unknown_options: false,
        ambient: spec.credentials.ambient == Some(true),
    };
    if let Err(error) = Store::open(&config) {
        return Ok(Err(Problem::from(&error)));
    }
    match ctx.settings.store_policy.refuse_database_store(&config) {
        Some(message) => problem(Fault::Permanent, reason::INVALID_STORE, message),
        None => Ok(Ok(config)),
    }
}

impl From<SecretProblem> for Problem {
    fn from(problem: SecretProblem) -> Problem {
        let (fault, reason) = match problem {
            SecretProblem::NotFound { .. } => (Fault::Transient, reason::SECRET_NOT_FOUND),
            SecretProblem::NotText { .. } => (Fault::Permanent, reason::INVALID_SECRET),
        };
        Problem {
            fault,
            reason: reason.into(),
            message: problem.to_string(),
        }
    }
}

impl Problem {
    /// The problem as seen by an object using DatabaseStore `name`.
    fn about_store(self, name: &str) -> Problem {
        Problem {
            message: format!("DatabaseStore {name}: {}", self.message),
            ..self
        }
    }
}

/// Stores opened so far, by configuration. Each opened store is an HTTP client with its own TLS
/// setup and connection pool; 500 clones of one parent share one instead of holding 500.
static OPENED_STORES: std::sync::LazyLock<Mutex<HashMap<StoreConfig, Store>>> =
    std::sync::LazyLock::new(Mutex::default);

/// Bound on [`OPENED_STORES`]; past it (rotated credentials, many stores) it starts over.
const OPENED_STORES_MAX: usize = 64;

pub(crate) fn open_shared(config: StoreConfig) -> Result<Store, EngineError> {
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

/// How long the cleanup of a deleted object waits for its store's missing credentials Secret (or
/// DatabaseStore) to come back before it leaves the data behind: deleting a namespace deletes its
/// Secrets too, and must not hang on our finalizers.
pub const SECRET_GONE_GRACE: Duration = Duration::from_secs(60);

/// Whether cleanup stops waiting for the store and leaves the data (with a Warning event): the
/// store no longer allows the object's namespace or path (that does not pass), or its Secret or
/// DatabaseStore is missing and the object has been deleting for longer than the grace.
pub fn leave_data_behind(
    problem: &Problem,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let deleting_for = meta.deletion_timestamp.as_ref().map(|since| {
        now.timestamp_millis()
            .saturating_sub(since.0.as_millisecond())
    });
    let past_grace = deleting_for.is_some_and(|ms| ms >= SECRET_GONE_GRACE.as_millis() as i64);
    match problem.reason.as_str() {
        reason::STORE_NOT_ALLOWED => true,
        reason::SECRET_NOT_FOUND | reason::STORE_NOT_FOUND => past_grace,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::to_k8s_time;

    #[test]
    fn data_is_left_behind_only_when_the_secret_stays_gone_past_the_grace() {
        let missing = Problem {
            fault: Fault::Transient,
            reason: "SecretNotFound".into(),
            message: "gone".into(),
        };
        let now = chrono::Utc::now();
        let deleting_since =
            |seconds: i64| k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                deletion_timestamp: Some(to_k8s_time(now - chrono::TimeDelta::seconds(seconds))),
                ..Default::default()
            };
        assert!(!leave_data_behind(&missing, &deleting_since(10), now));
        assert!(leave_data_behind(&missing, &deleting_since(61), now));
        assert!(!leave_data_behind(&missing, &Default::default(), now));
        let denied = Problem {
            reason: "CredentialsRejected".into(),
            ..missing
        };
        assert!(!leave_data_behind(&denied, &deleting_since(600), now));
        let refused = Problem {
            reason: reason::STORE_NOT_ALLOWED.into(),
            ..denied.clone()
        };
        assert!(leave_data_behind(&refused, &deleting_since(0), now));
        let store_gone = Problem {
            reason: reason::STORE_NOT_FOUND.into(),
            ..denied
        };
        assert!(!leave_data_behind(&store_gone, &deleting_since(10), now));
        assert!(leave_data_behind(&store_gone, &deleting_since(61), now));
    }
}
