//! Garbage collection: unreferenced blobs go, everything reachable from tags, manifests, index children
//! and referrers stays, recent blobs (a push in progress) stay, and `--dry-run` deletes nothing.

use std::time::Duration;

use atlantis_registry::gc::{GcOptions, collect};

use crate::common::{
    Backend, TestRegistry, bytes, client, image_manifest, push_blob, push_image, sha256,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn scenario(backend: Backend) {
    let r = TestRegistry::start(backend).await;
    let c = client();
    let (l1, l2, l3, l4) = (
        bytes(1, 50_000),
        bytes(2, 40_000),
        bytes(3, 30_000),
        bytes(4, 20_000),
    );
    let config = br#"{"os":"linux"}"#.to_vec();
    let (ma, da) = push_image(&c, &r, "apps/a", "a", &config, &[&l1, &l2]).await;
    let (mb, db) = push_image(&c, &r, "apps/a", "b", &config, &[&l1, &l3]).await;
    // An untagged image kept only by an index, and a referrer of image A.
    let (l5, l6) = (bytes(5, 10_000), bytes(6, 10_000));
    let (mc, dc) = push_image(&c, &r, "apps/a", "tmp", &config, &[&l5]).await;
    assert_eq!(
        c.delete(r.url("/v2/apps/a/manifests/tmp"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": dc, "size": mc.len() }]
    }))
    .unwrap();
    assert_eq!(
        c.put(r.url("/v2/apps/a/manifests/idx"))
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .body(index)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    push_blob(&c, &r, "apps/a", &l6).await;
    let sig = image_manifest(
        &config,
        &[&l6],
        Some((&da, ma.len())),
        Some("application/vnd.example.sig"),
    );
    assert_eq!(
        c.put(r.url(&format!("/v2/apps/a/manifests/{}", sha256(&sig))))
            .header("content-type", OCI_MANIFEST)
            .body(sig)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    // Image B is deleted; L4 was never referenced.
    assert_eq!(
        c.delete(r.url(&format!("/v2/apps/a/manifests/{db}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let d4 = push_blob(&c, &r, "apps/a", &l4).await;

    // Everything is recent: a GC with the default grace keeps it all.
    let reg = r.registry.clone();
    let keep = collect(
        &reg,
        &GcOptions {
            dry_run: false,
            grace: Duration::from_secs(3600),
            upload_expiry: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    assert!(keep.swept.is_empty(), "{keep:?}");

    let mut expected = vec![sha256(&l3), d4.clone(), db.clone()];
    expected.sort();
    let opts = GcOptions {
        dry_run: true,
        grace: Duration::ZERO,
        upload_expiry: Duration::from_secs(3600),
    };
    let dry = collect(&reg, &opts).await.unwrap();
    let mut swept = dry.swept.clone();
    swept.sort();
    assert_eq!(
        swept, expected,
        "dry run reports exactly the unreferenced blobs"
    );
    assert_eq!(
        c.head(r.url(&format!("/v2/apps/a/blobs/{d4}")))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "dry run deleted nothing"
    );

    // A push in progress (upload open) is not disturbed.
    let pending = bytes(9, 25_000);
    let loc = c
        .post(r.url("/v2/apps/a/blobs/uploads/"))
        .send()
        .await
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        c.patch(r.url(&loc))
            .body(pending[..10_000].to_vec())
            .send()
            .await
            .unwrap()
            .status(),
        202
    );

    let real = collect(
        &reg,
        &GcOptions {
            dry_run: false,
            ..opts
        },
    )
    .await
    .unwrap();
    let mut swept = real.swept.clone();
    swept.sort();
    assert_eq!(swept, expected);
    assert_eq!(real.swept_bytes, (l3.len() + l4.len() + mb.len()) as u64);
    assert!(real.links_removed >= 2, "{real:?}");
    for gone in [sha256(&l3), d4] {
        assert_eq!(
            c.head(r.url(&format!("/v2/apps/a/blobs/{gone}")))
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "{gone} swept"
        );
    }
    for kept in [&l1, &l2, &l5, &l6, &config] {
        let resp = c
            .get(r.url(&format!("/v2/apps/a/blobs/{}", sha256(kept))))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.unwrap()[..] == kept[..]);
    }
    assert_eq!(
        c.get(r.url("/v2/apps/a/manifests/a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(r.url("/v2/apps/a/manifests/idx"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(r.url(&format!("/v2/apps/a/manifests/{dc}")))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "index child kept"
    );
    let v: serde_json::Value = c
        .get(r.url(&format!("/v2/apps/a/referrers/{da}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1, "referrer kept");
    // The interrupted push completes after the collection.
    let resp = c
        .put(r.url(&format!("{loc}?digest={}", sha256(&pending))))
        .body(pending[10_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // A second collection finds nothing more.
    let again = collect(
        &reg,
        &GcOptions {
            dry_run: false,
            grace: Duration::from_secs(3600),
            ..opts
        },
    )
    .await
    .unwrap();
    assert!(again.swept.is_empty(), "{again:?}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_filesystem() {
    scenario(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_s3() {
    scenario(Backend::S3).await;
}

/// The binary's `gc` subcommand, dry run then real, on a filesystem root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_command_line() {
    let r = TestRegistry::start(Backend::Fs).await;
    let c = client();
    let orphan = bytes(11, 1000);
    let d = push_blob(&c, &r, "apps/cli", &orphan).await;
    let root = r.dir.path().join("storage");
    let config = r.dir.path().join("gc.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nkind = \"filesystem\"\nroot = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_atlantis-registry");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("gc")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = run(&["--dry-run", "--grace-secs", "0"]);
    assert_eq!(v["swept"], serde_json::json!([d]));
    assert_eq!(
        c.head(r.url(&format!("/v2/apps/cli/blobs/{d}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let v = run(&["--grace-secs", "3600"]);
    assert_eq!(v["swept"], serde_json::json!([]), "recent blobs are kept");
    let v = run(&["--grace-secs", "0"]);
    assert_eq!(v["swept"], serde_json::json!([d]));
    assert_eq!(
        c.head(r.url(&format!("/v2/apps/cli/blobs/{d}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    r.stop().await;
}
