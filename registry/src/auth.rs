//! Optional authentication (HTTP Basic or static bearer tokens) and per-repository-prefix permissions.
//!
//! Secrets are kept as SHA-256 hashes and compared in constant time. Access rules match repository name
//! prefixes; the longest matching prefix decides. A rule's member lists hold user names, `*` (any
//! authenticated user) or `anonymous` (also clients without credentials).

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::RegistryError;

/// `[auth]` in the config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    #[serde(default)]
    pub access: Vec<AccessRule>,
}

/// A user for HTTP Basic authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// The password in clear (prefer `password_sha256`).
    #[serde(default)]
    pub password: Option<String>,
    /// Hex SHA-256 of the password.
    #[serde(default)]
    pub password_sha256: Option<String>,
}

/// A static bearer token acting as a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub user: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_sha256: Option<String>,
}

/// Who may pull and push under a repository name prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A repository name prefix; "" matches every repository.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub pull: Vec<String>,
    #[serde(default)]
    pub push: Vec<String>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    User(String),
}

/// What they want to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
}

/// The compiled authentication and authorisation policy.
#[derive(Debug)]
pub struct Auth {
    users: HashMap<String, [u8; 32]>,
    tokens: Vec<([u8; 32], String)>,
    rules: Vec<AccessRule>,
}

/// Why the `[auth]` section is unusable.
#[derive(Debug, thiserror::Error)]
#[error("invalid [auth] config: {0}")]
pub struct AuthConfigError(String);

fn secret(
    clear: &Option<String>,
    hashed: &Option<String>,
    what: &str,
) -> Result<[u8; 32], AuthConfigError> {
    match (clear, hashed) {
        (Some(c), None) if !c.is_empty() => Ok(Sha256::digest(c.as_bytes()).into()),
        (None, Some(h)) => {
            let v = hex::decode(h)
                .map_err(|_| AuthConfigError(format!("{what}: sha256 is not hex")))?;
            v.try_into()
                .map_err(|_| AuthConfigError(format!("{what}: sha256 must be 32 bytes")))
        }
        _ => Err(AuthConfigError(format!(
            "{what}: set exactly one of the clear or the sha256 form, non-empty"
        ))),
    }
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Compiles the config.
    pub fn new(cfg: &AuthConfig) -> Result<Auth, AuthConfigError> {
        let mut users = HashMap::new();
        for u in &cfg.users {
            if u.name.is_empty() || u.name.contains(':') {
                return Err(AuthConfigError(format!(
                    "user name {:?} is empty or has a colon",
                    u.name
                )));
            }
            users.insert(
                u.name.clone(),
                secret(&u.password, &u.password_sha256, &format!("user {}", u.name))?,
            );
        }
        let mut tokens = Vec::new();
        for t in &cfg.tokens {
            tokens.push((
                secret(&t.token, &t.token_sha256, &format!("token of {}", t.user))?,
                t.user.clone(),
            ));
        }
        if users.is_empty() && tokens.is_empty() {
            return Err(AuthConfigError("no users and no tokens".into()));
        }
        Ok(Auth {
            users,
            tokens,
            rules: cfg.access.clone(),
        })
    }

    /// Identifies the caller; presented but wrong credentials are an error, absent ones are anonymous.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, RegistryError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Principal::Anonymous);
        };
        let value = value.to_str().map_err(|_| RegistryError::Unauthorized)?;
        let (scheme, rest) = value.split_once(' ').ok_or(RegistryError::Unauthorized)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            if rest.len() > 4096 {
                return Err(RegistryError::Unauthorized);
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| RegistryError::Unauthorized)?;
            let text = String::from_utf8(raw).map_err(|_| RegistryError::Unauthorized)?;
            let (user, password) = text.split_once(':').ok_or(RegistryError::Unauthorized)?;
            let given: [u8; 32] = Sha256::digest(password.as_bytes()).into();
            match self.users.get(user) {
                Some(stored) if same(stored, &given) => Ok(Principal::User(user.to_owned())),
                _ => Err(RegistryError::Unauthorized),
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let given: [u8; 32] = Sha256::digest(rest.as_bytes()).into();
            let mut found = None;
            for (hash, user) in &self.tokens {
                if same(hash, &given) {
                    found = Some(user.clone());
                }
            }
            found
                .map(Principal::User)
                .ok_or(RegistryError::Unauthorized)
        } else {
            Err(RegistryError::Unauthorized)
        }
    }

    /// Whether `who` may do `action` on `repo`.
    pub fn allowed(&self, who: &Principal, repo: &str, action: Action) -> bool {
        let Some(rule) = self
            .rules
            .iter()
            .filter(|r| repo.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
        else {
            return false;
        };
        let members = match action {
            Action::Pull => &rule.pull,
            Action::Push => &rule.push,
        };
        members.iter().any(|m| match who {
            Principal::Anonymous => m == "anonymous",
            Principal::User(u) => m == "anonymous" || m == "*" || m == u,
        })
    }

    /// Checks access: anonymous callers who are refused get 401 (so clients send credentials), known users 403.
    pub fn check(&self, who: &Principal, repo: &str, action: Action) -> Result<(), RegistryError> {
        if self.allowed(who, repo, action) {
            Ok(())
        } else if *who == Principal::Anonymous {
            Err(RegistryError::Unauthorized)
        } else {
            Err(RegistryError::Denied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            users: vec![
                UserConfig {
                    name: "builder".into(),
                    password: Some("s3cret".into()),
                    password_sha256: None,
                },
                UserConfig {
                    name: "ops".into(),
                    password: None,
                    password_sha256: Some(hex::encode(Sha256::digest(b"pw"))),
                },
            ],
            tokens: vec![TokenConfig {
                user: "ci".into(),
                token: Some("tok".into()),
                token_sha256: None,
            }],
            access: vec![
                AccessRule {
                    prefix: "".into(),
                    pull: vec!["*".into()],
                    push: vec!["ops".into()],
                },
                AccessRule {
                    prefix: "apps/".into(),
                    pull: vec!["anonymous".into()],
                    push: vec!["builder".into(), "ci".into()],
                },
            ],
        })
        .unwrap()
    }

    fn basic(u: &str, p: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        h.insert(header::AUTHORIZATION, format!("Basic {v}").parse().unwrap());
        h
    }

    #[test]
    fn credentials_and_rules() {
        let a = auth();
        assert_eq!(
            a.authenticate(&basic("builder", "s3cret")).unwrap(),
            Principal::User("builder".into())
        );
        assert_eq!(
            a.authenticate(&basic("ops", "pw")).unwrap(),
            Principal::User("ops".into())
        );
        assert!(a.authenticate(&basic("builder", "wrong")).is_err());
        assert!(a.authenticate(&basic("nobody", "s3cret")).is_err());
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert_eq!(a.authenticate(&h).unwrap(), Principal::User("ci".into()));
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(a.authenticate(&h).is_err());
        assert_eq!(
            a.authenticate(&HeaderMap::new()).unwrap(),
            Principal::Anonymous
        );

        let builder = Principal::User("builder".into());
        assert!(a.allowed(&builder, "apps/web", Action::Push));
        assert!(!a.allowed(&builder, "base/debian", Action::Push));
        assert!(a.allowed(&builder, "base/debian", Action::Pull));
        assert!(a.allowed(&Principal::Anonymous, "apps/web", Action::Pull));
        assert!(!a.allowed(&Principal::Anonymous, "base/debian", Action::Pull));
        assert!(matches!(
            a.check(&Principal::Anonymous, "base/x", Action::Pull),
            Err(RegistryError::Unauthorized)
        ));
        assert!(matches!(
            a.check(&builder, "base/x", Action::Push),
            Err(RegistryError::Denied)
        ));
    }
}
