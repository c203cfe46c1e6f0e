//! `atlantis-manager`: the Atlantis control API (see the library docs).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The Atlantis manager: API, tasks, placement and router config for one region.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; every key can be overridden by `ATLANTIS_MANAGER__<KEY>[__<SUB>]=value`.
    #[arg(long, env = "ATLANTIS_MANAGER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a development CA and a server and a client certificate signed by it (labs, aquarium):
    /// ca.pem, server.pem + server-key.pem (for supervisors and the manager API), client.pem +
    /// client-key.pem (for managers calling supervisors). Production CAs live outside the cluster.
    DevCa {
        /// Output directory (created; keys are written 0600).
        #[arg(long)]
        out: PathBuf,
        /// Extra names (DNS or IP) of the server certificate, besides localhost and loopback.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Prints the public key of a registry token key file (`auth.registry.key_file`; created 0600 when
    /// absent), for the registry's `[auth.token] public_key`.
    RegistryPublicKey {
        /// The key file.
        #[arg(long)]
        key_file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::RegistryPublicKey { key_file }) = &args.command {
        let key = atlantis_manager::auth::registry::public_key(key_file)
            .map_err(anyhow::Error::msg)
            .context("reading the registry key")?;
        println!("{key}");
        return Ok(());
    }
    if let Some(Command::DevCa { out, names }) = args.command {
        let files = atlantis_common::tls::dev_ca(&out, &names).context("writing the CA")?;
        println!(
            "CA {}\nserver {} {}\nclient {} {}",
            files.ca.display(),
            files.server.0.display(),
            files.server.1.display(),
            files.client.0.display(),
            files.client.1.display()
        );
        return Ok(());
    }
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
