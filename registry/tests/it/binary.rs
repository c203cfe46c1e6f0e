//! The `atlantis-registry` binary: `--help`, config from environment overrides alone, serving, and a clean
//! exit on SIGTERM; a non-loopback address without auth is refused with a clear message.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_atlantis-registry");

#[test]
fn help_env_config_serve_and_sigterm() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config") && help.contains("gc"), "{help}");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child = Command::new(BIN)
        .env("ATLANTIS_REGISTRY__LISTEN", "127.0.0.1:0")
        .env("ATLANTIS_REGISTRY__STORAGE__ROOT", dir.path().join("data"))
        .env("RUST_LOG", "info")
        .env("ATLANTIS_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Whatever happens below, the child does not outlive the test.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let addr =
        atlantis_testkit::wait_until(Duration::from_secs(20), "the listening log line", || {
            let text = std::fs::read_to_string(&log).ok()?;
            let line = text.lines().find(|l| l.contains("Registry listening"))?;
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            Some(v["fields"]["addr"].as_str()?.to_owned())
        });
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /v2/ HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(
        dir.path().join("data").is_dir(),
        "the storage root came from the environment"
    );

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status =
        atlantis_testkit::wait_until(Duration::from_secs(15), "exit after SIGTERM", || {
            child.0.try_wait().unwrap()
        });
    assert!(status.success(), "exit status {status:?}");

    let out = Command::new(BIN)
        .env("ATLANTIS_REGISTRY__LISTEN", "0.0.0.0:0")
        .env("ATLANTIS_REGISTRY__STORAGE__ROOT", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without [auth]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
