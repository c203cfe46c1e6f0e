//! `atlantis-router`: loads the config, connects to ZooKeeper and serves until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use atlantis_common::{HostName, ZoneName};
use atlantis_router::config::Config;
use atlantis_router::source::ZkSource;
use clap::Parser;

/// mimalloc: fewer cycles per request than glibc malloc on the proxy path (measured by bench/router.sh).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Atlantis HTTP router.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (TOML); values can be overridden with ATLANTIS_ROUTER__KEY[__SUBKEY]=value.
    #[arg(long, env = "ATLANTIS_ROUTER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    atlantis_common::telemetry::init("atlantis-router");
    let cfg: Config = atlantis_common::config::load(args.config.as_deref(), "ATLANTIS_ROUTER")
        .context("loading config")?;
    cfg.validate()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The control plane (ZooKeeper, compiler, health checks, status) is light: one thread. Requests are
    // served by `workers` threads of their own (0: one per core).
    let mut rt = tokio::runtime::Builder::new_current_thread();
    rt.enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let zk = cfg
        .zookeeper
        .clone()
        .context("config needs a [zookeeper] section (servers, region)")?;
    let kind = cfg.router_kind()?;
    let zone: ZoneName = cfg.zone.parse()?;
    let host: HostName = cfg.host_name().parse().context("router host name")?;
    let shutdown = atlantis_common::shutdown::on_signal();
    let registration = cfg.registration(host.as_str(), zone.as_str(), cfg.status_addr);
    let source = Arc::new(ZkSource::new(zk, kind, zone, host, registration));
    let app = atlantis_router::App::build(cfg, source).await?;
    tracing::info!(status = %app.status_addr(), "Router started.");
    let (_handle, task) = app.spawn(shutdown);
    task.await.context("router task")?;
    Ok(())
}
