//! `aquarium status`: a table of components with their pid, addresses and health.

use crate::components::{self, Bins};
use crate::paths::DataDir;
use crate::plan::Plan;
use crate::{net, process};

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Component.
    pub name: String,
    /// Pid when running.
    pub pid: Option<u32>,
    /// Addresses.
    pub ports: String,
    /// Health: `ok ...`, `down`, or `unhealthy: ...`.
    pub health: Result<String, String>,
}

/// Probes every component.
pub async fn rows(plan: &Plan, data: &DataDir) -> anyhow::Result<Vec<Row>> {
    let http = crate::health::http_client();
    let comps = components::all(
        plan,
        data,
        &Bins {
            dir: Default::default(),
        },
    )?;
    let mut out = Vec::new();
    for c in &comps {
        let pid = process::running(&data.pid(&c.name), &c.marker(data));
        let health = match pid {
            None => Err("down".to_owned()),
            Some(_) => c.health.probe(&http).await,
        };
        let ports: Vec<String> = c.ports.iter().map(ToString::to_string).collect();
        out.push(Row {
            name: c.name.clone(),
            pid,
            ports: if ports.is_empty() {
                "unix socket".to_owned()
            } else {
                ports.join(" ")
            },
            health,
        });
    }
    Ok(out)
}

/// Prints the table.
pub async fn status(data: &DataDir) -> anyhow::Result<()> {
    let plan = Plan::require(data)?;
    let rows = rows(&plan, data).await?;
    println!("{:<20} {:>8}  {:<40} HEALTH", "COMPONENT", "PID", "LISTENS");
    for r in &rows {
        let health = match &r.health {
            Ok(d) => format!("ok ({d})"),
            Err(e) if e == "down" => "down".to_owned(),
            Err(e) => format!("unhealthy: {e}"),
        };
        println!(
            "{:<20} {:>8}  {:<40} {health}",
            r.name,
            r.pid.map_or("-".to_owned(), |p| p.to_string()),
            r.ports
        );
    }
    let ns = net::netns_list();
    for z in &plan.zones {
        println!(
            "{:<20} {:>8}  {:<40} {}",
            format!("netns {}", z.key),
            "-",
            format!("{} <-> {}", z.host_ip, z.ns_ip),
            if ns.contains(&z.netns) {
                format!("present ({})", z.netns)
            } else {
                "absent".into()
            }
        );
    }
    println!();
    println!(
        "manager {}   apps http://<app>.{}.{}:{}/   data {}",
        plan.manager_url(),
        plan.env,
        plan.domain,
        plan.http_port,
        data.root().display()
    );
    Ok(())
}
