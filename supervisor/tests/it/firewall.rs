//! The iptables firewall alone, in a bare network namespace of its own (no engine): exact rules,
//! stale chains deleted, hooks installed once and kept first, atomic rebuilds.

use std::net::Ipv4Addr;
use std::process::Command;

use atlantis_supervisor::firewall::{
    ContainerRules, Firewall, Iptables, IptablesOptions, Policy, chain_name, hook_rule,
};

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
    let fw = Iptables::new(IptablesOptions {
        iptables: "iptables".into(),
        restore: "iptables-restore".into(),
        conntrack: atlantis_testkit::require_bin("conntrack", "conntrack"),
        ip: "ip".into(),
        netns: Some(ns.path()),
        forward_chain: "DOCKER-USER".into(),
        policy: Policy::new(
            &[
                (Ipv4Addr::new(203, 0, 113, 0), 24),
                (Ipv4Addr::new(172, 30, 0, 0), 24),
            ],
            false,
            vec![],
        ),
    });
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
        format!("-A {ca} -m conntrack --ctdir REPLY -j ACCEPT"),
        format!("-A {ca} -p tcp -m conntrack --ctorigdst 10.1.2.3 --ctorigdstport 5432 -j ACCEPT"),
        format!("-A {ca} -j ATLANTIS-DEFAULT"),
        format!("-A {cb} -j ATLANTIS-DEFAULT"),
        "-A ATLANTIS-DEFAULT -m conntrack --ctstate DNAT -j ATLANTIS-REFUSE".into(),
        "-A ATLANTIS-DEFAULT -m addrtype --dst-type LOCAL -j ATLANTIS-REFUSE".into(),
        "-A ATLANTIS-DEFAULT -d 10.0.0.0/8 -j ATLANTIS-REFUSE".into(),
        "-A ATLANTIS-DEFAULT -d 169.254.0.0/16 -j ATLANTIS-REFUSE".into(),
        "-A ATLANTIS-DEFAULT -d 203.0.113.0/24 -j ATLANTIS-REFUSE".into(),
        "-A ATLANTIS-DEFAULT -d 172.30.0.0/24 -j ATLANTIS-REFUSE".into(),
        "-A ATLANTIS-REFUSE -p tcp -j REJECT --reject-with tcp-reset".into(),
        "-A ATLANTIS-REFUSE -j REJECT --reject-with icmp-port-unreachable".into(),
    ] {
        assert!(
            rules.lines().any(|l| l == want),
            "missing {want:?} in\n{rules}"
        );
    }
    // No DOCKER-USER chain here, so FORWARD is hooked; INPUT too; each exactly once after two syncs.
    let hooks = |r: &str, chain: &str| r.lines().filter(|l| *l == hook_rule(chain)).count();
    assert_eq!(hooks(&rules, "FORWARD"), 1, "{rules}");
    assert_eq!(hooks(&rules, "INPUT"), 1, "{rules}");
    assert!(!rules.contains("--dport 5432") || rules.matches("--dport 5432").count() == 1);

    // A flushed chain and a removed hook come back; b's chain goes when b is no longer desired.
    // A rule put ahead of the hook in FORWARD would let packets past it: the repair puts the hook first
    // again, without a second copy. An old-style hook (no comment) is replaced.
    ns.iptables(&["-F", &ca]);
    ns.iptables(&[
        "-D",
        "INPUT",
        "-m",
        "comment",
        "--comment",
        "atlantis-dispatch",
        "-j",
        "ATLANTIS",
    ]);
    ns.iptables(&["-A", "INPUT", "-j", "ATLANTIS"]);
    ns.iptables(&["-I", "FORWARD", "1", "-j", "ACCEPT"]);
    // The fast path trusts what it installed; repair re-reads the kernel and re-hooks.
    fw.sync(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(hooks(&ns.rules(), "INPUT"), 0);
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
    for chain in ["INPUT", "FORWARD"] {
        assert_eq!(hooks(&after, chain), 1, "{after}");
        let first = after
            .lines()
            .find(|l| l.starts_with(&format!("-A {chain} ")))
            .unwrap();
        assert_eq!(first, hook_rule(chain), "{after}");
    }
    assert!(!after.contains("-A INPUT -j ATLANTIS"), "{after}");

    // Nothing desired: only the empty dispatch chain is left.
    fw.sync(&[]).await.unwrap();
    let empty = ns.rules();
    assert!(!empty.contains("ATL-"), "{empty}");
    assert!(!empty.contains("-A ATLANTIS "), "{empty}");
}
