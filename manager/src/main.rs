//! `atlantis-manager`: the Atlantis control API (see the library docs).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// The Atlantis manager: API, tasks, placement and router config for one region.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; every key can be overridden by `ATLANTIS_MANAGER__<KEY>[__<SUB>]=value`.
    #[arg(long, env = "ATLANTIS_MANAGER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    atlantis_common::telemetry::init("atlantis-manager");
    let cfg: atlantis_manager::Config =
        atlantis_common::config::load(args.config.as_deref(), "ATLANTIS_MANAGER")
            .context("loading the configuration")?;
    let stop = atlantis_common::shutdown::on_signal();
    let app = atlantis_manager::App::build(cfg)
        .await
        .context("starting the manager")?;
    stop.cancelled().await;
    app.shutdown().await;
    Ok(())
}
