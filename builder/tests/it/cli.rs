//! The `atlantis-builder build` command: progress on stderr, `REF@DIGEST` on stdout, exit code 2 for
//! bad input.

use std::process::Command;

use crate::common::{Reg, sample};

fn builder_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atlantis-builder"));
    c.env_remove("ATLANTIS_REGISTRY_TOKEN")
        .env_remove("ATLANTIS_REGISTRY_USER");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_and_push_from_the_command_line() {
    let reg = Reg::start().await;
    let (_d, app) = sample("static-web");
    let cache = tempfile::tempdir().unwrap();
    let target = format!("{}/apps/static-web:1a2b3c4", reg.host());
    let run = |app: &std::path::Path| {
        let mut c = builder_cli();
        c.arg("build")
            .arg(app)
            .args(["--push", &target, "--cache-dir"])
            .arg(cache.path());
        c
    };
    let out = tokio::task::spawn_blocking({
        let mut c = run(&app);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(&format!("{target}@sha256:")), "{stdout}");
    assert!(
        stderr.contains("base layer") && stderr.contains("uploaded"),
        "{stderr}"
    );
    assert_eq!(reg.uploads().await, 3);

    // Bad input: exit code 2, the reason on stderr, nothing pushed.
    std::fs::write(
        app.join("atlantis.toml"),
        "name = \"static-web\"\ntemplate = \"static\"\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let mut c = run(&app);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("field `run`: missing field `run`"),
        "{stderr}"
    );
    assert_eq!(reg.uploads().await, 3);
}
