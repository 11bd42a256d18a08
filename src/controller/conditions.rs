//! Condition bookkeeping per the Kubernetes API conventions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets condition `type_` in `conditions`. `lastTransitionTime` moves only when the status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    let transition = match conditions.iter().find(|c| c.type_ == type_) {
        Some(existing) if existing.status == status => existing.last_transition_time.clone(),
        _ => now.clone(),
    };
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: transition,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Removes condition `type_`; used for abnormal-true conditions (`Stalled`, `Reconciling`), which
/// are present only while true.
pub fn clear_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t1 = Time(Timestamp::from_second(1).unwrap());
        let t2 = Time(Timestamp::from_second(2).unwrap());
        let mut conditions = vec![];
        set_condition(
            &mut conditions,
            "Ready",
            false,
            "Progressing",
            "",
            Some(1),
            &t1,
        );
        set_condition(&mut conditions, "Ready", false, "Other", "m", Some(2), &t2);
        assert_eq!(conditions[0].last_transition_time, t1);
        assert_eq!(conditions[0].reason, "Other");
        set_condition(
            &mut conditions,
            "Ready",
            true,
            "Succeeded",
            "",
            Some(2),
            &t2,
        );
        assert_eq!(conditions[0].last_transition_time, t2);
        assert!(is_true(&conditions, "Ready"));
        clear_condition(&mut conditions, "Ready");
        assert!(conditions.is_empty());
    }
}
