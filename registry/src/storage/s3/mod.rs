//! The S3 driver (`aws-sdk-s3`): one object per path under an optional key prefix in one bucket.
//!
//! Writers stream into a multipart upload in `part_size` parts (at least 5 MiB, the S3 minimum), so memory
//! per writer is bounded by one part whatever the blob size. `close` keeps the upload open and records its
//! state in two driver-private objects beside the key (`.NAME.mpu`: upload ID and parts, `.NAME.tail`: the
//! bytes not yet forming a whole part); `writer(path, true)` resumes from them. Small objects commit with one
//! `PutObject`. Moves are server-side copies (multipart copy above 5 GiB). Directories are key prefixes.

use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::{ByteStream, FileInfo, FileWriter, StorageDriver, StorageError, check_dir, check_path};

mod writer;
use writer::S3Writer;

/// The smallest part S3 accepts (except for the last one).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
const MAX_COPY_SIZE: u64 = 5 * 1024 * 1024 * 1024;
const COPY_PART_SIZE: u64 = 1024 * 1024 * 1024;

/// How to reach the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket, which must exist.
    pub bucket: String,
    /// A key prefix under which everything is stored (no leading or trailing slash needed).
    #[serde(default)]
    pub prefix: String,
    /// The region (any value for most S3-compatible servers).
    #[serde(default = "default_region")]
    pub region: String,
    /// An endpoint URL for S3-compatible servers, e.g. `http://127.0.0.1:9000`; AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Static credentials; when absent, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from the environment.
    #[serde(default)]
    pub access_key: Option<String>,
    /// The secret matching `access_key`.
    #[serde(default)]
    pub secret_key: Option<String>,
    /// Path-style addressing (needed by most S3-compatible servers).
    #[serde(default = "yes")]
    pub force_path_style: bool,
    /// Multipart part size in bytes (at least 5 MiB); also the memory bound of one upload in flight.
    #[serde(default = "default_part_size")]
    pub part_size: usize,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn yes() -> bool {
    true
}
fn default_part_size() -> usize {
    8 * 1024 * 1024
}

/// Stores objects in an S3 bucket.
#[derive(Clone)]
pub struct S3Driver {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
}

impl std::fmt::Debug for S3Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Driver")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MpuState {
    upload_id: String,
    parts: Vec<PartState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartState {
    number: i32,
    etag: String,
    size: u64,
}

fn backend<E: ProvideErrorMetadata + std::error::Error + 'static>(
    path: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err
        .as_service_error()
        .and_then(|e| e.code())
        .unwrap_or("")
        .to_owned();
    if status == Some(404) || code == "NoSuchKey" || code == "NotFound" || code == "NoSuchUpload" {
        return StorageError::NotFound(path.to_owned());
    }
    StorageError::Backend {
        path: path.to_owned(),
        message: DisplayErrorContext(&err).to_string(),
    }
}

impl S3Driver {
    /// Builds the client (no request is made).
    pub fn new(cfg: &S3Config) -> Result<S3Driver, StorageError> {
        let invalid = |m: &str| StorageError::Backend {
            path: String::new(),
            message: m.to_owned(),
        };
        if cfg.part_size < MIN_PART_SIZE {
            return Err(invalid("s3 part_size must be at least 5 MiB"));
        }
        if cfg.bucket.is_empty() {
            return Err(invalid("s3 bucket must be set"));
        }
        let http = match cfg.endpoint.as_deref() {
            Some(e) if e.starts_with("http://") => {
                aws_smithy_http_client::Builder::new().build_http()
            }
            _ => aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        };
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(Region::new(cfg.region.clone()))
            .force_path_style(cfg.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .http_client(http);
        match (&cfg.access_key, &cfg.secret_key) {
            (Some(a), Some(s)) => {
                b = b.credentials_provider(Credentials::new(a, s, None, None, "atlantis-config"))
            }
            (None, None) => {
                b = b.credentials_provider(
                    aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
                )
            }
            _ => return Err(invalid("s3 access_key and secret_key must be set together")),
        }
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(S3Driver {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.trim_matches('/').to_owned(),
            part_size: cfg.part_size,
        })
    }

    /// The client, for tests and tooling.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(&self, path: &str) -> String {
        match (self.prefix.is_empty(), path.is_empty()) {
            (true, _) => path.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{}", self.prefix, path),
        }
    }

    fn dir_prefix(&self, path: &str) -> String {
        let k = self.key(path);
        if k.is_empty() { k } else { format!("{k}/") }
    }

    fn sidecar(path: &str, kind: &str) -> String {
        match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.{name}.{kind}"),
            None => format!(".{path}.{kind}"),
        }
    }

    async fn get_object_bytes(
        &self,
        key: &str,
        path: &str,
        limit: u64,
    ) -> Result<Option<Bytes>, StorageError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                return match backend(path, e) {
                    StorageError::NotFound(_) => Ok(None),
                    other => Err(other),
                };
            }
        };
        if out.content_length().unwrap_or(0) as u64 > limit {
            return Err(StorageError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        let mut body = out.body;
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::Backend {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(StorageError::TooLarge {
                    path: path.to_owned(),
                    limit,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf.freeze()))
    }

    async fn put_key(&self, key: &str, path: &str, data: Bytes) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(S3Body::from(data))
            .send()
            .await
            .map_err(|e| backend(path, e))?;
        Ok(())
    }

    async fn delete_keys(&self, path: &str, keys: Vec<String>) -> Result<(), StorageError> {
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<_, _>>()
                .map_err(|e| StorageError::Backend {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Backend {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| backend(path, e))?;
        }
        Ok(())
    }

    /// Every key under a directory prefix (recursive).
    async fn keys_under(&self, path: &str) -> Result<Vec<String>, StorageError> {
        let prefix = self.dir_prefix(path);
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| backend(path, e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(keys)
    }

    async fn load_state(&self, path: &str) -> Result<Option<MpuState>, StorageError> {
        let key = self.key(&Self::sidecar(path, "mpu"));
        match self.get_object_bytes(&key, path, 16 * 1024 * 1024).await? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StorageError::Backend {
                    path: path.to_owned(),
                    message: format!("corrupt upload state: {e}"),
                }),
            None => Ok(None),
        }
    }

    async fn abort(&self, path: &str, key: &str, upload_id: &str) -> Result<(), StorageError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match backend(path, e) {
                StorageError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Aborts the open multipart upload of `path` (if any) and deletes its sidecars.
    async fn discard_writer_state(&self, path: &str) -> Result<(), StorageError> {
        if let Some(state) = self.load_state(path).await? {
            self.abort(path, &self.key(path), &state.upload_id).await?;
        }
        let keys = vec![
            self.key(&Self::sidecar(path, "mpu")),
            self.key(&Self::sidecar(path, "tail")),
        ];
        self.delete_keys(path, keys).await
    }

    async fn copy(&self, from: &str, to: &str, size: u64) -> Result<(), StorageError> {
        let source = format!(
            "{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(
                &self.key(from),
                percent_encoding::NON_ALPHANUMERIC
            )
        );
        let dst = self.key(to);
        if size <= MAX_COPY_SIZE {
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(&dst)
                .copy_source(&source)
                .send()
                .await
                .map_err(|e| backend(from, e))?;
            return Ok(());
        }
        let mpu = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&dst)
            .send()
            .await
            .map_err(|e| backend(to, e))?;
        let upload_id = mpu.upload_id().unwrap_or_default().to_owned();
        let result: Result<Vec<CompletedPart>, StorageError> = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut number = 1;
            while offset < size {
                let end = (offset + COPY_PART_SIZE).min(size) - 1;
                let out = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(&dst)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={offset}-{end}"))
                    .send()
                    .await
                    .map_err(|e| backend(from, e))?;
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default()
                    .to_owned();
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .build(),
                );
                offset = end + 1;
                number += 1;
            }
            Ok(parts)
        }
        .await;
        match result {
            Ok(parts) => {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&dst)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| backend(to, e))?;
                Ok(())
            }
            Err(e) => {
                let _ = self.abort(to, &dst, &upload_id).await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl StorageDriver for S3Driver {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn get(&self, path: &str, limit: u64) -> Result<Bytes, StorageError> {
        check_path(path)?;
        self.get_object_bytes(&self.key(path), path, limit)
            .await?
            .ok_or_else(|| StorageError::NotFound(path.to_owned()))
    }

    async fn put(&self, path: &str, data: Bytes) -> Result<(), StorageError> {
        check_path(path)?;
        self.put_key(&self.key(path), path, data).await
    }

    async fn reader(
        &self,
        path: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StorageError> {
        check_path(path)?;
        if offset > 0 || len == Some(0) {
            // S3 answers 416 for a range starting at the end; resolve the edge cases with a HEAD.
            let info = self.stat(path).await?;
            if info.is_dir {
                return Err(StorageError::NotFound(path.to_owned()));
            }
            if offset > info.size {
                return Err(StorageError::InvalidOffset {
                    path: path.to_owned(),
                    offset,
                    size: info.size,
                });
            }
            if offset == info.size || len == Some(0) {
                return Ok(Box::pin(futures::stream::empty()));
            }
        }
        let range = match len {
            Some(n) => format!("bytes={}-{}", offset, offset + n - 1),
            None => format!("bytes={offset}-"),
        };
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(path));
        if offset > 0 || len.is_some() {
            req = req.range(range);
        }
        let out = req.send().await.map_err(|e| backend(path, e))?;
        let owned = path.to_owned();
        let stream = futures::stream::unfold((out.body, owned), |(mut body, path)| async move {
            let item = body.next().await?;
            let item = item.map_err(|e| StorageError::Backend {
                path: path.clone(),
                message: e.to_string(),
            });
            Some((item, (body, path)))
        });
        Ok(Box::pin(stream))
    }

    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>, StorageError> {
        check_path(path)?;
        let mut w = S3Writer {
            driver: self.clone(),
            path: path.to_owned(),
            key: self.key(path),
            state: MpuState::default(),
            buffer: BytesMut::with_capacity(self.part_size.min(1024 * 1024)),
            size: 0,
        };
        if !append {
            self.discard_writer_state(path).await?;
            return Ok(Box::new(w));
        }
        if let Some(state) = self.load_state(path).await? {
            w.size = state.parts.iter().map(|p| p.size).sum();
            w.state = state;
        }
        let tail_key = self.key(&Self::sidecar(path, "tail"));
        if let Some(tail) = self
            .get_object_bytes(&tail_key, path, (self.part_size as u64).max(64 << 20))
            .await?
        {
            w.size += tail.len() as u64;
            w.buffer.extend_from_slice(&tail);
        }
        Ok(Box::new(w))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo, StorageError> {
        check_dir(path)?;
        if !path.is_empty() {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(self.key(path))
                .send()
                .await
            {
                Ok(h) => {
                    let modified = h
                        .last_modified()
                        .and_then(|d| SystemTime::try_from(*d).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    return Ok(FileInfo {
                        path: path.to_owned(),
                        size: h.content_length().unwrap_or(0).max(0) as u64,
                        modified,
                        is_dir: false,
                    });
                }
                Err(e) => match backend(path, e) {
                    StorageError::NotFound(_) => {}
                    other => return Err(other),
                },
            }
        }
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.dir_prefix(path))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| backend(path, e))?;
        if out.contents().is_empty() && !path.is_empty() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        Ok(FileInfo {
            path: path.to_owned(),
            size: 0,
            modified: SystemTime::UNIX_EPOCH,
            is_dir: true,
        })
    }

    async fn list(&self, path: &str) -> Result<Vec<String>, StorageError> {
        check_dir(path)?;
        let prefix = self.dir_prefix(path);
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .delimiter("/")
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| backend(path, e))?;
            for o in out.contents() {
                if let Some(name) = o.key().and_then(|k| k.strip_prefix(&prefix)) {
                    names.push(name.to_owned());
                }
            }
            for p in out.common_prefixes() {
                if let Some(name) = p.prefix().and_then(|k| k.strip_prefix(&prefix)) {
                    names.push(name.trim_end_matches('/').to_owned());
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        if names.is_empty() && !path.is_empty() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        names.retain(|n| !n.starts_with('.') && !n.is_empty());
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn move_to(&self, from: &str, to: &str) -> Result<(), StorageError> {
        check_path(from)?;
        check_path(to)?;
        let info = self.stat(from).await?;
        if info.is_dir {
            return Err(StorageError::Backend {
                path: from.to_owned(),
                message: "cannot move a directory".into(),
            });
        }
        self.copy(from, to, info.size).await?;
        self.delete_keys(from, vec![self.key(from)]).await
    }

    async fn delete(&self, path: &str) -> Result<(), StorageError> {
        check_path(path)?;
        let key = self.key(path);
        let mut keys = self.keys_under(path).await?;
        // Multipart uploads left open below this directory are aborted through their state sidecars.
        for k in keys.iter().filter(|k| k.ends_with(".mpu")) {
            let rel = k.strip_prefix(&self.dir_prefix("")).unwrap_or(k);
            if let Some((dir, name)) = rel.rsplit_once('/')
                && let Some(target) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".mpu"))
            {
                let target_path = format!("{dir}/{target}");
                if let Ok(Some(state)) = self.load_state(&target_path).await {
                    self.abort(path, &self.key(&target_path), &state.upload_id)
                        .await?;
                }
            }
        }
        let exists = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) => match backend(path, e) {
                StorageError::NotFound(_) => false,
                other => return Err(other),
            },
        };
        if !exists && keys.is_empty() {
            return Err(StorageError::NotFound(path.to_owned()));
        }
        if exists {
            self.discard_writer_state(path).await?;
            keys.push(key);
        }
        self.delete_keys(path, keys).await
    }
}
