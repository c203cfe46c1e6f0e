//! The filesystem driver: one file per object under a root directory.
//!
//! `put` writes a hidden temp file and renames it over the target, so readers never see half an object.
//! Writers stage their bytes in a hidden `.NAME.partial` file beside the target (names starting with a dot
//! are never valid storage paths, and `list` hides them), which `commit` renames into place.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _, BufWriter};

use super::{ByteStream, FileInfo, FileWriter, StorageDriver, StorageError, check_dir, check_path};

const READ_CHUNK: usize = 512 * 1024;
const READ_AHEAD: usize = 4;
const WRITE_BUFFER: usize = 1024 * 1024;

/// Stores objects as files under `root`.
#[derive(Debug, Clone)]
pub struct FsDriver {
    root: PathBuf,
}

impl FsDriver {
    /// A driver rooted at `root`, which is created if missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<FsDriver, StorageError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StorageError::Io {
            path: root.display().to_string(),
            source,
        })?;
        Ok(FsDriver { root })
    }

    fn full(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }
}

fn io(path: &str, source: std::io::Error) -> StorageError {
    if source.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound(path.to_owned())
    } else {
        StorageError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

fn staging(full: &Path, tag: &str) -> PathBuf {
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    full.with_file_name(format!(".{name}.{tag}"))
}

async fn ensure_parent(path: &str, full: &Path) -> Result<(), StorageError> {
    if let Some(parent) = full.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io(path, e))?;
    }
    Ok(())
}

#[async_trait]
impl StorageDriver for FsDriver {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    async fn get(&self, path: &str, limit: u64) -> Result<Bytes, StorageError> {
        check_path(path)?;
        let mut f = tokio::fs::File::open(self.full(path))
            .await
            .map_err(|e| io(path, e))?;
        let meta = f.metadata().await.map_err(|e| io(path, e))?;
        if meta.is_dir() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        if meta.len() > limit {
            return Err(StorageError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        // Bound the read as well: the file may grow between metadata and read.
        (&mut f)
            .take(limit + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| io(path, e))?;
        if buf.len() as u64 > limit {
            return Err(StorageError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        Ok(Bytes::from(buf))
    }

    async fn put(&self, path: &str, data: Bytes) -> Result<(), StorageError> {
        check_path(path)?;
        let full = self.full(path);
        ensure_parent(path, &full).await?;
        let tmp = staging(&full, &format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        let result = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&data).await?;
            f.sync_data().await?;
            tokio::fs::rename(&tmp, &full).await
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(path, e));
        }
        Ok(())
    }

    async fn reader(
        &self,
        path: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        check_path(path)?;
        let mut f = tokio::fs::File::open(self.full(path))
            .await
            .map_err(|e| io(path, e))?;
        let meta = f.metadata().await.map_err(|e| io(path, e))?;
        if meta.is_dir() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        if offset > meta.len() {
            return Err(StorageError::InvalidOffset {
                path: path.to_owned(),
                offset,
                size: meta.len(),
            });
        }
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| io(path, e))?;
        // Read ahead in a task: the next chunks come off the disk while the current one is on the wire.
        // At most READ_AHEAD chunks wait in the channel; a dropped stream stops the task at its next send.
        let mut f = f.take(len.unwrap_or(u64::MAX));
        let owned = path.to_owned();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(READ_AHEAD);
        tokio::spawn(async move {
            loop {
                let mut buf = BytesMut::with_capacity(READ_CHUNK);
                match f.read_buf(&mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {
                        if tx.send(Ok(buf.freeze())).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(io(&owned, e))).await;
                        break;
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(stream))
    }

    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>, StorageError> {
        check_path(path)?;
        let full = self.full(path);
        ensure_parent(path, &full).await?;
        let partial = staging(&full, "partial");
        let mut opts = tokio::fs::OpenOptions::new();
        opts.create(true).write(true);
        if append {
            opts.append(true);
        } else {
            opts.truncate(true);
        }
        let f = opts.open(&partial).await.map_err(|e| io(path, e))?;
        let size = f.metadata().await.map_err(|e| io(path, e))?.len();
        Ok(Box::new(FsWriter {
            path: path.to_owned(),
            full,
            partial,
            file: BufWriter::with_capacity(WRITE_BUFFER, f),
            size,
        }))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo, StorageError> {
        check_dir(path)?;
        let meta = tokio::fs::metadata(self.full(path))
            .await
            .map_err(|e| io(path, e))?;
        Ok(FileInfo {
            path: path.to_owned(),
            size: if meta.is_dir() { 0 } else { meta.len() },
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            is_dir: meta.is_dir(),
        })
    }

    async fn list(&self, path: &str) -> Result<Vec<String>, StorageError> {
        check_dir(path)?;
        let mut rd = tokio::fs::read_dir(self.full(path))
            .await
            .map_err(|e| io(path, e))?;
        let mut out = Vec::new();
        while let Some(entry) = rd.next_entry().await.map_err(|e| io(path, e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn move_to(&self, from: &str, to: &str) -> Result<(), StorageError> {
        check_path(from)?;
        check_path(to)?;
        let src = self.full(from);
        tokio::fs::metadata(&src).await.map_err(|e| io(from, e))?;
        let dst = self.full(to);
        ensure_parent(to, &dst).await?;
        tokio::fs::rename(&src, &dst).await.map_err(|e| io(from, e))
    }

    async fn delete(&self, path: &str) -> Result<(), StorageError> {
        check_path(path)?;
        let full = self.full(path);
        let meta = tokio::fs::symlink_metadata(&full)
            .await
            .map_err(|e| io(path, e))?;
        let r = if meta.is_dir() {
            tokio::fs::remove_dir_all(&full).await
        } else {
            tokio::fs::remove_file(&full).await
        };
        r.map_err(|e| io(path, e))?;
        // A writer's staging file goes with its object.
        if !meta.is_dir() {
            let _ = tokio::fs::remove_file(staging(&full, "partial")).await;
        }
        Ok(())
    }
}

struct FsWriter {
    path: String,
    full: PathBuf,
    partial: PathBuf,
    file: BufWriter<tokio::fs::File>,
    size: u64,
}

#[async_trait]
impl FileWriter for FsWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.file
            .write_all(&data)
            .await
            .map_err(|e| io(&self.path, e))?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn close(mut self: Box<Self>) -> Result<(), StorageError> {
        self.file.flush().await.map_err(|e| io(&self.path, e))
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        self.file.flush().await.map_err(|e| io(&self.path, e))?;
        self.file
            .get_ref()
            .sync_data()
            .await
            .map_err(|e| io(&self.path, e))?;
        tokio::fs::rename(&self.partial, &self.full)
            .await
            .map_err(|e| io(&self.path, e))
    }

    async fn cancel(self: Box<Self>) -> Result<(), StorageError> {
        drop(self.file);
        match tokio::fs::remove_file(&self.partial).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.path, e)),
        }
    }
}
