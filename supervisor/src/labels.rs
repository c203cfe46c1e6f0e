//! Docker labels: how an Atlantis container describes itself, so a restarted supervisor rebuilds its
//! allocator and firewall from the engine alone (plus ZooKeeper's intent), never from a private file.
//!
//! `atlantis.managed=true` marks our containers; `atlantis.app`, `atlantis.env`, `atlantis.sha` and
//! `atlantis.container-id` describe them for humans and filters; `atlantis.deployed` holds the JSON
//! [`Deployed`] record (slot, ports, address, limits, dependencies, health check). Environment variables
//! and config data are not in labels (they may hold secrets).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use atlantis_common::api::supervisor::{ContainerSpec, Dependency, HealthCheck, PortBinding};
use atlantis_common::{AppName, ContainerId, EnvName, HostName, Sha};
use serde::{Deserialize, Serialize};

use crate::alloc::Reservation;

/// Marks a container as ours.
pub const MANAGED: &str = "atlantis.managed";
/// The Atlantis container ID.
pub const CONTAINER_ID: &str = "atlantis.container-id";
/// The app.
pub const APP: &str = "atlantis.app";
/// The env.
pub const ENV: &str = "atlantis.env";
/// The sha.
pub const SHA: &str = "atlantis.sha";
/// The supervisor host that started it.
pub const HOST: &str = "atlantis.host";
/// The JSON [`Deployed`] record.
pub const DEPLOYED: &str = "atlantis.deployed";

/// What the supervisor needs to know about a running container, as stored in its labels. Unknown fields
/// are tolerated, so a supervisor rolled back to an older version still adopts what a newer one started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// Atlantis ID.
    pub container_id: ContainerId,
    /// App.
    pub app: AppName,
    /// Sha.
    pub sha: Sha,
    /// Env.
    pub env: EnvName,
    /// Image reference.
    pub image: String,
    /// Allocator slot.
    pub slot: u32,
    /// CPU (thousandths of a core).
    pub cpu_millis: u32,
    /// Memory (MiB).
    pub memory_mb: u64,
    /// Published ports.
    pub ports: Vec<PortBinding>,
    /// Address on the container network.
    pub ip: Ipv4Addr,
    /// Allowed dependencies.
    pub dependencies: Vec<Dependency>,
    /// Health check.
    pub health: HealthCheck,
}

impl Deployed {
    /// The record of `spec` placed at `r`.
    pub fn new(spec: &ContainerSpec, r: &Reservation) -> Deployed {
        Deployed {
            container_id: spec.container_id.clone(),
            app: spec.app.clone(),
            sha: spec.sha.clone(),
            env: spec.env.clone(),
            image: spec.image.clone(),
            slot: r.slot,
            cpu_millis: r.cpu_millis,
            memory_mb: r.memory_mb,
            ports: r.ports.clone(),
            ip: r.ip,
            dependencies: spec.dependencies.clone(),
            health: spec.health.clone(),
        }
    }

    /// The allocator reservation it holds.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            slot: self.slot,
            cpu_millis: self.cpu_millis,
            memory_mb: self.memory_mb,
            ports: self.ports.clone(),
            ip: self.ip,
        }
    }

    /// The host port the health check targets (`None`: no check, running is healthy).
    pub fn health_host_port(&self) -> Option<u16> {
        let port = self
            .health
            .port
            .or_else(|| self.ports.first().map(|p| p.container_port))?;
        self.ports
            .iter()
            .find(|p| p.container_port == port)
            .map(|p| p.host_port)
    }

    /// The labels to put on the container.
    pub fn labels(&self, host: &HostName) -> HashMap<String, String> {
        HashMap::from([
            (MANAGED.to_owned(), "true".to_owned()),
            (CONTAINER_ID.to_owned(), self.container_id.to_string()),
            (APP.to_owned(), self.app.to_string()),
            (ENV.to_owned(), self.env.to_string()),
            (SHA.to_owned(), self.sha.to_string()),
            (HOST.to_owned(), host.to_string()),
            (
                DEPLOYED.to_owned(),
                serde_json::to_string(self).expect("Deployed serialises"),
            ),
        ])
    }

    /// Reads the record back; fails when the labels are missing, malformed or inconsistent.
    pub fn from_labels(labels: &HashMap<String, String>) -> Result<Deployed, String> {
        if labels.get(MANAGED).map(String::as_str) != Some("true") {
            return Err(format!("no {MANAGED}=true label"));
        }
        let raw = labels
            .get(DEPLOYED)
            .ok_or_else(|| format!("no {DEPLOYED} label"))?;
        let d: Deployed =
            serde_json::from_str(raw).map_err(|e| format!("bad {DEPLOYED} label: {e}"))?;
        if labels.get(CONTAINER_ID).map(String::as_str) != Some(d.container_id.as_str()) {
            return Err(format!(
                "{CONTAINER_ID} label does not match the {DEPLOYED} record"
            ));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_roundtrip_and_reject_tampering() {
        let d = Deployed {
            container_id: "web-1234567-prod-abcdef".parse().unwrap(),
            app: "web".parse().unwrap(),
            sha: "1234567".parse().unwrap(),
            env: "prod".parse().unwrap(),
            image: "x/y:1".into(),
            slot: 3,
            cpu_millis: 100,
            memory_mb: 64,
            ports: vec![PortBinding {
                container_port: 8080,
                host_port: 61012,
            }],
            ip: Ipv4Addr::new(172, 30, 0, 5),
            dependencies: vec![Dependency {
                name: "db".into(),
                address: Ipv4Addr::new(10, 0, 0, 1),
                port: 5432,
            }],
            health: HealthCheck::default(),
        };
        let host: HostName = "h1".parse().unwrap();
        let mut l = d.labels(&host);
        assert_eq!(Deployed::from_labels(&l).unwrap(), d);
        assert_eq!(d.health_host_port(), Some(61012));
        // A newer supervisor's extra field does not make the record unreadable.
        let mut newer: serde_json::Value = serde_json::from_str(&l[DEPLOYED]).unwrap();
        newer["from_the_future"] = 1.into();
        let mut l2 = l.clone();
        l2.insert(DEPLOYED.into(), newer.to_string());
        assert_eq!(Deployed::from_labels(&l2).unwrap(), d);
        l.insert(CONTAINER_ID.into(), "web-1234567-prod-zzzzzz".into());
        assert!(Deployed::from_labels(&l).is_err());
        l.remove(DEPLOYED);
        assert!(Deployed::from_labels(&l).is_err());
    }
}
