//! What of an object the controllers of related objects act on, as hashes for kube's
//! `predicate_filter`: a related object's watch event passes only when one of these changes, so
//! progress updates, dependents counts and other status writes of the checkpoints and clones
//! around an object do not re-queue it (and the reads its reconcile makes) each time.

use crate::api::conditions::{EXPIRED, INITIALIZED, IN_USE, READY, STALLED};
use crate::api::{DatabaseCheckpoint, DatabaseClone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// A hash of an object's identity and its going: uid, deletion timestamp, finalizers.
fn hash_lifecycle(hasher: &mut impl std::hash::Hasher, meta: &ObjectMeta) {
    let deleting = meta.deletion_timestamp.as_ref().map(|t| t.0.to_string());
    (&meta.uid, deleting, &meta.finalizers).hash(hasher);
}

/// A hash of what `conditions` say of `types` (status and reason; the message too for `Stalled`).
fn hash_conditions(hasher: &mut impl std::hash::Hasher, conditions: &[Condition], types: &[&str]) {
    for condition in conditions
        .iter()
        .filter(|c| types.contains(&c.type_.as_str()))
    {
        (&condition.type_, &condition.status, &condition.reason).hash(hasher);
        if condition.type_ == STALLED {
            condition.message.hash(hasher);
        }
    }
}

/// What of a checkpoint its clones act on: its being Ready or Stalled, its SlateDB checkpoint,
/// and its going (deletion, finalizers).
pub fn checkpoint_change_for_clones(checkpoint: &DatabaseCheckpoint) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    let meta = &checkpoint.metadata;
    hash_lifecycle(&mut hasher, meta);
    checkpoint.spec.database.path.hash(&mut hasher);
    if let Some(status) = &checkpoint.status {
        status.checkpoint_id.hash(&mut hasher);
        hash_conditions(&mut hasher, &status.conditions, &[READY, STALLED]);
    }
    Some(hasher.finish())
}

/// What of a clone the clones whose data it references act on: its lineage, its data expiring,
/// and its going.
pub fn clone_change_for_parents(clone: &DatabaseClone) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    let meta = &clone.metadata;
    hash_lifecycle(&mut hasher, meta);
    if let Some(status) = clone.recorded_status() {
        for parent in &status.lineage {
            (&parent.path, &parent.final_checkpoint_id).hash(&mut hasher);
        }
        hash_conditions(&mut hasher, &status.conditions, &[READY, STALLED, EXPIRED]);
    }
    Some(hasher.finish())
}

/// What of a clone its source checkpoint acts on (the protection finalizer, the dependents).
pub fn clone_change_for_checkpoint(clone: &DatabaseClone) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    hash_lifecycle(&mut hasher, &clone.metadata);
    clone.source_checkpoint().hash(&mut hasher);
    if let Some(status) = clone.recorded_status() {
        hash_conditions(
            &mut hasher,
            &status.conditions,
            &[READY, STALLED, INITIALIZED],
        );
    }
    Some(hasher.finish())
}

/// What of a scheduled checkpoint its schedule acts on: its being Ready, Stalled or in use, its
/// SlateDB checkpoint, and its going.
pub fn checkpoint_change_for_schedule(checkpoint: &DatabaseCheckpoint) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    hash_lifecycle(&mut hasher, &checkpoint.metadata);
    if let Some(status) = &checkpoint.status {
        status.checkpoint_id.hash(&mut hasher);
        hash_conditions(&mut hasher, &status.conditions, &[READY, STALLED, IN_USE]);
    }
    Some(hasher.finish())
}

/// An object's identity and its going only: its creation and deletion pass, its status updates
/// do not.
pub fn lifecycle<K: kube::Resource>(object: &K) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    hash_lifecycle(&mut hasher, object.meta());
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::conditions::Conditions;
    use crate::controller::to_k8s_time;

    fn checkpoint() -> DatabaseCheckpoint {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint",
            "metadata": {"name": "nightly", "namespace": "a", "uid": "u1"},
            "spec": {"database": {"store": {"url": "file:///d"}, "path": "prod"}},
            "status": {"conditions": [], "dependents": 1}
        }))
        .unwrap()
    }

    #[test]
    fn a_checkpoints_clones_see_ready_stalled_and_its_going_but_not_its_counts() {
        let base = checkpoint();
        let hash = |c: &DatabaseCheckpoint| checkpoint_change_for_clones(c).unwrap();
        let mut counted = base.clone();
        if let Some(status) = counted.status.as_mut() {
            status.dependents = Some(7);
        }
        assert_eq!(
            hash(&base),
            hash(&counted),
            "a dependents count is not a change"
        );
        let mut ready = base.clone();
        if let Some(status) = ready.status.as_mut() {
            Conditions::new(
                &mut status.conditions,
                None,
                to_k8s_time(chrono::Utc::now()),
            )
            .set(READY, true, "Succeeded", "");
        }
        assert_ne!(hash(&base), hash(&ready));
        let mut going = base.clone();
        going.metadata.finalizers = Some(vec!["slatedb.io/checkpoint-cleanup".into()]);
        assert_ne!(hash(&base), hash(&going));
    }

    #[test]
    fn a_clones_progress_is_not_a_change_for_its_checkpoint_or_parents() {
        let clone: DatabaseClone = serde_json::from_value(serde_json::json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
            "metadata": {"name": "c", "namespace": "a", "uid": "u2"},
            "spec": {"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/c"}},
            "status": {"conditions": []}
        }))
        .unwrap();
        let mut progressed = clone.clone();
        if let Some(status) = progressed.status.as_mut() {
            status.progress = Some(Default::default());
            status.attempts = Some(2);
        }
        assert_eq!(
            clone_change_for_checkpoint(&clone),
            clone_change_for_checkpoint(&progressed)
        );
        assert_eq!(
            clone_change_for_parents(&clone),
            clone_change_for_parents(&progressed)
        );
        let mut expired = clone.clone();
        if let Some(status) = expired.status.as_mut() {
            Conditions::new(
                &mut status.conditions,
                None,
                to_k8s_time(chrono::Utc::now()),
            )
            .set(EXPIRED, true, "Expired", "");
        }
        assert_ne!(
            clone_change_for_parents(&clone),
            clone_change_for_parents(&expired)
        );
    }
}
