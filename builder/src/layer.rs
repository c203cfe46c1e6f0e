//! Deterministic layers: a tar of sorted entries with fixed times and owners, gzip with a fixed header.
//!
//! Every header has mtime 0, uid and gid 0, empty owner names, and the normalised mode of its entry;
//! entries are written in the order given (callers pass them sorted, parents first). The gzip header has
//! mtime 0, no file name and OS byte 255 ("unknown"), and the compression level is fixed, so the same
//! entries always give the same bytes and the same digest.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};

/// What a layer entry holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// A directory with its mode.
    Dir(u32),
    /// A file from disk, with its mode and expected size.
    File {
        /// Source path.
        path: PathBuf,
        /// Mode (0644 or 0755 normally).
        mode: u32,
        /// Size; a file that changed size since it was listed is an error.
        size: u64,
    },
    /// A file given in memory, with its mode.
    Bytes(Vec<u8>, u32),
    /// A file of an app tree, opened below the tree's root descriptor without following links
    /// ([`crate::source::Tree::open`]).
    FileAt {
        /// The tree (its root descriptor and listing).
        tree: Arc<crate::source::Tree>,
        /// The file's path in the tree.
        rel: String,
        /// Mode (0644 or 0755).
        mode: u32,
        /// Size when listed.
        size: u64,
    },
    /// A symlink to the target.
    Symlink(String),
}

/// One entry: a relative path inside the image (no leading `/`) and its content.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path in the image, `/`-separated, no leading `/`, no trailing `/`.
    pub path: String,
    /// What it holds.
    pub content: Content,
}

/// The digests of a written layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the gzip bytes (the blob).
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    /// Size of the gzip bytes.
    pub size: u64,
}

/// A writer that hashes and counts what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, `sha256:<hex>` of what was written, and its length.
    pub fn finish(self) -> (W, String, u64) {
        let d = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, d, self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The fixed gzip level of every layer.
const LEVEL: u32 = 6;

/// Writes the layer of `entries` as gzip to `out`; returns its digests.
pub fn write<W: Write>(entries: &[Entry], out: W) -> io::Result<(W, LayerInfo)> {
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(HashWriter::new(out), Compression::new(LEVEL));
    let mut tar = tar::Builder::new(HashWriter::new(gz));
    for e in entries {
        append(&mut tar, e)?;
    }
    let tar_hw = tar.into_inner()?;
    let (gz, diff_id, _) = tar_hw.finish();
    let out_hw = gz.finish()?;
    let (out, digest, size) = out_hw.finish();
    Ok((
        out,
        LayerInfo {
            digest,
            diff_id,
            size,
        },
    ))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

fn append<W: Write>(tar: &mut tar::Builder<W>, e: &Entry) -> io::Result<()> {
    match &e.content {
        Content::Dir(mode) => {
            let mut h = header(tar::EntryType::Directory, *mode, 0);
            tar.append_data(&mut h, format!("{}/", e.path), io::empty())
        }
        Content::Bytes(data, mode) => {
            let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
            tar.append_data(&mut h, &e.path, data.as_slice())
        }
        Content::File { path, mode, size } => {
            let f = std::fs::File::open(path)?;
            let mut h = header(tar::EntryType::Regular, *mode, *size);
            // Read exactly the listed size; a file that shrank or grew meanwhile is an error, not a
            // silently different layer.
            let mut r = ExactReader {
                inner: f.take(*size + 1),
                left: *size,
                name: path.display().to_string(),
            };
            tar.append_data(&mut h, &e.path, &mut r)
        }
        Content::FileAt {
            tree,
            rel,
            mode,
            size,
        } => {
            let f = tree.open(rel).map_err(io::Error::other)?;
            let mut h = header(tar::EntryType::Regular, *mode, *size);
            let mut r = ExactReader {
                inner: f.take(*size + 1),
                left: *size,
                name: rel.clone(),
            };
            tar.append_data(&mut h, &e.path, &mut r)
        }
        Content::Symlink(target) => {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, &e.path, target)
        }
    }
}

/// Reads exactly `left` bytes, failing if the source ends early or has more.
struct ExactReader<R> {
    inner: R,
    left: u64,
    name: String,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                return Err(io::Error::other(format!(
                    "{} grew while the layer was written",
                    self.name
                )));
            }
            return Ok(0);
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "{} shrank while the layer was written",
                self.name
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                path: "app".into(),
                content: Content::Dir(0o755),
            },
            Entry {
                path: "app/index.html".into(),
                content: Content::Bytes(b"hello\n".to_vec(), 0o644),
            },
            Entry {
                path: format!("app/{}", "long-name/".repeat(20) + "x"),
                content: Content::Bytes(b"deep\n".to_vec(), 0o644),
            },
            Entry {
                path: "app/link".into(),
                content: Content::Symlink("index.html".into()),
            },
        ]
    }

    #[test]
    fn same_entries_same_digest_and_a_readable_tar() {
        let (a, ia) = write(&entries(), Vec::new()).unwrap();
        let (b, ib) = write(&entries(), Vec::new()).unwrap();
        assert_eq!(a, b);
        assert_eq!(ia, ib);
        assert_eq!(ia.size, a.len() as u64);
        assert_eq!(
            ia.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&a)))
        );
        // The gzip header: magic, deflate, no flags, mtime 0, OS 255.
        assert_eq!(&a[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[9], 255);
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(a.as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(
            ia.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)))
        );
        let mut ar = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            seen.push(e.path().unwrap().display().to_string());
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], "app/");
        assert!(
            seen[2].ends_with("/x") && seen[2].len() > 200,
            "{}",
            seen[2]
        );
    }

    #[test]
    fn a_changed_byte_changes_the_digest() {
        let mut e = entries();
        e[1].content = Content::Bytes(b"hellp\n".to_vec(), 0o644);
        let (_, a) = write(&entries(), Vec::new()).unwrap();
        let (_, b) = write(&e, Vec::new()).unwrap();
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.diff_id, b.diff_id);
    }

    #[test]
    fn a_file_that_changed_size_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, "12345").unwrap();
        for size in [4, 6] {
            let e = vec![Entry {
                path: "f".into(),
                content: Content::File {
                    path: p.clone(),
                    mode: 0o644,
                    size,
                },
            }];
            assert!(write(&e, Vec::new()).is_err(), "size {size}");
        }
    }
}
