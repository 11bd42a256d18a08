//! [`Backoff`]: the exponential backoff, with jitter, between retries of transient failures.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, SystemTime};

/// Delays that double per attempt from `base` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub base: Duration,
    /// The longest delay, jitter included.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based): base × 2^(attempt−1), capped at `max`
    /// (and the doubling at 2^20, which passes any sensible `max`, so the shift stays in range);
    /// `jitter` in [0, 1) adds up to 20%, and the result still never exceeds `max`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let capped = self.base.saturating_mul(1u32 << exponent).min(self.max);
        let factor = 1.0 + 0.2 * jitter.clamp(0.0, 1.0);
        // What a Duration cannot hold (a `max` near Duration::MAX) is past the cap anyway.
        Duration::try_from_secs_f64(capped.as_secs_f64() * factor)
            .map_or(self.max, |jittered| jittered.min(self.max))
    }

    /// [`Backoff::delay`] with the jitter drawn from the clock, so that retries which failed
    /// together do not retry in step.
    pub fn jittered(&self, attempt: u32) -> Duration {
        let mut hasher = DefaultHasher::new();
        (attempt, SystemTime::now()).hash(&mut hasher);
        let jitter = (hasher.finish() % 1000) as f64 / 1000.0;
        self.delay(attempt, jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let backoff = Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        assert_eq!(backoff.delay(1, 0.0), Duration::from_secs(2));
        assert_eq!(backoff.delay(2, 0.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(4, 0.0), Duration::from_secs(16));
        assert_eq!(backoff.delay(30, 0.0), Duration::from_secs(60));
        assert_eq!(backoff.delay(30, 0.99), Duration::from_secs(60));
        let jittered = backoff.delay(2, 0.5);
        assert!(
            jittered > Duration::from_secs(4) && jittered <= Duration::from_secs(5),
            "{jittered:?}"
        );
    }

    #[test]
    fn huge_attempts_and_durations_saturate_at_the_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(u64::MAX / 2),
            max: Duration::MAX,
        };
        assert_eq!(backoff.delay(u32::MAX, 0.99), Duration::MAX);
        let jittered = backoff.jittered(u32::MAX);
        assert!(jittered >= backoff.delay(u32::MAX, 0.0), "{jittered:?}");
        let short = Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(1),
        };
        for attempt in [0, 1, 5, 100, u32::MAX] {
            let jittered = short.jittered(attempt);
            assert!(
                jittered >= short.delay(attempt, 0.0) && jittered <= short.max,
                "attempt {attempt}: {jittered:?}"
            );
        }
    }
}
