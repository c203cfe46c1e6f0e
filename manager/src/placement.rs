//! Placement: which supervisors get the containers of a release.
//!
//! Every zone of the region gets `instances` containers. Within a zone each container goes to the host
//! with the lowest cost that still has a slot, the CPU and the memory: cost = 2 x (copies of this release
//! already on the host) + memory fraction in use after placing + CPU fraction in use after placing. The
//! copies term spreads a release over hosts; the fractions fill the emptiest host first. If a zone lacks
//! room the whole placement fails, naming the zone and what is short, before anything starts.

use std::collections::{BTreeMap, BTreeSet};

use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::{HostName, ZoneName};

/// One container to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The host.
    pub host: HostName,
    /// Its zone.
    pub zone: ZoneName,
}

/// What a placement needs per container.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    /// Containers per zone.
    pub per_zone: u32,
    /// CPU per container, millicores.
    pub cpu_millis: u32,
    /// Memory per container, MiB.
    pub memory_mb: u64,
}

/// Why placement failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// No supervisor is registered at all.
    #[error("no supervisor is registered in this region")]
    NoSupervisors,
    /// A zone has too little room.
    #[error("zone {zone} has room for {placed} of {wanted} containers ({need}); short: {short}")]
    Short {
        /// The zone.
        zone: String,
        /// How many fit.
        placed: u32,
        /// How many were asked for.
        wanted: u32,
        /// What each container needs.
        need: String,
        /// What ran out first.
        short: String,
    },
}

/// Places `need.per_zone` containers in every zone of `sups`. `copies` counts containers of the same
/// release already on each host.
pub fn place(
    sups: &[SupervisorRecord],
    copies: &BTreeMap<HostName, u32>,
    need: Need,
) -> Result<Vec<Slot>, PlaceError> {
    if sups.is_empty() {
        return Err(PlaceError::NoSupervisors);
    }
    let zones: BTreeSet<&ZoneName> = sups.iter().map(|s| &s.zone).collect();
    let mut out = Vec::new();
    for zone in zones {
        let mut hosts: Vec<(SupervisorRecord, u32)> = sups
            .iter()
            .filter(|s| &s.zone == zone)
            .map(|s| (s.clone(), copies.get(&s.host).copied().unwrap_or(0)))
            .collect();
        for placed in 0..need.per_zone {
            let best = hosts
                .iter_mut()
                .filter(|(s, _)| {
                    s.free.slots >= 1
                        && s.free.cpu_millis >= need.cpu_millis
                        && s.free.memory_mb >= need.memory_mb
                })
                .map(|(s, c)| {
                    let cap = s.capacity;
                    let mem = frac(
                        cap.memory_mb.saturating_sub(s.free.memory_mb) + need.memory_mb,
                        cap.memory_mb,
                    );
                    let cpu = frac(
                        u64::from(
                            cap.cpu_millis.saturating_sub(s.free.cpu_millis) + need.cpu_millis,
                        ),
                        u64::from(cap.cpu_millis),
                    );
                    (2.0 * f64::from(*c) + mem + cpu, s, c)
                })
                .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.host.cmp(&b.1.host)));
            let Some((_, s, c)) = best else {
                return Err(short(zone, &hosts, placed, need));
            };
            s.free.slots -= 1;
            s.free.cpu_millis -= need.cpu_millis;
            s.free.memory_mb -= need.memory_mb;
            *c += 1;
            out.push(Slot {
                host: s.host.clone(),
                zone: zone.clone(),
            });
        }
    }
    Ok(out)
}

fn frac(used: u64, cap: u64) -> f64 {
    if cap == 0 {
        1.0
    } else {
        used as f64 / cap as f64
    }
}

fn short(
    zone: &ZoneName,
    hosts: &[(SupervisorRecord, u32)],
    placed: u32,
    need: Need,
) -> PlaceError {
    let slots: u32 = hosts.iter().map(|(s, _)| s.free.slots).sum();
    let cpu = hosts
        .iter()
        .map(|(s, _)| s.free.cpu_millis)
        .max()
        .unwrap_or(0);
    let mem = hosts
        .iter()
        .map(|(s, _)| s.free.memory_mb)
        .max()
        .unwrap_or(0);
    let mut what = Vec::new();
    if slots == 0 {
        what.push("no free slot".to_owned());
    }
    if cpu < need.cpu_millis {
        what.push(format!(
            "CPU: largest free {cpu} millicores < {} needed",
            need.cpu_millis
        ));
    }
    if mem < need.memory_mb {
        what.push(format!(
            "memory: largest free {mem} MiB < {} MiB needed",
            need.memory_mb
        ));
    }
    if what.is_empty() {
        what.push("no single host has a slot, the CPU and the memory together".into());
    }
    PlaceError::Short {
        zone: zone.to_string(),
        placed,
        wanted: need.per_zone,
        need: format!(
            "{} millicores, {} MiB and a slot each",
            need.cpu_millis, need.memory_mb
        ),
        short: what.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlantis_common::api::supervisor::Resources;

    fn sup(host: &str, zone: &str, slots: u32, cpu: u32, mem: u64) -> SupervisorRecord {
        let r = Resources {
            slots,
            cpu_millis: cpu,
            memory_mb: mem,
        };
        SupervisorRecord {
            version: 1,
            software_version: "t".into(),
            address: "http://x".into(),
            host: host.parse().unwrap(),
            zone: zone.parse().unwrap(),
            capacity: r,
            free: r,
        }
    }

    fn need(n: u32) -> Need {
        Need {
            per_zone: n,
            cpu_millis: 100,
            memory_mb: 64,
        }
    }

    #[test]
    fn spreads_over_hosts_and_zones() {
        let sups = vec![
            sup("a1", "a", 4, 1000, 512),
            sup("a2", "a", 4, 1000, 512),
            sup("b1", "b", 4, 1000, 512),
        ];
        let p = place(&sups, &BTreeMap::new(), need(2)).unwrap();
        let hosts: Vec<&str> = p.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(hosts, ["a1", "a2", "b1", "b1"]);
    }

    #[test]
    fn existing_copies_push_away() {
        let sups = vec![sup("a1", "a", 4, 1000, 512), sup("a2", "a", 4, 1000, 512)];
        let copies = BTreeMap::from([("a1".parse().unwrap(), 1)]);
        let p = place(&sups, &copies, need(1)).unwrap();
        assert_eq!(p[0].host.as_str(), "a2");
    }

    #[test]
    fn a_short_zone_fails_everything_and_says_why() {
        let sups = vec![sup("a1", "a", 4, 1000, 512), sup("b1", "b", 1, 1000, 512)];
        let e = place(&sups, &BTreeMap::new(), need(2)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("zone b has room for 1 of 2"), "{msg}");
        assert!(msg.contains("no free slot"), "{msg}");
        let e = place(
            &sups,
            &BTreeMap::new(),
            Need {
                per_zone: 1,
                cpu_millis: 100,
                memory_mb: 4096,
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("memory: largest free 512 MiB"),
            "{e}"
        );
        assert_eq!(
            place(&[], &BTreeMap::new(), need(1)).unwrap_err(),
            PlaceError::NoSupervisors
        );
    }
}
