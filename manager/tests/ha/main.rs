//! Manager HA against real parts, on one cluster (a three-node ZooKeeper ensemble, three supervisors on
//! dockerd in network namespaces, a real router, the registry, two managers run as child processes of
//! their binary):
//!
//! - SIGKILL of the manager running a deploy, at three steps (before the containers start, once they are
//!   healthy, after the switch): the task ends rolled back or finished within 30 s, the router answers
//!   throughout, and no container, instance node, task node or lock is left over;
//! - two managers deploying the same app.env: one proceeds, the other is refused; kill the holder, and
//!   the other one gets through;
//! - the ZooKeeper ensemble's leader killed during a deploy under router load: the deploy completes, the
//!   router serves every request, every acknowledged write is there afterwards;
//! - a supervisor host dying: its containers come back on the other host of its zone within 60 s, the
//!   app answering throughout except requests in flight on the dead host (counted and printed);
//! - the supervisor client and the in-memory fake host keep the same contract ([`fleet::contract`]).

#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

mod cluster;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use atlantis_common::api::manager::{InstanceRecord, TaskState};
use atlantis_common::zk::{RouterKind, Section};
use atlantis_manager::fleet::{self, HostApi};
use atlantis_testkit::eventually;
use reqwest::Method;
use serde_json::json;

use cluster::HaCluster;

const HOST: &str = "hello.prod.apps.localhost";

fn sha(n: u32) -> String {
    format!("{n}{n}{n}{n}{n}{n}{n}aaaaaaa")
}

fn deploy_body(sha: &str) -> serde_json::Value {
    json!({
        "sha": sha,
        "command": ["/bin/sh", "-c", format!("echo {sha} > /www/version; exec httpd -f -p 8080 -h /www")],
        "start_timeout_ms": 20000,
    })
}

/// Instance records of hello.prod.
async fn instances(c: &HaCluster) -> Vec<InstanceRecord> {
    let l = c.coord.layout();
    let (app, env) = ("hello".parse().unwrap(), "prod".parse().unwrap());
    let mut out = Vec::new();
    for id in c.coord.children(&l.instances(&app, &env)).await.unwrap() {
        if let Some(v) = c
            .coord
            .get::<InstanceRecord>(&l.instance(&app, &env, &id.parse().unwrap()))
            .await
            .unwrap()
        {
            out.push(v.value);
        }
    }
    out
}

/// Container names on the live hosts.
fn containers(c: &HaCluster, live: &[usize]) -> BTreeSet<String> {
    live.iter().flat_map(|&i| c.hosts[i].containers()).collect()
}

/// Waits until nothing is left over: the containers on the hosts are exactly the instance nodes, every
/// instance serves `sha`, the pool names exactly their backends, no task node and no lock remain.
async fn converged(c: &HaCluster, live: &[usize], want_sha: &str) {
    let l = c.coord.layout().clone();
    let pool = l.router_item(RouterKind::External, Section::Pools, "hello.prod");
    eventually(Duration::from_secs(30), "nothing left over", || async {
        let inst = instances(c).await;
        let ids: BTreeSet<String> = inst.iter().map(|i| i.container_id.to_string()).collect();
        let running = containers(c, live);
        let backends: BTreeSet<String> =
            c.coord.children(&pool).await.unwrap().into_iter().collect();
        let want_backends: BTreeSet<String> =
            inst.iter().filter_map(|i| i.backend.clone()).collect();
        let tasks = c.coord.children(&l.tasks()).await.unwrap();
        let locks = c.coord.children(&l.locks()).await.unwrap();
        let ok = !inst.is_empty()
            && inst.iter().all(|i| i.sha.as_str() == want_sha)
            && ids == running
            && backends == want_backends
            && tasks.is_empty()
            && locks.is_empty();
        if !ok {
            tracing::info!(
                ?ids,
                ?running,
                ?backends,
                ?tasks,
                ?locks,
                "not converged yet"
            );
        }
        ok.then_some(())
    })
    .await;
}

async fn deploy(c: &HaCluster, m: usize, sha: &str) -> String {
    let (s, v) = c
        .call(
            m,
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(deploy_body(sha)),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    v["task_id"].as_str().unwrap().to_owned()
}

/// Manager `m` is started pausing at `step`, deploys `new`, is SIGKILLed there and restarted; the task
/// must end `want` within 30 s with the router answering throughout.
async fn kill_at(c: &mut HaCluster, step: &str, serving: &str, new: &str, want: TaskState) {
    c.restart(0, Some(step)).await;
    let id = deploy(c, 0, new).await;
    c.managers[0].paused_at(step).await;
    let load = cluster::load(
        c.router_port,
        HOST,
        &[serving, new],
        4,
        Duration::from_millis(20),
    );
    c.managers[0].kill();
    let killed = Instant::now();
    c.restart(0, None).await;
    let t = c.task_end(&id, Duration::from_secs(30)).await;
    let took = killed.elapsed();
    assert_eq!(t.state, want, "kill at {step}: {t:?}");
    assert!(t.warnings.iter().any(|w| w.contains("taken over")), "{t:?}");
    let final_sha = if want == TaskState::Done {
        new
    } else {
        serving
    };
    c.router_serves(HOST, final_sha, Duration::from_secs(20))
        .await;
    let atlantis_testkit::load::Outcome {
        ok, failed, errors, ..
    } = load.finish().await;
    println!(
        "kill -9 at {step}: task {:?} {took:?} after the kill; router load {ok} answered, {failed} failed {errors:?}",
        t.state
    );
    assert!(ok > 0);
    assert_eq!(failed, 0, "the app answers throughout: {errors:?}");
    converged(c, &[0, 1, 2], final_sha).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manager_ha_end_to_end() {
    let mut c = HaCluster::start().await;

    // The real supervisor client keeps the fake host's contract.
    contract_on_a_real_supervisor(&c).await;

    // --- Setup and a first release (one container per zone).
    assert_eq!(
        c.call(0, Method::POST, "/v1/envs", Some(json!({"name": "prod"})))
            .await
            .0,
        201
    );
    assert_eq!(
        c.call(0, Method::POST, "/v1/apps", Some(json!({"name": "hello"})))
            .await
            .0,
        201
    );
    let (s, v) = c
        .call(
            1,
            Method::PUT,
            "/v1/router-config/external/ports/http",
            Some(json!({"port": c.router_port, "trie": "apps"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for n in 1..=6 {
        c.publish("hello", &sha(n)).await;
    }
    let id = deploy(&c, 0, &sha(1)).await;
    let t = c.task_end(&id, Duration::from_secs(90)).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    c.router_serves(HOST, &sha(1), Duration::from_secs(30))
        .await;
    converged(&c, &[0, 1, 2], &sha(1)).await;

    // --- SIGKILL at three steps.
    kill_at(&mut c, "start", &sha(1), &sha(2), TaskState::Failed).await;
    kill_at(&mut c, "switch", &sha(1), &sha(3), TaskState::Failed).await;
    kill_at(&mut c, "drain", &sha(1), &sha(4), TaskState::Done).await;

    // --- Two managers, one app.env: the holder is killed, the other one gets the lock.
    c.restart(0, Some("switch")).await;
    let held = deploy(&c, 0, &sha(5)).await;
    c.managers[0].paused_at("switch").await;
    let (s, v) = c
        .call(
            1,
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(deploy_body(&sha(5))),
        )
        .await;
    assert_eq!(
        s, 409,
        "the second deploy is refused while the first holds the lock: {v}"
    );
    assert!(v["message"].as_str().unwrap().contains(&held), "{v}");
    c.managers[0].kill();
    let killed = Instant::now();
    let second = eventually(
        Duration::from_secs(30),
        "manager-2 takes the lock",
        || async {
            let (s, v) = c
                .call(
                    1,
                    Method::POST,
                    "/v1/apps/hello/envs/prod/deploy",
                    Some(deploy_body(&sha(5))),
                )
                .await;
            (s == 202).then(|| v["task_id"].as_str().unwrap().to_owned())
        },
    )
    .await;
    println!(
        "lock free for manager-2 {:?} after the holder's SIGKILL",
        killed.elapsed()
    );
    let t = c.task_end(&second, Duration::from_secs(90)).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    let first = c.task_end(&held, Duration::from_secs(30)).await;
    assert_eq!(first.state, TaskState::Failed, "{first:?}");
    c.restart(0, None).await;
    c.router_serves(HOST, &sha(5), Duration::from_secs(20))
        .await;
    converged(&c, &[0, 1, 2], &sha(5)).await;

    // --- The ZooKeeper leader dies during a deploy, under router load.
    zk_leader_dies(&mut c).await;

    // --- A supervisor host dies.
    host_dies(&mut c).await;

    // --- A host that flaps moves nothing; once it stays away, its container moves.
    flapping_host(&c).await;
}

/// Tasks of hello that re-placed containers.
async fn replacements(c: &HaCluster) -> usize {
    let (s, v) = c
        .call(1, Method::GET, "/v1/tasks?app=hello&limit=1000", None)
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|t| t["warnings"].to_string().contains("re-placing"))
        .count()
}

async fn flapping_host(c: &HaCluster) {
    use atlantis_common::api::supervisor::{Resources, SupervisorRecord};
    let ghost_coord = atlantis_common::zk::Coord::connect(c.zk.clone())
        .await
        .unwrap();
    let l = c.coord.layout().clone();
    let ghost: atlantis_common::HostName = "host-ghost".parse().unwrap();
    let cap = Resources {
        slots: 8,
        cpu_millis: 8000,
        memory_mb: 8192,
    };
    let record = SupervisorRecord {
        version: 1,
        software_version: "ghost".into(),
        address: "http://127.0.0.1:9".into(),
        host: ghost.clone(),
        zone: "zone-a".parse().unwrap(),
        capacity: cap,
        free: cap,
    };
    // One container of hello.prod on the ghost host (it never ran: the test writes only the node).
    let mut inst = instances(c).await[0].clone();
    inst.container_id = atlantis_common::ContainerId::generate(&inst.app, &inst.sha, &inst.env);
    inst.host = ghost.clone();
    inst.zone = "zone-a".parse().unwrap();
    inst.backend = None;
    let path = l.instance(&inst.app, &inst.env, &inst.container_id);
    let before = replacements(c).await;
    let mut reg = Some(
        ghost_coord
            .register_ephemeral(&l.supervisor(&ghost), &record)
            .await
            .unwrap(),
    );
    c.coord.create(&path, &inst).await.unwrap();
    // Flap: away 1.2 s, back 1.2 s, four times (the grace period is 3 s).
    for _ in 0..4 {
        reg.take().unwrap().deregister().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        reg = Some(
            ghost_coord
                .register_ephemeral(&l.supervisor(&ghost), &record)
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(
        replacements(c).await,
        before,
        "a flapping host moves nothing"
    );
    assert!(c.coord.stat(&path).await.unwrap().is_some());
    // Away for good: the container is placed again in its zone.
    reg.take().unwrap().deregister().await.unwrap();
    let gone = Instant::now();
    eventually(
        Duration::from_secs(30),
        "the ghost's container moves",
        || async {
            let moved = c.coord.stat(&path).await.unwrap().is_none()
                && instances(c)
                    .await
                    .iter()
                    .filter(|i| i.zone.as_str() == "zone-a" && i.host.as_str() == "host-a2")
                    .count()
                    == 2;
            moved.then_some(())
        },
    )
    .await;
    println!(
        "flapping host: no move while it flapped; moved {:?} after it stayed away",
        gone.elapsed()
    );
    eventually(
        Duration::from_secs(10),
        "one more re-placement task",
        || async { (replacements(c).await == before + 1).then_some(()) },
    )
    .await;
}

async fn zk_leader_dies(c: &mut HaCluster) {
    let load = cluster::load(
        c.router_port,
        HOST,
        &[&sha(5), &sha(6)],
        4,
        Duration::from_millis(20),
    );
    let id = deploy(c, 1, &sha(6)).await;
    // Writes acknowledged around the failover: every one of them must be there afterwards.
    let marks = c.coord.layout().root().to_owned() + "/marks";
    let writer = {
        let coord = c.coord.clone();
        let marks = marks.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                let p = format!("{marks}/m{i:04}");
                if coord.create(&p, &json!({"i": i})).await.is_ok() {
                    acked.push(p);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        })
    };
    // The writer and the router load are under way before the leader dies.
    eventually(
        Duration::from_secs(10),
        "marker writes under way",
        || async { (c.coord.children(&marks).await.ok()?.len() >= 10).then_some(()) },
    )
    .await;
    load.settle(20, Duration::from_secs(10)).await;
    let leader = tokio::task::block_in_place(|| {
        let leader = c.ensemble.leader();
        c.ensemble.kill(leader);
        leader
    });
    let t = c.task_end(&id, Duration::from_secs(90)).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    let acked = writer.await.unwrap();
    let atlantis_testkit::load::Outcome {
        ok, failed, errors, ..
    } = load.finish().await;
    println!(
        "ZooKeeper leader killed during a deploy: task {:?}, router load {ok} answered, {failed} failed {errors:?}, {} writes acknowledged",
        t.state,
        acked.len()
    );
    assert!(ok > 0);
    assert_eq!(failed, 0, "routers keep serving: {errors:?}");
    for p in &acked {
        assert!(
            c.coord.stat(p).await.unwrap().is_some(),
            "acknowledged write {p} lost"
        );
    }
    assert!(acked.len() > 100, "writes go on after the failover");
    c.router_serves(HOST, &sha(6), Duration::from_secs(20))
        .await;
    converged(c, &[0, 1, 2], &sha(6)).await;
    let rel: atlantis_common::api::manager::ReleaseTarget = c
        .coord
        .get(
            &c.coord
                .layout()
                .release(&"hello".parse().unwrap(), &"prod".parse().unwrap()),
        )
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        Some(rel.number),
        t.release,
        "the release node is the deploy's"
    );
    tokio::task::block_in_place(|| {
        c.ensemble.restart(leader);
        c.ensemble.wait_quorum(3, Duration::from_secs(60));
    });
}

async fn host_dies(c: &mut HaCluster) {
    // hello.prod has one container per zone; the one in zone-a is on host-a1 or host-a2.
    let inst = instances(c).await;
    let victim_rec = inst
        .iter()
        .find(|i| i.zone.as_str() == "zone-a")
        .expect("a container in zone-a")
        .clone();
    let victim = if victim_rec.host.as_str() == "host-a1" {
        0
    } else {
        1
    };
    let other = 1 - victim;
    let load = cluster::load(
        c.router_port,
        HOST,
        &[&sha(6)],
        4,
        Duration::from_millis(20),
    );
    load.settle(20, Duration::from_secs(10)).await;
    c.hosts[victim].crash().await;
    let died = Instant::now();
    let moved = eventually(
        Duration::from_secs(60),
        "the dead host's container comes back in its zone",
        || async {
            let inst = instances(c).await;
            let back = inst.iter().find(|i| {
                i.zone.as_str() == "zone-a"
                    && i.host == c.hosts_name(other)
                    && i.state == atlantis_common::api::manager::InstanceState::Serving
            })?;
            (!inst
                .iter()
                .any(|i| i.container_id == victim_rec.container_id))
            .then(|| back.clone())
        },
    )
    .await;
    let took = died.elapsed();
    c.router_serves(HOST, &sha(6), Duration::from_secs(20))
        .await;
    load.settle(100, Duration::from_secs(20)).await;
    let atlantis_testkit::load::Outcome {
        ok, failed, errors, ..
    } = load.finish().await;
    println!(
        "host {} died: container {} replaced by {} on {} after {took:?}; router load {ok} answered, {failed} failed (in flight on the dead host or routed to it before the router's health check caught up) {errors:?}",
        victim_rec.host, victim_rec.container_id, moved.container_id, moved.host
    );
    assert!(ok > 0);
    assert!(
        failed * 10 < ok,
        "only requests caught by the dead host fail: {failed} of {}",
        ok + failed
    );
    let live = [other, 2];
    converged(c, &live, &sha(6)).await;
}

impl HaCluster {
    fn hosts_name(&self, i: usize) -> atlantis_common::HostName {
        ["host-a1", "host-a2", "host-b"][i].parse().unwrap()
    }
}

/// The fleet contract against the real supervisor on host-b (the fake runs it in the unit tests).
async fn contract_on_a_real_supervisor(c: &HaCluster) {
    let rec = atlantis_manager::state::supervisor(&c.coord, &"host-b".parse().unwrap())
        .await
        .unwrap()
        .expect("host-b registered");
    // Over mutual TLS, as managers call it.
    let tls = atlantis_common::tls::client_config(
        &c.ca.ca,
        Some((c.ca.client.0.as_path(), c.ca.client.1.as_path())),
    )
    .unwrap();
    let client = atlantis_common::supervisor_client::SupervisorClient::with_tls(
        &rec.address,
        support::TOKEN,
        Some(tls),
    )
    .unwrap()
    .with_deploy_timeout(Duration::from_secs(60));
    let (app, sha, env) = (
        "contract".parse().unwrap(),
        "abcdef1234567".parse().unwrap(),
        "test".parse().unwrap(),
    );
    let template = atlantis_common::api::supervisor::ContainerSpec {
        container_id: atlantis_common::ContainerId::generate(&app, &sha, &env),
        app,
        sha,
        env,
        image: support::BASE_IMAGE.into(),
        cpu_millis: 100,
        memory_mb: 64,
        ports: vec![8080],
        env_vars: Default::default(),
        config: None,
        dependencies: Vec::new(),
        health: atlantis_common::api::supervisor::HealthCheck {
            path: "/".into(),
            port: None,
            timeout_ms: 2000,
            start_timeout_ms: 20000,
            interval_ms: 500,
        },
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www".into(),
        ]),
        read_only_rootfs: false,
        allow_ping: false,
    };
    let host: &dyn HostApi = &client;
    fleet::contract::check(host, &template, rec.capacity.memory_mb + 1024).await;
}

/// A task claimed by another manager stops its old owner: the old owner's journal write fails, and its
/// instance-node and switch writes (which check the task node's version) cannot happen any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_task_stops_its_old_owner() {
    use atlantis_common::api::manager::TaskKind;
    use atlantis_manager::history::History;
    use atlantis_manager::tasks::Tasks;
    let zk = atlantis_testkit::ZooKeeper::shared();
    let mut z = atlantis_common::zk::ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    z.root = Some(format!("/mgr-claim-{}", support::unique()));
    let coord = atlantis_common::zk::Coord::connect(z).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(&format!("sqlite://{}", dir.path().join("h.db").display()))
        .await
        .unwrap();
    let a = Tasks::new(coord.clone(), history.clone(), "manager-a");
    let b = Tasks::new(coord.clone(), history.clone(), "manager-b");
    let task = a
        .start(
            "t1".into(),
            TaskKind::Deploy,
            "hello",
            Some("prod"),
            &["hello", "prod"],
        )
        .await;
    task.record(|j| j.lock.push("x".into())).await.unwrap();
    let (check_path, check_version) = task.owner_check().unwrap();

    let found = b.in_flight().await.unwrap();
    assert_eq!(found.len(), 1);
    let (node, version) = found.into_iter().next().unwrap();
    assert_eq!(node.journal.owner, "manager-a");
    // A claim on a stale version loses; the right one wins, once.
    assert!(b.adopt(node.clone(), version - 1).await.is_none());
    let taken = b.adopt(node.clone(), version).await.expect("claimed");
    assert!(
        b.adopt(node, version).await.is_none(),
        "never claimed twice"
    );

    let e = task.record(|j| j.takeovers = 99).await.unwrap_err();
    assert_eq!(e, atlantis_manager::tasks::TaskError::TakenOver, "{e}");
    assert!(task.is_lost());
    let write = coord
        .txn()
        .check(&check_path, check_version)
        .create_raw(&format!("{check_path}-side-effect"), b"")
        .commit()
        .await;
    assert!(write.is_err(), "a write guarded by the old version fails");
    // The old owner's end records nothing; the new owner's end removes the node.
    task.fail("old owner".into()).await;
    assert!(coord.stat(&check_path).await.unwrap().is_some());
    taken.done().await;
    assert!(coord.stat(&check_path).await.unwrap().is_none());
    let saved = history.task("t1").await.unwrap().unwrap();
    assert_eq!(saved.state, TaskState::Done);
    assert!(
        saved
            .warnings
            .iter()
            .any(|w| w.contains("taken over by manager manager-b"))
    );
}
