//! `DatabaseStore`: an object store an administrator makes available to namespaces, with the
//! credentials to reach it and the paths each namespace may read and write. Cluster-scoped, so
//! that no namespace user can point the operator at a bucket of their choosing.

use super::common::{conditions_schema, StoreUrl};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// An object store namespaces may use by name.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "slatedb.io",
    version = "v1alpha1",
    kind = "DatabaseStore",
    status = "DatabaseStoreStatus",
    shortname = "dbstore",
    category = "slatedb",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStoreSpec {
    /// Object-store URL: `s3://bucket[/prefix]`, `gs://bucket[/prefix]`, `az://container[/prefix]`
    /// (`file://` and `memory://` only when the operator runs with `--allow-local-stores`).
    pub url: StoreUrl,
    /// Object-store URL of a separate WAL store, when databases keep their WAL apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_url: Option<StoreUrl>,
    /// How the operator authenticates to the store.
    pub credentials: StoreCredentials,
    /// Object-store options that are not credentials, e.g. `AWS_REGION`, `AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`. Credentials belong in the Secret of `credentials.secretRef`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Which namespaces may use the store.
    pub namespaces: AllowedNamespaces,
    /// Path prefixes a namespace may read (checkpoint, and clone from). `{namespace}` stands for
    /// the using namespace; a path is under a prefix when it equals it or continues it after a
    /// `/`. Default: `["{namespace}"]`.
    #[serde(default = "own_subtree")]
    #[schemars(length(max = 32))]
    pub read_prefixes: Vec<PathPrefix>,
    /// Path prefixes a namespace may write (clone targets). Default: `["{namespace}"]`.
    #[serde(default = "own_subtree")]
    #[schemars(length(max = 32))]
    pub write_prefixes: Vec<PathPrefix>,
}

fn own_subtree() -> Vec<PathPrefix> {
    vec![PathPrefix(NAMESPACE_PLACEHOLDER.into())]
}

/// The placeholder of a path prefix that stands for the using namespace.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// How the operator authenticates to a store: exactly one of `secretRef` and `ambient`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != (has(self.ambient) && self.ambient)")
    .message("credentials needs exactly one of secretRef or ambient: true"))]
pub struct StoreCredentials {
    /// A Secret in the operator's namespace whose keys are the store's credentials, e.g.
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<super::SecretRef>,
    /// Use the operator's own identity (instance role, IRSA, Workload Identity, managed identity,
    /// from its environment). Only a DatabaseStore may do this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ambient: Option<bool>,
}

/// The namespaces that may use a store: those named, and those the selector matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.names) && size(self.names) > 0) || has(self.selector)")
    .message("namespaces needs names or a selector"))]
pub struct AllowedNamespaces {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub names: Vec<NamespaceName>,
    /// Namespaces by label; `{}` matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A namespace name (an RFC 1123 label).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct NamespaceName(pub String);

impl JsonSchema for NamespaceName {
    fn schema_name() -> Cow<'static, str> {
        "NamespaceName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 63,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
                "message": "must be a namespace name (lower-case letters, digits and '-')"
            }]
        })
    }
}

/// A path prefix inside a store, relative, `/`-separated, optionally with `{namespace}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct PathPrefix(pub String);

impl JsonSchema for PathPrefix {
    fn schema_name() -> Cow<'static, str> {
        "PathPrefix".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 1024,
            "x-kubernetes-validations": [
                {"rule": "!self.startsWith('/') && !self.endsWith('/') && !self.contains('//')",
                 "message": "a prefix is relative, without a leading or trailing '/' or empty segments"},
                {"rule": "!self.matches('(^|/)[.][.](/|$)')", "message": "a prefix must not contain '..' segments"},
                {"rule": "!self.replace('{namespace}', 'n').matches('[{}]')",
                 "message": "the only placeholder a prefix may hold is {namespace}"}
            ]
        })
    }
}

impl PathPrefix {
    /// Whether `path` is this prefix (with `{namespace}` replaced) or below it.
    pub fn covers(&self, namespace: &str, path: &str) -> bool {
        let prefix = self.0.replace(NAMESPACE_PLACEHOLDER, namespace);
        path == prefix
            || path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Observed state of a `DatabaseStore`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStoreStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the store answered with the credentials), `Reconciling`, `Stalled`, and
    /// `DeletionBlocked` while objects still use a store being deleted.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_covers_itself_and_what_is_below_it_only() {
        let own = PathPrefix("{namespace}".into());
        assert!(own.covers("team-a", "team-a"));
        assert!(own.covers("team-a", "team-a/orders"));
        assert!(!own.covers("team-a", "team-ab/orders"));
        assert!(!own.covers("team-a", "team-b/orders"));
        assert!(!own.covers("team-a", "shared/team-a"));
        let nested = PathPrefix("tenants/{namespace}/clones".into());
        assert!(nested.covers("b", "tenants/b/clones/pr-1"));
        assert!(!nested.covers("b", "tenants/b/prod"));
        let fixed = PathPrefix("shared/prod".into());
        assert!(fixed.covers("any", "shared/prod/orders"));
        assert!(!fixed.covers("any", "shared/production"));
    }
}
