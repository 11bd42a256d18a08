//! Types shared by both kinds: object-store locations, validated strings, checksums, conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::Duration;

/// Where a database's objects live: a `DatabaseStore` by name (`ref`), or, where the operator
/// allows inline stores, a URL with the Secret holding its credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ref) != has(self.url)")
    .message("store needs exactly one of ref (a DatabaseStore) or url (an inline store)"))]
#[x_kube(validation = Rule::new("!has(self.ref) || (!has(self.secretRef) && !has(self.walUrl))")
    .message("a store ref takes no secretRef or walUrl: the DatabaseStore holds them"))]
pub struct StoreSpec {
    /// Name of a DatabaseStore an administrator made available to this namespace.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub store_ref: Option<String>,
    /// Object-store URL of an inline store: `file:///dir`, `s3://bucket[/prefix]`,
    /// `gs://bucket[/prefix]` or `az://container[/prefix]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<StoreUrl>,
    /// A Secret in the same namespace whose keys are object-store options, for example
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, `AWS_REGION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Object-store URL of a separate WAL store, when the database keeps its WAL apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_url: Option<StoreUrl>,
}

impl StoreSpec {
    /// An inline store of `url` without a Secret.
    pub fn inline(url: &str) -> StoreSpec {
        StoreSpec {
            store_ref: None,
            url: Some(StoreUrl(url.into())),
            secret_ref: None,
            wal_url: None,
        }
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.store_ref, &self.url) {
            (Some(name), _) => write!(f, "DatabaseStore {name}"),
            (None, Some(url)) => f.write_str(&url.0),
            (None, None) => f.write_str("no store"),
        }
    }
}

/// A reference to a Secret in the namespace of the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A SlateDB database: a store and the path of the database inside it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRef {
    /// The object store holding the database.
    pub store: StoreSpec,
    /// Path of the database relative to the store URL, e.g. `prod/orders`.
    pub path: DbPath,
}

/// An object-store URL; the scheme picks the backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl JsonSchema for StoreUrl {
    fn schema_name() -> Cow<'static, str> {
        "StoreUrl".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 2048,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^(file|s3|s3a|gs|az|azure|abfs|abfss|memory)://')",
                "message": "must be an object-store URL starting with file://, s3://, gs://, az:// or memory://"
            }]
        })
    }
}

/// A database path inside an object store: relative, `/`-separated, without empty or `..` segments.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct DbPath(pub String);

impl JsonSchema for DbPath {
    fn schema_name() -> Cow<'static, str> {
        "DbPath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 1024,
            "x-kubernetes-validations": [
                {"rule": "self.size() > 0", "message": "path must not be empty"},
                {"rule": "!self.startsWith('/')",
                 "message": "path must be relative to the store URL (no leading '/')"},
                {"rule": "!self.matches('(^|/)[.][.](/|$)')", "message": "path must not contain '..' segments"},
                {"rule": "!self.endsWith('/') && !self.contains('//')",
                 "message": "path must not contain empty segments (no trailing '/' or '//')"}
            ]
        })
    }
}

impl std::fmt::Display for DbPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration in Go syntax (`90s`, `30m`, `24h`, `1h30m`) between one minute and ten years.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct GoDuration(pub String);

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^([0-9]+([.][0-9]+)?(h|m|s|ms))+$') && duration(self) >= duration('1s') && duration(self) <= duration('87600h')",
                "message": "must be a duration such as 30m, 24h or 1h30m, between 1s and 87600h (10 years)"
            }]
        })
    }
}

impl GoDuration {
    /// The duration as a `std::time::Duration`.
    pub fn to_std(&self) -> Result<Duration, String> {
        parse_go_duration(&self.0)
    }
}

/// Parses a Go duration (`1h30m`, `90s`, `500ms`); the CRD admits only this form.
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(format!("{text:?} has unknown unit {unit:?}")),
        };
        total += value * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{text:?}: {e}"))
}

/// What happens to the data in the object store when the Kubernetes object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the data with the object.
    #[default]
    Delete,
    /// Keep the data; only the Kubernetes object goes.
    Retain,
}

/// A fingerprint of the objects a checkpoint or clone pins.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    /// Hash algorithm of both digests (`sha256`).
    pub algorithm: String,
    /// Digest over the pinned manifest and the (path, size, etag) of every pinned object.
    pub metadata_digest: String,
    /// Merkle root over the content of every pinned object, keyed by logical object id, so that a
    /// clone and its source checkpoint share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_root: Option<String>,
    /// When the content was last verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_time: Option<Time>,
}

/// Schema of a `conditions` list: a list-map keyed by `type`, so server-side apply merges per type.
pub(crate) fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_go_duration("3d").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("h").is_err());
    }
}
