//! Signed, expiring bearer tokens: `v1.<base64url(claims JSON)>.<base64url(HMAC-SHA256)>`.
//!
//! The keys come from an operator file: one key per line (64 hex digits = 32 bytes). The first line signs;
//! every line verifies, so during a rotation the new key goes first and the old one stays second until
//! the tokens it signed have expired. Verification is constant-time (ring).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Longest token accepted (bytes); longer ones are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What a CI token may do with its apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Reads only (GET).
    Read,
    /// Reads, deploys, rollbacks, scaling.
    Deploy,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User name.
    pub sub: String,
    /// The user's teams at login.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Superuser.
    #[serde(default)]
    pub su: bool,
    /// Issued at, ms since the epoch.
    pub iat: u64,
    /// Expires at, ms since the epoch.
    pub exp: u64,
    /// A CI token: only these apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
    /// A CI token: what it may do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// Registry token kind marker (never accepted by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Why a token is refused. Messages never contain the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not `v1.x.y`, bad base64 or JSON, too long.
    #[error("malformed token")]
    Malformed,
    /// No key verifies the signature (tampered, or signed with a key not in the key file).
    #[error("token signature is not valid")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
}

/// Why keys cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// File unreadable or unwritable.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Content is not one or two lines of 64 hex digits.
    #[error("key file {0}: expected one or more lines of 64 hex digits (32 bytes)")]
    Format(String),
    /// Readable by others.
    #[error("key file {0} is readable by group or others; chmod 600 it")]
    Mode(String),
}

/// The signing key and the keys still accepted.
#[derive(Clone)]
pub struct Keys {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} keys)", self.keys.len())
    }
}

impl Keys {
    /// Keys from raw 32-byte secrets (the first signs).
    pub fn from_secrets(secrets: &[[u8; 32]]) -> Keys {
        Keys {
            keys: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s))
                .collect(),
        }
    }

    /// Reads the key file; creates it (0600, one random key) when `create` and it does not exist.
    pub fn load(path: &Path, create: bool) -> Result<Keys, KeyError> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if create && !path.exists() {
            let mut secret = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            std::io::Write::write_all(&mut f, format!("{}\n", hex::encode(secret)).as_bytes())
                .map_err(io)?;
        }
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KeyError::Mode(path.display().to_string()));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut secrets = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let bytes =
                hex::decode(line).map_err(|_| KeyError::Format(path.display().to_string()))?;
            let s: [u8; 32] = bytes
                .try_into()
                .map_err(|_| KeyError::Format(path.display().to_string()))?;
            secrets.push(s);
        }
        if secrets.is_empty() {
            return Err(KeyError::Format(path.display().to_string()));
        }
        Ok(Keys::from_secrets(&secrets))
    }

    /// Signs claims with the first key.
    pub fn sign(&self, c: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(c).unwrap_or_default());
        let signing = format!("v1.{payload}");
        let tag = hmac::sign(&self.keys[0], signing.as_bytes());
        format!("{signing}.{}", B64.encode(tag.as_ref()))
    }

    /// Checks the signature against every key and the expiry against `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let payload = signed.strip_prefix("v1.").ok_or(TokenError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        if !self
            .keys
            .iter()
            .any(|k| hmac::verify(k, signed.as_bytes(), &sig).is_ok())
        {
            return Err(TokenError::BadSignature);
        }
        let json = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let c: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if c.exp <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            teams: vec!["a".into()],
            su: false,
            iat: 1,
            exp,
            apps: None,
            scope: None,
            aud: None,
        }
    }

    #[test]
    fn sign_verify_rotate_tamper_expire() {
        let old = Keys::from_secrets(&[[1; 32]]);
        let new = Keys::from_secrets(&[[2; 32], [1; 32]]);
        let t = old.sign(&claims(100));
        assert_eq!(old.verify(&t, 50).unwrap().sub, "alice");
        // During rotation a token of the old key is still good; after, it is not.
        assert!(new.verify(&t, 50).is_ok());
        let after = Keys::from_secrets(&[[2; 32]]);
        assert_eq!(after.verify(&t, 50), Err(TokenError::BadSignature));
        assert_eq!(old.verify(&t, 100), Err(TokenError::Expired));
        // Flip a claim: the signature no longer matches.
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let mut c = claims(100);
        c.su = true;
        let forged = format!("v1.{}.{sig}", B64.encode(serde_json::to_vec(&c).unwrap()));
        assert_ne!(forged, format!("{signed}.{sig}"));
        assert_eq!(old.verify(&forged, 50), Err(TokenError::BadSignature));
        assert_eq!(old.verify("nonsense", 50), Err(TokenError::Malformed));
        assert_eq!(
            old.verify(&"x".repeat(MAX_TOKEN_LEN + 1), 50),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn key_file_is_created_private_and_refused_when_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let k = Keys::load(&p, true).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let t = k.sign(&claims(10));
        assert!(Keys::load(&p, false).unwrap().verify(&t, 5).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Keys::load(&p, false), Err(KeyError::Mode(_))));
        std::fs::write(d.path().join("bad"), "zz\n").unwrap();
        std::fs::set_permissions(d.path().join("bad"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert!(matches!(
            Keys::load(&d.path().join("bad"), false),
            Err(KeyError::Format(_))
        ));
    }
}
