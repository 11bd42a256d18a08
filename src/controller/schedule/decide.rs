//! The pure decision of the DatabaseCheckpointSchedule controller: from the schedule, the time and
//! the checkpoints it made to the checkpoint to make now (at most one: after an outage, one
//! catch-up checkpoint for the newest missed tick), the ones retention lets go, the status and
//! when to look again.

use crate::api::conditions::{READY, RECONCILING, STALLED};
use crate::api::{
    DatabaseCheckpointSchedule, DatabaseCheckpointScheduleStatus, Retention, ScheduledCheckpoint,
};
use crate::controller::conditions::Conditions;
use crate::controller::to_k8s_time;
use chrono::{DateTime, Duration as TimeDelta, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use std::time::Duration;

/// The schedule's template or expression cannot be used as it is.
pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
pub const INVALID_TIME_ZONE: &str = "InvalidTimeZone";
pub const INVALID_RETENTION: &str = "InvalidRetention";
/// The newest finished checkpoint is Stalled (usually a bad template).
pub const CHECKPOINT_STALLED: &str = "CheckpointStalled";
pub const CHECKPOINT_SUCCEEDED: &str = "CheckpointSucceeded";
pub const CHECKPOINT_IN_PROGRESS: &str = "CheckpointInProgress";
pub const WAITING_FOR_FIRST_TICK: &str = "WaitingForFirstTick";

/// The shortest `@every` interval.
const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// The longest a schedule waits without looking again (a clock step, a missed event).
const MAX_WAIT: Duration = Duration::from_secs(300);
/// A name is at most 253 characters; the checkpoint's adds `-YYYYMMDD-HHMMSS`.
pub const MAX_SCHEDULE_NAME: usize = 253 - 16;

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// A cron expression read in a time zone.
    Cron(Box<Cron>, chrono_tz::Tz),
    /// Every interval, counted from the schedule's creation.
    Every(Duration),
}

impl Cadence {
    /// Parses `spec.schedule` and `spec.timeZone`, or says what is wrong with them.
    pub fn parse(
        schedule: &str,
        time_zone: Option<&str>,
    ) -> Result<Cadence, (&'static str, String)> {
        if let Some(interval) = schedule.strip_prefix("@every ") {
            if time_zone.is_some() {
                return Err((
                    INVALID_TIME_ZONE,
                    "spec.timeZone applies to cron expressions, not to '@every'".into(),
                ));
            }
            let interval = crate::api::GoDuration(interval.trim().to_string())
                .to_std()
                .map_err(|e| (INVALID_SCHEDULE, format!("spec.schedule {schedule:?}: {e}")))?;
            if interval < MIN_INTERVAL {
                return Err((
                    INVALID_SCHEDULE,
                    format!("spec.schedule {schedule:?}: the interval must be at least 10s"),
                ));
            }
            return Ok(Cadence::Every(interval));
        }
        let zone = match time_zone {
            None => chrono_tz::UTC,
            Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
                (
                    INVALID_TIME_ZONE,
                    format!(
                        "spec.timeZone {name:?} is not an IANA time zone such as Europe/Berlin"
                    ),
                )
            })?,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| {
                (
                    INVALID_SCHEDULE,
                    format!(
                        "spec.schedule {schedule:?} is not a 5-field cron expression \
                         (minute hour day-of-month month day-of-week): {e}"
                    ),
                )
            })?;
        Ok(Cadence::Cron(Box::new(cron), zone))
    }

    /// The newest tick in `(after, now]`, if any.
    pub fn latest_tick(
        &self,
        anchor: DateTime<Utc>,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let tick = match self {
            Cadence::Every(interval) => {
                let step = interval.as_millis() as i64;
                let elapsed = (now - anchor).num_milliseconds();
                if elapsed < step {
                    return None;
                }
                anchor + TimeDelta::milliseconds(elapsed / step * step)
            }
            Cadence::Cron(cron, zone) => cron
                .find_previous_occurrence(&now.with_timezone(zone), true)
                .ok()?
                .with_timezone(&Utc),
        };
        (tick > after).then_some(tick)
    }

    /// The first tick after `now`.
    pub fn next_tick(&self, anchor: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(interval) => {
                let step = interval.as_millis() as i64;
                let elapsed = (now - anchor).num_milliseconds().max(0);
                Some(anchor + TimeDelta::milliseconds((elapsed / step + 1) * step))
            }
            Cadence::Cron(cron, zone) => cron
                .find_next_occurrence(&now.with_timezone(zone), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// The name of the checkpoint for `tick`: the schedule's name and the tick in UTC, so names sort
/// by time and a retry of the same tick finds its own checkpoint.
pub fn checkpoint_name(schedule: &str, tick: DateTime<Utc>) -> String {
    format!("{schedule}-{}", tick.format("%Y%m%d-%H%M%S"))
}

/// One DatabaseCheckpoint the schedule made, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub name: String,
    pub tick: DateTime<Utc>,
    pub state: ChildState,
    pub checkpoint_id: Option<String>,
    /// Clones are being made from it (its `InUse` condition): never pruned.
    pub in_use: bool,
    /// Already being deleted.
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChildState {
    InProgress,
    Ready,
    Stalled { reason: String, message: String },
}

/// What to do.
#[derive(Debug, PartialEq)]
pub struct Decision {
    /// The checkpoint to make now, and the tick it is for.
    pub create: Option<(String, DateTime<Utc>)>,
    /// Checkpoints retention lets go.
    pub prune: Vec<String>,
    pub status: DatabaseCheckpointScheduleStatus,
    pub requeue_after: Option<Duration>,
}

/// Decides for `object` at `now`, given the checkpoints it made.
pub fn decide(
    object: &DatabaseCheckpointSchedule,
    children: &[Child],
    now: DateTime<Utc>,
) -> Decision {
    let mut status = object.status.clone().unwrap_or_default();
    let generation = object.metadata.generation;
    status.observed_generation = generation;
    let name = object.metadata.name.clone().unwrap_or_default();
    let anchor = object
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond()))
        .unwrap_or(now);
    let mut live: Vec<&Child> = children.iter().filter(|c| !c.deleting).collect();
    live.sort_by_key(|c| std::cmp::Reverse(c.tick));

    let invalid = |status: &mut DatabaseCheckpointScheduleStatus, reason: &str, message: &str| {
        let mut conditions = Conditions::new(&mut status.conditions, generation, to_k8s_time(now));
        conditions.stall(reason, message);
        status.next_schedule_time = None;
        status.kept = Some(live.len() as i32);
        Decision {
            create: None,
            prune: Vec::new(),
            status: status.clone(),
            requeue_after: None,
        }
    };
    let cadence = match Cadence::parse(&object.spec.schedule, object.spec.time_zone.as_deref()) {
        Ok(cadence) => cadence,
        Err((reason, message)) => return invalid(&mut status, reason, &message),
    };
    if name.len() > MAX_SCHEDULE_NAME {
        let message = format!(
            "the schedule's name is longer than {MAX_SCHEDULE_NAME} characters, so its \
             checkpoints' names (name-YYYYMMDD-HHMMSS) would exceed 253"
        );
        return invalid(&mut status, INVALID_SCHEDULE, &message);
    }
    let keep_within = match object
        .spec
        .retention
        .as_ref()
        .and_then(|r| r.keep_within.as_ref())
        .map(|d| d.to_std())
        .transpose()
    {
        Ok(keep_within) => keep_within,
        Err(message) => {
            let message = format!("spec.retention.keepWithin: {message}");
            return invalid(&mut status, INVALID_RETENTION, &message);
        }
    };

    let last_made = status
        .last_schedule_time
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.0.as_millisecond()))
        .into_iter()
        .chain(live.first().map(|c| c.tick))
        .max();
    let create = if object.spec.suspend {
        None
    } else {
        cadence
            .latest_tick(anchor, last_made.unwrap_or(anchor), now)
            .map(|tick| (checkpoint_name(&name, tick), tick))
            .filter(|(child, _)| !children.iter().any(|c| &c.name == child))
    };
    if let Some(tick) = create.as_ref().map(|(_, tick)| *tick).or(last_made) {
        status.last_schedule_time = Some(to_k8s_time(tick));
    }

    let prune = prune(object.spec.retention.as_ref(), keep_within, &live, now);
    let kept: Vec<&&Child> = live.iter().filter(|c| !prune.contains(&c.name)).collect();
    status.kept = Some((kept.len() + usize::from(create.is_some())) as i32);
    status.last_successful_checkpoint =
        live.iter()
            .find(|c| c.state == ChildState::Ready)
            .map(|c| ScheduledCheckpoint {
                name: c.name.clone(),
                checkpoint_id: c.checkpoint_id.clone(),
                time: to_k8s_time(c.tick),
            });
    let next = (!object.spec.suspend)
        .then(|| cadence.next_tick(anchor, now))
        .flatten();
    status.next_schedule_time = next.map(to_k8s_time);

    let mut conditions = Conditions::new(&mut status.conditions, generation, to_k8s_time(now));
    // The newest finished run decides Ready; a run in progress does not take Ready away.
    match live.iter().find(|c| c.state != ChildState::InProgress) {
        Some(Child {
            state: ChildState::Stalled { reason, message },
            name: child,
            ..
        }) => {
            let message = format!(
                "the newest checkpoint, DatabaseCheckpoint {child}, is Stalled ({reason}: \
                 {message}); fix spec.checkpointTemplate and the next tick tries again"
            );
            conditions.stall(CHECKPOINT_STALLED, &message);
        }
        Some(child) => {
            conditions.clear(STALLED);
            conditions.clear(RECONCILING);
            let message = format!("DatabaseCheckpoint {} is Ready", child.name);
            conditions.set(READY, true, CHECKPOINT_SUCCEEDED, &message);
        }
        None if live.is_empty() && create.is_none() => {
            conditions.clear(STALLED);
            conditions.clear(RECONCILING);
            let message = match (&next, object.spec.suspend) {
                (_, true) => "suspended before its first checkpoint".to_string(),
                (Some(next), _) => format!("the first checkpoint is due at {}", next.to_rfc3339()),
                (None, _) => "the schedule has no future tick".to_string(),
            };
            conditions.set(READY, false, WAITING_FOR_FIRST_TICK, &message);
        }
        None => {
            conditions.clear(STALLED);
            let message = "the first checkpoint is being made";
            conditions.set(RECONCILING, true, CHECKPOINT_IN_PROGRESS, message);
            conditions.set(READY, false, CHECKPOINT_IN_PROGRESS, message);
        }
    }
    let wait = next
        .map(|next| (next - now).to_std().unwrap_or_default())
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT);
    Decision {
        create,
        prune,
        status,
        requeue_after: Some(wait),
    }
}

/// The checkpoints retention lets go, among `live` (newest first). A checkpoint is kept when any
/// rule keeps it; one in progress or with clones in progress is always kept; with no retention,
/// all are kept. Stalled checkpoints do not count towards `keepLast`, and go once a newer one
/// exists.
fn prune(
    retention: Option<&Retention>,
    keep_within: Option<Duration>,
    live: &[&Child],
    now: DateTime<Utc>,
) -> Vec<String> {
    let Some(retention) = retention else {
        return Vec::new();
    };
    let keep_last = retention.keep_last.map(|n| n.max(0) as usize);
    let mut ready_seen = 0;
    let mut prune = Vec::new();
    for (position, child) in live.iter().enumerate() {
        let within = keep_within.is_some_and(|window| {
            (now - child.tick)
                .to_std()
                .map_or(true, |age| age <= window)
        });
        let by_count = match child.state {
            ChildState::Ready => {
                ready_seen += 1;
                keep_last.is_some_and(|n| ready_seen <= n)
            }
            ChildState::InProgress => true,
            ChildState::Stalled { .. } => position == 0,
        };
        if !(within || by_count || child.in_use) {
            prune.push(child.name.clone());
        }
    }
    prune
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DatabaseCheckpointScheduleSpec, GoDuration};
    use proptest::prelude::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn schedule(expression: &str, retention: Option<Retention>) -> DatabaseCheckpointSchedule {
        let spec: DatabaseCheckpointScheduleSpec = serde_json::from_value(serde_json::json!({
            "schedule": expression,
            "checkpointTemplate": {"spec": {"database": {"store": {"url": "memory:///"}, "path": "db"}}},
        }))
        .unwrap();
        let mut object = DatabaseCheckpointSchedule::new("nightly", spec);
        object.spec.retention = retention;
        object.metadata.creation_timestamp = Some(to_k8s_time(at(0)));
        object.metadata.generation = Some(1);
        object
    }

    fn child(tick: DateTime<Utc>, state: ChildState) -> Child {
        Child {
            name: checkpoint_name("nightly", tick),
            tick,
            state,
            checkpoint_id: None,
            in_use: false,
            deleting: false,
        }
    }

    #[test]
    fn every_interval_ticks_from_creation_and_not_at_it() {
        let object = schedule("@every 10s", None);
        let none = decide(&object, &[], at(9));
        assert_eq!(none.create, None);
        assert_eq!(none.requeue_after, Some(Duration::from_secs(1)));
        let first = decide(&object, &[], at(12));
        assert_eq!(
            first.create,
            Some(("nightly-20270115-080010".into(), at(10)))
        );
        assert_eq!(first.status.next_schedule_time, Some(to_k8s_time(at(20))));
    }

    #[test]
    fn an_outage_over_several_ticks_takes_one_catch_up_checkpoint() {
        let object = schedule("@every 10s", None);
        let made = [child(at(10), ChildState::Ready)];
        let decision = decide(&object, &made, at(47));
        assert_eq!(decision.create.map(|c| c.1), Some(at(40)));
        let mut again = object.clone();
        again.status = Some(decision.status);
        let made = [made[0].clone(), child(at(40), ChildState::InProgress)];
        assert_eq!(decide(&again, &made, at(49)).create, None);
    }

    #[test]
    fn cron_in_a_time_zone_ticks_at_local_time() {
        let mut object = schedule("0 2 * * *", None);
        object.spec.time_zone = Some("Europe/Berlin".into());
        // 2027-01-15 08:00:00 UTC is 09:00 in Berlin; the last 02:00 there was at 01:00 UTC.
        let decision = decide(&object, &[], at(86_400));
        let (_, tick) = decision.create.unwrap();
        assert_eq!(tick.format("%H:%M").to_string(), "01:00");
    }

    #[test]
    fn bad_expressions_and_zones_stall_with_their_reason() {
        for (expression, zone, reason) in [
            ("61 * * * *", None, INVALID_SCHEDULE),
            ("* * *", None, INVALID_SCHEDULE),
            ("@every 5s", None, INVALID_SCHEDULE),
            ("0 2 * * *", Some("Mars/Olympus"), INVALID_TIME_ZONE),
        ] {
            let mut object = schedule(expression, None);
            object.spec.time_zone = zone.map(String::from);
            let decision = decide(&object, &[], at(100));
            assert_eq!(decision.create, None, "{expression}");
            let stalled = decision
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == STALLED);
            assert_eq!(
                stalled.map(|c| c.reason.as_str()),
                Some(reason),
                "{expression}"
            );
        }
    }

    #[test]
    fn suspend_makes_nothing_and_has_no_next_tick() {
        let mut object = schedule("@every 10s", None);
        object.spec.suspend = true;
        let decision = decide(&object, &[], at(100));
        assert_eq!(decision.create, None);
        assert_eq!(decision.status.next_schedule_time, None);
    }

    #[test]
    fn the_newest_finished_run_decides_ready() {
        let object = schedule("@every 10s", None);
        let stalled = ChildState::Stalled {
            reason: "NotADatabase".into(),
            message: "no manifest".into(),
        };
        let made = [child(at(10), ChildState::Ready), child(at(20), stalled)];
        let decision = decide(&object, &made, at(21));
        let stalled = decision
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == STALLED)
            .unwrap();
        assert_eq!(stalled.reason, CHECKPOINT_STALLED);
        assert!(stalled.message.contains("NotADatabase"));
        let made = [made[0].clone(), child(at(20), ChildState::InProgress)];
        let decision = decide(&object, &made, at(21));
        let ready = decision
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert_eq!(ready.status, "True");
    }

    fn state() -> impl Strategy<Value = ChildState> {
        prop_oneof![
            Just(ChildState::InProgress),
            Just(ChildState::Ready),
            Just(ChildState::Stalled {
                reason: "X".into(),
                message: "y".into()
            }),
        ]
    }

    proptest! {
        /// Retention never prunes what a rule keeps, nor one in progress or in use, and with
        /// keepLast N exactly the newest N Ready checkpoints survive among the Ready ones.
        #[test]
        fn retention_keeps_what_a_rule_keeps(
            states in proptest::collection::vec((state(), any::<bool>()), 0..20),
            keep_last in proptest::option::of(1i32..5),
            keep_within_s in proptest::option::of(5u64..200),
        ) {
            let retention = (keep_last.is_some() || keep_within_s.is_some()).then(|| Retention {
                keep_last,
                keep_within: keep_within_s.map(|s| GoDuration(format!("{s}s"))),
            });
            let object = schedule("@every 10s", retention);
            let children: Vec<Child> = states.iter().enumerate().map(|(i, (state, in_use))| {
                let mut c = child(at(10 * (i as i64 + 1)), state.clone());
                c.in_use = *in_use;
                c
            }).collect();
            let now = at(10 * (children.len() as i64 + 1) - 1);
            let decision = decide(&object, &children, now);
            let mut ready_seen = 0;
            for c in children.iter().rev() {
                let pruned = decision.prune.contains(&c.name);
                if c.state == ChildState::Ready {
                    ready_seen += 1;
                }
                let age = (now - c.tick).num_seconds() as u64;
                let kept_by_rule = keep_within_s.is_some_and(|w| age <= w)
                    || (c.state == ChildState::Ready && keep_last.is_some_and(|n| ready_seen <= n as usize));
                if kept_by_rule || c.in_use || c.state == ChildState::InProgress {
                    prop_assert!(!pruned, "{} pruned", c.name);
                }
                if keep_last.is_some() && keep_within_s.is_none() && c.state == ChildState::Ready && !c.in_use {
                    prop_assert_eq!(pruned, ready_seen > keep_last.unwrap() as usize);
                }
            }
            if keep_last.is_none() && keep_within_s.is_none() {
                prop_assert!(decision.prune.is_empty());
            }
        }

        /// At most one checkpoint per decision, for a tick in (last, now], never an existing one.
        #[test]
        fn at_most_one_checkpoint_for_a_past_tick(gap in 0i64..1000, made in 0usize..5) {
            let object = schedule("@every 10s", None);
            let children: Vec<Child> = (0..made)
                .map(|i| child(at(10 * (i as i64 + 1)), ChildState::Ready))
                .collect();
            let now = at(10 * made as i64 + gap);
            if let Some((name, tick)) = decide(&object, &children, now).create {
                prop_assert!(tick <= now && tick > at(10 * made as i64));
                prop_assert!(!children.iter().any(|c| c.name == name));
            }
        }
    }
}
