//! The drain: old backends leave the pool, get a bounded time for the requests in flight, and their
//! containers are removed.

use std::time::Duration;

use atlantis_common::api::manager::{InstanceRecord, InstanceState};
use atlantis_common::zk::RouterKind;
use atlantis_common::{AppName, EnvName};

use super::Engine;
use crate::routing;
use crate::tasks::Task;

impl Engine {
    /// Takes `old` out of the pool, waits the drain time (`deploy.drain_ms`), then removes the containers
    /// and their nodes. Safe to run again.
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
        if let Err(e) = routing::remove_backends(&self.coord, kind, app, env, &backends).await {
            task.warn(format!("cannot remove old backends from the pool: {e}"));
        }
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
            let started = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(self.cfg.deploy.drain_ms)).await;
            task.detail(format!(
                "drained {} backends for {} ms",
                backends.len(),
                started.elapsed().as_millis()
            ));
        }
        let n = self.remove_containers(task, &old).await;
        task.detail(format!("removed {n} old containers"));
    }
}
