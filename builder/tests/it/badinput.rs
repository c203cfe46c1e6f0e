//! Bad input: each case is refused with a clear error, and nothing reaches the registry.

use std::path::Path;

use atlantis_builder::Settings;
use atlantis_builder::build::{BuildRequest, Source};
use atlantis_builder::source::Limits;

use crate::common::{Reg, builder_with, log, sample};

type Edit = Box<dyn Fn(&Path)>;

fn set_config(app: &Path, text: &str) {
    std::fs::write(app.join("atlantis.toml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_is_a_clear_error_and_pushes_nothing() {
    let reg = Reg::start().await;
    let good =
        "name = \"busybox-web\"\ntemplate = \"busybox\"\nrun = [\"/bin/sh\", \"/app/start.sh\"]\n";
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "missing atlantis.toml",
            Box::new(|a| std::fs::remove_file(a.join("atlantis.toml")).unwrap()),
            "no atlantis.toml in the app root",
        ),
        (
            "invalid value",
            Box::new(move |a| set_config(a, &format!("{good}port = 70000\n"))),
            "atlantis.toml line 4, field `port`",
        ),
        (
            "unknown field",
            Box::new(move |a| set_config(a, &format!("{good}replicas = 3\n"))),
            "atlantis.toml line 4, field `replicas`: unknown field `replicas`",
        ),
        (
            "not TOML",
            Box::new(|a| set_config(a, "name = busybox-web\n")),
            "atlantis.toml line 1, field `name`",
        ),
        (
            "unknown template",
            Box::new(|a| {
                set_config(
                    a,
                    "name = \"busybox-web\"\ntemplate = \"ruby\"\nrun = [\"/a\"]\n",
                )
            }),
            "atlantis.toml line 2, field `template`: unknown variant `ruby`",
        ),
        (
            "name differs from the push target",
            Box::new(|a| {
                set_config(
                    a,
                    "name = \"other\"\ntemplate = \"busybox\"\nrun = [\"/a\"]\n",
                )
            }),
            "named \"other\" in atlantis.toml but would be pushed to apps/busybox-web",
        ),
        (
            "symlink out of the app root",
            Box::new(|a| std::os::unix::fs::symlink("../../etc/passwd", a.join("www/pw")).unwrap()),
            "symlink www/pw -> ../../etc/passwd escapes the app root",
        ),
        (
            "absolute symlink",
            Box::new(|a| std::os::unix::fs::symlink("/etc", a.join("etc")).unwrap()),
            "symlink etc -> /etc escapes the app root (absolute target)",
        ),
        (
            "symlink through a symlink",
            Box::new(|a| {
                std::os::unix::fs::symlink("..", a.join("www/up")).unwrap();
                std::os::unix::fs::symlink("www/up/../secret", a.join("s")).unwrap();
            }),
            "symlink s -> www/up/../secret escapes the app root",
        ),
        (
            "atlantis.toml is a symlink",
            Box::new(|a| {
                std::fs::rename(a.join("atlantis.toml"), a.join("real.toml")).unwrap();
                std::os::unix::fs::symlink("real.toml", a.join("atlantis.toml")).unwrap();
            }),
            "atlantis.toml must be a regular file",
        ),
        (
            "a FIFO",
            Box::new(|a| {
                let out = std::process::Command::new("mkfifo")
                    .arg(a.join("pipe"))
                    .output()
                    .unwrap();
                assert!(out.status.success());
            }),
            "pipe is not a regular file, directory or symlink",
        ),
        (
            "oversize input",
            Box::new(|a| std::fs::write(a.join("big.bin"), vec![7u8; 300_000]).unwrap()),
            "the app's files exceed the limit of 200000 bytes",
        ),
    ];
    let settings = Settings {
        limits: Limits {
            max_bytes: 200_000,
            max_entries: 1000,
        },
        ..Settings::default()
    };
    let (_c, b) = builder_with(settings);
    let target = format!("{}/apps/busybox-web:1a2b3c4", reg.host());
    for (what, edit, expected) in cases {
        let (_d, app) = sample("busybox-web");
        edit(&app);
        let (l, _) = log();
        let e = b
            .build(
                BuildRequest {
                    source: Source::Dir(app.clone()),
                    sha: None,
                    push: Some(target.parse().unwrap()),
                },
                l,
            )
            .await
            .expect_err(what);
        assert!(e.is_input_error(), "{what}: {e}");
        assert!(
            e.to_string().contains(expected),
            "{what}: wanted {expected:?} in {e}"
        );
    }
    assert_eq!(reg.uploads().await, 0, "nothing was uploaded");
    assert_eq!(reg.bytes_received().await, 0);
    assert!(reg.catalog().await.is_empty(), "no repository was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_push_reference_or_git_request_is_refused_before_reading() {
    for bad in [
        "apps/x:1",
        "127.0.0.1:5000/Apps/x:1",
        "127.0.0.1:5000/apps/x",
        "127.0.0.1:5000/apps/x:1;rm",
    ] {
        let e = bad
            .parse::<atlantis_builder::push::ImageRef>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("REGISTRY/apps/NAME:SHA"), "{bad}: {e}");
    }
    let (_c, b) = builder_with(Settings::default());
    let (_d, app) = sample("busybox-web");
    let (l, _) = log();
    let e = b
        .build(
            BuildRequest {
                source: Source::Git(atlantis_builder::git::GitSource {
                    repo: app.display().to_string(),
                    sha: "1a2b3c4".parse().unwrap(),
                    root: "../..".into(),
                }),
                sha: None,
                push: None,
            },
            l,
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("plain names inside the repository"),
        "{e}"
    );
}
