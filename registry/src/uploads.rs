//! Blob uploads: monolithic, chunked (`PATCH` with or without `Content-Range`) and resumable.
//!
//! Bytes stream straight into the storage driver's resumable writer at `_uploads/<uuid>/data` and through a
//! sha256 hasher kept in memory per session (one `tokio` mutex per upload serialises its requests, so
//! chunks cannot interleave). If that state is gone (a restart, another registry instance, a sha512
//! digest), the committed upload is re-hashed from storage instead. A blob becomes visible only after its
//! digest matched: then it is moved to `blobs/` and linked into the repository. Any failure mid-request
//! (a truncated body, a length or range mismatch, an oversized blob) cancels the whole upload, so nothing
//! half-written can ever be committed.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{RegistryError, Result};
use crate::names::RepoName;
use crate::paths;
use crate::registry::{Registry, not_found_as, optional};

/// In-memory digest state of one upload.
pub struct Session {
    hasher: Option<Hasher>,
    size: u64,
}

/// A request body: chunks, or an error when the client's stream broke.
pub type Body<'a> =
    std::pin::Pin<Box<dyn Stream<Item = std::result::Result<Bytes, String>> + Send + 'a>>;

/// What a chunk must satisfy.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChunkCheck {
    /// The offset the chunk claims to start at (`Content-Range`).
    pub start: Option<u64>,
    /// The length the client announced (`Content-Length`, or the `Content-Range` span).
    pub length: Option<u64>,
}

impl Registry {
    fn session(&self, id: &uuid::Uuid, fresh: bool) -> Arc<tokio::sync::Mutex<Session>> {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.limits.max_upload_sessions && !map.contains_key(id) {
            // Forget idle sessions; their uploads still complete, with a re-hash at the end.
            map.retain(|_, s| s.try_lock().is_err());
        }
        let hasher = fresh.then(|| Algorithm::Sha256.hasher());
        map.entry(*id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Session { hasher, size: 0 })))
            .clone()
    }

    /// A permit to stream a body into storage, or 429 when too many are streaming already.
    fn upload_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.upload_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                RegistryError::TooManyRequests(format!(
                    "{} uploads are streaming already",
                    self.limits.max_concurrent_uploads
                ))
            })
    }

    fn forget(&self, id: &uuid::Uuid) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    async fn check_upload(&self, repo: &RepoName, id: &uuid::Uuid) -> Result<()> {
        not_found_as(
            self.driver.stat(&paths::upload_started(repo, id)).await,
            || RegistryError::BlobUploadUnknown(id.to_string()),
        )
        .map(|_| ())
    }

    /// Starts an upload session.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<uuid::Uuid> {
        let id = uuid::Uuid::new_v4();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.driver
            .put(
                &paths::upload_started(repo, &id),
                Bytes::from(now.to_string()),
            )
            .await?;
        drop(self.session(&id, true));
        Ok(id)
    }

    /// The number of bytes received so far.
    pub async fn upload_status(&self, repo: &RepoName, id: &uuid::Uuid) -> Result<u64> {
        self.check_upload(repo, id).await?;
        let session = self.session(id, false);
        let _guard = session.lock().await;
        let w = self
            .driver
            .writer(&paths::upload_data(repo, id), true)
            .await?;
        // Nothing was written: drop the writer rather than close it (an S3 close re-uploads the tail).
        let size = w.size();
        drop(w);
        Ok(size)
    }

    /// Cancels an upload and deletes what it received.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &uuid::Uuid) -> Result<()> {
        self.check_upload(repo, id).await?;
        let session = self.session(id, false);
        let _guard = session.lock().await;
        self.discard(repo, id).await
    }

    async fn discard(&self, repo: &RepoName, id: &uuid::Uuid) -> Result<()> {
        self.forget(id);
        optional(self.driver.delete(&paths::upload_dir(repo, id)).await)?;
        Ok(())
    }

    /// Appends a chunk. Returns the new total size.
    pub async fn append_chunk(
        &self,
        repo: &RepoName,
        id: &uuid::Uuid,
        check: ChunkCheck,
        body: Body<'_>,
    ) -> Result<u64> {
        self.check_upload(repo, id).await?;
        let _permit = self.upload_permit()?;
        let session = self.session(id, false);
        let mut s = session.lock().await;
        // A concurrent request may have completed or cancelled it while we waited for the lock.
        self.check_upload(repo, id).await?;
        let result = self
            .append_locked(repo, id, &mut s, check, body, false)
            .await;
        if let Err(e) = &result
            && !matches!(e, RegistryError::RangeInvalid(_))
        {
            drop(s);
            self.discard(repo, id).await?;
        }
        result
    }

    /// Streams `body` into the upload; with `commit`, finalises the stored object instead of closing it.
    async fn append_locked(
        &self,
        repo: &RepoName,
        id: &uuid::Uuid,
        s: &mut Session,
        check: ChunkCheck,
        mut body: Body<'_>,
        commit: bool,
    ) -> Result<u64> {
        let mut w = self
            .driver
            .writer(&paths::upload_data(repo, id), true)
            .await?;
        let start = w.size();
        if s.size != start {
            // The stored upload moved on without us (restart or another instance): hash it again later.
            s.hasher = None;
        }
        if start == 0 && s.hasher.is_none() {
            s.hasher = Some(Algorithm::Sha256.hasher());
        }
        if let Some(claimed) = check.start
            && claimed != start
        {
            drop(w);
            return Err(RegistryError::RangeInvalid(format!(
                "chunk starts at {claimed}, the upload has {start} bytes"
            )));
        }
        let mut received = 0u64;
        let outcome: Result<()> = async {
            let idle = self.limits.body_idle_timeout;
            while let Some(chunk) = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
                RegistryError::BlobUploadInvalid(format!("request body sent nothing for {idle:?}"))
            })? {
                let chunk = chunk.map_err(|e| {
                    RegistryError::BlobUploadInvalid(format!("request body broke off: {e}"))
                })?;
                received += chunk.len() as u64;
                if let Some(len) = check.length
                    && received > len
                {
                    return Err(RegistryError::SizeInvalid(format!(
                        "body is longer than the announced {len} bytes"
                    )));
                }
                if start + received > self.limits.max_blob_bytes {
                    return Err(RegistryError::TooLarge(format!(
                        "blobs are limited to {} bytes",
                        self.limits.max_blob_bytes
                    )));
                }
                if let Some(h) = s.hasher.as_mut() {
                    h.update(&chunk);
                }
                w.write(chunk).await?;
            }
            if let Some(len) = check.length
                && received != len
            {
                return Err(RegistryError::SizeInvalid(format!(
                    "body has {received} bytes, {len} were announced"
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            let _ = w.cancel().await;
            return Err(e);
        }
        let size = w.size();
        if commit {
            w.commit().await?
        } else {
            w.close().await?
        }
        s.size = size;
        Ok(size)
    }

    /// Completes an upload with an optional last chunk, verifies `digest` and makes the blob visible.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &uuid::Uuid,
        digest: &Digest,
        check: ChunkCheck,
        body: Body<'_>,
    ) -> Result<u64> {
        self.check_upload(repo, id).await?;
        let _permit = self.upload_permit()?;
        let session = self.session(id, false);
        let mut s = session.lock().await;
        // A concurrent request may have completed or cancelled it while we waited for the lock.
        self.check_upload(repo, id).await?;
        let result = self
            .finish_locked(repo, id, digest, &mut s, check, body)
            .await;
        drop(s);
        // Success or failure, the session is over; on failure nothing of it stays.
        self.discard(repo, id).await?;
        result
    }

    async fn finish_locked(
        &self,
        repo: &RepoName,
        id: &uuid::Uuid,
        digest: &Digest,
        s: &mut Session,
        check: ChunkCheck,
        body: Body<'_>,
    ) -> Result<u64> {
        let size = self.append_locked(repo, id, s, check, body, true).await?;
        let data = paths::upload_data(repo, id);
        let actual = match s.hasher.take() {
            Some(h) if h.algorithm() == digest.algorithm() => h.finish(),
            _ => self.hash_stored(&data, digest.algorithm()).await?.0,
        };
        if &actual != digest {
            return Err(RegistryError::DigestInvalid(format!(
                "content has digest {actual}, not {digest}"
            )));
        }
        self.link_content(repo, digest, &data).await?;
        Ok(size)
    }

    /// A monolithic upload: the whole blob in one request.
    pub async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        length: Option<u64>,
        body: Body<'_>,
    ) -> Result<u64> {
        let id = self.start_upload(repo).await?;
        self.finish_upload(
            repo,
            &id,
            digest,
            ChunkCheck {
                start: None,
                length,
            },
            body,
        )
        .await
    }
}
