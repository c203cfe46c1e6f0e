//! Networked builds (`network = true`, allowed by the operator): real builds on the debian template in
//! a network namespace of their own. Two network namespaces of the test's own stand for the world,
//! each behind a veth from the root namespace and routed from there (nothing leaves this machine):
//! - "the internet": TEST-NET-3 203.0.113.C, serving a TCP answer;
//! - "the control plane": a private address 172.31.254.C (also the builds' DNS resolver, on port 53)
//!   and a public address 198.51.100.C that the builder's config lists in `build_network_deny`.
//!
//! A build reaches the internet through NAT (by name, through the resolver its resolv.conf names), and
//! nothing else: not the host's loopback, not the host's address, not its gateway (the host end of its
//! veth), not the control plane. Its network namespace is not the host's. After the build, whether it
//! passed or failed, nothing of its network is left.
//!
//! The scripts are perl (perl-base is in every Debian root).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::time::Duration;

use atlantis_builder::BuildOutput;
use atlantis_builder::sandbox::net;

use crate::hostile::Host;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The address of the interface of the host's default route (the builder host's own address).
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "default"])
        .output()
        .expect("ip (iproute2)");
    let routes = String::from_utf8_lossy(&out.stdout).into_owned();
    let dev = routes
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no default route: {routes}"));
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no IPv4 address on {dev}: {text}"))
}

/// A network namespace of the test's own, reached from the root namespace through a veth /30, with
/// `served` addresses on its loopback routed to it from the root namespace.
struct Stand {
    netns: String,
    link: String,
}

impl Stand {
    fn new(tag: &str, root_end: Ipv4Addr, served: &[Ipv4Addr]) -> Stand {
        let pid = std::process::id();
        let s = Stand {
            netns: format!("atk-nb-{pid}-{tag}"),
            link: format!("nb{pid}{tag}"),
        };
        let peer = Ipv4Addr::from(u32::from(root_end) + 1);
        let (ns, link) = (s.netns.as_str(), s.link.as_str());
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["addr", "add", &format!("{root_end}/30"), "dev", link]);
        ip(&["link", "set", link, "up"]);
        // Replies coming in here are forwarded to the builds (the uplink's forwarding, which the
        // operator turns on: docs/builder.md).
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{link}/forwarding"), "1").unwrap();
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{peer}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        for a in served {
            ip(&["-n", ns, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
            ip(&["route", "add", &format!("{a}/32"), "via", &peer.to_string()]);
        }
        s
    }

    /// Runs `f` in a thread that joined the namespace (sockets made there stay there).
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns(2) on a descriptor we own, for this thread only.
            #[allow(unsafe_code)]
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    fn listen(&self, addr: Ipv4Addr) -> TcpListener {
        let l = self.within(move || TcpListener::bind((addr, 0)).unwrap());
        l.set_nonblocking(true).unwrap();
        l
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// Answers one line (`answer`) to every connection, recording the peers, until dropped.
fn serve(
    listener: TcpListener,
    answer: String,
) -> std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>> {
    let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = peers.clone();
    listener.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            if let Ok(a) = s.peer_addr() {
                p.lock().unwrap().push(a);
            }
            let _ = s.write_all(format!("{answer}\n").as_bytes());
        }
    });
    peers
}

/// A DNS server on `sock` answering `name` with `addr` (A), and no answer for anything else.
fn serve_dns(sock: UdpSocket, name: &'static str, addr: Ipv4Addr) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 17 {
                continue;
            }
            // The question: labels from byte 12 to a zero byte, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..(i + 1 + len).min(n)]).into_owned());
                i += 1 + len;
            }
            let end = i + 5;
            if end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let hit = qtype == 1 && labels.join(".").eq_ignore_ascii_case(name);
            let mut r = Vec::new();
            r.extend_from_slice(&q[..2]);
            r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(hit), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end]);
            if hit {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&addr.octets());
            }
            let _ = sock.send_to(&r, from);
        }
    });
}

/// The connection script: each argument is `label=host:port` (`GATEWAY` stands for the build's default
/// gateway); prints one line per target.
const CONNECT: &str = r#"
use Socket;
open(my $r, "<", "/proc/net/route") or die "route: $!\n";
my $gw = "none";
while (<$r>) {
    my @f = split;
    $gw = join(".", reverse map { hex } unpack("(A2)4", $f[2])) if $f[1] eq "00000000";
}
for my $arg (@ARGV) {
    my ($label, $target) = split(/=/, $arg, 2);
    $target =~ s/GATEWAY/$gw/;
    my ($host, $port) = split(/:/, $target);
    my $ip = inet_aton($host);
    if (!$ip) { print "$label: cannot resolve $host\n"; next }
    socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!\n";
    # A blocking connect, so $! is the connect's own error; the alarm bounds it.
    my $ok = eval {
        local $SIG{ALRM} = sub { die "timed out\n" };
        alarm 5;
        my $c = connect($s, sockaddr_in($port, $ip));
        alarm 0;
        $c;
    };
    if ($ok) {
        my $line = <$s>; chomp $line;
        print "$label: connected: $line\n";
    } else {
        print "$label: ", ($@ || "$!\n");
    }
}
"#;

/// The slot the build used, from its log.
fn slot_of(log: &str) -> u32 {
    let rest = log
        .split("network: a namespace of the build's own (slot ")
        .nth(1)
        .unwrap_or_else(|| panic!("no network line in the log:\n{log}"));
    rest.split(')').next().unwrap().parse().unwrap()
}

/// Nothing of the slot's network is left (namespace, veth, chains, jumps).
fn assert_network_removed(log: &str) {
    let slot = slot_of(log);
    // Checked holding the slot's lock, so a build that takes the slot meanwhile does not count.
    let left = net::leftovers_of_free_slot(slot, Duration::from_secs(60)).unwrap();
    assert!(left.is_empty(), "left after the build: {left:?}");
}

/// Accepts one connection on a non-blocking listener within 5 s.
fn accept_within(l: &TcpListener) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while l.accept().is_err() {
        assert!(std::time::Instant::now() < deadline, "no connection came");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The app layer's files (path, text).
fn app_files(h: &Host, out: &BuildOutput) -> std::collections::BTreeMap<String, String> {
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
    files
}

/// The world of test case `c`: the internet and the control plane stand-ins, the builder allowing
/// networked builds with the control plane's public address refused and its private one as resolver.
struct World {
    internet: Stand,
    control: Stand,
    outside: Ipv4Addr,
    private: Ipv4Addr,
    denied: Ipv4Addr,
}

fn world(h: &mut Host, c: u8) -> World {
    atlantis_testkit::require_bin("ip", "iproute2");
    atlantis_testkit::require_bin("iptables", "iptables");
    let outside = Ipv4Addr::new(203, 0, 113, c);
    let private = Ipv4Addr::new(172, 31, 254, c);
    let denied = Ipv4Addr::new(198, 51, 100, c);
    // The links: 10.253.C.0/30 and 10.253.C.4/30 (off the builds' pools and the testkit's dockerd
    // links, 10.200-251.x).
    let internet = Stand::new(&format!("{c}i"), Ipv4Addr::new(10, 253, c, 1), &[outside]);
    let control = Stand::new(
        &format!("{c}c"),
        Ipv4Addr::new(10, 253, c, 5),
        &[private, denied],
    );
    h.network = true;
    h.settings.allow_network = true;
    h.settings.network = net::NetSettings {
        pool: format!("10.254.{}.0/24", 100 + c),
        deny: vec![denied.to_string()],
        dns: vec![private.to_string()],
    };
    let dns = control.within(move || UdpSocket::bind((private, 53)).unwrap());
    serve_dns(dns, "outside.test", outside);
    World {
        internet,
        control,
        outside,
        private,
        denied,
    }
}

/// A networked build reaches a server of "the internet" by name and through NAT; its network
/// namespace is its own (another namespace inode, its own interfaces and address); nothing of its
/// network is left afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_build_reaches_the_outside_in_a_namespace_of_its_own() {
    let mut h = Host::new(21);
    let w = world(&mut h, 1);
    let answer = format!("answer-from-outside-{}", std::process::id());
    let l = w.internet.listen(w.outside);
    let port = l.local_addr().unwrap().port();
    let peers = serve(l, answer.clone());
    let cmd = format!(
        r#"[["sh", "-c", "perl connect.pl by-name=outside.test:{port} by-address={}:{port} > answer.txt"],
            ["sh", "-c", "readlink /proc/self/ns/net > ns.txt; cat /proc/net/dev > dev.txt; busybox ip -4 addr > addr.txt; cat /etc/resolv.conf > resolv.txt"]]"#,
        w.outside
    );
    let (r, log) = h.build(&[("connect.pl", CONNECT)], &cmd, 120).await;
    let out = r.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let files = app_files(&h, &out);
    let got = &files["app/answer.txt"];
    assert!(
        got.contains(&format!("by-name: connected: {answer}")),
        "{got}\n{log}"
    );
    assert!(
        got.contains(&format!("by-address: connected: {answer}")),
        "{got}"
    );
    // Through NAT: the server saw the host's end of its link, never the build's pool address.
    let seen = peers.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for p in &seen {
        assert_eq!(p.ip().to_string(), "10.253.1.1", "{seen:?}");
    }
    // Its own namespace: not the builder's inode, its own interfaces (lo and eth0 only) and address.
    let builder_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let build_ns = files["app/ns.txt"].trim();
    assert!(build_ns.starts_with("net:["), "{build_ns}");
    assert_ne!(build_ns, builder_ns.to_str().unwrap());
    let ifaces: Vec<&str> = files["app/dev.txt"]
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces.len(), 2, "{ifaces:?}");
    assert!(
        ifaces.contains(&"lo") && ifaces.contains(&"eth0"),
        "{ifaces:?}"
    );
    let addr = &files["app/addr.txt"];
    assert!(addr.contains("inet 10.254.101."), "{addr}");
    assert!(!addr.contains(&host_address()), "{addr}");
    assert!(
        files["app/resolv.txt"].contains(&format!("nameserver {}\n", w.private)),
        "{}",
        files["app/resolv.txt"]
    );
    assert_network_removed(&log);
    h.assert_unchanged();
    drop(w);
}

/// A networked build cannot reach the builder host (its loopback, its address, the host end of the
/// build's veth), a private address standing for the control plane (other than its resolver on
/// port 53), nor a public address the config refuses; the outside stays reachable in the same build.
/// The build fails, and its network is removed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_build_cannot_reach_the_host_or_the_control_plane() {
    let mut h = Host::new(22);
    let w = world(&mut h, 2);
    let answer = format!("answer-from-outside-{}", std::process::id());
    let l = w.internet.listen(w.outside);
    let port = l.local_addr().unwrap().port();
    let _peers = serve(l, answer.clone());
    // Listeners the build must not reach: the host's loopback and every host address (0.0.0.0,
    // which takes the gateway's too), the control plane's two addresses.
    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    let any = TcpListener::bind("0.0.0.0:0").unwrap();
    let private = w.control.listen(w.private);
    let denied = w.control.listen(w.denied);
    for l in [&lo, &any] {
        l.set_nonblocking(true).unwrap();
    }
    let host = host_address();
    let p = |l: &TcpListener| l.local_addr().unwrap().port();
    // The controls: the host reaches each listener (the control plane's through its route).
    for (a, l) in [
        ("127.0.0.1".to_owned(), &lo),
        (host.clone(), &any),
        (w.private.to_string(), &private),
        (w.denied.to_string(), &denied),
    ] {
        std::net::TcpStream::connect_timeout(
            &format!("{a}:{}", p(l)).parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("control connect to {a}: {e}"));
        accept_within(l);
    }
    let targets = [
        format!("outside={}:{port}", w.outside),
        format!("loopback=127.0.0.1:{}", p(&lo)),
        format!("host={host}:{}", p(&any)),
        format!("gateway=GATEWAY:{}", p(&any)),
        format!("private={}:{}", w.private, p(&private)),
        format!("denied={}:{}", w.denied, p(&denied)),
    ];
    let cmd = format!(
        r#"[["sh", "-c", "perl connect.pl {} && busybox ip link set eth0 down 2>&1 | sed 's/^/link down: /'; busybox ip route del default 2>&1 | sed 's/^/route del: /'; echo done; exit 9"]]"#,
        targets.join(" ")
    );
    let (r, log) = h.build(&[("connect.pl", CONNECT)], &cmd, 120).await;
    h.assert_failed(
        &r,
        &log,
        &[
            "failed with exit code 9",
            &format!("outside: connected: {answer}"),
            "loopback: Connection refused",
            "host: Connection refused",
            "gateway: Connection refused",
            "private: No route to host",
            "denied: No route to host",
            // Nor can it change its network: the namespace is not its user namespace's.
            "link down: ip: SIOCSIFFLAGS: Operation not permitted",
            "route del: ip: RTNETLINK answers: Operation not permitted",
            "done",
        ],
    );
    for (name, l) in [
        ("loopback", &lo),
        ("host", &any),
        ("private", &private),
        ("denied", &denied),
    ] {
        assert!(l.accept().is_err(), "the build reached the {name} listener");
    }
    assert_network_removed(&log);
    h.assert_unchanged();
    drop(w);
}

/// What a builder that died during a networked build leaves (namespace, veth, chains and jumps of a
/// slot nobody holds) is removed by `reap`, which `atlantis-builder serve` runs at start and every
/// networked build runs first.
#[test]
fn network_leftovers_of_dead_builds_are_reaped() {
    atlantis_testkit::require_bin("iptables", "iptables");
    // A slot far above those the other tests take (the lowest free one).
    let slot = 4000 + std::process::id() % 90;
    let n = net::Names::of(slot);
    // Held while the leftovers are made, so that a concurrent build's reap does not take them early.
    let lock = net::SlotLock::try_take(slot).unwrap().expect("a free slot");
    let ipt = |args: &[&str]| {
        let out = Command::new("iptables")
            .arg("-w")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["netns", "add", &n.netns]);
    ip(&[
        "link", "add", &n.link, "type", "veth", "peer", "name", "eth0", "netns", &n.netns,
    ]);
    ipt(&["-N", &n.fwd]);
    ipt(&["-A", &n.fwd, "-j", "ACCEPT"]);
    ipt(&["-N", &n.input]);
    ipt(&["-t", "nat", "-N", &n.nat]);
    ipt(&["-I", "FORWARD", "1", "-i", &n.link, "-j", &n.fwd]);
    ipt(&["-I", "INPUT", "1", "-i", &n.link, "-j", &n.input]);
    ipt(&[
        "-t",
        "nat",
        "-I",
        "POSTROUTING",
        "1",
        "-s",
        "10.254.200.0/30",
        "-j",
        &n.nat,
    ]);
    let before = net::leftovers(slot).unwrap();
    assert_eq!(before.len(), 8, "{before:?}");
    // The builder "dies": the slot is free.
    drop(lock);
    net::reap().unwrap();
    assert_eq!(net::leftovers(slot).unwrap(), Vec::<String>::new());
}
