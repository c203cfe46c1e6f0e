//! Authentication and authorisation against a real OpenLDAP slapd: logins, teams, grants, CI tokens,
//! the audit log, LDAP outages and injection; and every documented route refused without a valid token.

use std::time::Duration;

use atlantis_common::zk::ZkConfig;
use atlantis_manager::auth::{Claims, Keys, LdapConfig};
use atlantis_testkit::slapd::{GROUPS, Group, PEOPLE, User};
use atlantis_testkit::{Slapd, ZooKeeper};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{admin_token, manager_config, unique};

const SECRET: [u8; 32] = [7; 32];

pub(crate) struct Env {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) manager: Option<atlantis_manager::App>,
    _dir: tempfile::TempDir,
}

impl Env {
    /// A manager (no supervisors) with its key file, LDAP when `ldap` is given.
    async fn start(ldap: Option<&Slapd>) -> Env {
        Self::start_with(ldap, |_, _| {}).await
    }

    /// As [`Env::start`], with the config adjusted by `adjust` (given the manager's directory).
    pub(crate) async fn start_with(
        ldap: Option<&Slapd>,
        adjust: impl FnOnce(&mut atlantis_manager::Config, &std::path::Path),
    ) -> Env {
        use std::os::unix::fs::PermissionsExt as _;
        let zk = ZooKeeper::shared();
        let mut z = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
        z.session_timeout = Duration::from_secs(4);
        z.root = Some(format!("/mgr-auth-{}", unique()));
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("auth.key");
        std::fs::write(&key, format!("{}\n", hex::encode(SECRET))).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cfg = manager_config(&z, dir.path(), "127.0.0.1:9".parse().unwrap());
        cfg.auth.key_file = Some(key);
        cfg.auth.ldap = ldap.map(|s| LdapConfig {
            url: s.url(),
            starttls: false,
            ca_file: None,
            people_base: PEOPLE.into(),
            user_attr: "uid".into(),
            groups_base: GROUPS.into(),
            superuser_group: "admins".into(),
            timeout_ms: 2000,
        });
        adjust(&mut cfg, dir.path());
        let manager = atlantis_manager::App::build(cfg).await.unwrap();
        Env {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base: format!("http://{}", manager.addr),
            manager: Some(manager),
            _dir: dir,
        }
    }

    pub(crate) async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("manager answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn login(&self, user: &str, password: &str) -> (u16, Value) {
        self.call(
            None,
            Method::POST,
            "/v1/login",
            Some(json!({"user": user, "password": password})),
        )
        .await
    }

    async fn token(&self, user: &str, password: &str) -> String {
        let (s, v) = self.login(user, password).await;
        assert_eq!(s, 200, "login {user}: {v}");
        v["token"].as_str().unwrap().to_owned()
    }
}

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
        &[user("alice"), user("bob"), user("root")],
        &[
            group("team-a", &["alice"]),
            group("team-b", &["bob"]),
            group("admins", &["root"]),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_teams_grants_tokens_and_audit() {
    let mut slapd = tokio::task::spawn_blocking(directory).await.unwrap();
    let e = Env::start(Some(&slapd)).await;

    // --- Logins: teams from groups, superuser from the admins group; wrong passwords and unknown users 401.
    let (s, v) = e.login("alice", "alice-pw").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["teams"], json!(["team-a"]));
    assert_eq!(v["superuser"], false);
    assert!(v["expires_ms"].as_u64().unwrap() > atlantis_manager::tasks::now_ms());
    let alice = v["token"].as_str().unwrap().to_owned();
    let bob = e.token("bob", "bob-pw").await;
    let root = e.token("root", "root-pw").await;
    let (s, v) = e.call(Some(&root), Method::GET, "/v1/whoami", None).await;
    assert_eq!(
        (s, &v),
        (
            200,
            &json!({"user": "root", "teams": ["admins"], "superuser": true})
        )
    );
    for (u, p) in [
        ("alice", "bob-pw"),
        ("alice", ""),
        ("nobody", "x"),
        ("bob", "bob-pw "),
    ] {
        let (s, v) = e.login(u, p).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (401, Some("unauthorized")),
            "{u}: {v}"
        );
        assert!(
            !v.to_string().contains(p) || p.is_empty(),
            "the password is not echoed: {v}"
        );
    }
    // LDAP injection in the user name is refused before any LDAP call.
    for u in [
        "*",
        "alice)(uid=*",
        ")(",
        "alice\0",
        "*)(|(uid=*",
        "uid=alice,ou=people",
    ] {
        let (s, v) = e.login(u, "alice-pw").await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("invalid_request")),
            "{u:?}: {v}"
        );
    }

    // --- Apps of two teams: members act on their team's app, get 403 on the other's; root on both.
    let (s, v) = e
        .call(
            Some(&alice),
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "app-b", "team": "team-b"})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, v) = e
        .call(
            Some(&alice),
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "app-x"})),
        )
        .await;
    assert_eq!(s, 403, "a user's app names one of the user's teams: {v}");
    for (tok, app, team) in [(&alice, "app-a", "team-a"), (&bob, "app-b", "team-b")] {
        let (s, v) = e
            .call(
                Some(tok),
                Method::POST,
                "/v1/apps",
                Some(json!({"name": app, "team": team})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let update =
        |app: &str, team: &str| Some(json!({"name": app, "team": team, "repo": "git@example:x"}));
    assert_eq!(
        e.call(
            Some(&alice),
            Method::PUT,
            "/v1/apps/app-a",
            update("app-a", "team-a")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        e.call(Some(&alice), Method::GET, "/v1/apps/app-a", None)
            .await
            .0,
        200
    );
    for (m, path, body) in [
        (Method::GET, "/v1/apps/app-b", None),
        (Method::PUT, "/v1/apps/app-b", update("app-b", "team-b")),
        (Method::DELETE, "/v1/apps/app-b", None),
        (
            Method::POST,
            "/v1/apps/app-b/envs/prod/deploy",
            Some(json!({"sha": "0123456789abcdef0123456789abcdef01234567"})),
        ),
        (Method::POST, "/v1/apps/app-b/teardown", None),
        (Method::GET, "/v1/apps/app-b/envs/prod/releases", None),
        (Method::GET, "/v1/tasks", None),
        (Method::GET, "/v1/tasks?app=app-b", None),
        (Method::GET, "/v1/audit", None),
        (Method::POST, "/v1/envs", Some(json!({"name": "staging"}))),
        (
            Method::PUT,
            "/v1/router-config/external/ports/p1",
            Some(json!({})),
        ),
        (Method::PUT, "/v1/teams/team-a/apps/app-b", None),
        (Method::GET, "/v1/teams/team-b/apps", None),
    ] {
        let (s, v) = e.call(Some(&alice), m.clone(), path, body).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (403, Some("forbidden")),
            "alice {m} {path}: {v}"
        );
    }
    // Moving her app to a team she is not in is refused too.
    let (s, _) = e
        .call(
            Some(&alice),
            Method::PUT,
            "/v1/apps/app-a",
            update("app-a", "team-b"),
        )
        .await;
    assert_eq!(s, 403);
    // A deploy of her own app passes authorisation and reaches the engine (which has no image here).
    let (s, v) = e
        .call(
            Some(&alice),
            Method::POST,
            "/v1/apps/app-a/envs/prod/deploy",
            Some(json!({"sha": "0123456789abcdef0123456789abcdef01234567"})),
        )
        .await;
    assert!(s != 403 && s != 401, "alice deploys app-a: {s} {v}");
    for app in ["app-a", "app-b"] {
        let (s, v) = e
            .call(Some(&root), Method::GET, &format!("/v1/apps/{app}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        let team = if app == "app-a" { "team-a" } else { "team-b" };
        assert_eq!(
            e.call(
                Some(&root),
                Method::PUT,
                &format!("/v1/apps/{app}"),
                update(app, team)
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(
        e.call(
            Some(&root),
            Method::POST,
            "/v1/envs",
            Some(json!({"name": "staging"}))
        )
        .await
        .0,
        201
    );

    // --- Grants: root allows team-a on app-b, alice then reads it; disallow takes it back.
    assert_eq!(
        e.call(
            Some(&root),
            Method::PUT,
            "/v1/teams/team-a/apps/app-b",
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        e.call(Some(&alice), Method::GET, "/v1/apps/app-b", None)
            .await
            .0,
        200
    );
    let (s, v) = e
        .call(Some(&alice), Method::GET, "/v1/teams/team-a/apps", None)
        .await;
    assert_eq!((s, v), (200, json!(["app-a", "app-b"])));
    let (s, v) = e.call(Some(&root), Method::GET, "/v1/teams", None).await;
    assert_eq!(s, 200);
    for t in ["team-a", "team-b"] {
        assert!(v.as_array().unwrap().contains(&json!(t)), "{v}");
    }
    assert_eq!(
        e.call(Some(&alice), Method::GET, "/v1/teams", None).await.1,
        json!(["team-a"])
    );
    assert_eq!(
        e.call(
            Some(&root),
            Method::DELETE,
            "/v1/teams/team-a/apps/app-b",
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        e.call(
            Some(&root),
            Method::DELETE,
            "/v1/teams/team-a/apps/app-b",
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        e.call(Some(&alice), Method::GET, "/v1/apps/app-b", None)
            .await
            .0,
        403
    );

    // --- CI tokens: limited to their apps and scope; only for apps the user may act on.
    let (s, v) = e
        .call(
            Some(&alice),
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "ci", "apps": ["app-b"], "scope": "deploy", "ttl_s": 600})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = e
        .call(
            Some(&alice),
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "ci", "apps": ["app-a"], "scope": "read", "ttl_s": 600})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ci = v["token"].as_str().unwrap().to_owned();
    assert_eq!(
        e.call(Some(&ci), Method::GET, "/v1/apps/app-a", None)
            .await
            .0,
        200
    );
    assert_eq!(
        e.call(
            Some(&ci),
            Method::PUT,
            "/v1/apps/app-a",
            update("app-a", "team-a")
        )
        .await
        .0,
        403
    );
    assert_eq!(
        e.call(Some(&ci), Method::GET, "/v1/apps/app-b", None)
            .await
            .0,
        403
    );
    assert_eq!(
        e.call(
            Some(&ci),
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "x", "apps": ["app-a"], "scope": "deploy", "ttl_s": 60}))
        )
        .await
        .0,
        403,
        "a CI token cannot mint tokens"
    );
    let (s, _) = e
        .call(
            Some(&alice),
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "ci", "apps": ["app-a"], "scope": "read", "ttl_s": 999_999_999})),
        )
        .await;
    assert_eq!(s, 400, "TTL bounded");

    // --- The audit log: who, what, which app, from where, result; newest first.
    let (s, v) = e
        .call(
            Some(&root),
            Method::GET,
            "/v1/audit?user=alice&limit=1000",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let entries = v.as_array().unwrap();
    let denied = entries
        .iter()
        .find(|x| x["action"] == "DELETE /v1/apps/{app}" && x["app"] == "app-b")
        .expect("alice's refused delete of app-b is audited");
    assert_eq!(
        (denied["result"].as_str(), denied["status"].as_u64()),
        (Some("denied"), Some(403))
    );
    assert!(
        denied["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{denied}"
    );
    assert!(
        denied["detail"].as_str().unwrap().contains("forbidden"),
        "{denied}"
    );
    let ok = entries
        .iter()
        .find(|x| x["action"] == "PUT /v1/apps/{app}" && x["app"] == "app-a" && x["result"] == "ok")
        .expect("alice's update of app-a is audited");
    assert_eq!(ok["user"], "alice");
    assert!(
        entries
            .iter()
            .any(|x| x["action"] == "login" && x["result"] == "denied"),
        "failed logins audited"
    );
    let times: Vec<i64> = entries
        .iter()
        .map(|x| x["at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    // A user reads the audit of an app of theirs, not another's.
    let (s, v) = e
        .call(Some(&alice), Method::GET, "/v1/audit?app=app-a", None)
        .await;
    assert_eq!(s, 200);
    assert!(
        v.as_array().unwrap().iter().all(|x| x["app"] == "app-a"),
        "{v}"
    );
    assert_eq!(
        e.call(Some(&alice), Method::GET, "/v1/audit?app=app-b", None)
            .await
            .0,
        403
    );
    let (s, v) = e
        .call(
            Some(&root),
            Method::GET,
            "/v1/audit?action=login&limit=2",
            None,
        )
        .await;
    assert_eq!((s, v.as_array().unwrap().len()), (200, 2));

    // --- LDAP down: a clear 503 and nobody gets in; injection is still refused without LDAP.
    slapd.stop();
    for (u, p) in [
        ("alice", "alice-pw"),
        ("root", "root-pw"),
        ("root", "wrong"),
    ] {
        let (s, v) = e.login(u, p).await;
        assert_eq!((s, v["code"].as_str()), (503, Some("unavailable")), "{v}");
        assert!(v["message"].as_str().unwrap().contains("LDAP"), "{v}");
        assert!(v.get("token").is_none());
    }
    let (s, _) = e.login("*", "x").await;
    assert_eq!(s, 400);
    e.manager.unwrap().shutdown().await;
}

fn sign(secret: [u8; 32], su: bool, exp: u64) -> String {
    Keys::from_secrets(&[secret]).sign(&Claims {
        sub: "mallory".into(),
        teams: vec![],
        su,
        iat: 0,
        exp,
        apps: None,
        scope: None,
        aud: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_missing_tampered_expired_and_foreign_tokens() {
    let e = Env::start(None).await;
    let m = e.manager.as_ref().unwrap();
    let admin = admin_token(m);
    // The admin token file is private and the token works.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let f = m.admin_token_file.as_ref().unwrap();
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (s, v) = e.call(Some(&admin), Method::GET, "/v1/whoami", None).await;
    assert_eq!((s, v["superuser"].as_bool()), (200, Some(true)), "{v}");

    let now = atlantis_manager::tasks::now_ms();
    let expired = sign(SECRET, true, now - 1);
    let foreign = sign([9; 32], true, now + 3_600_000);
    let tampered = {
        // A user token with its claims edited to superuser, signature kept.
        let t = sign(SECRET, false, now + 3_600_000);
        let (head, sig) = t.rsplit_once('.').unwrap();
        let payload = head.strip_prefix("v1.").unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
        claims["su"] = json!(true);
        format!(
            "v1.{}.{sig}",
            b64.encode(serde_json::to_vec(&claims).unwrap())
        )
    };
    let valid_user = sign(SECRET, false, now + 3_600_000);
    assert_eq!(
        e.call(Some(&valid_user), Method::GET, "/v1/whoami", None)
            .await
            .0,
        200
    );

    let (s, doc) = e.call(None, Method::GET, "/openapi.json", None).await;
    assert_eq!(s, 200, "the API description is public");
    let mut n = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{app}", "web")
                .replace("{env}", "prod")
                .replace("{kind}", "external")
                .replace("{section}", "rules")
                .replace("{name}", "r1")
                .replace("{team}", "team-a")
                .replace("{id}", "web-1234567-prod-abc123");
            let m2 = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if path == "/v1/login" {
                // Exempt: answers without a token (here: no LDAP configured).
                let (s, _) = e
                    .call(
                        None,
                        m2,
                        &concrete,
                        Some(json!({"user": "a", "password": "b"})),
                    )
                    .await;
                assert_eq!(s, 400);
                continue;
            }
            n += 1;
            for (what, tok) in [
                ("no", None),
                ("expired", Some(expired.as_str())),
                ("foreign-key", Some(foreign.as_str())),
                ("tampered", Some(tampered.as_str())),
                ("garbage", Some("v1.e30.AAAA")),
            ] {
                let (s, v) = e.call(tok, m2.clone(), &concrete, Some(json!({}))).await;
                assert_eq!(
                    (s, v["code"].as_str()),
                    (401, Some("unauthorized")),
                    "{method} {path} with {what} token: {v}"
                );
            }
        }
    }
    assert!(n >= 40, "{n} operations walked");
    // Beyond the document: metrics, unknown routes, another scheme.
    for p in ["/metrics", "/v1/secret-admin", "/v1/../v1/apps"] {
        assert_eq!(e.call(None, Method::GET, p, None).await.0, 401, "{p}");
    }
    let r = e
        .http
        .get(format!("{}/v1/apps", e.base))
        .header("authorization", format!("Basic {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(e.call(None, Method::GET, "/healthz", None).await.0, 200);
    // The refusals of writes are audited as such.
    let (s, v) = e
        .call(
            Some(&admin),
            Method::GET,
            "/v1/audit?action=POST&limit=1000",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|x| x["result"] == "denied" && x["status"] == 401 && x["user"] == "-"),
        "{v}"
    );
    e.manager.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_tls_with_certificate_reload() {
    use atlantis_common::tls::{client_config, dev_ca};
    let mut files = None;
    let e = Env::start_with(None, |cfg, dir| {
        let ca = dev_ca(&dir.join("ca"), &[]).unwrap();
        cfg.tls = Some(atlantis_manager::config::ServerTlsConfig {
            cert_file: dir.join("api.pem"),
            key_file: dir.join("api-key.pem"),
            reload_interval_ms: 100,
        });
        std::fs::copy(&ca.server.0, dir.join("api.pem")).unwrap();
        std::fs::copy(&ca.server.1, dir.join("api-key.pem")).unwrap();
        files = Some((ca, dir.to_owned()));
    })
    .await;
    let (ca, dir) = files.unwrap();
    let m = e.manager.as_ref().unwrap();
    let token = admin_token(m);
    let https = |ca_file: &std::path::Path| {
        reqwest::Client::builder()
            .no_proxy()
            .use_preconfigured_tls(client_config(ca_file, None).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let url = format!("https://127.0.0.1:{}/v1/whoami", m.addr.port());
    let r = https(&ca.ca)
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = https(&ca.ca).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "TLS does not replace the token");
    assert!(
        e.http
            .get(format!("http://{}/healthz", m.addr))
            .send()
            .await
            .is_err(),
        "no plain HTTP on a TLS listener"
    );
    // The certificate files are replaced (by rename): the new certificate is served without a restart.
    let next = dev_ca(&dir.join("next-ca"), &[]).unwrap();
    std::fs::copy(&next.server.1, dir.join("api-key.pem.new")).unwrap();
    std::fs::copy(&next.server.0, dir.join("api.pem.new")).unwrap();
    std::fs::rename(dir.join("api-key.pem.new"), dir.join("api-key.pem")).unwrap();
    std::fs::rename(dir.join("api.pem.new"), dir.join("api.pem")).unwrap();
    atlantis_testkit::eventually(
        Duration::from_secs(15),
        "new certificate served",
        || async {
            let r = https(&next.ca)
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    assert!(
        https(&ca.ca).get(&url).send().await.is_err(),
        "the old certificate is gone"
    );
    e.manager.unwrap().shutdown().await;
}

/// Grants and the audit log against one database.
async fn store_suite(h: &atlantis_manager::history::History) {
    use atlantis_manager::auth::store::{AuditEntry, AuditQuery, Store};
    let s = Store::new(h.pool().clone());
    s.allow("team-a", "web", "root").await.unwrap();
    s.allow("team-a", "web", "root").await.unwrap();
    s.allow("team-a", "api", "root").await.unwrap();
    s.allow("team-b", "api", "root").await.unwrap();
    assert_eq!(s.team_apps("team-a").await.unwrap(), vec!["api", "web"]);
    assert_eq!(s.teams().await.unwrap(), vec!["team-a", "team-b"]);
    assert!(
        s.granted(&["x".into(), "team-b".into()], "api")
            .await
            .unwrap()
    );
    assert!(!s.granted(&["team-b".into()], "web").await.unwrap());
    assert!(s.disallow("team-a", "web").await.unwrap());
    assert!(!s.disallow("team-a", "web").await.unwrap());
    assert!(!s.granted(&["team-a".into()], "web").await.unwrap());
    for (i, (user, action, app)) in [
        ("alice", "POST /v1/apps/{app}/envs/{env}/deploy", "web"),
        ("bob", "DELETE /v1/apps/{app}", "api"),
        ("alice", "login", ""),
        ("alice", "PUT 100%_\\ odd", "web"),
    ]
    .into_iter()
    .enumerate()
    {
        s.audit(AuditEntry {
            at_ms: 1000 + i as i64,
            user: user.into(),
            action: action.into(),
            app: app.into(),
            result: "ok".into(),
            status: 200,
            ..AuditEntry::default()
        })
        .await
        .unwrap();
    }
    let q = |app: Option<&str>, user: Option<&str>, action: Option<&str>, since: Option<i64>| {
        AuditQuery {
            app: app.map(Into::into),
            user: user.map(Into::into),
            action: action.map(Into::into),
            since_ms: since,
            limit: None,
        }
    };
    let actions = |v: Vec<AuditEntry>| v.into_iter().map(|e| e.action).collect::<Vec<_>>();
    assert_eq!(
        s.audit_log(&q(None, None, None, None)).await.unwrap().len(),
        4
    );
    assert_eq!(
        actions(
            s.audit_log(&q(Some("web"), None, None, None))
                .await
                .unwrap()
        ),
        vec!["PUT 100%_\\ odd", "POST /v1/apps/{app}/envs/{env}/deploy"],
        "newest first"
    );
    assert_eq!(
        actions(
            s.audit_log(&q(None, Some("bob"), None, None))
                .await
                .unwrap()
        ),
        vec!["DELETE /v1/apps/{app}"]
    );
    assert_eq!(
        actions(
            s.audit_log(&q(None, None, Some("deploy"), None))
                .await
                .unwrap()
        )
        .len(),
        1
    );
    // LIKE wildcards in the filter are literal.
    assert_eq!(
        actions(
            s.audit_log(&q(None, None, Some("%_\\"), None))
                .await
                .unwrap()
        ),
        vec!["PUT 100%_\\ odd"]
    );
    assert!(
        s.audit_log(&q(None, None, Some("_"), None))
            .await
            .unwrap()
            .len()
            == 1
    );
    assert_eq!(
        s.audit_log(&q(None, None, None, Some(1002)))
            .await
            .unwrap()
            .len(),
        2
    );
    let limited = s
        .audit_log(&AuditQuery {
            limit: Some(1),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
}

#[tokio::test]
async fn grants_and_audit_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let h = atlantis_manager::history::History::open(&format!(
        "sqlite://{}",
        dir.path().join("h.db").display()
    ))
    .await
    .unwrap();
    store_suite(&h).await;
    h.close().await;
    let pg = tokio::task::spawn_blocking(atlantis_testkit::Postgres::start)
        .await
        .unwrap();
    let url = pg.create_database("auth");
    let h = atlantis_manager::history::History::open(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pg.log_tail(20)));
    store_suite(&h).await;
    h.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldaps_and_starttls_logins_check_the_directory_certificate() {
    use atlantis_common::tls::dev_ca;
    let certs = tempfile::tempdir().unwrap();
    let ca = dev_ca(&certs.path().join("ca"), &[]).unwrap();
    let other = dev_ca(&certs.path().join("other"), &[]).unwrap();
    let (cert, key) = ca.server.clone();
    let slapd = tokio::task::spawn_blocking(move || {
        Slapd::start_with_tls(
            &[User {
                name: "alice".into(),
                password: "alice-pw".into(),
            }],
            &[Group {
                name: "team-a".into(),
                members: vec!["alice".into()],
            }],
            Some((&cert, &key)),
        )
    })
    .await
    .unwrap();
    let ldaps = slapd.ldaps_url().unwrap();
    for (url, starttls, ca_file, good) in [
        (ldaps.clone(), false, ca.ca.clone(), true),
        (slapd.url(), true, ca.ca.clone(), true),
        (ldaps.clone(), false, other.ca.clone(), false),
        (slapd.url(), true, other.ca.clone(), false),
    ] {
        let e = Env::start_with(Some(&slapd), |cfg, _| {
            let l = cfg.auth.ldap.as_mut().unwrap();
            l.url = url.clone();
            l.starttls = starttls;
            l.ca_file = Some(ca_file.clone());
        })
        .await;
        let (s, v) = e.login("alice", "alice-pw").await;
        if good {
            assert_eq!(
                (s, &v["teams"]),
                (200, &json!(["team-a"])),
                "{url} starttls={starttls}: {v}"
            );
            assert_eq!(e.login("alice", "wrong").await.0, 401);
        } else {
            // A directory whose certificate the manager does not trust gets no password: 503.
            assert_eq!(
                (s, v["code"].as_str()),
                (503, Some("unavailable")),
                "{url}: {v}"
            );
        }
        e.manager.unwrap().shutdown().await;
    }
}
