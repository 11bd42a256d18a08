//! Opening the object stores that objects name: the options from their Secret, one shared client
//! per configuration, and when a deleted object's cleanup gives up on a store whose Secret is gone.

use super::store_policy::StorePolicy;
use super::{Outcome, Problem};
use crate::api::conditions::reason;
use crate::api::StoreSpec;
use crate::engine::{EngineError, Fault, Store, StoreConfig};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
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

/// Opens the store a spec names, with the options of its Secret.
pub async fn open_store(
    client: &Client,
    policy: &StorePolicy,
    namespace: &str,
    spec: &StoreSpec,
) -> Outcome<Store> {
    let secret = spec.secret_ref.as_ref().map(|s| s.name.as_str());
    let options = match store_options(client, namespace, secret).await? {
        Ok(options) => options,
        Err(problem) => {
            let (fault, reason) = match problem {
                SecretProblem::NotFound { .. } => (Fault::Transient, reason::SECRET_NOT_FOUND),
                SecretProblem::NotText { .. } => (Fault::Permanent, reason::INVALID_SECRET),
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
    // Opening makes no request: a bad URL or option is named first, and a refused store is
    // never used.
    let store = open_shared(config.clone()).map_err(|e| Problem::from(&e));
    if let (Ok(_), Some(message)) = (&store, policy.refuse_inline(&config)) {
        return Ok(Err(Problem {
            fault: Fault::Permanent,
            reason: "StoreNotAllowed".into(),
            message,
        }));
    }
    Ok(store)
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
    problem.reason == reason::SECRET_NOT_FOUND
        && deleting_for.is_some_and(|ms| ms >= SECRET_GONE_GRACE.as_millis() as i64)
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
    }
}
