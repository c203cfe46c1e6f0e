//! The allocator: slots, host ports, container addresses, CPU and memory of one host.
//!
//! It is pure bookkeeping and holds no private file: at start the supervisor rebuilds it from the labels
//! of the containers Docker runs ([`Allocator::restore`]). A slot fixes a container's host ports and its
//! address on the container network, so the firewall rules derived from it are the same after a restart.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::{PortBinding, Resources};

/// The fixed shape of the allocator.
#[derive(Debug, Clone, Copy)]
pub struct AllocConfig {
    /// Total capacity.
    pub capacity: Resources,
    /// First host port.
    pub min_port: u16,
    /// Host ports per slot.
    pub per_slot: u16,
    /// The container network (its `.1` is the gateway, slot `i` is `.2 + i`).
    pub subnet: Ipv4Addr,
}

/// What one container holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Its slot.
    pub slot: u32,
    /// CPU (thousandths of a core).
    pub cpu_millis: u32,
    /// Memory (MiB).
    pub memory_mb: u64,
    /// Container port to host port.
    pub ports: Vec<PortBinding>,
    /// Address on the container network.
    pub ip: Ipv4Addr,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Not enough of a resource is free.
    #[error("no capacity: {resource} requested {requested}, free {free} of {total}")]
    NoCapacity {
        resource: &'static str,
        requested: u64,
        free: u64,
        total: u64,
    },
    /// More ports than a slot has.
    #[error("{requested} ports requested, a container may publish at most {max}")]
    TooManyPorts { requested: usize, max: u16 },
    /// The container already holds a reservation.
    #[error("container {0} already has a reservation")]
    Duplicate(ContainerId),
    /// A restored reservation collides with another (two containers claim one slot), or does not fit.
    #[error("cannot restore {id}: {reason}")]
    Inconsistent { id: ContainerId, reason: String },
}

/// The allocator.
#[derive(Debug, Clone)]
pub struct Allocator {
    cfg: AllocConfig,
    held: BTreeMap<ContainerId, Reservation>,
}

impl Allocator {
    /// An empty allocator.
    pub fn new(cfg: AllocConfig) -> Allocator {
        Allocator {
            cfg,
            held: BTreeMap::new(),
        }
    }

    /// The capacity.
    pub fn capacity(&self) -> Resources {
        self.cfg.capacity
    }

    /// What is free now.
    pub fn free(&self) -> Resources {
        let used_cpu: u64 = self.held.values().map(|r| u64::from(r.cpu_millis)).sum();
        let used_mem: u64 = self.held.values().map(|r| r.memory_mb).sum();
        let c = self.cfg.capacity;
        Resources {
            slots: c.slots.saturating_sub(self.held.len() as u32),
            cpu_millis: u64::from(c.cpu_millis).saturating_sub(used_cpu) as u32,
            memory_mb: c.memory_mb.saturating_sub(used_mem),
        }
    }

    /// The reservation of `id`.
    pub fn get(&self, id: &ContainerId) -> Option<&Reservation> {
        self.held.get(id)
    }

    /// Every reservation.
    pub fn all(&self) -> &BTreeMap<ContainerId, Reservation> {
        &self.held
    }

    /// Host ports of `slot`.
    fn slot_ports(&self, slot: u32, container_ports: &[u16]) -> Vec<PortBinding> {
        let base = u32::from(self.cfg.min_port) + slot * u32::from(self.cfg.per_slot);
        container_ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortBinding {
                container_port: *p,
                host_port: (base + i as u32) as u16,
            })
            .collect()
    }

    /// The container address of `slot`.
    pub fn slot_ip(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cfg.subnet) + 2 + slot)
    }

    /// Reserves a slot, its host ports and address, CPU and memory for `id`, or says clearly what is short.
    pub fn reserve(
        &mut self,
        id: &ContainerId,
        cpu_millis: u32,
        memory_mb: u64,
        container_ports: &[u16],
    ) -> Result<Reservation, AllocError> {
        if self.held.contains_key(id) {
            return Err(AllocError::Duplicate(id.clone()));
        }
        if container_ports.len() > usize::from(self.cfg.per_slot) {
            return Err(AllocError::TooManyPorts {
                requested: container_ports.len(),
                max: self.cfg.per_slot,
            });
        }
        let free = self.free();
        let c = self.cfg.capacity;
        if free.slots == 0 {
            return Err(AllocError::NoCapacity {
                resource: "slots",
                requested: 1,
                free: 0,
                total: c.slots.into(),
            });
        }
        if cpu_millis > free.cpu_millis {
            return Err(AllocError::NoCapacity {
                resource: "cpu_millis",
                requested: cpu_millis.into(),
                free: free.cpu_millis.into(),
                total: c.cpu_millis.into(),
            });
        }
        if memory_mb > free.memory_mb {
            return Err(AllocError::NoCapacity {
                resource: "memory_mb",
                requested: memory_mb,
                free: free.memory_mb,
                total: c.memory_mb,
            });
        }
        let used: std::collections::BTreeSet<u32> = self.held.values().map(|r| r.slot).collect();
        let slot = (0..c.slots)
            .find(|s| !used.contains(s))
            .expect("a free slot exists when free.slots > 0");
        let r = Reservation {
            slot,
            cpu_millis,
            memory_mb,
            ports: self.slot_ports(slot, container_ports),
            ip: self.slot_ip(slot),
        };
        self.held.insert(id.clone(), r.clone());
        Ok(r)
    }

    /// Takes back a reservation read from a running container's labels. It must be exactly what
    /// [`Allocator::reserve`] would have given for its slot, and must not collide with another.
    pub fn restore(&mut self, id: &ContainerId, r: Reservation) -> Result<(), AllocError> {
        let bad = |reason: String| {
            Err(AllocError::Inconsistent {
                id: id.clone(),
                reason,
            })
        };
        if self.held.contains_key(id) {
            return bad("restored twice".into());
        }
        if r.slot >= self.cfg.capacity.slots {
            return bad(format!(
                "slot {} is beyond the {} configured slots",
                r.slot, self.cfg.capacity.slots
            ));
        }
        if let Some((other, _)) = self.held.iter().find(|(_, o)| o.slot == r.slot) {
            return bad(format!("slot {} is already held by {other}", r.slot));
        }
        let cports: Vec<u16> = r.ports.iter().map(|p| p.container_port).collect();
        if cports.len() > usize::from(self.cfg.per_slot)
            || self.slot_ports(r.slot, &cports) != r.ports
        {
            return bad("its host ports do not match its slot under this configuration".into());
        }
        if r.ip != self.slot_ip(r.slot) {
            return bad(format!("address {} does not match slot {}", r.ip, r.slot));
        }
        // Capacity may have shrunk in the config; a running container is kept anyway (free saturates at 0).
        self.held.insert(id.clone(), r);
        Ok(())
    }

    /// Releases `id`'s reservation.
    pub fn release(&mut self, id: &ContainerId) -> Option<Reservation> {
        self.held.remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(slots: u32) -> Allocator {
        Allocator::new(AllocConfig {
            capacity: Resources {
                slots,
                cpu_millis: 2000,
                memory_mb: 1024,
            },
            min_port: 61000,
            per_slot: 4,
            subnet: Ipv4Addr::new(172, 30, 0, 0),
        })
    }

    fn id(n: u32) -> ContainerId {
        format!("app-1234567-prod-{n:06}").parse().unwrap()
    }

    #[test]
    fn reserves_and_releases() {
        let mut a = alloc(3);
        let r = a.reserve(&id(1), 500, 256, &[8080, 9090]).unwrap();
        assert_eq!(r.slot, 0);
        assert_eq!(r.ip, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(
            r.ports,
            vec![
                PortBinding {
                    container_port: 8080,
                    host_port: 61000
                },
                PortBinding {
                    container_port: 9090,
                    host_port: 61001
                }
            ]
        );
        let r2 = a.reserve(&id(2), 500, 256, &[8080]).unwrap();
        assert_eq!((r2.slot, r2.ports[0].host_port), (1, 61004));
        assert_eq!(
            a.free(),
            Resources {
                slots: 1,
                cpu_millis: 1000,
                memory_mb: 512
            }
        );
        assert_eq!(
            a.reserve(&id(1), 1, 1, &[]),
            Err(AllocError::Duplicate(id(1)))
        );
        a.release(&id(1)).unwrap();
        // The lowest free slot is reused.
        assert_eq!(a.reserve(&id(3), 1, 1, &[]).unwrap().slot, 0);
    }

    #[test]
    fn refuses_clearly_when_full() {
        let mut a = alloc(2);
        let e = a.reserve(&id(1), 3000, 1, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no capacity: cpu_millis requested 3000, free 2000 of 2000"
        );
        let e = a.reserve(&id(1), 1, 2000, &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("memory_mb requested 2000, free 1024"),
            "{e}"
        );
        a.reserve(&id(1), 1, 1, &[]).unwrap();
        a.reserve(&id(2), 1, 1, &[]).unwrap();
        let e = a.reserve(&id(3), 1, 1, &[]).unwrap_err();
        assert!(
            e.to_string().contains("slots requested 1, free 0 of 2"),
            "{e}"
        );
        assert!(matches!(
            a.reserve(&id(4), 1, 1, &[1, 2, 3, 4, 5]),
            Err(AllocError::TooManyPorts { .. })
        ));
    }

    #[test]
    fn restore_rebuilds_exactly_and_refuses_collisions() {
        let mut a = alloc(4);
        let r1 = a.reserve(&id(1), 100, 64, &[8080]).unwrap();
        let r2 = a.reserve(&id(2), 100, 64, &[8080]).unwrap();
        let mut b = alloc(4);
        b.restore(&id(2), r2.clone()).unwrap();
        b.restore(&id(1), r1.clone()).unwrap();
        assert_eq!(a.all(), b.all());
        assert_eq!(a.free(), b.free());
        let mut c = alloc(4);
        c.restore(&id(1), r1.clone()).unwrap();
        assert!(c.restore(&id(3), r1.clone()).is_err(), "same slot twice");
        let mut moved = r2.clone();
        moved.ports[0].host_port += 1;
        assert!(
            c.restore(&id(2), moved).is_err(),
            "ports that do not match the slot"
        );
        let mut far = r2;
        far.slot = 9;
        assert!(c.restore(&id(2), far).is_err());
    }

    proptest::proptest! {
        /// Any sequence of reserves and releases keeps slots, ports and addresses disjoint and the
        /// accounting exact.
        #[test]
        fn never_double_books(ops in proptest::collection::vec((0u32..12, 0u32..900, 0u64..400, 0usize..5, proptest::bool::ANY), 1..80)) {
            let mut a = alloc(6);
            for (n, cpu, mem, nports, release) in ops {
                if release {
                    a.release(&id(n));
                } else {
                    let ports: Vec<u16> = (0..nports as u16).map(|p| 8000 + p).collect();
                    let _ = a.reserve(&id(n), cpu, mem, &ports);
                }
                let held = a.all();
                let slots: std::collections::BTreeSet<u32> = held.values().map(|r| r.slot).collect();
                proptest::prop_assert_eq!(slots.len(), held.len());
                let mut hp: Vec<u16> = held.values().flat_map(|r| r.ports.iter().map(|p| p.host_port)).collect();
                let total = hp.len();
                hp.sort();
                hp.dedup();
                proptest::prop_assert_eq!(hp.len(), total);
                let cpu: u32 = held.values().map(|r| r.cpu_millis).sum();
                proptest::prop_assert!(cpu <= 2000);
                proptest::prop_assert_eq!(a.free().cpu_millis, 2000 - cpu);
            }
        }
    }
}
