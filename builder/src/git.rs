//! Reading an app from git: a repository (a local path, or a URL cloned bare into a temp dir), a commit
//! and an app root inside it. `git` runs with argument lists (never a shell), the commit is resolved with
//! `rev-parse --verify --end-of-options`, and `git archive <commit>:<root>` is read as a tar stream and
//! unpacked with checks: no absolute or `..` paths, no writes through symlinks, only files, directories
//! and symlinks, within the size and count limits.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};

use atlantis_common::names::Sha;

use crate::error::BuildError;
use crate::source::Limits;

/// Transports git may use, for the clone and for anything it would fetch on its own (submodules
/// included): `GIT_ALLOW_PROTOCOL` and `protocol.allow`. Local repositories are never cloned (they are
/// read in place, after the caller checked them against `allowed_dirs`), so `file` is not among them.
const ALLOWED_PROTOCOLS: &str = "https:ssh";

/// A git input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// A local repository path, a `file:///` URL, or an `https://` or `ssh://` URL.
    pub repo: String,
    /// The commit to build.
    pub sha: Sha,
    /// The app's directory inside the repository ("" for the top).
    #[serde(default)]
    pub root: String,
}

/// Where a repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repo {
    /// On this host (a path, or the path of a `file:///` URL).
    Local(std::path::PathBuf),
    /// An `https://` or `ssh://` URL, cloned bare.
    Remote(String),
}

/// Classifies a repository string, refusing what git could take for another transport or an option:
/// a leading `-`, `<transport>::<address>` helpers (`ext::`, `fd::`...), schemes other than https,
/// ssh and file, `file://` URLs naming a host or holding `%` escapes, scp-like `host:path` addresses
/// (write `ssh://`), and URLs whose host or user starts with `-`.
pub fn classify(repo: &str) -> Result<Repo, BuildError> {
    let bad = |why: &str| {
        BuildError::Request(format!(
            "git repository {repo:?} {why} (give a local path, file:///PATH, https:// or ssh://)"
        ))
    };
    if repo.is_empty() || repo.len() > 2048 {
        return Err(bad("is empty or too long"));
    }
    if repo.starts_with('-') {
        return Err(bad("looks like an option"));
    }
    if repo.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("holds spaces or control characters"));
    }
    let scheme_len = repo
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .unwrap_or(repo.len());
    let rest = &repo[scheme_len..];
    if scheme_len > 0 && rest.starts_with("::") {
        return Err(bad(
            "names a git transport helper (ext::, fd::...), which is refused",
        ));
    }
    if scheme_len > 0 && rest.starts_with("://") {
        let scheme = repo[..scheme_len].to_ascii_lowercase();
        let after = &rest[3..];
        return match scheme.as_str() {
            "file" => {
                let Some(path) = after.strip_prefix('/') else {
                    return Err(bad("is a file URL with a host (write file:///PATH)"));
                };
                if path.contains('%') {
                    return Err(bad("is a file URL with % escapes"));
                }
                Ok(Repo::Local(std::path::PathBuf::from(format!("/{path}"))))
            }
            "https" | "ssh" => {
                let authority = after.split('/').next().unwrap_or("");
                let host = authority.rsplit('@').next().unwrap_or("");
                if authority.is_empty()
                    || host.is_empty()
                    || host.starts_with('-')
                    || authority.starts_with('-')
                    || !after.contains('/')
                {
                    return Err(bad("has no usable host and path"));
                }
                Ok(Repo::Remote(repo.to_owned()))
            }
            other => Err(bad(&format!(
                "uses the {other}:// transport; only https, ssh and file are allowed"
            ))),
        };
    }
    if repo.contains("::") {
        return Err(bad("holds ::, which git reads as a transport helper"));
    }
    // git reads `host:path` (a colon before any slash) as an scp-like ssh address.
    if let Some(colon) = repo.find(':')
        && !repo[..colon].contains('/')
    {
        return Err(bad(
            "looks like an scp-style ssh address; write ssh://HOST/PATH",
        ));
    }
    Ok(Repo::Local(std::path::PathBuf::from(repo)))
}

/// True when `repo` is a remote URL (cloned) rather than a repository on this host.
pub fn is_url(repo: &str) -> bool {
    matches!(classify(repo), Ok(Repo::Remote(_)))
}

/// Checks an app root: relative, plain components only.
pub fn check_root(root: &str) -> Result<String, BuildError> {
    let trimmed = root.trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(String::new());
    }
    let bad = trimmed.len() > 1024
        || trimmed.starts_with('/')
        || trimmed.split('/').any(|c| {
            c.is_empty()
                || c == "."
                || c == ".."
                || c.starts_with('-')
                || c.contains(['\0', '\n', ':'])
        });
    if bad {
        return Err(BuildError::Request(format!(
            "app root {root:?} must be a relative path of plain names inside the repository"
        )));
    }
    Ok(trimmed.to_owned())
}

fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        .env("GIT_PROTOCOL_FROM_USER", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_SSH_COMMAND")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .stdin(Stdio::null());
    // The same allow-list as config (it wins over a repository's own), no hooks, no fsmonitor
    // program, and no redirect of an https clone to another place.
    for kv in [
        "protocol.allow=never",
        "protocol.https.allow=always",
        "protocol.ssh.allow=always",
        "core.hooksPath=/dev/null",
        "core.fsmonitor=false",
        "http.followRedirects=false",
    ] {
        c.args(["-c", kv]);
    }
    c
}

fn run(mut c: Command, what: &str) -> Result<String, BuildError> {
    let out = c
        .output()
        .map_err(|e| BuildError::Git(format!("cannot run git ({what}): {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Git(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Exports the app root of `src` at its commit into the empty directory `dest`; `scratch` holds a bare
/// clone when the repository is a URL. Returns the full commit id.
pub fn export(
    src: &GitSource,
    dest: &Path,
    scratch: &Path,
    limits: Limits,
) -> Result<String, BuildError> {
    let root = check_root(&src.root)?;
    let repo_dir = match classify(&src.repo)? {
        Repo::Remote(url) => {
            let bare = scratch.join("repo.git");
            let mut c = git();
            c.args([
                "-c",
                "http.lowSpeedLimit=1000",
                "-c",
                "http.lowSpeedTime=30",
                "clone",
                "--bare",
                "--quiet",
                "--no-recurse-submodules",
                "--",
                &url,
            ])
            .arg(&bare);
            run(c, "git clone")?;
            bare
        }
        Repo::Local(p) => {
            if !p.is_dir() {
                return Err(BuildError::Git(format!(
                    "repository {} is not a directory",
                    p.display()
                )));
            }
            p
        }
    };
    let mut c = git();
    c.arg("-C")
        .arg(&repo_dir)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{}^{{commit}}", src.sha));
    let full = run(c, "resolving the commit").map_err(|_| {
        BuildError::Git(format!(
            "commit {} is not in the repository {}",
            src.sha, src.repo
        ))
    })?;
    if full.len() != 40 || !full.starts_with(src.sha.as_str()) {
        return Err(BuildError::Git(format!(
            "commit {} resolved to {full:?}, which is not that commit",
            src.sha
        )));
    }
    let treeish = if root.is_empty() {
        full.clone()
    } else {
        format!("{full}:{root}")
    };
    let mut c = git();
    c.arg("-C")
        .arg(&repo_dir)
        .args(["archive", "--format=tar", "--end-of-options", &treeish])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| BuildError::Git(format!("cannot run git archive: {e}")))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let unpacked = unpack(stdout, dest, limits);
    // Drain what is left so git can finish, then collect its status.
    let out = child
        .wait_with_output()
        .map_err(|e| BuildError::Git(format!("git archive: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !root.is_empty() && (err.contains("not a valid object") || err.contains("not a tree")) {
            return Err(BuildError::Input(format!(
                "app root {root:?} does not exist at commit {}",
                src.sha
            )));
        }
        // An unpack error stopped reading and broke git's pipe: that error says more.
        unpacked?;
        return Err(BuildError::Git(format!("git archive failed: {err}")));
    }
    unpacked?;
    Ok(full)
}

fn unpack(stream: impl std::io::Read, dest: &Path, limits: Limits) -> Result<(), BuildError> {
    let mut ar = tar::Archive::new(stream);
    let mut total = 0u64;
    let mut count = 0usize;
    let entries = ar
        .entries()
        .map_err(|e| BuildError::Git(format!("reading git archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BuildError::Git(format!("reading git archive: {e}")))?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| BuildError::Input(format!("git archive path: {e}")))?
            .into_owned();
        let ok_path = path.is_relative()
            && path.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
        if !ok_path {
            return Err(BuildError::Input(format!(
                "git archive holds the unsafe path {}",
                path.display()
            )));
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Symlink => {}
            other => {
                return Err(BuildError::Input(format!(
                    "git archive entry {} has the unsupported type {other:?}",
                    path.display()
                )));
            }
        }
        count += 1;
        total += entry.size();
        if count > limits.max_entries {
            return Err(BuildError::Input(format!(
                "the app has more than {} files and directories",
                limits.max_entries
            )));
        }
        if total > limits.max_bytes {
            return Err(BuildError::Input(format!(
                "the app's files exceed the limit of {} bytes (at {})",
                limits.max_bytes,
                path.display()
            )));
        }
        let done = entry
            .unpack_in(dest)
            .map_err(|e| BuildError::Input(format!("unpacking {}: {e}", path.display())))?;
        if !done {
            return Err(BuildError::Input(format!(
                "git archive entry {} would land outside the app root",
                path.display()
            )));
        }
    }
    // Consume the end of the archive so the writer is not cut off.
    let mut rest = ar.into_inner();
    let _ = std::io::copy(&mut rest.by_ref().take(1 << 20), &mut std::io::sink());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.test")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.test")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn exports_a_subdirectory_at_a_commit() {
        let repo = tempfile::tempdir().unwrap();
        let r = repo.path();
        sh(r, &["init", "-q"]);
        std::fs::create_dir_all(r.join("apps/web/www")).unwrap();
        std::fs::write(r.join("apps/web/www/index.html"), "v1").unwrap();
        std::fs::write(r.join("top.txt"), "top").unwrap();
        std::os::unix::fs::symlink("www/index.html", r.join("apps/web/home")).unwrap();
        sh(r, &["add", "-A"]);
        sh(r, &["commit", "-q", "-m", "one"]);
        let first = sh(r, &["rev-parse", "HEAD"]);
        std::fs::write(r.join("apps/web/www/index.html"), "v2").unwrap();
        sh(r, &["commit", "-q", "-am", "two"]);

        let out = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let src = GitSource {
            repo: r.display().to_string(),
            sha: first[..8].parse().unwrap(),
            root: "apps/web".into(),
        };
        let full = export(&src, out.path(), scratch.path(), Limits::default()).unwrap();
        assert_eq!(full, first);
        assert_eq!(
            std::fs::read_to_string(out.path().join("www/index.html")).unwrap(),
            "v1"
        );
        assert!(!out.path().join("top.txt").exists());
        assert!(
            std::fs::symlink_metadata(out.path().join("home"))
                .unwrap()
                .is_symlink()
        );

        // Through a file:// URL too.
        let out2 = tempfile::tempdir().unwrap();
        let scratch2 = tempfile::tempdir().unwrap();
        let url = GitSource {
            repo: format!("file://{}", r.display()),
            ..src.clone()
        };
        export(&url, out2.path(), scratch2.path(), Limits::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out2.path().join("www/index.html")).unwrap(),
            "v1"
        );

        let bad = |s: GitSource| {
            let o = tempfile::tempdir().unwrap();
            export(&s, o.path(), scratch.path(), Limits::default())
                .unwrap_err()
                .to_string()
        };
        let e = bad(GitSource {
            sha: "deadbeef".parse().unwrap(),
            ..src.clone()
        });
        assert!(e.contains("not in the repository"), "{e}");
        let e = bad(GitSource {
            root: "apps/nope".into(),
            ..src.clone()
        });
        assert!(e.contains("does not exist at commit"), "{e}");
        let e = bad(GitSource {
            root: "../x".into(),
            ..src.clone()
        });
        assert!(e.contains("plain names"), "{e}");
        for (repo, why) in [
            ("--upload-pack=touch /tmp/x", "option"),
            ("-uhttps://x/y", "option"),
            ("ext::sh -c touch% /tmp/pwned", "spaces"),
            ("ext::sh", "transport helper"),
            ("fd::3", "transport helper"),
            ("git://example.test/r", "git:// transport"),
            ("http://example.test/r", "http:// transport"),
            ("file://host/srv/r", "with a host"),
            ("file:///srv/%2e%2e/r", "% escapes"),
            ("example.test:org/r", "scp-style"),
            ("ssh://-oProxyCommand=x/r", "host and path"),
            ("https://x", "host and path"),
            ("a/b::c", "::"),
        ] {
            let e = bad(GitSource {
                repo: repo.into(),
                ..src.clone()
            });
            assert!(e.contains(why), "{repo}: {e}");
        }
        assert_eq!(
            classify("file:///srv/r").unwrap(),
            Repo::Local("/srv/r".into())
        );
        assert_eq!(
            classify("ssh://git@example.test/r.git").unwrap(),
            Repo::Remote("ssh://git@example.test/r.git".into())
        );
        let o = tempfile::tempdir().unwrap();
        let small = Limits {
            max_bytes: 1,
            max_entries: 100,
        };
        let e = export(&src, o.path(), scratch.path(), small)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceed the limit"), "{e}");
    }
}
