//! Arguments of every `atlantis` subcommand (clap derive). Names are parsed into common's validated types
//! here, so a typo is refused (exit 2) before anything is sent.

use std::path::PathBuf;

use atlantis_common::{AppName, ContainerId, EnvName, RegionName, Sha, TeamName};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Atlantis: deploy and run HTTP apps on your cluster.
#[derive(Debug, Parser)]
#[command(
    name = "atlantis",
    version,
    about,
    propagate_version = true,
    after_help = "Start with `atlantis config set manager https://manager.example.com`, then \
                  `atlantis login`.\nExit codes: 0 ok, 1 refused or failed, 2 bad usage, 3 manager \
                  unreachable, 4 not logged in or not allowed, 5 bad local configuration."
)]
pub struct Cli {
    /// The manager to talk to (overrides the config file's URL of the region).
    #[arg(long, global = true, env = "ATLANTIS_MANAGER", value_name = "URL")]
    pub manager: Option<String>,
    /// Regions to act on (repeatable); default: the config's default region.
    #[arg(
        short = 'R',
        long = "region",
        global = true,
        env = "ATLANTIS_REGION",
        value_delimiter = ','
    )]
    pub regions: Vec<RegionName>,
    /// Read the session token from this file (instead of ATLANTIS_TOKEN or the stored token).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Machine-readable JSON output instead of human text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Manifest overrides of a deploy.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Containers per zone.
    #[arg(long)]
    pub instances: Option<u32>,
    /// CPU per container, thousandths of a core.
    #[arg(long, value_name = "MILLICORES")]
    pub cpu: Option<u32>,
    /// Memory per container, MiB.
    #[arg(long, value_name = "MIB")]
    pub mem: Option<u64>,
    /// The HTTP port inside the container.
    #[arg(long)]
    pub port: Option<u16>,
    /// Health check path.
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// Seconds allowed from start to a passing health check.
    #[arg(long, value_name = "SECONDS")]
    pub start_timeout: Option<u64>,
    /// Extra environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env_vars: Vec<String>,
}

/// Whether to follow a task.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct Wait {
    /// Return once the task is accepted (print its ID) instead of following it to the end.
    #[arg(long)]
    pub no_wait: bool,
    /// Follow the task to its end (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
}

/// Router kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RouterKindArg {
    /// Routers facing clients.
    External,
    /// Routers serving apps to each other.
    Internal,
}

/// Router config sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SectionArg {
    /// TCP ports.
    Ports,
    /// Tries (ordered rule lists).
    Tries,
    /// Rules.
    Rules,
    /// Pools of backends.
    Pools,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Out of the pool.
    On,
    /// Back in the pool.
    Off,
}

/// `atlantis config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Set a value: `manager URL` (of the -R region, or of the default region) or `default-region R`.
    #[command(
        after_help = "Examples:\n  atlantis config set manager https://manager.us-east.example.com -R us-east\n  atlantis config set default-region us-east"
    )]
    Set {
        /// `manager` or `default-region`.
        key: ConfigKey,
        /// The value.
        value: String,
    },
    /// Print the configuration in effect (files, regions, URLs, where the token comes from).
    #[command(after_help = "Example:\n  atlantis config show")]
    Show,
}

/// Keys of `atlantis config set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigKey {
    /// The manager URL of a region.
    Manager,
    /// The region used without -R.
    DefaultRegion,
}

/// `atlantis router-config ...`
#[derive(Debug, Subcommand)]
pub enum RouterConfigCmd {
    /// Print a kind's whole config, one section, or one document.
    #[command(
        after_help = "Examples:\n  atlantis router-config get external\n  atlantis router-config get external pools\n  atlantis router-config get external rules hello-rule"
    )]
    Get {
        /// internal or external.
        kind: RouterKindArg,
        /// ports, tries, rules or pools.
        section: Option<SectionArg>,
        /// The document's name.
        name: Option<String>,
    },
    /// Store a document (JSON, from a file or `-` for stdin); prints the stored form.
    #[command(
        after_help = "Example:\n  echo '{\"port\":49200,\"trie\":\"hello.prod\"}' | atlantis router-config put internal ports p49200 -f -"
    )]
    Put {
        /// internal or external.
        kind: RouterKindArg,
        /// ports, tries, rules or pools.
        section: SectionArg,
        /// The document's name.
        name: String,
        /// The JSON document; `-` reads stdin.
        #[arg(short, long, value_name = "FILE")]
        file: String,
    },
    /// Delete a document.
    #[command(after_help = "Example:\n  atlantis router-config delete external rules old-rule")]
    Delete {
        /// internal or external.
        kind: RouterKindArg,
        /// ports, tries, rules or pools.
        section: SectionArg,
        /// The document's name.
        name: String,
    },
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the client's config file.
    #[command(subcommand)]
    Config(ConfigCmd),

    /// Log in (LDAP credentials) and store the session token (mode 0600).
    #[command(
        after_help = "Examples:\n  atlantis login --user alice\n  pass show ldap | atlantis login --user alice --password-stdin"
    )]
    Login {
        /// User name; default: $USER.
        #[arg(long)]
        user: Option<String>,
        /// Read the password from the first line of stdin instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the stored session token.
    #[command(after_help = "Example:\n  atlantis logout")]
    Logout,
    /// Who the manager thinks you are.
    #[command(after_help = "Example:\n  atlantis whoami")]
    Whoami,

    /// List registered apps.
    #[command(
        visible_alias = "list-apps",
        after_help = "Example:\n  atlantis apps --json | jq -r '.[].name'"
    )]
    Apps,
    /// Show one app.
    #[command(
        visible_alias = "get-app",
        after_help = "Example:\n  atlantis show hello"
    )]
    Show {
        /// App name.
        app: AppName,
    },
    /// Register an app.
    #[command(
        after_help = "Example:\n  atlantis register-app hello --repo https://git.example.com/hello.git --team web"
    )]
    RegisterApp {
        /// App name.
        app: AppName,
        #[command(flatten)]
        spec: AppFields,
    },
    /// Change an app's registration (only the given fields change).
    #[command(after_help = "Example:\n  atlantis update-app hello --team platform --dep postgres")]
    UpdateApp {
        /// App name.
        app: AppName,
        #[command(flatten)]
        spec: AppFields,
        /// Serve it on the public routers again.
        #[arg(long, conflicts_with = "internal")]
        external: bool,
        /// Drop every dependency (before adding --dep ones).
        #[arg(long)]
        clear_deps: bool,
    },
    /// Unregister an app (refused while it is deployed).
    #[command(after_help = "Example:\n  atlantis unregister-app hello")]
    UnregisterApp {
        /// App name.
        app: AppName,
    },

    /// List environments.
    #[command(visible_alias = "list-envs", after_help = "Example:\n  atlantis envs")]
    Envs,
    /// Create an environment.
    #[command(
        after_help = "Example:\n  atlantis create-env staging --description 'pre-production'"
    )]
    CreateEnv {
        /// Env name.
        env: EnvName,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete an environment (refused while in use).
    #[command(after_help = "Example:\n  atlantis delete-env staging")]
    DeleteEnv {
        /// Env name.
        env: EnvName,
    },

    /// List dependencies (variable names only, never values).
    #[command(
        visible_alias = "deps",
        after_help = "Example:\n  atlantis dependencies"
    )]
    Dependencies,
    /// Show one dependency.
    #[command(after_help = "Example:\n  atlantis show-dependency postgres")]
    ShowDependency {
        /// Dependency name.
        name: AppName,
    },
    /// Create or replace a dependency: data its users receive, addresses they may reach.
    #[command(
        after_help = "Example:\n  atlantis set-dependency postgres --data-file pg.env --endpoint 10.0.0.5:5432 --team data"
    )]
    SetDependency {
        /// Dependency name.
        name: AppName,
        /// Owning team.
        #[arg(long)]
        team: Option<TeamName>,
        /// A file of KEY=VALUE lines (values stay out of the shell history); `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        data_file: Option<String>,
        /// An address its users may reach (repeatable).
        #[arg(long, value_name = "IP:PORT")]
        endpoint: Vec<String>,
    },
    /// Delete a dependency (refused while an app declares it).
    #[command(after_help = "Example:\n  atlantis delete-dependency postgres")]
    DeleteDependency {
        /// Dependency name.
        name: AppName,
    },

    /// Ask a dependency's owning team to grant it to an app (needed before the app declares it).
    #[command(
        after_help = "Example:\n  atlantis request-dependency b-db --app web --reason 'orders read the B database'"
    )]
    RequestDependency {
        /// Dependency name.
        dependency: AppName,
        /// The app that needs it.
        #[arg(long)]
        app: AppName,
        /// Why (shown to the owning team).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Pending dependency requests: those asked of your teams and those your apps made.
    #[command(after_help = "Example:\n  atlantis dependency-requests")]
    DependencyRequests,
    /// Grant a dependency your team owns to an app (superusers: any dependency).
    #[command(after_help = "Example:\n  atlantis grant-dependency b-db --app web")]
    GrantDependency {
        /// Dependency name.
        dependency: AppName,
        /// The app granted it.
        #[arg(long)]
        app: AppName,
    },
    /// Take a grant back: the app's running containers are replaced without the dependency.
    #[command(after_help = "Example:\n  atlantis revoke-dependency b-db --app web")]
    RevokeDependency {
        /// Dependency name.
        dependency: AppName,
        /// The app that loses it.
        #[arg(long)]
        app: AppName,
    },
    /// The apps a dependency is granted to.
    #[command(after_help = "Example:\n  atlantis dependency-grants b-db")]
    DependencyGrants {
        /// Dependency name.
        dependency: AppName,
    },

    /// Deploy a commit of an app to an environment (a task; follows it by default).
    #[command(
        after_help = "Examples:\n  atlantis deploy hello 1a2b3c4 prod\n  atlantis deploy hello 1a2b3c4 prod --instances 3 -R us-east -R eu-west\n  atlantis deploy hello 1a2b3c4 prod --no-wait --json | jq -r .task_id"
    )]
    Deploy {
        /// App name.
        app: AppName,
        /// Commit to deploy (its image is apps/<app>:<sha>).
        sha: Sha,
        /// Environment.
        env: EnvName,
        #[command(flatten)]
        overrides: Overrides,
        #[command(flatten)]
        wait: Wait,
    },
    /// List the releases of an app in an environment, newest first.
    #[command(after_help = "Example:\n  atlantis releases hello prod")]
    Releases {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
    },
    /// Redeploy an earlier release (default: the one before the current).
    #[command(
        after_help = "Examples:\n  atlantis rollback hello prod\n  atlantis rollback hello prod --to 3"
    )]
    Rollback {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
        /// Release number.
        #[arg(long)]
        to: Option<i64>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Change the number of containers per zone of the current release.
    #[command(after_help = "Example:\n  atlantis scale hello prod --instances 3")]
    Scale {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
        /// Containers per zone.
        #[arg(long)]
        instances: u32,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop and remove an app's containers: of one env, of every env, or one container.
    #[command(
        after_help = "Examples:\n  atlantis teardown hello prod\n  atlantis teardown hello\n  atlantis teardown --container hello-1a2b3c4-prod-x7k2m9"
    )]
    Teardown {
        /// App name.
        #[arg(required_unless_present = "container")]
        app: Option<AppName>,
        /// Environment; default: every env.
        env: Option<EnvName>,
        /// Only this container.
        #[arg(long, conflicts_with_all = ["app", "env"])]
        container: Option<ContainerId>,
        #[command(flatten)]
        wait: Wait,
    },

    /// Cluster overview, or an app's releases and containers per env.
    #[command(after_help = "Examples:\n  atlantis status\n  atlantis status hello")]
    Status {
        /// App name.
        app: Option<AppName>,
    },
    /// List containers (of an app, of an app in one env, or all).
    #[command(visible_aliases = ["containers", "list-containers"], after_help = "Examples:\n  atlantis ps\n  atlantis ps hello prod")]
    Ps {
        /// App name.
        app: Option<AppName>,
        /// Environment.
        env: Option<EnvName>,
    },
    /// Show one container.
    #[command(
        visible_alias = "get-container",
        after_help = "Example:\n  atlantis container hello-1a2b3c4-prod-x7k2m9"
    )]
    Container {
        /// Container ID.
        id: ContainerId,
    },
    /// Print (or follow) the output of an app's containers.
    #[command(
        after_help = "Examples:\n  atlantis logs hello prod\n  atlantis logs hello prod -f --container hello-1a2b3c4-prod-x7k2m9"
    )]
    Logs {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
        /// Keep printing while the containers run.
        #[arg(short, long)]
        follow: bool,
        /// Only this container.
        #[arg(long)]
        container: Option<ContainerId>,
        /// Lines of history per container (at most 10000).
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Take a container out of its pool (on) or put it back (off); it keeps running.
    #[command(after_help = "Example:\n  atlantis maintenance on hello-1a2b3c4-prod-x7k2m9")]
    Maintenance {
        /// on or off.
        state: OnOff,
        /// Container ID.
        container: ContainerId,
    },
    /// Run a command in a container of an app (argv as given, no shell); exits with its exit code.
    #[command(
        after_help = "Examples:\n  atlantis exec hello prod -- ls -l /\n  atlantis exec hello prod --container hello-1a2b3c4-prod-x7k2m9 --timeout 60 -- cat /etc/hostname"
    )]
    Exec {
        /// App name.
        app: AppName,
        /// Environment.
        env: EnvName,
        /// The container; default: the first serving one.
        #[arg(long)]
        container: Option<ContainerId>,
        /// Seconds before the command is killed (at most 3600).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },

    /// List supervisors with their capacity and free resources.
    #[command(
        visible_alias = "list-supervisors",
        after_help = "Example:\n  atlantis supervisors"
    )]
    Supervisors,
    /// List routers.
    #[command(
        visible_alias = "list-routers",
        after_help = "Example:\n  atlantis routers"
    )]
    Routers,
    /// Read or change the routers' configuration.
    #[command(subcommand)]
    RouterConfig(RouterConfigCmd),
    /// CPU and memory reserved per host, app and team.
    #[command(after_help = "Example:\n  atlantis usage")]
    Usage,

    /// List finished tasks, newest first.
    #[command(
        visible_alias = "list-tasks",
        after_help = "Example:\n  atlantis tasks --app hello --limit 5"
    )]
    Tasks {
        /// Only this app's.
        #[arg(long)]
        app: Option<AppName>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a task; with --wait, follow it to its end.
    #[command(
        visible_alias = "result",
        after_help = "Examples:\n  atlantis task 5f0c8d...\n  atlantis task 5f0c8d... --wait"
    )]
    Task {
        /// Task ID.
        id: String,
        /// Follow it to its end.
        #[arg(long)]
        wait: bool,
    },

    /// List teams (with their apps, when the manager knows them).
    #[command(
        visible_alias = "list-teams",
        after_help = "Example:\n  atlantis teams"
    )]
    Teams,
    /// List the apps a team may act on.
    #[command(
        visible_alias = "list-team-apps",
        after_help = "Example:\n  atlantis team-apps web"
    )]
    TeamApps {
        /// Team.
        team: TeamName,
    },
    /// Let a team act on an app.
    #[command(after_help = "Example:\n  atlantis allow-app web hello")]
    AllowApp {
        /// Team.
        team: TeamName,
        /// App name.
        app: AppName,
    },
    /// Stop a team from acting on an app.
    #[command(after_help = "Example:\n  atlantis disallow-app web hello")]
    DisallowApp {
        /// Team.
        team: TeamName,
        /// App name.
        app: AppName,
    },
    /// Who did what: the manager's audit log.
    #[command(
        after_help = "Examples:\n  atlantis audit --app hello --since 2h\n  atlantis audit --user alice --limit 20 --json"
    )]
    Audit {
        /// Only this app.
        #[arg(long)]
        app: Option<AppName>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only newer entries: a duration back from now (`90s`, `30m`, `2h`, `7d`) or ms since the epoch.
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },

    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  atlantis completions bash > /etc/bash_completion.d/atlantis"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Fields of an app registration.
#[derive(Debug, Clone, Default, Args)]
pub struct AppFields {
    /// Source repository.
    #[arg(long)]
    pub repo: Option<String>,
    /// The app's directory inside the repository.
    #[arg(long)]
    pub root: Option<String>,
    /// Owning team.
    #[arg(long)]
    pub team: Option<TeamName>,
    /// Served only inside the cluster (by the internal routers).
    #[arg(long)]
    pub internal: bool,
    /// A dependency its containers receive (repeatable).
    #[arg(long = "dep", value_name = "NAME")]
    pub deps: Vec<AppName>,
}

impl Wait {
    /// Whether to follow the task.
    pub fn follow(self) -> bool {
        !self.no_wait
    }
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
            "--env",
            "A=b",
            "-R",
            "us-east",
            "-R",
            "eu-west",
            "--no-wait",
        ])
        .unwrap();
        match cli.command {
            Command::Deploy {
                app,
                sha,
                env,
                overrides,
                wait,
            } => {
                assert_eq!(
                    (app.as_str(), sha.as_str(), env.as_str()),
                    ("hello", "1a2b3c4", "prod")
                );
                assert_eq!(overrides.instances, Some(2));
                assert_eq!(overrides.env_vars, vec!["A=b".to_owned()]);
                assert!(!wait.follow());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cli.regions.len(), 2);
    }

    #[test]
    fn exec_takes_the_command_after_two_dashes() {
        let cli = Cli::try_parse_from([
            "atlantis",
            "exec",
            "hello",
            "prod",
            "--",
            "sh",
            "-c",
            "echo $HOME",
        ])
        .unwrap();
        match cli.command {
            Command::Exec { command, .. } => assert_eq!(command, ["sh", "-c", "echo $HOME"]),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["atlantis", "exec", "hello", "prod"]).is_err());
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
    fn every_command_has_an_example() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            let leaves: Vec<&clap::Command> = if sub.has_subcommands() {
                sub.get_subcommands().collect()
            } else {
                vec![sub]
            };
            for c in leaves {
                let help = c
                    .get_after_help()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                assert!(
                    help.contains("atlantis "),
                    "{} has no example in its help",
                    c.get_name()
                );
            }
        }
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
