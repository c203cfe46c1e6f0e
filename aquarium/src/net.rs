//! The zones' network namespaces (recipe A of the services notes, as `atlantis-testkit` does for tests):
//! a namespace per zone, a veth pair with a /30 into it, and a default route back to the root end. Every
//! iptables chain of the zone's Docker Engine and supervisor lives in that namespace, so deleting it
//! removes them all.

use std::process::{Command, Stdio};

use anyhow::Context as _;

use crate::plan::ZonePlan;

/// Runs a program and returns its stdout when it succeeds.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a program; an error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The names in `ip netns list`.
pub fn netns_list() -> Vec<String> {
    output("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// True when the root namespace has an interface called `name`.
pub fn link_exists(name: &str) -> bool {
    output("ip", &["link", "show", "dev", name]).is_some()
}

/// Creates the zone's namespace and veth pair, or completes a partial setup. Idempotent.
pub fn setup(z: &ZonePlan) -> anyhow::Result<()> {
    if !netns_list().contains(&z.netns) {
        run("ip", &["netns", "add", &z.netns])?;
    }
    run("ip", &["-n", &z.netns, "link", "set", "lo", "up"])?;
    if !link_exists(&z.veth_host) {
        run(
            "ip",
            &[
                "link",
                "add",
                &z.veth_host,
                "type",
                "veth",
                "peer",
                "name",
                &z.veth_ns,
                "netns",
                &z.netns,
            ],
        )?;
    }
    let host_cidr = format!("{}/30", z.host_ip);
    let ns_cidr = format!("{}/30", z.ns_ip);
    let host_addrs =
        output("ip", &["-4", "-o", "addr", "show", "dev", &z.veth_host]).unwrap_or_default();
    if !host_addrs.contains(&format!(" {host_cidr} ")) {
        run("ip", &["addr", "add", &host_cidr, "dev", &z.veth_host])?;
    }
    run("ip", &["link", "set", &z.veth_host, "up"])?;
    let ns_addrs = output(
        "ip",
        &[
            "-n", &z.netns, "-4", "-o", "addr", "show", "dev", &z.veth_ns,
        ],
    )
    .unwrap_or_default();
    if !ns_addrs.contains(&format!(" {ns_cidr} ")) {
        run(
            "ip",
            &["-n", &z.netns, "addr", "add", &ns_cidr, "dev", &z.veth_ns],
        )?;
    }
    run("ip", &["-n", &z.netns, "link", "set", &z.veth_ns, "up"])?;
    let routes =
        output("ip", &["-n", &z.netns, "-4", "route", "show", "default"]).unwrap_or_default();
    if routes.trim().is_empty() {
        run(
            "ip",
            &[
                "-n",
                &z.netns,
                "route",
                "add",
                "default",
                "via",
                &z.host_ip.to_string(),
            ],
        )?;
    }
    Ok(())
}

/// True when the namespace and the root end of the veth exist.
pub fn is_set_up(z: &ZonePlan) -> bool {
    netns_list().contains(&z.netns) && link_exists(&z.veth_host)
}

/// Deletes the veth and the namespace (and with it every iptables chain inside).
pub fn teardown(z: &ZonePlan) {
    if link_exists(&z.veth_host) {
        let _ = run("ip", &["link", "del", &z.veth_host]);
    }
    if netns_list().contains(&z.netns) {
        let _ = run("ip", &["netns", "del", &z.netns]);
    }
}

/// Pids of processes that live in the namespace.
pub fn netns_pids(z: &ZonePlan) -> Vec<u32> {
    if !netns_list().contains(&z.netns) {
        return vec![];
    }
    output("ip", &["netns", "pids", &z.netns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Mount points at or under `prefix`, deepest first.
pub fn mounts_under(prefix: &std::path::Path) -> Vec<String> {
    let prefix = prefix.display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// Unmounts everything at or under `prefix` (what an engine leaves: the nsfs bind mount, overlays).
pub fn unmount_under(prefix: &std::path::Path) {
    for p in mounts_under(prefix) {
        if run("umount", &[&p]).is_err() {
            let _ = run("umount", &["-l", &p]);
        }
    }
}
