//! Arguments of every `atlantis` subcommand (clap derive).

use atlantis_common::{AppName, EnvName, RegionName, Sha, TeamName};
use clap::{Parser, Subcommand};

/// Atlantis: deploy and run HTTP apps on your cluster.
#[derive(Debug, Parser)]
#[command(name = "atlantis", version, about, propagate_version = true)]
pub struct Cli {
    /// The manager to talk to.
    #[arg(
        long,
        global = true,
        env = "ATLANTIS_MANAGER",
        default_value = "http://127.0.0.1:7700"
    )]
    pub manager: String,
    /// Regions to act on (repeatable); default: the manager's own region.
    #[arg(short = 'R', long = "region", global = true)]
    pub regions: Vec<RegionName>,
    /// Machine-readable JSON output instead of human text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Resources per container.
#[derive(Debug, Clone, clap::Args)]
pub struct Resources {
    /// Instances per zone.
    #[arg(long)]
    pub instances: Option<u32>,
    /// CPU shares, in thousandths of a core.
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Memory limit in MiB.
    #[arg(long)]
    pub mem: Option<u32>,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in (LDAP credentials) and store a session token.
    Login {
        /// User name; asked for when omitted.
        #[arg(long)]
        user: Option<String>,
    },
    /// Register an app.
    RegisterApp {
        /// App name.
        app: AppName,
        /// Source repository.
        #[arg(long)]
        repo: String,
        /// Owning team.
        #[arg(long)]
        team: TeamName,
        /// Served only inside the cluster.
        #[arg(long)]
        internal: bool,
    },
    /// Deploy a sha of an app to an environment.
    Deploy {
        /// App name.
        app: AppName,
        /// Commit to deploy.
        sha: Sha,
        /// Environment.
        env: EnvName,
        #[command(flatten)]
        resources: Resources,
        /// Wait until the deploy has finished.
        #[arg(long)]
        wait: bool,
    },
    /// Redeploy an earlier release.
    Rollback {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
        /// Release number; default: the one before the current.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Change the instances or resources of the current release.
    Scale {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
        #[command(flatten)]
        resources: Resources,
    },
    /// Stop and remove every container of an app (or of one environment).
    Teardown {
        /// App name.
        app: AppName,
        /// Environment; default: all.
        env: Option<EnvName>,
    },
    /// List the releases of an app in an environment.
    Releases {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
    },
    /// List apps.
    ListApps,
    /// List containers.
    ListContainers {
        /// Only this app.
        app: Option<AppName>,
    },
    /// List supervisors.
    ListSupervisors,
    /// Show or follow an app's logs.
    Logs {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
        /// Follow.
        #[arg(short, long)]
        follow: bool,
    },
    /// Let one app depend on another.
    AllowApp {
        /// The app that may be called.
        app: AppName,
        /// The app allowed to call it.
        dependant: AppName,
    },
    /// List teams and their apps.
    Teams,
    /// Show the cluster's status.
    Status,
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parses_a_deploy() {
        let cli = Cli::try_parse_from([
            "atlantis",
            "deploy",
            "hello",
            "1a2b3c4",
            "prod",
            "--instances",
            "2",
            "-R",
            "us-east",
        ])
        .unwrap();
        match cli.command {
            Command::Deploy {
                app,
                sha,
                env,
                resources,
                wait,
            } => {
                assert_eq!(
                    (app.as_str(), sha.as_str(), env.as_str()),
                    ("hello", "1a2b3c4", "prod")
                );
                assert_eq!(resources.instances, Some(2));
                assert!(!wait);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cli.regions.len(), 1);
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        let e = Cli::try_parse_from(["atlantis", "deploy", "Hello", "1a2b3c4", "prod"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid app name \"Hello\""), "{e}");
        let e = Cli::try_parse_from(["atlantis", "deploy", "hello", "xyz", "prod"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid sha"), "{e}");
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
