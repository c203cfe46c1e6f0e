//! A throwaway Docker Engine (Debian's `docker.io`) in a network namespace of its own.
//!
//! This is recipe A of `services.md`: each [`Dockerd`] gets a fresh network namespace, a veth pair into it
//! with a unique 10.x.y.z/30 subnet, and a `dockerd` started inside it with its own data root, exec root and
//! unix socket. All of dockerd's iptables chains, bridges and `ip_forward` stay in that namespace, so the
//! machine's root namespace is left alone. Published ports are reached from the root namespace at
//! [`Dockerd::ns_ip`]; the namespace reaches the root namespace at [`Dockerd::host_ip`].
//!
//! Dropping the handle removes every container, stops dockerd, unmounts what it left under its exec root
//! (the nsfs bind mount), deletes the veth and the namespace and the temp dir. If the test process is
//! killed before that, the next [`Dockerd::start`] on the machine reaps what dead processes left behind
//! (names carry the owner's PID).
//!
//! Every engine runs with `--userns-remap=default`, as production hosts should (docs/operations.md): uid 0
//! in a container is uid 100000 (the first subordinate id of `dockremap`) on the host. [`ensure_remap_user`]
//! creates the `dockremap` user and its `/etc/subuid` and `/etc/subgid` ranges idempotently, under a lock,
//! so engines started in parallel do not race to create them; the temp dir gets `o+x`, which the engine
//! needs to reach its remapped data root.
//!
//! [`busybox_rootfs_tar`] and [`Dockerd::import_busybox`] build a test image locally from Debian's static
//! busybox (`docker import` of a rootfs tar): nothing is pulled from the internet.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::process::Guarded;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Prefix of the network namespaces this harness creates: `atkdk-<pid>-<n>`.
const NETNS_PREFIX: &str = "atkdk-";
/// Prefix of the temp dirs: `atlantis-dk-<pid>-<n>-XXXX`.
const DIR_PREFIX: &str = "atlantis-dk-";

/// The default command of the image made by [`Dockerd::import_busybox`]: busybox httpd on port 8080
/// serving `/www` (which holds `index.html` and `healthz`).
pub const BUSYBOX_HTTPD_CMD: &[&str] = &["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"];

/// A running dockerd in its own network namespace; everything is removed on drop.
pub struct Dockerd {
    dir: Option<tempfile::TempDir>,
    netns: String,
    veth_host: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
    proc: Option<Guarded>,
    docker_bin: PathBuf,
}

impl Dockerd {
    /// Creates the namespace and veth, starts dockerd inside and waits until it answers `/_ping`.
    pub fn start() -> Dockerd {
        Self::start_with_args(&[])
    }

    /// As [`Dockerd::start`], with extra dockerd arguments (for example `--insecure-registry 10.0.0.0/8`,
    /// so the engine pulls over plain HTTP from a registry on the root end of the veth).
    pub fn start_with_args(extra: &[&str]) -> Dockerd {
        let dockerd = crate::require_bin("dockerd", "docker.io");
        let docker_bin = crate::require_bin("docker", "docker.io");
        crate::require_bin("ip", "iproute2");
        crate::require_bin("nsenter", "util-linux");
        crate::require_bin("iptables", "iptables");
        reap_stale();

        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let netns = format!("{NETNS_PREFIX}{pid}-{n}");
        // Interface names are limited to 15 bytes: "dk" + pid (<= 7 digits) + "n" + n + "h".
        let veth_host = format!("dk{pid}n{n}h");
        let veth_ns = format!("dk{pid}n{n}c");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{pid}-{n}-"))
            .tempdir()
            .expect("temp dir for dockerd");
        ensure_remap_user();
        {
            use std::os::unix::fs::PermissionsExt as _;
            // The remapped root must traverse it to reach its data root (dockerd refuses otherwise).
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("o+x on the dockerd temp dir");
        }

        run_ok("ip", &["netns", "add", &netns]);
        let mut this = Dockerd {
            dir: Some(dir),
            netns: netns.clone(),
            veth_host: veth_host.clone(),
            host_ip: Ipv4Addr::UNSPECIFIED,
            ns_ip: Ipv4Addr::UNSPECIFIED,
            proc: None,
            docker_bin,
        };
        run_ok("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        run_ok(
            "ip",
            &[
                "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns, "netns",
                &netns,
            ],
        );
        let (host_ip, ns_ip) = pick_subnet();
        this.host_ip = host_ip;
        this.ns_ip = ns_ip;
        run_ok(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &veth_host],
        );
        run_ok("ip", &["link", "set", &veth_host, "up"]);
        run_ok(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &veth_ns,
            ],
        );
        run_ok("ip", &["-n", &netns, "link", "set", &veth_ns, "up"]);
        // The namespace's default route points at the root end, so containers can reach the host side.
        run_ok(
            "ip",
            &[
                "-n",
                &netns,
                "route",
                "add",
                "default",
                "via",
                &host_ip.to_string(),
            ],
        );

        let d = this.dir().to_owned();
        let mut args: Vec<String> = vec![
            "--data-root".into(),
            d.join("data").display().to_string(),
            "--exec-root".into(),
            d.join("exec").display().to_string(),
            "-H".into(),
            format!("unix://{}", d.join("docker.sock").display()),
            "--pidfile".into(),
            d.join("engine.pid").display().to_string(),
            // A private bridge range, so that two engines' containers never look alike in logs.
            "--bip".into(),
            "172.29.0.1/24".into(),
            // Container root is not host root.
            "--userns-remap".into(),
            REMAP.into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let ns_path = this.netns_path();
        let proc = Guarded::spawn(
            "dockerd",
            &dockerd,
            &args,
            &d.join("dockerd.log"),
            Some(&ns_path),
        );
        this.proc = Some(proc);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if this.ping() {
                break;
            }
            let running = this.proc.as_ref().is_some_and(Guarded::is_running);
            if !running || Instant::now() > deadline {
                let tail = this.log_tail(30);
                panic!("dockerd did not become ready (running: {running}):\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        tracing::info!(netns = %this.netns, ns_ip = %this.ns_ip, "dockerd is ready.");
        this
    }

    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("dir lives as long as the handle")
            .path()
    }

    /// The unix socket path of this engine's API.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("docker.sock")
    }

    /// `unix:///.../docker.sock`, the value for `DOCKER_HOST` or `docker -H`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The network namespace's name (as listed by `ip netns list`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// `/run/netns/<name>`, for `nsenter --net=...`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// The namespace's own address (its end of the veth). Ports published on it are reachable from the
    /// root namespace.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// The root namespace's end of the veth: the namespace (and its containers) reach the host here.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The /30 subnet of the veth pair, as `10.a.b.c/30`.
    pub fn subnet(&self) -> String {
        let o = self.host_ip.octets();
        format!("{}.{}.{}.{}/30", o[0], o[1], o[2], o[3] & !3)
    }

    /// A scratch directory that is deleted with the handle.
    pub fn scratch_dir(&self) -> PathBuf {
        let p = self.dir().join("scratch");
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// True when the engine answers `GET /_ping` with 200.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
    }

    /// A `docker` CLI command aimed at this engine.
    pub fn docker(&self) -> Command {
        let mut c = Command::new(&self.docker_bin);
        c.arg("-H").arg(self.docker_host());
        c.env_remove("DOCKER_CONTEXT");
        c
    }

    /// Runs `docker <args>` against this engine and returns its trimmed stdout; panics with stderr on failure.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self
            .docker()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `docker <args>` and returns the raw output, success or not.
    pub fn docker_output(&self, args: &[&str]) -> Output {
        self.docker()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// A command that runs `program` inside this namespace (`nsenter --net=...`), for curl, iptables, nc...
    pub fn in_netns(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg(program);
        c
    }

    /// Runs `iptables <args>` in the namespace and returns stdout; panics on failure.
    pub fn iptables(&self, args: &[&str]) -> String {
        let out = self
            .in_netns("iptables")
            .args(args)
            .output()
            .expect("run iptables");
        assert!(
            out.status.success(),
            "iptables {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports the busybox test image as `tag` (see [`busybox_rootfs_tar`]) and returns its image ID.
    /// Its default command is [`BUSYBOX_HTTPD_CMD`].
    pub fn import_busybox(&self, tag: &str) -> String {
        let tar = busybox_rootfs_tar(&self.scratch_dir());
        let cmd = format!(
            "CMD [{}]",
            BUSYBOX_HTTPD_CMD
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let tar_s = tar.display().to_string();
        self.docker_ok(&["import", "-c", &cmd, "-c", "EXPOSE 8080/tcp", &tar_s, tag])
    }

    /// The last `n` lines of dockerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    /// The host dies: the link to the namespace goes down (nothing in it answers any more), every
    /// container is removed and the engine is killed with SIGKILL. The handle only cleans up afterwards.
    pub fn kill(&mut self) {
        let _ = run("ip", &["link", "set", &self.veth_host, "down"]);
        if self.ping() {
            self.remove_all_containers();
        }
        if let Some(p) = &self.proc {
            p.signal("KILL");
        }
    }

    /// Removes every container (fast: `rm -f`, no stop timeout).
    pub fn remove_all_containers(&self) {
        let ids = self.docker_output(&["ps", "-aq"]);
        let ids = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let _ = self.docker_output(&args);
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.proc.is_some() && self.ping() {
            self.remove_all_containers();
        }
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        if let Some(dir) = self.dir.take() {
            unmount_under(&dir.path().display().to_string());
            let _ = run("ip", &["link", "del", &self.veth_host]);
            let _ = run("ip", &["netns", "del", &self.netns]);
            // Overlay layers may hold immutable bits or busy files only briefly; retry the removal once.
            if dir.close().is_err() {
                std::thread::sleep(Duration::from_millis(200));
            }
        } else {
            let _ = run("ip", &["link", "del", &self.veth_host]);
            let _ = run("ip", &["netns", "del", &self.netns]);
        }
    }
}

/// The user whose subordinate ids containers run as (`--userns-remap=default` means `dockremap`).
pub const REMAP_USER: &str = "dockremap";
/// The dockerd flag value.
const REMAP: &str = "default";
/// The first subordinate id given to [`REMAP_USER`] when it has none: uid 0 in a container is this uid
/// on the host.
pub const REMAP_FIRST_ID: u32 = 100_000;
/// How many ids it gets.
pub const REMAP_COUNT: u32 = 65_536;

/// Creates the `dockremap` system user and its `/etc/subuid` and `/etc/subgid` ranges when missing
/// (idempotent, under an exclusive lock on `/etc/.atlantis-subid.lock` so parallel tests do not race).
/// Returns the first host id of its uid range.
pub fn ensure_remap_user() -> u32 {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/etc/.atlantis-subid.lock")
        .expect("open /etc/.atlantis-subid.lock");
    // Released when `lock` is dropped (also when the process dies).
    lock.lock().expect("lock /etc/.atlantis-subid.lock");
    let known = Command::new("getent")
        .args(["passwd", REMAP_USER])
        .output()
        .is_ok_and(|o| o.status.success());
    if !known {
        crate::require_bin("useradd", "passwd");
        run_ok(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                REMAP_USER,
            ],
        );
    }
    let mut first = None;
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let existing = text.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(REMAP_USER)).then(|| f.next()?.parse::<u32>().ok())?
        });
        let start = match existing {
            Some(s) => s,
            None => {
                let mut t = text.clone();
                if !t.is_empty() && !t.ends_with('\n') {
                    t.push('\n');
                }
                t.push_str(&format!("{REMAP_USER}:{REMAP_FIRST_ID}:{REMAP_COUNT}\n"));
                let tmp = format!("{file}.atlantis-tmp");
                std::fs::write(&tmp, t).unwrap_or_else(|e| panic!("write {tmp}: {e}"));
                std::fs::rename(&tmp, file).unwrap_or_else(|e| panic!("replace {file}: {e}"));
                REMAP_FIRST_ID
            }
        };
        first.get_or_insert(start);
    }
    drop(lock);
    first.expect("two files read")
}

/// Builds `dir/busybox-rootfs.tar`: `/bin/busybox` (Debian's static one) with a symlink per applet,
/// `/www/index.html`, `/www/healthz`, a minimal `/etc/passwd` and `/etc/group`, and `/tmp`.
pub fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    let busybox = crate::require_file("/bin/busybox", "busybox-static");
    let root = dir.join("busybox-rootfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "www", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("www/index.html"),
        "hello from busybox container\n",
    )
    .expect("index.html");
    std::fs::write(root.join("www/healthz"), "ok\n").expect("healthz");
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    let tar = dir.join("busybox-rootfs.tar");
    let root_s = root.display().to_string();
    let tar_s = tar.display().to_string();
    run_ok("tar", &["-C", &root_s, "-cf", &tar_s, "."]);
    tar
}

/// Removes what harnesses of dead test processes left behind: their mounts, namespaces, veths and dirs.
fn reap_stale() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let list = run("ip", &["netns", "list"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut dead_pids = std::collections::BTreeSet::new();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(rest) = name.strip_prefix(NETNS_PREFIX)
            && let Some((pid, _)) = rest.split_once('-')
            && !alive(pid)
        {
            dead_pids.insert(pid.to_owned());
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(DIR_PREFIX)
                && let Some((pid, _)) = rest.split_once('-')
                && !alive(pid)
            {
                dead_pids.insert(pid.to_owned());
                unmount_under(&e.path().display().to_string());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if dead_pids.is_empty() {
        return;
    }
    let links = run("ip", &["-o", "link", "show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in links.lines() {
        // "12: dk1234n0h@if11: <...>"
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        if let Some(rest) = name.strip_prefix("dk")
            && let Some((pid, _)) = rest.split_once('n')
            && dead_pids.contains(pid)
        {
            let _ = run("ip", &["link", "del", name]);
        }
    }
    tracing::info!(
        ?dead_pids,
        "Reaped leftovers of dead dockerd test harnesses."
    );
}

/// Unmounts every mount point under `prefix`, deepest first.
fn unmount_under(prefix: &str) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if run("umount", &[&p]).is_none_or(|o| !o.status.success()) {
            let _ = run("umount", &["-l", &p]);
        }
    }
}

/// Picks a /30 in 10.200.0.0-10.251.255.255 that no interface of the root namespace uses yet, and returns
/// (root end, namespace end).
fn pick_subnet() -> (Ipv4Addr, Ipv4Addr) {
    let used = run("ip", &["-4", "-o", "addr", "show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let routes = run("ip", &["-4", "route", "show"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for _ in 0..100 {
        let r = random_u32();
        let b = 200 + (r % 52) as u8;
        let c = ((r >> 8) & 0xff) as u8;
        let d = (((r >> 16) & 0x3f) as u8) * 4;
        let host = Ipv4Addr::new(10, b, c, d + 1);
        let ns = Ipv4Addr::new(10, b, c, d + 2);
        let net = format!("10.{b}.{c}.{d}/30");
        let taken = |s: &str| {
            s.contains(&format!(" {host}/")) || s.contains(&format!(" {ns}/")) || s.contains(&net)
        };
        if !taken(&used) && !taken(&routes) {
            return (host, ns);
        }
    }
    panic!("no free 10.x /30 subnet found for the dockerd namespace");
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u32::from_le_bytes(b) ^ std::process::id().rotate_left(13)
}

fn run(program: &str, args: &[&str]) -> Option<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
}

fn run_ok(program: &str, args: &[&str]) {
    let out = run(program, args).unwrap_or_else(|| panic!("cannot run {program}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_in_netns_serves_a_local_image_and_cleans_up() {
        let d = Dockerd::start();
        let netns = d.netns().to_owned();
        let dir = d.dir().to_owned();
        let image = d.import_busybox("atlantis-test/busybox:1");
        assert!(image.starts_with("sha256:"), "{image}");
        let ns_ip = d.ns_ip().to_string();
        let publish = format!("{ns_ip}:18080:8080");
        d.docker_ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &publish,
            "atlantis-test/busybox:1",
        ]);
        let url = format!("http://{ns_ip}:18080/healthz");
        let body = crate::wait_until(Duration::from_secs(20), "busybox httpd to answer", || {
            let out = Command::new("curl")
                .args(["-sf", "-m", "2", &url])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
        assert_eq!(body, "ok\n");
        // The engine's iptables rules live in the namespace, not in the root namespace.
        assert!(d.iptables(&["-t", "nat", "-S"]).contains("DOCKER"));
        drop(d);
        let list = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        assert!(!list.contains(&netns), "netns {netns} left behind: {list}");
        assert!(!dir.exists(), "{} left behind", dir.display());
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(
            !mounts.contains(&dir.display().to_string()),
            "mounts left behind"
        );
    }
}
