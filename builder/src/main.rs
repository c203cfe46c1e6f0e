//! `atlantis-builder`: builds app images (see the library docs).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Builds OCI images of Atlantis apps and pushes them to the registry.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; every key can be overridden by `ATLANTIS_BUILDER__<KEY>=value`.
    #[arg(long, env = "ATLANTIS_BUILDER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    atlantis_common::telemetry::init("atlantis-builder");
    let cfg: atlantis_builder::Config =
        atlantis_common::config::load(args.config.as_deref(), "ATLANTIS_BUILDER")
            .context("loading the configuration")?;
    anyhow::bail!(
        "the build service is not part of this build yet (configured registry: {})",
        cfg.registry
    )
}
