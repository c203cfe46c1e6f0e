//! Running a parsed command: which manager(s) to talk to, with which token, then the command itself.

mod apps;
mod auth;
mod cluster;
mod containers;
mod grants;
mod releases;

use std::path::PathBuf;

use atlantis_common::RegionName;

use crate::args::{Cli, Command};
use crate::client::{Client, warn_plaintext};
use crate::config::{FileConfig, config_path, read_token, token_path};
use crate::error::CliError;
use crate::output::Out;

/// One manager to act on.
pub struct Target {
    /// Its region, when it was chosen by region.
    pub region: Option<RegionName>,
    /// Its client.
    pub client: Client,
}

impl Target {
    /// `[region] ` when several regions are acted on, else nothing.
    pub fn prefix(&self, many: bool) -> String {
        match (&self.region, many) {
            (Some(r), true) => format!("[{r}] "),
            _ => String::new(),
        }
    }
}

/// Everything a command needs.
pub struct Ctx {
    /// Output settings.
    pub out: Out,
    /// The managers, one per region.
    pub targets: Vec<Target>,
}

impl Ctx {
    /// The one manager of a single-region command.
    pub fn one(&self) -> Result<&Client, CliError> {
        match self.targets.as_slice() {
            [t] => Ok(&t.client),
            _ => Err(CliError::Usage(
                "this command acts on one region: pass a single -R".into(),
            )),
        }
    }
}

/// Where the session token comes from (first found): `--token-file`, `ATLANTIS_TOKEN`, the stored file.
pub fn token(token_file: Option<&PathBuf>) -> Result<(Option<String>, String), CliError> {
    if let Some(f) = token_file {
        return match read_token(f)? {
            Some(t) => Ok((Some(t), format!("--token-file {}", f.display()))),
            None => Err(CliError::Config(format!(
                "token file {} does not exist or is empty",
                f.display()
            ))),
        };
    }
    if let Ok(t) = std::env::var("ATLANTIS_TOKEN") {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok((Some(t), "ATLANTIS_TOKEN".into()));
        }
    }
    let p = token_path()?;
    Ok(match read_token(&p)? {
        Some(t) => (Some(t), p.display().to_string()),
        None => (None, "none (run atlantis login)".into()),
    })
}

/// The managers to talk to: `-R` regions (else the default region) looked up in the config file, or
/// `--manager`/`ATLANTIS_MANAGER`.
pub fn targets(cli: &Cli, cfg: &FileConfig) -> Result<Vec<(Option<RegionName>, String)>, CliError> {
    let regions: Vec<RegionName> = if cli.regions.is_empty() {
        cfg.default_region.clone().into_iter().collect()
    } else {
        let mut r = cli.regions.clone();
        r.dedup();
        r
    };
    let hint =
        "run `atlantis config set manager URL` (or pass --manager URL, or set ATLANTIS_MANAGER)";
    if let Some(url) = &cli.manager {
        if regions.len() > 1 {
            return Err(CliError::Usage(
                "--manager names one manager; for several regions set each one's URL with \
                 `atlantis config set manager URL -R REGION`"
                    .into(),
            ));
        }
        return Ok(vec![(regions.into_iter().next(), url.clone())]);
    }
    if regions.is_empty() {
        // One configured region needs no default.
        if let (1, Some((r, c))) = (cfg.regions.len(), cfg.regions.iter().next()) {
            return Ok(vec![(Some(r.clone()), c.manager.clone())]);
        }
        return Err(CliError::Config(format!("no manager configured: {hint}")));
    }
    regions
        .into_iter()
        .map(|r| match cfg.regions.get(&r) {
            Some(c) => Ok((Some(r), c.manager.clone())),
            None => Err(CliError::Config(format!(
                "no manager configured for region {r}: run `atlantis config set manager URL -R {r}`"
            ))),
        })
        .collect()
}

/// Runs a command; `Ok(code)` is the exit code (0, or the command's own for `exec`).
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    let out = Out::detect(cli.json);
    let cfg_path = config_path()?;
    match &cli.command {
        Command::Completions { .. } => return Ok(0),
        Command::Config(c) => return auth::config(c, &cli, &cfg_path, out).map(|()| 0),
        Command::Logout => return auth::logout(out).map(|()| 0),
        _ => {}
    }
    let cfg = FileConfig::load(&cfg_path)?;
    let (tok, _) = token(cli.token_file.as_ref())?;
    let mut list = Vec::new();
    for (region, url) in targets(&cli, &cfg)? {
        let client = Client::new(&url, tok.clone())?;
        warn_plaintext(client.base(), tok.is_some());
        list.push(Target { region, client });
    }
    let ctx = Ctx { out, targets: list };
    dispatch(&ctx, cli.command).await
}

async fn dispatch(ctx: &Ctx, command: Command) -> Result<i32, CliError> {
    use Command as C;
    match command {
        C::Config(_) | C::Logout | C::Completions { .. } => Ok(0),
        C::Login {
            user,
            password_stdin,
        } => auth::login(ctx, user, password_stdin).await,
        C::Whoami => auth::whoami(ctx).await,
        C::Teams => auth::teams(ctx).await,
        C::TeamApps { team } => auth::team_apps(ctx, &team).await,
        C::AllowApp { team, app } => auth::allow(ctx, &team, &app, true).await,
        C::DisallowApp { team, app } => auth::allow(ctx, &team, &app, false).await,
        C::Audit {
            app,
            user,
            since,
            limit,
        } => auth::audit(ctx, app, user, since, limit).await,
        C::Apps => apps::list(ctx).await,
        C::Show { app } => apps::show(ctx, &app).await,
        C::RegisterApp { app, spec } => apps::register(ctx, app, spec).await,
        C::UpdateApp {
            app,
            spec,
            external,
            clear_deps,
        } => apps::update(ctx, app, spec, external, clear_deps).await,
        C::UnregisterApp { app } => apps::unregister(ctx, &app).await,
        C::Envs => apps::envs(ctx).await,
        C::CreateEnv { env, description } => apps::create_env(ctx, env, description).await,
        C::DeleteEnv { env } => apps::delete_env(ctx, &env).await,
        C::Dependencies => apps::dependencies(ctx).await,
        C::ShowDependency { name } => apps::show_dependency(ctx, &name).await,
        C::SetDependency {
            name,
            team,
            data_file,
            endpoint,
        } => apps::set_dependency(ctx, &name, team, data_file, endpoint).await,
        C::DeleteDependency { name } => apps::delete_dependency(ctx, &name).await,
        C::RequestDependency {
            dependency,
            app,
            reason,
        } => grants::request(ctx, &dependency, &app, reason).await,
        C::DependencyRequests => grants::requests(ctx).await,
        C::GrantDependency { dependency, app } => grants::grant(ctx, &dependency, &app).await,
        C::RevokeDependency { dependency, app } => grants::revoke(ctx, &dependency, &app).await,
        C::DependencyGrants { dependency } => grants::grants(ctx, &dependency).await,
        C::Deploy {
            app,
            sha,
            env,
            overrides,
            wait,
        } => releases::deploy(ctx, &app, sha, &env, &overrides, wait).await,
        C::Releases { app, env } => releases::releases(ctx, &app, &env).await,
        C::Rollback { app, env, to, wait } => releases::rollback(ctx, &app, &env, to, wait).await,
        C::Scale {
            app,
            env,
            instances,
            wait,
        } => releases::scale(ctx, &app, &env, instances, wait).await,
        C::Teardown {
            app,
            env,
            container,
            wait,
        } => releases::teardown(ctx, app, env, container, wait).await,
        C::Tasks { app, limit } => releases::tasks(ctx, app, limit).await,
        C::Task { id, wait } => releases::task(ctx, &id, wait).await,
        C::Status { app } => containers::status(ctx, app).await,
        C::Ps { app, env } => containers::ps(ctx, app, env).await,
        C::Container { id } => containers::container(ctx, &id).await,
        C::Logs {
            app,
            env,
            follow,
            container,
            tail,
        } => containers::logs(ctx, &app, &env, follow, container, tail).await,
        C::Maintenance { state, container } => {
            containers::maintenance(ctx, state, &container).await
        }
        C::Exec {
            app,
            env,
            container,
            timeout,
            command,
        } => containers::exec(ctx, &app, &env, container, timeout, command).await,
        C::Supervisors => cluster::supervisors(ctx).await,
        C::Routers => cluster::routers(ctx).await,
        C::RouterConfig(c) => cluster::router_config(ctx, c).await,
        C::Usage => cluster::usage(ctx).await,
    }
}

/// A JSON document for a deletion: `{"deleted": {"kind", "name"}}`.
pub fn deleted(kind: &str, name: &str) -> serde_json::Value {
    serde_json::json!({"deleted": {"kind": kind, "name": name}})
}

/// Reads a file (or stdin for `-`), at most `max` bytes.
pub fn read_input(path: &str, max: u64) -> Result<String, CliError> {
    use std::io::Read as _;
    let mut s = String::new();
    let r = if path == "-" {
        std::io::stdin().take(max + 1).read_to_string(&mut s)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(max + 1).read_to_string(&mut s))
    };
    r.map_err(|e| CliError::Usage(format!("{path}: {e}")))?;
    if s.len() as u64 > max {
        return Err(CliError::Usage(format!("{path}: larger than {max} bytes")));
    }
    Ok(s)
}
