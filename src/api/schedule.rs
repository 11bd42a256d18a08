//! `DatabaseCheckpointSchedule`: DatabaseCheckpoints made on a schedule and pruned by retention
//! rules, so "the nightly checkpoint of production" is one object instead of a CronJob and a script.

use super::checkpoint::DatabaseCheckpointSpec;
use super::common::{conditions_schema, GoDuration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The label on each DatabaseCheckpoint a schedule made, naming the schedule.
pub const SCHEDULE_LABEL: &str = "slatedb.io/schedule";
/// The annotation on each DatabaseCheckpoint a schedule made: the tick it was made for (RFC 3339).
pub const SCHEDULED_TIME_ANNOTATION: &str = "slatedb.io/scheduled-time";

/// DatabaseCheckpoints of one database made on a schedule and pruned by retention rules.
// kube's repeated `printcolumn(type_ = ..)` arguments trip clippy's duplicate-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "slatedb.io",
    version = "v1alpha1",
    kind = "DatabaseCheckpointSchedule",
    namespaced,
    status = "DatabaseCheckpointScheduleStatus",
    shortname = "dbcps",
    category = "slatedb",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(
        name = "Last",
        type_ = "string",
        json_path = ".status.lastSuccessfulCheckpoint.name"
    ),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextScheduleTime"),
    printcolumn(name = "Kept", type_ = "integer", json_path = ".status.kept"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCheckpointScheduleSpec {
    /// When to take a checkpoint: a standard 5-field cron expression (`0 2 * * *`), a nickname
    /// (`@daily`, `@hourly`, …), or `@every <duration>` of at least 10s (`@every 10m`).
    #[x_kube(validation = Rule::new("self.startsWith('@every ') ? (self.substring(7).matches('^([0-9]+([.][0-9]+)?(h|m|s|ms))+$') && duration(self.substring(7)) >= duration('10s')) : (self.matches('^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$') || self.matches('^[^ ]+( [^ ]+){4}$'))")
        .message("schedule must be 5 cron fields (minute hour day-of-month month day-of-week), a nickname such as @daily, or '@every <duration>' of at least 10s"))]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// The IANA time zone the cron expression is read in (`Europe/Berlin`); default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// Takes no new checkpoints while true; retention still applies.
    #[serde(default)]
    pub suspend: bool,
    /// The DatabaseCheckpoints to make.
    pub checkpoint_template: CheckpointTemplate,
    /// Which of the schedule's checkpoints to keep; absent keeps them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// The DatabaseCheckpoint a schedule makes at each tick.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointTemplate {
    /// Labels and annotations copied onto each checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The checkpoint's spec. A scheduled checkpoint is always a new detached one (`source.mode`
    /// `Create`).
    #[x_kube(validation = Rule::new("!has(self.source) || self.source.mode == 'Create'")
        .message("a scheduled checkpoint is created, not adopted: checkpointTemplate.spec.source.mode must be Create"))]
    pub spec: DatabaseCheckpointSpec,
}

/// Labels and annotations of a template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which checkpoints a schedule keeps. A checkpoint is kept when any rule keeps it; the one being
/// made and any with a clone in progress are never pruned.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.keepLast) || has(self.keepWithin)")
    .message("retention needs keepLast, keepWithin or both (omit retention to keep every checkpoint)"))]
pub struct Retention {
    /// Keep the newest N Ready checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000").message("retention.keepLast must be between 1 and 10000"))]
    pub keep_last: Option<i32>,
    /// Keep every checkpoint scheduled within this long of now (`168h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<GoDuration>,
}

/// Observed state of a `DatabaseCheckpointSchedule`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCheckpointScheduleStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the last run succeeded), `Reconciling`, `Stalled`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The tick of the newest checkpoint the schedule made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The newest of its checkpoints that is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_checkpoint: Option<ScheduledCheckpoint>,
    /// The next tick; absent while suspended or when the schedule is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// How many of its checkpoints exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<i32>,
}

/// One checkpoint a schedule made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledCheckpoint {
    /// The DatabaseCheckpoint's name.
    pub name: String,
    /// Its SlateDB checkpoint id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<String>,
    /// The tick it was made for.
    pub time: Time,
}
