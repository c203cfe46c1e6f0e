//! The engine on the fake fleet: real ZooKeeper and SQLite as the store, in-memory hosts
//! (`crate::fleet::FakeHost`). A deploy goes through every phase; a task stopped at each phase as if its
//! manager died is rolled back (before the switch) or finished (after it) by another manager's recovery,
//! as its journal says; a host that fails a start rolls the deploy back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use atlantis_common::api::manager::{
    AppRecord, AppSpec, EnvRecord, EnvSpec, Manifest, TaskState, TaskStatus,
};
use atlantis_common::api::supervisor::{ContainerInfo, ContainerSpec, Dependency, Resources};
use atlantis_common::zk::{Coord, ZkConfig};
use atlantis_common::{AppName, ContainerId, EnvName, Sha};
use atlantis_testkit::{ZooKeeper, eventually};
use futures::future::BoxFuture;

use super::Engine;
use crate::config::{Config, DeployConfig, ImageRef, RegistryConfig, RoutingConfig};
use crate::fleet::hosts::FakeFleet;
use crate::fleet::{FakeHost, HostApi, HostError};
use crate::history::History;
use crate::images::Images;
use crate::routing;
use crate::secrets::Sealer;
use crate::state;
use crate::tasks::{Phase, Tasks};

const WAIT: Duration = Duration::from_secs(20);

/// A host that fails its deploys while `fail` is set.
struct Faulty {
    inner: FakeHost,
    fail: AtomicBool,
}

impl HostApi for Faulty {
    fn deploy<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<ContainerInfo, HostError>> {
        if self.fail.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(HostError {
                    code: Some("internal".into()),
                    message: "injected: the engine refused to start it".into(),
                })
            });
        }
        self.inner.deploy(spec)
    }
    fn teardown<'a>(
        &'a self,
        ids: &'a [ContainerId],
    ) -> BoxFuture<'a, Result<Vec<ContainerId>, HostError>> {
        self.inner.teardown(ids)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, HostError>> {
        self.inner.list()
    }
    fn set_dependencies<'a>(
        &'a self,
        id: &'a ContainerId,
        dependencies: &'a [Dependency],
    ) -> BoxFuture<'a, Result<ContainerInfo, HostError>> {
        self.inner.set_dependencies(id, dependencies)
    }
}

/// Two managers' engines over one store and one fake fleet of two hosts in two zones (host `b`
/// faulty on demand).
struct Rig {
    m1: Engine,
    m2: Engine,
    a: FakeHost,
    b: Arc<Faulty>,
    app: AppName,
    env: EnvName,
    _dir: tempfile::TempDir,
}

fn host(name: &str, zone: &str, address: &str) -> FakeHost {
    FakeHost::new(
        name.parse().unwrap(),
        zone.parse().unwrap(),
        Resources {
            slots: 8,
            cpu_millis: 8000,
            memory_mb: 8192,
        },
        address,
    )
}

async fn engine(zk: &ZkConfig, dir: &std::path::Path, me: &str, fleet: &FakeFleet) -> Engine {
    let coord = Coord::connect(zk.clone()).await.unwrap();
    let history = History::open(&format!("sqlite://{}", dir.join("history.db").display()))
        .await
        .unwrap();
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        host: me.parse().unwrap(),
        zookeeper: zk.clone(),
        database_url: None,
        data_dir: dir.to_owned(),
        secret_key_file: dir.join("unused.key"),
        supervisor_token_file: dir.join("unused.token"),
        registry: RegistryConfig {
            url: "http://127.0.0.1:9".into(),
            pull_host: None,
            user: None,
            password_file: None,
            image_ref: ImageRef::Tag,
        },
        routing: RoutingConfig::default(),
        deploy: DeployConfig {
            switch_wait_ms: 2000,
            drain_ms: 10,
            drain_deadline_ms: 1000,
            start_timeout_ms: 10_000,
        },
        max_body_bytes: 64 * 1024,
        ha: Default::default(),
        auth: Default::default(),
        tls: None,
        supervisor_tls: None,
    };
    Engine::new(
        coord.clone(),
        history.clone(),
        Tasks::new(coord, history, me),
        Sealer::from_key(&[7u8; 32]).unwrap(),
        Images::new(cfg.registry.clone()).unwrap(),
        Arc::new(fleet.clone()),
        Arc::new(cfg),
        reqwest::Client::new(),
    )
}

impl Rig {
    async fn new() -> Rig {
        static N: AtomicU32 = AtomicU32::new(0);
        let zk = ZooKeeper::shared();
        let region = format!(
            "eng{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let z = ZkConfig::new(zk.connect_string(), region.parse().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let fleet = FakeFleet::default();
        let a = host("host-a", "zone-a", "10.1.0.1");
        let b = Arc::new(Faulty {
            inner: host("host-b", "zone-b", "10.1.0.2"),
            fail: AtomicBool::new(false),
        });
        let m1 = engine(&z, dir.path(), "m1", &fleet).await;
        let m2 = engine(&z, dir.path(), "m2", &fleet).await;
        let l = m1.coord.layout();
        m1.coord.ensure_path(&l.supervisors()).await.unwrap();
        for rec in [fleet.add(a.clone()), b.inner.record()] {
            m1.coord.put(&l.supervisor(&rec.host), &rec).await.unwrap();
        }
        fleet.insert("host-b".parse().unwrap(), b.clone());
        let (app, env): (AppName, EnvName) = ("web".parse().unwrap(), "prod".parse().unwrap());
        let rec = AppRecord {
            version: 1,
            spec: AppSpec {
                name: app.clone(),
                repo: String::new(),
                root: String::new(),
                internal: false,
                team: None,
                dependencies: Vec::new(),
            },
            created_ms: 1,
        };
        m1.coord.ensure_path(&l.apps()).await.unwrap();
        m1.coord.put(&l.app(&app), &rec).await.unwrap();
        let e = EnvRecord {
            version: 1,
            spec: EnvSpec {
                name: env.clone(),
                description: String::new(),
            },
            created_ms: 1,
        };
        m1.coord.ensure_path(&l.envs()).await.unwrap();
        m1.coord.put(&l.env(&env), &e).await.unwrap();
        Rig {
            m1,
            m2,
            a,
            b,
            app,
            env,
            _dir: dir,
        }
    }

    /// Starts a release of `sha` on `m1`.
    async fn release(&self, sha: &str) -> String {
        let sha: Sha = sha.parse().unwrap();
        self.m1
            .release_image(
                self.app.clone(),
                self.env.clone(),
                sha.clone(),
                format!("registry.local/apps/web:{sha}"),
                Manifest::default(),
            )
            .await
            .unwrap()
    }

    /// Waits for the task to end on `e`.
    async fn ended(&self, e: &Engine, id: &str) -> TaskStatus {
        eventually(WAIT, "the task ends", || async {
            e.tasks
                .get(id)
                .await
                .filter(|t| t.state != TaskState::Running)
        })
        .await
    }

    /// The sha of every container the hosts run, sorted.
    async fn running(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.a.list().await.unwrap() {
            out.push(c.sha.to_string());
        }
        for c in self.b.list().await.unwrap() {
            out.push(c.sha.to_string());
        }
        out.sort();
        out
    }

    /// The release node's number and the pool's backends.
    async fn serving(&self) -> (i64, usize) {
        let c = &self.m1.coord;
        let n = state::release(c, &self.app, &self.env)
            .await
            .unwrap()
            .map_or(0, |r| r.value.number);
        let pool = routing::pool_name(&self.app, &self.env);
        let l = c.layout();
        let base = l.router_item(
            atlantis_common::zk::RouterKind::External,
            atlantis_common::zk::Section::Pools,
            &pool,
        );
        (n, c.children(&base).await.unwrap_or_default().len())
    }

    /// Runs release `sha` on m1, stopped at `phase` as if m1 died; then m2's recovery takes it over.
    async fn crash_and_recover(&self, sha: &str, phase: Phase) -> TaskStatus {
        self.m1.hooks.seen.lock().clear();
        *self.m1.hooks.crash_at.lock() = Some(phase);
        let id = self.release(sha).await;
        let l = self.m1.coord.layout();
        eventually(WAIT, "the task stops and frees its lock", || async {
            let stopped = self.m1.hooks.seen.lock().contains(&phase);
            let free = self.m1.coord.children(&l.locks()).await.unwrap().is_empty();
            (stopped && free).then_some(())
        })
        .await;
        *self.m1.hooks.crash_at.lock() = None;
        let node = self.m1.tasks.in_flight().await.unwrap();
        assert_eq!(node.len(), 1, "the dead manager's task node stays");
        assert_eq!(
            node[0].0.journal.plan.as_ref().unwrap().phase,
            phase,
            "the journal names the phase"
        );
        let n = crate::recovery::recover_orphans(&self.m2).await.unwrap();
        assert_eq!(n, 1, "m2 takes the task over");
        self.ended(&self.m2, &id).await
    }
}

fn step_names(t: &TaskStatus) -> Vec<&str> {
    t.steps.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_goes_through_every_phase_on_the_fake_fleet() {
    let rig = Rig::new().await;
    let first = rig.ended(&rig.m1, &rig.release("aaaaaaa").await).await;
    assert_eq!(first.state, TaskState::Done, "{first:?}");
    assert_eq!(first.release, Some(1));
    assert_eq!(rig.running().await, ["aaaaaaa", "aaaaaaa"], "one per zone");
    assert_eq!(rig.serving().await, (1, 2));
    rig.m1.hooks.seen.lock().clear();

    let second = rig.ended(&rig.m1, &rig.release("bbbbbbb").await).await;
    assert_eq!(second.state, TaskState::Done, "{second:?}");
    assert_eq!(second.release, Some(2));
    assert_eq!(
        *rig.m1.hooks.seen.lock(),
        [
            Phase::Planned,
            Phase::Starting,
            Phase::Healthy,
            Phase::Switching,
            Phase::Acknowledging,
            Phase::Draining,
            Phase::Recording
        ],
        "every phase, in order, each written to the journal first"
    );
    assert_eq!(
        step_names(&second),
        [
            "start containers",
            "switch traffic",
            "wait for routers",
            "drain old release",
            "record release"
        ]
    );
    assert_eq!(
        rig.running().await,
        ["bbbbbbb", "bbbbbbb"],
        "the old ones went"
    );
    assert_eq!(rig.serving().await, (2, 2));
    let r = rig
        .m1
        .history
        .release("web", "prod", 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.sha, "bbbbbbb");
    assert!(rig.m1.tasks.in_flight().await.unwrap().is_empty());

    // Scale shares the machine: two per zone, then back to one.
    rig.m1.hooks.seen.lock().clear();
    let id = rig
        .m1
        .scale(rig.app.clone(), rig.env.clone(), 2)
        .await
        .unwrap();
    let t = rig.ended(&rig.m1, &id).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_eq!(rig.running().await.len(), 4);
    assert_eq!(rig.serving().await, (2, 4), "same release, four backends");
    assert!(rig.m1.hooks.seen.lock().contains(&Phase::Acknowledging));
    let id = rig
        .m1
        .scale(rig.app.clone(), rig.env.clone(), 1)
        .await
        .unwrap();
    let t = rig.ended(&rig.m1, &id).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_eq!(rig.running().await.len(), 2);
    assert_eq!(rig.serving().await, (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_rolls_back_and_the_old_release_serves() {
    let rig = Rig::new().await;
    let first = rig.ended(&rig.m1, &rig.release("aaaaaaa").await).await;
    assert_eq!(first.state, TaskState::Done);
    rig.b.fail.store(true, Ordering::SeqCst);
    let t = rig.ended(&rig.m1, &rig.release("bbbbbbb").await).await;
    assert_eq!(t.state, TaskState::Failed);
    let error = t.error.unwrap();
    assert!(
        error.contains("did not start") && error.contains("injected"),
        "{error}"
    );
    assert_eq!(
        rig.running().await,
        ["aaaaaaa", "aaaaaaa"],
        "the new container on the healthy host was removed"
    );
    assert_eq!(rig.serving().await, (1, 2), "release 1 still serves");
    let l = rig.m1.coord.layout();
    assert_eq!(
        state::instances(&rig.m1.coord, &rig.app, &rig.env)
            .await
            .unwrap()
            .len(),
        2,
        "no instance node of the failed release is left"
    );
    // The task ends before its lock goes (a running task without a lock is an orphan to the leader).
    eventually(WAIT, "the failed task frees its lock", || async {
        let free = rig.m1.coord.children(&l.locks()).await.unwrap().is_empty();
        free.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_stopped_before_the_switch_is_rolled_back_by_the_next_manager() {
    let rig = Rig::new().await;
    let first = rig.ended(&rig.m1, &rig.release("aaaaaaa").await).await;
    assert_eq!(first.state, TaskState::Done);
    for (i, phase) in [
        Phase::Planned,
        Phase::Starting,
        Phase::Healthy,
        Phase::Switching,
    ]
    .into_iter()
    .enumerate()
    {
        let sha = format!("bbbbbb{i}");
        let t = rig.crash_and_recover(&sha, phase).await;
        assert_eq!(t.state, TaskState::Failed, "{phase:?}: {t:?}");
        let error = t.error.clone().unwrap();
        assert!(error.contains("rolled back"), "{phase:?}: {error}");
        assert!(step_names(&t).contains(&"roll back after takeover"));
        assert_eq!(
            rig.running().await,
            ["aaaaaaa", "aaaaaaa"],
            "{phase:?}: the new containers were removed"
        );
        assert_eq!(rig.serving().await, (1, 2), "{phase:?}: release 1 serves");
        assert_eq!(
            state::instances(&rig.m1.coord, &rig.app, &rig.env)
                .await
                .unwrap()
                .len(),
            2,
            "{phase:?}: only the old instance nodes"
        );
        assert!(rig.m2.tasks.in_flight().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_stopped_after_the_switch_is_finished_by_the_next_manager() {
    let rig = Rig::new().await;
    let first = rig.ended(&rig.m1, &rig.release("aaaaaaa").await).await;
    assert_eq!(first.state, TaskState::Done);
    for (i, phase) in [Phase::Acknowledging, Phase::Draining, Phase::Recording]
        .into_iter()
        .enumerate()
    {
        let sha = format!("cccccc{i}");
        let number = i as i64 + 2;
        let t = rig.crash_and_recover(&sha, phase).await;
        assert_eq!(t.state, TaskState::Done, "{phase:?}: {t:?}");
        assert_eq!(t.release, Some(number), "{phase:?}");
        assert!(step_names(&t).contains(&"finish after takeover"));
        assert_eq!(
            rig.running().await,
            [sha.clone(), sha.clone()],
            "{phase:?}: the old containers were drained"
        );
        assert_eq!(rig.serving().await, (number, 2), "{phase:?}");
        let r = rig
            .m2
            .history
            .release("web", "prod", number)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.sha, sha, "{phase:?}: the release is recorded");
        assert!(rig.m2.tasks.in_flight().await.unwrap().is_empty());
    }
}
