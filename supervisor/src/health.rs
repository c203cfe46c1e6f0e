//! Container health checks: `GET <path>` on a published port.
//!
//! A check passes on HTTP 200, or on any answer carrying `Server-Status: OK` or `Server-Status: DEGRADED`
//! (the health contract in docs/supervisor.md). Anything else (refused, timeout, other status) fails.
//! Proxies from the environment are ignored: checks go straight to the host's own ports.

use std::net::Ipv4Addr;
use std::time::Duration;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Passed.
    Pass,
    /// Failed, with the reason.
    Fail(String),
}

/// An HTTP prober.
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

impl Prober {
    /// A prober with its own connection settings (no proxy, no connection reuse between checks).
    pub fn new() -> Prober {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client without TLS builds");
        Prober { client }
    }

    /// Checks `http://ip:port<path>` once within `timeout`.
    pub async fn check(&self, ip: Ipv4Addr, port: u16, path: &str, timeout: Duration) -> Probe {
        let url = format!("http://{ip}:{port}{path}");
        match self.client.get(&url).timeout(timeout).send().await {
            Ok(r) => {
                let status = r
                    .headers()
                    .get("server-status")
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.trim().to_ascii_uppercase());
                match (r.status().as_u16(), status.as_deref()) {
                    (_, Some("OK" | "DEGRADED")) | (200, None) => Probe::Pass,
                    (code, s) => {
                        Probe::Fail(format!("{url} answered {code} (Server-Status {s:?})"))
                    }
                }
            }
            Err(e) => Probe::Fail(format!("{url}: {e}")),
        }
    }
}
