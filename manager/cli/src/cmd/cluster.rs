//! Supervisors, routers, router configuration, usage.

use atlantis_common::api::manager::RouterView;
use atlantis_common::api::supervisor::SupervisorRecord;
use reqwest::Method;

use super::{Ctx, deleted, read_input};
use crate::args::{RouterConfigCmd, RouterKindArg, SectionArg};
use crate::client::seg;
use crate::error::CliError;
use crate::output::{println_safe, table};

/// `atlantis supervisors`
pub async fn supervisors(ctx: &Ctx) -> Result<i32, CliError> {
    let list: Vec<SupervisorRecord> = ctx.one()?.get("/v1/supervisors").await?;
    ctx.out.show(&list, || {
        let rows = list
            .iter()
            .map(|s| {
                vec![
                    s.host.to_string(),
                    s.zone.to_string(),
                    s.address.clone(),
                    format!("{}/{}", s.free.slots, s.capacity.slots),
                    format!("{}/{}", s.free.cpu_millis, s.capacity.cpu_millis),
                    format!("{}/{}", s.free.memory_mb, s.capacity.memory_mb),
                    s.software_version.clone(),
                ]
            })
            .collect::<Vec<_>>();
        table(
            &[
                "HOST",
                "ZONE",
                "ADDRESS",
                "FREE SLOTS",
                "FREE CPU (m)",
                "FREE MEM (MiB)",
                "VERSION",
            ],
            &rows,
            "no supervisors registered",
        );
    });
    Ok(0)
}

/// `atlantis routers`
pub async fn routers(ctx: &Ctx) -> Result<i32, CliError> {
    let list: Vec<RouterView> = ctx.one()?.get("/v1/routers").await?;
    ctx.out.show(&list, || {
        let rows = list
            .iter()
            .map(|r| {
                vec![
                    r.kind.clone(),
                    r.zone.clone(),
                    r.host.clone(),
                    r.record["address"].as_str().unwrap_or("-").to_owned(),
                ]
            })
            .collect::<Vec<_>>();
        table(
            &["KIND", "ZONE", "HOST", "ADDRESS"],
            &rows,
            "no routers registered",
        );
    });
    Ok(0)
}

fn kind(k: RouterKindArg) -> &'static str {
    match k {
        RouterKindArg::External => "external",
        RouterKindArg::Internal => "internal",
    }
}

fn section(s: SectionArg) -> &'static str {
    match s {
        SectionArg::Ports => "ports",
        SectionArg::Tries => "tries",
        SectionArg::Rules => "rules",
        SectionArg::Pools => "pools",
    }
}

/// `atlantis router-config get|put|delete ...`: documents are JSON, printed as JSON either way.
pub async fn router_config(ctx: &Ctx, cmd: RouterConfigCmd) -> Result<i32, CliError> {
    let c = ctx.one()?;
    match cmd {
        RouterConfigCmd::Get {
            kind: k,
            section: s,
            name,
        } => {
            let path = match (s, name) {
                (None, None) => format!("/v1/router-config/{}", kind(k)),
                (Some(s), None) => format!("/v1/router-config/{}/{}", kind(k), section(s)),
                (Some(s), Some(n)) => {
                    format!("/v1/router-config/{}/{}/{}", kind(k), section(s), seg(&n))
                }
                (None, Some(_)) => unreachable!("clap fills section before name"),
            };
            let v: serde_json::Value = c.get(&path).await?;
            ctx.out.print_json(&v);
        }
        RouterConfigCmd::Put {
            kind: k,
            section: s,
            name,
            file,
        } => {
            let text = read_input(&file, 1024 * 1024)?;
            let doc: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("{file}: not JSON: {e}")))?;
            let path = format!(
                "/v1/router-config/{}/{}/{}",
                kind(k),
                section(s),
                seg(&name)
            );
            let v: serde_json::Value = c.call(Method::PUT, &path, &doc).await?;
            ctx.out.print_json(&v);
        }
        RouterConfigCmd::Delete {
            kind: k,
            section: s,
            name,
        } => {
            let path = format!(
                "/v1/router-config/{}/{}/{}",
                kind(k),
                section(s),
                seg(&name)
            );
            c.call_empty::<()>(Method::DELETE, &path, None).await?;
            let what = format!("{} {} {name}", kind(k), section(s));
            ctx.out.show(&deleted("router-config", &what), || {
                println_safe(&format!("deleted {what}"));
            });
        }
    }
    Ok(0)
}

/// `atlantis usage`
pub async fn usage(ctx: &Ctx) -> Result<i32, CliError> {
    let u: serde_json::Value = ctx.one()?.get("/v1/usage").await?;
    ctx.out.show(&u, || {
        let num = |v: &serde_json::Value| v.as_u64().map_or("-".into(), |n| n.to_string());
        let hosts = u["hosts"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(h, v)| {
                        vec![
                            h.clone(),
                            v["zone"].as_str().unwrap_or("-").to_owned(),
                            format!(
                                "{}/{}",
                                num(&v["free"]["slots"]),
                                num(&v["capacity"]["slots"])
                            ),
                            format!(
                                "{}/{}",
                                num(&v["free"]["cpu_millis"]),
                                num(&v["capacity"]["cpu_millis"])
                            ),
                            format!(
                                "{}/{}",
                                num(&v["free"]["memory_mb"]),
                                num(&v["capacity"]["memory_mb"])
                            ),
                        ]
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        table(
            &[
                "HOST",
                "ZONE",
                "FREE SLOTS",
                "FREE CPU (m)",
                "FREE MEM (MiB)",
            ],
            &hosts,
            "no hosts",
        );
        for (title, key) in [("APP", "apps"), ("TEAM", "teams")] {
            let rows = u[key]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(n, v)| {
                            vec![
                                n.clone(),
                                num(&v["containers"]),
                                num(&v["cpu_millis"]),
                                num(&v["memory_mb"]),
                            ]
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            println_safe("");
            table(
                &[title, "CONTAINERS", "CPU (m)", "MEM (MiB)"],
                &rows,
                &format!("no {key} use resources"),
            );
        }
    });
    Ok(0)
}
