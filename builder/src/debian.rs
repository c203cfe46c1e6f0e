//! The `debian` template: a minimal Debian root made by debootstrap from the Debian archive (plus the
//! packages the app lists), and the app's `[build]` commands run inside it.
//!
//! The root is made once per (suite, mirror, package set) and kept under the cache's `roots/` directory;
//! its layer is cached like any other. Build commands run in a copy of the app at `/app` inside that
//! root, each in the build sandbox ([`crate::sandbox`]): the root is read-only, so only `/app` comes out
//! of the build, and it is then checked like any other input (no escaping symlinks, no special files,
//! limits). All commands together have the config's time limit; when it runs out the command's cgroup
//! is killed. The user's arguments are passed as an argument vector, never spliced into a shell string.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atlantis_common::api::app_config::BuildSteps;
use sha2::{Digest as _, Sha256};

use crate::error::{BuildError, io};
use crate::layer::{Content, Entry};
use crate::log::Log;
use crate::sandbox::{self, SandboxSettings};

/// Where debootstrap gets Debian from, and which release.
#[derive(Debug, Clone)]
pub struct DebianSettings {
    /// The archive mirror.
    pub mirror: String,
    /// The suite.
    pub suite: String,
    /// Time allowed for one debootstrap.
    pub bootstrap_timeout: Duration,
    /// How build commands are confined.
    pub sandbox: SandboxSettings,
}

impl Default for DebianSettings {
    fn default() -> Self {
        DebianSettings {
            mirror: "http://deb.debian.org/debian".into(),
            suite: "bookworm".into(),
            bootstrap_timeout: Duration::from_secs(1800),
            sandbox: SandboxSettings::default(),
        }
    }
}

/// The cache key of a root: the suite, the mirror and the sorted package set.
pub fn root_key(settings: &DebianSettings, packages: &[String]) -> String {
    let mut pkgs = packages.to_vec();
    pkgs.sort();
    let mut h = Sha256::new();
    h.update(b"atlantis-debian-root-v1\0");
    h.update(settings.suite.as_bytes());
    h.update(b"\0");
    h.update(settings.mirror.as_bytes());
    h.update(b"\0");
    h.update(pkgs.join(",").as_bytes());
    hex::encode(h.finalize())
}

/// The Debian root for `packages`, made by debootstrap when it is not cached yet.
pub fn root(
    cache_dir: &Path,
    settings: &DebianSettings,
    packages: &[String],
    log: &Log,
) -> Result<PathBuf, BuildError> {
    let suite_ok = !settings.suite.is_empty()
        && settings
            .suite
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !settings.suite.starts_with('-');
    let mirror_ok = ["http://", "https://", "file:///"]
        .iter()
        .any(|p| settings.mirror.starts_with(p))
        && !settings.mirror.contains(char::is_whitespace);
    if !suite_ok || !mirror_ok {
        return Err(BuildError::Request(format!(
            "the builder's Debian suite {:?} or mirror {:?} is invalid",
            settings.suite, settings.mirror
        )));
    }
    check_packages(packages)?;
    let key = root_key(settings, packages);
    let dir = cache_dir.join("roots").join(&key);
    if dir.join(".complete").exists() {
        return app_mount_point(dir.join("root"));
    }
    std::fs::create_dir_all(cache_dir.join("roots")).map_err(io("creating the roots dir"))?;
    let work = tempfile::Builder::new()
        .prefix("debootstrap-")
        .tempdir_in(cache_dir.join("tmp"))
        .map_err(io("creating a debootstrap dir"))?;
    let target = work.path().join("root");
    let mut c = Command::new("debootstrap");
    c.arg("--variant=minbase");
    if !packages.is_empty() {
        c.arg(format!("--include={}", packages.join(",")));
    }
    c.arg(&settings.suite).arg(&target).arg(&settings.mirror);
    log(format!(
        "debian: debootstrap {} from {} with [{}] (once per package set)...",
        settings.suite,
        settings.mirror,
        packages.join(", ")
    ));
    let t = Instant::now();
    let out = work.path().join("debootstrap.log");
    let status = run_limited(c, &out, settings.bootstrap_timeout)?;
    if !status.success {
        let tail = tail(&out, 20);
        return Err(if status.timed_out {
            BuildError::Input(format!(
                "debootstrap did not finish within {} s:\n{tail}",
                settings.bootstrap_timeout.as_secs()
            ))
        } else {
            BuildError::Input(format!("debootstrap failed (a missing package?):\n{tail}"))
        });
    }
    std::fs::write(work.path().join(".complete"), b"").map_err(io("marking the root"))?;
    let kept = work.keep();
    if std::fs::rename(&kept, &dir).is_err() {
        // Another build made the same root meanwhile: use that one.
        let _ = std::fs::remove_dir_all(&kept);
    }
    log(format!("debian: root ready in {} s", t.elapsed().as_secs()));
    app_mount_point(dir.join("root"))
}

/// Debian's package-name grammar (Debian Policy 5.6.7): at least two characters of `[a-z0-9+.-]`,
/// starting with a letter or digit. Checked again here (the config parser checks it too) because a
/// name reaches debootstrap's `--include=` list, where a comma or an option would change its meaning.
pub fn check_packages(packages: &[String]) -> Result<(), BuildError> {
    for p in packages {
        let ok = p.len() >= 2
            && p.len() <= 100
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-')
            });
        if !ok {
            return Err(BuildError::Input(format!(
                "build.packages: {p:?} is not a Debian package name ([a-z0-9][a-z0-9+.-]+)"
            )));
        }
    }
    Ok(())
}

/// `root` with an empty `app` directory, where the sandbox mounts the app over the read-only root.
fn app_mount_point(root: PathBuf) -> Result<PathBuf, BuildError> {
    match std::fs::create_dir(root.join("app")) {
        Ok(()) => Ok(root),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(root),
        Err(e) => Err(BuildError::Io {
            what: format!("creating {}/app", root.display()),
            source: e,
        }),
    }
}

/// The layer entries of a Debian root: every directory, file and symlink with its mode (set-id bits
/// kept), except what the runtime provides (`dev`, `proc`, `sys`, `run` and `tmp` are kept empty, and
/// so is `app`, the sandbox's mount point, which the app layer fills).
/// The root comes from the Debian archive, so its symlinks are not checked against a root.
pub fn root_entries(root: &Path) -> Result<Vec<Entry>, BuildError> {
    let mut map = BTreeMap::new();
    walk(root, "", &mut map)?;
    Ok(map
        .into_iter()
        .map(|(path, content)| Entry { path, content })
        .collect())
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Content>) -> Result<(), BuildError> {
    let rd = std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))?;
    for e in rd {
        let e = e.map_err(io(format!("listing {}", dir.display())))?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(e.path()).map_err(io(format!("stat {rel}")))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let t = std::fs::read_link(e.path()).map_err(io(format!("readlink {rel}")))?;
            if let Some(t) = t.to_str() {
                out.insert(rel, Content::Symlink(t.to_owned()));
            }
        } else if ft.is_dir() {
            out.insert(rel.clone(), Content::Dir(mode));
            let skip = prefix.is_empty()
                && matches!(
                    name.as_str(),
                    "dev" | "proc" | "sys" | "run" | "tmp" | "app"
                );
            if !skip {
                walk(&e.path(), &rel, out)?;
            }
        } else if ft.is_file() {
            out.insert(
                rel,
                Content::File {
                    path: e.path(),
                    mode,
                    size: meta.size(),
                },
            );
        }
        // Device nodes, FIFOs and sockets are left out: the container runtime provides /dev.
    }
    Ok(())
}

/// How a limited command ended.
struct Ended {
    success: bool,
    timed_out: bool,
}

/// Runs `c` with stdout and stderr to `log_file`, killing it when `limit` runs out.
fn run_limited(mut c: Command, log_file: &Path, limit: Duration) -> Result<Ended, BuildError> {
    let f = std::fs::File::create(log_file).map_err(io("creating a build log"))?;
    let f2 = f.try_clone().map_err(io("creating a build log"))?;
    c.stdin(Stdio::null()).stdout(f).stderr(f2);
    let mut child = c
        .spawn()
        .map_err(|e| BuildError::Input(format!("cannot start {:?}: {e}", c.get_program())))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().map_err(io("waiting for a build step"))? {
            return Ok(Ended {
                success: st.success(),
                timed_out: false,
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ended {
                success: false,
                timed_out: true,
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.by_ref().take(4 << 20).read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs the build commands of `steps` over `app` (a private copy of the app) in `root`, each in the
/// build sandbox ([`crate::sandbox`]). `work` takes the commands' logs.
pub fn run_commands(
    root: &Path,
    app: &Path,
    work: &Path,
    steps: &BuildSteps,
    sandbox: &SandboxSettings,
    log: &Log,
) -> Result<(), BuildError> {
    sandbox::check_network(sandbox, steps.network)?;
    sandbox::give_app(sandbox, app)?;
    // One network namespace for all the steps of a networked build, removed even when a step fails.
    let net = sandbox::build_network(sandbox, steps.network)?;
    if let Some(n) = &net {
        log(format!(
            "network: a namespace of the build's own (slot {}), address {} behind NAT, \
             resolvers from its /etc/resolv.conf",
            n.slot(),
            n.build_addr
        ));
        for w in &n.warnings {
            log(format!("network: warning: {w}"));
        }
    }
    let result = run_steps(root, app, work, steps, sandbox, net.as_ref(), log);
    let removed = net.map_or(Ok(()), |n| n.remove());
    result.and(removed)
}

fn run_steps(
    root: &Path,
    app: &Path,
    work: &Path,
    steps: &BuildSteps,
    sandbox: &SandboxSettings,
    net: Option<&sandbox::net::BuildNet>,
    log: &Log,
) -> Result<(), BuildError> {
    let limit = Duration::from_secs(steps.timeout_secs.0);
    let deadline = Instant::now() + limit;
    for (i, cmd) in steps.commands.0.iter().enumerate() {
        log(format!("build step {}: {cmd:?}", i + 1));
        let out = work.join(format!("step-{}.log", i + 1));
        let t = Instant::now();
        let outcome = sandbox::run(
            sandbox,
            &sandbox::Job {
                root,
                app,
                argv: cmd,
                network: net,
                timeout: deadline.saturating_duration_since(Instant::now()),
                log_file: &out,
            },
        )?;
        let tail = tail(&out, 20);
        for line in tail.lines() {
            log(format!("  | {line}"));
        }
        let notes = limit_notes(sandbox, &outcome.events);
        match outcome.exit {
            sandbox::Exit::TimedOut => {
                return Err(BuildError::Input(format!(
                    "build step {} {cmd:?} did not finish within the time limit of {} s{notes}",
                    i + 1,
                    limit.as_secs()
                )));
            }
            // A command that got past a limit fails even when it says it succeeded.
            sandbox::Exit::Code(0) if notes.is_empty() => {}
            sandbox::Exit::Code(0) => {
                return Err(BuildError::Input(format!(
                    "build step {} {cmd:?} exited 0 but broke a limit{notes}:\n{tail}",
                    i + 1,
                )));
            }
            sandbox::Exit::Code(code) => {
                return Err(BuildError::Input(format!(
                    "build step {} {cmd:?} failed with exit code {code}{notes}:\n{tail}",
                    i + 1,
                )));
            }
        }
        log(format!(
            "build step {} done in {} ms",
            i + 1,
            t.elapsed().as_millis()
        ));
    }
    Ok(())
}

/// What the sandbox's limits did, as the end of an error message ("" when nothing).
fn limit_notes(s: &SandboxSettings, ev: &sandbox::Events) -> String {
    let mut notes = String::new();
    if ev.oom_kills > 0 {
        notes.push_str(&format!(
            "; it went over the memory limit of {} MiB and the kernel killed {} process(es)",
            s.limits.memory_bytes >> 20,
            ev.oom_kills
        ));
    }
    if ev.fork_refusals > 0 {
        notes.push_str(&format!(
            "; it hit the process limit of {} ({} fork(s) refused)",
            s.limits.max_processes, ev.fork_refusals
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_debian_grammar() {
        let ok = ["busybox", "python3-minimal", "g++", "libc6.1", "0ad"];
        check_packages(&ok.map(String::from)).unwrap();
        for bad in [
            "",
            "a",
            "-oops",
            "Bad",
            "x,y",
            "--include=evil",
            "a b",
            ".dot",
            "ü1",
        ] {
            let e = check_packages(&[bad.to_owned()]).unwrap_err();
            assert!(e.is_input_error(), "{bad}: {e}");
            assert!(e.to_string().contains("build.packages"), "{bad}: {e}");
        }
    }

    #[test]
    fn network_builds_are_refused_unless_allowed() {
        let mut s = SandboxSettings::default();
        sandbox::check_network(&s, false).unwrap();
        let e = sandbox::check_network(&s, true).unwrap_err();
        assert!(e.is_input_error(), "{e}");
        assert!(e.to_string().contains("allow_network_builds"), "{e}");
        assert!(sandbox::build_network(&s, true).is_err());
        assert!(sandbox::build_network(&s, false).unwrap().is_none());
        s.allow_network = true;
        sandbox::check_network(&s, true).unwrap();
    }
}
