//! Dependencies by grant, tried as team A against team B's dependency on a real cluster (two
//! supervisors on dockerd in network namespaces, a router, ZooKeeper) with logins against a real slapd:
//! A cannot declare, deploy with or read `b-db` until B grants it; A asks, B sees the request and grants;
//! A's containers then hold the data and the firewall lets them reach the endpoint; B revokes and a task
//! replaces them without it, under load, with no failed request; A cannot grant itself or revoke B's
//! grants; deleting an app takes its grants with it. Also: a failed audit write refuses the call (503)
//! and does nothing; the admin token never reaches the manager's stderr.

use std::time::Duration;

use atlantis_common::api::manager::{AppRecord, TaskKind, TaskState};
use atlantis_common::zk::ZkConfig;
use atlantis_manager::auth::LdapConfig;
use atlantis_testkit::slapd::{GROUPS, Group, PEOPLE, User};
use atlantis_testkit::{Slapd, ZooKeeper, eventually};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Cluster, admin_token, manager_config, unique};

const SECRET: &str = "postgres://team-b-s3cret@10.250.7.7/b";
const ENDPOINT: &str = "10.250.7.7";
const SHA1: &str = "1111111aaaaaaa";
const SHA2: &str = "2222222bbbbbbb";
const HOST: &str = "a-web.prod.apps.localhost";

fn directory() -> Slapd {
    let user = |n: &str| User {
        name: n.into(),
        password: format!("{n}-pw"),
    };
    let group = |n: &str, m: &[&str]| Group {
        name: n.into(),
        members: m.iter().map(|s| (*s).to_owned()).collect(),
    };
    Slapd::start(
        &[user("alice"), user("bob"), user("carol"), user("root")],
        &[
            group("team-a", &["alice"]),
            group("team-b", &["bob"]),
            group("team-c", &["carol"]),
            group("admins", &["root"]),
        ],
    )
}

fn ldap(s: &Slapd) -> LdapConfig {
    LdapConfig {
        url: s.url(),
        starttls: false,
        ca_file: None,
        people_base: PEOPLE.into(),
        user_attr: "uid".into(),
        groups_base: GROUPS.into(),
        superuser_group: "admins".into(),
        timeout_ms: 2000,
    }
}

async fn login(c: &Cluster, user: &str) -> String {
    let r = c
        .http
        .post(format!("{}/v1/login", c.base))
        .json(&json!({"user": user, "password": format!("{user}-pw")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login {user}");
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The app's command: serves `/version` (the sha) and `/dep` (the dependency's secret as started).
fn deploy_body(sha: &str) -> Value {
    json!({"sha": sha, "start_timeout_ms": 20000, "command": ["/bin/sh", "-c",
        format!("echo {sha} > /www/version; echo \"$B_DB_URL\" > /www/dep; exec httpd -f -p 8080 -h /www")]})
}

/// Expects `status` and `code`; returns the message.
fn expect(r: &(u16, Value), status: u16, code: &str) -> String {
    assert_eq!((r.0, r.1["code"].as_str()), (status, Some(code)), "{}", r.1);
    r.1["message"].as_str().unwrap().to_owned()
}

/// `env` run in every container of a-web.prod through the exec API, as `token`: one output each.
async fn env_of_containers(c: &Cluster, token: &str) -> Vec<String> {
    let (s, list) = c
        .call_as(
            token,
            Method::GET,
            "/v1/apps/a-web/envs/prod/containers",
            None,
        )
        .await;
    assert_eq!(s, 200, "{list}");
    let mut out = Vec::new();
    for i in list.as_array().unwrap() {
        let id = i["container_id"].as_str().unwrap();
        let r = c
            .http
            .post(format!("{}/v1/containers/{id}/exec", c.base))
            .bearer_auth(token)
            .json(&json!({"argv": ["env"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "exec env in {id}");
        let text = r.text().await.unwrap();
        assert!(text.contains("\"exit_code\":0"), "{text}");
        out.push(text);
    }
    out
}

/// The iptables rules of every host's namespace.
fn firewall_rules(c: &Cluster) -> String {
    c.hosts
        .iter()
        .map(|h| h.docker.iptables(&["-S"]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn team_a_gets_team_b_dependency_only_by_grant() {
    let slapd = tokio::task::spawn_blocking(directory).await.unwrap();
    let c = Cluster::start_with(Some((ldap(&slapd), "root", "root-pw"))).await;
    let (alice, bob, carol) = (
        login(&c, "alice").await,
        login(&c, "bob").await,
        login(&c, "carol").await,
    );
    let l = c.coord.layout().clone();

    // --- Setup (root): env, router port, team B's dependency, team B's cache, apps of A and C.
    for (m, path, body) in [
        (Method::POST, "/v1/envs", json!({"name": "prod"})),
        (
            Method::PUT,
            "/v1/router-config/external/ports/http",
            json!({"port": c.router_port, "trie": "apps"}),
        ),
        (
            Method::PUT,
            "/v1/dependencies/b-db",
            json!({"team": "team-b", "data": {"B_DB_URL": SECRET}, "endpoints": [{"address": ENDPOINT, "port": 5432}]}),
        ),
        (
            Method::PUT,
            "/v1/dependencies/b-cache",
            json!({"team": "team-b", "data": {"B_CACHE": "x"}}),
        ),
    ] {
        let (s, v) = c.call(m, path, Some(body)).await;
        assert!(s == 200 || s == 201, "{path}: {v}");
    }
    let (s, v) = c
        .call_as(
            &alice,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "a-web", "team": "team-a"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = c
        .call_as(
            &carol,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "c-web", "team": "team-c"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    c.publish("a-web", SHA1).await;
    c.publish("a-web", SHA2).await;

    // --- Before any grant, A can neither declare nor read b-db.
    let with_dep = json!({"name": "a-web", "team": "team-a", "dependencies": ["b-db"]});
    let msg = expect(
        &c.call_as(
            &alice,
            Method::PUT,
            "/v1/apps/a-web",
            Some(with_dep.clone()),
        )
        .await,
        403,
        "dependency_not_granted",
    );
    assert!(
        msg.contains("b-db") && msg.contains("team-b") && msg.contains("request-dependency"),
        "{msg}"
    );
    expect(
        &c.call_as(
            &alice,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "a-two", "team": "team-a", "dependencies": ["b-db"]})),
        )
        .await,
        403,
        "dependency_not_granted",
    );
    let (s, v) = c
        .call_as(&alice, Method::GET, "/v1/dependencies/b-db", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"name": "b-db", "team": "team-b", "data_keys": [], "endpoints": [], "restricted": true})
    );
    let (_, list) = c
        .call_as(&alice, Method::GET, "/v1/dependencies", None)
        .await;
    assert!(!list.to_string().contains(ENDPOINT), "{list}");
    assert!(!list.to_string().contains("B_DB_URL"), "{list}");
    let (_, v) = c
        .call_as(&bob, Method::GET, "/v1/dependencies/b-db", None)
        .await;
    assert_eq!(v["data_keys"], json!(["B_DB_URL"]), "the owner sees names");
    assert!(!v.to_string().contains("s3cret"), "values never: {v}");

    // --- The engine refuses too: the declaration written behind the API's back does not deploy.
    let rec = c
        .coord
        .get::<AppRecord>(&l.app(&"a-web".parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let mut forged = rec.value.clone();
    forged.spec.dependencies = vec!["b-db".parse().unwrap()];
    c.coord
        .set(
            &l.app(&"a-web".parse().unwrap()),
            &forged,
            Some(rec.version),
        )
        .await
        .unwrap();
    expect(
        &c.call_as(
            &alice,
            Method::POST,
            "/v1/apps/a-web/envs/prod/deploy",
            Some(deploy_body(SHA1)),
        )
        .await,
        403,
        "dependency_not_granted",
    );
    assert!(c.all_containers().is_empty(), "nothing started");
    let (s, v) = c
        .call_as(
            &alice,
            Method::PUT,
            "/v1/apps/a-web",
            Some(json!({"name": "a-web", "team": "team-a"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // --- A cannot grant itself; B cannot ask on A's behalf; C does not see A's request.
    for path in [
        "/v1/dependencies/b-db/grants/a-web",
        "/v1/dependencies/b-cache/grants/a-web",
    ] {
        let msg = expect(
            &c.call_as(&alice, Method::PUT, path, None).await,
            403,
            "forbidden",
        );
        assert!(msg.contains("team-b"), "{msg}");
    }
    expect(
        &c.call_as(
            &bob,
            Method::PUT,
            "/v1/dependencies/b-db/requests/a-web",
            None,
        )
        .await,
        403,
        "forbidden",
    );

    // --- A asks (audited), B sees the pending request, C sees nothing.
    let (s, v) = c
        .call_as(
            &alice,
            Method::PUT,
            "/v1/dependencies/b-db/requests/a-web",
            Some(json!({"reason": "orders need the B database"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = c
        .call_as(
            &alice,
            Method::PUT,
            "/v1/dependencies/b-db/requests/a-web",
            None,
        )
        .await;
    assert_eq!(s, 200, "a second ask keeps the pending request");
    let (s, pending) = c
        .call_as(&bob, Method::GET, "/v1/dependency-requests", None)
        .await;
    assert_eq!(s, 200);
    let pending = pending.as_array().unwrap().clone();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (
            &pending[0]["dependency"],
            &pending[0]["app"],
            &pending[0]["team"],
            &pending[0]["owner"],
            &pending[0]["requested_by"],
            &pending[0]["reason"]
        ),
        (
            &json!("b-db"),
            &json!("a-web"),
            &json!("team-a"),
            &json!("team-b"),
            &json!("alice"),
            &json!("orders need the B database")
        )
    );
    let (_, mine) = c
        .call_as(&alice, Method::GET, "/v1/dependency-requests", None)
        .await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let (_, none) = c
        .call_as(&carol, Method::GET, "/v1/dependency-requests", None)
        .await;
    assert_eq!(none, json!([]));
    let (_, audit) = c
        .call(Method::GET, "/v1/audit?app=a-web&user=alice", None)
        .await;
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["action"]
            == "PUT /v1/dependencies/{name}/requests/{app}"
            && e["detail"] == "dependency: b-db"
            && e["result"] == "ok"),
        "{audit}"
    );

    // --- B grants: the request is gone, A reads the names, declares and deploys.
    let (s, g) = c
        .call_as(
            &bob,
            Method::PUT,
            "/v1/dependencies/b-db/grants/a-web",
            None,
        )
        .await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(
        (&g["granted_by"], &g["app"]),
        (&json!("bob"), &json!("a-web"))
    );
    let (_, pending) = c
        .call_as(&bob, Method::GET, "/v1/dependency-requests", None)
        .await;
    assert_eq!(pending, json!([]));
    let (_, v) = c
        .call_as(&alice, Method::GET, "/v1/dependencies/b-db", None)
        .await;
    assert_eq!(v["data_keys"], json!(["B_DB_URL"]), "{v}");
    let (s, v) = c
        .call_as(
            &alice,
            Method::PUT,
            "/v1/apps/a-web",
            Some(with_dep.clone()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for sha in [SHA1, SHA2] {
        let (s, v) = c
            .call_as(
                &alice,
                Method::POST,
                "/v1/apps/a-web/envs/prod/deploy",
                Some(deploy_body(sha)),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let t = c.wait_task(v["task_id"].as_str().unwrap()).await;
        assert_eq!(t.state, TaskState::Done, "{t:?}");
    }
    c.router_serves(HOST, "/dep", SECRET).await;
    let envs = env_of_containers(&c, &alice).await;
    assert_eq!(envs.len(), 2);
    assert!(envs.iter().all(|e| e.contains(SECRET)), "{envs:?}");
    assert!(
        firewall_rules(&c).contains(ENDPOINT),
        "the firewall opens b-db"
    );

    // --- B grants C too; A cannot revoke either grant.
    let (s, v) = c
        .call_as(
            &bob,
            Method::PUT,
            "/v1/dependencies/b-db/grants/c-web",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for app in ["c-web", "a-web"] {
        expect(
            &c.call_as(
                &alice,
                Method::DELETE,
                &format!("/v1/dependencies/b-db/grants/{app}"),
                None,
            )
            .await,
            403,
            "forbidden",
        );
    }
    let (_, grants) = c
        .call_as(&carol, Method::GET, "/v1/dependencies/b-db/grants", None)
        .await;
    let apps: Vec<&str> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["app"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["a-web", "c-web"]);

    // --- B revokes: a task replaces A's containers without the data, under load, no failed request.
    let old_ids = c.all_containers();
    let load = atlantis_testkit::load::Load::start(
        &[format!("http://127.0.0.1:{}/version", c.router_port)],
        HOST,
        &[SHA2.to_owned()],
        8,
        Duration::from_millis(40),
    );
    load.settle(200, Duration::from_secs(20)).await;
    let (s, v) = c
        .call_as(
            &bob,
            Method::DELETE,
            "/v1/dependencies/b-db/grants/a-web",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["firewall_cut"], 2,
        "both running containers lose the firewall grant at once, before their replacement: {v}"
    );
    let task = v["task_id"].as_str().expect("the revoke names its task");
    let t = c.wait_task(task).await;
    assert_eq!(
        (t.state, t.kind),
        (TaskState::Done, TaskKind::Replace),
        "{t:?}"
    );
    load.settle(200, Duration::from_secs(20)).await;
    let outcome = load.finish().await;
    eprintln!(
        "revoke under load: {} ok, {} failed in {:?}",
        outcome.ok, outcome.failed, outcome.elapsed
    );
    assert_eq!(
        outcome.failed,
        0,
        "{:?}",
        &outcome.errors[..outcome.errors.len().min(5)]
    );
    let new_ids = c.all_containers();
    assert_eq!(new_ids.len(), 2);
    assert!(new_ids.iter().all(|i| !old_ids.contains(i)), "replaced");
    assert!(
        new_ids.iter().all(|i| i.starts_with("a-web-2222222-prod-")),
        "same sha"
    );
    let envs = env_of_containers(&c, &alice).await;
    assert!(envs.iter().all(|e| !e.contains(SECRET)), "{envs:?}");
    c.router_serves(HOST, "/dep", "").await;
    assert!(
        !firewall_rules(&c).contains(ENDPOINT),
        "the firewall no longer opens b-db"
    );
    let (_, rel) = c
        .call(Method::GET, "/v1/apps/a-web/envs/prod/releases", None)
        .await;
    assert_eq!(rel.as_array().unwrap().len(), 2, "no new release: {rel}");

    // --- The declaration stays, but nothing releases with it until granted again.
    for (path, body) in [
        ("/v1/apps/a-web/envs/prod/deploy", deploy_body(SHA2)),
        ("/v1/apps/a-web/envs/prod/rollback", json!({})),
        ("/v1/apps/a-web/envs/prod/scale", json!({"instances": 2})),
    ] {
        expect(
            &c.call_as(&alice, Method::POST, path, Some(body)).await,
            403,
            "dependency_not_granted",
        );
    }
    let (_, v) = c
        .call_as(&alice, Method::GET, "/v1/dependencies/b-db", None)
        .await;
    assert_eq!(v["restricted"], true, "{v}");

    // --- Deleting the app takes its grants, its requests and its team grants with it.
    let (s, _) = c
        .call_as(
            &bob,
            Method::PUT,
            "/v1/dependencies/b-db/grants/a-web",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call_as(
            &alice,
            Method::PUT,
            "/v1/dependencies/b-cache/requests/a-web",
            None,
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = c
        .call(Method::PUT, "/v1/teams/team-c/apps/a-web", None)
        .await;
    assert_eq!(s, 204);
    let t = c.run_task("/v1/apps/a-web/teardown", json!({})).await;
    assert_eq!(t.state, TaskState::Done, "{t:?}");
    let (s, v) = c
        .call_as(&alice, Method::DELETE, "/v1/apps/a-web", None)
        .await;
    assert_eq!(s, 204, "{v}");
    let (_, grants) = c
        .call(Method::GET, "/v1/dependencies/b-db/grants", None)
        .await;
    assert!(!grants.to_string().contains("a-web"), "{grants}");
    let (_, pending) = c.call(Method::GET, "/v1/dependency-requests", None).await;
    assert_eq!(pending, json!([]));
    let (_, apps) = c.call(Method::GET, "/v1/teams/team-c/apps", None).await;
    assert_eq!(apps, json!(["c-web"]));
    // A new app of the same name inherits nothing.
    let (s, _) = c
        .call_as(
            &alice,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "a-web", "team": "team-a"})),
        )
        .await;
    assert_eq!(s, 201);
    expect(
        &c.call_as(&alice, Method::PUT, "/v1/apps/a-web", Some(with_dep))
            .await,
        403,
        "dependency_not_granted",
    );
    expect(
        &c.call_as(&carol, Method::GET, "/v1/apps/a-web", None).await,
        403,
        "forbidden",
    );
    assert!(c.all_containers().is_empty());

    // --- As the dependency: an internal app's grants and the requests for it go with it too.
    let (s, _) = c
        .call_as(
            &carol,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "c-svc", "team": "team-c", "internal": true})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = c
        .call_as(
            &alice,
            Method::PUT,
            "/v1/dependencies/c-svc/requests/a-web",
            None,
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = c
        .call_as(
            &carol,
            Method::PUT,
            "/v1/dependencies/c-svc/grants/a-web",
            None,
        )
        .await;
    assert_eq!(s, 200, "the owner of an internal app is its team");
    let (s, _) = c
        .call_as(
            &alice,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "a-two", "team": "team-a"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = c
        .call_as(
            &alice,
            Method::PUT,
            "/v1/dependencies/c-svc/requests/a-two",
            None,
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = c
        .call_as(&carol, Method::DELETE, "/v1/apps/c-svc", None)
        .await;
    assert_eq!(s, 204);
    let (_, pending) = c.call(Method::GET, "/v1/dependency-requests", None).await;
    assert_eq!(pending, json!([]));
    for p in [
        l.dependency_grants_of(&"c-svc".parse().unwrap()),
        l.dependency_requests_of(&"c-svc".parse().unwrap()),
    ] {
        assert!(c.coord.stat(&p).await.unwrap().is_none(), "{p} removed");
    }
    let (s, _) = c
        .call_as(
            &carol,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "c-svc", "team": "team-c", "internal": true})),
        )
        .await;
    assert_eq!(s, 201);
    let (_, grants) = c
        .call(Method::GET, "/v1/dependencies/c-svc/grants", None)
        .await;
    assert_eq!(grants, json!([]), "a new c-svc has granted nothing");
}

/// A manager without supervisors or LDAP (admin token), registry tokens on.
async fn bare_manager(dir: &std::path::Path) -> (atlantis_manager::App, String) {
    let zk = ZooKeeper::shared();
    let mut z = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    z.root = Some(format!("/mgr-grants-{}", unique()));
    let mut cfg = manager_config(&z, dir, "127.0.0.1:9".parse().unwrap());
    cfg.auth.registry = Some(atlantis_manager::auth::registry::RegistryTokenConfig {
        key_file: dir.join("registry.key"),
        service: "atlantis-registry".into(),
        issuer: "atlantis-manager".into(),
        ttl_s: 300,
        build_ttl_s: 3600,
    });
    let m = atlantis_manager::App::build(cfg).await.unwrap();
    let t = admin_token(&m);
    (m, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_write_refuses_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let (m, token) = bare_manager(dir.path()).await;
    let base = format!("http://{}", m.addr);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let call = |method: Method, path: &str, body: Option<Value>| {
        let mut r = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let scope = "/v1/registry/token?service=atlantis-registry&scope=repository:apps/x:pull,push";
    let (s, v) = call(Method::GET, scope, None).await;
    assert_eq!(s, 200, "{v}");
    let (s, audit) = call(Method::GET, "/v1/audit?action=registry", None).await;
    assert_eq!(s, 200);
    let e = &audit[0];
    assert_eq!(
        (&e["user"], &e["result"], &e["detail"]),
        (
            &json!("admin"),
            &json!("ok"),
            &json!("asked: repository:apps/x:pull,push; granted: repository:apps/x:pull,push")
        ),
        "{audit}"
    );

    // The audit table goes away under the running manager (renamed by another connection).
    let db = format!("sqlite://{}", dir.path().join("data/history.db").display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit RENAME TO audit_away")
        .execute(&mut conn)
        .await
        .unwrap();
    let r = call(Method::POST, "/v1/envs", Some(json!({"name": "prod"}))).await;
    expect(&r, 503, "audit_unavailable");
    let r = call(Method::GET, scope, None).await;
    expect(&r, 503, "audit_unavailable");
    assert!(r.1.get("token").is_none());
    let r = call(
        Method::PUT,
        "/v1/dependencies/d",
        Some(json!({"data": {"K": "v"}})),
    )
    .await;
    expect(&r, 503, "audit_unavailable");
    // Nothing was done.
    let (s, _) = call(Method::GET, "/v1/envs/prod", None).await;
    assert_eq!(s, 404, "the env was not created");
    let (s, _) = call(Method::GET, "/v1/dependencies/d", None).await;
    assert_eq!(s, 404, "the dependency was not stored");

    sqlx::query("ALTER TABLE audit_away RENAME TO audit")
        .execute(&mut conn)
        .await
        .unwrap();
    let (s, v) = call(Method::POST, "/v1/envs", Some(json!({"name": "prod"}))).await;
    assert_eq!(s, 201, "{v}");
    let (_, audit) = call(Method::GET, "/v1/audit?action=/v1/envs", None).await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(
        (&audit[0]["result"], &audit[0]["status"]),
        (&json!("ok"), &json!(201))
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_never_reaches_stderr() {
    use std::os::unix::fs::PermissionsExt as _;
    let zk = ZooKeeper::shared();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("secret.key"), "42".repeat(32)).unwrap();
    std::fs::set_permissions(d.join("secret.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(d.join("token"), "a-cluster-token-0123456789").unwrap();
    std::fs::set_permissions(d.join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = d.join("manager.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nhost = \"m-stderr\"\ndata_dir = \"{}\"\nsecret_key_file = \"{}\"\n\
             supervisor_token_file = \"{}\"\n[zookeeper]\nservers = \"{}\"\nregion = \"test\"\n\
             root = \"/mgr-stderr-{}\"\n[registry]\nurl = \"http://127.0.0.1:9\"\n",
            d.join("data").display(),
            d.join("secret.key").display(),
            d.join("token").display(),
            zk.connect_string(),
            unique()
        ),
    )
    .unwrap();
    let stderr = d.join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atlantis-manager"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let token_file = d.join("data/admin.token");
    eventually(Duration::from_secs(30), "the manager serves", || async {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        log.contains("Manager serving").then_some(())
    })
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert!(token.len() > 40, "{token}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(log.contains("admin token written"), "{log}");
    assert!(!log.contains(token), "the token is in stderr: {log}");
    // Not even a piece of it (its signature part).
    let sig = token.rsplit('.').next().unwrap();
    assert!(!log.contains(sig), "{log}");
}
