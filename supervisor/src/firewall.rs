//! Egress isolation with iptables (DESIGN.md section 7).
//!
//! Every container gets a chain `ATL-<20 hex of sha256(container ID)>`. The dispatch chain `ATLANTIS`
//! sends each container's traffic (matched by its fixed source address on the container network) to its
//! chain, and is hooked into `INPUT` (traffic to the host itself) and Docker's `DOCKER-USER` (forwarded
//! traffic; Docker keeps that chain ahead of its own accepts). A container chain:
//!
//! ```text
//! -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT        replies pass
//! -d <dep>/32 -p tcp --dport <port> -j ACCEPT                  one per declared dependency
//! -d <cluster net> -p tcp -j REJECT --reject-with tcp-reset    one pair per cluster network
//! -d <cluster net> -j REJECT --reject-with icmp-port-unreachable
//! -j RETURN                                                    anything else: Docker's normal path
//! ```
//!
//! The rules are a pure function of the desired containers ([`render`]); [`Firewall::sync`] installs the
//! whole set in ONE `iptables-restore --noflush` transaction (atomic with the nft backend: no window where
//! a chain is empty) and deletes chains of containers that are gone in the same transaction. A restart
//! therefore rebuilds exactly the same rules. Programs run with argument vectors, never a shell.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::Dependency;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

/// The dispatch chain.
pub const DISPATCH: &str = "ATLANTIS";
/// Prefix of per-container chains.
pub const CHAIN_PREFIX: &str = "ATL-";

/// What the firewall must allow and refuse for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRules {
    /// The container.
    pub id: ContainerId,
    /// Its address on the container network.
    pub ip: Ipv4Addr,
    /// What it may reach.
    pub dependencies: Vec<Dependency>,
}

/// Why the firewall could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The program could not be run.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The program failed.
    #[error("{program} failed: {stderr}")]
    Failed { program: String, stderr: String },
}

/// The firewall seam.
#[async_trait::async_trait]
pub trait Firewall: Send + Sync {
    /// Makes the installed rules exactly those of `desired` (and removes chains of other containers).
    /// The fast path of deploys and teardowns: it trusts what it installed itself.
    async fn sync(&self, desired: &[ContainerRules]) -> Result<(), FirewallError>;
    /// As [`Firewall::sync`], but re-reads the kernel's chains and re-checks the hooks first: repairs
    /// whatever someone else changed (the reconcile loop calls it).
    async fn repair(&self, desired: &[ContainerRules]) -> Result<(), FirewallError> {
        self.sync(desired).await
    }
}

/// The chain name of a container.
pub fn chain_name(id: &ContainerId) -> String {
    let digest = Sha256::digest(id.as_str().as_bytes());
    format!("{CHAIN_PREFIX}{}", &hex::encode(digest)[..20])
}

/// The `iptables-restore` input that installs `desired`, given the cluster networks and the chains that
/// exist now (stale ones are deleted).
pub fn render(
    desired: &[ContainerRules],
    cluster_networks: &[(Ipv4Addr, u8)],
    existing: &[String],
) -> String {
    let mut sorted: Vec<&ContainerRules> = desired.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let wanted: Vec<String> = sorted.iter().map(|c| chain_name(&c.id)).collect();
    let stale: Vec<&String> = existing
        .iter()
        .filter(|c| c.starts_with(CHAIN_PREFIX) && !wanted.contains(c))
        .collect();
    let mut out = String::from("*filter\n");
    out.push_str(&format!(":{DISPATCH} - [0:0]\n"));
    for c in wanted.iter().chain(stale.iter().copied()) {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for (c, chain) in sorted.iter().zip(&wanted) {
        out.push_str(&format!("-A {DISPATCH} -s {}/32 -j {chain}\n", c.ip));
    }
    for (c, chain) in sorted.iter().zip(&wanted) {
        out.push_str(&format!(
            "-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        ));
        let mut deps = c.dependencies.clone();
        deps.sort();
        deps.dedup_by(|a, b| a.address == b.address && a.port == b.port);
        for d in &deps {
            out.push_str(&format!(
                "-A {chain} -d {}/32 -p tcp -m tcp --dport {} -j ACCEPT\n",
                d.address, d.port
            ));
        }
        for (net, len) in cluster_networks {
            out.push_str(&format!(
                "-A {chain} -d {net}/{len} -p tcp -j REJECT --reject-with tcp-reset\n"
            ));
            out.push_str(&format!(
                "-A {chain} -d {net}/{len} -j REJECT --reject-with icmp-port-unreachable\n"
            ));
        }
        out.push_str(&format!("-A {chain} -j RETURN\n"));
    }
    for c in stale {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// The iptables implementation (Debian's default nft backend or legacy: the same commands).
#[derive(Debug, Clone)]
pub struct Iptables {
    iptables: PathBuf,
    restore: PathBuf,
    netns: Option<PathBuf>,
    forward_chain: String,
    cluster_networks: Vec<(Ipv4Addr, u8)>,
    /// Serialises changes and remembers the chains installed last (`None`: read the kernel first) and
    /// whether the hooks were checked.
    state: std::sync::Arc<tokio::sync::Mutex<Known>>,
}

#[derive(Debug, Default)]
struct Known {
    chains: Option<Vec<String>>,
    hooked: bool,
}

impl Iptables {
    /// A firewall over the given programs; `cluster_networks` must already include the container network.
    pub fn new(
        iptables: PathBuf,
        restore: PathBuf,
        netns: Option<PathBuf>,
        forward_chain: String,
        cluster_networks: Vec<(Ipv4Addr, u8)>,
    ) -> Iptables {
        Iptables {
            iptables,
            restore,
            netns,
            forward_chain,
            cluster_networks,
            state: Default::default(),
        }
    }

    fn command(&self, program: &PathBuf) -> tokio::process::Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run(
        &self,
        program: &PathBuf,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, FirewallError> {
        let name = program.display().to_string();
        let mut cmd = self.command(program);
        cmd.args(args);
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|source| FirewallError::Spawn {
            program: name.clone(),
            source,
        })?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|source| FirewallError::Spawn {
                    program: name.clone(),
                    source,
                })?;
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
                .await
                .map_err(|_| FirewallError::Failed {
                    program: name.clone(),
                    stderr: "timed out after 30 s".into(),
                })?
                .map_err(|source| FirewallError::Spawn {
                    program: name.clone(),
                    source,
                })?;
        if !out.status.success() {
            return Err(FirewallError::Failed {
                program: name,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The chains of the filter table.
    async fn chains(&self) -> Result<Vec<String>, FirewallError> {
        let s = self.run(&self.iptables, &["-w", "5", "-S"], None).await?;
        Ok(s.lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .map(str::to_owned)
            .collect())
    }

    /// Hooks the dispatch chain first into `chain`, unless it is there.
    async fn hook(&self, chain: &str) -> Result<(), FirewallError> {
        if self
            .run(
                &self.iptables,
                &["-w", "5", "-C", chain, "-j", DISPATCH],
                None,
            )
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.run(
            &self.iptables,
            &["-w", "5", "-I", chain, "1", "-j", DISPATCH],
            None,
        )
        .await?;
        tracing::info!(chain, "Hooked the Atlantis dispatch chain.");
        Ok(())
    }
}

impl Iptables {
    async fn apply(
        &self,
        known: &mut Known,
        desired: &[ContainerRules],
    ) -> Result<(), FirewallError> {
        let existing = match known.chains.take() {
            Some(c) => c,
            None => self.chains().await?,
        };
        let text = render(desired, &self.cluster_networks, &existing);
        if let Err(e) = self
            .run(&self.restore, &["-w", "5", "--noflush"], Some(&text))
            .await
        {
            // Unknown kernel state now: read it again next time.
            known.hooked = false;
            return Err(e);
        }
        known.chains = Some(desired.iter().map(|c| chain_name(&c.id)).collect());
        if !known.hooked {
            let forward = if existing.iter().any(|c| c == &self.forward_chain)
                || self.forward_chain == "FORWARD"
            {
                self.forward_chain.clone()
            } else {
                // No Docker-managed chain (engine without iptables): hook FORWARD itself.
                "FORWARD".to_owned()
            };
            self.hook(&forward).await?;
            self.hook("INPUT").await?;
            known.hooked = true;
        }
        tracing::debug!(containers = desired.len(), "Firewall in sync.");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Firewall for Iptables {
    async fn sync(&self, desired: &[ContainerRules]) -> Result<(), FirewallError> {
        let mut known = self.state.lock().await;
        self.apply(&mut known, desired).await
    }

    async fn repair(&self, desired: &[ContainerRules]) -> Result<(), FirewallError> {
        let mut known = self.state.lock().await;
        *known = Known::default();
        self.apply(&mut known, desired).await
    }
}

/// No isolation at all (`firewall.enabled = false`, development only).
#[derive(Debug, Default)]
pub struct NoFirewall;

#[async_trait::async_trait]
impl Firewall for NoFirewall {
    async fn sync(&self, _desired: &[ContainerRules]) -> Result<(), FirewallError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(id: &str, ip: [u8; 4], deps: &[([u8; 4], u16)]) -> ContainerRules {
        ContainerRules {
            id: id.parse().unwrap(),
            ip: Ipv4Addr::from(ip),
            dependencies: deps
                .iter()
                .map(|(a, p)| Dependency {
                    name: "d".into(),
                    address: Ipv4Addr::from(*a),
                    port: *p,
                })
                .collect(),
        }
    }

    #[test]
    fn renders_chains_in_a_stable_order_and_drops_stale_ones() {
        let a = rules(
            "b-1234567-prod-aaaaaa",
            [172, 30, 0, 3],
            &[([10, 0, 0, 9], 5432)],
        );
        let b = rules("a-1234567-prod-bbbbbb", [172, 30, 0, 2], &[]);
        let nets = [(Ipv4Addr::new(10, 0, 0, 0), 8)];
        let stale = "ATL-00000000000000000000".to_owned();
        let one = render(
            &[a.clone(), b.clone()],
            &nets,
            &[stale.clone(), "DOCKER".into()],
        );
        let two = render(&[b.clone(), a.clone()], &nets, std::slice::from_ref(&stale));
        assert_eq!(one, two, "order of the input does not matter");
        let ca = chain_name(&a.id);
        assert!(
            one.contains(&format!("-A ATLANTIS -s 172.30.0.3/32 -j {ca}\n")),
            "{one}"
        );
        assert!(
            one.contains(&format!(
                "-A {ca} -d 10.0.0.9/32 -p tcp -m tcp --dport 5432 -j ACCEPT\n"
            )),
            "{one}"
        );
        assert!(
            one.contains(&format!(
                "-A {ca} -d 10.0.0.0/8 -p tcp -j REJECT --reject-with tcp-reset\n"
            )),
            "{one}"
        );
        assert!(
            one.contains(&format!("-X {stale}\n")) && !one.contains("-X DOCKER"),
            "{one}"
        );
        // The allow comes before the reject.
        assert!(
            one.find("--dport 5432").unwrap()
                < one.find(&format!("-A {ca} -d 10.0.0.0/8")).unwrap()
        );
        assert_eq!(chain_name(&a.id).len(), 24);
    }
}
