//! Parts of the API that need no containers: image resolution against the real registry (digest and tag
//! references, unknown shas), and the OpenAPI document against the routes actually served.

use std::time::Duration;

use atlantis_common::zk::ZkConfig;
use atlantis_manager::config::{ImageRef, RegistryConfig};
use atlantis_manager::images::{ImageError, Images};

use crate::support::{Registry, manager_config, unique};

fn registry_config(r: &Registry, image_ref: ImageRef) -> RegistryConfig {
    RegistryConfig {
        url: format!("http://{}", r.addr),
        pull_host: Some("registry.example:5000".into()),
        user: None,
        password_file: None,
        image_ref,
    }
}

#[tokio::test]
async fn images_resolve_by_digest_in_the_registry() {
    let r = Registry::start().await;
    let digest = r.push("web", "0123456789abcdef").await;
    let app = "web".parse().unwrap();
    let sha = "0123456789abcdef".parse().unwrap();
    let images = Images::new(registry_config(&r, ImageRef::Digest)).unwrap();
    let got = images.resolve(&app, &sha).await.unwrap();
    assert_eq!(got.digest, digest);
    assert_eq!(
        got.reference,
        format!("registry.example:5000/apps/web@{digest}")
    );
    atlantis_common::api::supervisor::validate_image(&got.reference).unwrap();
    let tags = Images::new(registry_config(&r, ImageRef::Tag)).unwrap();
    assert_eq!(
        tags.resolve(&app, &sha).await.unwrap().reference,
        "registry.example:5000/apps/web:0123456789abcdef"
    );
    // An unknown sha, or an app without images: a clear not-found.
    for (a, s) in [("web", "fedcba9876"), ("other", "0123456789abcdef")] {
        let e = images
            .resolve(&a.parse().unwrap(), &s.parse().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(e, ImageError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains(&format!("apps/{a}:{s}")), "{e}");
    }
    // The manifest comes from the image's atlantis.toml label; an image without one has none.
    assert_eq!(
        images.manifest_overrides(&app, &digest).await.unwrap(),
        Default::default()
    );
    let label = "name = \"web\"\ntemplate = \"static\"\nrun = [\"/app\"]\nport = 9090\nhealth_path = \"/up\"\n[env]\nMODE = \"prod\"\n";
    let labelled = r
        .push_labelled(
            "web",
            "abcdef0123456",
            serde_json::json!({"atlantis.toml": label}),
        )
        .await;
    let o = images.manifest_overrides(&app, &labelled).await.unwrap();
    assert_eq!(
        (o.port, o.health_path.as_deref()),
        (Some(9090), Some("/up"))
    );
    assert_eq!(o.env_vars["MODE"], "prod");
    let wrong = r
        .push_labelled(
            "web",
            "abcdef0123457",
            serde_json::json!({"atlantis.toml": "name = \"api\""}),
        )
        .await;
    let e = images.manifest_overrides(&app, &wrong).await.unwrap_err();
    assert!(matches!(e, ImageError::Manifest(_)), "{e}");

    // A registry that is not there is a registry error, not a not-found.
    let mut cfg = registry_config(&r, ImageRef::Digest);
    cfg.url = format!("http://127.0.0.1:{}", atlantis_testkit::ports::free_port());
    let e = Images::new(cfg)
        .unwrap()
        .resolve(&app, &sha)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Registry(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_the_served_routes() {
    let zk = atlantis_testkit::ZooKeeper::shared();
    let mut z = ZkConfig::new(zk.connect_string(), "test".parse().unwrap());
    z.session_timeout = Duration::from_secs(4);
    z.root = Some(format!("/mgr-api-{}", unique()));
    let dir = tempfile::tempdir().unwrap();
    let m = atlantis_manager::App::build(manager_config(
        &z,
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
    ))
    .await
    .unwrap();
    let token = crate::support::admin_token(&m);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let doc: serde_json::Value = http
        .get(format!("http://{}/openapi.json", m.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in [
        "AppSpec",
        "DeployRequest",
        "ErrorBody",
        "TaskStatus",
        "Manifest",
        "DependencySpec",
        "InstanceRecord",
    ] {
        assert!(
            schemas.contains_key(s),
            "schema {s} missing: {:?}",
            schemas.keys()
        );
    }
    let deploy = schemas["DeployRequest"].to_string();
    assert!(deploy.contains(r#""required":["sha"]"#), "{deploy}");
    let paths = doc["paths"].as_object().unwrap();
    let mut n = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            n += 1;
            assert!(op["responses"]["default"].is_object(), "{method} {path}");
            let concrete = path
                .replace("{app}", "web")
                .replace("{env}", "prod")
                .replace("{kind}", "external")
                .replace("{section}", "rules")
                .replace("{name}", "r1")
                .replace("{id}", "web-1234567-prod-abc123");
            let m2 = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = http
                .request(m2, format!("http://{}{concrete}", m.addr))
                .bearer_auth(&token)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert!(
                status != 405 && !body.contains("no such route"),
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }
    assert!(n >= 30, "{n} operations documented");
    // A route that is not documented is not served.
    let r = http
        .get(format!("http://{}/v1/secret-admin", m.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    m.shutdown().await;
}
