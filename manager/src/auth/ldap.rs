//! Logins against an LDAP directory (ldap3): bind as the user, then read the groups listing the user as
//! `member`: their `cn`s are the user's teams, and one configured group makes a superuser.
//!
//! The user name is checked before any LDAP call (letters, digits, `.`, `_`, `-`), so nothing a caller
//! types can change a DN or a filter; the DN is still escaped in the group filter.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::config::LdapConfig;

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name.
    pub user: String,
    /// Group names (sorted), the superuser group included.
    pub teams: Vec<String>,
    /// Member of the superuser group.
    pub superuser: bool,
}

/// Why a login failed. No message contains the password.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The user name has characters a user name cannot have.
    #[error(
        "user names are 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadName,
    /// Wrong user or password (the same answer for both).
    #[error("invalid user name or password")]
    Invalid,
    /// The directory cannot be reached or failed: nobody is let in.
    #[error("LDAP directory unavailable: {0}")]
    Unavailable(String),
}

/// Checks a user name: 1..=64 of `[A-Za-z0-9._-]`, first a letter or digit. Refuses `*`, `(`, `)`, `\`,
/// `,`, `=`, NUL and everything else that means something in a DN or a filter.
pub fn check_user_name(user: &str) -> Result<(), LoginError> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user.as_bytes()[0].is_ascii_alphanumeric()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(LoginError::BadName) }
}

/// Client side of the directory.
#[derive(Clone)]
pub struct Directory {
    cfg: LdapConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.cfg.url)
            .finish()
    }
}

impl Directory {
    /// Prepares the client (reads the CA file when one is configured).
    pub fn new(cfg: LdapConfig) -> Result<Directory, String> {
        let tls = match &cfg.ca_file {
            None => None,
            Some(path) => {
                use rustls_pki_types::CertificateDer;
                use rustls_pki_types::pem::PemObject as _;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("LDAP CA file {}: {e}", path.display()))?
                {
                    let c = c.map_err(|e| format!("LDAP CA file {}: {e}", path.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("LDAP CA file {}: {e}", path.display()))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(Arc::new(config))
            }
        };
        Ok(Directory { cfg, tls })
    }

    /// Binds as `user` with `password` and reads the user's groups.
    pub async fn login(&self, user: &str, password: &str) -> Result<Identity, LoginError> {
        check_user_name(user)?;
        if password.is_empty() || password.len() > 1024 || password.contains('\0') {
            // Some servers take an empty password as an anonymous bind that "succeeds".
            return Err(LoginError::Invalid);
        }
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(self.cfg.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let unavailable = |e: ldap3::LdapError| LoginError::Unavailable(e.to_string());
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url)
            .await
            .map_err(unavailable)?;
        ldap3::drive!(conn);
        let dn = format!("{}={user},{}", self.cfg.user_attr, self.cfg.people_base);
        let bind = ldap
            .with_timeout(timeout)
            .simple_bind(&dn, password)
            .await
            .map_err(unavailable)?;
        match bind.rc {
            0 => {}
            // invalidCredentials, and unwillingToPerform for unauthenticated binds.
            49 | 53 => {
                let _ = ldap.unbind().await;
                return Err(LoginError::Invalid);
            }
            rc => {
                let _ = ldap.unbind().await;
                return Err(LoginError::Unavailable(format!(
                    "bind refused with code {rc}"
                )));
            }
        }
        let filter = format!(
            "(&(objectClass=groupOfNames)(member={}))",
            ldap3::ldap_escape(&dn)
        );
        let found = ldap
            .with_timeout(timeout)
            .search(&self.cfg.groups_base, Scope::Subtree, &filter, vec!["cn"])
            .await
            .map_err(unavailable)?
            .success()
            .map_err(unavailable)?;
        let _ = ldap.unbind().await;
        let mut teams: Vec<String> = found
            .0
            .into_iter()
            .filter_map(|e| {
                SearchEntry::construct(e)
                    .attrs
                    .get("cn")
                    .and_then(|v| v.first().cloned())
            })
            .collect();
        teams.sort();
        teams.dedup();
        let superuser = teams.contains(&self.cfg.superuser_group);
        Ok(Identity {
            user: user.to_owned(),
            teams,
            superuser,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_that_mean_something_to_ldap_are_refused() {
        for bad in [
            "",
            "*",
            "a*",
            "a)(uid=*",
            ")(",
            "a\0b",
            "a,ou=x",
            "a=b",
            "a\\2a",
            " a",
            "-a",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        for good in ["alice", "bob.smith", "ci_bot-2", "A1"] {
            assert!(check_user_name(good).is_ok(), "{good:?}");
        }
    }
}
