//! The life of containers on one host with ZooKeeper intent: deploy, limits, config, logs, isolation,
//! supervisor restart (adoption, exact allocator and firewall, orphan removal), teardown leaving nothing.

use std::time::{Duration, Instant};

use atlantis_common::api::supervisor::{ContainerInfo, ContainerState, SupervisorHealth};
use atlantis_common::zk::Coord;
use atlantis_supervisor::App;
use atlantis_supervisor::firewall::chain_name;
use atlantis_testkit::{ZooKeeper, eventually};
use reqwest::Method;

use crate::{Client, Host, curl, dep, init_tracing, spec, unique, zk_config};

fn instance_record(host: &str) -> serde_json::Value {
    serde_json::json!({ "version": 1, "host": host, "zone": "zone-a", "state": "deploying" })
}

/// GETs `http://ip:port/` from inside the container with busybox `nc` (Debian's static busybox `wget`
/// crashes without NSS libraries); Ok(body) or Err(why), with how long it took.
fn get_from(host: &Host, cid: &str, addr: &str) -> (Result<String, String>, Duration) {
    let (ip, port) = addr.split_once(':').unwrap();
    let t = Instant::now();
    let script = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 \"$0\" \"$1\"";
    let out = host
        .docker
        .docker_output(&["exec", cid, "sh", "-c", script, ip, port]);
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match stdout.split_once("\r\n\r\n") {
        Some((head, body)) if out.status.success() && head.starts_with("HTTP/1.") => {
            (Ok(body.to_owned()), took)
        }
        _ => (
            Err(format!(
                "{}: {} {stdout}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
            took,
        ),
    }
}

async fn state_of(client: &Client, id: &atlantis_common::ContainerId) -> Option<ContainerState> {
    client
        .list()
        .await
        .into_iter()
        .find(|i| &i.container_id == id)
        .map(|i| i.state)
}

fn chain_lines(rules: &str, chain: &str) -> Vec<String> {
    rules
        .lines()
        .filter(|l| l.contains(chain))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_isolate_restart_orphans_teardown() {
    init_tracing();
    let zk = ZooKeeper::start();
    let host = Host::start("host-a", "zone-a");
    let zkc = zk_config(&zk, &format!("/sup-life-{}", unique()));
    let manager = Coord::connect(zkc.clone()).await.unwrap();
    let layout = manager.layout().clone();

    // Servers on the host itself (the namespace) and on another cluster address (the root end of the veth).
    let (ns_ip, host_ip) = (host.docker.ns_ip(), host.docker.host_ip());
    let _s1 = host.http_server(ns_ip, 18081, true, "dep-on-host\n");
    let _s2 = host.http_server(ns_ip, 18082, true, "undeclared-on-host\n");
    let _s3 = host.http_server(host_ip, 18083, false, "dep-elsewhere\n");
    let _s4 = host.http_server(host_ip, 18084, false, "undeclared-elsewhere\n");

    let app = App::build(host.config(Some(zkc.clone())))
        .await
        .expect("supervisor starts");
    let client = Client::for_app(&app);

    // --- Deploy, with config data, env vars and two declared dependencies.
    let mut web = spec("web", "prod");
    web.dependencies = vec![
        dep("on-host", ns_ip, 18081),
        dep("elsewhere", host_ip, 18083),
    ];
    web.env_vars.insert("GREETING".into(), "hello".into());
    web.config = Some("{\"feature\":true}\n".into());
    web.command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo started $ATLANTIS_APP $GREETING $ATLANTIS_DEP_ON_HOST; cat /etc/atlantis/config; exec httpd -f -p 8080 -h /www".into(),
    ]);
    let cid = web.container_id.to_string();
    manager
        .create(
            &layout.instance(&web.app, &web.env, &web.container_id),
            &instance_record("host-a"),
        )
        .await
        .unwrap();
    let t = Instant::now();
    let info = client.deploy_ok(&web).await;
    eprintln!("deploy until healthy took {:?}", t.elapsed());
    assert_eq!(info.state, ContainerState::Healthy);
    let hp = info.ports[0].host_port;
    assert_eq!(info.ports[0].container_port, 8080);
    assert_eq!(
        curl(&format!("http://{ns_ip}:{hp}/")).as_deref(),
        Some("hello from busybox container\n")
    );

    // --- Limits and hardening, as the engine applied them.
    let fmt = "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} \
               {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.RestartPolicy.Name}} \
               {{.HostConfig.Privileged}} {{index .Config.Labels \"atlantis.app\"}}";
    let got = host.docker.docker_ok(&["inspect", "-f", fmt, &cid]);
    assert_eq!(
        got,
        r#"33554432 33554432 200000000 64 ["ALL"] ["no-new-privileges"] unless-stopped false web"#
    );
    let status = host
        .docker
        .docker_ok(&["exec", &cid, "cat", "/proc/1/status"]);
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let mounts = host
        .docker
        .docker_ok(&["exec", &cid, "cat", "/proc/mounts"]);
    assert!(
        !mounts.contains("docker.sock"),
        "no Docker socket inside: {mounts}"
    );
    // The config is there, read-only.
    assert_eq!(
        host.docker
            .docker_ok(&["exec", &cid, "cat", "/etc/atlantis/config"]),
        "{\"feature\":true}"
    );
    let write =
        host.docker
            .docker_output(&["exec", &cid, "sh", "-c", "echo x > /etc/atlantis/config"]);
    assert!(!write.status.success(), "config must be read-only");

    // --- Logs (history, then follow).
    let (s, logs) = client
        .send(
            Method::GET,
            &format!("/v1/containers/{cid}/logs?tail=50"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{logs}");
    assert!(
        logs.contains(&format!("started web hello {ns_ip}:18081")),
        "{logs}"
    );
    assert!(logs.contains("{\"feature\":true}"), "{logs}");
    let typed =
        atlantis_common::supervisor_client::SupervisorClient::new(&client.base, &client.token)
            .unwrap();
    let mut stream = typed
        .logs(&web.container_id, true, 1)
        .await
        .expect("follow logs");
    use futures::StreamExt as _;
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("followed logs send history")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    drop(stream);

    // --- Isolation: declared dependencies pass, undeclared cluster addresses are refused fast.
    let (r, _) = get_from(&host, &cid, &format!("{ns_ip}:18081"));
    assert_eq!(r.as_deref(), Ok("dep-on-host\n"));
    let (r, _) = get_from(&host, &cid, &format!("{host_ip}:18083"));
    assert_eq!(r.as_deref(), Ok("dep-elsewhere\n"));
    for url in [format!("{ns_ip}:18082"), format!("{host_ip}:18084")] {
        let (r, took) = get_from(&host, &cid, &url);
        let err = r.expect_err("undeclared address must be refused");
        assert!(err.contains("refused"), "{url}: {err}");
        assert!(
            took < Duration::from_secs(3),
            "refusal should be immediate, took {took:?}"
        );
    }

    // --- Health turns: a failing check makes it unhealthy, a passing one healthy again.
    host.docker
        .docker_ok(&["exec", &cid, "mv", "/www/healthz", "/www/healthz.off"]);
    eventually(Duration::from_secs(15), "web unhealthy", || async {
        (state_of(&client, &web.container_id).await == Some(ContainerState::Unhealthy))
            .then_some(())
    })
    .await;
    host.docker
        .docker_ok(&["exec", &cid, "mv", "/www/healthz.off", "/www/healthz"]);
    eventually(Duration::from_secs(15), "web healthy again", || async {
        (state_of(&client, &web.container_id).await == Some(ContainerState::Healthy)).then_some(())
    })
    .await;

    // --- A second container, which ZooKeeper will stop wanting while the supervisor is down.
    let api = spec("api", "prod");
    let api_id = api.container_id.to_string();
    let api_node = layout.instance(&api.app, &api.env, &api.container_id);
    manager
        .create(&api_node, &instance_record("host-a"))
        .await
        .unwrap();
    let api_info = client.deploy_ok(&api).await;
    assert_ne!(api_info.slot, info.slot);
    assert_ne!(api_info.ports[0].host_port, hp);

    // --- Restart the supervisor mid-life.
    let rules_before = host.iptables_rules();
    let web_chain = chain_name(&web.container_id);
    assert!(
        rules_before.contains(&format!("-N {web_chain}")),
        "{rules_before}"
    );
    app.shutdown().await;
    manager.delete(&api_node, None).await.unwrap();
    // Someone flushes the web container's rules while the supervisor is away.
    host.docker.iptables(&["-F", &web_chain]);
    for c in [&cid, &api_id] {
        assert_eq!(
            host.docker
                .docker_ok(&["inspect", "-f", "{{.State.Running}}", c]),
            "true",
            "{c} keeps running"
        );
    }
    assert_eq!(
        curl(&format!("http://{ns_ip}:{hp}/")).as_deref(),
        Some("hello from busybox container\n")
    );
    // An operator stops the wanted container meanwhile: the restarted supervisor starts it again.
    host.docker.docker_ok(&["stop", "-t", "1", &cid]);

    let app = App::build(host.config(Some(zkc.clone())))
        .await
        .expect("supervisor restarts");
    let client = Client::for_app(&app);
    let web_after: ContainerInfo =
        eventually(
            Duration::from_secs(20),
            "web adopted and healthy",
            || async {
                client.list().await.into_iter().find(|c| {
                    c.container_id == web.container_id && c.state == ContainerState::Healthy
                })
            },
        )
        .await;
    assert_eq!(
        (web_after.slot, web_after.ip, web_after.ports.clone()),
        (info.slot, info.ip, info.ports.clone())
    );
    assert_eq!(web_after.dependencies, web.dependencies);
    // The orphan goes after its grace period, with its chain.
    eventually(
        Duration::from_secs(20),
        "orphan removed with its rules",
        || async {
            let gone = !host.container_names().contains(&api_id);
            (gone
                && !host
                    .iptables_rules()
                    .contains(&chain_name(&api.container_id)))
            .then_some(())
        },
    )
    .await;
    assert!(
        client
            .list()
            .await
            .iter()
            .all(|c| c.container_id.as_str() != api_id)
    );
    let rules_after = host.iptables_rules();
    assert!(
        !rules_after.contains(&chain_name(&api.container_id)),
        "{rules_after}"
    );
    // The web container's rules are exactly what they were before the restart (and the flush).
    assert_eq!(
        chain_lines(&rules_after, &web_chain),
        chain_lines(&rules_before, &web_chain)
    );
    let (r, _) = get_from(&host, &cid, &format!("{ns_ip}:18082"));
    assert!(r.is_err(), "isolation holds after the restart");
    let (r, _) = get_from(&host, &cid, &format!("{ns_ip}:18081"));
    assert!(
        r.is_ok(),
        "dependency still allowed after the restart: {r:?}"
    );
    // The allocator matches: one container held.
    let (_, h) = client.send(Method::GET, "/v1/health", None).await;
    let h: SupervisorHealth = serde_json::from_str(&h).unwrap();
    assert_eq!(
        (h.containers, h.free.slots, h.free.memory_mb),
        (1, 3, 512 - 32)
    );

    // --- A rule deleted while the supervisor runs comes back with the next reconcile.
    host.docker.iptables(&["-F", &web_chain]);
    eventually(Duration::from_secs(10), "rules restored", || async {
        (chain_lines(&host.iptables_rules(), &web_chain) == chain_lines(&rules_before, &web_chain))
            .then_some(())
    })
    .await;

    // --- While running: the manager drops an instance node, and its container goes after the grace.
    let tmp = spec("tmp", "prod");
    let tmp_node = layout.instance(&tmp.app, &tmp.env, &tmp.container_id);
    manager
        .create(&tmp_node, &instance_record("host-a"))
        .await
        .unwrap();
    client.deploy_ok(&tmp).await;
    // Still wanted after enough reconcile passes to have removed it were it an orphan: the first pass
    // counted may have started before the deploy, the next would mark it, and removal comes with the first
    // pass at least `orphan_grace_ms` later (passes are at least `reconcile_interval_ms` apart).
    let cfg = host.config(None);
    let passes = cfg.orphan_grace_ms.div_ceil(cfg.reconcile_interval_ms) + 3;
    let before = client.reconcile_passes().await;
    eventually(
        Duration::from_secs(30),
        &format!("{passes} reconcile passes"),
        || async { (client.reconcile_passes().await >= before + passes).then_some(()) },
    )
    .await;
    assert!(
        host.container_names()
            .contains(&tmp.container_id.to_string()),
        "a wanted container stays"
    );
    manager.delete(&tmp_node, None).await.unwrap();
    eventually(
        Duration::from_secs(15),
        "unwanted container removed",
        || async {
            (!host
                .container_names()
                .contains(&tmp.container_id.to_string()))
            .then_some(())
        },
    )
    .await;

    // --- Teardown leaves no container, no port, no rule.
    let (s, body) = client
        .send(Method::DELETE, &format!("/v1/containers/{cid}"), None)
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        host.container_names().is_empty(),
        "{:?}",
        host.container_names()
    );
    assert!(
        host.atlantis_chains().is_empty(),
        "{}",
        host.iptables_rules()
    );
    assert!(
        !host.iptables_rules().contains("-A ATLANTIS "),
        "{}",
        host.iptables_rules()
    );
    assert_eq!(
        curl(&format!("http://{ns_ip}:{hp}/")),
        None,
        "the host port is closed"
    );
    assert!(
        !host.dir.path().join("data/containers").join(&cid).exists(),
        "config removed"
    );
    let (_, h) = client.send(Method::GET, "/v1/health", None).await;
    let h: SupervisorHealth = serde_json::from_str(&h).unwrap();
    assert_eq!(h.free, h.capacity);
    let (s, _) = client
        .send(Method::DELETE, &format!("/v1/containers/{cid}"), None)
        .await;
    assert_eq!(s, 404, "a second teardown finds nothing");
    let (s, metrics) = client.send(Method::GET, "/metrics", None).await;
    assert_eq!(s, 200, "{metrics}");
    // (This supervisor process has deployed nothing itself: it adopted, removed an orphan, tore down.)
    assert!(
        metrics.contains("atlantis_supervisor_containers 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("atlantis_supervisor_transitions_total{to=\"gone\"} "),
        "{metrics}"
    );
    app.shutdown().await;
}
