//! Prometheus metrics: requests by pool and status class, latency to response headers, backend health.
//!
//! Hot-path handles are created once per pool ([`PoolMetrics`]), so counting a request is a few atomic
//! adds, with no label allocation.

use atlantis_common::telemetry::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Pool name (`-` when no pool was chosen).
    pub pool: String,
    /// Status class: `1xx` .. `5xx`.
    pub code: String,
}

/// Labels of per-pool families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Labels of per-backend families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Pool name.
    pub pool: String,
    /// `host:port`.
    pub backend: String,
}

/// The router's metric families.
#[derive(Clone)]
pub struct RouterMetrics {
    /// The registry they are in.
    pub registry: Metrics,
    requests: Family<RequestLabels, Counter>,
    latency: Family<PoolLabels, Histogram>,
    health: Family<BackendLabels, Gauge>,
    /// Table compilations.
    pub compiles: Counter,
    /// Rules compiled (cache misses).
    pub rules_compiled: Counter,
    /// Configuration nodes refused as invalid.
    pub invalid_nodes: Gauge,
    /// Refusals logged: one per invalid version of a node (not one per table rebuild).
    pub invalid_logged: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl RouterMetrics {
    /// Registers the families in a new `atlantis_router` registry.
    pub fn new() -> RouterMetrics {
        let registry = Metrics::new("atlantis_router");
        let m = RouterMetrics {
            registry: registry.clone(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            health: Family::default(),
            compiles: Counter::default(),
            rules_compiled: Counter::default(),
            invalid_nodes: Gauge::default(),
            invalid_logged: Counter::default(),
        };
        registry.register(|r| {
            r.register(
                "requests",
                "Requests answered, by pool and status class",
                m.requests.clone(),
            );
            r.register(
                "request_duration_seconds",
                "Time to response headers, by pool",
                m.latency.clone(),
            );
            r.register(
                "backend_health",
                "Backend health: 0 OK, 1 DEGRADED, 2 CRITICAL, 3 MAINTENANCE, 4 UNKNOWN",
                m.health.clone(),
            );
            r.register(
                "table_compiles",
                "Routing table compilations",
                m.compiles.clone(),
            );
            r.register(
                "rules_compiled",
                "Rules parsed (rule cache misses)",
                m.rules_compiled.clone(),
            );
            r.register(
                "invalid_config_nodes",
                "Configuration nodes refused as invalid",
                m.invalid_nodes.clone(),
            );
            r.register(
                "invalid_config_refusals",
                "Invalid configuration node versions refused (each logged once)",
                m.invalid_logged.clone(),
            );
        });
        m
    }

    /// Hot-path handles for `pool`.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        let class = |c: &str| {
            self.requests
                .get_or_create(&RequestLabels {
                    pool: pool.into(),
                    code: c.into(),
                })
                .clone()
        };
        PoolMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency: self
                .latency
                .get_or_create(&PoolLabels { pool: pool.into() })
                .clone(),
        }
    }

    /// The health gauge of one backend.
    pub fn backend_health(&self, pool: &str, backend: &str) -> Gauge {
        self.health
            .get_or_create(&BackendLabels {
                pool: pool.into(),
                backend: backend.into(),
            })
            .clone()
    }

    /// Drops a removed backend's series.
    pub fn forget_backend(&self, pool: &str, backend: &str) {
        self.health.remove(&BackendLabels {
            pool: pool.into(),
            backend: backend.into(),
        });
    }
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-pool handles.
#[derive(Clone)]
pub struct PoolMetrics {
    by_class: [Counter; 5],
    latency: Histogram,
}

impl PoolMetrics {
    /// Counts one answer.
    pub fn record(&self, status: u16, seconds: f64) {
        let i = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[i].inc();
        self.latency.observe(seconds);
    }
}
