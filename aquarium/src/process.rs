//! Long-lived service processes: started detached (a session and process group of their own, stdin from
//! /dev/null, output appended to the component's log), tracked by pid files, stopped by pid.
//!
//! A pid file alone is not trusted: a pid counts as ours only while `/proc/<pid>/cmdline` still names the
//! program we started, so a recycled pid is never signalled.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The program (absolute path).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace (`/run/netns/NAME`), through `nsenter --net=`.
    pub netns: Option<PathBuf>,
    /// Working directory.
    pub cwd: PathBuf,
}

/// True when running as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Starts `spec` detached and writes its pid to `pid_file`. The process keeps running after the
/// aquarium exits: `setsid` gives it a new session (and process group), `nsenter` enters the namespace,
/// and both exec in place, so the recorded pid is the service's own.
pub fn spawn(spec: &Spec, log: &Path, pid_file: &Path) -> anyhow::Result<u32> {
    for d in [log.parent(), pid_file.parent()].into_iter().flatten() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("setsid");
    if let Some(ns) = &spec.netns {
        cmd.arg("nsenter").arg(format!("--net={}", ns.display()));
    }
    cmd.arg(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spec.program.display()))?;
    let pid = child.id();
    // The child is not waited for: it outlives us and is reparented to init when we exit.
    drop(child);
    std::fs::write(pid_file, format!("{pid}\n"))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    Ok(pid)
}

/// The pid in `pid_file` when that process is alive and is still the one we started: one of its
/// arguments is `marker` (a path under the data directory that only this component is given).
pub fn running(pid_file: &Path, marker: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_ours(pid, marker).then_some(pid)
}

/// True when `pid` is alive (not a zombie) and has the argument `marker`.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    if !alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == marker.as_bytes())
}

/// True when `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` (`TERM`, `KILL`) to `pid` with `kill(1)`.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops `pid`: SIGTERM, then SIGKILL after `grace`. Returns once it is gone (or after a last 5 s).
pub fn stop(pid: u32, grace: Duration) {
    signal(pid, "TERM");
    if wait_gone(pid, grace) {
        return;
    }
    signal(pid, "KILL");
    wait_gone(pid, Duration::from_secs(5));
}

/// Polls until `pid` is gone; true if it went within `timeout`.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The last `n` lines of a file (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
