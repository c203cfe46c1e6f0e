//! Optional authentication (HTTP Basic, static bearer tokens, or Docker token authentication with tokens
//! issued by the manager) and per-repository-prefix permissions.
//!
//! Docker token authentication (`[auth.token]`): a client without a token gets `401` with
//! `WWW-Authenticate: Bearer realm="<manager>/v1/registry/token",service="...",scope="repository:<name>:<actions>"`,
//! asks the manager for a token with those values, and retries with it. The tokens are JWTs signed with
//! Ed25519 (`alg` `EdDSA`) by the manager; the registry checks them with the manager's public key, the
//! issuer, the audience (`service`) and the expiry, and grants exactly the `access` they list. The
//! claims are `atlantis_common::api::registry_token::Claims`, the type the manager signs.
//!
//! Secrets are kept as SHA-256 hashes and compared in constant time. Access rules match repository name
//! prefixes; the longest matching prefix decides. A rule's member lists hold user names, `*` (any
//! authenticated user) or `anonymous` (also clients without credentials).

use std::collections::HashMap;

use atlantis_common::api::registry_token::{Access, Claims, PULL, PUSH};
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
    /// Docker token authentication with tokens issued by the manager.
    #[serde(default)]
    pub token: Option<TokenAuthConfig>,
}

/// Where tokens come from and how they are checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAuthConfig {
    /// The token endpoint clients are sent to (`https://manager:7700/v1/registry/token`).
    pub realm: String,
    /// This registry's name in tokens (their audience).
    #[serde(default = "default_service")]
    pub service: String,
    /// The issuer tokens must name.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// The manager's Ed25519 public key, 64 hex digits (`atlantis-manager registry-public-key`).
    pub public_key: String,
    /// Challenge clients without credentials with `Bearer realm=...` (default). Off: the manager's
    /// tokens are still accepted when sent (the builder sends its build token as it is), but clients
    /// are challenged for Basic, so pullers with Basic users need not reach the realm.
    #[serde(default = "default_advertise")]
    pub advertise: bool,
}

fn default_advertise() -> bool {
    true
}

fn default_service() -> String {
    "atlantis-registry".into()
}

fn default_issuer() -> String {
    "atlantis-manager".into()
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
    /// A bearer of a manager-issued token: exactly its grants.
    Token {
        /// Who it was issued to.
        subject: String,
        /// What it allows.
        access: Vec<Access>,
    },
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
    jwt: Option<(TokenAuthConfig, Vec<u8>)>,
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
        let jwt = match &cfg.token {
            None => None,
            Some(t) => {
                let key = hex::decode(&t.public_key)
                    .ok()
                    .filter(|k| k.len() == 32)
                    .ok_or_else(|| {
                        AuthConfigError("token.public_key: expected 64 hex digits".into())
                    })?;
                if t.realm.is_empty() || t.realm.contains('"') || t.service.contains('"') {
                    return Err(AuthConfigError(
                        "token.realm and token.service: non-empty, without quotes".into(),
                    ));
                }
                Some((t.clone(), key))
            }
        };
        if users.is_empty() && tokens.is_empty() && jwt.is_none() {
            return Err(AuthConfigError(
                "no users, no tokens and no token issuer".into(),
            ));
        }
        Ok(Auth {
            users,
            tokens,
            rules: cfg.access.clone(),
            jwt,
        })
    }

    /// The `WWW-Authenticate` value of a refusal: a Bearer challenge naming the token endpoint, the
    /// service and the scope when token authentication is on (`None`: the Basic default).
    pub fn challenge(&self, repo: Option<&str>, action: Action) -> Option<String> {
        let (t, _) = self.jwt.as_ref().filter(|(t, _)| t.advertise)?;
        let mut c = format!("Bearer realm=\"{}\",service=\"{}\"", t.realm, t.service);
        if let Some(r) = repo {
            let actions = match action {
                Action::Pull => "pull",
                Action::Push => "pull,push",
            };
            c.push_str(&format!(",scope=\"repository:{r}:{actions}\""));
        }
        Some(c)
    }

    fn verify_jwt(&self, token: &str) -> Option<Result<Principal, RegistryError>> {
        let (cfg, key) = self.jwt.as_ref()?;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let check = || -> Result<Principal, RegistryError> {
            let header: serde_json::Value =
                serde_json::from_slice(&b64.decode(h).map_err(|_| RegistryError::Unauthorized)?)
                    .map_err(|_| RegistryError::Unauthorized)?;
            if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA") {
                return Err(RegistryError::Unauthorized);
            }
            let sig = b64.decode(s).map_err(|_| RegistryError::Unauthorized)?;
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                .verify(format!("{h}.{c}").as_bytes(), &sig)
                .map_err(|_| RegistryError::Unauthorized)?;
            let claims: Claims =
                serde_json::from_slice(&b64.decode(c).map_err(|_| RegistryError::Unauthorized)?)
                    .map_err(|_| RegistryError::Unauthorized)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if claims.iss != cfg.issuer || claims.aud != cfg.service || claims.exp <= now {
                return Err(RegistryError::Unauthorized);
            }
            Ok(Principal::Token {
                subject: claims.sub,
                access: claims.access,
            })
        };
        Some(check())
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
            if rest.len() > 16 * 1024 {
                return Err(RegistryError::Unauthorized);
            }
            if let Some(r) = self.verify_jwt(rest) {
                return r;
            }
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
        if let Principal::Token { access, .. } = who {
            let want = match action {
                Action::Pull => PULL,
                Action::Push => PUSH,
            };
            return access.iter().any(|g| g.grants(repo, want));
        }
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
            Principal::Token { .. } => false,
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
            token: None,
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

    #[test]
    fn token_auth_may_keep_basic_challenges() {
        let cfg = |advertise| AuthConfig {
            users: vec![UserConfig {
                name: "puller".into(),
                password: Some("pw".into()),
                password_sha256: None,
            }],
            token: Some(TokenAuthConfig {
                realm: "http://manager/v1/registry/token".into(),
                service: default_service(),
                issuer: default_issuer(),
                public_key: "00".repeat(32),
                advertise,
            }),
            ..AuthConfig::default()
        };
        let on = Auth::new(&cfg(true)).unwrap();
        assert!(
            on.challenge(Some("apps/web"), Action::Pull)
                .unwrap()
                .contains("realm=\"http://manager/v1/registry/token\"")
        );
        let off = Auth::new(&cfg(false)).unwrap();
        assert_eq!(off.challenge(Some("apps/web"), Action::Pull), None);
        assert_eq!(
            off.authenticate(&basic("puller", "pw")).unwrap(),
            Principal::User("puller".into())
        );
    }

    /// A token signed as the manager signs it, from the shared claims type: accepted for exactly the
    /// access it lists; a wrong audience or issuer, an expired token or a forged signature is not.
    #[test]
    fn jwt_of_the_shared_claims_grants_exactly_its_access() {
        use ring::signature::{Ed25519KeyPair, KeyPair as _};
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        let other = Ed25519KeyPair::from_seed_unchecked(&[8u8; 32]).unwrap();
        let a = Auth::new(&AuthConfig {
            token: Some(TokenAuthConfig {
                realm: "http://manager/v1/registry/token".into(),
                service: default_service(),
                issuer: default_issuer(),
                public_key: hex::encode(key.public_key().as_ref()),
                advertise: true,
            }),
            ..AuthConfig::default()
        })
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            iss: default_issuer(),
            sub: "alice".into(),
            aud: default_service(),
            exp: now + 300,
            nbf: now - 5,
            iat: now,
            jti: "j1".into(),
            access: vec![
                Access::repository("apps/web", &[PULL, PUSH]),
                Access::repository("base/debian", &[PULL]),
            ],
        };
        let bearer = |c: &Claims, k: &Ed25519KeyPair| {
            let signing = format!(
                "{}.{}",
                b64.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#),
                b64.encode(serde_json::to_vec(c).unwrap())
            );
            let sig = b64.encode(k.sign(signing.as_bytes()).as_ref());
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                format!("Bearer {signing}.{sig}").parse().unwrap(),
            );
            h
        };
        let who = a.authenticate(&bearer(&claims, &key)).unwrap();
        assert_eq!(
            who,
            Principal::Token {
                subject: "alice".into(),
                access: claims.access.clone(),
            }
        );
        assert!(a.allowed(&who, "apps/web", Action::Push));
        assert!(a.allowed(&who, "base/debian", Action::Pull));
        assert!(!a.allowed(&who, "base/debian", Action::Push));
        assert!(!a.allowed(&who, "apps/other", Action::Pull));

        let refused = [
            ("another key", bearer(&claims, &other)),
            (
                "another audience",
                bearer(
                    &Claims {
                        aud: "elsewhere".into(),
                        ..claims.clone()
                    },
                    &key,
                ),
            ),
            (
                "another issuer",
                bearer(
                    &Claims {
                        iss: "someone".into(),
                        ..claims.clone()
                    },
                    &key,
                ),
            ),
            (
                "expired",
                bearer(
                    &Claims {
                        exp: now - 1,
                        ..claims.clone()
                    },
                    &key,
                ),
            ),
        ];
        for (what, h) in refused {
            assert!(
                matches!(a.authenticate(&h), Err(RegistryError::Unauthorized)),
                "{what}"
            );
        }
    }
}
