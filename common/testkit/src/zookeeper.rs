//! A throwaway ZooKeeper server (Debian's `zookeeper` package) on a free loopback port.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::process::Guarded;

const JARS: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

/// A standalone ZooKeeper; stopped and deleted when dropped.
pub struct ZooKeeper {
    dir: tempfile::TempDir,
    shared: bool,
    port: u16,
    proc: Option<Guarded>,
    tick_ms: u32,
}

impl ZooKeeper {
    /// Starts a server with tickTime 500 ms (sessions of 1 to 10 s are allowed then), and waits until it
    /// serves requests.
    pub fn start() -> ZooKeeper {
        Self::start_with_tick(500)
    }

    /// One server shared by every test of this test binary (tests isolate themselves under their own
    /// root path). It is never dropped; its watchdog stops it and deletes its files when the binary exits.
    pub fn shared() -> &'static ZooKeeper {
        static SHARED: std::sync::OnceLock<ZooKeeper> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| ZooKeeper::start_inner(500, true))
    }

    /// Starts a server with the given tickTime (the session timeout is bounded by 2 to 20 ticks).
    pub fn start_with_tick(tick_ms: u32) -> ZooKeeper {
        Self::start_inner(tick_ms, false)
    }

    fn start_inner(tick_ms: u32, shared: bool) -> ZooKeeper {
        crate::require_bin("java", "default-jre-headless");
        crate::require_file("/usr/share/java/zookeeper.jar", "zookeeper");
        let mut dir = tempfile::Builder::new()
            .prefix("atlantis-zk-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        for attempt in 0..5 {
            let port = crate::ports::free_port();
            let mut zk = ZooKeeper {
                dir,
                shared,
                port,
                proc: None,
                tick_ms,
            };
            if zk.launch() {
                return zk;
            }
            tracing::warn!(
                attempt,
                port,
                "ZooKeeper did not come up on this port, retrying on another."
            );
            dir = std::mem::replace(&mut zk.dir, tempfile::tempdir().expect("temp dir"));
            zk.proc = None;
        }
        panic!(
            "ZooKeeper failed to start five times; see logs under {}",
            dir.path().display()
        );
    }

    fn launch(&mut self) -> bool {
        let data = self.dir.path().join("data");
        let cfg = format!(
            "tickTime={}\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,wchp\nmaxSessionTimeout=60000\n",
            self.tick_ms,
            data.display(),
            self.port
        );
        let cfg_path = self.dir.path().join("zoo.cfg");
        std::fs::write(&cfg_path, cfg).expect("write zoo.cfg");
        let args: Vec<String> = vec![
            "-Xmx256m".into(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "-cp".into(),
            JARS.into(),
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn".into(),
            "-Dzookeeper.admin.enableServer=false".into(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
            cfg_path.display().to_string(),
        ];
        let java = crate::require_bin("java", "default-jre-headless");
        let log = self.dir.path().join("zk.log");
        let proc = if self.shared {
            Guarded::spawn_cleanup("zookeeper", &java, &args, &log, self.dir.path())
        } else {
            Guarded::spawn("zookeeper", &java, &args, &log, None)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let expect = format!("dataDir={}", data.display());
        loop {
            if !proc.is_running() {
                tracing::warn!(log = %proc.log_tail(20), "ZooKeeper exited during start.");
                return false;
            }
            if four_letter(self.addr(), "srvr").is_some_and(|s| s.contains("Mode:")) {
                // Make sure the server on this port is ours, not another test's (its dataDir is ours).
                return if four_letter(self.addr(), "conf").is_some_and(|c| c.contains(&expect)) {
                    self.proc = Some(proc);
                    true
                } else {
                    false
                };
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "ZooKeeper did not serve within 30 s:\n{}",
                    proc.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The client port's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The connect string for clients, `127.0.0.1:<port>`.
    pub fn connect_string(&self) -> String {
        self.addr().to_string()
    }

    /// The data directory (kept across [`ZooKeeper::stop`] and [`ZooKeeper::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server gracefully; data is kept.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Kills the server with SIGKILL (a crash); data is kept.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            p.stop();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.launch() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ZooKeeper did not restart on port {}", self.port);
    }

    /// True while the server process runs.
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Guarded::is_running)
    }

    /// The sessions holding a data or child watch on `path` (four-letter command `wchp`), e.g. to see that
    /// a client is waiting on a node; empty when none does or the server does not answer.
    pub fn watchers(&self, path: &str) -> Vec<i64> {
        four_letter(self.addr(), "wchp")
            .map(|out| parse_wchp(&out, path))
            .unwrap_or_default()
    }
}

/// The session IDs listed under `path` in a `wchp` answer (a path line, then one tab-indented `0x...`
/// session per line).
fn parse_wchp(out: &str, path: &str) -> Vec<i64> {
    let mut current = false;
    let mut sessions = Vec::new();
    for line in out.lines() {
        match line.strip_prefix('\t') {
            Some(id) if current => {
                if let Some(v) = id
                    .trim()
                    .strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                {
                    sessions.push(v as i64);
                }
            }
            Some(_) => {}
            None => current = line.trim() == path,
        }
    }
    sessions
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a four-letter command and returns the answer.
pub fn four_letter(addr: SocketAddr, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(cmd.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::parse_wchp;

    #[test]
    fn wchp_lists_the_sessions_of_one_path() {
        let out = "/a/leader\n\t0x1000b2c3d4e0001\n\t0x1000b2c3d4e0002\n/a/leader2\n\t0x1000b2c3d4e0003\n";
        assert_eq!(
            parse_wchp(out, "/a/leader"),
            vec![0x1000b2c3d4e0001, 0x1000b2c3d4e0002]
        );
        assert_eq!(parse_wchp(out, "/a/leader2"), vec![0x1000b2c3d4e0003]);
        assert!(parse_wchp(out, "/a").is_empty());
        assert!(parse_wchp("", "/a/leader").is_empty());
    }
}
