//! Authentication and per-prefix permissions over HTTP, and the loopback-only rule without auth.

use atlantis_registry::App;
use atlantis_registry::app::AppError;
use atlantis_registry::auth::{AccessRule, AuthConfig, TokenConfig, UserConfig};

use crate::common::{Backend, Call as _, TestRegistry, bytes, error_code, sha256};

fn user(name: &str, password: &str) -> UserConfig {
    UserConfig {
        name: name.into(),
        password: Some(password.into()),
        password_sha256: None,
    }
}

fn rule(prefix: &str, pull: &[&str], push: &[&str]) -> AccessRule {
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    AccessRule {
        prefix: prefix.into(),
        pull: names(pull),
        push: names(push),
    }
}

fn auth() -> AuthConfig {
    AuthConfig {
        users: vec![user("builder", "b-pass"), user("reader", "r-pass")],
        tokens: vec![TokenConfig {
            user: "ci".into(),
            token: Some("ci-token".into()),
            token_sha256: None,
        }],
        access: vec![
            rule("apps/", &["*"], &["builder", "ci"]),
            rule("public/", &["anonymous"], &["builder"]),
            rule("secret/", &["builder"], &["builder"]),
        ],
        token: None,
    }
}

/// A request made as a user with a password.
fn as_user(req: reqwest::RequestBuilder, user: &str, password: &str) -> reqwest::RequestBuilder {
    req.basic_auth(user, Some(password))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_permissions() {
    let r = TestRegistry::start_with(Backend::Fs, Some(auth()), |_| {}).await;
    let blob = bytes(1, 1000);
    let d = sha256(&blob);
    let post = |repo: &str| {
        r.post(format!("/v2/{repo}/blobs/uploads/?digest={d}"))
            .body(blob.clone())
    };
    let base = || r.get("/v2/");

    let resp = base().call().await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Basic realm=\"atlantis-registry\""
    );
    assert_eq!(error_code(resp).await.code, "UNAUTHORIZED");
    assert_eq!(as_user(base(), "builder", "b-pass").status().await, 200);
    assert_eq!(as_user(base(), "builder", "nope").status().await, 401);
    assert_eq!(as_user(base(), "ghost", "b-pass").status().await, 401);
    assert_eq!(base().bearer_auth("ci-token").status().await, 200);
    assert_eq!(base().bearer_auth("forged").status().await, 401);
    let garbled = base().header("authorization", "Basic !!!notbase64");
    assert_eq!(garbled.status().await, 401);

    // Push permissions per prefix.
    let builder_push = |repo: &str| as_user(post(repo), "builder", "b-pass");
    assert_eq!(builder_push("apps/web").status().await, 201);
    assert_eq!(post("apps/ci").bearer_auth("ci-token").status().await, 201);
    assert_eq!(builder_push("public/x").status().await, 201);
    assert_eq!(builder_push("secret/x").status().await, 201);
    let reader_push = as_user(post("apps/web"), "reader", "r-pass");
    assert_eq!(reader_push.error().await, (403, "DENIED"));
    assert_eq!(
        builder_push("other/x").error().await,
        (403, "DENIED"),
        "no rule, no access"
    );
    assert_eq!(post("apps/web").error().await, (401, "UNAUTHORIZED"));

    // Pull permissions.
    let head = |repo: &str| r.head(format!("/v2/{repo}/blobs/{d}"));
    assert_eq!(
        head("public/x").status().await,
        200,
        "anonymous pull of public/"
    );
    assert_eq!(head("apps/web").status().await, 401);
    let reader_pull = |repo: &str| as_user(head(repo), "reader", "r-pass");
    assert_eq!(reader_pull("apps/web").status().await, 200);
    assert_eq!(reader_pull("secret/x").status().await, 403);

    // A mount from a repository the caller may not pull falls back to a plain upload.
    let mount = |from: &str| {
        r.post(format!("/v2/apps/new/blobs/uploads/?mount={d}&from={from}"))
            .bearer_auth("ci-token")
    };
    assert_eq!(mount("secret/x").status().await, 202);
    assert_eq!(mount("apps/web").status().await, 201);

    // The catalog lists what the caller may pull.
    let cat = |user: &str, pw: &str| {
        let req = as_user(r.get("/v2/_catalog"), user, pw);
        async move { req.json_value().await["repositories"].clone() }
    };
    assert_eq!(
        cat("builder", "b-pass").await,
        serde_json::json!(["apps/ci", "apps/new", "apps/web", "public/x", "secret/x"])
    );
    assert_eq!(
        cat("reader", "r-pass").await,
        serde_json::json!(["apps/ci", "apps/new", "apps/web", "public/x"])
    );
    assert_eq!(r.get("/v2/_catalog").status().await, 401);

    // Metrics are for known users only; liveness stays open and says nothing else.
    assert_eq!(r.get("/metrics").status().await, 401);
    assert_eq!(
        as_user(r.get("/metrics"), "reader", "nope").status().await,
        401
    );
    let text = as_user(r.get("/metrics"), "reader", "r-pass")
        .text_body()
        .await;
    assert!(text.contains("atlantis_registry_"), "{text}");
    assert_eq!(r.get("/healthz").text_body().await, "ok\n");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_only_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = atlantis_registry::Config {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..Default::default()
    };
    config.storage.root = dir.path().to_owned();
    let err = App::build(config.clone()).await.err().expect("must refuse");
    assert!(matches!(err, AppError::PublicWithoutAuth(_)), "{err}");
    assert!(err.to_string().contains("without [auth]"), "{err}");
    // An [auth] section that cannot authenticate anyone is refused too.
    config.auth = Some(AuthConfig::default());
    assert!(matches!(App::build(config).await, Err(AppError::Auth(_))));
}
