//! `atlantis-supervisor`: the per-host container supervisor (see the library docs and docs/supervisor.md).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Runs app containers on this host for the Atlantis managers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; every key can be overridden by `ATLANTIS_SUPERVISOR__<KEY>[__<SUB>]=value`.
    #[arg(long, env = "ATLANTIS_SUPERVISOR_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    atlantis_common::telemetry::init("atlantis-supervisor");
    let cfg: atlantis_supervisor::Config =
        atlantis_common::config::load(args.config.as_deref(), "ATLANTIS_SUPERVISOR")
            .context("loading the configuration")?;
    let stop = atlantis_common::shutdown::on_signal();
    let app = atlantis_supervisor::App::build(cfg)
        .await
        .context("starting the supervisor")?;
    println!("listening on {}", app.addr);
    stop.cancelled().await;
    app.shutdown().await;
    Ok(())
}
