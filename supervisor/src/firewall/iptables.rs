//! The iptables implementation of [`Firewall`]: one `iptables-restore --noflush` transaction per change,
//! hooks kept first, and the conntrack cut of connections the rules refuse.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;

use super::render::{fingerprint, first_rule, hook_rule, render};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::Dependency;

use super::{
    ContainerRules, DISPATCH, Firewall, FirewallError, HOOK_COMMENT, MAX_CUTS, Policy, chain_name,
};
use crate::conntrack;

/// The programs and settings of [`Iptables`].
#[derive(Debug, Clone)]
pub struct IptablesOptions {
    /// `iptables`.
    pub iptables: PathBuf,
    /// `iptables-restore`.
    pub restore: PathBuf,
    /// `conntrack`.
    pub conntrack: PathBuf,
    /// `ip` (lists the host's addresses).
    pub ip: PathBuf,
    /// Run them in this network namespace (`/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    /// The chain forwarded packets pass first (`DOCKER-USER`; `FORWARD` when it does not exist).
    pub forward_chain: String,
    /// What is refused.
    pub policy: Policy,
}

/// The iptables implementation (Debian's default nft backend or legacy: the same commands).
#[derive(Debug, Clone)]
pub struct Iptables {
    opts: IptablesOptions,
    /// Serialises changes and remembers what was installed last (`None`: read the kernel first).
    state: std::sync::Arc<tokio::sync::Mutex<Known>>,
    /// The control-plane addresses (set at run time by [`crate::control_plane`]).
    control_plane: std::sync::Arc<std::sync::Mutex<Vec<Ipv4Addr>>>,
}

/// What installed rules allow: the control-plane addresses refused, and each container's dependencies.
type Applied = (Vec<Ipv4Addr>, BTreeMap<ContainerId, Vec<Dependency>>);

#[derive(Debug, Default)]
struct Known {
    /// Chains installed last.
    chains: Option<Vec<String>>,
    /// The hooks were checked.
    hooked: bool,
    /// The fingerprint of the kernel's rules after our last change.
    snapshot: Option<String>,
    /// What the installed rules allow: the control plane refused and each container's dependencies.
    applied: Option<Applied>,
}

impl Iptables {
    /// A firewall over the given programs; the policy must already include the container network.
    pub fn new(opts: IptablesOptions) -> Iptables {
        Iptables {
            opts,
            state: Default::default(),
            control_plane: Default::default(),
        }
    }

    /// The policy it installs now (the configured one with the current control-plane addresses).
    pub fn policy(&self) -> Policy {
        let cp = self
            .control_plane
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.opts.policy.with_control_plane(&cp)
    }

    fn command(&self, program: &PathBuf) -> tokio::process::Command {
        let mut c = match &self.opts.netns {
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

    /// The filter table (`iptables -S`).
    async fn table(&self) -> Result<String, FirewallError> {
        self.run(&self.opts.iptables, &["-w", "5", "-S"], None)
            .await
    }

    async fn iptables(&self, args: &[&str]) -> Result<String, FirewallError> {
        let mut a = vec!["-w", "5"];
        a.extend_from_slice(args);
        self.run(&self.opts.iptables, &a, None).await
    }

    /// Makes the dispatch hook the first rule of `chain`, exactly once, never leaving the chain without a
    /// hook on the way: a plain hook goes first, then the marked ones are removed, the marked hook is
    /// inserted first, and the plain ones are removed.
    async fn hook(&self, chain: &str, table: &str) -> Result<(), FirewallError> {
        let ours = hook_rule(chain);
        let count = table
            .lines()
            .filter(|l| {
                l.starts_with(&format!("-A {chain} ")) && l.ends_with(&format!("-j {DISPATCH}"))
            })
            .count();
        if first_rule(table, chain) == Some(ours.as_str()) && count == 1 {
            return Ok(());
        }
        let marked = ["-m", "comment", "--comment", HOOK_COMMENT, "-j", DISPATCH];
        self.iptables(&["-I", chain, "1", "-j", DISPATCH]).await?;
        for _ in 0..32 {
            let mut a = vec!["-D", chain];
            a.extend_from_slice(&marked);
            if self.iptables(&a).await.is_err() {
                break;
            }
        }
        let mut a = vec!["-I", chain, "1"];
        a.extend_from_slice(&marked);
        self.iptables(&a).await?;
        for _ in 0..32 {
            if self.iptables(&["-D", chain, "-j", DISPATCH]).await.is_err() {
                break;
            }
        }
        tracing::info!(chain, "Hooked the Atlantis dispatch chain first.");
        Ok(())
    }

    /// The chains the dispatch chain is hooked into, given the table.
    fn hooked_chains(&self, table: &str) -> [String; 2] {
        let f = &self.opts.forward_chain;
        let forward = if f == "FORWARD" || table.lines().any(|l| l == format!("-N {f}")) {
            f.clone()
        } else {
            // No Docker-managed chain (engine without iptables): hook FORWARD itself.
            "FORWARD".to_owned()
        };
        ["INPUT".to_owned(), forward]
    }

    /// Deletes the connections the containers opened that the policy refuses; returns how many.
    async fn cut(
        &self,
        desired: &[&ContainerRules],
        policy: &Policy,
    ) -> Result<usize, FirewallError> {
        if desired.is_empty() {
            return Ok(0);
        }
        let local = conntrack::parse_local_addresses(
            &self
                .run(&self.opts.ip, &["-4", "-o", "addr", "show"], None)
                .await?,
        );
        let mut cut = 0;
        for c in desired {
            let ip = c.ip.to_string();
            let listed = self
                .run(&self.opts.conntrack, &["-L", "-f", "ipv4", "-s", &ip], None)
                .await?;
            for flow in conntrack::parse(&listed) {
                if flow.src != c.ip || !policy.refuses(&c.dependencies, &flow, &local) {
                    continue;
                }
                if cut >= MAX_CUTS {
                    tracing::warn!(
                        max = MAX_CUTS,
                        "More refused connections than one repair deletes; the rules cut the rest at their next packet."
                    );
                    return Ok(cut);
                }
                let args = flow.delete_args();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                match self.run(&self.opts.conntrack, &args, None).await {
                    Ok(_) => {
                        cut += 1;
                        tracing::info!(container = %c.id, proto = %flow.proto, dst = %flow.dst, port = ?flow.dport(), "Cut a connection the rules refuse.");
                    }
                    // Gone meanwhile (closed, timed out): nothing to cut.
                    Err(e) => {
                        tracing::debug!(container = %c.id, error = %e, "Connection not deleted.")
                    }
                }
            }
        }
        Ok(cut)
    }

    async fn apply(
        &self,
        known: &mut Known,
        desired: &[ContainerRules],
    ) -> Result<(), FirewallError> {
        let before = match (&known.chains, known.hooked) {
            (Some(_), true) => None,
            _ => Some(self.table().await?),
        };
        let existing = match (&before, known.chains.take()) {
            (Some(t), _) => t
                .lines()
                .filter_map(|l| l.strip_prefix("-N "))
                .map(str::to_owned)
                .collect(),
            (None, Some(c)) => c,
            (None, None) => unreachable!("the table is read when the chains are unknown"),
        };
        let policy = self.policy();
        let text = render(desired, &policy, &existing);
        let drift = before.as_ref().map(|t| {
            let hooked = self.hooked_chains(t);
            let hooked: Vec<&str> = hooked.iter().map(String::as_str).collect();
            known.snapshot.as_deref() != Some(fingerprint(t, &hooked).as_str())
        });
        if let Err(e) = self
            .run(&self.opts.restore, &["-w", "5", "--noflush"], Some(&text))
            .await
        {
            // Unknown kernel state now: read it again next time.
            *known = Known::default();
            return Err(e);
        }
        known.chains = Some(desired.iter().map(|c| chain_name(&c.id)).collect());
        let narrowed = narrowed(known.applied.as_ref(), desired, &policy);
        known.applied = Some((
            policy.control_plane.clone(),
            desired
                .iter()
                .map(|c| (c.id.clone(), c.dependencies.clone()))
                .collect(),
        ));
        if let Some(t) = &before
            && !known.hooked
        {
            for chain in self.hooked_chains(t) {
                if let Err(e) = self.hook(&chain, t).await {
                    *known = Known::default();
                    return Err(e);
                }
            }
            known.hooked = true;
        }
        let after = match self.table().await {
            Ok(t) => t,
            Err(e) => {
                *known = Known::default();
                return Err(e);
            }
        };
        let hooked = self.hooked_chains(&after);
        let hooked: Vec<&str> = hooked.iter().map(String::as_str).collect();
        known.snapshot = Some(fingerprint(&after, &hooked));
        let targets: Vec<&ContainerRules> = if drift == Some(true) {
            desired.iter().collect()
        } else {
            narrowed
        };
        if !targets.is_empty() {
            match self.cut(&targets, &policy).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    connections = n,
                    "Cut the connections containers opened that the rules now refuse (opened while the rules were missing, different or wider)."
                ),
                Err(e) => {
                    // The rules are in place and refuse such connections at their next packet; the
                    // cut is tried again at the next repair.
                    known.snapshot = None;
                    tracing::error!(error = %e, "Cannot cut the connections the rules refuse (is the conntrack program installed?); retrying at the next repair.");
                }
            }
        }
        tracing::debug!(containers = desired.len(), drift, "Firewall in sync.");
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
        known.chains = None;
        known.hooked = false;
        self.apply(&mut known, desired).await
    }

    fn set_control_plane(&self, addrs: &[Ipv4Addr]) -> bool {
        let mut new = addrs.to_vec();
        new.sort();
        new.dedup();
        let mut cp = self.control_plane.lock().unwrap_or_else(|p| p.into_inner());
        if *cp == new {
            return false;
        }
        *cp = new;
        true
    }
}

/// The containers whose connections the new rules may refuse although the installed ones allowed them:
/// every container when a control-plane address is new, else those that lost a dependency. New
/// containers have no connections yet.
fn narrowed<'a>(
    applied: Option<&Applied>,
    desired: &'a [ContainerRules],
    policy: &Policy,
) -> Vec<&'a ContainerRules> {
    let Some((cp, deps)) = applied else {
        return Vec::new();
    };
    if policy.control_plane.iter().any(|a| !cp.contains(a)) {
        return desired.iter().collect();
    }
    desired
        .iter()
        .filter(|c| {
            deps.get(&c.id).is_some_and(|old| {
                old.iter().any(|d| {
                    !c.dependencies
                        .iter()
                        .any(|n| n.address == d.address && n.port == d.port)
                })
            })
        })
        .collect()
}
