//! The iptables firewall alone, in a bare network namespace of its own (no engine): exact rules,
//! stale chains deleted, hooks installed once, atomic rebuilds.

use std::net::Ipv4Addr;
use std::process::Command;

use atlantis_supervisor::firewall::{ContainerRules, Firewall, Iptables, chain_name};

use crate::dep;

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        atlantis_testkit::require_bin("iptables", "iptables");
        let name = format!(
            "atkfw-{}-{}",
            std::process::id(),
            crate::unique().replace('-', "")
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        Netns(name)
    }
    fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/run/netns").join(&self.0)
    }
    fn rules(&self) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["iptables", "-S"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn iptables(&self, args: &[&str]) {
        let ok = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg("iptables")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "iptables {args:?}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test]
async fn iptables_firewall_installs_exact_rules_and_cleans_up() {
    let ns = Netns::new();
    let fw = Iptables::new(
        "iptables".into(),
        "iptables-restore".into(),
        Some(ns.path()),
        "DOCKER-USER".into(),
        vec![
            (Ipv4Addr::new(10, 0, 0, 0), 8),
            (Ipv4Addr::new(172, 30, 0, 0), 24),
        ],
    );
    let a = ContainerRules {
        id: "web-1234567-prod-aaaaaa".parse().unwrap(),
        ip: Ipv4Addr::new(172, 30, 0, 2),
        dependencies: vec![dep("db", Ipv4Addr::new(10, 1, 2, 3), 5432)],
    };
    let b = ContainerRules {
        id: "api-1234567-prod-bbbbbb".parse().unwrap(),
        ip: Ipv4Addr::new(172, 30, 0, 3),
        dependencies: vec![],
    };
    fw.sync(&[a.clone(), b.clone()]).await.unwrap();
    fw.sync(&[a.clone(), b.clone()]).await.unwrap();
    let rules = ns.rules();
    let (ca, cb) = (chain_name(&a.id), chain_name(&b.id));
    for want in [
        format!("-A ATLANTIS -s 172.30.0.2/32 -j {ca}"),
        format!("-A ATLANTIS -s 172.30.0.3/32 -j {cb}"),
        format!("-A {ca} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-A {ca} -d 10.1.2.3/32 -p tcp -m tcp --dport 5432 -j ACCEPT"),
        format!("-A {ca} -d 10.0.0.0/8 -p tcp -j REJECT --reject-with tcp-reset"),
        format!("-A {cb} -d 172.30.0.0/24 -j REJECT --reject-with icmp-port-unreachable"),
        format!("-A {cb} -j RETURN"),
    ] {
        assert!(
            rules.lines().any(|l| l == want),
            "missing {want:?} in\n{rules}"
        );
    }
    // No DOCKER-USER chain here, so FORWARD is hooked; INPUT too; each exactly once after two syncs.
    assert_eq!(
        rules
            .lines()
            .filter(|l| *l == "-A FORWARD -j ATLANTIS")
            .count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules
            .lines()
            .filter(|l| *l == "-A INPUT -j ATLANTIS")
            .count(),
        1,
        "{rules}"
    );
    assert!(!rules.contains("--dport 5432") || rules.matches("--dport 5432").count() == 1);

    // A flushed chain and a removed hook come back; b's chain goes when b is no longer desired.
    ns.iptables(&["-F", &ca]);
    ns.iptables(&["-D", "INPUT", "-j", "ATLANTIS"]);
    // The fast path trusts what it installed; repair re-reads the kernel and re-hooks.
    fw.sync(std::slice::from_ref(&a)).await.unwrap();
    assert!(!ns.rules().contains("-A INPUT -j ATLANTIS"));
    fw.repair(std::slice::from_ref(&a)).await.unwrap();
    let after = ns.rules();
    assert!(!after.contains(&cb), "stale chain removed:\n{after}");
    let a_lines = |r: &str| {
        r.lines()
            .filter(|l| l.contains(&ca))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(a_lines(&after), a_lines(&rules));
    assert_eq!(
        after
            .lines()
            .filter(|l| *l == "-A INPUT -j ATLANTIS")
            .count(),
        1,
        "{after}"
    );

    // Nothing desired: only the empty dispatch chain is left.
    fw.sync(&[]).await.unwrap();
    let empty = ns.rules();
    assert!(!empty.contains("ATL-"), "{empty}");
    assert!(!empty.contains("-A ATLANTIS"), "{empty}");
}
