//! Garbage collection: unreferenced blobs go, everything reachable from tags, manifests, index children
//! and referrers stays, recent blobs (a push in progress) stay, and `--dry-run` deletes nothing.

use std::time::Duration;

use atlantis_registry::gc::{GcOptions, collect};

use crate::common::{
    Backend, Call as _, OCI_INDEX, OCI_MANIFEST, TestRegistry, bytes, image_manifest,
    on_both_backends, sha256, succeeded,
};

/// Collection options: a dry run or not, with a grace period in seconds (uploads expire after an hour).
fn gc_options(dry_run: bool, grace_secs: u64) -> GcOptions {
    GcOptions {
        dry_run,
        grace: Duration::from_secs(grace_secs),
        upload_expiry: Duration::from_secs(3600),
    }
}

/// The swept digests of a collection, sorted.
fn sorted(mut swept: Vec<String>) -> Vec<String> {
    swept.sort();
    swept
}

async fn scenario(backend: Backend) {
    let r = TestRegistry::start(backend).await;
    let (l1, l2, l3, l4) = (
        bytes(1, 50_000),
        bytes(2, 40_000),
        bytes(3, 30_000),
        bytes(4, 20_000),
    );
    let config = br#"{"os":"linux"}"#.to_vec();
    let (ma, da) = r.push_image("apps/a", "a", &config, &[&l1, &l2]).await;
    let (mb, db) = r.push_image("apps/a", "b", &config, &[&l1, &l3]).await;
    // An untagged image kept only by an index, and a referrer of image A.
    let (l5, l6) = (bytes(5, 10_000), bytes(6, 10_000));
    let (mc, dc) = r.push_image("apps/a", "tmp", &config, &[&l5]).await;
    assert_eq!(r.delete("/v2/apps/a/manifests/tmp").status().await, 202);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": dc, "size": mc.len() }]
    }))
    .unwrap();
    let put = r.put_manifest("apps/a", "idx", OCI_INDEX, index);
    assert_eq!(put.status().await, 201);
    r.push_blob("apps/a", &l6).await;
    let sig = image_manifest(
        &config,
        &[&l6],
        Some((&da, ma.len())),
        Some("application/vnd.example.sig"),
    );
    let put = r.put_manifest("apps/a", &sha256(&sig), OCI_MANIFEST, sig);
    assert_eq!(put.status().await, 201);
    // Image B is deleted; L4 was never referenced.
    let status = r.delete(format!("/v2/apps/a/manifests/{db}")).status();
    assert_eq!(status.await, 202);
    let d4 = r.push_blob("apps/a", &l4).await;

    // Everything is recent: a GC with the default grace keeps it all.
    let reg = r.registry.clone();
    let keep = collect(&reg, &gc_options(false, 3600)).await.unwrap();
    assert!(keep.swept.is_empty(), "{keep:?}");

    let expected = sorted(vec![sha256(&l3), d4.clone(), db.clone()]);
    let dry = collect(&reg, &gc_options(true, 0)).await.unwrap();
    assert_eq!(
        sorted(dry.swept.clone()),
        expected,
        "dry run reports exactly the unreferenced blobs"
    );
    assert_eq!(
        r.blob_status("apps/a", &d4).await,
        200,
        "dry run deleted nothing"
    );

    // A push in progress (upload open) is not disturbed.
    let pending = bytes(9, 25_000);
    let loc = r.start_upload("apps/a").await;
    let first = r.patch(&loc).body(pending[..10_000].to_vec());
    assert_eq!(first.status().await, 202);

    let real = collect(&reg, &gc_options(false, 0)).await.unwrap();
    assert_eq!(sorted(real.swept.clone()), expected);
    assert_eq!(real.swept_bytes, (l3.len() + l4.len() + mb.len()) as u64);
    assert!(real.links_removed >= 2, "{real:?}");
    for gone in [sha256(&l3), d4] {
        assert_eq!(r.blob_status("apps/a", &gone).await, 404, "{gone} swept");
    }
    for kept in [&l1, &l2, &l5, &l6, &config] {
        assert!(r.blob("apps/a", &sha256(kept)).await[..] == kept[..]);
    }
    assert_eq!(r.manifest_status("apps/a", "a").await, 200);
    assert_eq!(r.manifest_status("apps/a", "idx").await, 200);
    assert_eq!(
        r.manifest_status("apps/a", &dc).await,
        200,
        "index child kept"
    );
    let v = r
        .get(format!("/v2/apps/a/referrers/{da}"))
        .json_value()
        .await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1, "referrer kept");
    // The interrupted push completes after the collection.
    let last = r
        .put(format!("{loc}?digest={}", sha256(&pending)))
        .body(pending[10_000..].to_vec());
    assert_eq!(last.status().await, 201);
    // A second collection finds nothing more.
    let again = collect(&reg, &gc_options(false, 3600)).await.unwrap();
    assert!(again.swept.is_empty(), "{again:?}");
    r.stop().await;
}

on_both_backends!(scenario: gc_filesystem, gc_s3);

/// The binary's `gc` subcommand, dry run then real, on a filesystem root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_command_line() {
    let r = TestRegistry::start(Backend::Fs).await;
    let orphan = bytes(11, 1000);
    let d = r.push_blob("apps/cli", &orphan).await;
    let root = r.root();
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
        let out = succeeded("gc", out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = run(&["--dry-run", "--grace-secs", "0"]);
    assert_eq!(v["swept"], serde_json::json!([d]));
    assert_eq!(r.blob_status("apps/cli", &d).await, 200);
    let v = run(&["--grace-secs", "3600"]);
    assert_eq!(v["swept"], serde_json::json!([]), "recent blobs are kept");
    let v = run(&["--grace-secs", "0"]);
    assert_eq!(v["swept"], serde_json::json!([d]));
    assert_eq!(r.blob_status("apps/cli", &d).await, 404);
    r.stop().await;
}
