//! `DatabaseCheckpoint`: a SlateDB checkpoint, pinning one manifest version of a database.

use super::common::{conditions_schema, Checksum, DatabaseRef, DeletionPolicy, GoDuration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A checkpoint of a SlateDB database.
// kube's repeated `printcolumn(type_ = ..)` arguments trip clippy's duplicate-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "slatedb.io",
    version = "v1alpha1",
    kind = "DatabaseCheckpoint",
    namespaced,
    status = "DatabaseCheckpointStatus",
    shortname = "dbcp",
    category = "slatedb",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Database", type_ = "string", json_path = ".spec.database.path"),
    printcolumn(
        name = "Checkpoint",
        type_ = "string",
        json_path = ".status.checkpointId"
    ),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.sizeBytes"),
    printcolumn(
        name = "Dependents",
        type_ = "integer",
        json_path = ".status.dependents"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expirationTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCheckpointSpec {
    /// The database to checkpoint.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.database is immutable"))]
    pub database: DatabaseRef,
    /// How the checkpoint comes to be: created by the operator, or adopted from the application.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.source is immutable"))]
    pub source: CheckpointSource,
    /// How long the checkpoint lives after it is created; absent means it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<GoDuration>,
    /// Whether deleting this object deletes the SlateDB checkpoint (`Delete`) or keeps it (`Retain`).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// How deeply the checkpoint is fingerprinted: `Metadata` (HEADs only) or `Content` (reads every
    /// pinned object).
    #[serde(default)]
    pub checksum: ChecksumMode,
}

/// Where a checkpoint comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'Adopt' ? has(self.adopt) : !has(self.adopt)")
    .message("source.adopt must be set when, and only when, source.mode is Adopt"))]
pub struct CheckpointSource {
    /// `Create` a detached checkpoint of the latest manifest, or `Adopt` an existing one.
    #[serde(default)]
    pub mode: CheckpointSourceMode,
    /// The existing checkpoint to adopt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<AdoptCheckpoint>,
}

/// How a checkpoint comes to be.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CheckpointSourceMode {
    /// A detached checkpoint of the database's latest manifest (misses writes still only in the WAL).
    #[default]
    Create,
    /// An existing checkpoint, e.g. one the application made with `Db::create_checkpoint`.
    Adopt,
}

/// An existing SlateDB checkpoint, named by id or by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)")
    .message("source.adopt needs exactly one of id or name"))]
pub struct AdoptCheckpoint {
    /// The checkpoint's UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')")
        .message("source.adopt.id must be a UUID"))]
    pub id: Option<String>,
    /// The checkpoint's name; it must match exactly one checkpoint of the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub name: Option<String>,
}

/// What a checkpoint includes of its database's writes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointCoverage {
    /// The writer's clock at the newest write flushed to L0 in the pinned manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_l0_write_time: Option<Time>,
    /// Durable WAL objects that existed when the checkpoint was made but are not in it: writes
    /// the writer had made durable in its WAL and not yet into a manifest.
    pub wal_objects_not_included: i64,
}

/// How deeply a checkpoint is fingerprinted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ChecksumMode {
    /// Digest of the manifest and the size and etag of every pinned object.
    #[default]
    Metadata,
    /// Also a Merkle root over the content of every pinned object.
    Content,
}

/// Observed state of a `DatabaseCheckpoint`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCheckpointStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, `InUse`, `Expired`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// A one-word summary for `kubectl get`; decisions use the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CheckpointPhase>,
    /// The SlateDB checkpoint's UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<String>,
    /// The manifest version the checkpoint pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_id: Option<i64>,
    /// When SlateDB created the checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<Time>,
    /// When the checkpoint expires; absent when it never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Time>,
    /// Total size of the objects the checkpoint pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Number of objects (SSTs and WAL files) the checkpoint pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_count: Option<i64>,
    /// Fingerprint of what the checkpoint pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// What the checkpoint includes of the database's writes (see the `IncludesDurableWrites`
    /// condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<CheckpointCoverage>,
    /// Number of DatabaseClones that reference this checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependents: Option<i32>,
}

/// Printer-column summary of a checkpoint's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CheckpointPhase {
    Pending,
    Ready,
    Failed,
    Expired,
    Deleting,
}
