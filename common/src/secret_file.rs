//! Secret files (tokens): read only when no one but their owner can read or write them, and only
//! when they hold one usable token. Every service checks its token files through here, so the rule and
//! its message are the same everywhere.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token file was refused. The message never holds the file's content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// It cannot be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        message: String,
    },
    /// Group or others may read or write it.
    #[error(
        "{path} is readable or writable by group or others (mode {mode:04o}): anyone on this host \
         could use it; run chmod 600 on it"
    )]
    Mode {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// It does not hold one token.
    #[error(
        "{path} must hold one token of at least {MIN_TOKEN_LEN} characters, without whitespace"
    )]
    Shape {
        /// The file.
        path: String,
    },
}

/// Checks the mode of `path` (nothing for group or others), then reads it.
pub fn read_private(path: &Path) -> Result<String, SecretFileError> {
    let p = || path.display().to_string();
    let io = |e: std::io::Error| SecretFileError::Io {
        path: p(),
        message: e.to_string(),
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Mode { path: p(), mode });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Reads a token file: private (see [`read_private`]), one token of at least [`MIN_TOKEN_LEN`]
/// characters, surrounding whitespace ignored.
pub fn read_token(path: &Path) -> Result<String, SecretFileError> {
    let token = read_private(path)?.trim().to_owned();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SecretFileError::Shape {
            path: path.display().to_string(),
        });
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        (d, p)
    }

    #[test]
    fn only_private_files_with_one_token_are_read() {
        let (_d, p) = file(0o600, "  0123456789abcdef\n");
        assert_eq!(read_token(&p).unwrap(), "0123456789abcdef");
        let (_d, p) = file(0o400, "0123456789abcdef");
        assert_eq!(read_token(&p).unwrap(), "0123456789abcdef");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            let (_d, p) = file(mode, "0123456789abcdef");
            let e = read_token(&p).unwrap_err();
            assert!(matches!(e, SecretFileError::Mode { .. }), "{mode:o}: {e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
            assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
        }
        for bad in ["short", "two tokens here!", ""] {
            let (_d, p) = file(0o600, bad);
            assert!(matches!(read_token(&p), Err(SecretFileError::Shape { .. })));
        }
        let missing = std::path::Path::new("/nonexistent/atlantis/token");
        assert!(matches!(
            read_token(missing),
            Err(SecretFileError::Io { .. })
        ));
    }
}
