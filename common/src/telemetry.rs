//! Telemetry: tracing to stderr and a Prometheus registry every service exposes on `/metrics`.
//!
//! Log lines carry fields first, then a capitalised sentence. `RUST_LOG` filters (default `info`);
//! `ATLANTIS_LOG_FORMAT=json` switches to JSON lines.

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Installs the global tracing subscriber writing to stderr. Safe to call more than once (tests): later
/// calls do nothing.
pub fn init(service: &'static str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ATLANTIS_LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "Telemetry initialised.");
    }
}

/// A shareable Prometheus registry. Services register their metric families at build time and render the
/// registry from their `/metrics` handler.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    /// A registry whose metric names all start with `prefix_` (for example `atlantis_router`).
    pub fn new(prefix: &str) -> Self {
        Metrics {
            registry: Arc::new(Mutex::new(Registry::with_prefix(prefix))),
        }
    }

    /// Runs `f` with the registry to register metric families.
    pub fn register<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut reg)
    }

    /// Renders every registered family in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::warn!(error = %e, "Cannot encode metrics.");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn renders_registered_counters() {
        let m = Metrics::new("atlantis_test");
        let c: Counter = Counter::default();
        m.register(|r| r.register("requests", "Requests served", c.clone()));
        c.inc_by(3);
        let text = m.render();
        assert!(text.contains("atlantis_test_requests_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
