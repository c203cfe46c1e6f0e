//! Config loading: a TOML file, then environment overrides, then serde into the service's own `Config`.
//!
//! Overrides are named `<PREFIX>__<KEY>[__<SUBKEY>...]`, for example `ATLANTIS_ROUTER__STATUS_ADDR=...` or
//! `ATLANTIS_REGISTRY__STORAGE__KIND=s3`; keys are lower-cased. A value is read as TOML when it parses as a
//! TOML value (numbers, booleans, arrays, quoted strings), else as a plain string.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not match the expected shape.
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Invalid {
        path: Option<PathBuf>,
        message: String,
    },
    /// An environment override could not be applied.
    #[error("invalid environment override {name}: {message}")]
    Env { name: String, message: String },
}

/// Loads `T` from an optional TOML file plus the process environment's overrides under `env_prefix`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError> {
    load_with_env(path, env_prefix, std::env::vars())
}

/// As [`load`], with the environment given explicitly (for tests).
pub fn load_with_env<T: DeserializeOwned>(
    path: Option<&Path>,
    env_prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: p.to_owned(),
            source,
        })?,
        None => String::new(),
    };
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Invalid {
            path: path.map(Path::to_owned),
            message: e.to_string(),
        })?;
    let marker = format!("{env_prefix}__");
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&marker))
        .collect();
    overrides.sort();
    for (name, value) in overrides {
        let keys: Vec<String> = name[marker.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                name,
                message: "empty key segment".into(),
            });
        }
        let parsed = parse_value(&value);
        let mut table = &mut doc;
        for key in &keys[..keys.len() - 1] {
            let entry = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        name,
                        message: format!("{key} is not a table"),
                    });
                }
            };
        }
        table.insert(keys[keys.len() - 1].clone(), parsed);
    }
    T::deserialize(toml::Value::Table(doc)).map_err(|e| ConfigError::Invalid {
        path: path.map(Path::to_owned),
        message: e.to_string(),
    })
}

fn parse_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        listen: String,
        #[serde(default)]
        workers: u32,
        storage: Storage,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Storage {
        kind: String,
        #[serde(default)]
        path: Option<String>,
    }

    #[test]
    fn file_then_env() {
        let dir = std::env::temp_dir().join(format!("atlantis-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\n[storage]\nkind = \"fs\"\npath = \"/a\"\n",
        )
        .unwrap();
        let env = vec![
            ("X__WORKERS".to_string(), "4".to_string()),
            ("X__STORAGE__KIND".to_string(), "s3".to_string()),
            ("OTHER".to_string(), "1".to_string()),
        ];
        let c: Cfg = load_with_env(Some(&file), "X", env).unwrap();
        assert_eq!(
            c,
            Cfg {
                listen: "127.0.0.1:1".into(),
                workers: 4,
                storage: Storage {
                    kind: "s3".into(),
                    path: Some("/a".into())
                }
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_are_clear() {
        let e = load_with_env::<Cfg>(None, "X", vec![]).unwrap_err();
        assert!(e.to_string().contains("missing field `listen`"), "{e}");
        let e =
            load_with_env::<Cfg>(Some(Path::new("/nonexistent/x.toml")), "X", vec![]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read config file /nonexistent/x.toml"),
            "{e}"
        );
        let env = vec![
            ("X__LISTEN".into(), "a".into()),
            ("X__STORAGE__KIND".into(), "fs".into()),
            ("X__BOGUS".into(), "1".into()),
        ];
        let e = load_with_env::<Cfg>(None, "X", env).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }
}
