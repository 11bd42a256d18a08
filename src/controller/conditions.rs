//! Condition bookkeeping per the Kubernetes API conventions: [`Conditions`] edits one status's
//! list at one generation and time.

use crate::api::conditions::{READY, RECONCILING, STALLED};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Whether condition `type_` is present and true.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The reason of condition `type_` while it is true.
pub fn true_reason<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.as_str())
}

/// One status's conditions, edited for one generation at one time.
pub struct Conditions<'a> {
    list: &'a mut Vec<Condition>,
    generation: Option<i64>,
    now: Time,
}

impl<'a> Conditions<'a> {
    pub fn new(list: &'a mut Vec<Condition>, generation: Option<i64>, now: Time) -> Self {
        Conditions {
            list,
            generation,
            now,
        }
    }

    /// Sets condition `type_`; `lastTransitionTime` moves only when its status changes.
    pub fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" };
        let transition = match self.list.iter().find(|c| c.type_ == type_) {
            Some(existing) if existing.status == status => existing.last_transition_time.clone(),
            _ => self.now.clone(),
        };
        self.list.retain(|c| c.type_ != type_);
        self.list.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: transition,
        });
        self.list.sort_by(|a, b| a.type_.cmp(&b.type_));
    }

    /// Removes condition `type_`: the abnormal-true ones (`Stalled`, `Reconciling`) are present
    /// only while true.
    pub fn clear(&mut self, type_: &str) {
        self.list.retain(|c| c.type_ != type_);
    }

    pub fn is_true(&self, type_: &str) -> bool {
        is_true(self.list, type_)
    }

    /// A permanent failure: `Stalled` and `Ready=False` with its reason and message.
    pub fn stall(&mut self, reason: &str, message: &str) {
        self.set(STALLED, true, reason, message);
        self.set(READY, false, reason, message);
        self.clear(RECONCILING);
    }

    /// A transient failure being retried: `Reconciling`, and `Ready=False` unless the object was
    /// Ready (a blip does not take that away). Returns whether it stays Ready.
    pub fn retrying(&mut self, reason: &str, message: &str) -> bool {
        self.set(RECONCILING, true, reason, message);
        self.clear(STALLED);
        let stays_ready = self.is_true(READY);
        if !stays_ready {
            self.set(READY, false, reason, message);
        }
        stays_ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut list = vec![];
        Conditions::new(&mut list, Some(1), at(1)).set(READY, false, "Progressing", "");
        Conditions::new(&mut list, Some(2), at(2)).set(READY, false, "Other", "m");
        assert_eq!(list[0].last_transition_time, at(1));
        assert_eq!(list[0].reason, "Other");
        assert_eq!(list[0].observed_generation, Some(2));
        let mut conditions = Conditions::new(&mut list, Some(2), at(2));
        conditions.set(READY, true, "Succeeded", "");
        assert!(conditions.is_true(READY));
        conditions.clear(READY);
        assert!(list.is_empty());
    }

    #[test]
    fn stall_and_retrying_are_each_others_opposite_and_keep_ready() {
        let mut list = vec![];
        let mut conditions = Conditions::new(&mut list, Some(1), at(1));
        conditions.stall("NotADatabase", "no manifest");
        assert!(conditions.is_true(STALLED) && !conditions.is_true(READY));
        assert!(!conditions.retrying("StoreTimeout", "slow"));
        assert!(conditions.is_true(RECONCILING) && !conditions.is_true(STALLED));
        assert_eq!(true_reason(&list, RECONCILING), Some("StoreTimeout"));
        let mut conditions = Conditions::new(&mut list, Some(1), at(2));
        conditions.set(READY, true, "Succeeded", "");
        conditions.clear(RECONCILING);
        assert!(
            conditions.retrying("StoreTimeout", "slow"),
            "a blip keeps Ready"
        );
        assert!(is_true(&list, READY) && is_true(&list, RECONCILING));
    }
}
