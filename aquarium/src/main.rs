//! `aquarium`: bring a dev cluster up on this machine.

use clap::Parser;

/// Brings a complete Atlantis dev cluster up on this machine.
#[derive(Debug, Parser)]
#[command(version, about)]
enum Args {
    /// Start ZooKeeper, registry, manager, supervisors and routers, and deploy a sample app.
    Up,
    /// Stop everything `up` started.
    Down,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    atlantis_common::telemetry::init("aquarium");
    anyhow::bail!(
        "`aquarium {}` is not part of this build yet",
        format!("{args:?}").to_lowercase()
    )
}
