//! Helper for `bench/router.sh`: seeds a router configuration into ZooKeeper and measures how long a rule
//! change takes to route its first request.
//!
//! ```text
//! bench_tool seed    ZK ROOT PORT BACKEND RULES   # RULES host rules app<i>.bench -> pool, plus a probe rule
//! bench_tool latency ZK ROOT PORT CHANGES         # prints p50/p99/max of write -> first routed request
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use atlantis_common::zk::{Coord, RouterKind, Section, ZkConfig};
use futures::StreamExt as _;
use serde_json::json;

async fn coord(zk: &str, root: &str) -> anyhow::Result<Coord> {
    let mut cfg = ZkConfig::new(zk, "bench".parse()?);
    cfg.root = Some(root.to_owned());
    Ok(Coord::connect(cfg).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = RouterKind::External;
    match args.first().map(String::as_str) {
        Some("seed") if args.len() == 6 => {
            let (zk, root, port, backend, rules) = (
                &args[1],
                &args[2],
                args[3].parse::<u16>()?,
                &args[4],
                args[5].parse::<usize>()?,
            );
            let c = coord(zk, root).await?;
            let l = c.layout().clone();
            c.put(
                &l.router_item(kind, Section::Pools, "bench"),
                &json!({"healthz_every_ms": 5000, "slow_start_ms": 0}),
            )
            .await?;
            let _ = c
                .create_raw(&l.pool_backend(kind, "bench", backend), b"")
                .await; // may exist (re-seed)
            let names: Vec<String> = (0..rules).map(|i| format!("app{i}")).collect();
            futures::stream::iter(names.iter().enumerate())
                .map(|(i, n)| {
                    let (c, path) = (c.clone(), l.router_item(kind, Section::Rules, n));
                    async move { c.put(&path, &json!({"type": "host", "value": format!("app{i}.bench"), "pool": "bench"})).await }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            c.put(
                &l.router_item(kind, Section::Rules, "probe"),
                &json!({"type": "path-prefix", "value": "/probe-0", "pool": "bench"}),
            )
            .await?;
            let mut trie = names.clone();
            trie.push("probe".into());
            c.put(
                &l.router_item(kind, Section::Tries, "root"),
                &json!({ "rules": trie }),
            )
            .await?;
            c.put(
                &l.router_item(kind, Section::Ports, "web"),
                &json!({"port": port, "trie": "root"}),
            )
            .await?;
            println!("seeded {rules} host rules + probe on port {port}");
        }
        Some("latency") if args.len() == 5 => {
            let (zk, root, port, changes) = (
                &args[1],
                &args[2],
                args[3].parse::<u16>()?,
                args[4].parse::<usize>()?,
            );
            let c = coord(zk, root).await?;
            let path = c.layout().router_item(kind, Section::Rules, "probe");
            let http = reqwest::Client::builder().no_proxy().build()?;
            let mut lat = Vec::with_capacity(changes);
            for i in 1..=changes {
                let url = format!("http://127.0.0.1:{port}/probe-{i}");
                let t0 = Instant::now();
                c.put(&path, &json!({"type": "path-prefix", "value": format!("/probe-{i}"), "pool": "bench"})).await?;
                loop {
                    let r = http
                        .get(&url)
                        .header("host", "probe.bench")
                        .send()
                        .await
                        .context("probe request")?;
                    // Routed: the answer comes from the backend, not from the router (no x-atlantis-error).
                    if !r.headers().contains_key("x-atlantis-error") {
                        break;
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        bail!("change {i} not routed after 10 s (status {})", r.status());
                    }
                }
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            lat.sort_by(f64::total_cmp);
            let pct =
                |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
            println!(
                "change_latency_ms p50={:.2} p99={:.2} max={:.2} n={}",
                pct(0.50),
                pct(0.99),
                lat[lat.len() - 1],
                lat.len()
            );
        }
        _ => bail!(
            "usage: bench_tool seed ZK ROOT PORT BACKEND RULES | bench_tool latency ZK ROOT PORT CHANGES"
        ),
    }
    Ok(())
}
