//! The rules as text: the `iptables-restore` input of a desired state, and what of `iptables -S` output
//! the firewall owns (see the module documentation of [`crate::firewall`]).

use super::{
    CHAIN_PREFIX, ContainerRules, DEFAULT_CHAIN, DISPATCH, HOOK_COMMENT, Policy, REFUSE_CHAIN,
    chain_name,
};

/// The `iptables-restore` input that installs `desired` under `policy`, given the chains that exist now
/// (stale ones are deleted).
pub fn render(desired: &[ContainerRules], policy: &Policy, existing: &[String]) -> String {
    let mut sorted: Vec<&ContainerRules> = desired.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let wanted: Vec<String> = sorted.iter().map(|c| chain_name(&c.id)).collect();
    let stale: Vec<&String> = existing
        .iter()
        .filter(|c| c.starts_with(CHAIN_PREFIX) && !wanted.contains(c))
        .collect();
    let mut out = String::from("*filter\n");
    for c in [DISPATCH, DEFAULT_CHAIN, REFUSE_CHAIN] {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for c in wanted.iter().chain(stale.iter().copied()) {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    out.push_str(&format!(
        "-A {REFUSE_CHAIN} -p tcp -j REJECT --reject-with tcp-reset\n"
    ));
    out.push_str(&format!(
        "-A {REFUSE_CHAIN} -j REJECT --reject-with icmp-port-unreachable\n"
    ));
    let d = DEFAULT_CHAIN;
    for g in &policy.grants {
        out.push_str(&format!(
            "-A {d} -p {p} -m conntrack --ctorigdst {}/32 --ctorigdstport {} -j ACCEPT\n",
            g.address,
            g.port,
            p = g.proto.name()
        ));
    }
    out.push_str(&format!(
        "-A {d} -m conntrack --ctstate DNAT -j {REFUSE_CHAIN}\n"
    ));
    for t in ["LOCAL", "BROADCAST", "MULTICAST"] {
        out.push_str(&format!(
            "-A {d} -m addrtype --dst-type {t} -j {REFUSE_CHAIN}\n"
        ));
    }
    for (net, len) in &policy.refused {
        out.push_str(&format!("-A {d} -d {net}/{len} -j {REFUSE_CHAIN}\n"));
    }
    for a in policy.control_plane_rules() {
        out.push_str(&format!("-A {d} -d {a}/32 -j {REFUSE_CHAIN}\n"));
    }
    if policy.deny_egress {
        out.push_str(&format!("-A {d} -j {REFUSE_CHAIN}\n"));
    }
    for (c, chain) in sorted.iter().zip(&wanted) {
        out.push_str(&format!("-A {DISPATCH} -s {}/32 -j {chain}\n", c.ip));
    }
    for (c, chain) in sorted.iter().zip(&wanted) {
        out.push_str(&format!(
            "-A {chain} -m conntrack --ctdir REPLY -j ACCEPT\n"
        ));
        let mut deps = c.dependencies.clone();
        deps.sort();
        deps.dedup_by(|a, b| a.address == b.address && a.port == b.port);
        for dep in &deps {
            out.push_str(&format!(
                "-A {chain} -p tcp -m conntrack --ctorigdst {}/32 --ctorigdstport {} -j ACCEPT\n",
                dep.address, dep.port
            ));
        }
        out.push_str(&format!("-A {chain} -j {DEFAULT_CHAIN}\n"));
    }
    for c in stale {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// The rule that hooks the dispatch chain into `chain`, as `iptables -S` prints it.
pub fn hook_rule(chain: &str) -> String {
    format!("-A {chain} -m comment --comment {HOOK_COMMENT} -j {DISPATCH}")
}

/// The first rule of `chain` in `iptables -S` output.
pub(crate) fn first_rule<'a>(table: &'a str, chain: &str) -> Option<&'a str> {
    let prefix = format!("-A {chain} ");
    table.lines().find(|l| l.starts_with(&prefix))
}

/// What of the filter table the firewall owns: our chains' rules and whether each hook comes first.
/// Two equal fingerprints mean nothing of ours changed in between.
pub(crate) fn fingerprint(table: &str, hooked: &[&str]) -> String {
    let mut out: String = table
        .lines()
        .filter(|l| l.contains(DISPATCH) || l.contains(CHAIN_PREFIX))
        .flat_map(|l| [l, "\n"])
        .collect();
    for chain in hooked {
        let first = first_rule(table, chain) == Some(hook_rule(chain).as_str());
        out.push_str(&format!("first {chain}: {first}\n"));
    }
    out
}
