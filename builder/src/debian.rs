//! The `debian` template: a minimal Debian root made by debootstrap from the Debian archive (plus the
//! packages the app lists), and the app's `[build]` commands run inside it.
//!
//! The root is made once per (suite, mirror, package set) and kept under the cache's `roots/` directory;
//! its layer is cached like any other. Build commands run in a copy of the app at `/app` inside that
//! root, each in fresh namespaces made by `unshare` (mount, PID, IPC, UTS, and network unless the config
//! asks for it): the root is an overlay whose writes are thrown away, so only `/app` comes out of the
//! build, and it is then checked like any other input (no escaping symlinks, no special files, limits).
//! All commands together have the config's time limit; when it runs out the PID namespace is killed.
//! The user's arguments are passed as positional parameters, never spliced into a shell string.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atlantis_common::api::app_config::BuildSteps;
use sha2::{Digest as _, Sha256};

use crate::build::Log;
use crate::error::{BuildError, io};
use crate::layer::{Content, Entry};

/// Where debootstrap gets Debian from, and which release.
#[derive(Debug, Clone)]
pub struct DebianSettings {
    /// The archive mirror.
    pub mirror: String,
    /// The suite.
    pub suite: String,
    /// Time allowed for one debootstrap.
    pub bootstrap_timeout: Duration,
}

impl Default for DebianSettings {
    fn default() -> Self {
        DebianSettings {
            mirror: "http://deb.debian.org/debian".into(),
            suite: "bookworm".into(),
            bootstrap_timeout: Duration::from_secs(1800),
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
    let key = root_key(settings, packages);
    let dir = cache_dir.join("roots").join(&key);
    if dir.join(".complete").exists() {
        return Ok(dir.join("root"));
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
    Ok(dir.join("root"))
}

/// The layer entries of a Debian root: every directory, file and symlink with its mode (set-id bits
/// kept), except what the runtime provides (`dev`, `proc`, `sys`, `run` and `tmp` are kept empty).
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
                && matches!(name.as_str(), "dev" | "proc" | "sys" | "run" | "tmp");
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
    code: Option<i32>,
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
                code: st.code(),
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ended {
                success: false,
                timed_out: true,
                code: None,
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

/// The script run by `sh` in the new namespaces: mounts an overlay over the root (writes go to `work`),
/// binds the app at `/app`, mounts `/proc`, and runs the command in `/app` with a clean environment.
/// Paths and the command arrive as positional parameters.
const SCRIPT: &str = r#"lower=$1; work=$2; app=$3; shift 3
mkdir -p "$work/upper" "$work/w" "$work/m"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/w" "$work/m"
mkdir -p "$work/m/app"
mount --bind "$app" "$work/m/app"
mount -t proc proc "$work/m/proc"
mount -t tmpfs -o size=256m tmpfs "$work/m/tmp"
cd /
exec chroot "$work/m" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /bin/sh -c 'cd /app && exec "$@"' build "$@"
"#;

/// Runs the build commands of `steps` over `app` (a private copy of the app) in `root`.
pub fn run_commands(
    root: &Path,
    app: &Path,
    work: &Path,
    steps: &BuildSteps,
    log: &Log,
) -> Result<(), BuildError> {
    for p in [root, app, work] {
        let s = p.to_string_lossy();
        if s.contains([',', ':', '\n']) {
            return Err(BuildError::Input(format!(
                "the build path {s} holds ',' or ':', which overlay mounts cannot take"
            )));
        }
    }
    let limit = Duration::from_secs(steps.timeout_secs.0);
    let deadline = Instant::now() + limit;
    for (i, cmd) in steps.commands.0.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--ipc",
            "--uts",
        ]);
        if !steps.network {
            c.arg("--net");
        }
        c.args(["--", "/bin/sh", "-ec", SCRIPT, "sh"])
            .arg(root)
            .arg(work)
            .arg(app)
            .args(cmd);
        log(format!("build step {}: {cmd:?}", i + 1));
        let out = work.join(format!("step-{}.log", i + 1));
        let t = Instant::now();
        let ended = run_limited(c, &out, left)?;
        let tail = tail(&out, 20);
        for line in tail.lines() {
            log(format!("  | {line}"));
        }
        if ended.timed_out {
            return Err(BuildError::Input(format!(
                "build step {} {cmd:?} did not finish within the time limit of {} s",
                i + 1,
                limit.as_secs()
            )));
        }
        if !ended.success {
            return Err(BuildError::Input(format!(
                "build step {} {cmd:?} failed with exit code {}:\n{tail}",
                i + 1,
                ended.code.map_or("none (killed)".into(), |c| c.to_string())
            )));
        }
        log(format!(
            "build step {} done in {} ms",
            i + 1,
            t.elapsed().as_millis()
        ));
    }
    Ok(())
}

/// Copies the checked app tree into `dest` (a fresh directory), so build commands never touch the
/// caller's files.
pub fn copy_tree(tree: &crate::source::Tree, dest: &Path) -> Result<(), BuildError> {
    use crate::source::Kind;
    for (rel, kind) in &tree.entries {
        let p = dest.join(rel);
        match kind {
            Kind::Dir => std::fs::create_dir_all(&p).map_err(io(format!("copying {rel}")))?,
            Kind::File { path, exec, .. } => {
                std::fs::copy(path, &p).map_err(io(format!("copying {rel}")))?;
                let mode = if *exec { 0o755 } else { 0o644 };
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(io(format!("copying {rel}")))?;
            }
            Kind::Symlink(t) => {
                std::os::unix::fs::symlink(t, &p).map_err(io(format!("copying {rel}")))?
            }
        }
    }
    Ok(())
}
