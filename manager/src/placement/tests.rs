//! Placement tests: worked examples, and properties over random fleets (no host over capacity, zones
//! even, the same input giving the same answer).

use super::*;
use proptest::prelude::*;

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

const SMALL: Size = Size {
    cpu_millis: 100,
    memory_mb: 64,
};

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
fn the_emptier_host_wins_when_copies_are_equal() {
    let mut busy = sup("a1", "a", 4, 1000, 512);
    busy.free.memory_mb = 128;
    let sups = vec![busy, sup("a2", "a", 4, 1000, 512)];
    let p = place(&sups, &BTreeMap::new(), need(1)).unwrap();
    assert_eq!(p[0].host.as_str(), "a2");
}

#[test]
fn a_short_zone_fails_everything_and_says_why() {
    let sups = vec![sup("a1", "a", 4, 1000, 512), sup("b1", "b", 1, 1000, 512)];
    let mut planner = Planner::new(&sups);
    let e = planner.per_zone(&BTreeMap::new(), need(2)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("zone b has room for 1 of 2"), "{msg}");
    assert!(msg.contains("no free slot"), "{msg}");
    // Nothing was taken by the failed request.
    assert_eq!(planner.free(&"a1".parse().unwrap()).unwrap().slots, 4);
    assert_eq!(planner.free(&"b1".parse().unwrap()).unwrap().slots, 1);
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

#[test]
fn replace_prefers_the_zone_then_falls_back() {
    let sups = vec![
        sup("a1", "a", 1, 1000, 512),
        sup("b1", "b", 4, 1000, 512),
        sup("c1", "c", 4, 1000, 512),
    ];
    let mut p = Planner::new(&sups);
    let copies = BTreeMap::from([("b1".parse().unwrap(), 1)]);
    let slots = p.replace(&copies, 3, &"a".parse().unwrap(), SMALL).unwrap();
    let hosts: Vec<&str> = slots.iter().map(|s| s.host.as_str()).collect();
    // a1 has one slot; then c1 (no copy yet) before b1 (has one).
    assert_eq!(hosts, ["a1", "c1", "b1"]);
    let e = p
        .replace(&BTreeMap::new(), 100, &"a".parse().unwrap(), SMALL)
        .unwrap_err();
    assert!(e.to_string().contains("room for 6 of 100"), "{e}");
    assert_eq!(p.free(&"c1".parse().unwrap()).unwrap().slots, 3, "undone");
}

#[test]
fn spread_puts_the_extra_where_the_room_is() {
    let sups = vec![
        sup("a1", "a", 2, 1000, 512),
        sup("b1", "b", 8, 1000, 512),
        sup("c1", "c", 4, 1000, 512),
    ];
    let slots = Planner::new(&sups)
        .spread(&BTreeMap::new(), 5, SMALL)
        .unwrap();
    let count = |z: &str| slots.iter().filter(|s| s.zone.as_str() == z).count();
    assert_eq!((count("a"), count("b"), count("c")), (1, 2, 2));
}

/// A random fleet: 1 to 4 zones, 1 to 12 hosts, mixed sizes, some already partly used.
fn fleet() -> impl Strategy<Value = Vec<SupervisorRecord>> {
    prop::collection::vec((0u8..4, 1u32..10, 1u32..9, 1u64..9, 0u32..3), 1..12).prop_map(|hosts| {
        hosts
            .into_iter()
            .enumerate()
            .map(|(i, (zone, slots, cpu, mem, used))| {
                let mut s = sup(
                    &format!("h{i:02}"),
                    &format!("z{zone}"),
                    slots,
                    cpu * 500,
                    mem * 256,
                );
                let used = used.min(slots);
                s.free.slots -= used;
                s.free.cpu_millis = s.free.cpu_millis.saturating_sub(used * 100);
                s.free.memory_mb = s.free.memory_mb.saturating_sub(u64::from(used) * 64);
                s
            })
            .collect()
    })
}

fn size() -> impl Strategy<Value = Size> {
    (1u32..8, 1u64..8).prop_map(|(c, m)| Size {
        cpu_millis: c * 100,
        memory_mb: m * 64,
    })
}

/// Checks that the slots never take more than a host had free.
fn within_capacity(sups: &[SupervisorRecord], slots: &[Slot], s: Size) -> Result<(), String> {
    for h in sups {
        let n = slots.iter().filter(|x| x.host == h.host).count() as u64;
        if n > u64::from(h.free.slots)
            || n * u64::from(s.cpu_millis) > u64::from(h.free.cpu_millis)
            || n * s.memory_mb > h.free.memory_mb
        {
            return Err(format!("{} over capacity with {n} containers", h.host));
        }
        if slots.iter().any(|x| x.host == h.host && x.zone != h.zone) {
            return Err(format!("{} placed in the wrong zone", h.host));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn per_zone_is_exact_within_capacity_and_deterministic(
        sups in fleet(), n in 0u32..6, s in size()
    ) {
        let need = Need { per_zone: n, cpu_millis: s.cpu_millis, memory_mb: s.memory_mb };
        let a = place(&sups, &BTreeMap::new(), need);
        let b = place(&sups, &BTreeMap::new(), need);
        prop_assert_eq!(&a, &b);
        if let Ok(slots) = a {
            within_capacity(&sups, &slots, s).map_err(TestCaseError::fail)?;
            let zones: BTreeSet<&ZoneName> = sups.iter().map(|h| &h.zone).collect();
            for z in zones {
                prop_assert_eq!(slots.iter().filter(|x| &x.zone == z).count(), n as usize);
            }
        }
    }

    #[test]
    fn spread_keeps_zones_within_one_and_fails_only_without_room(
        sups in fleet(), total in 0u32..40, s in size()
    ) {
        let mut p = Planner::new(&sups);
        match p.spread(&BTreeMap::new(), total, s) {
            Ok(slots) => {
                prop_assert_eq!(slots.len(), total as usize);
                within_capacity(&sups, &slots, s).map_err(TestCaseError::fail)?;
                let zones: BTreeSet<&ZoneName> = sups.iter().map(|h| &h.zone).collect();
                let counts: Vec<usize> = zones
                    .iter()
                    .map(|z| slots.iter().filter(|x| &&x.zone == z).count())
                    .collect();
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "zone counts {:?}", counts);
            }
            Err(PlaceError::Short { zone, .. }) => {
                // The named zone really cannot take its share: count what fits there greedily.
                let fit: u32 = sups
                    .iter()
                    .filter(|h| h.zone.as_str() == zone)
                    .map(|h| {
                        h.free.slots
                            .min(h.free.cpu_millis / s.cpu_millis)
                            .min((h.free.memory_mb / s.memory_mb) as u32)
                    })
                    .sum();
                let zones = sups.iter().map(|h| &h.zone).collect::<BTreeSet<_>>().len() as u32;
                prop_assert!(fit < total.div_ceil(zones), "zone {} fits {} of {}", zone, fit, total);
            }
            Err(PlaceError::NoSupervisors) => prop_assert!(sups.is_empty()),
        }
    }

    #[test]
    fn hosts_of_one_size_get_copies_within_one(hosts in 1usize..10, n in 1u32..30) {
        let sups: Vec<SupervisorRecord> =
            (0..hosts).map(|i| sup(&format!("h{i}"), "z", 64, 64_000, 64_000)).collect();
        let slots = place(&sups, &BTreeMap::new(), need(n)).unwrap();
        let counts: Vec<usize> = sups
            .iter()
            .map(|h| slots.iter().filter(|x| x.host == h.host).count())
            .collect();
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        prop_assert!(hi - lo <= 1, "copies per host {:?}", counts);
    }

    #[test]
    fn replace_uses_the_preferred_zone_first(sups in fleet(), n in 1u32..10, s in size()) {
        let prefer = sups[0].zone.clone();
        let mut p = Planner::new(&sups);
        if let Ok(slots) = p.replace(&BTreeMap::new(), n, &prefer, s) {
            within_capacity(&sups, &slots, s).map_err(TestCaseError::fail)?;
            prop_assert_eq!(slots.len(), n as usize);
            // Once a container lands elsewhere, the preferred zone had no room left for it.
            if let Some(first_out) = slots.iter().position(|x| x.zone != prefer) {
                prop_assert!(slots[first_out..].iter().all(|x| x.zone != prefer));
            }
        }
    }
}
