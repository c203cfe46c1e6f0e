//! `aquarium`: a whole Atlantis dev cluster on this machine (see docs/aquarium.md).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use atlantis_aquarium::client::Manager;
use atlantis_aquarium::paths::DataDir;
use atlantis_aquarium::plan::Plan;
use atlantis_aquarium::progress::Progress;
use atlantis_aquarium::{down, logs, sample, status, up, verify};
use clap::{Parser, Subcommand};

/// Brings a complete Atlantis dev cluster up on this machine, with a sample app served.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where state, configs, logs and pid files live (default /var/lib/atlantis-aquarium for root,
    /// else $XDG_DATA_HOME/atlantis-aquarium).
    #[arg(long, global = true, env = "AQUARIUM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install packages, build, start every component, deploy the sample app. Safe to run again.
    Up {
        /// Use the binaries in this directory instead of the workspace's target directory.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Do not run cargo (the binaries must exist).
        #[arg(long)]
        no_build: bool,
        /// Do not install missing Debian packages.
        #[arg(long)]
        no_install: bool,
        /// Build and use the debug profile instead of release.
        #[arg(long)]
        debug: bool,
        /// The workspace to build and install from.
        #[arg(long, default_value_os_t = up::default_source())]
        source: PathBuf,
        /// Address of the manager API and the first zone's external router, for a new cluster
        /// (default 127.0.0.1; a VM that forwards ports gives its own address).
        #[arg(long)]
        public_ip: Option<Ipv4Addr>,
        /// The app to build and deploy.
        #[arg(long, default_value_os_t = sample::sample_dir())]
        app_dir: PathBuf,
    },
    /// Build an app directory with the builder and deploy it (default: the sample app).
    Deploy {
        /// The app directory (holding atlantis.toml).
        #[arg(default_value_os_t = sample::sample_dir())]
        dir: PathBuf,
        /// Deploy even when this sha is already the current release.
        #[arg(long)]
        force: bool,
        /// How long new containers may take to pass their health check (the manager's default
        /// otherwise).
        #[arg(long)]
        start_timeout_ms: Option<u64>,
    },
    /// A table of components: pid, addresses, health.
    Status,
    /// Print (and follow) a component's log.
    Logs {
        /// Component name, as listed by `status`.
        component: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines of history to print.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// Smoke checks, one line each; exits non-zero when one fails.
    Verify {
        /// The app whose serving is checked.
        #[arg(long, default_value = "hello")]
        app: String,
    },
    /// Stop everything and remove namespaces and mounts; data is kept unless --purge.
    Down {
        /// Also delete the data directory.
        #[arg(long)]
        purge: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    atlantis_common::telemetry::init("aquarium");
    let data = DataDir::new(&args.data_dir.unwrap_or_else(DataDir::default_root));
    atlantis_aquarium::health::use_cluster_ca(&data.ca_dir());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.command {
        Cmd::Up {
            bin_dir,
            no_build,
            no_install,
            debug,
            source,
            public_ip,
            app_dir,
        } => rt.block_on(up::up(up::UpOptions {
            data,
            bin_dir,
            no_build,
            no_install,
            debug,
            source,
            public_ip,
            app_dir,
        })),
        Cmd::Deploy {
            dir,
            force,
            start_timeout_ms,
        } => rt.block_on(async {
            let plan = Plan::require(&data)?;
            let mgr = Manager::new(plan.manager_url(), data.admin_token());
            let p = Progress::default();
            let sha = up::deploy_dir(
                &p,
                &mgr,
                &plan,
                &data,
                &dir,
                up::Mode::Change { force },
                start_timeout_ms,
            )
            .await?;
            let app = sample::app_name(&dir)?;
            println!(
                "{app} {sha} is live at http://{}:{}/ (roll back: atlantis rollback {app} {})",
                plan.app_host(&app),
                plan.http_port,
                plan.env
            );
            Ok(())
        }),
        Cmd::Status => rt.block_on(status::status(&data)),
        Cmd::Logs {
            component,
            follow,
            lines,
        } => logs::logs(&data, &component, lines, follow),
        Cmd::Verify { app } => rt.block_on(verify::verify(&data, &app)),
        Cmd::Down { purge } => rt.block_on(down::down(&data, purge)),
    }
}
