//! Real clients: `skopeo copy` both ways (filesystem and S3 storage), and ten skopeo pushes at once of
//! images that share a layer, then ten pulls; everything must match digest for digest.

use std::path::{Path, PathBuf};

use atlantis_testkit::require_bin;

use crate::common::{Backend, TestRegistry, bytes, on_both_backends, sha256, succeeded};

/// Writes an OCI image layout at `dir` holding one image tagged `tag` whose layers are tars of the given
/// files (name, content). Returns the manifest digest.
pub fn oci_layout(dir: &Path, tag: &str, layers: &[Vec<(String, Vec<u8>)>]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> String {
        let d = sha256(data);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), data).unwrap();
        d
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, files) in layers.iter().enumerate() {
        let src = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(src.path().join(name), content).unwrap();
        }
        let tar = dir.join(format!("layer{i}.tar"));
        let out = std::process::Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-C",
            ])
            .arg(src.path())
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        succeeded("tar", out);
        let data = std::fs::read(&tar).unwrap();
        std::fs::remove_file(&tar).unwrap();
        let d = put(&data);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": data.len() }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len() },
        "layers": descs,
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
                        "annotations": { "org.opencontainers.image.ref.name": tag } }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    md
}

fn skopeo() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(require_bin("skopeo", "skopeo"));
    c.arg("--insecure-policy");
    c.env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY");
    c
}

async fn run(mut c: tokio::process::Command) -> String {
    let out = succeeded("skopeo failed", c.output().await.expect("run skopeo"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn push(src: &Path, tag: &str, dest: &str) {
    let mut c = skopeo();
    c.args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", src.display()))
        .arg(dest);
    run(c).await;
}

async fn pull(src: &str, dst: &Path, tag: &str) {
    let mut c = skopeo();
    c.args(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(src)
        .arg(format!("oci:{}:{tag}", dst.display()));
    run(c).await;
}

/// The manifest digest an OCI layout's index gives for its only image.
fn layout_digest(dir: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    v["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

/// Every blob of the layout, by digest, verified against its name.
fn layout_blobs(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let p: PathBuf = e.unwrap().path();
        let d = format!("sha256:{}", p.file_name().unwrap().to_string_lossy());
        assert_eq!(
            sha256(&std::fs::read(&p).unwrap()),
            d,
            "blob {} is intact",
            p.display()
        );
        out.push(d);
    }
    out.sort();
    out
}

async fn round_trip(backend: Backend) {
    let r = TestRegistry::start(backend).await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let layers = vec![
        vec![("base.bin".to_owned(), bytes(1, 3_000_000))],
        vec![
            ("app.bin".to_owned(), bytes(2, 700_000)),
            ("conf".to_owned(), b"x=1\n".to_vec()),
        ],
    ];
    let md = oci_layout(&src, "v1", &layers);
    let dest = format!("docker://{}/apps/skopeo/web:v1", r.host());
    push(&src, "v1", &dest).await;
    let mut c = skopeo();
    c.args(["inspect", "--raw", "--tls-verify=false"])
        .arg(&dest);
    let raw = run(c).await;
    let raw = raw.strip_suffix('\n').unwrap_or(&raw); // skopeo prints a newline after the manifest
    assert_eq!(
        sha256(raw.as_bytes()),
        md,
        "the registry serves the pushed manifest byte for byte"
    );
    let back = work.path().join("back");
    pull(&dest, &back, "v1").await;
    assert_eq!(layout_digest(&back), md);
    assert_eq!(
        layout_blobs(&back),
        layout_blobs(&src),
        "pulled blobs match pushed blobs"
    );
    // A second push of the same image finds every blob present and still succeeds.
    push(
        &src,
        "v1",
        &format!("docker://{}/apps/skopeo/web:again", r.host()),
    )
    .await;
    r.stop().await;
}

on_both_backends!(round_trip: skopeo_copy_both_ways_filesystem, skopeo_copy_both_ways_s3);

on_both_backends!(
    ten_concurrent_pushes: ten_concurrent_pushes_sharing_layers_filesystem,
    ten_concurrent_pushes_sharing_layers_s3
);

async fn ten_concurrent_pushes(backend: Backend) {
    let r = TestRegistry::start(backend).await;
    let work = tempfile::tempdir().unwrap();
    let base = vec![("base.bin".to_owned(), bytes(42, 2_000_000))];
    let mut digests = Vec::new();
    for i in 0..10u64 {
        let own = vec![("own.bin".to_owned(), bytes(100 + i, 300_000))];
        let dir = work.path().join(format!("img{i}"));
        digests.push(oci_layout(&dir, "v1", &[base.clone(), own]));
    }
    // Half go to one repository (same shared layer, different tags), half to their own.
    let dest = |i: usize| {
        if i.is_multiple_of(2) {
            format!("docker://{}/apps/shared:t{i}", r.host())
        } else {
            format!("docker://{}/apps/own{i}:v1", r.host())
        }
    };
    let pushes = (0..10).map(|i| {
        let src = work.path().join(format!("img{i}"));
        let d = dest(i);
        async move { push(&src, "v1", &d).await }
    });
    futures::future::join_all(pushes).await;
    let pulls = (0..10).map(|i| {
        let dst = work.path().join(format!("pulled{i}"));
        let d = dest(i);
        async move { pull(&d, &dst, "v1").await }
    });
    futures::future::join_all(pulls).await;
    for (i, d) in digests.iter().enumerate() {
        let pulled = work.path().join(format!("pulled{i}"));
        assert_eq!(&layout_digest(&pulled), d, "image {i}");
        assert_eq!(
            layout_blobs(&pulled),
            layout_blobs(&work.path().join(format!("img{i}"))),
            "image {i} blobs"
        );
    }
    assert_eq!(
        r.tags("apps/shared").await,
        serde_json::json!(["t0", "t2", "t4", "t6", "t8"])
    );
    r.stop().await;
}
