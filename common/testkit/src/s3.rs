//! A throwaway S3 server: moto (`pip install 'moto[server]'`) on a free loopback port.
//!
//! moto is looked up at `$ATLANTIS_MOTO_SERVER`, then in the venv that `.ci/install` creates
//! (`$ATLANTIS_VENV` or `$HOME/.cache/atlantis-venv`, `bin/moto_server`), then on PATH. It keeps
//! objects in memory, so keep test data small; it accepts any credentials
//! ([`S3Server::ACCESS_KEY`]/[`S3Server::SECRET_KEY`] are used by convention). It implements multipart uploads including ListMultipartUploads, and enforces the 5 MiB
//! minimum part size, like AWS.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::process::Guarded;

/// A running moto server; stopped when dropped.
pub struct S3Server {
    _dir: tempfile::TempDir,
    port: u16,
    _proc: Guarded,
}

fn find_moto() -> PathBuf {
    if let Some(p) = std::env::var_os("ATLANTIS_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    if let Some(p) = crate::venv::dir().map(|d| d.join("bin/moto_server"))
        && p.is_file()
    {
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("moto_server"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        panic!(
            "test needs moto_server (PyPI `moto[server]`), which is not installed: run .ci/install, or \
             python3 -m venv $HOME/.cache/atlantis-venv && $HOME/.cache/atlantis-venv/bin/pip install 'moto[server]'"
        )
    })
}

/// Temp dirs are `atlantis-s3-<owner pid>-XXXX`.
const DIR_PREFIX: &str = "atlantis-s3-";

/// Removes the temp dirs (logs) of servers whose test process is gone: a server held in a `static` is
/// stopped by its watchdog when the test binary exits, but its directory is never dropped.
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(DIR_PREFIX)
            && let Some((pid, _)) = rest.split_once('-')
            && pid.parse::<u32>().is_ok()
            && !std::path::Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Sends one HTTP/1.0 request and returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    // moto loads its S3 backend lazily on the first S3 request, which takes seconds on a busy machine.
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

impl S3Server {
    /// Access key that tests pass (moto accepts any).
    pub const ACCESS_KEY: &'static str = "test";
    /// Secret key that tests pass.
    pub const SECRET_KEY: &'static str = "test";

    /// Starts moto and waits until it answers.
    pub fn start() -> S3Server {
        let moto = find_moto();
        reap_stale();
        for attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
                .tempdir()
                .expect("temp dir");
            let port = crate::ports::free_port();
            let args = vec![
                "-H".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                port.to_string(),
            ];
            let proc = Guarded::spawn("moto", &moto, &args, &dir.path().join("moto.log"), None);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut ok = false;
            while Instant::now() < deadline && proc.is_running() {
                if http(addr, "GET", "/moto-api/").is_some_and(|(s, _)| s == 200) {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if ok {
                return S3Server {
                    _dir: dir,
                    port,
                    _proc: proc,
                };
            }
            tracing::warn!(attempt, port, log = %proc.log_tail(20), "moto did not come up, retrying on another port.");
        }
        panic!("moto failed to start five times");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a bucket (path style); panics on failure.
    pub fn create_bucket(&self, name: &str) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut r = None;
        for _ in 0..3 {
            r = http(addr, "PUT", &format!("/{name}"));
            if r.as_ref().is_some_and(|(s, _)| *s == 200) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            r.as_ref().is_some_and(|(s, _)| *s == 200),
            "create bucket {name}: {r:?}"
        );
    }

    /// Lists the keys of a bucket under `prefix` (first 1000), for assertions.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let (status, body) = http(
            addr,
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
        )
        .expect("list bucket");
        assert_eq!(status, 200, "list bucket: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}
