//! Placement: which supervisors get the containers of a release. Pure: no I/O, no clock, no randomness;
//! the same fleet and request always give the same answer.
//!
//! Each container goes to the host with the lowest cost that still has a slot, the CPU and the memory:
//! cost = 2 x (copies of this release already on the host) + memory fraction in use after placing + CPU
//! fraction in use after placing (the cost of the Go original). The copies term spreads a release over
//! hosts; the fractions fill the emptiest host first. Ties go to the lower host name.
//!
//! Three shapes of request:
//! - [`Planner::per_zone`]: `n` containers in every zone (deploy, rollback, scale).
//! - [`Planner::spread`]: `total` containers over all zones, zones within one container of each other
//!   (the extra ones go to the zones with the most room).
//! - [`Planner::replace`]: `n` containers preferring one zone, then the others (re-placing the containers
//!   of a dead host).
//!
//! A request that does not fit fails whole, naming the zone and what is short, and leaves the planner as it
//! was. The planner keeps what it placed, so a batch of releases can be placed one after the other.

use std::collections::{BTreeMap, BTreeSet};

use atlantis_common::api::supervisor::{Resources, SupervisorRecord};
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

/// What one container takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// CPU, millicores.
    pub cpu_millis: u32,
    /// Memory, MiB.
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

#[derive(Debug, Clone)]
struct Cand {
    host: HostName,
    capacity: Resources,
    free: Resources,
    /// Copies of the release being placed (set per request).
    copies: u32,
}

impl Cand {
    fn fits(&self, s: Size) -> bool {
        self.free.slots >= 1
            && self.free.cpu_millis >= s.cpu_millis
            && self.free.memory_mb >= s.memory_mb
    }

    fn cost(&self, s: Size, copies: u32) -> f64 {
        let cap = self.capacity;
        let mem = frac(
            cap.memory_mb.saturating_sub(self.free.memory_mb) + s.memory_mb,
            cap.memory_mb,
        );
        let cpu = frac(
            u64::from(cap.cpu_millis.saturating_sub(self.free.cpu_millis))
                + u64::from(s.cpu_millis),
            u64::from(cap.cpu_millis),
        );
        2.0 * f64::from(copies) + mem + cpu
    }

    fn take(&mut self, s: Size) {
        self.free.slots -= 1;
        self.free.cpu_millis -= s.cpu_millis;
        self.free.memory_mb -= s.memory_mb;
    }
}

/// The fleet as placement sees it: free resources per host, grouped by zone, updated as it places.
#[derive(Debug, Clone)]
pub struct Planner {
    zones: BTreeMap<ZoneName, Vec<Cand>>,
}

impl Planner {
    /// A planner over `sups` (their `free` resources are the starting point).
    pub fn new(sups: &[SupervisorRecord]) -> Planner {
        let mut zones: BTreeMap<ZoneName, Vec<Cand>> = BTreeMap::new();
        for s in sups {
            zones.entry(s.zone.clone()).or_default().push(Cand {
                host: s.host.clone(),
                capacity: s.capacity,
                free: Resources {
                    slots: s.free.slots.min(s.capacity.slots),
                    cpu_millis: s.free.cpu_millis.min(s.capacity.cpu_millis),
                    memory_mb: s.free.memory_mb.min(s.capacity.memory_mb),
                },
                copies: 0,
            });
        }
        for hosts in zones.values_mut() {
            hosts.sort_by(|a, b| a.host.cmp(&b.host));
            hosts.dedup_by(|a, b| a.host == b.host);
        }
        Planner { zones }
    }

    /// The zones, in order.
    pub fn zones(&self) -> Vec<ZoneName> {
        self.zones.keys().cloned().collect()
    }

    /// What is free on `host` now.
    pub fn free(&self, host: &HostName) -> Option<Resources> {
        self.zones
            .values()
            .flatten()
            .find(|c| &c.host == host)
            .map(|c| c.free)
    }

    /// `need.per_zone` containers in every zone. `copies` counts containers of the same release already
    /// on each host.
    pub fn per_zone(
        &mut self,
        copies: &BTreeMap<HostName, u32>,
        need: Need,
    ) -> Result<Vec<Slot>, PlaceError> {
        let size = Size {
            cpu_millis: need.cpu_millis,
            memory_mb: need.memory_mb,
        };
        let wanted: Vec<(ZoneName, u32)> = self
            .zones
            .keys()
            .map(|z| (z.clone(), need.per_zone))
            .collect();
        self.place_counts(copies, &wanted, size)
    }

    /// `total` containers over every zone, zones within one container of each other; the extra ones go
    /// to the zones with the fewest slots in use (then the most free, then the lower name), so a batch of
    /// releases stays even over the zones as a whole.
    pub fn spread(
        &mut self,
        copies: &BTreeMap<HostName, u32>,
        total: u32,
        size: Size,
    ) -> Result<Vec<Slot>, PlaceError> {
        if self.zones.is_empty() {
            return Err(PlaceError::NoSupervisors);
        }
        let n = self.zones.len() as u32;
        let (base, extra) = (total / n, total % n);
        let mut order: Vec<(&ZoneName, u64, u64)> = self
            .zones
            .iter()
            .map(|(z, hosts)| {
                let used = hosts
                    .iter()
                    .map(|c| u64::from(c.capacity.slots.saturating_sub(c.free.slots)))
                    .sum();
                let free = hosts.iter().map(|c| u64::from(c.free.slots)).sum();
                (z, used, free)
            })
            .collect();
        order.sort_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| b.2.cmp(&a.2))
                .then_with(|| a.0.cmp(b.0))
        });
        let bonus: BTreeSet<ZoneName> = order
            .iter()
            .take(extra as usize)
            .map(|(z, _, _)| (*z).clone())
            .collect();
        let wanted: Vec<(ZoneName, u32)> = self
            .zones
            .keys()
            .map(|z| (z.clone(), base + u32::from(bonus.contains(z))))
            .collect();
        self.place_counts(copies, &wanted, size)
    }

    /// `n` containers in `prefer` as far as it has room, the rest in the other zones (lowest cost first,
    /// over all of them). Fails only when the whole fleet lacks room.
    pub fn replace(
        &mut self,
        copies: &BTreeMap<HostName, u32>,
        n: u32,
        prefer: &ZoneName,
        size: Size,
    ) -> Result<Vec<Slot>, PlaceError> {
        if self.zones.is_empty() {
            return Err(PlaceError::NoSupervisors);
        }
        let before = self.zones.clone();
        self.load_copies(copies);
        let mut out = Vec::new();
        for placed in 0..n {
            let mut best = None;
            if let Some(hosts) = self.zones.get(prefer) {
                best = pick(hosts, size).map(|i| (prefer.clone(), i));
            }
            if best.is_none() {
                best = self
                    .zones
                    .iter()
                    .filter(|(z, _)| *z != prefer)
                    .filter_map(|(z, hosts)| {
                        let i = pick(hosts, size)?;
                        let c = &hosts[i];
                        Some((c.cost(size, c.copies), z, i))
                    })
                    .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)))
                    .map(|(_, z, i)| (z.clone(), i));
            }
            let Some((zone, i)) = best else {
                let all: Vec<Cand> = self.zones.values().flatten().cloned().collect();
                let e = short(prefer.as_str(), &all, placed, n, size);
                self.zones = before;
                return Err(e);
            };
            out.push(self.take(&zone, i, size));
        }
        Ok(out)
    }

    /// Sets every host's copy count from `copies` (hosts not in it: 0).
    fn load_copies(&mut self, copies: &BTreeMap<HostName, u32>) {
        for c in self.zones.values_mut().flatten() {
            c.copies = if copies.is_empty() {
                0
            } else {
                copies.get(&c.host).copied().unwrap_or(0)
            };
        }
    }

    fn place_counts(
        &mut self,
        copies: &BTreeMap<HostName, u32>,
        wanted: &[(ZoneName, u32)],
        size: Size,
    ) -> Result<Vec<Slot>, PlaceError> {
        if self.zones.is_empty() {
            return Err(PlaceError::NoSupervisors);
        }
        self.load_copies(copies);
        let mut out = Vec::new();
        let mut touched: Vec<(ZoneName, Vec<Cand>)> = Vec::new();
        for (zone, n) in wanted {
            let Some(hosts) = self.zones.get(zone) else {
                continue;
            };
            touched.push((zone.clone(), hosts.clone()));
            for placed in 0..*n {
                let hosts = &self.zones[zone];
                let Some(i) = pick(hosts, size) else {
                    let e = short(zone.as_str(), hosts, placed, *n, size);
                    for (z, saved) in touched {
                        self.zones.insert(z, saved);
                    }
                    return Err(e);
                };
                out.push(self.take(zone, i, size));
            }
        }
        Ok(out)
    }

    fn take(&mut self, zone: &ZoneName, i: usize, size: Size) -> Slot {
        let c = &mut self.zones.get_mut(zone).expect("zone exists")[i];
        c.take(size);
        c.copies += 1;
        Slot {
            host: c.host.clone(),
            zone: zone.clone(),
        }
    }
}

/// The index of the cheapest host that fits (the first in name order on a tie).
fn pick(hosts: &[Cand], size: Size) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (i, c) in hosts.iter().enumerate() {
        if !c.fits(size) {
            continue;
        }
        let cost = c.cost(size, c.copies);
        if best.is_none_or(|(b, _)| cost < b) {
            best = Some((cost, i));
        }
    }
    best.map(|(_, i)| i)
}

/// Places `need.per_zone` containers in every zone of `sups` (see [`Planner::per_zone`]).
pub fn place(
    sups: &[SupervisorRecord],
    copies: &BTreeMap<HostName, u32>,
    need: Need,
) -> Result<Vec<Slot>, PlaceError> {
    Planner::new(sups).per_zone(copies, need)
}

fn frac(used: u64, cap: u64) -> f64 {
    if cap == 0 {
        1.0
    } else {
        used as f64 / cap as f64
    }
}

fn short(zone: &str, hosts: &[Cand], placed: u32, wanted: u32, need: Size) -> PlaceError {
    let slots: u32 = hosts.iter().map(|c| c.free.slots).sum();
    let cpu = hosts.iter().map(|c| c.free.cpu_millis).max().unwrap_or(0);
    let mem = hosts.iter().map(|c| c.free.memory_mb).max().unwrap_or(0);
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
        zone: zone.to_owned(),
        placed,
        wanted,
        need: format!(
            "{} millicores, {} MiB and a slot each",
            need.cpu_millis, need.memory_mb
        ),
        short: what.join("; "),
    }
}

#[cfg(test)]
mod tests;
