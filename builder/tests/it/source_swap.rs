//! A file swapped for a symlink to a host secret between the listing and the read: the build fails
//! and the secret lands in no layer. The swap happens at a deterministic point (the builder's test
//! hook runs just before each file open below the app root).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use atlantis_builder::beneath;
use atlantis_builder::build::{BuildRequest, Source};

use crate::common::{Reg, builder, log, sample};

/// True when any blob of the cache (gzip layers unpacked) holds `needle`.
fn cache_holds(cache: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![cache.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let raw = std::fs::read(&p).unwrap();
                let mut plain = Vec::new();
                let _ = flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut plain);
                if [raw, plain]
                    .iter()
                    .any(|b| b.windows(needle.len()).any(|w| w == needle))
                {
                    return true;
                }
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_swapped_for_a_symlink_after_listing_is_never_read() {
    let reg = Reg::start().await;
    let host = tempfile::tempdir().unwrap();
    let secret = format!("HOST-SECRET-{}", uuid::Uuid::new_v4());
    std::fs::write(host.path().join("secret"), &secret).unwrap();
    std::fs::create_dir(host.path().join("dir")).unwrap();
    std::fs::write(host.path().join("dir/index.html"), &secret).unwrap();
    std::fs::write(
        host.path().join("atlantis.toml"),
        format!("name = \"busybox-web\"\n# {secret}\n"),
    )
    .unwrap();

    // Each case: the file whose open triggers the swap, and the swap.
    type Swap = Box<dyn Fn(&Path, &Path) + Send + Sync>;
    let cases: Vec<(&str, Swap)> = vec![
        (
            "www/index.html",
            Box::new(|app, host| {
                std::fs::remove_file(app.join("www/index.html")).unwrap();
                std::os::unix::fs::symlink(host.join("secret"), app.join("www/index.html"))
                    .unwrap();
            }),
        ),
        (
            "www/index.html",
            Box::new(|app, host| {
                std::fs::rename(app.join("www"), app.join("www.old")).unwrap();
                std::os::unix::fs::symlink(host.join("dir"), app.join("www")).unwrap();
            }),
        ),
        (
            "atlantis.toml",
            Box::new(|app, host| {
                std::fs::remove_file(app.join("atlantis.toml")).unwrap();
                std::os::unix::fs::symlink(host.join("atlantis.toml"), app.join("atlantis.toml"))
                    .unwrap();
            }),
        ),
    ];
    for (i, (trigger, swap)) in cases.into_iter().enumerate() {
        let (_d, app) = sample("busybox-web");
        let app: PathBuf = std::fs::canonicalize(&app).unwrap();
        // The page has the secret's size, so only the link check (not the size check) stands between
        // the secret and the layer.
        std::fs::write(app.join("www/index.html"), "x".repeat(secret.len())).unwrap();
        let done = Arc::new(Mutex::new(false));
        let (a, h, d) = (app.clone(), host.path().to_owned(), done.clone());
        let swap = Arc::new(swap);
        beneath::set_test_hook(Some(Arc::new(move |root: &Path, rel: &str| {
            let mut done = d.lock().unwrap();
            if root == a && rel == trigger && !*done {
                *done = true;
                swap(&a, &h);
            }
        })));
        let (cache, b) = builder();
        let (l, lines) = log();
        let e = b
            .build(
                BuildRequest {
                    source: Source::Dir(app.clone()),
                    sha: None,
                    push: Some(
                        format!("{}/apps/busybox-web:1a2b3c{i}", reg.host())
                            .parse()
                            .unwrap(),
                    ),
                },
                l,
            )
            .await;
        beneath::set_test_hook(None);
        assert!(*done.lock().unwrap(), "case {i}: the swap happened");
        let e = match e {
            Ok(out) => panic!(
                "case {i}: the build read through the swapped link and pushed {}",
                out.image.digest
            ),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("became a symlink") || e.contains("symlink"),
            "case {i}: {e}"
        );
        assert!(!e.contains(&secret), "case {i}: {e}");
        let logged = lines.lock().unwrap().join("\n");
        assert!(!logged.contains(&secret), "case {i}: {logged}");
        assert!(
            !cache_holds(cache.path(), secret.as_bytes()),
            "case {i}: the secret is in a layer"
        );
    }
    assert!(reg.catalog().await.is_empty(), "nothing was pushed");
    assert_eq!(reg.uploads().await, 0);
}
