//! The on-disk layer cache: gzip blobs by digest, an index from input key to layer, a size cap, and a
//! memory of which repository of which registry already holds a blob (the source of cross-repository
//! mounts).
//!
//! Layout under the cache dir:
//! - `blobs/sha256/<hex>`: layer blobs, named by their digest.
//! - `keys/<hex>.json`: [`LayerInfo`] of the layer built from the input whose key is `<hex>` (a SHA-256
//!   over every path, mode and content hash of the layer's entries).
//! - `pushed/<hex of the registry>/<hex of the blob>`: a repository of that registry holding the blob.
//!
//! Writes go to a temp file in the same directory and are renamed into place, so concurrent builds never
//! see half a blob. A lookup checks that the blob is there with its recorded size and refreshes its
//! mtime; when the blobs pass the cap, the least recently used are removed (never the ones a running
//! build just used).

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::error::{BuildError, io};
use crate::layer::{self, Entry, LayerInfo};

/// The layer cache.
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl LayerCache {
    /// Opens (creating) the cache at `dir`, keeping blobs under `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<LayerCache, BuildError> {
        for sub in ["blobs/sha256", "keys", "pushed", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io(format!("creating the cache dir {}", dir.display())))?;
        }
        Ok(LayerCache {
            dir: dir.to_owned(),
            max_bytes,
        })
    }

    /// The cache's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob with `digest` lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The layer for `key`, building it from `entries` when it is not cached. Returns the layer and
    /// whether it came from the cache.
    pub fn layer(&self, key: &str, entries: &[Entry]) -> Result<(LayerInfo, bool), BuildError> {
        if let Some(info) = self.lookup(key) {
            return Ok((info, true));
        }
        let tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))
            .map_err(io("creating a temp file in the cache"))?;
        let file = std::io::BufWriter::with_capacity(256 * 1024, tmp);
        let (file, info) = layer::write(entries, file)
            .map_err(|e| BuildError::Input(format!("writing a layer: {e}")))?;
        let tmp = file.into_inner().map_err(|e| BuildError::Io {
            what: "flushing a layer".into(),
            source: e.into_error(),
        })?;
        tmp.persist(self.blob_path(&info.digest))
            .map_err(|e| BuildError::Io {
                what: "storing a layer in the cache".into(),
                source: e.error,
            })?;
        let json = serde_json::to_vec(&info).expect("layer info serialises");
        write_atomic(&self.dir, &self.key_path(key), &json)?;
        Ok((info, false))
    }

    fn key_path(&self, key: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{key}.json"))
    }

    /// The cached layer for `key`, if its blob is intact in size; refreshes its use time.
    pub fn lookup(&self, key: &str) -> Option<LayerInfo> {
        let raw = std::fs::read(self.key_path(key)).ok()?;
        let info: LayerInfo = serde_json::from_slice(&raw).ok()?;
        let blob = self.blob_path(&info.digest);
        let meta = std::fs::metadata(&blob).ok()?;
        if meta.len() != info.size {
            return None;
        }
        let _ = std::fs::File::options()
            .append(true)
            .open(&blob)
            .and_then(|f| f.set_modified(SystemTime::now()));
        Some(info)
    }

    /// Removes the least recently used blobs until the cache is under its cap, keeping `keep`.
    /// Returns how many bytes were freed.
    pub fn evict(&self, keep: &HashSet<String>) -> u64 {
        let Ok(rd) = std::fs::read_dir(self.dir.join("blobs/sha256")) else {
            return 0;
        };
        let mut blobs: Vec<(SystemTime, u64, PathBuf, String)> = rd
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                Some((m.modified().ok()?, m.len(), e.path(), name))
            })
            .collect();
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        if total <= self.max_bytes {
            return 0;
        }
        blobs.sort();
        let mut freed = 0;
        for (_, len, path, name) in blobs {
            if total <= self.max_bytes {
                break;
            }
            if keep.contains(&format!("sha256:{name}")) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                freed += len;
            }
        }
        freed
    }

    /// A repository of `registry` known to hold `digest` (pushed there by this builder), if any.
    pub fn pushed_in(&self, registry: &str, digest: &str) -> Option<String> {
        let p = self.pushed_path(registry, digest);
        let repo = std::fs::read_to_string(p).ok()?;
        let repo = repo.trim();
        (!repo.is_empty() && repo.len() < 256).then(|| repo.to_owned())
    }

    /// Records that `repository` of `registry` holds `digest`.
    pub fn remember_push(&self, registry: &str, digest: &str, repository: &str) {
        let p = self.pushed_path(registry, digest);
        if let Some(parent) = p.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = write_atomic(&self.dir, &p, repository.as_bytes());
    }

    fn pushed_path(&self, registry: &str, digest: &str) -> PathBuf {
        let r = hex::encode(Sha256::digest(registry.as_bytes()));
        self.dir
            .join("pushed")
            .join(&r[..32])
            .join(digest.trim_start_matches("sha256:"))
    }
}

fn write_atomic(cache: &Path, dest: &Path, data: &[u8]) -> Result<(), BuildError> {
    let mut tmp = tempfile::NamedTempFile::new_in(cache.join("tmp"))
        .map_err(io("creating a temp file in the cache"))?;
    tmp.write_all(data).map_err(io("writing a cache entry"))?;
    tmp.persist(dest).map_err(|e| BuildError::Io {
        what: format!("storing {}", dest.display()),
        source: e.error,
    })?;
    Ok(())
}

fn hash_file(
    h: &mut Sha256,
    mut f: std::fs::File,
    name: &str,
    mode: u32,
    size: u64,
) -> Result<(), BuildError> {
    let mut fh = Sha256::new();
    let n = std::io::copy(&mut f, &mut fh)
        .map_err(|e| BuildError::Input(format!("cannot read {name}: {e}")))?;
    if n != size {
        return Err(BuildError::Input(format!(
            "{name} changed size while the build read it"
        )));
    }
    h.update(format!("f{mode:o}:{size}:"));
    h.update(fh.finalize());
    Ok(())
}

/// Computes the cache key of a layer: SHA-256 over a version tag and every entry's path, kind, mode
/// and content hash. Reads every file once.
pub fn key_of(tag: &str, entries: &[Entry]) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    h.update(b"atlantis-layer-v1\0");
    h.update(tag.as_bytes());
    h.update(b"\0");
    for e in entries {
        h.update(e.path.as_bytes());
        h.update(b"\0");
        match &e.content {
            layer::Content::Dir(mode) => h.update(format!("d{mode:o}\0")),
            layer::Content::Symlink(t) => {
                h.update(b"l");
                h.update(t.as_bytes());
                h.update(b"\0");
            }
            layer::Content::Bytes(data, mode) => {
                h.update(format!("f{mode:o}:{}:", data.len()));
                h.update(Sha256::digest(data));
            }
            layer::Content::File { path, mode, size } => {
                let f = std::fs::File::open(path)
                    .map_err(|e| BuildError::Input(format!("cannot read {}: {e}", e_path(path))))?;
                hash_file(&mut h, f, &e_path(path), *mode, *size)?;
            }
            layer::Content::FileAt {
                tree,
                rel,
                mode,
                size,
            } => hash_file(&mut h, tree.open(rel)?, rel, *mode, *size)?,
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn e_path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Content;

    fn entries(text: &str) -> Vec<Entry> {
        vec![Entry {
            path: "a".into(),
            content: Content::Bytes(text.as_bytes().to_vec(), 0o644),
        }]
    }

    #[test]
    fn builds_once_then_hits() {
        let d = tempfile::tempdir().unwrap();
        let c = LayerCache::open(d.path(), 1 << 30).unwrap();
        let e = entries("one");
        let k = key_of("t", &e).unwrap();
        let (a, hit_a) = c.layer(&k, &e).unwrap();
        let (b, hit_b) = c.layer(&k, &e).unwrap();
        assert!(!hit_a && hit_b);
        assert_eq!(a, b);
        assert_ne!(k, key_of("t", &entries("two")).unwrap());
        assert_ne!(k, key_of("u", &e).unwrap());
        // A truncated blob is a miss, and the rebuild repairs it.
        std::fs::write(c.blob_path(&a.digest), b"x").unwrap();
        let (_, hit) = c.layer(&k, &e).unwrap();
        assert!(!hit);
        assert!(c.lookup(&k).is_some());
    }

    #[test]
    fn eviction_keeps_the_cap_and_the_protected() {
        let d = tempfile::tempdir().unwrap();
        let c = LayerCache::open(d.path(), 1).unwrap();
        let mut infos = Vec::new();
        for i in 0..3 {
            let e = entries(&format!("blob {i}"));
            let (info, _) = c.layer(&key_of("t", &e).unwrap(), &e).unwrap();
            infos.push(info);
        }
        let keep: HashSet<String> = [infos[2].digest.clone()].into();
        assert!(c.evict(&keep) > 0);
        assert!(!c.blob_path(&infos[0].digest).exists());
        assert!(!c.blob_path(&infos[1].digest).exists());
        assert!(c.blob_path(&infos[2].digest).exists());
    }

    #[test]
    fn remembers_pushes_per_registry() {
        let d = tempfile::tempdir().unwrap();
        let c = LayerCache::open(d.path(), 1 << 30).unwrap();
        let dg = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(c.pushed_in("r1:5000", &dg), None);
        c.remember_push("r1:5000", &dg, "apps/web");
        assert_eq!(c.pushed_in("r1:5000", &dg).as_deref(), Some("apps/web"));
        assert_eq!(c.pushed_in("r2:5000", &dg), None);
    }
}
