//! The escape matrix: an attacker's view from inside a container, with the DEFAULT firewall config.
//!
//! The supervisor binary runs inside the engine's namespace, as on a real host: its API listens on every
//! address of that host. A second namespace plays the rest of the world, routed from the host: another
//! cluster host (10.123.45.6: a dependency and its ZooKeeper), cloud metadata (169.254.169.254), private
//! and shared addresses outside any configured network, and a public address (198.51.100.7). The host
//! also carries a public address of its own (203.0.113.10). Every target is a
//! listener this test runs in one of these namespaces, and each is first shown reachable from the host
//! itself, so a refusal seen from the container is the firewall's doing.
//!
//! From the container: the declared dependencies answer (one of them another app's published port);
//! everything else is refused at once (a TCP reset): another port of a dependency, services on the host,
//! the supervisor API through every address of the host, the other app's published port through every
//! other host address and its bridge address, a port the engine DNATs to a container outside Atlantis
//! (through every host address), ZooKeeper and the manager API here and elsewhere, metadata, private
//! addresses; public egress stays open; no Docker socket is inside. The container has no IPv6 address.
//! A connection opened while the supervisor was down and the container's chain flushed by hand is cut when the
//! restarted supervisor repairs the rules, while a long-lived connection to a dependency survives. With
//! `firewall.egress = "deny"` (the restarted supervisor's only change) the internet is refused too.
//! Unprivileged ping sockets are closed unless the spec asks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use atlantis_supervisor::firewall::chain_name;
use atlantis_testkit::process::Guarded;
use reqwest::Method;

use crate::{Client, Host, curl, dep, init_tracing, spec, unique};

/// The supervisor host's end of the link to the outside namespace.
pub(crate) const LINK_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The outside namespace's end: a private address outside any configured network.
pub(crate) const LINK_PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 7);
/// Another cluster host.
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(10, 123, 45, 6);
/// Cloud instance metadata.
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Shared address space (carrier-grade NAT).
const SHARED: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 1);
/// Another private block.
const PRIVATE_172: Ipv4Addr = Ipv4Addr::new(172, 16, 5, 5);
/// The internet.
const PUBLIC_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The supervisor host's own public address.
const PUBLIC_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The supervisor API port on the host.
pub(crate) const API_PORT: u16 = 7070;
/// The published port of a container the engine runs outside Atlantis.
const FOREIGN_PORT: u16 = 18090;

pub(crate) fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespace playing the rest of the world, linked to the supervisor host's namespace.
pub(crate) struct Outside {
    name: String,
}

impl Outside {
    pub(crate) fn new(host: &Host) -> Outside {
        let name = format!("atkesc-{}", unique());
        run_ok("ip", &["netns", "add", &name]);
        let outside = Outside { name };
        let (n, p) = (host.docker.netns(), outside.name.as_str());
        run_ok(
            "ip",
            &[
                "-n", n, "link", "add", "esc0", "type", "veth", "peer", "name", "esc1", "netns", p,
            ],
        );
        run_ok(
            "ip",
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("{LINK_HOST}/24"),
                "dev",
                "esc0",
            ],
        );
        run_ok("ip", &["-n", n, "link", "set", "esc0", "up"]);
        run_ok(
            "ip",
            &[
                "-n",
                p,
                "addr",
                "add",
                &format!("{LINK_PEER}/24"),
                "dev",
                "esc1",
            ],
        );
        run_ok("ip", &["-n", p, "link", "set", "esc1", "up"]);
        run_ok("ip", &["-n", p, "link", "set", "lo", "up"]);
        for a in [OTHER_HOST, METADATA, SHARED, PRIVATE_172, PUBLIC_REMOTE] {
            run_ok(
                "ip",
                &["-n", p, "addr", "add", &format!("{a}/32"), "dev", "lo"],
            );
            run_ok(
                "ip",
                &[
                    "-n",
                    n,
                    "route",
                    "add",
                    &format!("{a}/32"),
                    "via",
                    &LINK_PEER.to_string(),
                ],
            );
        }
        run_ok(
            "ip",
            &[
                "-n",
                p,
                "route",
                "add",
                "default",
                "via",
                &LINK_HOST.to_string(),
            ],
        );
        // The host's public address (a second address of its outside link).
        run_ok(
            "ip",
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("{PUBLIC_HOST}/32"),
                "dev",
                "esc0",
            ],
        );
        outside
    }

    /// Puts `a` on the outside namespace and routes it there from the host.
    pub(crate) fn add_address(&self, host: &Host, a: Ipv4Addr) {
        let (n, p) = (host.docker.netns(), self.name.as_str());
        run_ok(
            "ip",
            &["-n", p, "addr", "add", &format!("{a}/32"), "dev", "lo"],
        );
        run_ok(
            "ip",
            &[
                "-n",
                n,
                "route",
                "add",
                &format!("{a}/32"),
                "via",
                &LINK_PEER.to_string(),
            ],
        );
    }

    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `program args` in the namespace at `ns`, logging to `dir/<label>.log`.
pub(crate) fn spawn_in(
    ns: &Path,
    dir: &Path,
    label: &str,
    program: &Path,
    args: &[String],
) -> Guarded {
    Guarded::spawn(
        label,
        program,
        args,
        &dir.join(format!("{label}.log")),
        Some(ns),
    )
}

/// Serves `body` on `ip:port` with busybox httpd in the namespace at `ns`.
pub(crate) fn httpd(ns: &Path, dir: &Path, ip: Ipv4Addr, port: u16, body: &str) -> Guarded {
    let www = dir.join(format!("www-{ip}-{port}"));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), body).unwrap();
    let busybox = atlantis_testkit::require_bin("busybox", "busybox-static");
    let args = vec![
        "httpd".into(),
        "-f".into(),
        "-p".into(),
        format!("{ip}:{port}"),
        "-h".into(),
        www.display().to_string(),
    ];
    spawn_in(ns, dir, &format!("httpd-{ip}-{port}"), &busybox, &args)
}

/// An echo server on every address of the namespace at `ns`, port `port`.
pub(crate) fn echo_server(ns: &Path, dir: &Path, port: u16) -> Guarded {
    let busybox = atlantis_testkit::require_bin("busybox", "busybox-static");
    let cat = atlantis_testkit::require_bin("cat", "coreutils");
    let args = vec![
        "nc".into(),
        "-ll".into(),
        "-p".into(),
        port.to_string(),
        "-e".into(),
        cat.display().to_string(),
    ];
    spawn_in(ns, dir, &format!("echo-{port}"), &busybox, &args)
}

/// True when `ip:port` answers HTTP from the supervisor host itself (outside any container).
pub(crate) fn answers_from_host(host: &Host, ip: Ipv4Addr, port: u16) -> bool {
    let out = host
        .docker
        .in_netns("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2"])
        .arg(format!("http://{ip}:{port}/"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout);
    code.len() == 3 && code != "000"
}

/// Sends `GET /` to `ip:port` from inside container `cid` with busybox nc: Ok(status line) when an HTTP
/// server answered, Err(what nc said) otherwise.
pub(crate) fn probe(host: &Host, cid: &str, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    let script = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 \"$0\" \"$1\"";
    let out = host.docker.docker_output(&[
        "exec",
        cid,
        "sh",
        "-c",
        script,
        &ip.to_string(),
        &port.to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().next() {
        Some(l) if l.starts_with("HTTP/1.") => Ok(l.trim().to_owned()),
        _ => Err(format!(
            "{} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Starts, inside `cid`, a connection to `ip:port` that sends a line every 200 ms and writes what
/// comes back to `file`; `file.ended` appears when the connection ends.
pub(crate) fn start_stream(host: &Host, cid: &str, ip: Ipv4Addr, port: u16, file: &str) {
    let script = "while :; do echo tick; sleep 0.2; done | nc \"$0\" \"$1\" > \"$2\"; echo $? > \"$2.ended\"";
    host.docker.docker_ok(&[
        "exec",
        "-d",
        cid,
        "sh",
        "-c",
        script,
        &ip.to_string(),
        &port.to_string(),
        file,
    ]);
}

/// Bytes received so far on a stream, and whether it ended.
pub(crate) fn stream_state(host: &Host, cid: &str, file: &str) -> (u64, bool) {
    let out = host.docker.docker_output(&[
        "exec",
        cid,
        "sh",
        "-c",
        "wc -c < \"$0\"; test -e \"$0.ended\" && echo ended",
        file,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let size = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (size, lines.any(|l| l == "ended"))
}

/// Starts the supervisor binary inside the host's namespace with the default config (only the engine's
/// socket, the identity, the files and a short reconcile period are set, plus `firewall` lines when
/// given) and waits until it listens.
pub(crate) fn start_supervisor(host: &Host, log: &str, firewall: &str) -> Guarded {
    let cfg = host.dir.path().join("escape.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"0.0.0.0:{API_PORT}\"\nhost = \"host-e\"\nzone = \"zone-e\"\nregion = \"test\"\n\
             token_file = \"{}\"\ndata_dir = \"{}\"\nreconcile_interval_ms = 300\n[docker]\nsocket = \"{}\"\n\
             [firewall]\n{firewall}\n",
            host.dir.path().join("token").display(),
            host.dir.path().join("data").display(),
            host.docker.socket().display(),
        ),
    )
    .unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_atlantis-supervisor"));
    let log = host.dir.path().join(log);
    let args = vec!["--config".to_string(), cfg.display().to_string()];
    let proc = Guarded::spawn(
        "supervisor",
        &bin,
        &args,
        &log,
        Some(&host.docker.netns_path()),
    );
    atlantis_testkit::wait_until(Duration::from_secs(30), "supervisor listening", || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("listening on ")
            .then_some(())
    });
    proc
}

/// Every IPv4 address of the supervisor host except loopback (which a container cannot reach: its own
/// 127.0.0.1 is its own).
fn host_addresses(host: &Host) -> Vec<Ipv4Addr> {
    let out = host
        .docker
        .in_netns("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    atlantis_supervisor::conntrack::parse_local_addresses(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|a| !a.is_loopback())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_matrix_from_inside_a_container_with_the_default_config() {
    init_tracing();
    let host = Host::start("host-e", "zone-e");
    let outside = Outside::new(&host);
    let dir = host.dir.path().to_owned();
    let (hns, ons) = (host.docker.netns_path(), outside.path());
    let ns_ip = host.docker.ns_ip();

    // Listeners: on this host, and in the outside world.
    let _servers = [
        httpd(&hns, &dir, ns_ip, 18081, "dep-on-host\n"),
        httpd(&hns, &dir, ns_ip, 18082, "other-port-on-host\n"),
        httpd(&hns, &dir, ns_ip, 2181, "zookeeper-on-host\n"),
        httpd(&ons, &dir, OTHER_HOST, 5432, "dep-elsewhere\n"),
        httpd(&ons, &dir, OTHER_HOST, 5433, "other-port-elsewhere\n"),
        httpd(&ons, &dir, OTHER_HOST, 2181, "zookeeper-elsewhere\n"),
        // Stand-ins on the manager API's port, on this host and on another cluster host.
        httpd(&hns, &dir, ns_ip, 7700, "manager-api-on-host\n"),
        httpd(&ons, &dir, OTHER_HOST, 7700, "manager-api-elsewhere\n"),
        httpd(&ons, &dir, METADATA, 80, "metadata\n"),
        httpd(&ons, &dir, LINK_PEER, 80, "private-192\n"),
        httpd(&ons, &dir, PRIVATE_172, 80, "private-172\n"),
        httpd(&ons, &dir, SHARED, 80, "shared-100-64\n"),
        httpd(&ons, &dir, PUBLIC_REMOTE, 80, "internet\n"),
        echo_server(&ons, &dir, 9000),
        echo_server(&ons, &dir, 9001),
    ];
    let sup = start_supervisor(&host, "supervisor-1.log", "");
    let client = Client::new(SocketAddr::from((ns_ip, API_PORT)));

    let mut other = spec("other", "prod");
    other.allow_ping = true;
    let other_info = client.deploy_ok(&other).await;
    let other_port = other_info.ports[0].host_port;
    let mut web = spec("web", "prod");
    web.dependencies = vec![
        dep("on-host", ns_ip, 18081),
        dep("elsewhere", OTHER_HOST, 5432),
        dep("stream", OTHER_HOST, 9001),
        dep("other-app", ns_ip, other_port),
    ];
    let web_info = client.deploy_ok(&web).await;
    let cid = web.container_id.to_string();

    // Router -> container still works (published port, from outside the host).
    assert_eq!(
        curl(&format!("http://{ns_ip}:{}/", web_info.ports[0].host_port)).as_deref(),
        Some("hello from busybox container\n")
    );

    let addrs = host_addresses(&host);
    for want in [
        ns_ip,
        LINK_HOST,
        PUBLIC_HOST,
        Ipv4Addr::new(172, 29, 0, 1),
        Ipv4Addr::new(172, 30, 0, 1),
    ] {
        assert!(
            addrs.contains(&want),
            "{want} is an address of the host: {addrs:?}"
        );
    }
    // (what, address, port, reachable)
    let reach = |what: &str, ip: Ipv4Addr, port: u16| (what.to_owned(), ip, port, true);
    let refuse = |what: &str, ip: Ipv4Addr, port: u16| (what.to_owned(), ip, port, false);
    let mut matrix = vec![
        reach("declared dependency on this host", ns_ip, 18081),
        reach("declared dependency on another host", OTHER_HOST, 5432),
        reach(
            "declared dependency on another app's host port",
            ns_ip,
            other_port,
        ),
        reach("the internet (egress open by default)", PUBLIC_REMOTE, 80),
        refuse("other port of the dependency on this host", ns_ip, 18082),
        refuse("other port of the dependency elsewhere", OTHER_HOST, 5433),
        refuse("ZooKeeper on this host", ns_ip, 2181),
        refuse("ZooKeeper on another host", OTHER_HOST, 2181),
        refuse("the manager API on this host", ns_ip, 7700),
        refuse("the manager API on another host", OTHER_HOST, 7700),
        refuse("cloud metadata", METADATA, 80),
        refuse("192.168/16 outside the config", LINK_PEER, 80),
        refuse("172.16/12 outside the config", PRIVATE_172, 80),
        refuse("100.64/10 outside the config", SHARED, 80),
        refuse("another app's bridge address", other_info.ip, 8080),
    ];
    // A container the engine runs outside Atlantis, on its default bridge: its published port is DNAT'd
    // (the packets cross FORWARD, not INPUT).
    host.docker.docker_ok(&[
        "run",
        "-d",
        "--name",
        "foreign",
        "-p",
        &format!("0.0.0.0:{FOREIGN_PORT}:8080"),
        crate::IMAGE,
    ]);
    atlantis_testkit::wait_until(Duration::from_secs(10), "foreign container", || {
        answers_from_host(&host, ns_ip, FOREIGN_PORT).then_some(())
    });
    for a in &addrs {
        matrix.push(refuse(&format!("supervisor API via {a}"), *a, API_PORT));
        matrix.push(refuse(
            &format!("a DNAT'd published port via {a}"),
            *a,
            FOREIGN_PORT,
        ));
        // Declared through one address, the app's port stays closed through every other.
        if *a != ns_ip {
            matrix.push(refuse(
                &format!("another app's host port via {a}"),
                *a,
                other_port,
            ));
        }
    }
    let mut failures = Vec::new();
    let mut table = String::new();
    for (what, ip, port, reach) in &matrix {
        assert!(
            answers_from_host(&host, *ip, *port),
            "{what}: {ip}:{port} must answer from the host itself"
        );
        let t = Instant::now();
        let got = probe(&host, &cid, *ip, *port);
        let took = t.elapsed();
        let ok = match (&got, reach) {
            (Ok(_), true) => true,
            // Refused at once with a reset, not dropped into a timeout.
            (Err(e), false) => e.contains("refused") && took < Duration::from_secs(3),
            _ => false,
        };
        table.push_str(&format!(
            "{} {what} ({ip}:{port}): {got:?} in {took:?}\n",
            if ok { "ok  " } else { "FAIL" }
        ));
        if !ok {
            failures.push(what.clone());
        }
    }
    // No Docker socket inside: the engine cannot be driven from the container.
    for sock in [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/containerd/containerd.sock",
    ] {
        let inside = host
            .docker
            .docker()
            .args(["exec", &cid, "test", "-e", sock])
            .status()
            .expect("docker exec");
        table.push_str(&format!(
            "{} Docker socket {sock} inside: {}\n",
            if inside.success() { "FAIL" } else { "ok  " },
            if inside.success() {
                "present"
            } else {
                "absent"
            }
        ));
        if inside.success() {
            failures.push(format!("Docker socket {sock}"));
        }
    }
    eprintln!("escape matrix:\n{table}");
    assert!(failures.is_empty(), "escapes: {failures:?}\n{table}");

    // No IPv6 in the container: a link-local address would reach the host around the IPv4 rules.
    let v6 = host
        .docker
        .docker_ok(&["exec", &cid, "cat", "/proc/net/if_inet6"]);
    assert!(v6.is_empty(), "IPv6 addresses in the container: {v6}");

    // Unprivileged ping sockets: closed by default, open when the spec asks.
    // Read from the host's user namespace (inside a remapped container, group ids the container's map
    // lacks read as 65534): "1 0" is the empty range. With allow_ping, groups 0-65535 of the container,
    // which are the remapped range outside.
    let range = |c: &str, inside: bool| {
        let text = if inside {
            host.docker
                .docker_ok(&["exec", c, "cat", "/proc/sys/net/ipv4/ping_group_range"])
        } else {
            let pid = host
                .docker
                .docker_ok(&["inspect", "-f", "{{.State.Pid}}", c]);
            let out = Command::new("nsenter")
                .args([
                    "-t",
                    &pid,
                    "-n",
                    "cat",
                    "/proc/sys/net/ipv4/ping_group_range",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert_eq!(range(&cid, false), "1 0", "no group may open ping sockets");
    let remapped = atlantis_testkit::docker::ensure_remap_user();
    let other_id = other.container_id.as_str();
    assert_eq!(range(other_id, true), "0 65535", "allow_ping");
    assert_eq!(
        range(other_id, false),
        format!("{remapped} {}", remapped + 65535),
        "allow_ping, outside"
    );

    // /metrics needs the token like the rest of the API; liveness and the API document do not.
    let anon = reqwest::Client::builder().no_proxy().build().unwrap();
    for (path, want) in [
        ("/metrics", 401),
        ("/v1/health", 401),
        ("/healthz", 200),
        ("/openapi.json", 200),
    ] {
        let s = anon
            .get(format!("{}{path}", client.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(s, want, "{path} without the token");
    }
    let (s, m) = client.send(Method::GET, "/metrics", None).await;
    assert!(
        s == 200 && m.contains("atlantis_supervisor_containers 2"),
        "{s} {m}"
    );

    // --- A gap: a long-lived connection to a dependency is open; the supervisor goes down and someone
    // flushes the container's chain; the container opens a connection the rules refuse.
    start_stream(&host, &cid, OTHER_HOST, 9001, "/tmp/dep-stream");
    atlantis_testkit::wait_until(Duration::from_secs(10), "dependency stream flowing", || {
        (stream_state(&host, &cid, "/tmp/dep-stream").0 > 0).then_some(())
    });
    drop(sup);
    let chain = chain_name(&web.container_id);
    host.docker.iptables(&["-F", &chain]);
    start_stream(&host, &cid, LINK_PEER, 9000, "/tmp/gap-stream");
    atlantis_testkit::wait_until(Duration::from_secs(10), "gap stream flowing", || {
        (stream_state(&host, &cid, "/tmp/gap-stream").0 > 0).then_some(())
    });
    let flowing = stream_state(&host, &cid, "/tmp/gap-stream").0;

    // The supervisor comes back (now with public egress denied) and repairs the rules: the gap connection
    // is cut, the dependency's is not.
    let t = Instant::now();
    let _sup = start_supervisor(&host, "supervisor-2.log", "egress = \"deny\"");
    let (cut_at, _) =
        atlantis_testkit::wait_until(Duration::from_secs(15), "gap connection cut", || {
            let (size, ended) = stream_state(&host, &cid, "/tmp/gap-stream");
            ended.then_some((size, ()))
        });
    eprintln!(
        "gap connection cut {:?} after the supervisor restart",
        t.elapsed()
    );
    assert!(cut_at >= flowing);
    let before = stream_state(&host, &cid, "/tmp/dep-stream");
    std::thread::sleep(Duration::from_millis(1000));
    let gap_after = stream_state(&host, &cid, "/tmp/gap-stream");
    let after = stream_state(&host, &cid, "/tmp/dep-stream");
    assert_eq!(
        gap_after.0, cut_at,
        "nothing more arrives on the cut connection"
    );
    assert!(
        !after.1 && after.0 > before.0,
        "the dependency's connection lives on: {before:?} -> {after:?}"
    );
    let rules = host.iptables_rules();
    assert!(
        rules.contains(&format!("-A {chain} -j ATLANTIS-DEFAULT")),
        "rules repaired:\n{rules}"
    );
    let again = probe(&host, &cid, LINK_PEER, 9000);
    assert!(
        again.as_ref().is_err_and(|e| e.contains("refused")),
        "refused again after the repair: {again:?}"
    );
    let log = std::fs::read_to_string(dir.join("supervisor-2.log")).unwrap();
    assert!(log.contains("Cut a connection the rules refuse."), "{log}");

    // With egress = "deny", the internet is refused too; declared dependencies still answer.
    assert!(answers_from_host(&host, PUBLIC_REMOTE, 80));
    let public = probe(&host, &cid, PUBLIC_REMOTE, 80);
    assert!(
        public.as_ref().is_err_and(|e| e.contains("refused")),
        "public egress denied: {public:?}"
    );
    for (ip, port) in [(ns_ip, 18081), (OTHER_HOST, 5432), (ns_ip, other_port)] {
        let r = probe(&host, &cid, ip, port);
        assert!(
            r.is_ok(),
            "dependency {ip}:{port} with egress denied: {r:?}"
        );
    }

    for id in [&web.container_id, &other.container_id] {
        let (s, body) = client
            .send(Method::DELETE, &format!("/v1/containers/{id}"), None)
            .await;
        assert_eq!(s, 200, "{body}");
    }
}
