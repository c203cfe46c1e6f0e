//! Prometheus metrics of the supervisor (`/metrics`).

use std::time::Duration;

use atlantis_common::api::supervisor::{ContainerState, Resources};
use atlantis_common::telemetry::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// The supervisor's metric families.
#[derive(Clone)]
pub struct SupervisorMetrics {
    /// The registry they live in.
    pub registry: Metrics,
    deploys: Family<Vec<(String, String)>, Counter>,
    deploy_seconds: Histogram,
    transitions: Family<Vec<(String, String)>, Counter>,
    reconcile_passes: Counter,
    containers: Gauge,
    free_slots: Gauge,
}

impl Default for SupervisorMetrics {
    fn default() -> Self {
        SupervisorMetrics::new()
    }
}

impl SupervisorMetrics {
    /// Registers the families in a new registry prefixed `atlantis_supervisor`.
    pub fn new() -> SupervisorMetrics {
        let registry = Metrics::new("atlantis_supervisor");
        let m = SupervisorMetrics {
            registry: registry.clone(),
            deploys: Family::default(),
            deploy_seconds: Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            transitions: Family::default(),
            reconcile_passes: Counter::default(),
            containers: Gauge::default(),
            free_slots: Gauge::default(),
        };
        registry.register(|r| {
            r.register("deploys", "Deploys by result code", m.deploys.clone());
            r.register(
                "deploy_seconds",
                "Time from deploy request to healthy or failed",
                m.deploy_seconds.clone(),
            );
            r.register(
                "transitions",
                "Container lifecycle transitions by target state",
                m.transitions.clone(),
            );
            r.register(
                "reconcile_passes",
                "Reconcile passes completed",
                m.reconcile_passes.clone(),
            );
            r.register("containers", "Containers held", m.containers.clone());
            r.register("free_slots", "Free container slots", m.free_slots.clone());
        });
        m
    }

    pub(crate) fn deploy(&self, result: &str, took: Duration) {
        self.deploys
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
        self.deploy_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn transition(&self, to: ContainerState) {
        let name = serde_json::to_value(to)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.transitions
            .get_or_create(&vec![("to".to_owned(), name)])
            .inc();
    }

    pub(crate) fn reconcile_pass(&self) {
        self.reconcile_passes.inc();
    }

    pub(crate) fn set_free(&self, free: &Resources, containers: usize) {
        self.free_slots.set(i64::from(free.slots));
        self.containers.set(containers as i64);
    }
}
