//! `DatabaseClone`: a copy-on-write SlateDB clone of a checkpoint or of a database's latest state.

use super::common::{
    conditions_schema, Checksum, DatabaseRef, DbPath, DeletionPolicy, GoDuration, StoreSpec,
};
use base64::Engine;
use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::ops::Bound;

/// A copy-on-write clone of a SlateDB database.
// kube's repeated `printcolumn(type_ = ..)` arguments trip clippy's duplicate-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "slatedb.io",
    version = "v1alpha1",
    kind = "DatabaseClone",
    namespaced,
    status = "DatabaseCloneStatus",
    shortname = "dbclone",
    category = "slatedb",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress.percent"
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.source.checkpointRef.name"
    ),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.path"),
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
#[x_kube(validation = Rule::new("!has(self.source.database) || self.source.database.path != self.target.path")
    .message("spec.target.path must differ from the source database path"))]
pub struct DatabaseCloneSpec {
    /// What to clone.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.source is immutable"))]
    pub source: CloneSource,
    /// Where the clone lives, in the same object store as the source.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.target is immutable"))]
    pub target: CloneTarget,
    /// How the clone is checked before it is reported Ready.
    #[serde(default)]
    pub verify: VerifyMode,
    /// How long after it becomes Ready the clone expires; absent means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<GoDuration>,
    /// What expiry does: `Delete` deletes the object (and its data, per `deletionPolicy`);
    /// `ExpireData` deletes the data and keeps the object with an `Expired` condition, so GitOps
    /// tools do not re-create it.
    #[serde(default)]
    pub expiration_policy: ExpirationPolicy,
    /// Whether deleting this object deletes the clone's data (`Delete`) or keeps it (`Retain`).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Change it (to any new value) to replace the clone's data with a fresh clone of its source
    /// (for `scheduleRef`, the newest checkpoint at that time). A clone other clones depend on is
    /// not reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub reset_token: Option<String>,
    /// How the application finds the clone: a ConfigMap the clone owns, written once it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
}

/// Where a clone publishes its connection details.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The ConfigMap's name; default `<clone>-slatedb`. It holds `SLATEDB_STORE_URL`,
    /// `SLATEDB_PATH`, and when they apply `SLATEDB_WAL_URL`, `SLATEDB_STORE_SECRET` (the name of the
    /// inline store's Secret, never its values) and `SLATEDB_STORE_REF` (a DatabaseStore's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.connection.configMapName is immutable"))]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub config_map_name: Option<String>,
}

/// The annotation holding the start record of a clone's first work (see
/// [`DatabaseCloneStatus::start_record`]), written with the cleanup finalizer in one request (the
/// status subresource cannot be), so that the start is on record before the work runs and the work
/// need not wait for a second write. It stands for the status only while the status is empty: the
/// first status write carries all it holds.
pub const START_RECORD_ANNOTATION: &str = "slatedb.io/start-record";

impl DatabaseCloneStatus {
    /// What of a started clone's status must be on record before its work runs: where its data
    /// goes (for cleanup), what it is made from (for the checkpoint it pins), and the attempt.
    /// Conditions and outcomes are left out: read back from an annotation anyone may edit, a
    /// record never claims more than that a start happened.
    pub fn start_record(&self) -> DatabaseCloneStatus {
        DatabaseCloneStatus {
            observed_generation: self.observed_generation,
            source_checkpoint_id: self.source_checkpoint_id.clone(),
            source_checkpoint: self.source_checkpoint.clone(),
            reset_token: self.reset_token.clone(),
            start_time: self.start_time.clone(),
            attempts: self.attempts,
            store: self.store.clone(),
            lineage: self.lineage.clone(),
            ..DatabaseCloneStatus::default()
        }
    }
}

impl DatabaseClone {
    /// The clone's status, or while none is written yet, its start record (see
    /// [`START_RECORD_ANNOTATION`]); a record that does not parse counts as none.
    pub fn recorded_status(&self) -> Option<Cow<'_, DatabaseCloneStatus>> {
        if let Some(status) = &self.status {
            return Some(Cow::Borrowed(status));
        }
        let record = self
            .metadata
            .annotations
            .as_ref()?
            .get(START_RECORD_ANNOTATION)?;
        let record: DatabaseCloneStatus = serde_json::from_str(record).ok()?;
        Some(Cow::Owned(record.start_record()))
    }

    /// The DatabaseCheckpoint the clone is (or was) made from: the one it names, or for
    /// `scheduleRef` the one picked when work started.
    pub fn source_checkpoint(&self) -> Option<Cow<'_, str>> {
        match &self.spec.source.checkpoint_ref {
            Some(reference) => Some(Cow::Borrowed(reference.name.as_str())),
            None if self.spec.source.schedule_ref.is_some() => match self.recorded_status()? {
                Cow::Borrowed(status) => status.source_checkpoint.as_deref().map(Cow::Borrowed),
                Cow::Owned(status) => status.source_checkpoint.map(Cow::Owned),
            },
            None => None,
        }
    }
}

/// The source of a clone: exactly one of a checkpoint or a database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.checkpointRef) ? 1 : 0) + (has(self.scheduleRef) ? 1 : 0) + (has(self.database) ? 1 : 0) == 1")
    .message("spec.source needs exactly one of checkpointRef, scheduleRef or database"))]
pub struct CloneSource {
    /// A DatabaseCheckpoint in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_ref: Option<CheckpointRef>,
    /// A DatabaseCheckpointSchedule in the same namespace: the clone is made from its newest Ready
    /// checkpoint when clone work starts (and again at each reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_ref: Option<ScheduleRef>,
    /// A database whose latest state is cloned through a checkpoint the operator makes and owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRef>,
    /// Only keys in this range are visible in the clone (a SlateDB projection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_range: Option<KeyRange>,
}

/// A reference to a DatabaseCheckpoint in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct CheckpointRef {
    /// Name of the DatabaseCheckpoint.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to a DatabaseCheckpointSchedule in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ScheduleRef {
    /// Name of the DatabaseCheckpointSchedule.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key range: `start` inclusive, `end` exclusive; either may be absent (unbounded).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.start) || !has(self.end) || self.start.startsWith('base64:') || self.end.startsWith('base64:') || self.start < self.end")
    .message("keyRange.start must sort before keyRange.end"))]
pub struct KeyRange {
    /// First key in the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<KeyBound>,
    /// First key past the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<KeyBound>,
}

impl KeyRange {
    /// The range as SlateDB bounds (start inclusive, end exclusive), or why it cannot be used.
    /// Admission compares text bounds only; base64 ones are compared here, once decoded.
    pub fn bounds(&self) -> Result<(Bound<Bytes>, Bound<Bytes>), String> {
        let start = self.start.as_ref().map(KeyBound::bytes).transpose()?;
        let end = self.end.as_ref().map(KeyBound::bytes).transpose()?;
        if let (Some(low), Some(high)) = (&start, &end) {
            if low >= high {
                return Err(
                    "spec.source.keyRange is empty: start must sort before end (compared \
                            as bytes, after base64 decoding)"
                        .into(),
                );
            }
        }
        Ok((
            start.map_or(Bound::Unbounded, Bound::Included),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        ))
    }
}

/// A key: UTF-8 text, or arbitrary bytes written as `base64:<standard base64>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct KeyBound(pub String);

impl KeyBound {
    /// The key's bytes: the text itself, or what its `base64:` form decodes to.
    pub fn bytes(&self) -> Result<Bytes, String> {
        match self.0.strip_prefix("base64:") {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Bytes::from)
                .map_err(|e| format!("keyRange bound {:?} is not valid base64: {e}", self.0)),
            None => Ok(Bytes::from(self.0.clone())),
        }
    }
}

impl JsonSchema for KeyBound {
    fn schema_name() -> Cow<'static, str> {
        "KeyBound".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 4096,
            "x-kubernetes-validations": [{
                "rule": "!self.startsWith('base64:') || self.matches('^base64:([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$')",
                "message": "a key starting with 'base64:' must continue with standard padded base64"
            }]
        })
    }
}

/// Where a clone lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct CloneTarget {
    /// Path of the clone in the source's object store.
    pub path: DbPath,
}

/// How a clone is checked before it is reported Ready.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VerifyMode {
    /// No check beyond SlateDB's `initialized` flag.
    None,
    /// Every object the clone's manifest pins exists with the expected size.
    #[default]
    Metadata,
    /// The clone's content root equals its source checkpoint's, and every block's CRC checks out.
    Content,
}

/// What expiry of a clone does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExpirationPolicy {
    /// Delete the DatabaseClone object.
    #[default]
    Delete,
    /// Delete the clone's data, keep the object with `Expired=True`.
    ExpireData,
}

/// Observed state of a `DatabaseClone`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCloneStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, `Initialized`, `Verified`, `Expired`, and while
    /// others depend on the clone's data `DeletionBlocked` or `ExpiryBlocked`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// A one-word summary for `kubectl get`; decisions use the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClonePhase>,
    /// How far the clone work has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<CloneProgress>,
    /// The SlateDB checkpoint the clone was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_checkpoint_id: Option<String>,
    /// The DatabaseCheckpoint the clone was made from (for `scheduleRef`, the one picked when work
    /// started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_checkpoint: Option<String>,
    /// The `spec.resetToken` the clone's data was last made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_token: Option<String>,
    /// The ConfigMap with the clone's connection details, once it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_config_map: Option<String>,
    /// When clone work started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the clone became Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// When the clone expires; absent when it never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<Time>,
    /// Fingerprint of the clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// How many times clone work has been started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// Object-store requests of the run that finished the clone that failed transiently (5xx,
    /// throttling, timeouts) and succeeded when retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_retries: Option<i64>,
    /// The most recent failure, kept after recovery for diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// The object store holding the clone, resolved from the source when work starts and kept
    /// so the clone's data can be deleted after its source is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSpec>,
    /// The databases the clone's manifest references (its source and the source's own parents):
    /// what the clone needs, and what a deletion of one of them would break.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<Lineage>,
}

/// One database a clone references.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// The parent database's path in the store.
    pub path: String,
    /// The parent's checkpoint the clone was made from.
    pub source_checkpoint_id: String,
    /// The checkpoint the clone holds on the parent, keeping the objects it references alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_checkpoint_id: Option<String>,
}

/// Printer-column summary of a clone's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClonePhase {
    Pending,
    Cloning,
    Verifying,
    Ready,
    Failed,
    Expired,
    Deleting,
}

/// Progress of clone work; counts are real, not estimates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloneProgress {
    /// The step under way, e.g. `CopyWal`.
    pub step: String,
    pub steps_done: i32,
    pub steps_total: i32,
    pub objects_done: i64,
    pub objects_total: i64,
    pub bytes_done: i64,
    pub bytes_total: i64,
    /// Overall completion, `0%` to `100%`.
    pub percent: String,
}

/// A failure of clone work.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Failure {
    pub time: Time,
    /// One-word CamelCase category.
    pub reason: String,
    pub message: String,
}
