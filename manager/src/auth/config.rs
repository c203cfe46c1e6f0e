//! Authentication settings (`[auth]` in the manager's TOML).

use std::path::PathBuf;

use serde::Deserialize;

/// How callers are authenticated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Token signing keys, one per line (64 hex digits); the first signs, all verify. Created with one
    /// random key (0600) when absent. Default `<data_dir>/auth.key`.
    pub key_file: Option<PathBuf>,
    /// With no LDAP configured: where the admin (superuser) token is written at first start (0600) and
    /// read back afterwards. Default `<data_dir>/admin.token`.
    pub admin_token_file: Option<PathBuf>,
    /// Lifetime of a login session, seconds.
    pub session_ttl_s: u64,
    /// Longest lifetime of a CI token, seconds.
    pub max_token_ttl_s: u64,
    /// Lifetime of the generated admin token, seconds.
    pub admin_ttl_s: u64,
    /// LDAP directory for logins and teams; none = the embedded default (admin token only).
    pub ldap: Option<LdapConfig>,
    /// Docker token authentication for the registry (`GET /v1/registry/token`).
    pub registry: Option<super::registry::RegistryTokenConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key_file: None,
            admin_token_file: None,
            session_ttl_s: 12 * 3600,
            max_token_ttl_s: 90 * 24 * 3600,
            admin_ttl_s: 365 * 24 * 3600,
            ldap: None,
            registry: None,
        }
    }
}

/// The LDAP directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host:636` or `ldap://host:389` (then set `starttls` outside a lab).
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub starttls: bool,
    /// PEM CA certificates that sign the directory's certificate (LDAPS/StartTLS).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Users are bound as `<user_attr>=<name>,<people_base>`.
    pub people_base: String,
    /// The user attribute of the DN (`uid`).
    #[serde(default = "default_user_attr")]
    pub user_attr: String,
    /// Where `groupOfNames` groups (teams) are searched; a user's teams are the groups listing them as
    /// `member`.
    pub groups_base: String,
    /// Members of this group are superusers.
    pub superuser_group: String,
    /// Connect and operation timeout, ms.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_user_attr() -> String {
    "uid".into()
}

fn default_timeout() -> u64 {
    5000
}
