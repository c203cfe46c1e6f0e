//! Dependency data encrypted at rest: XChaCha20-Poly1305 with a 32-byte key from an operator file.
//!
//! A sealed value is `base64(nonce(24) || ciphertext+tag)`; the dependency's name is the associated data,
//! so a sealed blob copied onto another dependency does not open.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

/// Why a key could not be loaded or a value opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file is unreadable or malformed.
    #[error("secret key file {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A sealed value does not open with this key (wrong key, tampered or moved).
    #[error("sealed data does not open with this key")]
    Open,
}

/// Seals and opens secret values.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Reads the key: 64 hex digits (surrounding whitespace ignored). The file must not be readable by
    /// group or others.
    pub fn from_file(path: &Path) -> Result<Sealer, SecretError> {
        let err = |reason: String| SecretError::Key {
            path: path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(
                "must not be readable by group or others (chmod 600)".into()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let key = hex::decode(text.trim()).map_err(|_| err("must hold 64 hex digits".into()))?;
        Sealer::from_key(&key).map_err(|_| err("must hold 64 hex digits (32 bytes)".into()))
    }

    /// A sealer from raw key bytes (32).
    pub fn from_key(key: &[u8]) -> Result<Sealer, SecretError> {
        let cipher = XChaCha20Poly1305::new_from_slice(key).map_err(|_| SecretError::Open)?;
        Ok(Sealer { cipher })
    }

    /// Encrypts `plain`, bound to `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Decrypts what [`Sealer::seal`] made for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Open)?;
        if raw.len() < 24 + 16 {
            return Err(SecretError::Open);
        }
        let (nonce, ct) = raw.split_at(24);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let s = Sealer::from_key(&[7u8; 32]).unwrap();
        let sealed = s.seal("db", b"password=hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(s.open("db", &sealed).unwrap(), b"password=hunter2");
        assert!(s.open("other", &sealed).is_err(), "bound to its context");
        let other = Sealer::from_key(&[8u8; 32]).unwrap();
        assert!(other.open("db", &sealed).is_err(), "wrong key");
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(s.open("db", &tampered).is_err(), "tampered");
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Sealer::from_file(&p).is_err(), "world-readable key refused");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        Sealer::from_file(&p).unwrap();
        std::fs::write(&p, "abcd").unwrap();
        assert!(Sealer::from_file(&p).is_err(), "short key refused");
    }
}
