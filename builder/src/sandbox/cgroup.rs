//! A cgroup per build step, limiting CPU, memory and processes; removed when the step ends.
//!
//! cgroup v2 when `/sys/fs/cgroup` is the unified hierarchy: `<parent>/<name>` under it, with the
//! memory, pids and cpu controllers enabled on the way down. cgroup v1 otherwise: one
//! `<controller>/<parent>/<name>` directory in each of the memory, pids and cpu hierarchies.
//! The child process enters the cgroup itself (writing `0` to `cgroup.procs`, while still root) before
//! it drops its privileges, so nothing it starts is ever outside.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::BuildError;

const ROOT: &str = "/sys/fs/cgroup";
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
const CPU_PERIOD_US: u64 = 100_000;

/// The limits of one build step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Memory (RAM, page cache and tmpfs) in bytes; swap is not allowed on top.
    pub memory_bytes: u64,
    /// Processes and threads at once.
    pub max_processes: u64,
    /// CPU time per wall-clock second, in CPUs (1.5 = one and a half cores).
    pub cpus: f64,
}

/// What the limits did during a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Processes the kernel's OOM killer killed for the memory limit.
    pub oom_kills: u64,
    /// Forks refused by the process limit.
    pub fork_refusals: u64,
}

/// A live cgroup (one directory per hierarchy).
#[derive(Debug)]
pub struct Cgroup {
    v2: bool,
    dirs: Vec<PathBuf>,
    removed: bool,
}

fn err(what: String) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Io { what, source }
}

fn write(path: &Path, value: &str) -> Result<(), BuildError> {
    std::fs::write(path, value).map_err(err(format!("writing {value:?} to {}", path.display())))
}

/// Whether `/sys/fs/cgroup` is a cgroup2 mount (the unified hierarchy), from `/proc/self/mountinfo`.
pub fn is_v2() -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Fields: id parent major:minor root mount-point options... - fstype source options.
    info.lines().any(|l| {
        let mut f = l.split_whitespace();
        let mount_point = f.nth(4);
        let fstype = l
            .split(" - ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next());
        mount_point == Some(ROOT) && fstype == Some("cgroup2")
    })
}

impl Cgroup {
    /// Makes `<parent>/<name>` with `limits`. `parent` and `name` are plain names.
    pub fn create(parent: &str, name: &str, limits: &Limits) -> Result<Cgroup, BuildError> {
        for n in [parent, name] {
            if n.is_empty()
                || n.starts_with('.')
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(BuildError::Request(format!(
                    "cgroup name {n:?} must be a plain name"
                )));
            }
        }
        let root = Path::new(ROOT);
        let mut cg = Cgroup {
            v2: is_v2(),
            dirs: Vec::new(),
            removed: false,
        };
        if cg.v2 {
            let p = root.join(parent);
            enable_controllers(root)?;
            mkdir(&p)?;
            enable_controllers(&p)?;
            let d = p.join(name);
            std::fs::create_dir(&d).map_err(err(format!("creating the cgroup {}", d.display())))?;
            cg.dirs.push(d.clone());
            write(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
            if d.join("memory.swap.max").exists() {
                write(&d.join("memory.swap.max"), "0")?;
            }
            write(&d.join("pids.max"), &limits.max_processes.to_string())?;
            write(
                &d.join("cpu.max"),
                &format!("{} {CPU_PERIOD_US}", quota_us(limits.cpus)),
            )?;
        } else {
            for c in V1_CONTROLLERS {
                let h = root.join(c);
                if !h.join("cgroup.procs").exists() {
                    return Err(BuildError::Io {
                        what: format!(
                            "the build sandbox needs the cgroup v1 {c} hierarchy at {}",
                            h.display()
                        ),
                        source: std::io::ErrorKind::NotFound.into(),
                    });
                }
                let p = h.join(parent);
                mkdir(&p)?;
                let d = p.join(name);
                std::fs::create_dir(&d)
                    .map_err(err(format!("creating the cgroup {}", d.display())))?;
                cg.dirs.push(d.clone());
                match c {
                    "memory" => {
                        write(
                            &d.join("memory.limit_in_bytes"),
                            &limits.memory_bytes.to_string(),
                        )?;
                        // Without swap accounting this file is absent and there is no swap to limit.
                        if d.join("memory.memsw.limit_in_bytes").exists() {
                            write(
                                &d.join("memory.memsw.limit_in_bytes"),
                                &limits.memory_bytes.to_string(),
                            )?;
                        }
                    }
                    "pids" => write(&d.join("pids.max"), &limits.max_processes.to_string())?,
                    _ => {
                        write(&d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(
                            &d.join("cpu.cfs_quota_us"),
                            &quota_us(limits.cpus).to_string(),
                        )?;
                    }
                }
            }
        }
        Ok(cg)
    }

    /// The directories of this cgroup (one for v2, one per controller for v1).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// `cgroup.procs` of each directory, open for writing: the child writes `0` to each to enter.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>, BuildError> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(OwnedFd::from)
                    .map_err(err(format!("opening {}", p.display())))
            })
            .collect()
    }

    /// What the limits did so far.
    pub fn events(&self) -> Events {
        let mut ev = Events::default();
        for d in &self.dirs {
            let (mem, pids) = if self.v2 {
                (d.join("memory.events"), d.join("pids.events"))
            } else {
                (d.join("memory.oom_control"), d.join("pids.events"))
            };
            ev.oom_kills += counter(&mem, "oom_kill");
            ev.fork_refusals += counter(&pids, "max");
        }
        ev
    }

    /// The processes still in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills every process in the cgroup (`cgroup.kill` on v2, each listed process otherwise).
    pub fn kill_all(&self) {
        if self.v2
            && let Some(d) = self.dirs.first()
            && std::fs::write(d.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for pid in self.pids() {
            if pid > 1 {
                super::kill(pid);
            }
        }
    }

    /// Kills what is left, waits until the cgroup is empty and removes it.
    pub fn remove(mut self) -> Result<(), BuildError> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), BuildError> {
        if self.removed {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.kill_all();
            let mut busy = None;
            for d in &self.dirs {
                if d.exists()
                    && let Err(e) = std::fs::remove_dir(d)
                {
                    busy = Some((d.clone(), e));
                }
            }
            match busy {
                None => {
                    self.removed = true;
                    return Ok(());
                }
                Some((d, e)) if Instant::now() >= deadline => {
                    return Err(BuildError::Io {
                        what: format!(
                            "removing the build cgroup {} (processes {:?} left)",
                            d.display(),
                            self.pids()
                        ),
                        source: e,
                    });
                }
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            tracing::warn!("{e}");
        }
    }
}

fn quota_us(cpus: f64) -> u64 {
    ((cpus.max(0.01) * CPU_PERIOD_US as f64) as u64).max(1000)
}

fn mkdir(p: &Path) -> Result<(), BuildError> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(BuildError::Io {
            what: format!("creating the cgroup {}", p.display()),
            source: e,
        }),
    }
}

/// Turns on the memory, pids and cpu controllers for the children of the v2 cgroup `dir`.
fn enable_controllers(dir: &Path) -> Result<(), BuildError> {
    let have = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| !have.split_whitespace().any(|h| h == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &missing.join(" "))
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines); 0 when absent.
fn counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}
