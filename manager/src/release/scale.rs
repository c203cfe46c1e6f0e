//! Scale: more or fewer containers of the running release, without a new release. The leader's
//! re-placement and the replacement after a revoke use the same change ([`Engine::same_release`]).

use std::collections::BTreeMap;

use atlantis_common::api::manager::{FieldError, InstanceRecord, ReleaseTarget, TaskKind};
use atlantis_common::zk::Versioned;
use atlantis_common::{AppName, EnvName, HostName, ZoneName};

use super::phases::Change;
use super::spec::{Spec, Ungranted, plan_instances};
use super::{Engine, EngineError, conclude};
use crate::placement::Slot;
use crate::state;
use crate::tasks::Tasks;

impl Engine {
    /// A change of the running release `current`: `slots` started, `remove` drained; the release target
    /// keeps its number, with `spec`'s instance count.
    pub fn same_release(
        &self,
        spec: &Spec,
        current: Versioned<ReleaseTarget>,
        slots: &[Slot],
        remove: Vec<InstanceRecord>,
    ) -> Change {
        let mut target = current.value;
        target.manifest.instances = spec.manifest.instances;
        Change {
            spec: spec.clone(),
            created: plan_instances(spec, slots, target.number),
            target,
            expected: Some(current.version),
            new_release: false,
            remove,
        }
    }

    /// Starts a scale of app/env to `instances` per zone, without a new release.
    pub async fn scale(
        &self,
        app: AppName,
        env: EnvName,
        instances: u32,
    ) -> Result<String, EngineError> {
        if instances == 0 || instances > 100 {
            return Err(EngineError::InvalidField(FieldError {
                field: "instances".into(),
                message: "must be 1 to 100 per zone (use teardown to remove all)".into(),
            }));
        }
        let rec = self.app(&app).await?;
        let task_id = Tasks::new_id();
        let guard = self.lock(&[app.as_str(), env.as_str()], &task_id).await?;
        let prepared = async {
            let current = state::release(&self.coord, &app, &env)
                .await?
                .ok_or_else(|| EngineError::NotFound(format!("{app}.{env} is not deployed")))?;
            let spec = self
                .release_spec(
                    &rec.value,
                    &env,
                    &current.value,
                    instances,
                    Ungranted::Refuse,
                )
                .await?;
            let live = state::instances(&self.coord, &app, &env).await?;
            let mut per_zone: BTreeMap<ZoneName, Vec<InstanceRecord>> = BTreeMap::new();
            for s in state::supervisors(&self.coord).await? {
                per_zone.entry(s.zone).or_default();
            }
            for i in live {
                per_zone
                    .entry(i.value.zone.clone())
                    .or_default()
                    .push(i.value);
            }
            let mut slots = Vec::new();
            let mut remove = Vec::new();
            for (zone, mut list) in per_zone {
                let have = list.len() as u32;
                if have < instances {
                    slots.extend(self.place(&spec, instances - have, Some(&zone)).await?);
                } else if have > instances {
                    // Remove from the hosts with the most copies first.
                    let mut count: BTreeMap<HostName, usize> = BTreeMap::new();
                    for r in &list {
                        *count.entry(r.host.clone()).or_default() += 1;
                    }
                    list.sort_by_key(|r| std::cmp::Reverse(count[&r.host]));
                    remove.extend(list.into_iter().take((have - instances) as usize));
                }
            }
            Ok::<_, EngineError>(self.same_release(&spec, current, &slots, remove))
        }
        .await;
        let (change, guard) = super::prepared_or_unlock(prepared, guard).await?;
        let task = self
            .tasks
            .start(
                task_id.clone(),
                TaskKind::Scale,
                app.as_str(),
                Some(env.as_str()),
                &[app.as_str(), env.as_str()],
            )
            .await;
        let engine = self.clone();
        tokio::spawn(async move {
            let r = engine.run_phases(&task, &change).await.map(|_| None);
            conclude(task, guard, r).await;
        });
        Ok(task_id)
    }
}
