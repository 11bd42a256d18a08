//! Property tests of the two pure decision functions, [`clone::decide`] and [`checkpoint::decide`]:
//! random admissible specs and random sequences of observations (walks through the states a
//! reconciler can see), with the invariants every decision must keep.

use super::checkpoint::{self, Dependents, Observation};
use super::clone::{self, Effect, Work};
use super::conditions::is_true;
use super::Problem;
use crate::api::{
    CheckpointPhase, ClonePhase, DatabaseCheckpoint, DatabaseCheckpointStatus, DatabaseClone,
    DatabaseCloneStatus, StoreSpec,
};
use crate::engine::{
    CheckpointInfo, CloneProgress, CloneReport, CloneStep, Coverage, Fault, Fingerprint, Obtained,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;

// --- generators ------------------------------------------------------------------------------

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
}

/// A duration the CRD admits (`1s` to `87600h`), in the forms users write.
fn admissible_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u64..=315_360_000).prop_map(|s| format!("{s}s")),
        (1u64..=5_256_000).prop_map(|m| format!("{m}m")),
        (1u64..=87_600).prop_map(|h| format!("{h}h")),
        (0u64..87_600, 0u64..60).prop_map(|(h, m)| format!("{h}h{m}m1s")),
        (1_000u64..100_000).prop_map(|ms| format!("{ms}ms")),
        (1u64..87_599, 1u64..10).prop_map(|(h, tenth)| format!("{h}.{tenth}h")),
    ]
}

/// `(store url, path)` of a database, as the CRD admits them.
fn database() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("file:///data".to_string()),
            Just("s3://bucket/prefix".to_string())
        ],
        "[a-z]{1,8}(/[a-z0-9._-]{1,8}){0,3}",
    )
        .prop_map(|(url, path)| json!({"store": {"url": url}, "path": path}))
}

fn clone_object() -> impl Strategy<Value = DatabaseClone> {
    let source = prop_oneof![
        "[a-z][a-z0-9-]{0,20}".prop_map(|name| json!({"checkpointRef": {"name": name}})),
        database().prop_map(|db| json!({"database": db})),
    ];
    (
        source,
        "clones/[a-z0-9]{1,10}",
        prop::sample::select(vec!["None", "Metadata", "Content"]),
        prop::option::of(admissible_duration()),
        prop::sample::select(vec!["Delete", "ExpireData"]),
        prop::sample::select(vec!["Delete", "Retain"]),
        prop::option::of(1i64..1_000),
    )
        .prop_map(|(source, target, verify, expire_after, expiration, deletion, generation)| {
            let mut spec = json!({"source": source, "target": {"path": target}, "verify": verify,
                "expirationPolicy": expiration, "deletionPolicy": deletion});
            if let Some(after) = expire_after {
                spec["expireAfter"] = json!(after);
            }
            serde_json::from_value(json!({
                "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
                "metadata": {"name": "c", "namespace": "ns", "uid": "u", "generation": generation},
                "spec": spec
            }))
            .unwrap()
        })
}

fn checkpoint_object() -> impl Strategy<Value = DatabaseCheckpoint> {
    (
        database(),
        prop::option::of(admissible_duration()),
        prop::sample::select(vec!["Delete", "Retain"]),
        prop::sample::select(vec!["Metadata", "Content"]),
        prop::option::of(1i64..1_000),
    )
        .prop_map(|(database, lifetime, deletion, checksum, generation)| {
            let mut spec =
                json!({"database": database, "deletionPolicy": deletion, "checksum": checksum});
            if let Some(lifetime) = lifetime {
                spec["lifetime"] = json!(lifetime);
            }
            serde_json::from_value(json!({
                "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint",
                "metadata": {"name": "cp", "namespace": "ns", "uid": "u", "generation": generation},
                "spec": spec
            }))
            .unwrap()
        })
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![Just(Fault::Transient), Just(Fault::Permanent)]
}

fn reason() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "SourceNotFound",
            "SourceNotReady",
            "SecretNotFound",
            "StoreTimeout",
            "StoreUnavailable",
            "NotADatabase",
            "TargetNotEmpty",
            "InvalidKeyRange",
            "CheckpointMissing",
            "ChecksumMismatch",
            clone::decide::SOURCE_STALLED,
        ])
        .prop_map(String::from),
        "[A-Z][A-Za-z]{0,30}",
    ]
}

fn problem() -> impl Strategy<Value = Problem> {
    (fault(), reason(), "\\PC{0,200}").prop_map(|(fault, reason, message)| Problem {
        fault,
        reason,
        message,
    })
}

fn step() -> impl Strategy<Value = CloneStep> {
    prop::sample::select(vec![
        CloneStep::ResolveSource,
        CloneStep::WriteManifest,
        CloneStep::PinParent,
        CloneStep::CopyWal,
        CloneStep::MarkInitialized,
        CloneStep::Verify,
        CloneStep::Done,
    ])
}

fn report(
    id: u128,
    counts: (u64, u64, u64, u64),
    content_root: Option<String>,
    attempts: u32,
) -> CloneReport {
    CloneReport {
        source_checkpoint_id: uuid::Uuid::from_u128(id),
        parents: Vec::new(),
        objects_referenced: counts.0,
        bytes_referenced: counts.1,
        objects_copied: counts.2,
        bytes_copied: counts.3,
        metadata_digest: "a".repeat(64),
        content_root,
        resumed: attempts > 1,
        attempts,
        store_retries: u64::from(attempts),
        duration: Duration::from_millis(5),
        phases: Vec::new(),
    }
}

fn store() -> impl Strategy<Value = StoreSpec> {
    prop_oneof![
        Just("file:///data".to_string()),
        Just("s3://bucket/prefix".to_string())
    ]
    .prop_map(|url| StoreSpec::inline(&url))
}

fn work() -> impl Strategy<Value = Work> {
    let count = prop_oneof![0u64..1_000, any::<u64>()];
    prop_oneof![
        problem().prop_map(Work::Waiting),
        store().prop_map(|store| Work::Startable(store.into())),
        prop::option::of(
            (
                step(),
                count.clone(),
                count.clone(),
                count.clone(),
                count.clone()
            )
                .prop_map(
                    |(step, objects_done, objects_total, bytes_done, bytes_total)| CloneProgress {
                        step,
                        objects_done,
                        objects_total,
                        bytes_done,
                        bytes_total,
                    }
                )
        )
        .prop_map(Work::Running),
        (
            any::<u128>(),
            (count.clone(), count.clone(), count.clone(), count),
            prop::option::of("[0-9a-f]{64}"),
            1u32..5
        )
            .prop_map(|(id, counts, root, attempts)| Work::Finished(Ok(report(
                id, counts, root, attempts
            )))),
        problem().prop_map(|p| Work::Finished(Err(p))),
        settled_check().prop_map(Work::Settled),
    ]
}

fn settled_check() -> impl Strategy<Value = clone::decide::SettledCheck> {
    let broken = problem().prop_map(|p| Problem {
        fault: Fault::Permanent,
        reason: "SourceDataMissing".into(),
        ..p
    });
    prop_oneof![
        3 => Just(clone::decide::SettledCheck::default()),
        1 => (
            prop::option::of(broken),
            prop::collection::vec("DatabaseClone ns/[a-z]{1,6}", 0..3),
            prop::option::of((1u64..600_000).prop_map(Duration::from_millis)),
        )
            .prop_map(|(broken, holders, next_check)| clone::decide::SettledCheck {
                broken,
                holders,
                next_check,
            }),
    ]
}

/// One reconcile's input: what was observed, how much later than the previous one, the backoff.
fn clone_step() -> impl Strategy<Value = (Work, i64, Duration)> {
    (
        work(),
        prop_oneof![0i64..5_000, 0i64..400_000_000_000],
        (0u64..600_000).prop_map(Duration::from_millis),
    )
}

fn fingerprint(size_bytes: u64, object_count: u64, content_root: Option<String>) -> Fingerprint {
    Fingerprint {
        metadata_digest: "d".repeat(64),
        content_root,
        blocks_checked: None,
        size_bytes,
        object_count,
    }
}

/// An observation relative to `now`: expiry offsets are seconds from the reconcile's time.
#[derive(Clone, Debug)]
enum CheckpointSeen {
    Present {
        id: u128,
        manifest_id: u64,
        age: i64,
        expires_in: Option<i64>,
        obtained: Option<Obtained>,
        fingerprint: Option<Fingerprint>,
    },
    Failed(Problem),
}

impl CheckpointSeen {
    fn at(&self, now: DateTime<Utc>) -> Observation {
        match self.clone() {
            CheckpointSeen::Present {
                id,
                manifest_id,
                age,
                expires_in,
                obtained,
                fingerprint,
            } => Observation::Present {
                checkpoint: CheckpointInfo {
                    id: uuid::Uuid::from_u128(id),
                    manifest_id,
                    name: None,
                    create_time: now - TimeDelta::seconds(age),
                    expire_time: expires_in.map(|s| now + TimeDelta::seconds(s)),
                },
                obtained,
                coverage: fingerprint.as_ref().map(|_| Coverage {
                    last_l0_write: None,
                    wal_objects_not_included: (id % 3) as u64,
                }),
                fingerprint,
                recheck_in: None,
            },
            CheckpointSeen::Failed(p) => Observation::Failed(p),
        }
    }
}

fn checkpoint_seen() -> impl Strategy<Value = CheckpointSeen> {
    prop_oneof![
        (
            0u128..3,
            any::<u64>(),
            0i64..100_000_000,
            prop::option::of(-400_000_000i64..400_000_000),
            prop::option::of(prop_oneof![
                Just(Obtained::Created),
                Just(Obtained::Adopted)
            ]),
            prop::option::of(
                (any::<u64>(), any::<u64>(), prop::option::of("[0-9a-f]{64}"))
                    .prop_map(|(size, count, root)| fingerprint(size, count, root))
            ),
        )
            .prop_map(
                |(id, manifest_id, age, expires_in, obtained, fingerprint)| {
                    CheckpointSeen::Present {
                        id,
                        manifest_id,
                        age,
                        expires_in,
                        obtained,
                        fingerprint,
                    }
                }
            ),
        problem().prop_map(CheckpointSeen::Failed),
    ]
}

fn dependents() -> impl Strategy<Value = Dependents> {
    (0usize..4, prop::collection::vec("[a-z]{1,6}", 0..4)).prop_map(|(more, in_progress)| {
        Dependents {
            total: in_progress.len() + more,
            in_progress,
        }
    })
}

fn checkpoint_step() -> impl Strategy<Value = (CheckpointSeen, Dependents, i64, Duration)> {
    (
        checkpoint_seen(),
        dependents(),
        prop_oneof![0i64..5_000, 0i64..400_000_000_000],
        (0u64..600_000).prop_map(Duration::from_millis),
    )
}

// --- invariants shared by both kinds ---------------------------------------------------------

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Conditions are a list-map keyed by type, sorted, `True`/`False` only; the abnormal-true ones
/// (`Stalled`, `Reconciling`) appear only while true, never together, and never beside Ready=True;
/// `lastTransitionTime` moves only when a condition's status changes; every condition carries the
/// generation it was computed for.
fn check_conditions(
    before: &[Condition],
    after: &[Condition],
    generation: Option<i64>,
) -> Result<(), TestCaseError> {
    let types: Vec<&str> = after.iter().map(|c| c.type_.as_str()).collect();
    let mut sorted = types.clone();
    sorted.sort();
    sorted.dedup();
    prop_assert_eq!(&types, &sorted, "condition types sorted and unique");
    for c in after {
        prop_assert!(c.status == "True" || c.status == "False", "{:?}", c);
        prop_assert!(!c.reason.is_empty(), "{:?} has no reason", c);
        if let Some(old) = find(before, &c.type_) {
            if old.status == c.status {
                prop_assert_eq!(
                    &old.last_transition_time,
                    &c.last_transition_time,
                    "{} kept its status, so its transition time",
                    c.type_
                );
            }
            if old != c {
                prop_assert_eq!(c.observed_generation, generation, "{:?}", c);
            }
        } else {
            prop_assert_eq!(c.observed_generation, generation, "{:?}", c);
        }
    }
    for abnormal in ["Stalled", "Reconciling"] {
        if let Some(c) = find(after, abnormal) {
            prop_assert_eq!(
                c.status.as_str(),
                "True",
                "{} present only while true",
                abnormal
            );
        }
    }
    prop_assert!(
        !(find(after, "Stalled").is_some() && find(after, "Reconciling").is_some()),
        "Stalled and Reconciling at once: {:?}",
        after
    );
    if is_true(after, "Ready") {
        prop_assert!(
            find(after, "Stalled").is_none(),
            "Ready and Stalled: {:?}",
            after
        );
    }
    if let Some(stalled) = find(after, "Stalled") {
        prop_assert_eq!(
            find(after, "Ready").map(|c| c.status.as_str()),
            Some("False")
        );
        prop_assert_eq!(&find(after, "Ready").unwrap().reason, &stalled.reason);
    }
    Ok(())
}

/// What `apply` would observe: the random `work`, coerced to one the reconciler can see next.
fn reachable(object: &DatabaseClone, job: bool, work: Work) -> Work {
    let settled = clone::settled(object);
    match work {
        Work::Running(_) | Work::Finished(_) if job => work,
        _ if job => Work::Running(None),
        Work::Settled(check) if settled => Work::Settled(check),
        _ if settled => Work::Settled(Default::default()),
        Work::Waiting(_) | Work::Startable(_) => work,
        Work::Finished(Err(p)) => Work::Waiting(p),
        _ => Work::Startable(StoreSpec::inline("file:///data").into()),
    }
}

fn with_clone_status(object: &DatabaseClone, status: Option<DatabaseCloneStatus>) -> DatabaseClone {
    let mut object = object.clone();
    object.status = status;
    object
}

fn with_checkpoint_status(
    object: &DatabaseCheckpoint,
    status: Option<DatabaseCheckpointStatus>,
) -> DatabaseCheckpoint {
    let mut object = object.clone();
    object.status = status;
    object
}

// --- DatabaseClone ----------------------------------------------------------------------------

/// Checks one clone decision against its input.
fn check_clone_decision(
    object: &DatabaseClone,
    work: &Work,
    now: DateTime<Utc>,
    retry_delay: Duration,
    decision: &clone::Decision,
) -> Result<(), TestCaseError> {
    let previous = object.status.clone().unwrap_or_default();
    let status = &decision.status;
    let generation = object.metadata.generation;
    prop_assert_eq!(status.observed_generation, generation);
    check_conditions(&previous.conditions, &status.conditions, generation)?;
    // Whatever it saw, the same input decides the same way.
    prop_assert_eq!(
        &clone::decide(object, work, now, retry_delay),
        decision,
        "decide is deterministic"
    );
    // The store is recorded when work starts, and kept otherwise.
    match work {
        Work::Startable(start) => prop_assert_eq!(status.store.as_ref(), Some(&start.store)),
        _ => prop_assert_eq!(&status.store, &previous.store),
    }
    match work {
        Work::Finished(Ok(r)) => prop_assert_eq!(
            status.source_checkpoint_id.clone(),
            Some(r.source_checkpoint_id.to_string())
        ),
        _ => prop_assert_eq!(&status.source_checkpoint_id, &previous.source_checkpoint_id),
    }
    match work {
        Work::Finished(Ok(r)) => prop_assert_eq!(
            status.store_retries,
            Some(i64::try_from(r.store_retries).unwrap_or(i64::MAX))
        ),
        _ => prop_assert_eq!(status.store_retries, previous.store_retries),
    }
    // Attempts count starts of work: +1 on a start, unchanged otherwise.
    let attempts = previous.attempts.unwrap_or(0);
    match work {
        Work::Startable(_) => prop_assert_eq!(status.attempts, Some(attempts + 1)),
        _ => prop_assert_eq!(status.attempts, previous.attempts),
    }
    if previous.start_time.is_some() {
        prop_assert_eq!(
            &status.start_time,
            &previous.start_time,
            "start time is kept"
        );
    }

    // Effects: work starts only from Startable; data or the object go only on expiry of a clone
    // that was Ready, and only as its policy says.
    match &decision.effect {
        Effect::StartWork => prop_assert!(matches!(work, Work::Startable(_))),
        Effect::DeleteObject | Effect::ExpireData => {
            let Work::Settled(check) = work else {
                return Err(TestCaseError::fail(format!("{work:?} deleted data")));
            };
            prop_assert!(check.holders.is_empty(), "held data is never deleted");
            prop_assert!(check.broken.is_none());
            prop_assert!(is_true(&previous.conditions, "Ready"));
            let expires = previous.expiration_time.as_ref().expect("an expiry");
            prop_assert!(expires.0.as_millisecond() <= now.timestamp_millis());
            let expected = match object.spec.expiration_policy {
                crate::api::ExpirationPolicy::Delete => Effect::DeleteObject,
                crate::api::ExpirationPolicy::ExpireData => Effect::ExpireData,
            };
            prop_assert_eq!(&decision.effect, &expected);
        }
        Effect::None => {}
    }
    if matches!(work, Work::Startable(_)) {
        prop_assert_eq!(&decision.effect, &Effect::StartWork);
        prop_assert_eq!(decision.requeue_after, Some(clone::PROGRESS_INTERVAL));
        prop_assert_eq!(status.phase, Some(ClonePhase::Cloning));
        prop_assert!(find(&status.conditions, "Stalled").is_none());
    }

    match work {
        Work::Waiting(p) | Work::Finished(Err(p)) => match p.fault {
            Fault::Transient => {
                let reconciling = find(&status.conditions, "Reconciling").expect("Reconciling");
                prop_assert_eq!(&reconciling.reason, &p.reason);
                prop_assert!(reconciling.message.contains("retrying in"));
                prop_assert!(find(&status.conditions, "Stalled").is_none());
                prop_assert_eq!(decision.requeue_after, Some(retry_delay));
                prop_assert_eq!(status.phase, Some(ClonePhase::Pending));
            }
            Fault::Permanent => {
                let stalled = find(&status.conditions, "Stalled").expect("Stalled");
                prop_assert_eq!(&stalled.reason, &p.reason);
                prop_assert_eq!(&stalled.message, &p.message);
                prop_assert_eq!(decision.requeue_after, None, "a stall does not hot-loop");
                prop_assert_eq!(status.phase, Some(ClonePhase::Failed));
                prop_assert!(!is_true(&status.conditions, "Ready"));
                let stalled = with_clone_status(object, Some(status.clone()));
                if p.reason == clone::decide::SOURCE_STALLED {
                    // Stalled on its source: resolved again on the next reconcile.
                    prop_assert!(!clone::settled(&stalled));
                } else {
                    prop_assert!(clone::settled(&stalled));
                    check_stall_is_stable(object, decision, now)?;
                }
            }
        },
        Work::Finished(Ok(report)) => {
            prop_assert!(is_true(&status.conditions, "Ready"));
            prop_assert!(is_true(&status.conditions, "Initialized"));
            prop_assert_eq!(
                is_true(&status.conditions, "Verified"),
                object.spec.verify != crate::api::VerifyMode::None
            );
            prop_assert_eq!(status.phase, Some(ClonePhase::Ready));
            prop_assert_eq!(
                &status.checksum.as_ref().unwrap().metadata_digest,
                &report.metadata_digest
            );
            prop_assert_eq!(status.progress.as_ref().unwrap().percent.as_str(), "100%");
            match object
                .spec
                .expire_after
                .as_ref()
                .map(|d| d.to_std().unwrap())
            {
                Some(after) => {
                    let expires = status.expiration_time.as_ref().unwrap().0.as_millisecond();
                    prop_assert_eq!(expires - now.timestamp_millis(), after.as_millis() as i64);
                    prop_assert_eq!(
                        decision.requeue_after,
                        Some(after + Duration::from_millis(200))
                    );
                }
                None => prop_assert_eq!(decision.requeue_after, None),
            }
            check_ready_is_settled(object, decision, now)?;
        }
        Work::Running(progress) => {
            prop_assert_eq!(decision.requeue_after, Some(clone::PROGRESS_INTERVAL));
            if let Some(progress) = progress {
                let published = status.progress.as_ref().unwrap();
                prop_assert_eq!(published.step.as_str(), progress.step.name());
                let percent: u32 = published.percent.trim_end_matches('%').parse().unwrap();
                prop_assert!(percent <= 100);
                prop_assert!(find(&status.conditions, "Reconciling").is_some());
            }
        }
        Work::Settled(check) => {
            let ready = is_true(&previous.conditions, "Ready");
            if let Some(broken) = check.broken.as_ref().filter(|_| ready) {
                // Broken data: Ready=False and Stalled with the reason, no effect.
                let stalled = find(&status.conditions, "Stalled").expect("Stalled");
                prop_assert_eq!(&stalled.reason, &broken.reason);
                prop_assert!(!is_true(&status.conditions, "Ready"));
                prop_assert_eq!(&decision.effect, &Effect::None);
            } else if !check.holders.is_empty() {
                prop_assert_eq!(&decision.effect, &Effect::None, "held data stays");
            } else if decision.effect == Effect::None && *check == Default::default() {
                // Nothing but expiry happens to a settled clone.
                let mut expected = previous.clone();
                expected.observed_generation = generation;
                prop_assert_eq!(status, &expected, "a settled clone's status is unchanged");
                prop_assert!(decision.event.is_none());
            }
        }
        Work::Startable(_) => {}
    }
    Ok(())
}

/// After a stall the next reconcile sees the clone settled (no job, Stalled at this generation):
/// the status stays as it is, with no event, no effect and no requeue, however late it comes.
fn check_stall_is_stable(
    object: &DatabaseClone,
    decision: &clone::Decision,
    now: DateTime<Utc>,
) -> Result<(), TestCaseError> {
    let stalled = with_clone_status(object, Some(decision.status.clone()));
    for later in [now, now + TimeDelta::seconds(1), now + TimeDelta::days(400)] {
        let next = clone::decide(
            &stalled,
            &Work::Settled(Default::default()),
            later,
            Duration::from_secs(1),
        );
        prop_assert_eq!(&next.status, &decision.status);
        prop_assert_eq!(&next.effect, &Effect::None);
        prop_assert_eq!(next.requeue_after, None);
        prop_assert!(next.event.is_none());
    }
    Ok(())
}

/// A Ready clone seen again with its generation unchanged does no store work until it expires,
/// and then exactly what its policy says.
fn check_ready_is_settled(
    object: &DatabaseClone,
    decision: &clone::Decision,
    now: DateTime<Utc>,
) -> Result<(), TestCaseError> {
    let ready = with_clone_status(object, Some(decision.status.clone()));
    let expires = decision
        .status
        .expiration_time
        .as_ref()
        .map(|t| t.0.as_millisecond());
    for later in [1i64, 60_000, 86_400_000, 400 * 86_400_000] {
        let at = now + TimeDelta::milliseconds(later);
        let next = clone::decide(
            &ready,
            &Work::Settled(Default::default()),
            at,
            Duration::from_secs(1),
        );
        match expires {
            Some(expires) if expires <= at.timestamp_millis() => {
                prop_assert_ne!(&next.effect, &Effect::None);
            }
            Some(expires) => {
                prop_assert_eq!(&next.effect, &Effect::None);
                prop_assert_eq!(&next.status, &decision.status);
                let left = Duration::from_millis((expires - at.timestamp_millis()) as u64);
                prop_assert_eq!(next.requeue_after, Some(left + Duration::from_millis(200)));
            }
            None => {
                prop_assert_eq!(&next.effect, &Effect::None);
                prop_assert_eq!(&next.status, &decision.status);
                prop_assert_eq!(next.requeue_after, None);
                prop_assert!(next.event.is_none());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A walk of up to 12 reconciles as `apply` makes them: a clone with a job in the pool sees
    /// it Running or Finished; one without a job whose status is settled (Ready, Expired, or
    /// Stalled at this generation) is Settled; any other is Waiting or Startable. Every decision
    /// keeps the invariants, and each status is the next reconcile's previous status.
    #[test]
    fn clone_decisions_keep_their_invariants(
        object in clone_object(),
        steps in prop::collection::vec(clone_step(), 1..12),
    ) {
        let mut now = base_time();
        let mut status: Option<DatabaseCloneStatus> = None;
        let mut job = false;
        for (work, later_ms, retry_delay) in steps {
            now += TimeDelta::milliseconds(later_ms);
            let current = with_clone_status(&object, status.clone());
            let work = reachable(&current, job, work);
            job = matches!(work, Work::Startable(_) | Work::Running(_));
            let decision = clone::decide(&current, &work, now, retry_delay);
            check_clone_decision(&current, &work, now, retry_delay, &decision)?;
            status = Some(decision.status);
        }
    }

    /// Observations in any order, reachable or not: no panic, the same input decides the same
    /// way, work starts only when Startable, and nothing is deleted except a Ready clone's on
    /// expiry.
    #[test]
    fn clone_decisions_in_any_order_are_safe(
        object in clone_object(),
        steps in prop::collection::vec(clone_step(), 1..12),
    ) {
        let mut now = base_time();
        let mut status: Option<DatabaseCloneStatus> = None;
        for (work, later_ms, retry_delay) in steps {
            now += TimeDelta::milliseconds(later_ms);
            let current = with_clone_status(&object, status.clone());
            let previous = status.clone().unwrap_or_default();
            let decision = clone::decide(&current, &work, now, retry_delay);
            prop_assert_eq!(&clone::decide(&current, &work, now, retry_delay), &decision);
            prop_assert_eq!(decision.status.observed_generation, object.metadata.generation);
            match decision.effect {
                Effect::StartWork => prop_assert!(matches!(work, Work::Startable(_))),
                Effect::DeleteObject | Effect::ExpireData => {
                    prop_assert!(
                        matches!(&work, Work::Settled(check) if check.holders.is_empty()),
                        "only unheld data goes: {:?}",
                        work
                    );
                    prop_assert!(is_true(&previous.conditions, "Ready"));
                    let expires = previous.expiration_time.as_ref().unwrap().0.as_millisecond();
                    prop_assert!(expires <= now.timestamp_millis());
                }
                Effect::None => {}
            }
            status = Some(decision.status);
        }
    }

    /// A clone stalled on its source checkpoint is not settled: when the checkpoint recovers, the
    /// next reconcile resolves it, starts the work and clears the stall.
    #[test]
    fn a_clone_stalled_on_its_source_resolves_again(
        object in clone_object(),
        message in "\\PC{0,100}",
        store in store(),
        later in 0i64..400_000_000,
    ) {
        let stall = Work::Waiting(Problem {
            fault: Fault::Permanent,
            reason: clone::decide::SOURCE_STALLED.into(),
            message,
        });
        let stalled = clone::decide(&object, &stall, base_time(), Duration::ZERO);
        let current = with_clone_status(&object, Some(stalled.status.clone()));
        prop_assert!(find(&current.status.as_ref().unwrap().conditions, "Stalled").is_some());
        let work = reachable(&current, false, Work::Startable(store.into()));
        prop_assert!(matches!(work, Work::Startable(_)), "{:?}", work);
        let now = base_time() + TimeDelta::milliseconds(later);
        let resumed = clone::decide(&current, &work, now, Duration::ZERO);
        check_clone_decision(&current, &work, now, Duration::ZERO, &resumed)?;
        prop_assert_eq!(&resumed.effect, &Effect::StartWork);
        prop_assert!(find(&resumed.status.conditions, "Stalled").is_none());
        prop_assert_eq!(resumed.status.phase, Some(ClonePhase::Cloning));
    }

    /// The same failure seen twice in a row records one event, not one per reconcile.
    #[test]
    fn a_repeated_wait_records_one_event(
        object in clone_object(),
        problem in problem(),
        retry in (0u64..600).prop_map(Duration::from_secs),
    ) {
        let work = Work::Waiting(problem);
        let first = clone::decide(&object, &work, base_time(), retry);
        let again = clone::decide(
            &with_clone_status(&object, Some(first.status.clone())),
            &work,
            base_time() + TimeDelta::seconds(1),
            retry,
        );
        prop_assert!(first.event.is_some() || object.status.is_some());
        prop_assert!(again.event.is_none());
        prop_assert_eq!(again.status, first.status, "a repeated wait is a fixed point");
    }
}

// --- DatabaseCheckpoint -----------------------------------------------------------------------

fn check_checkpoint_decision(
    object: &DatabaseCheckpoint,
    observation: &Observation,
    dependents: &Dependents,
    now: DateTime<Utc>,
    retry_delay: Duration,
    decision: &checkpoint::Decision,
) -> Result<(), TestCaseError> {
    let previous = object.status.clone().unwrap_or_default();
    let status = &decision.status;
    let generation = object.metadata.generation;
    prop_assert_eq!(status.observed_generation, generation);
    check_conditions(&previous.conditions, &status.conditions, generation)?;
    prop_assert_eq!(
        &checkpoint::decide(object, observation, dependents, now, retry_delay),
        decision,
        "decide is deterministic"
    );
    prop_assert_eq!(status.dependents, Some(dependents.total as i32));
    let in_use = find(&status.conditions, "InUse").expect("InUse is always set");
    prop_assert_eq!(in_use.status == "True", !dependents.in_progress.is_empty());
    for name in &dependents.in_progress {
        prop_assert!(in_use.message.contains(name.as_str()));
    }
    match observation {
        Observation::Present {
            checkpoint,
            obtained,
            fingerprint,
            coverage,
            ..
        } => {
            // What it covers is recorded, and the condition says whether it has every durable write.
            if let Some(coverage) = coverage {
                let includes = find(&status.conditions, "IncludesDurableWrites");
                prop_assert_eq!(
                    includes.map(|c| c.status == "True"),
                    Some(coverage.wal_objects_not_included == 0)
                );
                prop_assert_eq!(
                    status.coverage.as_ref().map(|c| c.wal_objects_not_included),
                    Some(coverage.wal_objects_not_included as i64)
                );
            }
            prop_assert_eq!(
                status.checkpoint_id.clone(),
                Some(checkpoint.id.to_string())
            );
            prop_assert!(find(&status.conditions, "Stalled").is_none());
            prop_assert!(find(&status.conditions, "Reconciling").is_none());
            match fingerprint {
                Some(f) => prop_assert_eq!(
                    &status.checksum.as_ref().unwrap().metadata_digest,
                    &f.metadata_digest
                ),
                None => prop_assert_eq!(&status.checksum, &previous.checksum),
            }
            let expired = checkpoint.expire_time.is_some_and(|at| at <= now);
            prop_assert_eq!(is_true(&status.conditions, "Expired"), expired);
            prop_assert_eq!(is_true(&status.conditions, "Ready"), !expired);
            if expired {
                prop_assert_eq!(status.phase, Some(CheckpointPhase::Expired));
                prop_assert_eq!(decision.requeue_after, None);
            } else {
                prop_assert_eq!(status.phase, Some(CheckpointPhase::Ready));
                // It wakes up just after expiry, never before.
                match checkpoint.expire_time {
                    Some(at) => {
                        let left = (at - now).to_std().unwrap();
                        let requeue = decision.requeue_after.unwrap();
                        prop_assert!(requeue > left && requeue <= left + Duration::from_secs(1));
                    }
                    None => prop_assert_eq!(decision.requeue_after, None),
                }
                prop_assert_eq!(decision.event.is_some(), obtained.is_some());
            }
            // Seen again with nothing new, the status is a fixed point and records no event.
            let again = checkpoint::decide(
                &with_checkpoint_status(object, Some(status.clone())),
                &Observation::Present {
                    checkpoint: checkpoint.clone(),
                    obtained: None,
                    fingerprint: None,
                    recheck_in: None,
                    coverage: None,
                },
                dependents,
                now,
                retry_delay,
            );
            prop_assert_eq!(&again.status, status);
            prop_assert!(again.event.is_none());
        }
        Observation::Failed(Problem {
            fault,
            reason,
            message,
        }) => {
            let gc_after_expiry = reason == "CheckpointMissing"
                && previous
                    .expiration_time
                    .as_ref()
                    .is_some_and(|t| t.0.as_millisecond() <= now.timestamp_millis());
            if gc_after_expiry {
                prop_assert!(is_true(&status.conditions, "Expired"));
                prop_assert!(find(&status.conditions, "Stalled").is_none());
                prop_assert_eq!(decision.requeue_after, None);
            } else if *fault == Fault::Transient {
                let reconciling = find(&status.conditions, "Reconciling").expect("Reconciling");
                prop_assert_eq!(&reconciling.reason, reason);
                prop_assert_eq!(decision.requeue_after, Some(retry_delay));
                // A blip does not take Ready away from a Ready checkpoint.
                prop_assert_eq!(
                    is_true(&status.conditions, "Ready"),
                    is_true(&previous.conditions, "Ready")
                );
            } else {
                let stalled = find(&status.conditions, "Stalled").expect("Stalled");
                prop_assert_eq!(&stalled.reason, reason);
                prop_assert_eq!(&stalled.message, message);
                prop_assert_eq!(status.phase, Some(CheckpointPhase::Failed));
                prop_assert!(
                    decision.requeue_after.unwrap() >= Duration::from_secs(300),
                    "no hot loop on a permanent failure"
                );
                // A stall is stable: the same failure again changes nothing and records nothing.
                let again = checkpoint::decide(
                    &with_checkpoint_status(object, Some(status.clone())),
                    observation,
                    dependents,
                    now + TimeDelta::seconds(600),
                    retry_delay,
                );
                prop_assert_eq!(&again.status, status);
                prop_assert!(again.event.is_none());
                prop_assert_eq!(again.requeue_after, decision.requeue_after);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn checkpoint_decisions_keep_their_invariants(
        object in checkpoint_object(),
        steps in prop::collection::vec(checkpoint_step(), 1..12),
    ) {
        let mut now = base_time();
        let mut status: Option<DatabaseCheckpointStatus> = None;
        for (seen, dependents, later_ms, retry_delay) in steps {
            now += TimeDelta::milliseconds(later_ms);
            let current = with_checkpoint_status(&object, status.clone());
            let observation = seen.at(now);
            let decision = checkpoint::decide(&current, &observation, &dependents, now, retry_delay);
            check_checkpoint_decision(&current, &observation, &dependents, now, retry_delay, &decision)?;
            status = Some(decision.status);
        }
    }
}

// --- known panics on input the CRD does not admit ---------------------------------------------

/// A clone object as stored, bypassing admission (an older CRD, or a status written by hand).
fn unchecked_clone(expire_after: &str, attempts: Option<i32>) -> DatabaseClone {
    let mut object: DatabaseClone = serde_json::from_value(json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
        "metadata": {"name": "c", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"source": {"checkpointRef": {"name": "n"}}, "target": {"path": "t"},
                 "expireAfter": expire_after}
    }))
    .unwrap();
    object.status = Some(DatabaseCloneStatus {
        attempts,
        ..Default::default()
    });
    object
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `expireAfter` beyond the CRD's 87600h (an object admitted by an older CRD): `decide` does
    /// not panic on any stored object; far-future expiries saturate.
    #[test]
    fn clone_decide_survives_any_stored_expire_after(seconds in any::<u64>()) {
        let object = unchecked_clone(&format!("{seconds}s"), None);
        let ok = Work::Finished(Ok(report(1, (1, 1, 1, 1), None, 1)));
        let _ = clone::decide(&object, &ok, base_time(), Duration::ZERO);
    }
}

/// `status.attempts` is user-writable through the status subresource; at `i32::MAX` the count
/// saturates.
#[test]
fn clone_decide_survives_attempts_at_the_maximum() {
    let object = unchecked_clone("1h", Some(i32::MAX));
    let store = StoreSpec::inline("file:///data");
    let _ = clone::decide(
        &object,
        &Work::Startable(store.into()),
        base_time(),
        Duration::ZERO,
    );
}
