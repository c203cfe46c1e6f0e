//! Reading an app directory into a checked, sorted list of entries.
//!
//! The tree is listed through descriptors (`openat2` below the root, see [`crate::beneath`]) and files
//! are read the same way later ([`Tree::open`]): symlinks are never followed while reading, not even
//! one swapped in after the listing. Each one must resolve, through any other symlinks of the
//! tree, to a path inside the app root: absolute targets and targets that climb above the root are
//! refused. Devices, FIFOs and sockets are refused, and so is input over the size or file-count limits.
//! `.git` directories are left out. File modes are normalised (0644, or 0755 when any execute bit is
//! set; directories 0755), so a checkout with another umask gives the same layer.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType};

use crate::beneath::RootDir;
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
        /// Its path (for messages; reads go through [`Tree::open`], below the root's descriptor).
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
    /// The root the entries were listed from, open as a directory.
    pub root: Option<Arc<RootDir>>,
}

impl Tree {
    /// Opens the regular file `rel` of the tree below the root's descriptor, never following a link,
    /// and checks it is still a regular file of its listed size.
    pub fn open(&self, rel: &str) -> Result<std::fs::File, BuildError> {
        let (Some(root), Some(Kind::File { size, .. })) = (&self.root, self.entries.get(rel))
        else {
            return Err(BuildError::Input(format!("{rel} is not a listed file")));
        };
        root.open_file(rel, Some(*size))
    }

    /// Copies the tree into `dest` (a fresh directory), reading files as [`Tree::open`] does: so build
    /// commands work on a private copy and never touch the caller's files.
    pub fn copy_into(&self, dest: &Path) -> Result<(), BuildError> {
        let io = |rel: &str| {
            let what = format!("copying {rel}");
            move |source| BuildError::Io { what, source }
        };
        for (rel, kind) in &self.entries {
            let p = dest.join(rel);
            match kind {
                Kind::Dir => std::fs::create_dir_all(&p).map_err(io(rel))?,
                Kind::File { exec, .. } => {
                    let mut from = self.open(rel)?;
                    let mut to = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&p)
                        .map_err(io(rel))?;
                    std::io::copy(&mut from, &mut to).map_err(io(rel))?;
                    let mode = if *exec { 0o755 } else { 0o644 };
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                        .map_err(io(rel))?;
                }
                Kind::Symlink(t) => std::os::unix::fs::symlink(t, &p).map_err(io(rel))?,
            }
        }
        Ok(())
    }
}

/// Reads the directory `root` (through descriptors, never following symlinks) and checks it. `root`
/// must be a path without symlinks (see [`RootDir::open`]).
pub fn collect(root: &Path, limits: Limits) -> Result<Tree, BuildError> {
    collect_at(Arc::new(RootDir::open(root)?), limits)
}

/// As [`collect`], below an open root.
pub fn collect_at(dir: Arc<RootDir>, limits: Limits) -> Result<Tree, BuildError> {
    let mut tree = Tree::default();
    let top = dir.open_dir("")?;
    walk(&dir, &top, "", &mut tree, limits)?;
    for (path, kind) in &tree.entries {
        if let Kind::Symlink(target) = kind {
            check_symlink(&tree.entries, path, target)?;
        }
    }
    tree.root = Some(dir);
    Ok(tree)
}

fn walk(
    root: &RootDir,
    dir: &OwnedFd,
    prefix: &str,
    tree: &mut Tree,
    limits: Limits,
) -> Result<(), BuildError> {
    let shown = if prefix.is_empty() { "." } else { prefix };
    let list_err = |e: rustix::io::Errno| BuildError::Input(format!("cannot list {shown}: {e}"));
    let mut names = Vec::new();
    let mut reader = rustix::fs::Dir::read_from(dir).map_err(list_err)?;
    while let Some(entry) = reader.read() {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(name.to_vec());
        if names.len() > limits.max_entries {
            break;
        }
    }
    for raw in names {
        let Ok(name) = String::from_utf8(raw.clone()) else {
            return Err(BuildError::Input(format!(
                "file name {:?} in {prefix:?} is not UTF-8",
                String::from_utf8_lossy(&raw)
            )));
        };
        if name == ".git" {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
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
        let st = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| BuildError::Input(format!("cannot stat {rel}: {e}")))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft.is_symlink() {
            let target = rustix::fs::readlinkat(dir, name.as_str(), Vec::new())
                .map_err(|e| BuildError::Input(format!("cannot read symlink {rel}: {e}")))?;
            let Ok(target) = target.into_string() else {
                return Err(BuildError::Input(format!(
                    "symlink {rel} has a target that is not UTF-8"
                )));
            };
            tree.entries.insert(rel, Kind::Symlink(target));
        } else if ft.is_dir() {
            tree.entries.insert(rel.clone(), Kind::Dir);
            let sub = root.open_dir(&rel)?;
            walk(root, &sub, &rel, tree, limits)?;
        } else if ft.is_file() {
            let size = st.st_size as u64;
            tree.bytes += size;
            if tree.bytes > limits.max_bytes {
                return Err(BuildError::Input(format!(
                    "the app's files exceed the limit of {} bytes (at {rel})",
                    limits.max_bytes
                )));
            }
            let exec = st.st_mode & 0o111 != 0;
            tree.entries.insert(
                rel.clone(),
                Kind::File {
                    path: root.path().join(&rel),
                    size,
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
