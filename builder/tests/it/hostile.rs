//! Hostile builds: each test is a real build on the debian template whose command tries to get out of
//! the build sandbox (chroot escape, mount, ptrace, the builder's environment, writes outside `/app`,
//! setuid, a fork bomb, a memory hog, the network). Each attempt fails, the build fails with a clear
//! message, and the host is unchanged: its marker file intact, nothing left running as the build uid,
//! the build's cgroups removed, the Debian root untouched.
//!
//! The scripts are perl (perl-base is in every Debian root) and sh; syscall numbers are x86_64's.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atlantis_builder::build::{BuildRequest, Source};
use atlantis_builder::cache::LayerCache;
use atlantis_builder::debian::DebianSettings;
use atlantis_builder::sandbox::SandboxSettings;
use atlantis_builder::{BuildError, BuildOutput, Builder, Settings};

use crate::common::log;

const CGROUP_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// A host the hostile build must leave as it was: a secret marker file outside the build, the build's
/// own uid and cgroup parent (unique per test, so tests running at once do not see each other).
pub(crate) struct Host {
    dir: tempfile::TempDir,
    pub(crate) marker: PathBuf,
    pub(crate) secret: String,
    pub(crate) settings: SandboxSettings,
    root_files: Vec<String>,
    /// Whether the app asks for `network = true`.
    pub(crate) network: bool,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/atlantis/builder-test-debian")
}

impl Host {
    pub(crate) fn new(case: u32) -> Host {
        assert_eq!(
            std::env::consts::ARCH,
            "x86_64",
            "the scripts use x86_64 syscall numbers"
        );
        atlantis_testkit::require_bin("bwrap", "bubblewrap");
        atlantis_testkit::require_bin("debootstrap", "debootstrap");
        let dir = tempfile::Builder::new()
            .prefix("atlantis-hostile-")
            .tempdir()
            .unwrap();
        let secret = format!("host-secret-{}-{}", std::process::id(), uuid());
        let marker = dir.path().join("marker");
        std::fs::write(&marker, &secret).unwrap();
        let settings = SandboxSettings {
            uid: 900_100_000 + case,
            gid: 900_100_000 + case,
            cgroup_parent: format!("atlantis-hostile-{case}-{}", std::process::id()),
            ..SandboxSettings::default()
        };
        Host {
            dir,
            marker,
            secret,
            settings,
            root_files: Vec::new(),
            network: false,
        }
    }

    pub(crate) fn builder(&self) -> Builder {
        Builder::new(
            LayerCache::open(&cache_dir(), 2 << 30).unwrap(),
            Settings {
                debian: DebianSettings {
                    sandbox: self.settings.clone(),
                    ..DebianSettings::default()
                },
                ..Settings::default()
            },
        )
    }

    /// Builds an app whose `[build]` runs `commands` (a TOML array) with `files` in the app; returns
    /// the result and the build log.
    pub(crate) async fn build(
        &mut self,
        files: &[(&str, &str)],
        commands: &str,
        timeout: u64,
    ) -> (Result<BuildOutput, BuildError>, String) {
        let app_dir = tempfile::tempdir().unwrap();
        let app = app_dir.path().join("app");
        std::fs::create_dir(&app).unwrap();
        std::fs::write(
            app.join("atlantis.toml"),
            format!(
                "name = \"hostile\"\ntemplate = \"debian\"\nrun = [\"true\"]\n[build]\n\
                 packages = [\"busybox\"]\ncommands = {commands}\ntimeout_secs = {timeout}\n\
                 network = {}\n",
                self.network
            ),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(app.join(name), text).unwrap();
        }
        let b = self.builder();
        let (l, lines) = log();
        let r = b
            .build(
                BuildRequest {
                    source: Source::Dir(app.clone()),
                    sha: Some("1a2b3c4".parse().unwrap()),
                    push: None,
                },
                l,
            )
            .await;
        let text = lines.lock().unwrap().join("\n");
        if self.root_files.is_empty() {
            self.root_files = list_root();
        }
        (r, text)
    }

    /// The build failed with `expected` in its message, and did not show the secret.
    pub(crate) fn assert_failed(
        &self,
        r: &Result<BuildOutput, BuildError>,
        log: &str,
        expected: &[&str],
    ) {
        let e = match r {
            Ok(_) => panic!("the hostile build succeeded:\n{log}"),
            Err(e) => e.to_string(),
        };
        for x in expected {
            assert!(e.contains(x), "wanted {x:?} in the error: {e}\nlog:\n{log}");
        }
        assert!(!e.contains(&self.secret), "secret leaked: {e}");
        assert!(!log.contains(&self.secret), "secret leaked: {log}");
        assert!(!log.contains("ESCAPED"), "{log}");
    }

    /// The marker is intact, nothing runs as the build uid, the build cgroups are gone, the Debian
    /// root is as it was.
    pub(crate) fn assert_unchanged(&self) {
        assert_eq!(std::fs::read_to_string(&self.marker).unwrap(), self.secret);
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["marker"], "nothing new next to the marker");
        // An exited process may wait a moment for its parent (the host's init) to reap it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_of(self.settings.uid);
            if left.is_empty() {
                break;
            }
            let zombies_only = left.iter().all(|p| p.contains("zombie"));
            assert!(
                zombies_only && std::time::Instant::now() < deadline,
                "processes left as the build uid: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in CGROUP_CONTROLLERS {
            let p = Path::new("/sys/fs/cgroup")
                .join(c)
                .join(&self.settings.cgroup_parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                let children: Vec<_> = rd
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name())
                    .collect();
                assert!(children.is_empty(), "cgroups left in {p:?}: {children:?}");
            }
        }
        let now = list_root();
        let added: Vec<_> = now
            .iter()
            .filter(|f| !self.root_files.contains(f))
            .collect();
        let removed: Vec<_> = self
            .root_files
            .iter()
            .filter(|f| !now.contains(f))
            .collect();
        assert!(
            added.is_empty() && removed.is_empty() && !now.is_empty(),
            "the Debian root changed: added {added:?}, removed {removed:?}"
        );
        // The host still forks.
        assert!(
            std::process::Command::new("true")
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for c in CGROUP_CONTROLLERS {
            let _ = std::fs::remove_dir(
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.settings.cgroup_parent),
            );
        }
    }
}

fn uuid() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The top of the Debian root and its `/etc`, `/usr` and `/app` (what a write outside `/app` would
/// change).
fn list_root() -> Vec<String> {
    let roots = cache_dir().join("roots");
    let mut out = Vec::new();
    for r in std::fs::read_dir(&roots).into_iter().flatten() {
        let root = r.unwrap().path().join("root");
        for sub in ["", "etc", "usr", "app", "tmp", "root"] {
            if let Ok(rd) = std::fs::read_dir(root.join(sub)) {
                for e in rd {
                    out.push(format!(
                        "{}/{sub}/{:?}",
                        root.display(),
                        e.unwrap().file_name()
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

/// Pids of processes with `uid` as any of their uids.
fn processes_of(uid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
            && line
                .split_whitespace()
                .skip(1)
                .any(|u| u == uid.to_string())
        {
            let state = status
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("");
            let ppid = status
                .lines()
                .find(|l| l.starts_with("PPid:"))
                .unwrap_or("");
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push(format!(
                "{name} {state} {ppid} {:?}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}

/// The double-chroot escape: chroot into a subdirectory, climb out with `..`, chroot to the real root,
/// read the host's marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chroot_escape_fails() {
    let mut h = Host::new(1);
    let script = r#"
mkdir "jail";
chroot("jail") or die "chroot: $!\n";
chdir("..") for 1..64;
chroot(".") or die "second chroot: $!\n";
open(my $f, "<", $ARGV[0]) or die "open marker: $!\n";
print "ESCAPED ", <$f>;
"#;
    let marker = h.marker.display().to_string();
    let cmd = format!(r#"[["perl", "escape.pl", "{marker}"]]"#);
    let (r, log) = h.build(&[("escape.pl", script)], &cmd, 60).await;
    h.assert_failed(
        &r,
        &log,
        &["failed with exit code 1", "chroot: Operation not permitted"],
    );
    h.assert_unchanged();
}

/// mount(2) directly and mount(8) (setuid root in the Debian root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mount_fails() {
    let mut h = Host::new(2);
    let script = r#"
system("mount", "-t", "tmpfs", "none", "/mnt") == 0 and print "ESCAPED mount(8)\n";
my ($src, $dst, $fs) = ("none", "/mnt", "tmpfs");
syscall(165, $src, $dst, $fs, 0, 0) == 0 and print "ESCAPED mount(2)\n";
die "mount: $!\n";
"#;
    let (r, log) = h
        .build(&[("mount.pl", script)], r#"[["perl", "mount.pl"]]"#, 60)
        .await;
    h.assert_failed(
        &r,
        &log,
        &[
            "mount: /mnt: must be superuser to use mount",
            "mount: Operation not permitted",
        ],
    );
    h.assert_unchanged();
}

/// ptrace(PTRACE_ATTACH) of a sibling process of the same uid, and of the sandbox's pid 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ptrace_fails() {
    let mut h = Host::new(3);
    let script = r#"
my $pid = fork();
if ($pid == 0) { sleep 30; exit 0 }
for my $target ($pid, 1) {
    syscall(101, 16, $target, 0, 0) == 0 and print "ESCAPED attached to $target\n";
    print "ptrace $target: $!\n";
}
kill 9, $pid;
exit 3;
"#;
    let (r, log) = h
        .build(&[("ptrace.pl", script)], r#"[["perl", "ptrace.pl"]]"#, 60)
        .await;
    h.assert_failed(
        &r,
        &log,
        &[
            "failed with exit code 3",
            "ptrace 1: Operation not permitted",
        ],
    );
    assert!(log.contains("Operation not permitted"), "{log}");
    h.assert_unchanged();
}

/// The builder's environment (a secret set in the builder process) and a host file: the build reads
/// `/proc/1/environ` and every other `/proc/*/environ` it can, and the marker's host path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_proc_environ_shows_nothing_of_the_builder() {
    let h = Host::new(4);
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("atlantis.toml"),
        "name = \"hostile\"\ntemplate = \"debian\"\nrun = [\"true\"]\n[build]\n\
         packages = [\"busybox\"]\ncommands = [[\"perl\", \"environ.pl\", \"MARKER\"]]\n"
            .replace("MARKER", &h.marker.display().to_string()),
    )
    .unwrap();
    std::fs::write(
        app.join("environ.pl"),
        r#"
my $seen = 0;
for my $f (glob("/proc/[0-9]*/environ"), "/proc/1/environ", $ARGV[0]) {
    open(my $fh, "<", $f) or do { print "$f: $!\n"; next };
    local $/; my $t = <$fh>; $t =~ s/\0/ /g;
    print "$f: ", length($t), " bytes\n";
    if ($t =~ /(host-secret-\S+)/) { print "ESCAPED found the secret\n"; $seen = 1 }
}
print "environment: ", join(" ", sort keys %ENV), "\n";
exit($seen ? 0 : 4);
"#,
    )
    .unwrap();
    // The builder is the CLI in its own process, with the secret in its environment.
    let (pid, out) = tokio::task::spawn_blocking({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_atlantis-builder"));
        c.arg("build")
            .arg(&app)
            .arg("--cache-dir")
            .arg(cache_dir())
            .env("ATLANTIS_TEST_SECRET", &h.secret)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        move || {
            let child = c.spawn().unwrap();
            (child.id(), child.wait_with_output().unwrap())
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut h = h;
    h.root_files = list_root();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("failed with exit code 4"),
        "wanted exit code 4: {stderr}"
    );
    assert!(stderr.contains("/proc/1/environ: "), "{stderr}");
    assert!(
        stderr.contains("No such file or directory"),
        "the marker's path does not exist in the sandbox: {stderr}"
    );
    assert!(
        stderr.contains("environment: HOME LANG PATH PWD TMPDIR"),
        "{stderr}"
    );
    assert!(!stderr.contains(&h.secret), "{stderr}");
    assert!(!stderr.contains("ESCAPED"), "{stderr}");
    // The CLI used the default cgroup parent: none of its cgroups is left.
    for c in CGROUP_CONTROLLERS {
        let p = Path::new("/sys/fs/cgroup")
            .join(c)
            .join(&SandboxSettings::default().cgroup_parent);
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(&format!("build-{pid}-")), "{p:?}/{n} left");
        }
    }
    h.assert_unchanged();
}

/// Writes to `/etc`, `/usr`, `/`, `/root` and the cache's own paths fail: the root is read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_writes_outside_app_fail() {
    let mut h = Host::new(5);
    let script = r#"
my $ok = 0;
for my $p ("/etc/pwned", "/usr/pwned", "/pwned", "/root/pwned", "/app/../pwned", $ARGV[0]) {
    if (open(my $f, ">", $p)) { print "ESCAPED wrote $p\n"; $ok = 1 } else { print "write $p: $!\n" }
}
mkdir("/usr/lib/pwned") and $ok = 1;
open(my $f, ">", "/app/fine") or die "app: $!\n";
open(my $t, ">", "/tmp/fine") or die "tmp: $!\n";
exit($ok ? 0 : 5);
"#;
    let marker = h.marker.display().to_string();
    let cmd = format!(r#"[["perl", "write.pl", "{marker}"]]"#);
    let (r, log) = h.build(&[("write.pl", script)], &cmd, 60).await;
    h.assert_failed(
        &r,
        &log,
        &[
            "failed with exit code 5",
            "write /etc/pwned: Read-only file system",
            "write /pwned: Read-only file system",
        ],
    );
    h.assert_unchanged();
}

/// A setuid binary made in `/app` gives nothing (no_new_privs, root unmapped), neither does the
/// root's setuid `su`; chown to root fails. A build that leaves a setuid file gets a plain 0755 file
/// in its image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_setuid_gains_nothing() {
    let mut h = Host::new(6);
    let script = r#"
cp /bin/dash ./rootsh
chown 0:0 ./rootsh 2>&1 || echo "chown refused"
chmod 4755 ./rootsh
euid=$(./rootsh -p -c 'id -u')
echo "setuid shell runs as $euid"
[ "$euid" = 0 ] && echo ESCAPED
su -c id root </dev/null 2>&1 || echo "su refused"
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
exit 6
"#;
    let (r, log) = h
        .build(&[("suid.sh", script)], r#"[["sh", "suid.sh"]]"#, 60)
        .await;
    let uid = h.settings.uid;
    h.assert_failed(
        &r,
        &log,
        &[
            "failed with exit code 6",
            "chown refused",
            &format!("setuid shell runs as {uid}"),
            "su refused",
            "CapEff:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
        ],
    );
    h.assert_unchanged();

    // The setuid bit does not reach the image.
    let (r, log) = h
        .build(
            &[],
            r#"[["sh", "-c", "cp /bin/dash ./rootsh && chmod 4755 ./rootsh && ls -ln rootsh"]]"#,
            60,
        )
        .await;
    let out = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(log.contains(&format!("-rwsr-xr-x 1 {uid} {uid}")), "{log}");
    let f =
        std::fs::File::open(h.builder().cache().blob_path(&out.image.layers[1].digest)).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mode = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("rootsh"))
        .map(|e| e.header().mode().unwrap())
        .expect("rootsh in the app layer");
    assert_eq!(mode, 0o755);
    h.assert_unchanged();
}

/// A shell fork bomb: the process limit stops it, the build fails, the host is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fork_bomb_is_stopped_by_the_process_limit() {
    let mut h = Host::new(7);
    h.settings.limits.max_processes = 64;
    let (r, log) = h
        .build(
            &[],
            r#"[["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 3"]]"#,
            30,
        )
        .await;
    h.assert_failed(&r, &log, &["build step 1", "hit the process limit of 64"]);
    h.assert_unchanged();
}

/// A memory hog: the memory limit kills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_memory_hog_is_killed_by_the_memory_limit() {
    let mut h = Host::new(8);
    h.settings.limits.memory_bytes = 64 << 20;
    let (r, log) = h
        .build(
            &[],
            r#"[["perl", "-e", "my $x = 'x' x (1024 * 1024 * 1024); print 'ESC', 'APED ', length($x)"]]"#,
            60,
        )
        .await;
    h.assert_failed(
        &r,
        &log,
        &[
            "failed with exit code 137",
            "went over the memory limit of 64 MiB",
        ],
    );
    h.assert_unchanged();
}

/// The host's first global IPv4 address.
pub(crate) fn host_address() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no global IPv4 address on this host: {text}"))
}

/// With network off, connects to a listener on the host's loopback and on its own non-loopback
/// address fail, and the listener sees no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connect_without_network_fails() {
    let mut h = Host::new(9);
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr = host_address();
    // The listener is reachable from the host on both addresses (the control).
    for a in ["127.0.0.1", addr.as_str()] {
        std::net::TcpStream::connect_timeout(
            &format!("{a}:{port}").parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
    }
    let mut accepted = 0;
    while listener.accept().is_ok() {
        accepted += 1;
    }
    assert_eq!(accepted, 2);
    let script = r#"
use IO::Socket::INET;
my $ok = 0;
for my $a (@ARGV) {
    my $s = IO::Socket::INET->new(PeerAddr => $a, Proto => "tcp", Timeout => 5);
    if ($s) { print "ESCAPED connected to $a\n"; $ok = 1 } else { print "connect $a: $!\n" }
}
exit($ok ? 0 : 9);
"#;
    let cmd = format!(r#"[["perl", "connect.pl", "127.0.0.1:{port}", "{addr}:{port}"]]"#);
    let (r, log) = h.build(&[("connect.pl", script)], &cmd, 60).await;
    h.assert_failed(
        &r,
        &log,
        &[
            "failed with exit code 9",
            &format!("connect 127.0.0.1:{port}: Connection refused"),
            &format!("connect {addr}:{port}: Network is unreachable"),
        ],
    );
    assert!(
        listener.accept().is_err(),
        "the build reached the host's listener"
    );
    h.assert_unchanged();
}

/// `network = true` is refused unless the operator allows networked builds; bad package names are
/// refused before debootstrap runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_network_and_package_requests_are_refused() {
    let mut h = Host::new(10);
    let app_dir = tempfile::tempdir().unwrap();
    let app = app_dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("atlantis.toml"),
        "name = \"hostile\"\ntemplate = \"debian\"\nrun = [\"true\"]\n[build]\n\
         packages = [\"busybox\"]\ncommands = [[\"true\"]]\nnetwork = true\n",
    )
    .unwrap();
    let (l, _) = log();
    let e = h
        .builder()
        .build(
            BuildRequest {
                source: Source::Dir(app.clone()),
                sha: None,
                push: None,
            },
            l,
        )
        .await
        .unwrap_err();
    assert!(e.is_input_error(), "{e}");
    assert!(
        e.to_string()
            .contains("this builder does not allow networked builds"),
        "{e}"
    );
    assert!(e.to_string().contains("allow_network_builds"), "{e}");

    // Allowed, it builds (in a network namespace of its own: builder/tests/it/network.rs).
    h.settings.allow_network = true;
    let (l, lines) = log();
    let r = h
        .builder()
        .build(
            BuildRequest {
                source: Source::Dir(app.clone()),
                sha: None,
                push: None,
            },
            l,
        )
        .await;
    let text = lines.lock().unwrap().join("\n");
    r.unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        text.contains("network: a namespace of the build's own"),
        "{text}"
    );

    for bad in ["-oops", "Bad", "a", "x,y", "--include=evil"] {
        std::fs::write(
            app.join("atlantis.toml"),
            format!(
                "name = \"hostile\"\ntemplate = \"debian\"\nrun = [\"true\"]\n[build]\n\
                 packages = [{bad:?}]\n"
            ),
        )
        .unwrap();
        let (l, _) = log();
        let e = h
            .builder()
            .build(
                BuildRequest {
                    source: Source::Dir(app.clone()),
                    sha: None,
                    push: None,
                },
                l,
            )
            .await
            .unwrap_err();
        assert!(e.is_input_error(), "{e}");
        assert!(e.to_string().contains("build.packages"), "{bad}: {e}");
    }
    assert!(
        atlantis_builder::debian::check_packages(&["-oops".into()])
            .unwrap_err()
            .to_string()
            .contains("build.packages")
    );
    h.root_files = list_root();
    h.assert_unchanged();
}

/// A normal build in the sandbox: runs as the build uid with no capabilities, writes `/app` and
/// `/tmp`, and its output is the image's app layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxed_build_still_builds() {
    let mut h = Host::new(11);
    let (r, log) = h
        .build(
            &[],
            r#"[["sh", "-c", "id -u > uid.txt && grep CapEff /proc/self/status > caps.txt && echo hi > /tmp/t && cp /tmp/t out.txt && ls /proc | grep -c '^[0-9]' > pids.txt"]]"#,
            60,
        )
        .await;
    let out = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let f =
        std::fs::File::open(h.builder().cache().blob_path(&out.image.layers[1].digest)).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut files = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        let mut s = String::new();
        let _ = e.read_to_string(&mut s);
        files.insert(p, s);
    }
    assert_eq!(files["app/uid.txt"], format!("{}\n", h.settings.uid));
    assert_eq!(files["app/caps.txt"], "CapEff:\t0000000000000000\n");
    assert_eq!(files["app/out.txt"], "hi\n");
    // A new PID namespace: bwrap's init, sh, ls and grep at most.
    let pids: u32 = files["app/pids.txt"].trim().parse().unwrap();
    assert!(pids <= 5, "{pids} processes visible");
    h.assert_unchanged();
}
