//! The client's config, login/logout/whoami, teams and the audit log.

use std::io::BufRead as _;
use std::path::Path;

use atlantis_common::{AppName, TeamName};
use reqwest::Method;
use serde::Deserialize;

use super::{Ctx, token};
use crate::args::{Cli, ConfigCmd, ConfigKey};
use crate::client::{check_url, seg};
use crate::config::{FileConfig, RegionConfig, token_path, write_private};
use crate::error::CliError;
use crate::output::{Out, clean, fields, println_safe, table, when};

/// `atlantis config set|show`
pub fn config(cmd: &ConfigCmd, cli: &Cli, path: &Path, out: Out) -> Result<(), CliError> {
    let mut cfg = FileConfig::load(path)?;
    match cmd {
        ConfigCmd::Set { key, value } => {
            match key {
                ConfigKey::Manager => {
                    let url = check_url(value)?;
                    let region = match (cli.regions.as_slice(), &cfg.default_region) {
                        ([r], _) => r.clone(),
                        ([], Some(d)) => d.clone(),
                        ([], None) => {
                            // The first region gets a name and becomes the default.
                            let r: atlantis_common::RegionName = "default"
                                .parse()
                                .map_err(|e| CliError::Other(format!("{e}")))?;
                            cfg.default_region = Some(r.clone());
                            r
                        }
                        _ => {
                            return Err(CliError::Usage(
                                "config set manager takes one -R region".into(),
                            ));
                        }
                    };
                    if cfg.default_region.is_none() {
                        cfg.default_region = Some(region.clone());
                    }
                    cfg.regions.insert(region, RegionConfig { manager: url });
                }
                ConfigKey::DefaultRegion => {
                    let r: atlantis_common::RegionName =
                        value.parse().map_err(|e| CliError::Usage(format!("{e}")))?;
                    if !cfg.regions.contains_key(&r) {
                        return Err(CliError::Usage(format!(
                            "region {r} has no manager yet: run `atlantis config set manager URL -R {r}` first"
                        )));
                    }
                    cfg.default_region = Some(r);
                }
            }
            cfg.save(path)?;
            let doc = serde_json::json!({"path": path, "config": cfg});
            out.show(&doc, || {
                println_safe(&format!("wrote {}", path.display()));
            });
        }
        ConfigCmd::Show => {
            let (_, token_source) = token(cli.token_file.as_ref())?;
            let from_env = cli.manager.clone();
            let doc = serde_json::json!({
                "path": path,
                "config": cfg,
                "manager_override": from_env,
                "token": token_source,
            });
            out.show(&doc, || {
                let mut pairs = vec![
                    ("config file", path.display().to_string()),
                    (
                        "default region",
                        cfg.default_region
                            .as_ref()
                            .map_or("-".into(), ToString::to_string),
                    ),
                ];
                if let Some(m) = &from_env {
                    pairs.push(("manager override", m.clone()));
                }
                pairs.push(("token", token_source));
                fields(&pairs);
                let rows = cfg
                    .regions
                    .iter()
                    .map(|(r, c)| vec![r.to_string(), c.manager.clone()])
                    .collect::<Vec<_>>();
                println_safe("");
                table(&["REGION", "MANAGER"], &rows, "no regions configured");
            });
        }
    }
    Ok(())
}

/// The answer of `POST /v1/login`.
#[derive(Debug, Deserialize)]
struct LoginAnswer {
    token: String,
    user: String,
    #[serde(default)]
    teams: Vec<String>,
    #[serde(default)]
    superuser: bool,
    #[serde(default)]
    expires_ms: Option<u64>,
}

fn read_password(stdin: bool, user: &str) -> Result<String, CliError> {
    let p = if stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take_line(&mut line)
            .map_err(|e| CliError::Usage(format!("reading the password from stdin: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        rpassword::prompt_password(format!("password for {user}: ")).map_err(|e| {
            CliError::Usage(format!(
                "cannot read the password from the terminal ({e}); use --password-stdin"
            ))
        })?
    };
    if p.is_empty() {
        return Err(CliError::Usage("empty password".into()));
    }
    Ok(p)
}

trait TakeLine {
    fn take_line(&mut self, s: &mut String) -> std::io::Result<()>;
}

impl<R: std::io::BufRead> TakeLine for R {
    /// Reads one line of at most 4 KiB.
    fn take_line(&mut self, s: &mut String) -> std::io::Result<()> {
        use std::io::Read as _;
        self.take(4096).read_line(s).map(drop)
    }
}

/// `atlantis login [--user U] [--password-stdin]`
pub async fn login(ctx: &Ctx, user: Option<String>, stdin: bool) -> Result<i32, CliError> {
    let c = ctx.one()?;
    let user = user
        .or_else(|| std::env::var("ATLANTIS_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| CliError::Usage("no user name: pass --user".into()))?;
    let password = read_password(stdin, &user)?;
    let answer: LoginAnswer = c
        .call(
            Method::POST,
            "/v1/login",
            &serde_json::json!({"user": user, "password": password}),
        )
        .await?;
    drop(password);
    let path = token_path()?;
    write_private(&path, format!("{}\n", answer.token).as_bytes())?;
    // The token itself is never printed.
    let doc = serde_json::json!({
        "user": answer.user,
        "teams": answer.teams,
        "superuser": answer.superuser,
        "expires_ms": answer.expires_ms,
        "token_file": path,
    });
    ctx.out.show(&doc, || {
        let teams = if answer.teams.is_empty() {
            "no teams".to_owned()
        } else {
            format!("teams {}", answer.teams.join(", "))
        };
        let until = answer
            .expires_ms
            .map(|e| format!(", session until {} UTC", when(e)))
            .unwrap_or_default();
        println_safe(&format!(
            "logged in as {} ({teams}{}{until})",
            clean(&answer.user),
            if answer.superuser { ", superuser" } else { "" }
        ));
    });
    Ok(0)
}

/// `atlantis logout`
pub fn logout(out: Out) -> Result<(), CliError> {
    let path = token_path()?;
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(CliError::Config(format!("{}: {e}", path.display()))),
    };
    out.show(&serde_json::json!({"logged_out": removed}), || {
        println_safe(if removed {
            "logged out"
        } else {
            "not logged in"
        });
    });
    Ok(())
}

/// Prints any JSON answer for people: arrays of objects as tables, objects as fields.
fn human_value(v: &serde_json::Value, empty: &str) {
    match v {
        serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_object) => {
            let mut headers: Vec<String> = Vec::new();
            for i in items {
                for k in i.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !headers.contains(k) {
                        headers.push(k.clone());
                    }
                }
            }
            let rows = items
                .iter()
                .map(|i| headers.iter().map(|h| scalar(&i[h])).collect())
                .collect::<Vec<Vec<String>>>();
            let upper: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
            let refs: Vec<&str> = upper.iter().map(String::as_str).collect();
            table(&refs, &rows, empty);
        }
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                println_safe(empty);
            }
            for i in items {
                println_safe(&clean(&scalar(i)));
            }
        }
        serde_json::Value::Object(m) => {
            let pairs: Vec<(&str, String)> =
                m.iter().map(|(k, v)| (k.as_str(), scalar(v))).collect();
            fields(&pairs);
        }
        other => println_safe(&clean(&scalar(other))),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `atlantis whoami`
pub async fn whoami(ctx: &Ctx) -> Result<i32, CliError> {
    let v: serde_json::Value = ctx.one()?.get("/v1/whoami").await?;
    ctx.out.show(&v, || human_value(&v, "-"));
    Ok(0)
}

/// `atlantis teams`
pub async fn teams(ctx: &Ctx) -> Result<i32, CliError> {
    let v: serde_json::Value = ctx.one()?.get("/v1/teams").await?;
    ctx.out.show(&v, || human_value(&v, "no teams"));
    Ok(0)
}

/// `atlantis team-apps TEAM`
pub async fn team_apps(ctx: &Ctx, team: &TeamName) -> Result<i32, CliError> {
    let v: serde_json::Value = ctx
        .one()?
        .get(&format!("/v1/teams/{}/apps", seg(team.as_str())))
        .await?;
    ctx.out
        .show(&v, || human_value(&v, &format!("team {team} has no apps")));
    Ok(0)
}

/// `atlantis allow-app TEAM APP` / `disallow-app`
pub async fn allow(ctx: &Ctx, team: &TeamName, app: &AppName, on: bool) -> Result<i32, CliError> {
    let path = format!("/v1/teams/{}/apps/{app}", seg(team.as_str()));
    let method = if on { Method::PUT } else { Method::DELETE };
    ctx.one()?.call_empty::<()>(method, &path, None).await?;
    let doc = serde_json::json!({"team": team, "app": app, "allowed": on});
    ctx.out.show(&doc, || {
        println_safe(&if on {
            format!("team {team} may now act on {app}")
        } else {
            format!("team {team} may no longer act on {app}")
        });
    });
    Ok(0)
}

/// `90s`, `30m`, `2h`, `7d` back from now, or plain ms since the epoch.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--since {s:?}: expected a duration like 90s, 30m, 2h, 7d, or ms since the epoch"
        ))
    };
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms)))
}

/// `atlantis audit [--app A] [--user U] [--since S] [--limit N]`
pub async fn audit(
    ctx: &Ctx,
    app: Option<AppName>,
    user: Option<String>,
    since: Option<String>,
    limit: u32,
) -> Result<i32, CliError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut q = vec![format!("limit={}", limit.clamp(1, 10_000))];
    if let Some(a) = app {
        q.push(format!("app={a}"));
    }
    if let Some(u) = user {
        q.push(format!("user={}", seg(&u)));
    }
    if let Some(s) = since {
        q.push(format!("since_ms={}", parse_since(&s, now)?));
    }
    let v: serde_json::Value = ctx
        .one()?
        .get(&format!("/v1/audit?{}", q.join("&")))
        .await?;
    ctx.out.show(&v, || human_value(&v, "no audit entries"));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_instants() {
        assert_eq!(parse_since("90s", 100_000).unwrap(), 10_000);
        assert_eq!(parse_since("2h", 10_000_000).unwrap(), 2_800_000);
        assert_eq!(parse_since("1700000000000", 0).unwrap(), 1_700_000_000_000);
        assert!(parse_since("2w", 0).is_err());
        assert!(parse_since("h", 0).is_err());
    }
}
