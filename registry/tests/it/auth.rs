//! Authentication and per-prefix permissions over HTTP, and the loopback-only rule without auth.

use atlantis_registry::App;
use atlantis_registry::app::AppError;
use atlantis_registry::auth::{AccessRule, AuthConfig, TokenConfig, UserConfig};

use crate::common::{Backend, TestRegistry, bytes, client, error_code, sha256};

fn auth() -> AuthConfig {
    AuthConfig {
        users: vec![
            UserConfig {
                name: "builder".into(),
                password: Some("b-pass".into()),
                password_sha256: None,
            },
            UserConfig {
                name: "reader".into(),
                password: Some("r-pass".into()),
                password_sha256: None,
            },
        ],
        tokens: vec![TokenConfig {
            user: "ci".into(),
            token: Some("ci-token".into()),
            token_sha256: None,
        }],
        access: vec![
            AccessRule {
                prefix: "apps/".into(),
                pull: vec!["*".into()],
                push: vec!["builder".into(), "ci".into()],
            },
            AccessRule {
                prefix: "public/".into(),
                pull: vec!["anonymous".into()],
                push: vec!["builder".into()],
            },
            AccessRule {
                prefix: "secret/".into(),
                pull: vec!["builder".into()],
                push: vec!["builder".into()],
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_permissions() {
    let r = TestRegistry::start_with(Backend::Fs, Some(auth()), |_| {}).await;
    let c = client();
    let blob = bytes(1, 1000);
    let d = sha256(&blob);
    let post = |repo: &str| {
        c.post(r.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(blob.clone())
    };

    let resp = c.get(r.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Basic realm=\"atlantis-registry\""
    );
    assert_eq!(error_code(resp).await.1, "UNAUTHORIZED");
    assert_eq!(
        c.get(r.url("/v2/"))
            .basic_auth("builder", Some("b-pass"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(r.url("/v2/"))
            .basic_auth("builder", Some("nope"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(r.url("/v2/"))
            .basic_auth("ghost", Some("b-pass"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(r.url("/v2/"))
            .bearer_auth("ci-token")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(r.url("/v2/"))
            .bearer_auth("forged")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(r.url("/v2/"))
            .header("authorization", "Basic !!!notbase64")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Push permissions per prefix.
    assert_eq!(
        post("apps/web")
            .basic_auth("builder", Some("b-pass"))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        post("apps/ci")
            .bearer_auth("ci-token")
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        post("public/x")
            .basic_auth("builder", Some("b-pass"))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        post("secret/x")
            .basic_auth("builder", Some("b-pass"))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let (s, code) = error_code(
        post("apps/web")
            .basic_auth("reader", Some("r-pass"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (403, "DENIED"));
    let (s, code) = error_code(
        post("other/x")
            .basic_auth("builder", Some("b-pass"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code.as_str()), (403, "DENIED"), "no rule, no access");
    let (s, code) = error_code(post("apps/web").send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (401, "UNAUTHORIZED"));

    // Pull permissions.
    let head = |repo: &str| c.head(r.url(&format!("/v2/{repo}/blobs/{d}")));
    assert_eq!(
        head("public/x").send().await.unwrap().status(),
        200,
        "anonymous pull of public/"
    );
    assert_eq!(head("apps/web").send().await.unwrap().status(), 401);
    assert_eq!(
        head("apps/web")
            .basic_auth("reader", Some("r-pass"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        head("secret/x")
            .basic_auth("reader", Some("r-pass"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // A mount from a repository the caller may not pull falls back to a plain upload.
    let resp = c
        .post(r.url(&format!(
            "/v2/apps/new/blobs/uploads/?mount={d}&from=secret/x"
        )))
        .bearer_auth("ci-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = c
        .post(r.url(&format!(
            "/v2/apps/new/blobs/uploads/?mount={d}&from=apps/web"
        )))
        .bearer_auth("ci-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // The catalog lists what the caller may pull.
    let cat = |user: &str, pw: &str| {
        let req = c.get(r.url("/v2/_catalog")).basic_auth(user, Some(pw));
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["repositories"]
                .clone()
        }
    };
    assert_eq!(
        cat("builder", "b-pass").await,
        serde_json::json!(["apps/ci", "apps/new", "apps/web", "public/x", "secret/x"])
    );
    assert_eq!(
        cat("reader", "r-pass").await,
        serde_json::json!(["apps/ci", "apps/new", "apps/web", "public/x"])
    );
    assert_eq!(
        c.get(r.url("/v2/_catalog")).send().await.unwrap().status(),
        401
    );
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
