//! The lineage tree of `kubectl slatedb tree`, built from listed objects without I/O: schedules →
//! the checkpoints they made → the clones made from each checkpoint → the clones of those clones,
//! beside the stand-alone checkpoints and the clones of a database's latest state. A child depends
//! on its parent: a checkpoint on the schedule that made it or the clone whose data it pins, a
//! clone on the checkpoint it was made from, or on the clone whose data it references.

use crate::api::conditions::{
    DELETION_BLOCKED, EXPIRY_BLOCKED, IN_USE, READY, RECONCILING, STALLED,
};
use crate::api::{
    DatabaseCheckpoint, DatabaseCheckpointSchedule, DatabaseClone, StoreSpec,
    SCHEDULED_TIME_ANNOTATION, SCHEDULE_LABEL,
};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt::Write;

/// The objects a tree is built from, as listed from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub schedules: Vec<DatabaseCheckpointSchedule>,
    pub checkpoints: Vec<DatabaseCheckpoint>,
    pub clones: Vec<DatabaseClone>,
}

/// One object in the tree, with the objects that depend on it as children.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// `status.phase`, or for a schedule a summary of its conditions.
    pub phase: String,
    pub creation_timestamp: Option<String>,
    /// How long ago the object was created, as `kubectl get` shows it (`45s`, `3m`, `5h`, `2d`).
    pub age: Option<String>,
    /// `status.expirationTime`.
    pub expiration_time: Option<String>,
    /// What the object depends on (`DatabaseCheckpoint/nightly-…`), also when that is not in the
    /// tree: a database's latest state, or an object that is gone.
    pub depends_on: Option<String>,
    /// The conditions worth a look: Stalled, Reconciling, InUse, DeletionBlocked, ExpiryBlocked.
    pub notes: Vec<Note>,
    #[serde(flatten)]
    pub details: Details,
    pub children: Vec<Node>,
}

/// A condition of note, true at the time of listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// What only one kind has.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Details {
    Schedule(ScheduleDetails),
    Checkpoint(CheckpointDetails),
    Clone(CloneDetails),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleDetails {
    pub schedule: String,
    pub time_zone: Option<String>,
    pub suspended: bool,
    pub last_schedule_time: Option<String>,
    pub next_schedule_time: Option<String>,
    /// How many of its checkpoints exist.
    pub kept: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointDetails {
    /// The path of the database it checkpoints.
    pub database: String,
    pub checkpoint_id: Option<String>,
    /// For a scheduled checkpoint, the tick it was made for.
    pub scheduled_time: Option<String>,
    /// How many DatabaseClones reference it.
    pub dependents: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloneDetails {
    /// The clone's path.
    pub target: String,
    /// What it was asked to clone: `checkpointRef nightly`, `scheduleRef nightly`, `database prod/orders`.
    pub source: String,
    /// The DatabaseCheckpoint it was made from (for `scheduleRef`, the one picked).
    pub source_checkpoint: Option<String>,
    /// The databases whose data it references (`status.lineage`).
    pub parents: Vec<String>,
    /// `status.progress.percent` while it is being made.
    pub progress: Option<String>,
    pub reset_token: Option<String>,
    pub connection_config_map: Option<String>,
}

/// Where an object sits before the tree is assembled: its node (without children) and its parent.
struct Entry {
    node: Node,
    /// Sorts siblings: scheduled time or creation time, then name.
    order: (u8, Option<DateTime<Utc>>, String),
    parent: Option<usize>,
}

/// Builds the lineage trees of `objects` as of `now`: the roots are the schedules, the checkpoints
/// no schedule made and no clone is the database of, and the clones made from none of the listed
/// objects; sorted by namespace, kind (schedules, checkpoints, clones) and time.
pub fn build(objects: &Objects, now: DateTime<Utc>) -> Vec<Node> {
    let schedules = 0..objects.schedules.len();
    let checkpoints = schedules.end..schedules.end + objects.checkpoints.len();
    let clones = checkpoints.end..checkpoints.end + objects.clones.len();
    let find_schedule = |namespace: &str, name: &str| {
        objects
            .schedules
            .iter()
            .position(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == name)
            .map(|i| schedules.start + i)
    };
    let find_checkpoint = |namespace: &str, name: &str| {
        objects
            .checkpoints
            .iter()
            .position(|c| c.namespace().as_deref() == Some(namespace) && c.name_any() == name)
            .map(|i| checkpoints.start + i)
    };
    // The clone whose target is the database at `path` (in `store`, when both say which).
    let find_clone_at = |namespace: &str, path: &str, store: Option<&StoreSpec>| {
        objects
            .clones
            .iter()
            .position(|c| {
                c.namespace().as_deref() == Some(namespace)
                    && c.spec.target.path.0 == path
                    && match (store, clone_store(c)) {
                        (Some(a), Some(b)) => same_location(a, b),
                        _ => true,
                    }
            })
            .map(|i| clones.start + i)
    };
    // The nearest clone among those whose data the clone `own` references: the one with the most
    // parents of its own (a clone of a clone references its grandparents too).
    let nearest_parent_clone = |own: usize| {
        let clone = &objects.clones[own];
        let namespace = clone.namespace().unwrap_or_default();
        lineage_paths(clone)
            .iter()
            .filter_map(|path| find_clone_at(&namespace, path, None))
            .filter(|&index| index != clones.start + own)
            .max_by_key(|&index| lineage_paths(&objects.clones[index - clones.start]).len())
    };

    let mut entries: Vec<Entry> = Vec::new();
    for schedule in &objects.schedules {
        entries.push(Entry {
            order: (0, creation_time(schedule), schedule.name_any()),
            node: schedule_node(schedule, now),
            parent: None,
        });
    }
    for checkpoint in &objects.checkpoints {
        let namespace = checkpoint.namespace().unwrap_or_default();
        let database = &checkpoint.spec.database;
        let made_by = checkpoint
            .labels()
            .get(SCHEDULE_LABEL)
            .and_then(|name| Some((name, find_schedule(&namespace, name)?)));
        let (parent, depends_on) = match made_by {
            Some((name, index)) => (Some(index), format!("DatabaseCheckpointSchedule/{name}")),
            None => match find_clone_at(&namespace, &database.path.0, Some(&database.store)) {
                Some(index) => (
                    Some(index),
                    format!(
                        "DatabaseClone/{}",
                        objects.clones[index - clones.start].name_any()
                    ),
                ),
                None => (None, format!("database {}", database.path.0)),
            },
        };
        let mut node = checkpoint_node(checkpoint, now);
        node.depends_on = Some(depends_on);
        entries.push(Entry {
            order: (
                1,
                scheduled_time(checkpoint).or(creation_time(checkpoint)),
                checkpoint.name_any(),
            ),
            node,
            parent,
        });
    }
    for (own, clone) in objects.clones.iter().enumerate() {
        let namespace = clone.namespace().unwrap_or_default();
        let source = &clone.spec.source;
        let (parent, depends_on) = if let Some(name) = clone.source_checkpoint() {
            match find_checkpoint(&namespace, &name) {
                Some(index) => (Some(index), format!("DatabaseCheckpoint/{name}")),
                None => {
                    // The checkpoint is gone (pruned, deleted): the clone's data still depends on
                    // its parents, and a clone of a schedule still belongs to the schedule.
                    let schedule = source
                        .schedule_ref
                        .as_ref()
                        .and_then(|s| find_schedule(&namespace, &s.name));
                    (
                        schedule.or_else(|| nearest_parent_clone(own)),
                        format!("DatabaseCheckpoint/{name} (gone)"),
                    )
                }
            }
        } else if let Some(schedule) = &source.schedule_ref {
            match find_schedule(&namespace, &schedule.name) {
                Some(index) => (
                    Some(index),
                    format!("DatabaseCheckpointSchedule/{}", schedule.name),
                ),
                None => (
                    None,
                    format!("DatabaseCheckpointSchedule/{} (not found)", schedule.name),
                ),
            }
        } else if let Some(database) = &source.database {
            match find_clone_at(&namespace, &database.path.0, Some(&database.store)) {
                Some(index) => (
                    Some(index),
                    format!(
                        "DatabaseClone/{}",
                        objects.clones[index - clones.start].name_any()
                    ),
                ),
                None => (None, format!("database {} (latest state)", database.path.0)),
            }
        } else {
            let parent = nearest_parent_clone(own);
            let depends_on = match parent {
                Some(index) => format!(
                    "DatabaseClone/{}",
                    objects.clones[index - clones.start].name_any()
                ),
                None => "nothing listed".to_string(),
            };
            (parent, depends_on)
        };
        let mut node = clone_node(clone, now);
        node.depends_on = Some(depends_on);
        entries.push(Entry {
            order: (2, creation_time(clone), clone.name_any()),
            node,
            parent,
        });
    }
    assemble(entries)
}

/// Links the entries into trees. Where parents lead in a circle (objects that name each other),
/// the first entry of the circle becomes a root, so that every object is shown exactly once.
fn assemble(mut entries: Vec<Entry>) -> Vec<Node> {
    for start in 0..entries.len() {
        let mut seen = BTreeSet::from([start]);
        let mut current = start;
        while let Some(parent) = entries[current].parent {
            if parent == start {
                entries[start].parent = None;
                break;
            }
            if !seen.insert(parent) {
                break; // a circle further up, broken at its own first entry
            }
            current = parent;
        }
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); entries.len()];
    let mut roots = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match entry.parent {
            Some(parent) => children[parent].push(index),
            None => roots.push(index),
        }
    }
    let sort = |list: &mut Vec<usize>, entries: &[Entry]| {
        list.sort_by(|&a, &b| {
            let key = |i: usize| (&entries[i].node.namespace, &entries[i].order);
            key(a).cmp(&key(b))
        })
    };
    for list in &mut children {
        sort(list, &entries);
    }
    sort(&mut roots, &entries);
    let mut nodes: Vec<Option<Node>> = entries.into_iter().map(|e| Some(e.node)).collect();
    roots
        .into_iter()
        .map(|root| take_subtree(root, &children, &mut nodes))
        .collect()
}

fn take_subtree(index: usize, children: &[Vec<usize>], nodes: &mut [Option<Node>]) -> Node {
    let mut node = nodes[index]
        .take()
        .unwrap_or_else(|| unreachable!("each entry is taken once"));
    node.children = children[index]
        .iter()
        .map(|&child| take_subtree(child, children, nodes))
        .collect();
    node
}

/// The store a clone's data is in: the one recorded when work started, or its source database's.
fn clone_store(clone: &DatabaseClone) -> Option<&StoreSpec> {
    clone
        .status
        .as_ref()
        .and_then(|s| s.store.as_ref())
        .or(clone.spec.source.database.as_ref().map(|d| &d.store))
}

/// Whether two store specs name the same store (the same DatabaseStore, or the same URL),
/// whatever credentials they use.
fn same_location(a: &StoreSpec, b: &StoreSpec) -> bool {
    a.store_ref == b.store_ref && a.url == b.url
}

fn lineage_paths(clone: &DatabaseClone) -> Vec<String> {
    clone
        .recorded_status()
        .map(|s| s.lineage.iter().map(|l| l.path.clone()).collect())
        .unwrap_or_default()
}

fn to_chrono(time: &Time) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(time.0.as_millisecond())
}

fn rfc3339(time: &Time) -> Option<String> {
    to_chrono(time).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn creation_time<K: kube::Resource>(object: &K) -> Option<DateTime<Utc>> {
    object
        .meta()
        .creation_timestamp
        .as_ref()
        .and_then(to_chrono)
}

fn scheduled_time(checkpoint: &DatabaseCheckpoint) -> Option<DateTime<Utc>> {
    let text = checkpoint.annotations().get(SCHEDULED_TIME_ANNOTATION)?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A duration the way `kubectl get` prints ages: `45s`, `12m`, `5h`, `3d`.
pub fn short_duration(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn notes(conditions: &[Condition]) -> Vec<Note> {
    [
        STALLED,
        RECONCILING,
        IN_USE,
        DELETION_BLOCKED,
        EXPIRY_BLOCKED,
    ]
    .iter()
    .filter_map(|type_| condition(conditions, type_))
    .map(|c| Note {
        type_: c.type_.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    })
    .collect()
}

/// The phase from the conditions, for a kind without `status.phase` or an object without status.
fn phase_from_conditions(conditions: &[Condition]) -> &'static str {
    if condition(conditions, STALLED).is_some() {
        "Stalled"
    } else if condition(conditions, READY).is_some() {
        "Ready"
    } else if condition(conditions, RECONCILING).is_some() {
        "Reconciling"
    } else {
        "Pending"
    }
}

/// The fields every node has, from an object's metadata.
fn common_node<K: kube::Resource>(
    kind: &'static str,
    object: &K,
    phase: String,
    expiration_time: Option<&Time>,
    notes: Vec<Note>,
    details: Details,
    now: DateTime<Utc>,
) -> Node {
    let created = creation_time(object);
    let phase = match object.meta().deletion_timestamp {
        Some(_) => "Deleting".to_string(),
        None => phase,
    };
    Node {
        kind,
        namespace: object.meta().namespace.clone().unwrap_or_default(),
        name: object.meta().name.clone().unwrap_or_default(),
        phase,
        creation_timestamp: created.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        age: created.map(|t| short_duration(now - t)),
        expiration_time: expiration_time.and_then(rfc3339),
        depends_on: None,
        notes,
        details,
        children: Vec::new(),
    }
}

fn schedule_node(schedule: &DatabaseCheckpointSchedule, now: DateTime<Utc>) -> Node {
    let status = schedule.status.clone().unwrap_or_default();
    let phase = match schedule.spec.suspend {
        true => "Suspended",
        false => phase_from_conditions(&status.conditions),
    };
    let details = Details::Schedule(ScheduleDetails {
        schedule: schedule.spec.schedule.clone(),
        time_zone: schedule.spec.time_zone.clone(),
        suspended: schedule.spec.suspend,
        last_schedule_time: status.last_schedule_time.as_ref().and_then(rfc3339),
        next_schedule_time: status.next_schedule_time.as_ref().and_then(rfc3339),
        kept: status.kept,
    });
    common_node(
        "DatabaseCheckpointSchedule",
        schedule,
        phase.into(),
        None,
        notes(&status.conditions),
        details,
        now,
    )
}

fn checkpoint_node(checkpoint: &DatabaseCheckpoint, now: DateTime<Utc>) -> Node {
    let status = checkpoint.status.clone().unwrap_or_default();
    let phase = match status.phase {
        Some(phase) => format!("{phase:?}"),
        None => phase_from_conditions(&status.conditions).into(),
    };
    let details = Details::Checkpoint(CheckpointDetails {
        database: checkpoint.spec.database.path.0.clone(),
        checkpoint_id: status.checkpoint_id.clone(),
        scheduled_time: scheduled_time(checkpoint)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        dependents: status.dependents,
    });
    let expiration = status.expiration_time.as_ref();
    common_node(
        "DatabaseCheckpoint",
        checkpoint,
        phase,
        expiration,
        notes(&status.conditions),
        details,
        now,
    )
}

fn clone_node(clone: &DatabaseClone, now: DateTime<Utc>) -> Node {
    let status = clone
        .recorded_status()
        .map(Cow::into_owned)
        .unwrap_or_default();
    let phase = match status.phase {
        Some(phase) => format!("{phase:?}"),
        None => phase_from_conditions(&status.conditions).into(),
    };
    let source = &clone.spec.source;
    let asked = match (
        &source.checkpoint_ref,
        &source.schedule_ref,
        &source.database,
    ) {
        (Some(checkpoint), _, _) => format!("checkpointRef {}", checkpoint.name),
        (None, Some(schedule), _) => format!("scheduleRef {}", schedule.name),
        (None, None, Some(database)) => format!("database {}", database.path.0),
        (None, None, None) => "nothing".into(),
    };
    let details = Details::Clone(CloneDetails {
        target: clone.spec.target.path.0.clone(),
        source: asked,
        source_checkpoint: clone.source_checkpoint().map(Cow::into_owned),
        parents: lineage_paths(clone),
        progress: status
            .progress
            .as_ref()
            .filter(|_| status.phase == Some(crate::api::ClonePhase::Cloning))
            .map(|p| p.percent.clone()),
        reset_token: status.reset_token.clone(),
        connection_config_map: status.connection_config_map.clone(),
    });
    let expiration = status.expiration_time.as_ref();
    common_node(
        "DatabaseClone",
        clone,
        phase,
        expiration,
        notes(&status.conditions),
        details,
        now,
    )
}

/// The trees as text for a terminal: one line per object, children under their parent with
/// `├─`/`└─`; with `all_namespaces`, a `NAMESPACE` header before each namespace's trees.
pub fn render_text(roots: &[Node], all_namespaces: bool, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut namespace: Option<&str> = None;
    for root in roots {
        if all_namespaces && namespace != Some(root.namespace.as_str()) {
            if namespace.is_some() {
                out.push('\n');
            }
            let _ = writeln!(out, "NAMESPACE {}", root.namespace);
            namespace = Some(root.namespace.as_str());
        }
        render_node(&mut out, root, "", "", true, now);
    }
    out
}

fn render_node(
    out: &mut String,
    node: &Node,
    lead: &str,
    branch: &str,
    root: bool,
    now: DateTime<Utc>,
) {
    let _ = writeln!(out, "{lead}{branch}{}", line(node, root, now));
    let below = match branch {
        "├─ " => format!("{lead}│  "),
        "└─ " => format!("{lead}   "),
        _ => lead.to_string(),
    };
    for (i, child) in node.children.iter().enumerate() {
        let branch = if i + 1 == node.children.len() {
            "└─ "
        } else {
            "├─ "
        };
        render_node(out, child, &below, branch, false, now);
    }
}

/// One object's line: `dbclone/pr-7  Ready  age 3h  expires in 69h  clones/pr-7`. A root says what
/// it depends on, since no parent line above it does.
fn line(node: &Node, root: bool, now: DateTime<Utc>) -> String {
    let short_kind = match node.kind {
        "DatabaseCheckpointSchedule" => "dbcps",
        "DatabaseCheckpoint" => "dbcp",
        _ => "dbclone",
    };
    let mut parts = vec![format!("{short_kind}/{}", node.name)];
    let progress = match &node.details {
        Details::Clone(CloneDetails {
            progress: Some(percent),
            ..
        }) => format!(" {percent}"),
        _ => String::new(),
    };
    parts.push(format!("{}{progress}", node.phase));
    if let Some(age) = &node.age {
        parts.push(format!("age {age}"));
    }
    if let Some(expires) = node
        .expiration_time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    {
        let left = expires.with_timezone(&Utc) - now;
        parts.push(match left.num_seconds() {
            s if s > 0 => format!("expires in {}", short_duration(left)),
            _ => format!("expired {} ago", short_duration(-left)),
        });
    }
    match &node.details {
        Details::Schedule(schedule) => {
            let zone = schedule
                .time_zone
                .as_deref()
                .map(|z| format!(" {z}"))
                .unwrap_or_default();
            parts.push(format!("\"{}\"{zone}", schedule.schedule));
            if let Some(next) = schedule
                .next_schedule_time
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .filter(|_| !schedule.suspended)
            {
                parts.push(format!(
                    "next in {}",
                    short_duration(next.with_timezone(&Utc) - now)
                ));
            }
        }
        Details::Checkpoint(checkpoint) => {
            if root {
                parts.push(format!("of {}", checkpoint.database));
            }
        }
        Details::Clone(clone) => {
            parts.push(format!("→ {}", clone.target));
            if root {
                parts.push(format!(
                    "from {}",
                    node.depends_on.as_deref().unwrap_or(&clone.source)
                ));
            } else if let Some(gone) = node.depends_on.as_deref().filter(|d| d.ends_with("(gone)"))
            {
                parts.push(format!("from {gone}"));
            }
        }
    }
    for note in &node.notes {
        parts.push(format!("[{}: {}]", note.type_, note.reason));
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NS: &str = "team-a";
    const STORE: &str = "s3://bucket";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ago(hours: i64) -> String {
        (now() - chrono::Duration::hours(hours)).to_rfc3339()
    }

    fn ready(extra: serde_json::Value) -> serde_json::Value {
        let mut status = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
            "message": "", "lastTransitionTime": ago(1)}]});
        status
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        status
    }

    fn schedule(name: &str) -> DatabaseCheckpointSchedule {
        serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpointSchedule",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": ago(72)},
            "spec": {"schedule": "0 2 * * *", "timeZone": "Europe/Berlin",
                     "checkpointTemplate": {"spec": {"database": {"store": {"url": STORE}, "path": "prod/orders"}}}},
            "status": ready(json!({"kept": 2, "nextScheduleTime": (now() + chrono::Duration::hours(14)).to_rfc3339()})),
        }))
        .unwrap()
    }

    fn checkpoint(
        name: &str,
        path: &str,
        schedule: Option<&str>,
        hours_old: i64,
    ) -> DatabaseCheckpoint {
        let mut metadata =
            json!({"name": name, "namespace": NS, "creationTimestamp": ago(hours_old)});
        if let Some(schedule) = schedule {
            metadata["labels"] = json!({SCHEDULE_LABEL: schedule});
            metadata["annotations"] = json!({SCHEDULED_TIME_ANNOTATION: ago(hours_old)});
        }
        serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint", "metadata": metadata,
            "spec": {"database": {"store": {"url": STORE}, "path": path}},
            "status": ready(json!({"phase": "Ready", "checkpointId": format!("id-{name}"),
                                   "expirationTime": (now() + chrono::Duration::hours(40)).to_rfc3339()})),
        }))
        .unwrap()
    }

    fn clone(
        name: &str,
        source: serde_json::Value,
        lineage: &[&str],
        status: serde_json::Value,
    ) -> DatabaseClone {
        let mut status = ready(status);
        status["phase"] = json!("Ready");
        status["store"] = json!({"url": STORE});
        status["lineage"] = lineage
            .iter()
            .map(|p| json!({"path": p, "sourceCheckpointId": "x"}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": ago(2)},
            "spec": {"source": source, "target": {"path": format!("clones/{name}")}},
            "status": status,
        }))
        .unwrap()
    }

    /// The tree as `kind/name` lines indented by depth, for comparing shapes.
    fn shape(nodes: &[Node], depth: usize, out: &mut Vec<String>) {
        for node in nodes {
            out.push(format!("{}{}/{}", "  ".repeat(depth), node.kind, node.name));
            shape(&node.children, depth + 1, out);
        }
    }

    fn shape_of(objects: &Objects) -> Vec<String> {
        let mut out = Vec::new();
        shape(&build(objects, now()), 0, &mut out);
        out
    }

    /// A schedule with two checkpoints, two clones of its newest (one by scheduleRef, one by
    /// checkpointRef), a clone of one of them by its latest state, and a clone of that clone's
    /// checkpoint; beside it a stand-alone checkpoint and a clone of production's latest state.
    fn workflow() -> Objects {
        Objects {
            schedules: vec![schedule("nightly")],
            checkpoints: vec![
                checkpoint("nightly-2", "prod/orders", Some("nightly"), 10),
                checkpoint("nightly-1", "prod/orders", Some("nightly"), 34),
                checkpoint("adhoc", "prod/orders", None, 5),
                checkpoint("pr-7-snap", "clones/pr-7", None, 1),
            ],
            clones: vec![
                clone(
                    "pr-8",
                    json!({"checkpointRef": {"name": "nightly-2"}}),
                    &["prod/orders"],
                    json!({}),
                ),
                clone(
                    "pr-7",
                    json!({"scheduleRef": {"name": "nightly"}}),
                    &["prod/orders"],
                    json!({"sourceCheckpoint": "nightly-2", "resetToken": "t1",
                           "connectionConfigMap": "pr-7-slatedb",
                           "expirationTime": (now() + chrono::Duration::hours(70)).to_rfc3339()}),
                ),
                clone(
                    "pr-7-debug",
                    json!({"database": {"store": {"url": STORE}, "path": "clones/pr-7"}}),
                    &["clones/pr-7", "prod/orders"],
                    json!({}),
                ),
                clone(
                    "pr-7-snap-copy",
                    json!({"checkpointRef": {"name": "pr-7-snap"}}),
                    &["prod/orders", "clones/pr-7"],
                    json!({}),
                ),
                clone(
                    "latest",
                    json!({"database": {"store": {"url": STORE}, "path": "prod/orders"}}),
                    &["prod/orders"],
                    json!({}),
                ),
            ],
        }
    }

    #[test]
    fn schedules_checkpoints_clones_and_clones_of_clones_nest() {
        assert_eq!(
            shape_of(&workflow()),
            [
                "DatabaseCheckpointSchedule/nightly",
                "  DatabaseCheckpoint/nightly-1",
                "  DatabaseCheckpoint/nightly-2",
                "    DatabaseClone/pr-7",
                "      DatabaseCheckpoint/pr-7-snap",
                "        DatabaseClone/pr-7-snap-copy",
                "      DatabaseClone/pr-7-debug",
                "    DatabaseClone/pr-8",
                "DatabaseCheckpoint/adhoc",
                "DatabaseClone/latest",
            ]
        );
    }

    #[test]
    fn each_node_says_what_it_depends_on_with_phase_age_and_expiry() {
        let roots = build(&workflow(), now());
        let nightly = &roots[0];
        assert_eq!(
            (nightly.phase.as_str(), nightly.age.as_deref()),
            ("Ready", Some("3d"))
        );
        let newest = &nightly.children[1];
        assert_eq!(
            newest.depends_on.as_deref(),
            Some("DatabaseCheckpointSchedule/nightly")
        );
        assert_eq!(
            newest.expiration_time.as_deref(),
            Some("2025-06-03T04:00:00Z")
        );
        let pr_7 = &newest.children[0];
        assert_eq!(pr_7.name, "pr-7");
        assert_eq!(
            pr_7.depends_on.as_deref(),
            Some("DatabaseCheckpoint/nightly-2")
        );
        assert_eq!(pr_7.age.as_deref(), Some("2h"));
        let Details::Clone(details) = &pr_7.details else {
            panic!("{pr_7:?}")
        };
        assert_eq!(details.source, "scheduleRef nightly");
        assert_eq!(details.source_checkpoint.as_deref(), Some("nightly-2"));
        assert_eq!(
            details.connection_config_map.as_deref(),
            Some("pr-7-slatedb")
        );
        let debug = &pr_7.children[1];
        assert_eq!(debug.depends_on.as_deref(), Some("DatabaseClone/pr-7"));
        let snap = &pr_7.children[0];
        assert_eq!(snap.depends_on.as_deref(), Some("DatabaseClone/pr-7"));
        assert_eq!(roots[1].depends_on.as_deref(), Some("database prod/orders"));
        assert_eq!(
            roots[2].depends_on.as_deref(),
            Some("database prod/orders (latest state)")
        );
    }

    #[test]
    fn clones_whose_checkpoint_is_gone_stay_under_their_schedule_or_parent_clone() {
        let mut objects = workflow();
        // Retention pruned nightly-2; the checkpoint of pr-7 was deleted too.
        objects
            .checkpoints
            .retain(|c| c.name_any() != "nightly-2" && c.name_any() != "pr-7-snap");
        assert_eq!(
            shape_of(&objects),
            [
                "DatabaseCheckpointSchedule/nightly",
                "  DatabaseCheckpoint/nightly-1",
                "  DatabaseClone/pr-7",
                "    DatabaseClone/pr-7-debug",
                "    DatabaseClone/pr-7-snap-copy",
                "DatabaseCheckpoint/adhoc",
                "DatabaseClone/latest",
                "DatabaseClone/pr-8",
            ]
        );
        let roots = build(&objects, now());
        let pr_7 = &roots[0].children[1];
        assert_eq!(
            pr_7.depends_on.as_deref(),
            Some("DatabaseCheckpoint/nightly-2 (gone)")
        );
        assert_eq!(
            roots[3].depends_on.as_deref(),
            Some("DatabaseCheckpoint/nightly-2 (gone)")
        );
    }

    #[test]
    fn a_clone_waiting_for_its_schedule_sits_under_it_and_one_of_a_missing_schedule_is_a_root() {
        let waiting = {
            let mut c = clone(
                "pr-9",
                json!({"scheduleRef": {"name": "nightly"}}),
                &[],
                json!({}),
            );
            c.status = Some(serde_json::from_value(json!({"phase": "Pending", "conditions": [
                {"type": "Reconciling", "status": "True", "reason": "NoReadyCheckpoint",
                 "message": "schedule nightly has no Ready checkpoint yet", "lastTransitionTime": ago(0)}]}))
            .unwrap());
            c
        };
        let orphan = clone(
            "pr-10",
            json!({"scheduleRef": {"name": "weekly"}}),
            &[],
            json!({}),
        );
        let objects = Objects {
            schedules: vec![schedule("nightly")],
            checkpoints: vec![],
            clones: vec![waiting, orphan],
        };
        let roots = build(&objects, now());
        assert_eq!(roots.len(), 2);
        let pr_9 = &roots[0].children[0];
        assert_eq!(
            (pr_9.name.as_str(), pr_9.phase.as_str()),
            ("pr-9", "Pending")
        );
        assert_eq!(pr_9.notes[0].reason, "NoReadyCheckpoint");
        assert_eq!(
            roots[1].depends_on.as_deref(),
            Some("DatabaseCheckpointSchedule/weekly (not found)")
        );
    }

    #[test]
    fn objects_that_name_each_other_in_a_circle_are_each_shown_once() {
        // A clone whose target is the database of the checkpoint it is made from.
        let mut objects = Objects {
            checkpoints: vec![checkpoint("loop", "clones/self", None, 1)],
            clones: vec![clone(
                "self",
                json!({"checkpointRef": {"name": "loop"}}),
                &[],
                json!({}),
            )],
            ..Default::default()
        };
        let shown = shape_of(&objects);
        assert_eq!(shown.len(), 2, "{shown:?}");
        objects.clones.push(clone(
            "other",
            json!({"checkpointRef": {"name": "loop"}}),
            &[],
            json!({}),
        ));
        assert_eq!(
            shape_of(&objects),
            [
                "DatabaseCheckpoint/loop",
                "  DatabaseClone/other",
                "  DatabaseClone/self",
            ]
        );
    }

    #[test]
    fn objects_of_other_namespaces_and_stores_are_not_linked() {
        let mut elsewhere = clone(
            "pr-7",
            json!({"checkpointRef": {"name": "nightly-2"}}),
            &[],
            json!({}),
        );
        elsewhere.metadata.namespace = Some("team-b".into());
        let mut other_store = checkpoint("snap", "clones/pr-7", None, 1);
        other_store.spec.database.store = StoreSpec::inline("s3://other-bucket");
        let objects = Objects {
            schedules: vec![schedule("nightly")],
            checkpoints: vec![
                checkpoint("nightly-2", "prod/orders", Some("nightly"), 10),
                other_store,
            ],
            clones: vec![elsewhere],
        };
        let roots = build(&objects, now());
        let names: Vec<(&str, &str)> = roots
            .iter()
            .map(|n| (n.namespace.as_str(), n.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("team-a", "nightly"),
                ("team-a", "snap"),
                ("team-b", "pr-7")
            ]
        );
        assert!(roots[0].children[0].children.is_empty());
    }

    #[test]
    fn the_text_tree_draws_branches_and_the_details_of_each_line() {
        let text = render_text(&build(&workflow(), now()), false, now());
        let expected = "\
dbcps/nightly  Ready  age 3d  \"0 2 * * *\" Europe/Berlin  next in 14h
├─ dbcp/nightly-1  Ready  age 34h  expires in 40h
└─ dbcp/nightly-2  Ready  age 10h  expires in 40h
   ├─ dbclone/pr-7  Ready  age 2h  expires in 2d  → clones/pr-7
   │  ├─ dbcp/pr-7-snap  Ready  age 60m  expires in 40h
   │  │  └─ dbclone/pr-7-snap-copy  Ready  age 2h  → clones/pr-7-snap-copy
   │  └─ dbclone/pr-7-debug  Ready  age 2h  → clones/pr-7-debug
   └─ dbclone/pr-8  Ready  age 2h  → clones/pr-8
dbcp/adhoc  Ready  age 5h  expires in 40h  of prod/orders
dbclone/latest  Ready  age 2h  → clones/latest  from database prod/orders (latest state)
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn all_namespaces_get_a_header_each() {
        let mut objects = workflow();
        objects.clones[4].metadata.namespace = Some("team-b".into());
        let text = render_text(&build(&objects, now()), true, now());
        assert!(
            text.starts_with("NAMESPACE team-a\ndbcps/nightly"),
            "{text}"
        );
        assert!(text.ends_with("\nNAMESPACE team-b\ndbclone/latest  Ready  age 2h  → clones/latest  from database prod/orders (latest state)\n"), "{text}");
    }

    #[test]
    fn json_nodes_carry_kind_details_and_children() {
        let value = serde_json::to_value(build(&workflow(), now())).unwrap();
        let nightly = &value[0];
        assert_eq!(nightly["kind"], "DatabaseCheckpointSchedule");
        assert_eq!(nightly["schedule"], "0 2 * * *");
        assert_eq!(nightly["kept"], 2);
        let pr_7 = &nightly["children"][1]["children"][0];
        assert_eq!(pr_7["kind"], "DatabaseClone");
        assert_eq!(pr_7["target"], "clones/pr-7");
        assert_eq!(pr_7["resetToken"], "t1");
        assert_eq!(pr_7["parents"], json!(["prod/orders"]));
        assert_eq!(pr_7["children"][1]["dependsOn"], "DatabaseClone/pr-7");
        assert_eq!(nightly["children"][0]["checkpointId"], "id-nightly-1");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let d = chrono::Duration::seconds;
        assert_eq!(short_duration(d(5)), "5s");
        assert_eq!(short_duration(d(119)), "119s");
        assert_eq!(short_duration(d(600)), "10m");
        assert_eq!(short_duration(d(3 * 3600)), "3h");
        assert_eq!(short_duration(d(49 * 3600)), "2d");
        assert_eq!(short_duration(d(-5)), "0s");
    }
}
