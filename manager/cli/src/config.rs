//! The client's files: `$XDG_CONFIG_HOME/atlantis/config.toml` (manager URL per region, default region)
//! and `$XDG_CONFIG_HOME/atlantis/token` (the session token, mode 0600 from the moment it exists).
//!
//! ```toml
//! default_region = "us-east"
//!
//! [regions.us-east]
//! manager = "https://manager.us-east.example.com"
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use atlantis_common::RegionName;
use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// Largest config or token file read.
const MAX_FILE: u64 = 64 * 1024;

/// One region's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Base URL of a manager of the region.
    pub manager: String,
}

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The region used when no `-R` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<RegionName>,
    /// Managers per region.
    #[serde(default)]
    pub regions: BTreeMap<RegionName, RegionConfig>,
}

/// The directory of the client's files: `$XDG_CONFIG_HOME/atlantis`, else `$HOME/.config/atlantis`.
pub fn config_dir() -> Result<PathBuf, CliError> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("atlantis"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("atlantis")),
        None => Err(CliError::Config(
            "neither XDG_CONFIG_HOME nor HOME is set: cannot find the config directory".into(),
        )),
    }
}

/// The config file path.
pub fn config_path() -> Result<PathBuf, CliError> {
    Ok(config_dir()?.join("config.toml"))
}

/// The stored token's path.
pub fn token_path() -> Result<PathBuf, CliError> {
    Ok(config_dir()?.join("token"))
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)?;
    let mut s = String::new();
    f.take(MAX_FILE + 1).read_to_string(&mut s)?;
    if s.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_FILE} bytes"
        )));
    }
    Ok(s)
}

impl FileConfig {
    /// Reads the config file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<FileConfig, CliError> {
        let text = match read_bounded(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
            Err(e) => return Err(CliError::Config(format!("{}: {e}", path.display()))),
        };
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_owned();
            CliError::Config(format!("{}: {msg}", path.display()))
        })
    }

    /// Writes the config file (through a temporary file and a rename, so a reader never sees half).
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let text = toml::to_string_pretty(self).map_err(|e| CliError::Config(e.to_string()))?;
        write_private(path, text.as_bytes())
    }
}

/// Creates the parent directory (0700) and writes `data` to `path` with mode 0600: the temporary file is
/// created with that mode, so the content is never readable by others, then renamed into place.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CliError> {
    let err = |e: std::io::Error| CliError::Config(format!("{}: {e}", path.display()));
    let dir = path
        .parent()
        .ok_or_else(|| CliError::Config(format!("{}: no parent directory", path.display())))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    let written = f
        .write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// Reads a token file: refused when others can read it (a leaked token is a session for anyone).
pub fn read_token(path: &Path) -> Result<Option<String>, CliError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::Config(format!("{}: {e}", path.display()))),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CliError::Config(format!(
            "{}: readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let t = read_bounded(path).map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    let t = t.trim().to_owned();
    Ok((!t.is_empty()).then_some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_refuses_unknown_keys() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a/config.toml");
        assert_eq!(FileConfig::load(&p).unwrap(), FileConfig::default());
        let mut c = FileConfig {
            default_region: Some("us-east".parse().unwrap()),
            ..Default::default()
        };
        c.regions.insert(
            "us-east".parse().unwrap(),
            RegionConfig {
                manager: "http://m:7700".into(),
            },
        );
        c.save(&p).unwrap();
        assert_eq!(FileConfig::load(&p).unwrap(), c);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&p, "default_regoin = \"x\"\n").unwrap();
        let e = FileConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("unknown field `default_regoin`"), "{e}");
    }

    #[test]
    fn tokens_readable_by_others_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let p = dir.join("token");
        write_private(&p, b"secret\n").unwrap();
        assert_eq!(read_token(&p).unwrap().as_deref(), Some("secret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            read_token(&p)
                .unwrap_err()
                .to_string()
                .contains("readable by others")
        );
        assert_eq!(read_token(&dir.join("none")).unwrap(), None);
    }
}
