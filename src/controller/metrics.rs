//! Prometheus metrics of the operator, served as text on `/metrics`.

use crate::engine::{store_stats, Operation};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<KindLabel, Histogram>,
    clone_duration: Histogram,
    verified_bytes: Counter,
    health_checks: Counter,
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
        let health_checks = Counter::default();
        registry.register(
            "health_checks",
            "Health checks of Ready clones' data completed",
            health_checks.clone(),
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
        registry.register_collector(Box::new(StoreTraffic));
        Metrics {
            registry,
            reconciles,
            errors,
            reconcile_duration,
            clone_duration,
            verified_bytes,
            health_checks,
            clones_in_flight,
            leader,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabel {
    fault: &'static str,
}

/// The engine's process-wide object-store counters, read at scrape time.
#[derive(Debug)]
struct StoreTraffic;

impl Collector for StoreTraffic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = store_stats();
        let mut requests = encoder.encode_descriptor(
            "store_requests",
            "Object-store requests sent (every attempt counts)",
            None,
            MetricType::Counter,
        )?;
        for operation in Operation::ALL {
            let value = ConstCounter::new(stats.requests(operation));
            value.encode(requests.encode_family(&OperationLabel {
                operation: operation.name(),
            })?)?;
        }
        let retries = ConstCounter::new(stats.retries());
        retries.encode(encoder.encode_descriptor(
            "store_retries",
            "Object-store requests repeated after a transient failure",
            None,
            retries.metric_type(),
        )?)?;
        let (transient, denied) = stats.injected();
        if transient + denied > 0 {
            let mut injected = encoder.encode_descriptor(
                "store_injected_faults",
                "Faults injected by the SLATEDB_OPERATOR_FAULTS test hook",
                None,
                MetricType::Counter,
            )?;
            for (fault, count) in [("transient", transient), ("denied", denied)] {
                ConstCounter::new(count).encode(injected.encode_family(&FaultLabel { fault })?)?;
            }
        }
        Ok(())
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
    pub fn reconcile(&self, kind: &str) -> ReconcileTimer {
        let kind = KindLabel { kind: kind.into() };
        self.reconciles.get_or_create(&kind).inc();
        // A histogram handle is a shared reference to the family's series.
        let histogram = self.reconcile_duration.get_or_create(&kind).clone();
        ReconcileTimer {
            histogram,
            started: Instant::now(),
        }
    }

    pub fn error(&self, kind: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn clone_finished(&self, took: Duration, verified_bytes: u64) {
        self.clone_duration.observe(took.as_secs_f64());
        self.verified_bytes.inc_by(verified_bytes);
    }

    pub fn health_checked(&self) {
        self.health_checks.inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_traffic_is_served() {
        let store = crate::engine::Store::open(&crate::engine::StoreConfig {
            url: "memory:///".into(),
            ..Default::default()
        })
        .expect("memory store");
        let listed = store.main.list_with_delimiter(None).await;
        assert!(listed.is_ok());
        let text = Metrics::default().encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("slatedb_operator_store_requests_total{operation=\"list\"}"))
            .unwrap_or_else(|| panic!("no list requests in:\n{text}"));
        let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 1, "{line}");
        assert!(
            text.contains("# TYPE slatedb_operator_store_retries counter"),
            "{text}"
        );
    }
}
