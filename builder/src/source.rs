//! Reading an app directory into a checked, sorted list of entries.
//!
//! Symlinks are never followed while reading. Each one must resolve, through any other symlinks of the
//! tree, to a path inside the app root: absolute targets and targets that climb above the root are
//! refused. Devices, FIFOs and sockets are refused, and so is input over the size or file-count limits.
//! `.git` directories are left out. File modes are normalised (0644, or 0755 when any execute bit is
//! set; directories 0755), so a checkout with another umask gives the same layer.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// Bounds on what one build may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of regular files.
    pub max_bytes: u64,
    /// Entries (files, directories, symlinks).
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 512 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// One entry of the app tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file on disk.
    File {
        /// Where to read it.
        path: PathBuf,
        /// Its size when it was listed.
        size: u64,
        /// Whether any execute bit was set.
        exec: bool,
    },
    /// A symlink and its target, as written.
    Symlink(String),
}

/// The app tree: relative `/`-separated paths (no leading `/`) to entries, in sorted order.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Entries by path.
    pub entries: BTreeMap<String, Kind>,
    /// Total bytes of regular files.
    pub bytes: u64,
}

/// Reads the directory `root` (not following symlinks) and checks it.
pub fn collect(root: &Path, limits: Limits) -> Result<Tree, BuildError> {
    let meta = std::fs::metadata(root)
        .map_err(|e| BuildError::Input(format!("cannot read app root {}: {e}", root.display())))?;
    if !meta.is_dir() {
        return Err(BuildError::Input(format!(
            "app root {} is not a directory",
            root.display()
        )));
    }
    let mut tree = Tree::default();
    walk(root, "", &mut tree, limits)?;
    for (path, kind) in &tree.entries {
        if let Kind::Symlink(target) = kind {
            check_symlink(&tree.entries, path, target)?;
        }
    }
    Ok(tree)
}

fn walk(dir: &Path, prefix: &str, tree: &mut Tree, limits: Limits) -> Result<(), BuildError> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| BuildError::Input(format!("cannot list {}: {e}", dir.display())))?;
    for entry in read {
        let entry =
            entry.map_err(|e| BuildError::Input(format!("cannot list {}: {e}", dir.display())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(BuildError::Input(format!(
                "file name {:?} in {prefix:?} is not UTF-8",
                entry.file_name()
            )));
        };
        if name == ".git" {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        if rel.len() > 4096 || name.contains(['\n', '\0']) {
            return Err(BuildError::Input(format!(
                "path {rel:?} is too long or holds a newline"
            )));
        }
        if tree.entries.len() >= limits.max_entries {
            return Err(BuildError::Input(format!(
                "the app has more than {} files and directories",
                limits.max_entries
            )));
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| BuildError::Input(format!("cannot stat {rel}: {e}")))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|e| BuildError::Input(format!("cannot read symlink {rel}: {e}")))?;
            let Some(target) = target.to_str() else {
                return Err(BuildError::Input(format!(
                    "symlink {rel} has a target that is not UTF-8"
                )));
            };
            tree.entries.insert(rel, Kind::Symlink(target.to_owned()));
        } else if ft.is_dir() {
            tree.entries.insert(rel.clone(), Kind::Dir);
            walk(&path, &rel, tree, limits)?;
        } else if ft.is_file() {
            tree.bytes += meta.len();
            if tree.bytes > limits.max_bytes {
                return Err(BuildError::Input(format!(
                    "the app's files exceed the limit of {} bytes (at {rel})",
                    limits.max_bytes
                )));
            }
            let exec = meta.permissions().mode() & 0o111 != 0;
            tree.entries.insert(
                rel,
                Kind::File {
                    path,
                    size: meta.len(),
                    exec,
                },
            );
        } else {
            return Err(BuildError::Input(format!(
                "{rel} is not a regular file, directory or symlink (devices, FIFOs and sockets are refused)"
            )));
        }
    }
    Ok(())
}

/// Most symlinks followed while resolving one, as the kernel allows.
const MAX_HOPS: usize = 40;

/// Checks that the symlink at `path` resolves inside the tree's root.
fn check_symlink(
    entries: &BTreeMap<String, Kind>,
    path: &str,
    target: &str,
) -> Result<(), BuildError> {
    let mut start: Vec<&str> = path.split('/').collect();
    start.pop();
    let mut hops = 0;
    resolve(entries, start, target, &mut hops).map_err(|why| {
        BuildError::Input(format!(
            "symlink {path} -> {target} escapes the app root ({why})"
        ))
    })?;
    Ok(())
}

/// Resolves `target` from the directory `dir` (components from the root), following symlinks of the
/// tree; fails when the path leaves the root.
fn resolve<'a>(
    entries: &'a BTreeMap<String, Kind>,
    mut dir: Vec<&'a str>,
    target: &'a str,
    hops: &mut usize,
) -> Result<Vec<&'a str>, String> {
    if target.starts_with('/') {
        return Err("absolute target".into());
    }
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if dir.pop().is_none() {
                    return Err("climbs above the root".into());
                }
            }
            name => {
                dir.push(name);
                let joined = dir.join("/");
                if let Some((_, Kind::Symlink(next))) = entries.get_key_value(joined.as_str()) {
                    *hops += 1;
                    if *hops > MAX_HOPS {
                        return Err("too many levels of symlinks".into());
                    }
                    dir.pop();
                    dir = resolve(entries, dir, next, hops)?;
                }
            }
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree_with(f: impl FnOnce(&Path)) -> Result<Tree, BuildError> {
        let d = tempfile::tempdir().unwrap();
        f(d.path());
        collect(d.path(), Limits::default())
    }

    #[test]
    fn lists_sorted_and_skips_git() {
        let t = tree_with(|p| {
            std::fs::create_dir_all(p.join("www/css")).unwrap();
            std::fs::create_dir_all(p.join(".git/objects")).unwrap();
            std::fs::write(p.join("www/index.html"), "hi").unwrap();
            std::fs::write(p.join("www/css/a.css"), "x").unwrap();
            std::fs::write(p.join("run.sh"), "#!/bin/sh").unwrap();
            std::fs::set_permissions(p.join("run.sh"), std::fs::Permissions::from_mode(0o700))
                .unwrap();
            symlink("www/index.html", p.join("home")).unwrap();
        })
        .unwrap();
        let names: Vec<&str> = t.entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "home",
                "run.sh",
                "www",
                "www/css",
                "www/css/a.css",
                "www/index.html"
            ]
        );
        assert!(matches!(t.entries["run.sh"], Kind::File { exec: true, .. }));
        assert_eq!(t.bytes, 2 + 1 + 9);
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let cases: Vec<(&str, &str)> = vec![
            ("../outside", "climbs above"),
            ("/etc/passwd", "absolute"),
            ("a/../../x", "climbs above"),
            ("loop", "too many levels"),
            ("up/../x", "climbs above"),
        ];
        for (target, why) in cases {
            let e = tree_with(|p| {
                std::fs::create_dir(p.join("a")).unwrap();
                symlink("..", p.join("a/up")).unwrap();
                symlink("a/up", p.join("up")).unwrap();
                symlink("loop", p.join("loop")).unwrap();
                symlink(target, p.join("bad")).unwrap();
            })
            .unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("escapes the app root") && msg.contains(why),
                "{target}: {msg}"
            );
        }
    }

    #[test]
    fn links_inside_the_root_pass_even_dangling_ones() {
        tree_with(|p| {
            std::fs::create_dir(p.join("a")).unwrap();
            symlink("../b", p.join("a/b")).unwrap();
            symlink("a/./b/../c", p.join("c2")).unwrap();
            symlink("missing", p.join("d")).unwrap();
        })
        .unwrap();
    }

    #[test]
    fn special_files_and_oversize_input_are_refused() {
        let e = tree_with(|p| {
            let out = std::process::Command::new("mkfifo")
                .arg(p.join("pipe"))
                .output()
                .unwrap();
            assert!(out.status.success());
        })
        .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("big"), vec![0u8; 2000]).unwrap();
        let limits = Limits {
            max_bytes: 1000,
            max_entries: 10,
        };
        let e = collect(d.path(), limits).unwrap_err();
        assert!(
            e.to_string().contains("exceed the limit of 1000 bytes"),
            "{e}"
        );
        for i in 0..11 {
            std::fs::write(d.path().join(format!("f{i}")), "").unwrap();
        }
        std::fs::remove_file(d.path().join("big")).unwrap();
        let e = collect(d.path(), limits).unwrap_err();
        assert!(e.to_string().contains("more than 10 files"), "{e}");
    }
}
