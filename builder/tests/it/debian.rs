//! The debian template against the real Debian archive: debootstrap once (kept in a cache shared by
//! test runs), build commands run without network, within the time limit, only `/app` kept; failing,
//! hanging and escaping builds are clear errors that push nothing.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use atlantis_builder::build::{BuildRequest, Source};
use atlantis_builder::cache::LayerCache;
use atlantis_builder::{BuildError, BuildOutput, Builder, Settings};

use crate::common::{Reg, log, sample};

/// A cache kept between runs, so the debootstrap root is made once per machine.
pub fn debian_builder() -> Builder {
    let dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/atlantis/builder-test-debian");
    atlantis_testkit::require_bin("debootstrap", "debootstrap");
    Builder::new(
        LayerCache::open(&dir, 2 << 30).unwrap(),
        Settings::default(),
    )
}

/// Whether a Debian root of the test cache has `rel`.
fn droot_has(rel: &str) -> bool {
    let roots = debian_builder().cache().dir().join("roots");
    std::fs::read_dir(roots)
        .unwrap()
        .any(|r| r.unwrap().path().join("root").join(rel).exists())
}

async fn build(
    b: &Builder,
    app: &std::path::Path,
    push: Option<String>,
) -> Result<BuildOutput, BuildError> {
    let (l, lines) = log();
    let r = b
        .build(
            BuildRequest {
                source: Source::Dir(app.to_owned()),
                sha: Some("1a2b3c4".parse().unwrap()),
                push: push.map(|p| p.parse().unwrap()),
            },
            l,
        )
        .await;
    if r.is_err() {
        eprintln!("{}", lines.lock().unwrap().join("\n"));
    }
    r
}

/// The files of a gzip layer: path -> content (symlinks as "-> target").
fn layer_files(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let f = std::fs::File::open(path).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        let mut s = String::new();
        if let Ok(Some(t)) = e.link_name() {
            s = format!("-> {}", t.display());
        } else {
            let _ = e.read_to_string(&mut s);
        }
        out.insert(p, s);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_builds_run_offline_in_time_and_keep_only_app() {
    let reg = Reg::start().await;
    let b = debian_builder();
    let (_d, app) = sample("debian-web");
    let target = format!("{}/apps/debian-web:1a2b3c4", reg.host());
    let out = build(&b, &app, Some(target.clone())).await.unwrap();
    assert_eq!(out.image.layers.len(), 2);
    let files = layer_files(&b.cache().blob_path(&out.image.layers[1].digest));
    assert_eq!(
        files["app/www/index.html"],
        "built by debian-web on the debian template\n"
    );
    // Only the loopback interface existed during the build.
    let net = &files["app/www/net.txt"];
    assert!(net.contains("lo:"), "{net}");
    assert_eq!(net.lines().count(), 3, "no interface but lo: {net}");
    // The caller's directory was not touched.
    assert!(!app.join("www").exists());
    // The base layer is a Debian root with the busybox package.
    let base = layer_files(&b.cache().blob_path(&out.image.layers[0].digest));
    assert!(base.contains_key("etc/debian_version"));
    assert!(base.contains_key("bin/busybox") || base.contains_key("usr/bin/busybox"));
    let (_, stats) = out.pushed.unwrap();
    assert_eq!(stats.uploaded, 3);

    // The root is read-only: a write outside /app fails the build (builder/tests/it/hostile.rs tries
    // more ways out).
    let (_d, app2) = sample("debian-web");
    std::fs::write(
        app2.join("atlantis.toml"),
        "name = \"debian-web\"\ntemplate = \"debian\"\nrun = [\"true\"]\n[build]\npackages = [\"busybox\"]\n\
         commands = [[\"sh\", \"-c\", \"echo x > out.txt && echo pwned > /etc/pwned\"]]\n",
    )
    .unwrap();
    let e = build(&b, &app2, None).await.unwrap_err();
    assert!(e.to_string().contains("Read-only file system"), "{e}");
    assert!(!droot_has("etc/pwned"));

    // Failing, hanging and escaping builds: clear errors, nothing pushed.
    let uploads = reg.uploads().await;
    let cases = [
        (
            r#"[["sh", "-c", "echo broken >&2; exit 3"]]"#,
            60,
            "failed with exit code 3",
        ),
        (
            r#"[["sleep", "600"]]"#,
            2,
            "did not finish within the time limit of 2 s",
        ),
        (
            r#"[["ln", "-s", "/etc/shadow", "leak"]]"#,
            60,
            "symlink leak -> /etc/shadow escapes the app root",
        ),
        // No network: the archive's name does not even resolve.
        (
            r#"[["getent", "hosts", "deb.debian.org"]]"#,
            60,
            "failed with exit code 2",
        ),
    ];
    for (commands, timeout, expected) in cases {
        let (_d, bad) = sample("debian-web");
        std::fs::write(
            bad.join("atlantis.toml"),
            format!(
                "name = \"debian-web\"\ntemplate = \"debian\"\nrun = [\"true\"]\n[build]\npackages = [\"busybox\"]\n\
                 commands = {commands}\ntimeout_secs = {timeout}\n"
            ),
        )
        .unwrap();
        let t = Instant::now();
        let e = build(&b, &bad, Some(target.clone())).await.unwrap_err();
        assert!(e.is_input_error(), "{e}");
        assert!(e.to_string().contains(expected), "wanted {expected:?}: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{commands} took {:?}",
            t.elapsed()
        );
    }
    assert_eq!(reg.uploads().await, uploads, "nothing more was pushed");
}
