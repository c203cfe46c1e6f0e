//! The Python virtualenv that `.ci/install` fills with test tools from PyPI (moto, grpcio):
//! `$ATLANTIS_VENV`, else `$HOME/.cache/atlantis-venv`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The venv directory (it may not exist yet).
pub fn dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("ATLANTIS_VENV") {
        return Some(PathBuf::from(v));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/atlantis-venv"))
}

/// The venv's `python`, checked to import every module of `modules`; panics with the install command
/// (for the PyPI `packages`) otherwise.
pub fn python(modules: &[&str], packages: &str) -> PathBuf {
    let python = dir().map(|d| d.join("bin/python"));
    let imports = format!("import {}", modules.join(", "));
    let ok = python.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", &imports])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    match python {
        Some(p) if ok => p,
        _ => panic!(
            "test needs the Python modules {modules:?} (PyPI {packages}) in the test venv: run .ci/install, \
             or python3 -m venv $HOME/.cache/atlantis-venv && $HOME/.cache/atlantis-venv/bin/pip install {packages}"
        ),
    }
}
