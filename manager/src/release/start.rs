//! Starting and removing containers on their hosts (through [`crate::fleet::HostApi`]), with their
//! instance nodes.

use std::collections::{BTreeMap, HashMap};

use atlantis_common::api::manager::InstanceRecord;
use atlantis_common::api::supervisor::{ContainerInfo, SupervisorRecord};
use atlantis_common::{ContainerId, HostName};

use super::spec::Spec;
use super::{Engine, EngineError};
use crate::routing::NewBackend;
use crate::state;
use crate::tasks::Task;

/// Containers that started, with what their host said.
pub(crate) type Started = Vec<(InstanceRecord, ContainerInfo)>;

impl Engine {
    /// Writes the instance nodes of `recs`, then starts every container in parallel. On any failure
    /// everything started is removed again and the error returned.
    pub(crate) async fn start_all(
        &self,
        task: &Task,
        spec: &Spec,
        recs: &[InstanceRecord],
    ) -> Result<Started, EngineError> {
        let l = self.coord.layout();
        let mut planned = Vec::new();
        // Each instance node is created only while this manager still owns the task (the transaction
        // checks the task node's version), so a task taken over elsewhere creates nothing more.
        let owner = task.owner_check();
        let _ = self
            .coord
            .ensure_path(&l.instances(&spec.app, &spec.env))
            .await;
        for rec in recs {
            let id = rec.container_id.clone();
            let mut txn = self.coord.txn();
            if let Some((path, version)) = &owner {
                txn = txn.check(path, *version);
            }
            let created = txn
                .create(&l.instance(&spec.app, &spec.env, &id), rec)
                .commit()
                .await;
            if let Err(e) = created {
                self.undo(task, &planned).await;
                return Err(EngineError::NotStarted(vec![format!(
                    "cannot write instance node {id}: {e}"
                )]));
            }
            planned.push(rec.clone());
        }
        task.detail(format!(
            "{} containers: {}",
            planned.len(),
            planned
                .iter()
                .map(|r| format!("{} on {} ({})", r.container_id, r.host, r.zone))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let sups: HashMap<HostName, SupervisorRecord> = match state::supervisors(&self.coord).await
        {
            Ok(list) => list.into_iter().map(|s| (s.host.clone(), s)).collect(),
            Err(e) => {
                self.undo(task, &planned).await;
                return Err(e.into());
            }
        };
        let calls = planned.iter().map(|rec| {
            let cspec = self.container_spec(spec, rec.container_id.clone(), Some(&rec.zone));
            let sup = sups.get(&rec.host).cloned();
            async move {
                let sup = sup.ok_or_else(|| format!("supervisor {} went away", rec.host))?;
                let host = self
                    .hosts
                    .host(&sup)
                    .map_err(|e| format!("{}: {e}", rec.host))?;
                host.deploy(&cspec)
                    .await
                    .map_err(|e| format!("{} on {}: {e}", rec.container_id, rec.host))
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (rec, r) in planned.iter().zip(results) {
            match r {
                Ok(info) => out.push((rec.clone(), info)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            self.undo(task, &planned).await;
            return Err(EngineError::NotStarted(errors));
        }
        Ok(out)
    }

    /// Removes containers (on their hosts) and their instance nodes, logging what fails.
    pub(crate) async fn undo(&self, task: &Task, recs: &[InstanceRecord]) {
        if recs.is_empty() {
            return;
        }
        let removed = self.remove_containers(task, recs).await;
        task.detail(format!("removed {removed} new containers"));
    }

    /// Tears containers down host by host, then deletes their instance nodes. Returns how many went.
    pub(crate) async fn remove_containers(&self, task: &Task, recs: &[InstanceRecord]) -> usize {
        let l = self.coord.layout();
        let mut by_host: BTreeMap<HostName, Vec<ContainerId>> = BTreeMap::new();
        for r in recs {
            by_host
                .entry(r.host.clone())
                .or_default()
                .push(r.container_id.clone());
        }
        let calls = by_host.into_iter().map(|(host, ids)| async move {
            let sup = match state::supervisor(&self.coord, &host).await {
                Ok(Some(s)) => s,
                _ => {
                    return Err(format!(
                        "supervisor {host} is not registered; its containers {ids:?} are left to its orphan reconciliation"
                    ));
                }
            };
            let api = self
                .hosts
                .host(&sup)
                .map_err(|e| format!("teardown on {host}: {e}"))?;
            api.teardown(&ids)
                .await
                .map_err(|e| format!("teardown on {host}: {e}"))
        });
        for r in futures::future::join_all(calls).await {
            if let Err(e) = r {
                task.warn(e);
            }
        }
        let mut n = 0;
        for r in recs {
            match self
                .coord
                .delete(&l.instance(&r.app, &r.env, &r.container_id), None)
                .await
            {
                Ok(_) => n += 1,
                Err(e) => task.warn(format!(
                    "cannot delete instance node {}: {e}",
                    r.container_id
                )),
            }
        }
        n
    }
}

/// The backends of started containers (their published host port for the app's `port`); `Err` with every
/// started record when one publishes none.
pub(crate) fn new_backends(
    port: u16,
    started: Started,
) -> Result<Vec<NewBackend>, (String, Vec<InstanceRecord>)> {
    let mut out = Vec::new();
    for (rec, info) in &started {
        match backend_of(port, info) {
            Some(b) => out.push(NewBackend {
                backend: b,
                instance: rec.clone(),
            }),
            None => {
                return Err((
                    format!("{} publishes no host port for {port}", rec.container_id),
                    started.iter().map(|(r, _)| r.clone()).collect(),
                ));
            }
        }
    }
    Ok(out)
}

fn backend_of(spec_port: u16, info: &ContainerInfo) -> Option<String> {
    info.ports
        .iter()
        .find(|p| p.container_port == spec_port)
        .map(|p| format!("{}:{}", info.address, p.host_port))
}
