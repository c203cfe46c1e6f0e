//! The leader's background work, every `ha.interval_ms` while it leads:
//!
//! 1. Orphaned tasks of dead managers are taken over ([`crate::recovery`]).
//! 2. Dead hosts: a supervisor whose registration has been gone for longer than `ha.host_grace_ms` has its
//!    containers placed again on registered hosts (its own zone first, then the others), through the same
//!    durable steps as a scale: start, switch the new backends in, drop the dead ones from the pool and
//!    delete their instance nodes. A host that comes back within the grace period resets its clock, so a
//!    flapping host moves nothing.
//! 3. Lost containers: a `serving` instance whose registered supervisor no longer runs its container (for
//!    longer than the same grace period) is replaced the same way.
//!
//! Containers a supervisor runs without an instance node are its own orphans: the supervisor removes them
//! after its `orphan_grace_ms` (see docs/supervisor.md), so a host that returns after its containers were
//! moved cleans up by itself.
//!
//! Every pass is idempotent (it acts on what ZooKeeper and the supervisors say now) and rate-limited: at
//! most `ha.max_moves_per_pass` containers are re-placed per pass, an app.env whose lock is taken is left
//! for a later pass, and an app.env is not touched again within `ha.cooldown_ms` of its last re-placement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use atlantis_common::api::manager::{InstanceRecord, InstanceState, TaskKind};
use atlantis_common::api::supervisor::SupervisorRecord;
use atlantis_common::{AppName, ContainerId, EnvName, HostName, ZoneName};

use crate::placement::{Planner, Size, Slot};
use crate::release::{Engine, Spec};
use crate::state;
use crate::tasks::Tasks;

/// What the reconciler remembers between passes (lost with leadership; a new leader starts its clocks
/// afresh, which only delays a re-placement by one grace period).
#[derive(Default)]
pub struct Reconciler {
    missing_hosts: HashMap<HostName, Instant>,
    missing_containers: HashMap<ContainerId, Instant>,
    cooldown: HashMap<(AppName, EnvName), Instant>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Orphaned tasks taken over.
    pub tasks_taken_over: usize,
    /// Containers re-placed.
    pub moved: usize,
    /// Containers that should move but wait (grace, rate limit, lock, room).
    pub waiting: usize,
}

/// Runs passes until dropped (the caller stops it when leadership ends).
pub async fn run(ctx: Engine) {
    let mut r = Reconciler::default();
    let every = Duration::from_millis(ctx.cfg.ha.interval_ms.max(100));
    loop {
        match r.pass(&ctx).await {
            Ok(rep) if rep != PassReport::default() => {
                tracing::info!(?rep, "Reconciliation pass.");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Reconciliation pass failed."),
        }
        tokio::time::sleep(every).await;
    }
}

impl Reconciler {
    /// One pass.
    pub async fn pass(&mut self, ctx: &Engine) -> Result<PassReport, String> {
        let mut rep = PassReport {
            tasks_taken_over: crate::recovery::recover_orphans(ctx)
                .await
                .map_err(|e| e.to_string())?,
            ..PassReport::default()
        };
        let grace = Duration::from_millis(ctx.cfg.ha.host_grace_ms);
        let now = Instant::now();
        let sups = state::supervisors(&ctx.coord)
            .await
            .map_err(|e| e.to_string())?;
        let live: BTreeMap<HostName, SupervisorRecord> =
            sups.iter().map(|s| (s.host.clone(), s.clone())).collect();
        let running = running_containers(ctx, &live).await;
        let mut dead: BTreeMap<(AppName, EnvName), Vec<InstanceRecord>> = BTreeMap::new();
        let mut seen_hosts = BTreeSet::new();
        let mut seen_containers = BTreeSet::new();
        for (app, env, inst) in all_instances(ctx).await? {
            let gone_since = if !live.contains_key(&inst.host) {
                seen_hosts.insert(inst.host.clone());
                *self.missing_hosts.entry(inst.host.clone()).or_insert(now)
            } else if inst.state == InstanceState::Serving
                && running
                    .get(&inst.host)
                    .is_some_and(|ids| !ids.contains(&inst.container_id))
            {
                seen_containers.insert(inst.container_id.clone());
                *self
                    .missing_containers
                    .entry(inst.container_id.clone())
                    .or_insert(now)
            } else {
                continue;
            };
            if now.duration_since(gone_since) >= grace {
                dead.entry((app, env)).or_default().push(inst);
            } else {
                rep.waiting += 1;
            }
        }
        // Hosts and containers that came back (or whose instances went) start afresh next time.
        self.missing_hosts.retain(|h, _| seen_hosts.contains(h));
        self.missing_containers
            .retain(|c, _| seen_containers.contains(c));
        let cooldown = Duration::from_millis(ctx.cfg.ha.cooldown_ms);
        self.cooldown
            .retain(|_, t| now.duration_since(*t) < cooldown);
        let mut budget = ctx.cfg.ha.max_moves_per_pass;
        for ((app, env), list) in dead {
            if budget == 0 || self.cooldown.contains_key(&(app.clone(), env.clone())) {
                rep.waiting += list.len();
                continue;
            }
            let take = list.len().min(budget);
            let (now_list, later) = list.split_at(take);
            rep.waiting += later.len();
            match replace(ctx, &app, &env, now_list, &sups).await {
                Ok(n) => {
                    budget -= take;
                    rep.moved += n;
                    self.cooldown.insert((app, env), Instant::now());
                }
                Err(e) => {
                    rep.waiting += now_list.len();
                    tracing::warn!(%app, %env, error = %e, "Cannot re-place containers yet.");
                }
            }
        }
        Ok(rep)
    }
}

/// The containers each live supervisor runs (hosts that do not answer are left out: nothing is concluded
/// about them this pass).
async fn running_containers(
    ctx: &Engine,
    live: &BTreeMap<HostName, SupervisorRecord>,
) -> BTreeMap<HostName, BTreeSet<ContainerId>> {
    let calls = live.values().map(|s| async move {
        let host = ctx.hosts.host(s).ok()?;
        let list = host.list().await.ok()?;
        Some((
            s.host.clone(),
            list.into_iter().map(|c| c.container_id).collect(),
        ))
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn all_instances(ctx: &Engine) -> Result<Vec<(AppName, EnvName, InstanceRecord)>, String> {
    let l = ctx.coord.layout();
    let mut out = Vec::new();
    let apps = ctx
        .coord
        .children(&l.all_instances())
        .await
        .map_err(|e| e.to_string())?;
    for app in apps.iter().filter_map(|a| a.parse::<AppName>().ok()) {
        let envs = ctx
            .coord
            .children(&l.app_instances(&app))
            .await
            .map_err(|e| e.to_string())?;
        for env in envs.iter().filter_map(|e| e.parse::<EnvName>().ok()) {
            for v in state::instances(&ctx.coord, &app, &env)
                .await
                .map_err(|e| e.to_string())?
            {
                out.push((app.clone(), env.clone(), v.value));
            }
        }
    }
    Ok(out)
}

/// Re-places `dead` containers of app.env as a durable task (kind `scale`, same release). Returns how
/// many were started.
async fn replace(
    ctx: &Engine,
    app: &AppName,
    env: &EnvName,
    dead: &[InstanceRecord],
    sups: &[SupervisorRecord],
) -> Result<usize, String> {
    let task_id = Tasks::new_id();
    let guard = ctx
        .lock(&[app.as_str(), env.as_str()], &task_id)
        .await
        .map_err(|e| e.to_string())?;
    let prepared = async {
        let rec = ctx.app(app).await.map_err(|e| e.to_string())?;
        let current = state::release(&ctx.coord, app, env)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{app}.{env} has instances but no release"))?;
        let spec = ctx
            .release_spec(
                &rec.value,
                env,
                &current.value,
                current.value.manifest.instances,
                crate::release::Ungranted::Drop,
            )
            .await
            .map_err(|e| e.to_string())?;
        // Copies of this release that still run count against a host, the dead ones do not.
        let dead_ids: BTreeSet<&ContainerId> = dead.iter().map(|d| &d.container_id).collect();
        let mut copies: BTreeMap<HostName, u32> = BTreeMap::new();
        for i in state::instances(&ctx.coord, app, env)
            .await
            .map_err(|e| e.to_string())?
        {
            if !dead_ids.contains(&i.value.container_id) {
                *copies.entry(i.value.host.clone()).or_default() += 1;
            }
        }
        let mut planner = Planner::new(sups);
        let size = Size {
            cpu_millis: current.value.manifest.cpu_millis,
            memory_mb: current.value.manifest.memory_mb,
        };
        let mut by_zone: BTreeMap<&ZoneName, u32> = BTreeMap::new();
        for d in dead {
            *by_zone.entry(&d.zone).or_default() += 1;
        }
        let mut slots: Vec<Slot> = Vec::new();
        for (zone, n) in by_zone {
            slots.extend(
                planner
                    .replace(&copies, n, zone, size)
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok::<_, String>((spec, current, slots))
    }
    .await;
    let ((spec, current, slots), guard): ((Spec, _, Vec<Slot>), _) =
        crate::release::prepared_or_unlock(prepared, guard).await?;
    let task = ctx
        .tasks
        .start(
            task_id,
            TaskKind::Scale,
            app.as_str(),
            Some(env.as_str()),
            &[app.as_str(), env.as_str()],
        )
        .await;
    let hosts: BTreeSet<String> = dead.iter().map(|d| d.host.to_string()).collect();
    task.warn(format!(
        "re-placing {} containers of {app}.{env} lost with {}",
        dead.len(),
        hosts.into_iter().collect::<Vec<_>>().join(", ")
    ));
    let n = slots.len();
    let change = ctx.same_release(&spec, current, &slots, dead.to_vec());
    let r = ctx.run_phases(&task, &change).await;
    let out = match &r {
        Ok(_) => Ok(n),
        Err(e) => Err(e.to_string()),
    };
    crate::release::conclude(task, guard, r.map(|_| None)).await;
    out
}
