//! Prometheus metrics of the operator, served as text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<KindLabel, Histogram>,
    clone_duration: Histogram,
    verified_bytes: Counter,
    clones_in_flight: Gauge,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("slatedb_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0])
        });
        let clone_duration =
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]);
        let (verified_bytes, clones_in_flight, leader) =
            (Counter::default(), Gauge::default(), Gauge::default());
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "clone_duration_seconds",
            "Duration of clone work, start to Ready",
            clone_duration.clone(),
        );
        registry.register(
            "verified_bytes",
            "Bytes read to verify content",
            verified_bytes.clone(),
        );
        registry.register(
            "clones_in_flight",
            "Clone jobs running or queued",
            clones_in_flight.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            reconcile_duration,
            clone_duration,
            verified_bytes,
            clones_in_flight,
            leader,
        }
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile of `kind` and times it until the returned timer is dropped.
    pub fn reconcile(&self, kind: &'static str) -> ReconcileTimer {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
        // A histogram handle is a shared reference to the family's series.
        let histogram = self
            .reconcile_duration
            .get_or_create(&KindLabel { kind })
            .clone();
        ReconcileTimer {
            histogram,
            started: Instant::now(),
        }
    }

    pub fn error(&self, kind: &'static str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind,
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn clone_finished(&self, took: Duration, verified_bytes: u64) {
        self.clone_duration.observe(took.as_secs_f64());
        self.verified_bytes.inc_by(verified_bytes);
    }

    pub fn set_clones_in_flight(&self, n: usize) {
        self.clones_in_flight.set(n as i64);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
