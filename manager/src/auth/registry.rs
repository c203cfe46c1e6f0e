//! Docker token authentication for the registry: the manager issues short-lived JWTs signed with
//! Ed25519 (`alg` `EdDSA`) listing the repository actions granted, and the registry checks them with the
//! public key (`registry/src/auth.rs`). The claims are `atlantis_common::api::registry_token::Claims`,
//! the one type the registry and the builder read too.
//!
//! Grants: `apps/<app>` pull and push for whoever may act on the app (a CI token of scope `read`: pull
//! only); superusers anything; the cluster token (supervisors, as the Basic password) pull only; any
//! other repository: pull for logged-in users.

use std::path::{Path, PathBuf};

use atlantis_common::api::registry_token::{Access, Claims};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::Deserialize;

/// `[auth.registry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryTokenConfig {
    /// The Ed25519 seed (64 hex digits, 0600), created when absent. Its public key goes into the
    /// registry's `[auth.token] public_key` (`atlantis-manager registry-public-key --key-file F`).
    pub key_file: PathBuf,
    /// The registry's service name (the tokens' audience).
    #[serde(default = "default_service")]
    pub service: String,
    /// The issuer named in tokens.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Token lifetime, seconds.
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// Lifetime of build tokens (`POST /v1/apps/{app}/build-token`), seconds: long enough for a
    /// build to reach its push.
    #[serde(default = "default_build_ttl")]
    pub build_ttl_s: u64,
}

fn default_build_ttl() -> u64 {
    3600
}

fn default_service() -> String {
    "atlantis-registry".into()
}

fn default_issuer() -> String {
    "atlantis-manager".into()
}

fn default_ttl() -> u64 {
    300
}

/// The signing key.
pub struct Signer {
    cfg: RegistryTokenConfig,
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("service", &self.cfg.service)
            .finish()
    }
}

fn load_seed(path: &Path) -> Result<[u8; 32], String> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if !path.exists() {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("registry key file {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, format!("{}\n", hex::encode(seed)).as_bytes())
            .map_err(|e| format!("registry key file {}: {e}", path.display()))?;
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("registry key file {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "registry key file {} is readable by group or others; chmod 600 it",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("registry key file {}: {e}", path.display()))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "registry key file {}: expected 64 hex digits",
                path.display()
            )
        })
}

/// The public key (64 hex digits) of a registry key file.
pub fn public_key(path: &Path) -> Result<String, String> {
    let seed = load_seed(path)?;
    let key = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| e.to_string())?;
    Ok(hex::encode(key.public_key().as_ref()))
}

impl Signer {
    /// Loads (or creates) the key.
    pub fn new(cfg: RegistryTokenConfig) -> Result<Signer, String> {
        let seed = load_seed(&cfg.key_file)?;
        let key = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| e.to_string())?;
        Ok(Signer { cfg, key })
    }

    /// Settings.
    pub fn cfg(&self) -> &RegistryTokenConfig {
        &self.cfg
    }

    /// A signed token for `sub` with `access`; returns it and its lifetime in seconds.
    pub fn sign(&self, sub: &str, access: &[Access]) -> (String, u64) {
        (self.sign_for(sub, access, self.cfg.ttl_s), self.cfg.ttl_s)
    }

    /// A signed token for `sub` with `access`, valid `ttl_s` seconds.
    pub fn sign_for(&self, sub: &str, access: &[Access], ttl_s: u64) -> String {
        let now = crate::tasks::now_ms() / 1000;
        let header = B64.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let claims = Claims {
            iss: self.cfg.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.cfg.service.clone(),
            exp: now + ttl_s,
            nbf: now.saturating_sub(5),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access: access.to_vec(),
        };
        let body = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signing = format!("{header}.{body}");
        let sig = self.key.sign(signing.as_bytes());
        format!("{signing}.{}", B64.encode(sig.as_ref()))
    }
}

/// A parsed `repository:<name>:<actions>` scope.
pub fn parse_scope(s: &str) -> Option<(String, Vec<String>)> {
    let rest = s.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    if name.is_empty() || name.len() > 255 {
        return None;
    }
    Some((
        name.to_owned(),
        actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}
