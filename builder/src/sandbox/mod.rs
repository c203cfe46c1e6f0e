//! The build sandbox: one build command in Debian's bubblewrap (`bwrap`), run as an unprivileged
//! host uid, inside a cgroup with CPU, memory and process limits, under a deadline.
//!
//! What the command gets:
//! - a new user namespace (its uid is the unprivileged `uid` outside; host root is not mapped, so
//!   root's files show as `nobody`), and new PID, IPC, UTS, cgroup and network namespaces;
//! - `pivot_root` into the template's root, bound read-only; the app copy (owned by `uid`) read-write
//!   at `/app`; a size-bounded tmpfs at `/tmp`; a new `/proc` of the PID namespace; a minimal `/dev`;
//! - no capabilities, `no_new_privs`, the seccomp filter of [`seccomp`], no further user namespaces
//!   (`--disable-userns`), a new session (no `TIOCSTI` into the builder's terminal);
//! - a clean environment (`PATH`, `HOME=/tmp`, `TMPDIR=/tmp`, `LANG`); bwrap itself starts with an
//!   empty environment, so `/proc/1/environ` inside holds nothing of the builder's;
//! - no network (an empty namespace) unless the build asks for it and the operator allows it (see
//!   [`check_network`]); then a network namespace of the build's own with outbound access only (see
//!   [`net`]), which the child joins before it drops its privileges, and a generated
//!   `/etc/resolv.conf`.
//!
//! The child enters the cgroup and drops to `uid`/`gid` (no supplementary groups) before it executes
//! bwrap, so bwrap runs unprivileged and every process of the build is counted. Before that it binds
//! the root and the app onto fixed stage directories in a mount namespace of its own (see
//! [`confine`]): the unprivileged uid never needs to traverse the builder's cache directories, and no
//! descriptor of the builder but the seccomp filter's (which bwrap reads and closes) reaches bwrap. When a step ends, whatever is left in its cgroup is killed and the cgroup
//! removed; a step whose cgroup cannot be emptied fails the build.

pub mod cgroup;
pub mod net;
pub mod seccomp;

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{BuildError, io};

pub use cgroup::{Events, Limits};

/// Where the child binds the root and the app before bwrap mounts them. The binds are made in the
/// child's own mount namespace, so the same paths serve every build at once and the host sees none.
const STAGE_ROOT: &str = "/run/atlantis-builder/stage-root";
const STAGE_APP: &str = "/run/atlantis-builder/stage-app";

/// The search PATH inside the sandbox.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How build commands are confined (config keys `build_*` and `allow_network_builds`).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSettings {
    /// The bubblewrap binary (Debian package bubblewrap).
    pub bwrap: PathBuf,
    /// The unprivileged host uid build commands run as (never 0).
    pub uid: u32,
    /// Their gid (never 0).
    pub gid: u32,
    /// CPU, memory and process limits of each command.
    pub limits: Limits,
    /// The size of the tmpfs at `/tmp`, in bytes (counted in the memory limit as it fills).
    pub tmp_bytes: u64,
    /// Whether apps may ask for `network = true` in `[build]`.
    pub allow_network: bool,
    /// The network of networked builds (pool, refused destinations, resolvers).
    pub network: net::NetSettings,
    /// The parent cgroup (a plain name under each hierarchy) of the per-command cgroups.
    pub cgroup_parent: String,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            uid: 900_000_000,
            gid: 900_000_000,
            limits: Limits {
                memory_bytes: 2 << 30,
                max_processes: 512,
                cpus: 1.0,
            },
            tmp_bytes: 256 << 20,
            allow_network: false,
            network: net::NetSettings::default(),
            cgroup_parent: "atlantis-builds".into(),
        }
    }
}

/// One command to run.
#[derive(Debug)]
pub struct Job<'a> {
    /// The root file system (bound read-only at `/`); it must hold an empty `app` directory.
    pub root: &'a Path,
    /// The app copy, bound read-write at `/app` (see [`give_app`]).
    pub app: &'a Path,
    /// The program and its arguments, passed as they are.
    pub argv: &'a [String],
    /// The build's own network namespace when it asked for the network (see [`net::BuildNet`]);
    /// `None`: an empty network namespace.
    pub network: Option<&'a net::BuildNet>,
    /// Time left for this command.
    pub timeout: Duration,
    /// Where stdout and stderr go.
    pub log_file: &'a Path,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code (128 + N when killed by signal N).
    Code(i32),
    /// The deadline passed and it was killed.
    TimedOut,
}

/// What happened to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub exit: Exit,
    /// What the cgroup limits did meanwhile.
    pub events: Events,
}

/// Refuses `network = true` unless the operator allows networked builds (`allow_network_builds`).
pub fn check_network(settings: &SandboxSettings, network: bool) -> Result<(), BuildError> {
    if network && !settings.allow_network {
        return Err(BuildError::Input(
            "build.network = true: this builder does not allow networked builds (its operator can set \
             allow_network_builds = true); list Debian packages in build.packages instead"
                .into(),
        ));
    }
    Ok(())
}

/// Makes the build's own network namespace when `network` is asked for and allowed; `None` when not
/// asked for.
pub fn build_network(
    settings: &SandboxSettings,
    network: bool,
) -> Result<Option<net::BuildNet>, BuildError> {
    check_network(settings, network)?;
    if !network {
        return Ok(None);
    }
    net::BuildNet::create(&settings.network).map(Some)
}

/// Hands the app copy to the sandbox uid (every entry, without following symlinks).
pub fn give_app(settings: &SandboxSettings, app: &Path) -> Result<(), BuildError> {
    fn walk(p: &Path, uid: u32, gid: u32) -> Result<(), BuildError> {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .map_err(io(format!("handing {} to the build user", p.display())))?;
        let meta = std::fs::symlink_metadata(p).map_err(io(format!("stat {}", p.display())))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(p).map_err(io(format!("listing {}", p.display())))? {
                let e = e.map_err(io(format!("listing {}", p.display())))?;
                walk(&e.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    check_ids(settings)?;
    walk(app, settings.uid, settings.gid)
}

fn check_ids(settings: &SandboxSettings) -> Result<(), BuildError> {
    if settings.uid == 0 || settings.gid == 0 {
        return Err(BuildError::Request(
            "the build sandbox's uid and gid must not be 0 (build_uid, build_gid)".into(),
        ));
    }
    Ok(())
}

/// A pipe whose read end holds `data` (small enough for the pipe buffer) and then EOF.
fn pipe_with(data: &[u8], what: &str) -> Result<OwnedFd, BuildError> {
    let (r, mut w) = std::io::pipe().map_err(io("creating a pipe"))?;
    std::io::Write::write_all(&mut w, data).map_err(io(format!("writing {what}")))?;
    Ok(r.into())
}

fn cstring(p: &Path) -> Result<CString, BuildError> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        BuildError::Request(format!("the build path {} holds a NUL byte", p.display()))
    })
}

/// Runs one command in the sandbox until it ends or its time runs out.
pub fn run(settings: &SandboxSettings, job: &Job<'_>) -> Result<Outcome, BuildError> {
    check_ids(settings)?;
    check_network(settings, job.network.is_some())?;
    if !settings.bwrap.is_file() {
        return Err(BuildError::Io {
            what: format!(
                "the build sandbox needs {} (Debian package bubblewrap)",
                settings.bwrap.display()
            ),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    // A networked build gets its generated resolv.conf over the root's (a regular file of the root).
    let resolv = match job.network {
        Some(n) => {
            let ours = job.root.join("etc/resolv.conf");
            if !std::fs::symlink_metadata(&ours).is_ok_and(|m| m.is_file()) {
                return Err(BuildError::Io {
                    what: format!(
                        "a networked build needs {} as a regular file",
                        ours.display()
                    ),
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            Some(pipe_with(
                n.resolv_conf.as_bytes(),
                "the build's resolv.conf",
            )?)
        }
        None => None,
    };
    let netns =
        match job.network {
            Some(n) => Some(n.netns_fd().ok_or_else(|| {
                BuildError::Request("the build network was already removed".into())
            })?),
            None => None,
        };

    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "build-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let cg = cgroup::Cgroup::create(&settings.cgroup_parent, &name, &settings.limits)?;
    let procs = cg.procs_files()?;
    for d in [STAGE_ROOT, STAGE_APP] {
        std::fs::create_dir_all(d).map_err(io(format!("creating {d}")))?;
    }
    let binds = [
        (cstring(job.root)?, cstring(Path::new(STAGE_ROOT))?),
        (cstring(job.app)?, cstring(Path::new(STAGE_APP))?),
    ];
    let filter = pipe_with(&seccomp::program(), "the seccomp filter")?;
    let fd = |f: &OwnedFd| f.as_raw_fd().to_string();
    let mut c = Command::new(&settings.bwrap);
    c.env_clear()
        .args(["--unshare-user", "--unshare-ipc", "--unshare-pid"])
        .args(["--unshare-uts", "--unshare-cgroup"])
        .args(["--disable-userns", "--die-with-parent", "--new-session"])
        // The command is the namespace's pid 1 and bwrap's direct child, which bwrap reaps before it
        // exits (with its own init in between, that init outlives bwrap as an orphan of the host).
        .arg("--as-pid-1")
        .args(["--hostname", "atlantis-build"])
        .args(["--ro-bind", STAGE_ROOT, "/", "--bind", STAGE_APP, "/app"])
        .args(["--proc", "/proc", "--dev", "/dev"]);
    match &resolv {
        // The namespace the child joined (its own, never the host's) is kept: no --unshare-net.
        Some(r) => c.args([
            "--perms",
            "0444",
            "--ro-bind-data",
            &fd(r),
            "/etc/resolv.conf",
        ]),
        None => c.arg("--unshare-net"),
    };
    c.args(["--perms", "1777", "--size", &settings.tmp_bytes.to_string()])
        .args(["--tmpfs", "/tmp"])
        .args(["--clearenv", "--setenv", "PATH", PATH])
        .args(["--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp"])
        .args(["--setenv", "LANG", "C.UTF-8", "--chdir", "/app"])
        .args(["--seccomp", &fd(&filter), "--"])
        .args(job.argv);
    let log = std::fs::File::create(job.log_file).map_err(io("creating a build log"))?;
    let log2 = log.try_clone().map_err(io("creating a build log"))?;
    c.stdin(Stdio::null()).stdout(log).stderr(log2);

    confine(
        &mut c,
        Confinement {
            procs: procs.iter().map(|f| f.as_raw_fd()).collect(),
            keep: [Some(&filter), resolv.as_ref()]
                .into_iter()
                .flatten()
                .map(|f| f.as_raw_fd())
                .collect(),
            netns,
            binds,
            uid: settings.uid,
            gid: settings.gid,
        },
    );
    let mut child = c
        .spawn()
        .map_err(io(format!("starting {}", settings.bwrap.display())))?;
    drop((filter, resolv, procs));
    let deadline = Instant::now() + job.timeout;
    let exit = loop {
        if let Some(st) = child.try_wait().map_err(io("waiting for a build step"))? {
            use std::os::unix::process::ExitStatusExt as _;
            break Exit::Code(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
        }
        if Instant::now() >= deadline {
            cg.kill_all();
            let _ = child.kill();
            let _ = child.wait();
            break Exit::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    cg.kill_all();
    let events = cg.events();
    cg.remove()?;
    Ok(Outcome { exit, events })
}

/// What the child does before it executes bwrap.
struct Confinement {
    /// `cgroup.procs` files to write `0` to.
    procs: Vec<RawFd>,
    /// The descriptors beyond stdio that bwrap gets (the seccomp filter, the resolv.conf).
    keep: Vec<RawFd>,
    /// The build's network namespace, joined while still root.
    netns: Option<RawFd>,
    /// (source, stage) bind mounts made in a private mount namespace of the child.
    binds: [(CString, CString); 2],
    uid: u32,
    gid: u32,
}

/// Makes `c`'s child enter the cgroup, bind the root and the app onto the stage directories in a
/// mount namespace of its own (so the unprivileged bwrap reaches them whatever the modes of the
/// directories above them, and the host sees no mount), keep only the filter's descriptor beyond
/// stdio, drop to the build uid and gid without supplementary groups, and die with the builder's
/// thread, all before it executes bwrap.
///
/// The builder's only `unsafe`: `pre_exec` and the system calls it makes between fork and exec.
#[allow(unsafe_code)]
fn confine(c: &mut Command, cf: Confinement) {
    // SAFETY: the closure runs in the child between fork and exec and only makes async-signal-safe
    // system calls on memory prepared before the fork (no allocation, no locks).
    unsafe {
        c.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            // Into the cgroup while still root, so the build never runs outside it.
            for &f in &cf.procs {
                if libc::write(f, b"0".as_ptr().cast(), 1) != 1 {
                    return fail();
                }
            }
            // Into the build's own network namespace (bwrap then keeps it).
            if let Some(ns) = cf.netns
                && libc::setns(ns, libc::CLONE_NEWNET) != 0
            {
                return fail();
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return fail();
            }
            for (src, dst) in &cf.binds {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return fail();
                }
            }
            // Every inherited descriptor but the filter's and the resolv.conf's is closed at exec.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return fail();
            }
            for &k in &cf.keep {
                if libc::fcntl(k, libc::F_SETFD, 0) != 0 {
                    return fail();
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(cf.gid, cf.gid, cf.gid) != 0
                || libc::setresuid(cf.uid, cf.uid, cf.uid) != 0
            {
                return fail();
            }
            // After the uid change, which clears it: bwrap dies with the builder's thread.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return fail();
            }
            Ok(())
        });
    }
}

/// SIGKILL to `pid` (a process of a build's cgroup).
#[allow(unsafe_code)]
fn kill(pid: i32) {
    // SAFETY: kill(2) takes plain integers.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}
