//! `aquarium down`: stops every component (routers and manager first, the engines after removing their
//! containers), releases mounts, deletes the namespaces (and with them every iptables chain the engines
//! and supervisors made), and checks that nothing is left. Data stays unless `--purge`.

use std::path::PathBuf;
use std::time::Duration;

use crate::components::{self, Bins};
use crate::paths::DataDir;
use crate::plan::Plan;
use crate::{net, process};

/// What `down` found left over (empty when clean).
pub fn leftovers(plan: &Plan, data: &DataDir) -> Vec<String> {
    let mut left = Vec::new();
    let comps = components::all(
        plan,
        data,
        &Bins {
            dir: PathBuf::new(),
        },
    )
    .unwrap_or_default();
    for c in &comps {
        if let Some(pid) = process::running(&data.pid(&c.name), &c.marker(data)) {
            left.push(format!("{} still running (pid {pid})", c.name));
        }
        for p in &c.ports {
            if crate::up::listening(*p) {
                left.push(format!("{p} ({}) still accepts connections", c.name));
            }
        }
    }
    let ns = net::netns_list();
    for z in &plan.zones {
        if ns.contains(&z.netns) {
            left.push(format!("network namespace {} still exists", z.netns));
        }
        if net::link_exists(&z.veth_host) {
            left.push(format!("interface {} still exists", z.veth_host));
        }
    }
    for m in net::mounts_under(data.root()) {
        left.push(format!("{m} still mounted"));
    }
    left
}

/// An app.env that was deployed when the cluster went down, redeployed by the next `up`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Deployed {
    /// App.
    pub app: String,
    /// Env.
    pub env: String,
    /// The sha of its current release.
    pub sha: String,
}

/// The file listing what to redeploy.
pub fn deployed_file(data: &DataDir) -> PathBuf {
    data.root().join("deployed.json")
}

/// Tears down every deployed app through the manager (so ZooKeeper holds no instance or backend whose
/// container is about to disappear) and records them for the next `up`. Best effort: a manager that is
/// not there is reported and skipped.
async fn teardown_apps(plan: &Plan, data: &DataDir) -> anyhow::Result<Vec<Deployed>> {
    use reqwest::Method;
    let mgr = crate::client::Manager::new(plan.manager_url(), data.admin_token());
    let apps = mgr.expect(Method::GET, "/v1/apps", None, &[200]).await?;
    let envs = mgr.expect(Method::GET, "/v1/envs", None, &[200]).await?;
    let mut out = Vec::new();
    for app in apps.as_array().into_iter().flatten() {
        let Some(app) = app["name"].as_str() else {
            continue;
        };
        let mut any = false;
        for env in envs.as_array().into_iter().flatten() {
            let Some(env) = env["name"].as_str() else {
                continue;
            };
            let (s, c) = mgr
                .call(
                    Method::GET,
                    &format!("/v1/apps/{app}/envs/{env}/containers"),
                    None,
                )
                .await?;
            if s != 200 || c.as_array().is_none_or(Vec::is_empty) {
                continue;
            }
            any = true;
            if let Some(sha) = crate::sample::current_sha_in(&mgr, app, env).await? {
                out.push(Deployed {
                    app: app.into(),
                    env: env.into(),
                    sha,
                });
            }
        }
        if any {
            let v = mgr
                .expect(
                    Method::POST,
                    &format!("/v1/apps/{app}/teardown"),
                    None,
                    &[202],
                )
                .await?;
            let id = v["task_id"].as_str().unwrap_or_default().to_owned();
            let t = mgr.wait_task(&id, Duration::from_secs(120), |_| {}).await?;
            println!("{app}: torn down ({})", t["state"].as_str().unwrap_or("?"));
        }
    }
    Ok(out)
}

/// Runs `down`.
pub async fn down(data: &DataDir, purge: bool) -> anyhow::Result<()> {
    let Some(plan) = Plan::load(data)? else {
        println!("no aquarium in {}", data.root().display());
        if purge && data.root().exists() {
            anyhow::ensure!(
                net::mounts_under(data.root()).is_empty(),
                "{} has mounts; not deleting it",
                data.root().display()
            );
            std::fs::remove_dir_all(data.root())?;
        }
        return Ok(());
    };
    let comps = components::all(
        &plan,
        data,
        &Bins {
            dir: PathBuf::new(),
        },
    )?;
    match teardown_apps(&plan, data).await {
        Ok(apps) => {
            if !apps.is_empty() {
                std::fs::write(deployed_file(data), serde_json::to_vec_pretty(&apps)?)?;
            }
        }
        Err(e) => println!(
            "apps: not torn down through the manager ({e:#}); the next `up` may need `atlantis teardown` first"
        ),
    }
    for c in comps.iter().rev() {
        let Some(pid) = process::running(&data.pid(&c.name), &c.marker(data)) else {
            let _ = std::fs::remove_file(data.pid(&c.name));
            continue;
        };
        if c.name.starts_with("dockerd-") {
            let socket = components::docker_socket(data, plan_zone(&plan, &c.name));
            let n = remove_containers(&socket);
            println!("{}: removed {n} containers", c.name);
        }
        let grace = if c.name.starts_with("dockerd-") {
            20
        } else {
            10
        };
        process::stop(pid, Duration::from_secs(grace));
        let _ = std::fs::remove_file(data.pid(&c.name));
        println!("{}: stopped (pid {pid})", c.name);
    }
    for z in &plan.zones {
        // What the engine left in its namespace (containerd, shims) if it was killed.
        for pid in net::netns_pids(z) {
            process::stop(pid, Duration::from_secs(5));
        }
        let dir = data.dir(&format!("dockerd-{}", z.key));
        net::unmount_under(&dir);
        net::teardown(z);
        println!("{}: namespace and veth deleted", z.zone);
    }
    let left = leftovers(&plan, data);
    if !left.is_empty() {
        anyhow::bail!("left behind:\n  {}", left.join("\n  "));
    }
    if purge {
        std::fs::remove_dir_all(data.root())?;
        println!("purged {}", data.root().display());
    } else {
        println!(
            "down; data kept in {} (`aquarium down --purge` deletes it)",
            data.root().display()
        );
    }
    Ok(())
}

fn plan_zone<'a>(plan: &'a Plan, name: &str) -> &'a crate::plan::ZonePlan {
    plan.zones
        .iter()
        .find(|z| name.ends_with(&format!("-{}", z.key)))
        .expect("an engine belongs to a zone")
}

/// Removes every container of an engine (`docker rm -f`); returns how many.
pub fn remove_containers(socket: &std::path::Path) -> usize {
    let host = format!("unix://{}", socket.display());
    let ids = crate::net::output("docker", &["-H", &host, "ps", "-aq"]).unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return 0;
    }
    let mut args = vec!["-H", host.as_str(), "rm", "-f", "-v"];
    args.extend(ids.iter().copied());
    let _ = crate::net::run("docker", &args);
    ids.len()
}
