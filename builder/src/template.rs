//! Templates: the base layer under the app's files.
//!
//! - `static`: an almost empty root: `/etc/passwd` and `/etc/group` (root and nobody) and `/tmp`.
//! - `busybox`: the same plus Debian's static `/bin/busybox` (package busybox-static) and a symlink in
//!   `/bin` for each applet it lists (`busybox --list`), so `sh`, `httpd`, `wget`... exist.
//!
//! The base layer's cache key covers the template and the busybox binary's content, so a new busybox
//! gives a new base layer and the old one ages out of the cache.

use std::path::Path;
use std::process::{Command, Stdio};

use atlantis_common::api::app_config::Template;

use crate::error::BuildError;
use crate::layer::{Content, Entry};

/// The search PATH set in every image.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The entries of `template`'s base layer, sorted. `busybox` is the binary to install for `busybox`.
pub fn base_entries(template: Template, busybox: &Path) -> Result<Vec<Entry>, BuildError> {
    if template == Template::Debian {
        return Err(BuildError::Input(
            "the debian template's base is a debootstrap root, not a fixed layer".into(),
        ));
    }
    let mut entries = Vec::new();
    let dir = |p: &str, mode: u32| Entry {
        path: p.into(),
        content: Content::Dir(mode),
    };
    if template == Template::Busybox {
        let meta = std::fs::metadata(busybox).map_err(|e| {
            BuildError::Input(format!(
                "the busybox template needs {} (Debian package busybox-static): {e}",
                busybox.display()
            ))
        })?;
        let applets = applets(busybox)?;
        entries.push(dir("bin", 0o755));
        let mut names: Vec<String> = applets
            .into_iter()
            .filter(|a| a != "busybox")
            .chain(std::iter::once("busybox".to_owned()))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let path = format!("bin/{name}");
            let content = if name == "busybox" {
                Content::File {
                    path: busybox.to_owned(),
                    mode: 0o755,
                    size: meta.len(),
                }
            } else {
                Content::Symlink("busybox".into())
            };
            entries.push(Entry { path, content });
        }
    }
    entries.push(dir("etc", 0o755));
    entries.push(Entry {
        path: "etc/group".into(),
        content: Content::Bytes(GROUP.as_bytes().to_vec(), 0o644),
    });
    entries.push(Entry {
        path: "etc/passwd".into(),
        content: Content::Bytes(PASSWD.as_bytes().to_vec(), 0o644),
    });
    entries.push(dir("tmp", 0o1777));
    Ok(entries)
}

/// The applet names `busybox --list` prints (plain names only).
fn applets(busybox: &Path) -> Result<Vec<String>, BuildError> {
    let out = Command::new(busybox)
        .arg("--list")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Input(format!("cannot run {} --list: {e}", busybox.display())))?;
    if !out.status.success() {
        return Err(BuildError::Input(format!(
            "{} --list failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let list = String::from_utf8_lossy(&out.stdout);
    Ok(list
        .split_whitespace()
        .filter(|a| {
            !a.is_empty()
                && a.len() < 64
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '['))
                && *a != "."
                && *a != ".."
        })
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_base_is_tiny_and_sorted() {
        let e = base_entries(Template::Static, Path::new("/nonexistent")).unwrap();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["etc", "etc/group", "etc/passwd", "tmp"]);
    }

    #[test]
    fn busybox_base_links_every_applet() {
        let bb = atlantis_testkit::require_file("/bin/busybox", "busybox-static");
        let e = base_entries(Template::Busybox, &bb).unwrap();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        for applet in ["bin/sh", "bin/httpd", "bin/busybox", "bin/wget"] {
            assert!(paths.contains(&applet), "{applet}");
        }
        assert!(paths.len() > 200, "{}", paths.len());
    }

    #[test]
    fn missing_busybox_is_a_clear_error() {
        let e = base_entries(Template::Busybox, Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(e.to_string().contains("busybox-static"), "{e}");
    }
}
