//! Authentication, authorisation and audit of the manager API.
//!
//! - [`token`]: signed, expiring bearer tokens (HMAC-SHA256, keys from an operator file, rotatable).
//! - [`ldap`]: logins against an LDAP directory; groups are teams, one group holds superusers.
//! - [`policy`]: which route needs what (a user, an app's team, a superuser).
//! - [`middleware`]: checks every request but `/healthz`, `/openapi.json` and the login, and audits every
//!   mutating call.
//! - [`store`]: team -> app grants and the audit log in the history database.
//!
//! With no LDAP configured, an admin (superuser) token is generated at first start into a 0600 file
//! (shown on stderr too only when stderr is a terminal, never logged) and read back afterwards.

pub mod config;
pub mod ldap;
pub mod middleware;
pub mod policy;
pub mod registry;
pub mod store;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atlantis_common::AppName;
use atlantis_common::api::manager::AppRecord;
use serde::Serialize;

pub use config::{AuthConfig, LdapConfig};
pub use token::{Claims, Keys, Scope};

use crate::ctx::Ctx;
use crate::error::ApiError;
use crate::tasks::now_ms;

/// The caller of a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// User name.
    pub user: String,
    /// Teams.
    pub teams: Vec<String>,
    /// Superuser.
    pub superuser: bool,
    /// A CI token's apps (None for a login session).
    #[serde(skip)]
    pub apps: Option<Vec<String>>,
    /// A CI token's scope.
    #[serde(skip)]
    pub scope: Option<Scope>,
}

impl Principal {
    fn of(c: Claims) -> Principal {
        Principal {
            user: c.sub,
            teams: c.teams,
            superuser: c.su,
            apps: c.apps,
            scope: c.scope,
        }
    }

    /// True for a CI token.
    pub fn is_ci(&self) -> bool {
        self.apps.is_some()
    }
}

struct Inner {
    keys: Keys,
    directory: Option<ldap::Directory>,
    store: store::Store,
    cfg: AuthConfig,
    registry: Option<registry::Signer>,
}

/// Shared state of authentication (handlers of `/v1/login`, teams, tokens, audit, and the middleware).
#[derive(Clone)]
pub struct Auth {
    /// The engine's context (apps, tasks, instances are looked up to authorise).
    pub ctx: Ctx,
    inner: Arc<Inner>,
}

/// The files of the embedded default.
fn data_file(configured: &Option<PathBuf>, data_dir: &Path, name: &str) -> PathBuf {
    configured.clone().unwrap_or_else(|| data_dir.join(name))
}

impl Auth {
    /// Loads (or creates) the keys, prepares the LDAP client, and, with no LDAP configured, makes sure an
    /// admin token exists. Returns the state and the admin token file when one is in use.
    pub fn setup(ctx: Ctx) -> Result<(Auth, Option<PathBuf>), String> {
        let cfg = ctx.cfg.auth.clone();
        let data_dir = ctx.cfg.data_dir.clone();
        let key_file = data_file(&cfg.key_file, &data_dir, "auth.key");
        if cfg.key_file.is_none() {
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
        }
        let keys = Keys::load(&key_file, cfg.key_file.is_none()).map_err(|e| e.to_string())?;
        let directory = cfg.ldap.clone().map(ldap::Directory::new).transpose()?;
        let store = store::Store::new(ctx.history.pool().clone());
        let registry = cfg
            .registry
            .clone()
            .map(registry::Signer::new)
            .transpose()?;
        let admin_file = if directory.is_none() {
            let f = data_file(&cfg.admin_token_file, &data_dir, "admin.token");
            ensure_admin_token(&keys, &f, cfg.admin_ttl_s)?;
            Some(f)
        } else {
            None
        };
        Ok((
            Auth {
                ctx,
                inner: Arc::new(Inner {
                    keys,
                    directory,
                    store,
                    cfg,
                    registry,
                }),
            },
            admin_file,
        ))
    }

    /// Grants and audit.
    pub fn store(&self) -> &store::Store {
        &self.inner.store
    }

    /// The LDAP directory, if configured.
    pub fn directory(&self) -> Option<&ldap::Directory> {
        self.inner.directory.as_ref()
    }

    /// The registry token signer, when configured.
    pub fn registry(&self) -> Option<&registry::Signer> {
        self.inner.registry.as_ref()
    }

    /// Settings.
    pub fn cfg(&self) -> &AuthConfig {
        &self.inner.cfg
    }

    /// Signs claims.
    pub fn sign(&self, c: &Claims) -> String {
        self.inner.keys.sign(c)
    }

    /// Checks a bearer token (a registry token is not an API token).
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let c = self
            .inner
            .keys
            .verify(token, now_ms())
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        if c.aud.is_some() {
            return Err(ApiError::Unauthorized("not an API token".into()));
        }
        Ok(Principal::of(c))
    }

    /// The team owning `app` (from its registration), `Ok(None)` when unregistered or without a team.
    async fn owner(&self, app: &AppName) -> Result<Option<Option<String>>, ApiError> {
        let rec = self
            .ctx
            .coord
            .get::<AppRecord>(&self.ctx.coord.layout().app(app))
            .await?;
        Ok(rec.map(|r| r.value.spec.team.map(|t| t.to_string())))
    }

    /// True when `p`'s teams may act on `app`: superuser, member of its owning team, or of a team granted
    /// it. An unregistered app is reachable by grant only (its handlers answer 404 anyway).
    pub async fn may_access(&self, p: &Principal, app: &str) -> Result<bool, ApiError> {
        if let Some(apps) = &p.apps
            && !apps.iter().any(|a| a == app)
        {
            return Ok(false);
        }
        if p.superuser {
            return Ok(true);
        }
        if let Ok(name) = app.parse::<AppName>()
            && let Some(Some(team)) = self.owner(&name).await?
            && p.teams.contains(&team)
        {
            return Ok(true);
        }
        Ok(self.inner.store.granted(&p.teams, app).await?)
    }
}

/// Reuses a still-valid admin token from `file`, or writes a new one (0600) and prints it once.
fn ensure_admin_token(keys: &Keys, file: &Path, ttl_s: u64) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::metadata(file) {
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "admin token file {} is readable by group or others; chmod 600 it",
                file.display()
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("admin token file {}: {e}", file.display()))?;
        // Still good for a day at least: keep it.
        if keys
            .verify(text.trim(), now_ms() + 24 * 3600 * 1000)
            .is_ok_and(|c| c.su)
        {
            return Ok(());
        }
        std::fs::remove_file(file)
            .map_err(|e| format!("admin token file {}: {e}", file.display()))?;
    }
    let now = now_ms();
    let token = keys.sign(&Claims {
        sub: "admin".into(),
        teams: Vec::new(),
        su: true,
        iat: now,
        exp: now + ttl_s * 1000,
        apps: None,
        scope: None,
        aud: None,
    });
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("admin token file {}: {e}", file.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
        .map_err(|e| format!("admin token file {}: {e}", file.display()))?;
    // Shown once, and only to a person at a terminal: a service's stderr ends in its journal, so
    // anywhere else only the file's path is said.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "atlantis-manager: no LDAP configured; admin token written to {} (shown once):\n{token}",
            file.display()
        );
    } else {
        tracing::info!(file = %file.display(), "No LDAP configured: admin token written (mode 0600).");
    }
    Ok(())
}
