//! The pure decision of the DatabaseStore controller: from what the probe of the store found (and,
//! for a store being deleted, who still uses it) to the status and when to look again.

use crate::api::conditions::{reason, DELETION_BLOCKED, READY, RECONCILING};
use crate::api::{DatabaseStore, DatabaseStoreStatus};
use crate::controller::conditions::Conditions;
use crate::controller::Problem;
use crate::engine::Fault;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

/// How often a Ready store is probed again, so rotated or revoked credentials show.
pub const RECHECK: Duration = Duration::from_secs(300);

/// The status to write and when to reconcile again.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub status: DatabaseStoreStatus,
    pub requeue_after: Option<Duration>,
}

/// Decides the status after probing the store: Ready when it answered with its credentials;
/// `Reconciling` and a retry after `retry_delay` on a transient failure; `Stalled` on one that
/// needs the administrator (probed again after [`RECHECK`], as a fix to the credentials Secret
/// raises no event).
pub fn decide(
    object: &DatabaseStore,
    probe: &Result<(), Problem>,
    now: Time,
    retry_delay: Duration,
) -> Decision {
    let mut status = object.status.clone().unwrap_or_default();
    let generation = object.metadata.generation;
    status.observed_generation = generation;
    let mut conditions = Conditions::new(&mut status.conditions, generation, now);
    conditions.clear(DELETION_BLOCKED);
    let requeue_after = match probe {
        Ok(()) => {
            conditions.set(
                READY,
                true,
                reason::SUCCEEDED,
                "the store answered with its credentials",
            );
            conditions.clear(RECONCILING);
            conditions.clear(crate::api::conditions::STALLED);
            RECHECK
        }
        Err(problem) if problem.fault == Fault::Transient => {
            // A store that does not answer now is not Ready now, whatever it was before.
            conditions.retrying(&problem.reason, &problem.message);
            conditions.set(READY, false, &problem.reason, &problem.message);
            retry_delay
        }
        Err(problem) => {
            conditions.stall(&problem.reason, &problem.message);
            RECHECK
        }
    };
    Decision {
        status,
        requeue_after: Some(requeue_after),
    }
}

/// The status of a store being deleted while `users` (objects, by `Kind namespace/name`) still
/// name it.
pub fn deletion_blocked(
    object: &DatabaseStore,
    users: &[String],
    now: Time,
) -> DatabaseStoreStatus {
    let mut status = object.status.clone().unwrap_or_default();
    let generation = object.metadata.generation;
    let shown: Vec<&str> = users.iter().take(10).map(String::as_str).collect();
    let more = users.len().saturating_sub(shown.len());
    let message = format!(
        "deletion waits for {} object(s) that use this store: {}{}",
        users.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    Conditions::new(&mut status.conditions, generation, now).set(
        DELETION_BLOCKED,
        true,
        reason::DEPENDENTS_EXIST,
        &message,
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::STALLED;
    use crate::controller::conditions::is_true;
    use k8s_openapi::jiff::Timestamp;

    fn store() -> DatabaseStore {
        let mut store: DatabaseStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "slatedb.io/v1alpha1",
            "kind": "DatabaseStore",
            "metadata": {"name": "shared", "generation": 3},
            "spec": {"url": "s3://bucket", "credentials": {"ambient": true},
                     "namespaces": {"names": ["team-a"]}}
        }))
        .unwrap();
        store.status = None;
        store
    }

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    fn problem(fault: Fault, reason: &str) -> Problem {
        Problem {
            fault,
            reason: reason.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn an_answer_is_ready_and_rechecked() {
        let decision = decide(&store(), &Ok(()), at(1), Duration::from_secs(1));
        assert!(is_true(&decision.status.conditions, READY));
        assert_eq!(decision.status.observed_generation, Some(3));
        assert_eq!(decision.requeue_after, Some(RECHECK));
        assert_eq!(store().spec.read_prefixes[0].0, "{namespace}");
    }

    #[test]
    fn a_transient_failure_takes_ready_away_and_retries_soon() {
        let mut object = store();
        object.status = Some(decide(&object, &Ok(()), at(1), Duration::ZERO).status);
        let failed = Err(problem(Fault::Transient, "StoreUnavailable"));
        let decision = decide(&object, &failed, at(2), Duration::from_secs(4));
        let conditions = &decision.status.conditions;
        assert!(!is_true(conditions, READY));
        assert!(is_true(conditions, RECONCILING));
        assert!(!is_true(conditions, STALLED));
        assert_eq!(decision.requeue_after, Some(Duration::from_secs(4)));
    }

    #[test]
    fn rejected_credentials_stall_until_a_recheck_or_a_change() {
        let failed = Err(problem(Fault::Permanent, "CredentialsRejected"));
        let decision = decide(&store(), &failed, at(1), Duration::ZERO);
        let conditions = &decision.status.conditions;
        assert!(is_true(conditions, STALLED));
        assert!(!is_true(conditions, READY));
        assert_eq!(decision.requeue_after, Some(RECHECK));
        let mut object = store();
        object.status = Some(decision.status);
        let recovered = decide(&object, &Ok(()), at(2), Duration::ZERO);
        assert!(!is_true(&recovered.status.conditions, STALLED));
        assert!(is_true(&recovered.status.conditions, READY));
    }

    #[test]
    fn a_blocked_deletion_names_the_users_and_counts_the_rest() {
        let users: Vec<String> = (0..12).map(|i| format!("DatabaseClone a/c{i}")).collect();
        let status = deletion_blocked(&store(), &users, at(1));
        let blocked = status
            .conditions
            .iter()
            .find(|c| c.type_ == DELETION_BLOCKED)
            .unwrap();
        assert!(blocked.message.contains("12 object(s)"));
        assert!(blocked.message.contains("DatabaseClone a/c9"));
        assert!(blocked.message.ends_with("and 2 more"));
    }
}
