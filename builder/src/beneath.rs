//! Reading an app tree through descriptors, so a path swapped after it was checked cannot redirect a
//! read.
//!
//! The app root is opened once as a directory ([`RootDir`]). Everything below it is opened with
//! `openat2(root_fd, rel, …, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: the kernel
//! refuses any symlink on the way and any path that leaves the root, at the moment of the open. Files
//! are opened `O_NONBLOCK` (a FIFO swapped in cannot hang the build) and checked on the opened
//! descriptor (`fstat`: a regular file of the size that was listed) before a byte is read.
//! A kernel without `openat2` (Linux < 5.6) fails the build with a clear error; there is no fallback
//! to path-based opens.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use crate::error::BuildError;

/// An app root, open as a directory.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Maps an `openat2` error to a build error naming the path; `ENOSYS` says what the kernel lacks.
fn open_error(rel: &str, e: rustix::io::Errno) -> BuildError {
    match e {
        rustix::io::Errno::NOSYS => BuildError::Input(format!(
            "cannot read {rel}: this kernel lacks openat2 (Linux 5.6 or later is needed to read app \
             files without following links)"
        )),
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => BuildError::Input(format!(
            "{rel} became a symlink (or leads out of the app root) while the build read it"
        )),
        rustix::io::Errno::NOENT => {
            BuildError::Input(format!("{rel} disappeared while the build read it"))
        }
        e => BuildError::Input(format!("cannot open {rel}: {e}")),
    }
}

impl RootDir {
    /// Opens `path` as the root. No component of `path` may be a symlink (callers pass canonical
    /// paths: the API checked this one against `allowed_dirs`, so a link swapped in since then makes
    /// the open fail instead of leading elsewhere).
    pub fn open(path: &Path) -> Result<RootDir, BuildError> {
        let fd = rustix::fs::openat2(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => BuildError::Input(format!(
                "app root {} has a symlink in its path (give the real path)",
                path.display()
            )),
            rustix::io::Errno::NOSYS => open_error(&path.display().to_string(), e),
            e => BuildError::Input(format!("cannot open app root {}: {e}", path.display())),
        })?;
        Ok(RootDir {
            fd,
            path: path.to_owned(),
        })
    }

    /// The root's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory `rel` (relative, `/`-separated; "" for the root) below the root.
    pub fn open_dir(&self, rel: &str) -> Result<OwnedFd, BuildError> {
        let p = if rel.is_empty() { "." } else { rel };
        let fd = rustix::fs::openat2(
            &self.fd,
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )
        .map_err(|e| open_error(rel, e))?;
        Ok(fd)
    }

    /// Opens the regular file `rel` below the root without following any link, and checks on the open
    /// descriptor that it is a regular file of `size` bytes (when given).
    pub fn open_file(&self, rel: &str, size: Option<u64>) -> Result<std::fs::File, BuildError> {
        run_hook(&self.path, rel);
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )
        .map_err(|e| open_error(rel, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| open_error(rel, e))?;
        if !FileType::from_raw_mode(st.st_mode).is_file() {
            return Err(BuildError::Input(format!(
                "{rel} is no longer a regular file (it changed while the build read it)"
            )));
        }
        if let Some(want) = size
            && st.st_size as u64 != want
        {
            return Err(BuildError::Input(format!(
                "{rel} changed size while the build read it"
            )));
        }
        Ok(std::fs::File::from(fd))
    }

    /// Reads the regular file `rel` below the root, at most `max` bytes.
    pub fn read_file(&self, rel: &str, max: u64) -> Result<Vec<u8>, BuildError> {
        use std::io::Read as _;
        let f = self.open_file(rel, None)?;
        let mut out = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| BuildError::Input(format!("cannot read {rel}: {e}")))?;
        if out.len() as u64 > max {
            return Err(BuildError::Input(format!(
                "{rel} is larger than {max} bytes"
            )));
        }
        Ok(out)
    }
}

/// A test hook called with the root and the relative path just before a file is opened.
pub type Hook = Arc<dyn Fn(&Path, &str) + Send + Sync>;

static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// TEST ONLY: sets (or clears) the hook run before every file open below a root. Inert unless a test
/// sets it; the hook gets the root's path, so tests running at once act only on their own roots.
#[doc(hidden)]
pub fn set_test_hook(h: Option<Hook>) {
    *HOOK.lock().unwrap_or_else(|p| p.into_inner()) = h;
}

fn run_hook(root: &Path, rel: &str) {
    let h = HOOK.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(h) = h {
        h(root, rel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_and_escapes_are_refused_at_open() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("sub")).unwrap();
        std::fs::write(r.join("sub/ok"), "fine").unwrap();
        symlink(outside.path().join("secret"), r.join("abs")).unwrap();
        symlink("sub/ok", r.join("rel")).unwrap();
        symlink(outside.path(), r.join("dirlink")).unwrap();
        let root = RootDir::open(r).unwrap();
        assert_eq!(root.read_file("sub/ok", 100).unwrap(), b"fine");
        for bad in [
            "abs",
            "rel",
            "dirlink/secret",
            "../x",
            "/etc/passwd",
            "sub/../../x",
        ] {
            let e = root.read_file(bad, 100).unwrap_err().to_string();
            assert!(
                e.contains("symlink") || e.contains("cannot open") || e.contains("disappeared"),
                "{bad}: {e}"
            );
        }
        assert!(root.open_dir("dirlink").is_err());
        let e = root.open_file("sub/ok", Some(3)).unwrap_err().to_string();
        assert!(e.contains("changed size"), "{e}");
        let e = root.open_file("sub", None).unwrap_err().to_string();
        assert!(e.contains("no longer a regular file"), "{e}");
    }
}
