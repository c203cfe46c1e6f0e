//! Throwaway real services for tests.
//!
//! Every service here is the real thing (Debian's packages), started on a free loopback port with its
//! state in a temp dir, and stopped when its handle drops, also when a test panics. If the test process
//! itself is killed, a watchdog in the wrapper shell stops the service when our stdin pipe closes.
//!
//! A missing binary is a test failure with a message that says what to install: CI never skips.
//! Modules: [`process`] (the guarded child), [`ports`], [`zookeeper`]. Also dockerd in a network namespace,
//! PostgreSQL, an S3 server and OpenLDAP's slapd ([`slapd`]).

pub mod docker;
pub mod ensemble;
pub mod load;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod s3;
pub mod slapd;
pub mod venv;
pub mod zookeeper;

pub use ensemble::Ensemble;
pub use postgres::Postgres;
pub use slapd::Slapd;
pub use zookeeper::ZooKeeper;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Finds `bin` on PATH or in the usual sbin directories, or panics with an install hint.
pub fn require_bin(bin: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "test needs `{bin}` (Debian package `{package}`), which is not installed: run .ci/run, or apt-get install {package}"
    )
}

/// Requires an existing file (a jar, a schema), or panics with an install hint.
pub fn require_file(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "test needs {path} (Debian package `{package}`): run .ci/run, or apt-get install {package}"
    );
    p
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async twin of [`wait_until`]: polls `f` every 20 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a secret file (a token, a key) with mode 0600, as the services require of such files.
pub fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
