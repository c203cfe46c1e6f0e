//! Prometheus metrics of the registry, rendered on `/metrics` through `atlantis_common::telemetry::Metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use atlantis_common::telemetry::Metrics;

/// Labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: &'static str,
    pub status: u16,
}

/// Labels of a request duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// The registry's metric families.
#[derive(Clone)]
pub struct RegistryMetrics {
    pub registry: Metrics,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub blobs_committed: Counter,
    pub manifests_pushed: Counter,
}

impl RegistryMetrics {
    /// Registers every family under the `atlantis_registry` prefix.
    pub fn new() -> RegistryMetrics {
        let registry = Metrics::new("atlantis_registry");
        let m = RegistryMetrics {
            registry: registry.clone(),
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 4.0, 10))
            }),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            blobs_committed: Counter::default(),
            manifests_pushed: Counter::default(),
        };
        registry.register(|r| {
            r.register("http_requests", "HTTP requests served", m.requests.clone());
            r.register(
                "http_request_duration_seconds",
                "Time to the response head",
                m.duration.clone(),
            );
            r.register(
                "blob_bytes_received",
                "Blob bytes received in uploads",
                m.bytes_received.clone(),
            );
            r.register(
                "blob_bytes_sent",
                "Blob bytes sent to clients",
                m.bytes_sent.clone(),
            );
            r.register(
                "blobs_committed",
                "Blob uploads verified and committed",
                m.blobs_committed.clone(),
            );
            r.register(
                "manifests_pushed",
                "Manifests stored",
                m.manifests_pushed.clone(),
            );
        });
        m
    }
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self::new()
    }
}
