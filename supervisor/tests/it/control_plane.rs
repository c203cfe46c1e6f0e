//! The escape matrix, control-plane part: the control plane is refused to containers whatever range its
//! addresses are in, with nothing listed in `firewall.cluster_networks`.
//!
//! As in [`crate::escape`], the supervisor binary runs inside the engine's namespace and a second namespace
//! plays the rest of the world, routed from the host. There, on PUBLIC-looking addresses (TEST-NET-2 and
//! TEST-NET-3, outside every always-refused network): the ZooKeeper the supervisor uses (203.0.113.30:2181,
//! the shared test ZooKeeper reached through a forwarder, so the supervisor really talks to it there), a
//! manager (198.51.100.20:7700) and an internal router (198.51.100.21, status on 9090, an internal app's
//! port on 8080), registered in ZooKeeper as a manager and a router before the supervisor starts, and a
//! host that registers as a router later (198.51.100.22). Each target first answers from the host itself
//! (outside the container), so a refusal seen from the container is the firewall's doing.
//!
//! From the container: ZooKeeper, the manager and the router's status port are refused at once; the
//! router's app port, declared as a dependency, answers (a dependency opens exactly its address and
//! port); another public address answers (public egress stays open). The late host answers until its
//! registration appears; then it is refused within a deadline, and a connection the container had open to
//! it is cut. When the registration goes away, it answers again.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use atlantis_common::zk::Coord;
use atlantis_common::zk::layout::RouterKind;
use atlantis_testkit::ZooKeeper;
use atlantis_testkit::process::Guarded;
use reqwest::Method;

use crate::escape::{
    API_PORT, Outside, answers_from_host, echo_server, httpd, probe, spawn_in, start_stream,
    start_supervisor, stream_state,
};
use crate::{Client, Host, dep, init_tracing, spec, unique, zk_config};

/// The ZooKeeper server, as the supervisor's config names it.
const ZK_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
/// A manager.
const MANAGER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// An internal router.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 21);
/// A host that registers as a router while the supervisor runs.
const LATE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 22);
/// The internet (not part of the cluster).
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
/// How long a new registration may take to be refused.
const DEADLINE: Duration = Duration::from_secs(10);

/// Forwards port 2181 of the namespace at `ns` (every address there, ZK_PUBLIC among them: busybox nc
/// cannot bind one) to the ZooKeeper at `zk` in this (the root) namespace: busybox nc accepts there and
/// runs, per connection, an nc that `nsenter` puts back into our namespace.
fn zk_forwarder(ns: &Path, dir: &Path, zk: SocketAddr) -> Guarded {
    let busybox = atlantis_testkit::require_bin("busybox", "busybox-static");
    let nsenter = atlantis_testkit::require_bin("nsenter", "util-linux");
    let args: Vec<String> = vec![
        "nc".into(),
        "-ll".into(),
        "-p".into(),
        "2181".into(),
        "-e".into(),
        nsenter.display().to_string(),
        format!("--net=/proc/{}/ns/net", std::process::id()),
        busybox.display().to_string(),
        "nc".into(),
        zk.ip().to_string(),
        zk.port().to_string(),
    ];
    spawn_in(ns, dir, "zk-forward", &busybox, &args)
}

/// ZooKeeper's `ruok` to `ip:2181` from the host (`None`) or from inside container `cid`: Ok(answer) or
/// Err(what nc said).
fn ruok(host: &Host, cid: Option<&str>, ip: Ipv4Addr) -> Result<String, String> {
    let script = "printf ruok | busybox nc -w 3 \"$0\" 2181";
    let out = match cid {
        Some(cid) => host
            .docker
            .docker_output(&["exec", cid, "sh", "-c", script, &ip.to_string()]),
        None => host
            .docker
            .in_netns("busybox")
            .args(["sh", "-c", script, &ip.to_string()])
            .output()
            .unwrap(),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if stdout == "imok" {
        Ok(stdout)
    } else {
        Err(format!(
            "{} {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn refused(r: &Result<String, String>) -> bool {
    r.as_ref().is_err_and(|e| e.contains("refused"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_on_public_addresses_is_refused_from_inside_a_container() {
    init_tracing();
    let zk = ZooKeeper::shared();
    let host = Host::start("host-e", "zone-e");
    let outside = Outside::new(&host);
    for a in [ZK_PUBLIC, MANAGER, ROUTER, LATE, INTERNET] {
        outside.add_address(&host, a);
    }
    let dir = host.dir.path().to_owned();
    let ons = outside.path();
    let _servers = [
        zk_forwarder(&ons, &dir, zk.addr()),
        httpd(&ons, &dir, MANAGER, 7700, "manager-api\n"),
        httpd(&ons, &dir, ROUTER, 9090, "router-status\n"),
        httpd(&ons, &dir, ROUTER, 8080, "internal-app\n"),
        httpd(&ons, &dir, LATE, 7700, "late-host\n"),
        httpd(&ons, &dir, INTERNET, 80, "internet\n"),
        echo_server(&ons, &dir, 9000),
    ];
    atlantis_testkit::wait_until(Duration::from_secs(10), "ZooKeeper via TEST-NET", || {
        ruok(&host, None, ZK_PUBLIC).ok()
    });

    // The manager and the router registered before the supervisor starts, as they register themselves.
    let root = format!("/sup-cp-{}", unique());
    let writer = Coord::connect(zk_config(zk, &root)).await.unwrap();
    let l = writer.layout().clone();
    let zone = "zone-e".parse().unwrap();
    writer
        .create(
            &l.manager(&"mgr-a".parse().unwrap()),
            &serde_json::json!({"version": 1, "addr": format!("{MANAGER}:7700"), "software": "test"}),
        )
        .await
        .unwrap();
    writer
        .create(
            &l.router(RouterKind::Internal, &zone, &"rtr-a".parse().unwrap()),
            &serde_json::json!({"version": 1, "host": "rtr-a", "zone": "zone-e",
                "status_addr": format!("{ROUTER}:9090"), "router_version": "test"}),
        )
        .await
        .unwrap();

    let zk_section = format!(
        "\n[zookeeper]\nservers = \"{ZK_PUBLIC}:2181\"\nregion = \"test\"\nroot = \"{root}\"\nsession_timeout_ms = 4000\n"
    );
    let _sup = start_supervisor(&host, "supervisor-cp.log", &zk_section);
    let client = Client::new(SocketAddr::from((host.docker.ns_ip(), API_PORT)));
    // The supervisor talks to ZooKeeper at its public-looking address.
    let me = l.supervisor(&"host-e".parse().unwrap());
    let t = Instant::now();
    while writer.get_raw(&me).await.ok().flatten().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the supervisor never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut web = spec("web", "prod");
    web.dependencies = vec![dep("router-app", ROUTER, 8080)];
    writer
        .create(
            &l.instance(&web.app, &web.env, &web.container_id),
            &serde_json::json!({"version": 1, "host": "host-e", "zone": "zone-e", "state": "deploying"}),
        )
        .await
        .unwrap();
    client.deploy_ok(&web).await;
    let cid = web.container_id.to_string();

    // (what, address, port, reachable from the container)
    let matrix = [
        ("the manager API (registered)", MANAGER, 7700, false),
        ("the router's status port (registered)", ROUTER, 9090, false),
        ("the router's app port, declared", ROUTER, 8080, true),
        ("a host about to register", LATE, 7700, true),
        ("the internet", INTERNET, 80, true),
    ];
    let mut failures = Vec::new();
    let mut table = String::new();
    for (what, ip, port, reach) in matrix {
        assert!(
            answers_from_host(&host, ip, port),
            "{what}: {ip}:{port} must answer from the host itself"
        );
        let t = Instant::now();
        let got = probe(&host, &cid, ip, port);
        let took = t.elapsed();
        let ok = if reach {
            got.is_ok()
        } else {
            refused(&got) && took < Duration::from_secs(3)
        };
        table.push_str(&format!(
            "{} {what} ({ip}:{port}): {got:?} in {took:?}\n",
            if ok { "ok  " } else { "FAIL" }
        ));
        if !ok {
            failures.push(what);
        }
    }
    let from_host = ruok(&host, None, ZK_PUBLIC);
    let from_container = ruok(&host, Some(&cid), ZK_PUBLIC);
    table.push_str(&format!(
        "ZooKeeper ({ZK_PUBLIC}:2181): host {from_host:?}, container {from_container:?}\n"
    ));
    if from_host.is_err() || !refused(&from_container) {
        failures.push("ZooKeeper on a public-looking address");
    }
    eprintln!("control-plane matrix:\n{table}");
    assert!(failures.is_empty(), "escapes: {failures:?}\n{table}");
    let rules = host.iptables_rules();
    for a in [ZK_PUBLIC, MANAGER, ROUTER] {
        assert!(
            rules.contains(&format!("-A ATLANTIS-DEFAULT -d {a}/32 -j ATLANTIS-REFUSE")),
            "{a} refused in the shared chain:\n{rules}"
        );
    }

    // A connection to the late host is open when it registers as a router: from then on it is refused
    // within the deadline, and the open connection is cut.
    start_stream(&host, &cid, LATE, 9000, "/tmp/late-stream");
    atlantis_testkit::wait_until(Duration::from_secs(10), "stream to the late host", || {
        (stream_state(&host, &cid, "/tmp/late-stream").0 > 0).then_some(())
    });
    let late_reg = l.router(RouterKind::External, &zone, &"rtr-late".parse().unwrap());
    writer
        .create(
            &late_reg,
            &serde_json::json!({"version": 1, "host": "rtr-late", "zone": "zone-e",
                "status_addr": format!("{LATE}:9090"), "router_version": "test"}),
        )
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        if refused(&probe(&host, &cid, LATE, 7700)) {
            break;
        }
        assert!(
            t.elapsed() < DEADLINE,
            "a new registration is still reachable after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "new registration refused {:?} after it appeared",
        t.elapsed()
    );
    atlantis_testkit::wait_until(Duration::from_secs(5), "open connection cut", || {
        stream_state(&host, &cid, "/tmp/late-stream")
            .1
            .then_some(())
    });
    assert!(
        answers_from_host(&host, LATE, 7700),
        "the late host still answers the host itself"
    );

    // Deregistered: reachable again (the set follows ZooKeeper both ways).
    writer.delete(&late_reg, None).await.unwrap();
    let t = Instant::now();
    while probe(&host, &cid, LATE, 7700).is_err() {
        assert!(
            t.elapsed() < DEADLINE,
            "a deregistered host is still refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused(&probe(&host, &cid, MANAGER, 7700)));

    let (s, body) = client
        .send(Method::DELETE, &format!("/v1/containers/{cid}"), None)
        .await;
    assert_eq!(s, 200, "{body}");
}
