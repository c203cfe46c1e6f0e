//! `aquarium verify`: smoke checks, one line each, and a failure exit when any fails.
//!
//! Isolation is checked from inside a running app container: the supervisor API and the registry listen
//! on the root end of the zone's veth, which the zone's namespace itself reaches (checked as a control),
//! so only the supervisor's firewall stands between them and the container.

use std::process::{Command, Stdio};

use reqwest::Method;

use crate::client::Manager;
use crate::components;
use crate::paths::DataDir;
use crate::plan::Plan;
use crate::sample;

/// Credentials for a metrics endpoint.
enum Cred {
    None,
    Bearer(String),
    Basic(String, String),
}

/// Results so far.
#[derive(Default)]
struct Report {
    failed: usize,
    passed: usize,
}

impl Report {
    fn check(&mut self, name: &str, r: Result<String, String>) {
        match r {
            Ok(d) => {
                self.passed += 1;
                println!("ok    {name}: {d}");
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL  {name}: {e}");
            }
        }
    }
}

/// Runs every check; fails when one did.
pub async fn verify(data: &DataDir, app: &str) -> anyhow::Result<()> {
    let plan = Plan::require(data)?;
    let mut rep = Report::default();
    let http = crate::health::http_client();

    // Every component runs and is healthy (routers: with their routes loaded, 200).
    for row in crate::status::rows(&plan, data).await? {
        let r = match row.health {
            Ok(d) if row.name.starts_with("router-") && d != "200" => Err(format!("status {d}")),
            Ok(d) => Ok(format!("pid {}, {d}", row.pid.unwrap_or(0))),
            Err(e) => Err(e),
        };
        rep.check(&format!("{} healthy", row.name), r);
    }

    let mgr = Manager::new(plan.manager_url(), data.admin_token());
    let count = |path: &'static str| {
        let mgr = mgr.clone();
        async move {
            match mgr.call(Method::GET, path, None).await {
                Ok((200, v)) => Ok(v.as_array().map_or(0, Vec::len)),
                Ok((s, v)) => Err(format!("{path} answered {s}: {v}")),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let want_sup = plan.zones.len();
    rep.check(
        "supervisors registered",
        count("/v1/supervisors").await.and_then(|n| {
            (n == want_sup)
                .then(|| format!("{n} in ZooKeeper"))
                .ok_or(format!("{n}, want {want_sup}"))
        }),
    );
    let want_rt = plan.zones.len() * 2;
    rep.check(
        "routers registered",
        count("/v1/routers").await.and_then(|n| {
            (n == want_rt)
                .then(|| format!("{n} in ZooKeeper"))
                .ok_or(format!("{n}, want {want_rt}"))
        }),
    );

    // Internal routers register where their zone's containers reach them (the root end of the zone's
    // veth): the address the manager hands to apps as `ATLANTIS_DEP_<APP>`, never loopback.
    let routers = mgr.call(Method::GET, "/v1/routers", None).await;
    for z in &plan.zones {
        let want = z.host_ip.to_string();
        let r = match &routers {
            Ok((200, v)) => v
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["kind"] == "internal" && r["zone"] == z.zone.as_str())
                .map_or(
                    Err("not registered".to_owned()),
                    |r| match r["record"]["address"].as_str() {
                        Some(a) if a == want => Ok(format!("address {a}")),
                        other => Err(format!("address {other:?}, want {want}")),
                    },
                ),
            Ok((s, v)) => Err(format!("/v1/routers answered {s}: {v}")),
            Err(e) => Err(e.to_string()),
        };
        rep.check(
            &format!(
                "router-internal-{} reachable from {}'s containers",
                z.key, z.zone
            ),
            r,
        );
    }

    // The app answers through every zone's external router.
    for (i, z) in plan.zones.iter().enumerate() {
        let r = match sample::get_through_router(&http, &plan, i, app, "/").await {
            Ok((200, body)) if !body.is_empty() => Ok(format!(
                "200 from {} for {}: {:?}",
                plan.external_addr(z),
                plan.app_host(app),
                body.trim().chars().take(60).collect::<String>()
            )),
            Ok((s, body)) => Err(format!(
                "{s} {:?}",
                body.chars().take(100).collect::<String>()
            )),
            Err(e) => Err(e),
        };
        rep.check(&format!("{app} served by router-external-{}", z.key), r);
    }

    // Isolation, from a container of the app in each zone.
    for z in &plan.zones {
        let socket = components::docker_socket(data, z);
        let Some(container) = app_container(&socket, app) else {
            rep.check(
                &format!("isolation in {}", z.zone),
                Err(format!("no running {app} container to test from")),
            );
            continue;
        };
        // The supervisor API speaks mutual TLS only: reaching its port at all is the escape.
        let sup = format!("tcp://{}:{}", z.host_ip, z.supervisor_port);
        let reg = format!("http://{}/v2/", plan.registry_host());
        let zk = format!("http://{}:{}/", z.host_ip, plan.zk_port);
        for (what, url, control) in [
            ("supervisor API", &sup, true),
            ("registry", &reg, true),
            ("ZooKeeper port", &zk, false),
        ] {
            let (from_container, from_netns) = match url.strip_prefix("tcp://") {
                Some(addr) => (
                    container_connect(&socket, &container, addr),
                    control.then(|| netns_connect(&z.netns_path(), addr)),
                ),
                None => (
                    container_get(&socket, &container, url),
                    control.then(|| netns_get(&z.netns_path(), url)),
                ),
            };
            let r = match (from_container, from_netns) {
                (true, _) => Err(format!("{container} reached {url}")),
                (false, Some(false)) => Err(format!(
                    "control failed: the zone's namespace itself cannot reach {url}, so the check proves nothing"
                )),
                (false, Some(true)) => Ok(format!(
                    "{container} is refused {url} (the namespace reaches it: the firewall refuses)"
                )),
                (false, None) => Ok(format!("{container} is refused {url}")),
            };
            rep.check(&format!("isolation {}: {what}", z.zone), r);
        }
    }

    // Metrics and authentication.
    let token = std::fs::read_to_string(data.cluster_token())
        .unwrap_or_default()
        .trim()
        .to_owned();
    let admin = mgr.token();
    let puller = std::fs::read_to_string(data.registry_password("puller"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let metrics = |url: String, cred: Cred| {
        let http = http.clone();
        async move {
            let r = match cred {
                Cred::None => http.get(&url),
                Cred::Bearer(t) => http.get(&url).bearer_auth(t),
                Cred::Basic(u, p) => http.get(&url).basic_auth(u, Some(p)),
            };
            match r.send().await {
                Ok(resp) if resp.status() == 200 => {
                    let body = resp.text().await.unwrap_or_default();
                    let n = body.lines().filter(|l| !l.starts_with('#')).count();
                    if n > 0 || body.ends_with("# EOF\n") {
                        Ok(format!("{url}: {n} samples"))
                    } else {
                        Err(format!(
                            "{url}: not Prometheus text: {:?}",
                            body.chars().take(80).collect::<String>()
                        ))
                    }
                }
                Ok(resp) => Err(format!("{url} answered {}", resp.status())),
                Err(e) => Err(crate::health::error_chain(&e)),
            }
        }
    };
    rep.check(
        "manager metrics",
        metrics(
            format!("{}/metrics", plan.manager_url()),
            admin.clone().map_or(Cred::None, Cred::Bearer),
        )
        .await,
    );
    rep.check(
        "registry metrics",
        metrics(
            format!("http://{}/metrics", plan.registry_host()),
            Cred::Basic("puller".into(), puller.clone()),
        )
        .await,
    );
    for z in &plan.zones {
        for (kind, port) in [
            ("external", z.external_status_port),
            ("internal", z.internal_status_port),
        ] {
            rep.check(
                &format!("router-{kind}-{} metrics", z.key),
                metrics(format!("http://127.0.0.1:{port}/metrics"), Cred::None).await,
            );
        }
        // Mutual TLS: the manager's client certificate is the credential (the token is not used).
        let url = format!("https://{}:{}/metrics", z.host_ip, z.supervisor_port);
        rep.check(
            &format!("supervisor-{} metrics", z.key),
            metrics(url.clone(), Cred::Bearer(token.clone())).await,
        );
        let anon = match atlantis_common::tls::client_config(&data.ca_dir().join("ca.pem"), None) {
            Ok(tls) => match reqwest::Client::builder()
                .no_proxy()
                .use_preconfigured_tls(tls)
                .build()
            {
                Ok(c) => crate::health::http_status(&c, &url, Some(&token)).await,
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        rep.check(
            &format!(
                "supervisor-{} refuses a caller without the cluster certificate",
                z.key
            ),
            match anon {
                Err(e) => Ok(format!(
                    "{url} with the token but no client certificate: refused ({e})"
                )),
                Ok(s) => Err(format!("{url} without a client certificate answered {s}")),
            },
        );
    }
    match admin {
        Some(_) => {
            let r =
                crate::health::http_status(&http, &format!("{}/v1/apps", plan.manager_url()), None)
                    .await;
            rep.check(
                "manager refuses no token",
                match r {
                    Ok(401) => Ok("/v1/apps without a token: 401".into()),
                    Ok(s) => Err(format!("/v1/apps without a token answered {s}")),
                    Err(e) => Err(e),
                },
            );
        }
        None => rep.check(
            "manager admin token",
            Err(format!(
                "no admin token file at {}",
                data.admin_token().display()
            )),
        ),
    }

    println!("{} passed, {} failed", rep.passed, rep.failed);
    anyhow::ensure!(rep.failed == 0, "{} check(s) failed", rep.failed);
    Ok(())
}

fn docker(socket: &std::path::Path) -> Command {
    let mut c = Command::new("docker");
    c.arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .env_remove("DOCKER_CONTEXT")
        .stdin(Stdio::null());
    c
}

/// A running container of `app` on this engine.
fn app_container(socket: &std::path::Path, app: &str) -> Option<String> {
    let out = docker(socket)
        .args(["ps", "--format", "{{.Names}}"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|n| n.starts_with(&format!("{app}-")))
        .map(str::to_owned)
}

/// True when `wget` inside the container gets an answer (any HTTP status) from `url`.
fn container_get(socket: &std::path::Path, container: &str, url: &str) -> bool {
    docker(socket)
        .args([
            "exec",
            container,
            "wget",
            "-q",
            "-T",
            "3",
            "-O",
            "/dev/null",
            url,
        ])
        .output()
        .map(|o| answered(&o))
        .unwrap_or(false)
}

/// True when `url` answers (any HTTP status) from inside the namespace, outside any container.
fn netns_get(netns: &std::path::Path, url: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["curl", "-s", "-o", "/dev/null", "-m", "3", url])
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True when a TCP connection to `addr` (`ip:port`) opens from inside the container (busybox `nc`).
fn container_connect(socket: &std::path::Path, container: &str, addr: &str) -> bool {
    let Some((ip, port)) = addr.rsplit_once(':') else {
        return false;
    };
    docker(socket)
        .args(["exec", container, "nc", "-z", "-w", "3", ip, port])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True when a TCP connection to `addr` opens from inside the namespace (bash's `/dev/tcp`; the address
/// is passed as arguments, not spliced into the script).
fn netns_connect(netns: &std::path::Path, addr: &str) -> bool {
    let Some((ip, port)) = addr.rsplit_once(':') else {
        return false;
    };
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "timeout",
            "3",
            "bash",
            "-c",
            "exec 3<>\"/dev/tcp/$0/$1\"",
            ip,
            port,
        ])
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// wget exits 0 on 2xx; an HTTP error status ("server returned error") still means it connected.
fn answered(o: &std::process::Output) -> bool {
    o.status.success() || String::from_utf8_lossy(&o.stderr).contains("server returned error")
}
