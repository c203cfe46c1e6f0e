//! `atlantis-registry`: serve the registry, or collect garbage in its storage.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use atlantis_registry::gc::{GcOptions, collect};
use atlantis_registry::{App, Config, Registry};

#[derive(Parser)]
#[command(
    name = "atlantis-registry",
    version,
    about = "OCI Distribution registry with filesystem and S3 storage"
)]
struct Cli {
    /// TOML config file; `ATLANTIS_REGISTRY__<KEY>__<SUBKEY>=...` environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API (the default).
    Serve,
    /// Delete blobs no tag or manifest references. Safe while the registry serves pushes (see docs).
    Gc {
        /// Report what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override the grace period in seconds (blobs written more recently are kept).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    atlantis_common::telemetry::init("atlantis-registry");
    let config: Config = atlantis_common::config::load(cli.config.as_deref(), "ATLANTIS_REGISTRY")
        .context("loading config")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = App::build(config).await?;
            let token = atlantis_common::shutdown::on_signal();
            app.serve(token).await?;
        }
        Command::Gc {
            dry_run,
            grace_secs,
        } => {
            let driver = config.storage.driver().context("opening storage")?;
            let registry = Registry::new(driver, config.limits.clone());
            let opts = GcOptions {
                dry_run,
                grace: Duration::from_secs(grace_secs.unwrap_or(config.gc.grace_secs)),
                upload_expiry: Duration::from_secs(config.gc.upload_expiry_secs),
            };
            let report = collect(&registry, &opts).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}
