//! The drain: old backends leave the pool; the routers report what they still have open to them
//! (requests in flight, tunnels) until it is nothing or their drain deadline closes it; then the
//! containers are removed.

use std::time::Duration;

use atlantis_common::api::manager::{InstanceRecord, InstanceState};
use atlantis_common::zk::RouterKind;
use atlantis_common::{AppName, EnvName};

use super::Engine;
use crate::routing;
use crate::tasks::Task;

impl Engine {
    /// Takes `old` out of the pool, waits until no router has anything open to them (bounded by
    /// `deploy.drain_deadline_ms`), then removes the containers and their nodes. Safe to run again.
    pub(crate) async fn drain(
        &self,
        task: &Task,
        kind: RouterKind,
        app: &AppName,
        env: &EnvName,
        old: Vec<InstanceRecord>,
    ) {
        if old.is_empty() {
            task.detail("nothing to drain");
            return;
        }
        let backends: Vec<String> = old.iter().filter_map(|r| r.backend.clone()).collect();
        let generation =
            match routing::remove_backends(&self.coord, kind, app, env, &backends).await {
                Ok(g) => Some(g),
                Err(e) => {
                    task.warn(format!("cannot remove old backends from the pool: {e}"));
                    None
                }
            };
        let l = self.coord.layout();
        for r in &old {
            let mut s = r.clone();
            s.state = InstanceState::Stopping;
            let _ = self
                .coord
                .set(&l.instance(app, env, &r.container_id), &s, None)
                .await;
        }
        if !backends.is_empty() {
            // Until every router of the fleet serves the removal and reports nothing open to these
            // backends (routers close what is left at their own drain deadline; 3 s more for them to
            // say so).
            let limit = Duration::from_millis(self.cfg.deploy.drain_deadline_ms + 3_000);
            let g = generation.unwrap_or(0);
            let d = routing::acks::wait_drained(&self.coord, kind, g, &backends, limit).await;
            task.detail(d.summary());
        }
        let n = self.remove_containers(task, &old).await;
        task.detail(format!("removed {n} old containers"));
    }
}
