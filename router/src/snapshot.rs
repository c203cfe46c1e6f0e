//! The local snapshot of the last good configuration, so a router started while ZooKeeper is away still
//! serves.
//!
//! After each table built from ZooKeeper (at most once a second) the router writes the configuration in
//! use ([`crate::table::Compiler::effective`]: invalid nodes replaced by their last valid version) to
//! `snapshot_path`: a temporary file beside it, flushed to disk, renamed over the old one, then the
//! directory flushed, so a crash leaves the old snapshot or the new one, never a mix. At start, before
//! ZooKeeper answers, the snapshot is loaded and served; the first read from ZooKeeper replaces it.
//!
//! A snapshot is checked before use: at most [`MAX_SNAPSHOT_BYTES`], the expected format, written for
//! the same configuration tree (`origin`: ZooKeeper root and router kind), a SHA-256 over its nodes that
//! matches, and node paths of the configuration's shape. Each node is then compiled like one read from
//! ZooKeeper.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use atlantis_common::zk::Node;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The largest snapshot written or read.
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

const FORMAT: u32 = 1;

/// Why a snapshot could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// There is no snapshot file.
    #[error("no snapshot at {0}")]
    Missing(PathBuf),
    /// Reading or writing failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a usable snapshot.
    #[error("snapshot {path} refused: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    origin: String,
    saved_unix_ms: u64,
    sha256: String,
    nodes: BTreeMap<String, FileNode>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    version: i32,
    data: String,
}

/// A loaded snapshot.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration nodes.
    pub nodes: BTreeMap<String, Node>,
    /// When it was written (Unix milliseconds).
    pub saved_unix_ms: u64,
}

fn digest(nodes: &BTreeMap<String, FileNode>) -> String {
    let body = serde_json::to_vec(nodes).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(&body))
}

/// Whether `path` (relative to the configuration root) has the shape of a configuration node.
fn well_formed(path: &str) -> bool {
    let mut parts = path.split('/');
    let (section, name, child, more) = (parts.next(), parts.next(), parts.next(), parts.next());
    let Some(name) = name else { return false };
    if more.is_some() || atlantis_common::routing::check_name("node", name).is_err() {
        return false;
    }
    match (section, child) {
        (Some("ports" | "tries" | "rules" | "pools"), None) => true,
        (Some("pools"), Some(b)) => b.parse::<atlantis_common::routing::Backend>().is_ok(),
        _ => false,
    }
}

/// Reads and checks the snapshot at `path`, written for `origin`.
pub fn load(path: &Path, origin: &str) -> Result<Loaded, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let invalid = |why: String| SnapshotError::Invalid {
        path: path.to_owned(),
        why,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Missing(path.to_owned()));
        }
        Err(e) => return Err(io(e)),
    };
    let mut buf = Vec::new();
    f.take(MAX_SNAPSHOT_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(invalid(format!("larger than {MAX_SNAPSHOT_BYTES} bytes")));
    }
    let file: File =
        serde_json::from_slice(&buf).map_err(|e| invalid(format!("not a snapshot: {e}")))?;
    if file.format != FORMAT {
        return Err(invalid(format!("unknown format {}", file.format)));
    }
    if file.origin != origin {
        return Err(invalid(format!(
            "written for {:?}, this router reads {origin:?}",
            file.origin
        )));
    }
    if digest(&file.nodes) != file.sha256 {
        return Err(invalid("checksum mismatch (damaged file)".into()));
    }
    if let Some(bad) = file.nodes.keys().find(|p| !well_formed(p)) {
        return Err(invalid(format!("unexpected node path {bad:?}")));
    }
    let nodes = file
        .nodes
        .into_iter()
        .map(|(p, n)| {
            (
                p,
                Node {
                    data: n.data.into_bytes(),
                    version: n.version,
                },
            )
        })
        .collect();
    Ok(Loaded {
        nodes,
        saved_unix_ms: file.saved_unix_ms,
    })
}

/// Writes `nodes` as the snapshot at `path` for `origin`, atomically (temporary file, fsync, rename,
/// fsync of the directory). Returns the bytes written.
pub fn save(
    path: &Path,
    origin: &str,
    nodes: &BTreeMap<String, Node>,
) -> Result<u64, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    };
    let nodes: BTreeMap<String, FileNode> = nodes
        .iter()
        .map(|(p, n)| {
            (
                p.clone(),
                FileNode {
                    version: n.version,
                    // Nodes in use are JSON documents (UTF-8); a backend node's data is not used.
                    data: String::from_utf8_lossy(&n.data).into_owned(),
                },
            )
        })
        .collect();
    let file = File {
        format: FORMAT,
        origin: origin.to_owned(),
        saved_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        sha256: digest(&nodes),
        nodes,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| io(std::io::Error::other(e)))?;
    if bytes.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::Invalid {
            path: path.to_owned(),
            why: format!(
                "configuration of {} bytes is larger than {MAX_SNAPSHOT_BYTES}",
                bytes.len()
            ),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let name = path
        .file_name()
        .map_or_else(|| "snapshot".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> BTreeMap<String, Node> {
        let mut m = BTreeMap::new();
        for (p, d) in [
            ("ports/web", r#"{"port":8080,"trie":"root"}"#),
            ("pools/p", "{}"),
            ("pools/p/127.0.0.1:80", ""),
        ] {
            m.insert(
                p.to_owned(),
                Node {
                    data: d.as_bytes().to_vec(),
                    version: 3,
                },
            );
        }
        m
    }

    #[test]
    fn a_saved_snapshot_loads_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/snap.json");
        save(&path, "/r/external", &nodes()).unwrap();
        let loaded = load(&path, "/r/external").unwrap();
        assert_eq!(loaded.nodes, nodes());
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("snap.json")]);
        // Another tree's snapshot is not used.
        assert!(matches!(
            load(&path, "/r/internal"),
            Err(SnapshotError::Invalid { .. })
        ));
        // An edited node breaks the checksum.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("8080", "8081")).unwrap();
        let e = load(&path, "/r/external").unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        // A truncated file is not a snapshot.
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let e = load(&path, "/r/external").unwrap_err();
        assert!(e.to_string().contains("not a snapshot"), "{e}");
        // An oversized file is refused without being parsed.
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_SNAPSHOT_BYTES + 1).unwrap();
        let e = load(&path, "/r/external").unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        assert!(matches!(
            load(&dir.path().join("none"), "/r/external"),
            Err(SnapshotError::Missing(_))
        ));
    }

    #[test]
    fn node_paths_must_have_the_configuration_shape() {
        assert!(well_formed("rules/api"));
        assert!(well_formed("pools/p/10.0.0.1:80"));
        assert!(!well_formed("rules"));
        assert!(!well_formed("rules/a/b"));
        assert!(!well_formed("secrets/x"));
        assert!(!well_formed("pools/p/not a backend"));
        assert!(!well_formed("pools/p/1.2.3.4:80/x"));
        assert!(!well_formed("rules/../x"));
    }
}
