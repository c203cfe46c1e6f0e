//! The registry logic, written once against `Arc<dyn StorageDriver>`: blobs, manifests, tags, catalog and
//! referrers (uploads live in [`crate::uploads`]). Visibility rules: content is written before the link that
//! makes it reachable, and links are small objects written atomically, so a reader never sees a manifest
//! whose blobs are missing, and a failed operation leaves nothing reachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest};
use crate::error::{RegistryError, Result};
use crate::manifest::{self, Descriptor};
use crate::names::{Reference, RepoName};
use crate::paths;
use crate::storage::{ByteStream, StorageDriver, StorageError};

/// Bound on link files, which hold a digest or a small JSON document.
const LINK_LIMIT: u64 = 64 * 1024;

/// Limits on what clients may send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest manifest accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// The largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Upload sessions whose digest state is kept in memory; older ones are re-hashed from storage.
    pub max_upload_sessions: usize,
    /// Upload requests streaming at once (each S3 upload buffers up to one part); more get 429.
    pub max_concurrent_uploads: usize,
    /// Re-stamp a repository's blob link on HEAD when it is older than this (keeps GC away from blobs a
    /// push has just found to exist).
    #[serde(with = "humantime_serde_compat")]
    pub touch_after: Duration,
    /// A request body that sends nothing for this long is abandoned (the upload is cancelled).
    #[serde(with = "humantime_serde_compat")]
    pub body_idle_timeout: Duration,
    /// On shutdown, requests still running after this long are cut off.
    #[serde(with = "humantime_serde_compat")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_blob_bytes: 64 * 1024 * 1024 * 1024,
            max_upload_sessions: 10_000,
            max_concurrent_uploads: 256,
            touch_after: Duration::from_secs(600),
            body_idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Durations as integer seconds in config files.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// The JSON stored in a manifest revision link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionLink {
    pub digest: Digest,
    pub media_type: String,
}

/// A manifest read back from storage.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// The outcome of a manifest PUT.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// The registry over one storage driver. Cheap to share behind an `Arc`.
pub struct Registry {
    pub(crate) driver: Arc<dyn StorageDriver>,
    pub(crate) limits: Limits,
    pub(crate) sessions:
        Mutex<HashMap<uuid::Uuid, Arc<tokio::sync::Mutex<crate::uploads::Session>>>>,
    /// Permits for request bodies streaming into uploads (each may hold a part buffer).
    pub(crate) upload_permits: Arc<tokio::sync::Semaphore>,
}

/// The directory holding a `.../link` file.
pub(crate) fn parent(link: &str) -> &str {
    link.rsplit_once('/').map(|(dir, _)| dir).unwrap_or(link)
}

pub(crate) fn not_found_as<T>(
    r: std::result::Result<T, StorageError>,
    e: impl FnOnce() -> RegistryError,
) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(StorageError::NotFound(_)) => Err(e()),
        Err(other) => Err(other.into()),
    }
}

pub(crate) fn optional<T>(r: std::result::Result<T, StorageError>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StorageError::NotFound(_)) => Ok(None),
        Err(other) => Err(other.into()),
    }
}

impl Registry {
    /// A registry storing through `driver`.
    pub fn new(driver: Arc<dyn StorageDriver>, limits: Limits) -> Registry {
        let permits = limits.max_concurrent_uploads.max(1);
        Registry {
            driver,
            limits,
            sessions: Mutex::new(HashMap::new()),
            upload_permits: Arc::new(tokio::sync::Semaphore::new(permits)),
        }
    }

    /// The storage driver.
    pub fn driver(&self) -> &Arc<dyn StorageDriver> {
        &self.driver
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn read_digest_link(&self, path: &str) -> Result<Option<Digest>> {
        let Some(raw) = optional(self.driver.get(path, LINK_LIMIT).await)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&raw);
        let d = text.trim().parse::<Digest>().map_err(|e| {
            RegistryError::Storage(StorageError::Backend {
                path: path.to_owned(),
                message: format!("corrupt link: {e}"),
            })
        })?;
        Ok(Some(d))
    }

    // ---- blobs ----

    /// The size of a blob the repository may serve, or `BLOB_UNKNOWN`.
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let unknown = || RegistryError::BlobUnknown(digest.to_string());
        if self
            .read_digest_link(&paths::layer_link(repo, digest))
            .await?
            .as_ref()
            != Some(digest)
        {
            return Err(unknown());
        }
        let info = not_found_as(self.driver.stat(&paths::blob_data(digest)).await, unknown)?;
        Ok(info.size)
    }

    /// Like [`Registry::stat_blob`], and re-stamps the repository's link when it is old, so that a push that
    /// found the blob present is protected from a concurrent garbage collection (see `gc`).
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let size = self.stat_blob(repo, digest).await?;
        let link = paths::layer_link(repo, digest);
        if let Some(info) = optional(self.driver.stat(&link).await)? {
            let age = SystemTime::now()
                .duration_since(info.modified)
                .unwrap_or_default();
            if age > self.limits.touch_after {
                self.driver
                    .put(&link, Bytes::from(digest.to_string()))
                    .await?;
            }
        }
        Ok(size)
    }

    /// Streams a blob (or the byte range `offset`, `len` of it). Returns the total size too.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream> {
        let stream = not_found_as(
            self.driver
                .reader(&paths::blob_data(digest), offset, len)
                .await,
            || RegistryError::BlobUnknown(digest.to_string()),
        )?;
        let _ = repo;
        Ok(stream)
    }

    /// Removes a blob from a repository (the content goes at the next garbage collection).
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.stat_blob(repo, digest).await?;
        // Delete the link's directory, not just the file: the filesystem driver keeps empty directories.
        let link = paths::layer_link(repo, digest);
        not_found_as(self.driver.delete(parent(&link)).await, || {
            RegistryError::BlobUnknown(digest.to_string())
        })
    }

    /// Links an existing blob from `from` into `repo`. False when `from` does not have it.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<bool> {
        match self.stat_blob(from, digest).await {
            Ok(_) => {}
            Err(RegistryError::BlobUnknown(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.driver
            .put(
                &paths::layer_link(repo, digest),
                Bytes::from(digest.to_string()),
            )
            .await?;
        Ok(true)
    }

    /// Makes committed content at `data_path` (already verified to have `digest`) a blob of `repo`.
    pub(crate) async fn link_content(
        &self,
        repo: &RepoName,
        digest: &Digest,
        data_path: &str,
    ) -> Result<()> {
        let target = paths::blob_data(digest);
        if optional(self.driver.stat(&target).await)?.is_none() {
            self.driver.move_to(data_path, &target).await?;
        }
        self.driver
            .put(
                &paths::layer_link(repo, digest),
                Bytes::from(digest.to_string()),
            )
            .await?;
        Ok(())
    }

    /// Re-reads content and hashes it with `alg`.
    pub(crate) async fn hash_stored(&self, path: &str, alg: Algorithm) -> Result<(Digest, u64)> {
        let mut stream = self.driver.reader(path, 0, None).await?;
        let mut hasher = alg.hasher();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hasher.finish(), size))
    }

    // ---- manifests ----

    async fn revision(&self, repo: &RepoName, digest: &Digest) -> Result<Option<RevisionLink>> {
        let path = paths::revision_link(repo, digest);
        let Some(raw) = optional(self.driver.get(&path, LINK_LIMIT).await)? else {
            return Ok(None);
        };
        let link: RevisionLink = serde_json::from_slice(&raw).map_err(|e| {
            RegistryError::Storage(StorageError::Backend {
                path,
                message: format!("corrupt revision link: {e}"),
            })
        })?;
        Ok(Some(link))
    }

    /// Resolves a reference to a manifest digest of the repository.
    pub async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Digest> {
        let unknown = || RegistryError::ManifestUnknown(format!("{repo}:{reference}"));
        match reference {
            Reference::Digest(d) => Ok(d.clone()),
            Reference::Tag(t) => self
                .read_digest_link(&paths::tag_link(repo, t))
                .await?
                .ok_or_else(unknown),
        }
    }

    /// Reads a manifest by tag or digest.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let unknown = || RegistryError::ManifestUnknown(format!("{repo}:{reference}"));
        let digest = self.resolve(repo, reference).await?;
        let link = self.revision(repo, &digest).await?.ok_or_else(unknown)?;
        let body = not_found_as(
            self.driver
                .get(&paths::blob_data(&digest), self.limits.max_manifest_bytes)
                .await,
            unknown,
        )?;
        Ok(StoredManifest {
            digest,
            media_type: link.media_type,
            body,
        })
    }

    /// Validates and stores a manifest, then points the tag (if the reference is one) at it.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: &str,
        body: Bytes,
    ) -> Result<PutManifest> {
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if &actual != d {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest digest is {actual}, not {d}"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        let parsed = manifest::parse(content_type, &body)?;
        for b in &parsed.blobs {
            match self.stat_blob(repo, &b.digest).await {
                Ok(size) if size == b.size => {}
                Ok(size) => {
                    return Err(RegistryError::ManifestInvalid(format!(
                        "descriptor {} has size {}, the blob has {size}",
                        b.digest, b.size
                    )));
                }
                Err(RegistryError::BlobUnknown(_)) => {
                    return Err(RegistryError::ManifestBlobUnknown(b.digest.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        for m in &parsed.manifests {
            if self.revision(repo, &m.digest).await?.is_none() {
                return Err(RegistryError::ManifestBlobUnknown(m.digest.to_string()));
            }
        }
        let size = body.len() as u64;
        let data = paths::blob_data(&digest);
        if optional(self.driver.stat(&data).await)?.is_none() {
            self.driver.put(&data, body).await?;
        }
        let link = RevisionLink {
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
        };
        self.driver
            .put(
                &paths::revision_link(repo, &digest),
                Bytes::from(serde_json::to_vec(&link).unwrap_or_default()),
            )
            .await?;
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        if let Some(s) = &subject {
            let desc = Descriptor {
                media_type: parsed.media_type.clone(),
                digest: digest.clone(),
                size,
                artifact_type: parsed.artifact_type.clone(),
                annotations: parsed.annotations.clone(),
                urls: None,
                platform: None,
            };
            let json = serde_json::to_vec(&desc).unwrap_or_default();
            self.driver
                .put(&paths::referrer_link(repo, s, &digest), Bytes::from(json))
                .await?;
        }
        if let Reference::Tag(t) = reference {
            self.driver
                .put(&paths::tag_link(repo, t), Bytes::from(digest.to_string()))
                .await?;
        }
        Ok(PutManifest { digest, subject })
    }

    /// Deletes a tag, or a manifest by digest (with every tag pointing at it and its referrer entry).
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let unknown = || RegistryError::ManifestUnknown(format!("{repo}:{reference}"));
        let digest = match reference {
            Reference::Tag(t) => {
                self.read_digest_link(&paths::tag_link(repo, t))
                    .await?
                    .ok_or_else(unknown)?;
                return not_found_as(self.driver.delete(&paths::tag_dir(repo, t)).await, unknown);
            }
            Reference::Digest(d) => d.clone(),
        };
        let link = self.revision(repo, &digest).await?.ok_or_else(unknown)?;
        // Its referrer entry, if it has a subject.
        if let Some(body) = optional(
            self.driver
                .get(&paths::blob_data(&digest), self.limits.max_manifest_bytes)
                .await,
        )? && let Ok(parsed) = manifest::parse(&link.media_type, &body)
            && let Some(subject) = parsed.subject
        {
            optional(
                self.driver
                    .delete(parent(&paths::referrer_link(
                        repo,
                        &subject.digest,
                        &digest,
                    )))
                    .await,
            )?;
        }
        for tag in self.tags(repo).await.unwrap_or_default() {
            if self
                .read_digest_link(&paths::tag_link(repo, &tag))
                .await?
                .as_ref()
                == Some(&digest)
            {
                optional(self.driver.delete(&paths::tag_dir(repo, &tag)).await)?;
            }
        }
        not_found_as(
            self.driver
                .delete(parent(&paths::revision_link(repo, &digest)))
                .await,
            unknown,
        )
    }

    // ---- listings ----

    /// True when the repository has any content.
    pub async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        Ok(optional(self.driver.stat(&paths::repo(repo)).await)?.is_some())
    }

    /// The repository's tags, sorted.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>> {
        match optional(self.driver.list(&paths::tags_dir(repo)).await)? {
            Some(tags) => Ok(tags),
            None if self.repo_exists(repo).await? => Ok(Vec::new()),
            None => Err(RegistryError::NameUnknown(repo.to_string())),
        }
    }

    /// Every repository name, sorted.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                paths::REPOSITORIES.to_owned()
            } else {
                format!("{}/{rel}", paths::REPOSITORIES)
            };
            let Some(children) = optional(self.driver.list(&dir).await)? else {
                continue;
            };
            let mut is_repo = false;
            for c in children {
                if c.starts_with('_') {
                    is_repo = true;
                } else {
                    stack.push(if rel.is_empty() {
                        c
                    } else {
                        format!("{rel}/{c}")
                    });
                }
            }
            if is_repo {
                out.push(rel);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The manifests of `repo` whose subject is `subject`, optionally only those of `artifact_type`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let dir = paths::referrers_dir(repo, subject);
        let mut out = Vec::new();
        for alg in optional(self.driver.list(&dir).await)?.unwrap_or_default() {
            for hex in
                optional(self.driver.list(&format!("{dir}/{alg}")).await)?.unwrap_or_default()
            {
                let path = format!("{dir}/{alg}/{hex}/link");
                let Some(raw) = optional(self.driver.get(&path, LINK_LIMIT).await)? else {
                    continue;
                };
                let Ok(desc) = serde_json::from_slice::<Descriptor>(&raw) else {
                    tracing::warn!(path, "Skipping a corrupt referrer link.");
                    continue;
                };
                if artifact_type.is_none_or(|a| desc.artifact_type.as_deref() == Some(a)) {
                    out.push(desc);
                }
            }
        }
        Ok(out)
    }
}
