//! The release engine end to end on one shared cluster (two supervisors in zones `zone-a` and `zone-b`
//! on dockerd in network namespaces, a real router, the registry, ZooKeeper), in one test so the cluster
//! is built once: bad input changes nothing; deploy answers through the router; a redeploy under load
//! drops no request; a failing health check leaves the old release serving and nothing behind; two
//! concurrent deploys give one 409 naming the task; rollback, scale, maintenance, and teardown by
//! container, app.env and app leave nothing behind.

use std::time::{Duration, Instant};

use atlantis_common::api::manager::TaskState;
use atlantis_common::zk::{RouterKind, Section};
use atlantis_testkit::load::Load;
use reqwest::Method;
use serde_json::json;

use crate::support::Cluster;

const HOST: &str = "hello.prod.apps.localhost";
const SHA1: &str = "1111111aaaaaaa";
const SHA2: &str = "2222222bbbbbbb";
const SHA3: &str = "3333333ccccccc";

/// A command that serves `/version` (the sha) and `/dep` (the dependency's secret) with busybox httpd.
fn command(sha: &str) -> serde_json::Value {
    json!([
        "/bin/sh",
        "-c",
        format!(
            "echo {sha} > /www/version; echo \"$DB_URL\" > /www/dep; exec httpd -f -p 8080 -h /www"
        )
    ])
}

fn deploy_body(sha: &str) -> serde_json::Value {
    json!({"sha": sha, "command": command(sha), "start_timeout_ms": 20000})
}

/// The instance node names of hello.prod.
async fn instance_ids(c: &Cluster) -> Vec<String> {
    let l = c.coord.layout();
    c.zk_children(&l.instances(&"hello".parse().unwrap(), &"prod".parse().unwrap()))
        .await
}

async fn pool_backends(c: &Cluster) -> Vec<String> {
    let l = c.coord.layout();
    c.zk_children(&l.router_item(RouterKind::External, Section::Pools, "hello.prod"))
        .await
}

/// Load on `/version` through the router: `workers` clients paced to `rate` requests/s in total,
/// accepting either release's body.
fn load(port: u16, rate: u32, workers: u32) -> Load {
    Load::start(
        &[format!("http://127.0.0.1:{port}/version")],
        HOST,
        &[SHA1.to_owned(), SHA2.to_owned()],
        workers as usize,
        Duration::from_secs_f64(f64::from(workers) / f64::from(rate)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_end_to_end() {
    let c = Cluster::start().await;
    let l = c.coord.layout().clone();

    // --- Setup through the API: env, dependency (sealed), app, the router's port.
    let (s, _) = c
        .call(Method::POST, "/v1/envs", Some(json!({"name": "prod"})))
        .await;
    assert_eq!(s, 201);
    let (s, dep) = c
        .call(
            Method::PUT,
            "/v1/dependencies/db",
            Some(json!({"data": {"DB_URL": "postgres://s3cret-in-transit"}, "endpoints": [{"address": "10.250.0.1", "port": 5432}]})),
        )
        .await;
    assert_eq!(s, 200, "{dep}");
    assert_eq!(dep["data_keys"], json!(["DB_URL"]));
    assert!(
        !dep.to_string().contains("s3cret"),
        "values are never returned"
    );
    let raw = c
        .coord
        .get_raw(&l.dependency(&"db".parse().unwrap()))
        .await
        .unwrap()
        .unwrap()
        .0;
    assert!(
        !String::from_utf8_lossy(&raw).contains("s3cret"),
        "stored sealed in ZooKeeper"
    );
    // A dependency is declared once granted (db has no team: a superuser grants it).
    let hello = json!({"name": "hello", "repo": "git@example:hello", "dependencies": ["db"]});
    let (s, v) = c.call(Method::POST, "/v1/apps", Some(hello.clone())).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("dependency_not_granted")),
        "{v}"
    );
    let (s, _) = c
        .call(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "hello", "repo": "git@example:hello"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = c
        .call(Method::PUT, "/v1/dependencies/db/grants/hello", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c.call(Method::PUT, "/v1/apps/hello", Some(hello)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .call(
            Method::PUT,
            "/v1/router-config/external/ports/http",
            Some(json!({"port": c.router_port, "trie": "apps"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    c.publish("hello", SHA1).await;
    c.publish("hello", SHA2).await;
    c.publish("hello", SHA3).await;

    bad_input(&c).await;

    // --- First deploy: one container per zone, 200 through the router.
    let t = c
        .run_task("/v1/apps/hello/envs/prod/deploy", deploy_body(SHA1))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_eq!(t.release, Some(1));
    let names: Vec<&str> = t.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "start containers",
            "switch traffic",
            "wait for routers",
            "drain old release",
            "record release"
        ]
    );
    assert!(t.steps.iter().all(|s| s.took_ms.is_some()));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    c.router_serves(HOST, "/version", SHA1).await;
    c.router_serves(HOST, "/dep", "postgres://s3cret-in-transit")
        .await;
    let ids = instance_ids(&c).await;
    assert_eq!(ids.len(), 2);
    for h in &c.hosts {
        assert_eq!(h.containers().len(), 1, "one container per zone");
    }
    assert_eq!(pool_backends(&c).await.len(), 2);

    // --- Redeploy under load: no failed request.
    let load = load(c.router_port, 400, 16);
    let t0 = Instant::now();
    let t = c
        .run_task("/v1/apps/hello/envs/prod/deploy", deploy_body(SHA2))
        .await;
    let deploy_took = t0.elapsed();
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let remaining = Duration::from_secs(11).saturating_sub(load.elapsed());
    tokio::time::sleep(remaining).await;
    let atlantis_testkit::load::Outcome {
        ok,
        failed,
        elapsed: took,
        errors,
    } = load.finish().await;
    let rate = ok as f64 / took.as_secs_f64();
    eprintln!(
        "redeploy under load: {ok} ok, {failed} failed in {took:?} ({rate:.0} req/s); deploy task took {deploy_took:?}"
    );
    assert_eq!(
        failed,
        0,
        "failed requests: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert!(took >= Duration::from_secs(10));
    assert!(rate >= 300.0, "load ran at {rate:.0} req/s");
    c.router_serves(HOST, "/version", SHA2).await;
    let after = instance_ids(&c).await;
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|i| !ids.contains(i)), "old instances gone");
    assert!(after.iter().all(|i| i.starts_with("hello-2222222-prod-")));
    assert_eq!(
        c.all_containers(),
        after,
        "old containers removed from the hosts"
    );

    // --- A sha whose health check fails: task fails, old release serves, nothing left.
    let before_containers = c.all_containers();
    let t = c
        .run_task(
            "/v1/apps/hello/envs/prod/deploy",
            json!({"sha": SHA3, "command": command(SHA3), "health_path": "/missing", "start_timeout_ms": 2000}),
        )
        .await;
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    let err = t.error.clone().unwrap();
    assert!(err.contains("did not start"), "{err}");
    c.router_serves(HOST, "/version", SHA2).await;
    assert_eq!(instance_ids(&c).await, after);
    assert_eq!(c.all_containers(), before_containers);
    assert_eq!(pool_backends(&c).await.len(), 2);
    let (_, rel) = c
        .call(Method::GET, "/v1/apps/hello/envs/prod/releases", None)
        .await;
    assert_eq!(rel.as_array().unwrap().len(), 2, "no release recorded");

    // --- Two deploys at once: exactly one proceeds, the other gets 409 naming its task.
    let (a, b) = tokio::join!(
        c.call(
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(deploy_body(SHA1))
        ),
        c.call(
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(deploy_body(SHA1))
        )
    );
    let (won, lost) = if a.0 == 202 { (a, b) } else { (b, a) };
    assert_eq!((won.0, lost.0), (202, 409), "{won:?} {lost:?}");
    let task = won.1["task_id"].as_str().unwrap();
    assert_eq!(lost.1["code"], "locked");
    assert!(
        lost.1["message"].as_str().unwrap().contains(task),
        "the 409 names the task: {}",
        lost.1
    );
    // Progress is in ZooKeeper while the task runs...
    let node: serde_json::Value = c.coord.get(&l.task(task)).await.unwrap().unwrap().value;
    assert_eq!(node["id"], task);
    let t = c.wait_task(task).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_eq!(t.release, Some(3));
    // ...and in the history once it ended.
    atlantis_testkit::eventually(Duration::from_secs(5), "task node removed", || async {
        c.coord
            .stat(&l.task(task))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let (_, tasks) = c.call(Method::GET, "/v1/tasks?app=hello", None).await;
    assert!(tasks.as_array().unwrap().iter().any(|t| t["id"] == task));
    c.router_serves(HOST, "/version", SHA1).await;

    // --- Rollback to the previous release (2, SHA2), then to a given one (1, SHA1).
    let t = c
        .run_task("/v1/apps/hello/envs/prod/rollback", json!({}))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_eq!(t.release, Some(4));
    c.router_serves(HOST, "/version", SHA2).await;
    let t = c
        .run_task("/v1/apps/hello/envs/prod/rollback", json!({"to": 1}))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    c.router_serves(HOST, "/version", SHA1).await;
    let (_, rel) = c
        .call(Method::GET, "/v1/apps/hello/envs/prod/releases", None)
        .await;
    let shas: Vec<&str> = rel
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sha"].as_str().unwrap())
        .collect();
    assert_eq!(shas, [SHA1, SHA2, SHA1, SHA2, SHA1]);

    // --- Scale up to 2 per zone, then down to 1, without a new release.
    let t = c
        .run_task("/v1/apps/hello/envs/prod/scale", json!({"instances": 2}))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_eq!(instance_ids(&c).await.len(), 4);
    for h in &c.hosts {
        assert_eq!(h.containers().len(), 2);
    }
    assert_eq!(pool_backends(&c).await.len(), 4);
    let t = c
        .run_task("/v1/apps/hello/envs/prod/scale", json!({"instances": 1}))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    let ids = instance_ids(&c).await;
    assert_eq!(ids.len(), 2);
    assert_eq!(c.all_containers(), ids);
    assert_eq!(pool_backends(&c).await.len(), 2);
    let (_, rel) = c
        .call(Method::GET, "/v1/apps/hello/envs/prod/releases", None)
        .await;
    assert_eq!(rel.as_array().unwrap().len(), 5, "scaling made no release");
    c.router_serves(HOST, "/version", SHA1).await;

    // --- Maintenance: out of the pool while running, then back.
    let (s, v) = c
        .call(
            Method::POST,
            &format!("/v1/containers/{}/maintenance", ids[0]),
            Some(json!({"on": true})),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("maintenance")), "{v}");
    assert_eq!(pool_backends(&c).await.len(), 1);
    assert_eq!(c.all_containers(), ids, "it keeps running");
    c.router_serves(HOST, "/version", SHA1).await;
    let (s, v) = c
        .call(
            Method::POST,
            &format!("/v1/containers/{}/maintenance", ids[0]),
            Some(json!({"on": false})),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("serving")), "{v}");
    assert_eq!(pool_backends(&c).await.len(), 2);

    // --- Logs of a container, proxied from its supervisor.
    let logs = c
        .http
        .get(format!("{}/v1/containers/{}/logs?tail=10", c.base, ids[0]))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(logs.status(), 200);

    // --- Teardown of one container.
    let t = c
        .run_task(&format!("/v1/containers/{}/teardown", ids[0]), json!({}))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_eq!(instance_ids(&c).await, vec![ids[1].clone()]);
    assert_eq!(c.all_containers(), vec![ids[1].clone()]);
    assert_eq!(pool_backends(&c).await.len(), 1);
    c.router_serves(HOST, "/version", SHA1).await;

    // --- Deleting a deployed app is refused.
    c.expect_err(Method::DELETE, "/v1/apps/hello", None, 409, "in_use")
        .await;

    // --- Teardown of the app.env: no container, node or rule left; the router answers 404.
    let t = c
        .run_task("/v1/apps/hello/envs/prod/teardown", json!({}))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_nothing_left(&c, "prod").await;
    eventually_status(&c, HOST, 404).await;

    // --- Teardown of a whole app (two envs).
    let (s, _) = c
        .call(Method::POST, "/v1/envs", Some(json!({"name": "staging"})))
        .await;
    assert_eq!(s, 201);
    for env in ["prod", "staging"] {
        let t = c
            .run_task(
                &format!("/v1/apps/hello/envs/{env}/deploy"),
                deploy_body(SHA2),
            )
            .await;
        assert_eq!(t.state, TaskState::Done, "{t:?}");
    }
    assert_eq!(c.all_containers().len(), 4);
    c.router_serves("hello.staging.apps.localhost", "/version", SHA2)
        .await;
    let t = c.run_task("/v1/apps/hello/teardown", json!({})).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert_nothing_left(&c, "prod").await;
    assert_nothing_left(&c, "staging").await;
    assert!(
        c.zk_children(&l.all_instances()).await.is_empty(),
        "instances/ is empty"
    );
    let (s, _) = c.call(Method::DELETE, "/v1/apps/hello", None).await;
    assert_eq!(s, 204);

    internal_apps(&c).await;
    crate::internal_deps::internal_dependencies(&c).await;
    crate::drain::slow_request_survives_a_deploy(&c).await;
}

/// An internal app gets a stable port on the internal routers of every zone; an app that depends on it
/// is given its zone's internal router address and that port; teardown removes the listener.
async fn internal_apps(c: &Cluster) {
    let l = c.coord.layout();
    for (name, internal) in [("inner", true), ("outer", false)] {
        let (s, v) = c
            .call(
                Method::POST,
                "/v1/apps",
                Some(json!({"name": name, "internal": internal})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        c.publish(name, SHA1).await;
    }
    let (s, v) = c
        .call(Method::PUT, "/v1/dependencies/inner/grants/outer", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .call(
            Method::PUT,
            "/v1/apps/outer",
            Some(json!({"name": "outer", "dependencies": ["inner"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let t = c
        .run_task("/v1/apps/inner/envs/prod/deploy", deploy_body(SHA1))
        .await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let ports: serde_json::Value = c
        .coord
        .get(&l.stable_ports(RouterKind::Internal))
        .await
        .unwrap()
        .unwrap()
        .value;
    let port = ports["ports"]["inner.prod"]
        .as_u64()
        .expect("a stable port") as u16;
    // Each zone's internal router listens on the root end of that zone's veth.
    let ips: Vec<String> = c
        .hosts
        .iter()
        .map(|h| h.docker.host_ip().to_string())
        .collect();
    for ip in &ips {
        let url = format!("http://{ip}:{port}/version");
        atlantis_testkit::eventually(Duration::from_secs(20), &url, || async {
            let r = c.http.get(&url).send().await.ok()?;
            (r.status() == 200 && r.text().await.ok()?.trim() == SHA1).then_some(())
        })
        .await;
    }
    let body = json!({"sha": SHA1, "command": ["/bin/sh", "-c", "echo $ATLANTIS_DEP_INNER > /www/inner; exec httpd -f -p 8080 -h /www"]});
    let t = c.run_task("/v1/apps/outer/envs/prod/deploy", body).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    let want: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "dependency addresses seen: {seen:?}"
        );
        let (s, b) = c
            .through_router("outer.prod.apps.localhost", "/inner")
            .await;
        if s == 200 {
            let b = b.trim().to_owned();
            assert!(want.contains(&b), "unexpected dependency address {b:?}");
            seen.insert(b);
        }
    }
    for app in ["outer", "inner"] {
        let t = c
            .run_task(&format!("/v1/apps/{app}/teardown"), json!({}))
            .await;
        assert_eq!(t.state, TaskState::Done, "{t:?}");
    }
    for s in Section::ALL {
        assert!(
            c.coord
                .stat(&l.router_item(RouterKind::Internal, s, "inner.prod"))
                .await
                .unwrap()
                .is_none(),
            "internal {s:?} inner.prod removed"
        );
    }
    let url = format!("http://{}:{port}/version", ips[0]);
    atlantis_testkit::eventually(
        Duration::from_secs(20),
        "internal listener closed",
        || async { c.http.get(&url).send().await.is_err().then_some(()) },
    )
    .await;
    assert!(c.all_containers().is_empty());
    for app in ["outer", "inner"] {
        let (s, _) = c
            .call(Method::DELETE, &format!("/v1/apps/{app}"), None)
            .await;
        assert_eq!(s, 204);
    }
    let ports: serde_json::Value = c
        .coord
        .get(&l.stable_ports(RouterKind::Internal))
        .await
        .unwrap()
        .unwrap()
        .value;
    assert!(ports["ports"].as_object().unwrap().is_empty(), "{ports}");
}

async fn eventually_status(c: &Cluster, host: &str, want: u16) {
    atlantis_testkit::eventually(Duration::from_secs(20), "router status", || async {
        (c.through_router(host, "/version").await.0 == want).then_some(())
    })
    .await;
}

async fn assert_nothing_left(c: &Cluster, env: &str) {
    let l = c.coord.layout();
    let pool = format!("hello.{env}");
    assert!(
        c.all_containers()
            .iter()
            .all(|n| !n.contains(&format!("-{env}-")))
    );
    assert!(
        c.zk_children(&l.instances(&"hello".parse().unwrap(), &env.parse().unwrap()))
            .await
            .is_empty()
    );
    for s in [Section::Pools, Section::Rules] {
        assert!(
            c.coord
                .stat(&l.router_item(RouterKind::External, s, &pool))
                .await
                .unwrap()
                .is_none(),
            "{pool} {s:?} removed"
        );
    }
    let trie: serde_json::Value = c
        .coord
        .get(&l.router_item(RouterKind::External, Section::Tries, "apps"))
        .await
        .unwrap()
        .unwrap()
        .value;
    assert!(
        !trie["rules"].as_array().unwrap().contains(&json!(pool)),
        "{trie}"
    );
    assert!(
        c.coord
            .stat(&l.release(&"hello".parse().unwrap(), &env.parse().unwrap()))
            .await
            .unwrap()
            .is_none()
    );
}

/// A bad request: method, path, body, status, code, a word the message must contain.
type Case = (
    Method,
    &'static str,
    Option<serde_json::Value>,
    u16,
    &'static str,
    &'static str,
);

/// Bad input: each a clear 4xx, and nothing changes (no instance, no pool, no container, no release).
async fn bad_input(c: &Cluster) {
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "Bad_Name"})),
            400,
            "invalid_request",
            "app name",
        ),
        (
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "x", "bogus": 1})),
            400,
            "invalid_request",
            "unknown field",
        ),
        (
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "x", "dependencies": ["nope"]})),
            404,
            "not_found",
            "nope",
        ),
        (
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "hello"})),
            409,
            "exists",
            "hello",
        ),
        (
            Method::POST,
            "/v1/apps/nope/envs/prod/deploy",
            Some(json!({"sha": SHA1})),
            404,
            "not_found",
            "no app nope",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/nope/deploy",
            Some(json!({"sha": SHA1})),
            404,
            "not_found",
            "no env nope",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(json!({"sha": "abcdef0123"})),
            404,
            "image_not_found",
            "apps/hello:abcdef0123",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(json!({"sha": "XYZ"})),
            400,
            "invalid_request",
            "sha",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(json!({"sha": SHA1, "instances": 5})),
            422,
            "no_capacity",
            "zone zone-a has room for 4 of 5",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(json!({"sha": SHA1, "memory_mb": 1024})),
            422,
            "no_capacity",
            "memory",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(json!({"sha": SHA1, "instances": 0})),
            400,
            "invalid_field",
            "instances",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(json!({"sha": SHA1, "health_path": "no-slash"})),
            400,
            "invalid_field",
            "health.path",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/deploy",
            Some(json!({"sha": SHA1, "env_vars": {"ATLANTIS_X": "1"}})),
            400,
            "invalid_field",
            "ATLANTIS_X",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/rollback",
            Some(json!({})),
            404,
            "not_found",
            "not deployed",
        ),
        (
            Method::POST,
            "/v1/apps/hello/envs/prod/scale",
            Some(json!({"instances": 2})),
            404,
            "not_found",
            "not deployed",
        ),
        (
            Method::PUT,
            "/v1/router-config/external/rules/r1",
            Some(json!({"type": "path-regexp", "value": "(", "pool": "p"})),
            400,
            "invalid_router_config",
            "invalid rule",
        ),
        (
            Method::PUT,
            "/v1/router-config/external/rules/r1",
            Some(json!({"type": "host", "value": "a.example", "pool": "p", "next": "t"})),
            400,
            "invalid_router_config",
            "exactly one",
        ),
        (
            Method::PUT,
            "/v1/router-config/external/pools/p..",
            Some(json!({"healthz_every_ms": 5})),
            400,
            "invalid_router_config",
            "at least 100",
        ),
        (
            Method::PUT,
            "/v1/router-config/external/rules/a%2Fb",
            Some(json!({"type": "static", "value": "true", "pool": "p"})),
            400,
            "invalid_router_config",
            "name",
        ),
        (
            Method::PUT,
            "/v1/router-config/sideways/rules/r1",
            Some(json!({})),
            400,
            "invalid_request",
            "internal or external",
        ),
        (
            Method::PUT,
            "/v1/router-config/external/ports/other",
            Some(json!({"port": c.router_port, "trie": "x"})),
            409,
            "exists",
            "already served",
        ),
        (
            Method::PUT,
            "/v1/dependencies/db2",
            Some(json!({"data": {"lower": "x"}})),
            400,
            "invalid_field",
            "data.lower",
        ),
        (
            Method::GET,
            "/v1/containers/not-a-container",
            None,
            400,
            "invalid_request",
            "container id",
        ),
        (
            Method::GET,
            "/v1/tasks/zz%20z",
            None,
            400,
            "invalid_request",
            "task id",
        ),
        (
            Method::GET,
            "/v1/tasks/0123abcd",
            None,
            404,
            "not_found",
            "no task",
        ),
        (
            Method::GET,
            "/v1/nothing",
            None,
            404,
            "not_found",
            "no such route",
        ),
    ];
    for (method, path, body, status, code, needle) in cases {
        let msg = c.expect_err(method, path, body, status, code).await;
        assert!(
            msg.contains(needle),
            "{path}: {msg:?} should mention {needle:?}"
        );
    }
    // Oversized bodies are refused.
    let big = json!({"name": "x", "repo": "a".repeat(100_000)});
    c.expect_err(Method::POST, "/v1/apps", Some(big), 413, "too_large")
        .await;
    let l = c.coord.layout();
    assert!(c.zk_children(&l.all_instances()).await.is_empty());
    assert!(
        c.zk_children(&l.router_section(RouterKind::External, Section::Pools))
            .await
            .is_empty()
    );
    assert!(
        c.zk_children(&l.router_section(RouterKind::External, Section::Rules))
            .await
            .is_empty()
    );
    assert!(
        c.zk_children(&l.locks()).await.is_empty(),
        "no lock left held"
    );
    assert!(c.all_containers().is_empty());
    let (_, apps) = c.call(Method::GET, "/v1/apps", None).await;
    assert_eq!(apps.as_array().unwrap().len(), 1);
}
