//! `DatabaseCopy`: an independent copy of a database's checkpoint in another store or path (a
//! plain SlateDB root that needs nothing of its source), kept up to date incrementally, and
//! promotable to a writable database.

use super::clone::{CheckpointRef, CloneProgress, Failure, ScheduleRef};
use super::common::{conditions_schema, Checksum, DatabaseRef, DbPath, DeletionPolicy, StoreSpec};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An independent copy of a SlateDB database.
// kube's repeated `printcolumn(type_ = ..)` arguments trip clippy's duplicate-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "slatedb.io",
    version = "v1alpha1",
    kind = "DatabaseCopy",
    namespaced,
    status = "DatabaseCopyStatus",
    shortname = "dbcopy",
    category = "slatedb",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress.percent"
    ),
    printcolumn(
        name = "Checkpoint",
        type_ = "string",
        json_path = ".status.copiedCheckpointId"
    ),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.path"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.promote) || !oldSelf.promote || (has(self.promote) && self.promote)")
    .message("spec.promote cannot be undone: a promoted copy is a database of its own"))]
#[x_kube(validation = Rule::new("!has(self.reencode) || !has(self.promote) || !self.promote")
    .message("a re-encoded copy is a database of its own already: spec.promote does not apply"))]
#[x_kube(validation = Rule::new("has(self.reencode) == has(oldSelf.reencode) && (!has(self.reencode) || self.reencode == oldSelf.reencode)")
    .message("spec.reencode is immutable"))]
pub struct DatabaseCopySpec {
    /// What to copy. A `checkpointRef` may be changed to a newer checkpoint of the same database,
    /// and a `scheduleRef` copy follows its schedule: each newer Ready checkpoint is copied to the
    /// same target, transferring only the objects the target does not hold yet.
    pub source: CopySource,
    /// Where the copy lives: any store the namespace may write, another bucket or provider too.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.target is immutable"))]
    pub target: CopyTarget,
    /// How much of the target is read back before the copy is committed.
    #[serde(default)]
    pub verify: CopyVerify,
    /// Objects transferred at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 256").message("spec.parallelism must be 1 to 256"))]
    pub parallelism: Option<i32>,
    /// Turns the copy into an independent writable database once it is Ready: the checkpoints it
    /// inherited from its source are dropped through SlateDB, and it is no longer updated from
    /// its source. Cannot be undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<bool>,
    /// Whether deleting this object deletes the copy's data (`Delete`) or keeps it (`Retain`, the
    /// default: a copy is usually a backup that should outlive its object).
    #[serde(default = "retain")]
    pub deletion_policy: DeletionPolicy,
    /// When the copy runs as a Kubernetes Job instead of inside the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<CopyJob>,
    /// Rewrite the rows instead of copying the bytes: every row of the checkpoint is written into
    /// a new database at the target with this codec and block size, verified by a digest of the
    /// rows (`verify` does not apply). It runs in the operator, once: a newer checkpoint of the
    /// source is not re-encoded into the same target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reencode: Option<Reencode>,
}

/// How a re-encoded copy writes its data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Reencode {
    /// SST compression codec of the target.
    #[serde(default)]
    pub compression: Compression,
    /// SST block size in bytes: 1024, 2048, 4096 (the default), 8192, 16384, 32768 or 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [1024, 2048, 4096, 8192, 16384, 32768, 65536]").message("spec.reencode.blockSize must be a power of two from 1024 to 65536"))]
    pub block_size: Option<i32>,
}

/// An SST compression codec.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Compression {
    #[default]
    None,
    Snappy,
    Lz4,
    Zlib,
    Zstd,
}

fn retain() -> DeletionPolicy {
    DeletionPolicy::Retain
}

impl DatabaseCopySpec {
    /// Whether the copy is to be promoted.
    pub fn promotes(&self) -> bool {
        self.promote == Some(true)
    }
}

/// The source of a copy: exactly one of a checkpoint, a schedule's newest checkpoint or a
/// database's latest state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.checkpointRef) ? 1 : 0) + (has(self.scheduleRef) ? 1 : 0) + (has(self.database) ? 1 : 0) == 1")
    .message("spec.source needs exactly one of checkpointRef, scheduleRef or database"))]
pub struct CopySource {
    /// A DatabaseCheckpoint in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_ref: Option<CheckpointRef>,
    /// A DatabaseCheckpointSchedule in the same namespace: its newest Ready checkpoint, copied
    /// again whenever a newer one is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_ref: Option<ScheduleRef>,
    /// A database whose latest state is copied once, through a checkpoint the operator makes for
    /// the copy and deletes when it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.source.database is immutable"))]
    pub database: Option<DatabaseRef>,
}

/// Where a copy lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct CopyTarget {
    /// The object store of the copy.
    pub store: StoreSpec,
    /// Path of the copy in that store.
    pub path: DbPath,
}

/// How much of the target a copy reads back before it commits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CopyVerify {
    /// Sizes only; the content root comes from the hashes taken while reading the source.
    Metadata,
    /// Every object no earlier complete copy of this target verified is read back (sha256 and
    /// every SST block's CRC).
    #[default]
    Content,
    /// Every object is read back.
    Full,
}

/// How a large copy runs as a Kubernetes Job (in the operator's namespace, under the chart's
/// copy ServiceAccount, mounting the DatabaseStores' credentials Secrets).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CopyJob {
    /// Copies of a checkpoint of at least this many bytes run as a Job; default: the operator's
    /// `--copy-job-threshold-bytes`. `0` always runs a Job. A copy of a database's latest state
    /// always runs in the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.job.thresholdBytes cannot be negative"))]
    pub threshold_bytes: Option<i64>,
    /// Completions of the Indexed Job, each copying a disjoint share of the objects; the operator
    /// commits the copy once all have succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 64").message("spec.job.shares must be 1 to 64"))]
    pub shares: Option<i32>,
    /// Resources of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Observed state of a `DatabaseCopy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCopyStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the target holds a complete, verified copy a SlateDB application can open),
    /// `Reconciling`, `Stalled`, `Verified`, `Promoted`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// A one-word summary for `kubectl get`; decisions use the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CopyPhase>,
    /// How far the copy under way has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<CloneProgress>,
    /// The DatabaseCheckpoint the copy under way (or the last one) is made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_checkpoint: Option<String>,
    /// The SlateDB checkpoint the copy under way is made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_checkpoint_id: Option<String>,
    /// The store of the source, recorded when work starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_store: Option<StoreSpec>,
    /// The SlateDB checkpoint of the complete copy the target holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_checkpoint_id: Option<String>,
    /// The manifest id of that copy (the source's, kept by the copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_manifest_id: Option<i64>,
    /// Fingerprint of the complete copy: its content root equals its source checkpoint's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    /// What the last finished run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<CopyRun>,
    /// The Job of the copy under way, when it runs as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<CopyJobStatus>,
    /// When the copy under way started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the target last became a complete copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// When the copy was promoted to a writable database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_time: Option<Time>,
    /// How many times copy work has been started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// The most recent failure, kept after recovery for diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
}

/// What one finished copy run did; objects and bytes include the manifest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyRun {
    pub objects_total: i64,
    pub bytes_total: i64,
    /// Written by this run.
    pub objects_transferred: i64,
    pub bytes_transferred: i64,
    /// Already at the target (an earlier copy, an interrupted run, or the Job's shares).
    pub objects_skipped: i64,
    pub bytes_skipped: i64,
    /// Transferred again after failing verification.
    pub objects_retransmitted: i64,
    /// Read back from the target.
    pub objects_read_back: i64,
    /// Whether the objects were transferred by a Job.
    pub by_job: bool,
    pub duration_seconds: f64,
}

/// The Job of a copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyJobStatus {
    /// Namespace and name of the Job (the operator's namespace).
    pub namespace: String,
    pub name: String,
    /// Its completions, each a share of the objects.
    pub shares: i32,
}

/// Printer-column summary of a copy's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CopyPhase {
    Pending,
    Copying,
    Ready,
    Failed,
    Promoted,
    Deleting,
}
