//! The storage driver seam: a small key/value file system that the registry logic is written against.
//!
//! Modelled on distribution's `StorageDriver`: whole-object `get`/`put` for small metadata, a ranged `reader`
//! stream for blobs, a resumable `writer` (append across requests, then `commit` or `cancel`), `stat`, `list`,
//! `move_to` and recursive `delete`. Paths are logical, `/`-separated, relative keys such as
//! `blobs/sha256/ab/abcd.../data`; [`check_path`] rejects anything that could escape the root.
//! Implementations: [`fs::FsDriver`] (default) and [`s3::S3Driver`]. All pass the same conformance suite
//! (`tests/it/conformance.rs`).

pub mod fs;
pub mod s3;

use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// A stream of body chunks read from storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object (or directory) at this path.
    #[error("path not found: {0}")]
    NotFound(String),
    /// The path is not a valid storage key.
    #[error("invalid storage path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A ranged read starts past the end of the object.
    #[error("invalid offset {offset} for {path} of size {size}")]
    InvalidOffset {
        path: String,
        offset: u64,
        size: u64,
    },
    /// A small-object read would exceed its bound.
    #[error("object {path} is larger than the {limit} byte limit")]
    TooLarge { path: String, limit: u64 },
    /// A local I/O error (filesystem driver).
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The backend (S3) failed.
    #[error("storage backend error on {path}: {message}")]
    Backend { path: String, message: String },
}

impl StorageError {
    /// True when the error means "nothing there".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }
}

/// What `stat` knows about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The path that was asked for.
    pub path: String,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification (object creation on S3); directories report the newest time known or the epoch.
    pub modified: SystemTime,
    /// True for a directory (a common prefix on S3).
    pub is_dir: bool,
}

/// The resumable writer returned by [`StorageDriver::writer`]. Nothing written becomes visible at its path
/// until [`FileWriter::commit`]; [`FileWriter::close`] keeps the written bytes for a later append.
/// Dropping a writer without any of the three leaves the stored state as the last `close` left it, minus
/// whatever this session wrote (drivers may or may not have persisted it), so drop only unwritten writers.
#[async_trait]
pub trait FileWriter: Send {
    /// Appends `data`.
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError>;
    /// Bytes written so far, including those from earlier sessions when appending.
    fn size(&self) -> u64;
    /// Persists what was written so that `writer(path, true)` can resume it.
    async fn close(self: Box<Self>) -> Result<(), StorageError>;
    /// Makes the content visible at the path.
    async fn commit(self: Box<Self>) -> Result<(), StorageError>;
    /// Discards everything written, also from earlier sessions.
    async fn cancel(self: Box<Self>) -> Result<(), StorageError>;
}

/// A place to keep registry content.
#[async_trait]
pub trait StorageDriver: Send + Sync + 'static {
    /// A short name for logs and metrics ("filesystem", "s3").
    fn name(&self) -> &'static str;
    /// Reads a whole small object, failing with [`StorageError::TooLarge`] past `limit` bytes.
    async fn get(&self, path: &str, limit: u64) -> Result<Bytes, StorageError>;
    /// Writes a whole small object atomically (readers see the old or the new content).
    async fn put(&self, path: &str, data: Bytes) -> Result<(), StorageError>;
    /// Streams `len` bytes (or to the end) starting at `offset`.
    async fn reader(
        &self,
        path: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError>;
    /// Opens a writer; with `append`, resumes the content left by an earlier `close`.
    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>, StorageError>;
    /// Size, time and kind of a file or directory.
    async fn stat(&self, path: &str) -> Result<FileInfo, StorageError>;
    /// The names (not full paths) of the direct children of a directory, sorted.
    async fn list(&self, path: &str) -> Result<Vec<String>, StorageError>;
    /// Moves a committed object to a new path, replacing what is there.
    async fn move_to(&self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Deletes a file or a whole directory tree.
    async fn delete(&self, path: &str) -> Result<(), StorageError>;
}

/// Validates a logical storage path: relative, `/`-separated, no empty, `.` or `..` segments, and only
/// characters the registry produces (ASCII letters, digits, `._-:`).
pub fn check_path(path: &str) -> Result<(), StorageError> {
    let bad = |reason| {
        Err(StorageError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    for seg in path.split('/') {
        if seg.is_empty() {
            return bad("empty segment");
        }
        if seg.starts_with('.') {
            return bad("segment starts with a dot (reserved for driver-private files)");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        {
            return bad("unexpected character");
        }
    }
    Ok(())
}

/// Like [`check_path`], but the empty path (the root) is allowed, for `list` and `delete`.
pub fn check_dir(path: &str) -> Result<(), StorageError> {
    if path.is_empty() {
        Ok(())
    } else {
        check_path(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(check_path("blobs/sha256/ab/abcd/data").is_ok());
        assert!(check_path("repositories/a/b/_manifests/tags/v1.0/current/link").is_ok());
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "..",
            "a/./b",
            "a/b/",
            "a\\b",
            "a b",
            "a/%2e%2e",
            "a/.hidden",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_dir("").is_ok());
    }
}
