//! A throwaway PostgreSQL server (Debian's `postgresql` package) on a free loopback port.
//!
//! PostgreSQL refuses to run as root, so `initdb` and `postgres` run as the `postgres` user (through
//! `setpriv`, which execs in place, so the guard's signals reach the server itself). The data directory
//! is a temp dir owned by that user; the socket lives there too. Authentication is `trust` on loopback:
//! the server is reachable only from this machine and lives as long as the test.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::Guarded;

/// A running PostgreSQL; stopped and deleted when dropped.
pub struct Postgres {
    port: u16,
    proc: Option<Guarded>,
    dir: tempfile::TempDir,
}

fn bin_dir() -> PathBuf {
    let base = std::path::Path::new("/usr/lib/postgresql");
    let mut versions: Vec<u32> = std::fs::read_dir(base)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    let v = versions.pop().unwrap_or_else(|| {
        panic!("test needs PostgreSQL (Debian package `postgresql`): run .ci/run, or apt-get install postgresql")
    });
    base.join(v.to_string()).join("bin")
}

fn as_postgres(program: &std::path::Path) -> Vec<String> {
    vec![
        "--reuid=postgres".into(),
        "--regid=postgres".into(),
        "--init-groups".into(),
        "--".into(),
        program.display().to_string(),
    ]
}

impl Postgres {
    /// Initialises a cluster in a temp dir and starts it; waits until it accepts connections.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let setpriv = crate::require_bin("setpriv", "util-linux");
        let dir = tempfile::Builder::new()
            .prefix("atlantis-pg-")
            .tempdir()
            .expect("temp dir");
        let owner = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .expect("id postgres");
        let uid: u32 = String::from_utf8_lossy(&owner.stdout)
            .trim()
            .parse()
            .expect("the postgres user exists (Debian package `postgresql`)");
        let gid_out = Command::new("id")
            .args(["-g", "postgres"])
            .output()
            .expect("id -g postgres");
        let gid: u32 = String::from_utf8_lossy(&gid_out.stdout)
            .trim()
            .parse()
            .expect("postgres group");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown data dir");
        let data = dir.path().join("data");
        let mut args = as_postgres(&bin.join("initdb"));
        args.extend(
            [
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
            .map(str::to_owned),
        );
        let out = Command::new(&setpriv)
            .args(&args)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..5 {
            let port = crate::ports::free_port();
            let mut args = as_postgres(&bin.join("postgres"));
            args.extend(
                [
                    "-D",
                    &data.display().to_string(),
                    "-p",
                    &port.to_string(),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    &dir.path().display().to_string(),
                    "-F",
                    "-c",
                    "max_connections=50",
                ]
                .map(str::to_owned),
            );
            let log = dir.path().join("postgres.log");
            let proc = Guarded::spawn("postgres", &setpriv, &args, &log, None);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let ready = loop {
                let ok = Command::new(bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "1"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    break true;
                }
                if !proc.is_running() || std::time::Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if ready {
                return Postgres {
                    port,
                    proc: Some(proc),
                    dir,
                };
            }
            tracing::warn!(port, log = %proc.log_tail(20), "PostgreSQL did not come up, retrying on another port.");
        }
        panic!("PostgreSQL did not start; see {}", dir.path().display());
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a database and returns its URL (`postgres://postgres@127.0.0.1:<port>/<name>`).
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database names: a-z, 0-9, _"
        );
        let out = Command::new(bin_dir().join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The server log's last lines.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    /// Where its files live.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}
