//! Pushing an image through the OCI Distribution API.
//!
//! For each blob: `HEAD` first (present: nothing is sent); else, when this builder pushed the blob to
//! another repository of the same registry before, a cross-repository mount (`POST ...?mount=&from=`);
//! else an upload: one `PUT` for blobs up to the chunk size, `PATCH` chunks with `Content-Range` and a
//! closing `PUT` above it. Blobs go up in parallel (a bounded number at once), the manifest last, and
//! the digest the registry answers must be the one computed here.
//!
//! Credentials: HTTP Basic (user and password) or a bearer token (for API builds, the manager-issued
//! token scoped to `apps/<app>`), sent with every request to that one registry and nowhere else:
//! redirects are not followed, an upload `Location` on another host or port is refused, and a
//! `WWW-Authenticate` realm is never visited (the token is sent as it is).
//! The registry is spoken to over plain HTTP (it sits on the cluster network); the scheme can be set.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use atlantis_common::api::registry_token::{Claims, PUSH, REPOSITORY};
use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION};
use tokio::io::AsyncReadExt as _;

use crate::error::BuildError;
use crate::image::MANIFEST_TYPE;

/// Where an image goes: `registry/repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`.
    pub registry: String,
    /// The repository path, for example `apps/web`.
    pub repository: String,
    /// The tag (the sha for app images).
    pub tag: String,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

impl FromStr for ImageRef {
    type Err = BuildError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            BuildError::Request(format!(
                "push reference {s:?} {why} (expected REGISTRY/apps/NAME:SHA)"
            ))
        };
        if s.len() > 512 {
            return Err(bad("is too long"));
        }
        let (registry, rest) = s.split_once('/').ok_or_else(|| bad("has no registry"))?;
        if registry.is_empty()
            || !(registry.contains('.') || registry.contains(':') || registry == "localhost")
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
        {
            return Err(bad("has an invalid registry host"));
        }
        let (repository, tag) = rest.rsplit_once(':').ok_or_else(|| bad("has no tag"))?;
        if tag.is_empty()
            || tag.len() > 128
            || tag.starts_with(['.', '-'])
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(bad("has an invalid tag"));
        }
        for part in repository.split('/') {
            let ok = !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
                && !part.contains("..");
            if !ok {
                return Err(bad("has an invalid repository path"));
            }
        }
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

/// A secret from a request (a registry token): never printed, never serialised back.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, to send where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Checks, before anything is sent, that `token` is a manager-issued registry token (a JWT; its
/// signature is the registry's to check) that is not expired and grants push on `repository` and
/// on nothing else. The registry decides in the end; this refuses a token meant for another app
/// early, with a clear message that never includes the token.
pub fn check_scoped_token(token: &str, repository: &str) -> Result<(), BuildError> {
    let bad = |why: &str| BuildError::Request(format!("registry_token {why}"));
    let mut parts = token.split('.');
    let (Some(_), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "is not a manager-issued registry token (ask the manager: POST /v1/apps/{app}/build-token)",
        ));
    };
    let claims: Claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("has unreadable claims"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if claims.exp <= now {
        return Err(bad("has expired; ask the manager for a new one"));
    }
    if let Some(other) = claims
        .access
        .iter()
        .find(|g| g.kind != REPOSITORY || g.name != repository)
    {
        return Err(bad(&format!(
            "grants access to {} too; a build token is scoped to {repository} only",
            other.name
        )));
    }
    if !claims.grants(repository, PUSH) {
        return Err(bad(&format!("does not grant push on {repository}")));
    }
    Ok(())
}

/// True when the registry refuses an anonymous `GET /v2/` with 401 (it wants credentials).
/// An unreachable registry answers false: the push then fails with its own error.
pub async fn requires_auth(registry: &str, scheme: &str) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return false;
    };
    matches!(
        client.get(format!("{scheme}://{registry}/v2/")).send().await,
        Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED
    )
}

/// Registry credentials.
#[derive(Clone)]
pub enum Credentials {
    /// HTTP Basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token the registry accepts as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// A blob to push: in memory or a file of the layer cache.
#[derive(Debug, Clone)]
pub enum BlobData {
    /// Bytes in memory (the config).
    Bytes(bytes::Bytes),
    /// A file (a cached layer).
    File(PathBuf),
}

/// One blob of an image.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Where its bytes are.
    pub data: BlobData,
    /// A repository of the same registry known to hold it (mount source).
    pub mount_from: Option<String>,
}

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobOutcome {
    /// The repository already had it.
    Exists,
    /// Mounted from another repository: no bytes sent.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// Counts of a push.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushStats {
    /// Blobs already present.
    pub existed: u32,
    /// Blobs mounted from another repository.
    pub mounted: u32,
    /// Blobs uploaded.
    pub uploaded: u32,
    /// Bytes of blobs uploaded.
    pub bytes_uploaded: u64,
}

/// Push settings.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// `http` or `https`.
    pub scheme: String,
    /// Credentials sent with every request.
    pub credentials: Option<Credentials>,
    /// Blobs larger than this go up in chunks of this size.
    pub chunk_size: u64,
    /// Blobs pushed at once.
    pub parallel: usize,
    /// Timeout of one request (an upload request included).
    pub request_timeout: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            scheme: "http".into(),
            credentials: None,
            chunk_size: 16 * 1024 * 1024,
            parallel: 4,
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// A client of one registry.
pub struct Pusher {
    client: reqwest::Client,
    base: String,
    auth: Option<HeaderValue>,
    options: PushOptions,
}

/// The longest error body read from the registry.
const MAX_ERROR_BODY: usize = 8 * 1024;

impl Pusher {
    /// A client of the registry `host[:port]`.
    pub fn new(registry: &str, options: PushOptions) -> Result<Pusher, BuildError> {
        if options.scheme != "http" && options.scheme != "https" {
            return Err(BuildError::Request(format!(
                "registry scheme {:?} must be http or https",
                options.scheme
            )));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(options.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BuildError::Push(format!("client: {e}")))?;
        let auth = match &options.credentials {
            None => None,
            Some(Credentials::Basic { username, password }) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                Some(header_value(&format!("Basic {raw}"))?)
            }
            Some(Credentials::Bearer(t)) => Some(header_value(&format!("Bearer {t}"))?),
        };
        Ok(Pusher {
            client,
            base: format!("{}://{registry}", options.scheme),
            auth,
            options,
        })
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, url);
        if let Some(a) = &self.auth {
            r = r.header(AUTHORIZATION, a.clone());
        }
        r
    }

    /// Checks the registry answers `/v2/` and accepts the credentials.
    pub async fn check(&self) -> Result<(), BuildError> {
        let resp = self
            .req(reqwest::Method::GET, &format!("{}/v2/", self.base))
            .send()
            .await
            .map_err(|e| {
                BuildError::Push(format!("cannot reach the registry {}: {e}", self.base))
            })?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(refused("GET /v2/", resp).await)
    }

    /// Pushes the blobs (in parallel) and then the manifest under `tag`. Calls `on_blob` as each blob
    /// is done. Returns the manifest digest the registry reports, and the counts.
    pub async fn push(
        &self,
        repository: &str,
        tag: &str,
        blobs: Vec<Blob>,
        manifest: &[u8],
        on_blob: &(dyn Fn(&Blob, BlobOutcome) + Send + Sync),
    ) -> Result<(String, PushStats), BuildError> {
        let uploaded_bytes = AtomicU64::new(0);
        let mut jobs = Vec::with_capacity(blobs.len());
        for b in &blobs {
            jobs.push(self.push_counted(repository, b, &uploaded_bytes, on_blob));
        }
        let outcomes: Vec<BlobOutcome> = futures::stream::iter(jobs)
            .buffer_unordered(self.options.parallel.max(1))
            .try_collect()
            .await?;
        let mut stats = PushStats {
            bytes_uploaded: uploaded_bytes.load(Ordering::Relaxed),
            ..PushStats::default()
        };
        for o in outcomes {
            match o {
                BlobOutcome::Exists => stats.existed += 1,
                BlobOutcome::Mounted => stats.mounted += 1,
                BlobOutcome::Uploaded => stats.uploaded += 1,
            }
        }
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base);
        let resp = self
            .req(reqwest::Method::PUT, &url)
            .header(CONTENT_TYPE, MANIFEST_TYPE)
            .body(manifest.to_vec())
            .send()
            .await
            .map_err(|e| BuildError::Push(format!("PUT manifest: {e}")))?;
        if resp.status() != reqwest::StatusCode::CREATED {
            return Err(refused("PUT manifest", resp).await);
        }
        let digest = crate::image::sha256(manifest);
        let answered = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(&digest);
        if answered != digest {
            return Err(BuildError::Push(format!(
                "the registry stored the manifest as {answered}, expected {digest}"
            )));
        }
        Ok((digest, stats))
    }

    async fn push_counted(
        &self,
        repo: &str,
        blob: &Blob,
        uploaded: &AtomicU64,
        on_blob: &(dyn Fn(&Blob, BlobOutcome) + Send + Sync),
    ) -> Result<BlobOutcome, BuildError> {
        let o = self.push_blob(repo, blob).await?;
        if o == BlobOutcome::Uploaded {
            uploaded.fetch_add(blob.size, Ordering::Relaxed);
        }
        on_blob(blob, o);
        Ok(o)
    }

    async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<BlobOutcome, BuildError> {
        let url = format!("{}/v2/{repo}/blobs/{}", self.base, blob.digest);
        let resp = self
            .req(reqwest::Method::HEAD, &url)
            .send()
            .await
            .map_err(|e| BuildError::Push(format!("HEAD blob {}: {e}", blob.digest)))?;
        match resp.status().as_u16() {
            200 => return Ok(BlobOutcome::Exists),
            404 => {}
            _ => return Err(refused(&format!("HEAD blob {}", blob.digest), resp).await),
        }
        let start = match &blob.mount_from {
            Some(from) if from != repo => format!(
                "{}/v2/{repo}/blobs/uploads/?mount={}&from={from}",
                self.base, blob.digest
            ),
            _ => format!("{}/v2/{repo}/blobs/uploads/", self.base),
        };
        let resp = self
            .req(reqwest::Method::POST, &start)
            .header(CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| {
                BuildError::Push(format!("starting the upload of {}: {e}", blob.digest))
            })?;
        match resp.status().as_u16() {
            201 => return Ok(BlobOutcome::Mounted),
            202 => {}
            _ => return Err(refused(&format!("POST upload of {}", blob.digest), resp).await),
        }
        let mut location = self.location(&resp)?;
        if blob.size > self.options.chunk_size {
            location = self.upload_chunks(&location, blob).await?;
            let url = with_digest(&location, &blob.digest);
            let resp = self
                .req(reqwest::Method::PUT, &url)
                .header(CONTENT_LENGTH, "0")
                .send()
                .await
                .map_err(|e| {
                    BuildError::Push(format!("closing the upload of {}: {e}", blob.digest))
                })?;
            if resp.status() != reqwest::StatusCode::CREATED {
                return Err(refused(&format!("PUT upload of {}", blob.digest), resp).await);
            }
        } else {
            let body = match &blob.data {
                BlobData::Bytes(b) => reqwest::Body::from(b.clone()),
                BlobData::File(p) => {
                    let f = tokio::fs::File::open(p).await.map_err(|e| BuildError::Io {
                        what: format!("opening cached layer {}", p.display()),
                        source: e,
                    })?;
                    reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f))
                }
            };
            let url = with_digest(&location, &blob.digest);
            let resp = self
                .req(reqwest::Method::PUT, &url)
                .header(CONTENT_LENGTH, blob.size.to_string())
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .send()
                .await
                .map_err(|e| BuildError::Push(format!("uploading {}: {e}", blob.digest)))?;
            if resp.status() != reqwest::StatusCode::CREATED {
                return Err(refused(&format!("PUT upload of {}", blob.digest), resp).await);
            }
        }
        Ok(BlobOutcome::Uploaded)
    }

    /// Sends the blob in `PATCH` chunks; returns the location to close the upload at.
    async fn upload_chunks(&self, location: &str, blob: &Blob) -> Result<String, BuildError> {
        let mut location = location.to_owned();
        let mut offset = 0u64;
        let mut file = match &blob.data {
            BlobData::File(p) => {
                Some(tokio::fs::File::open(p).await.map_err(|e| BuildError::Io {
                    what: format!("opening cached layer {}", p.display()),
                    source: e,
                })?)
            }
            BlobData::Bytes(_) => None,
        };
        while offset < blob.size {
            let len = (blob.size - offset).min(self.options.chunk_size);
            let chunk: bytes::Bytes = match (&blob.data, &mut file) {
                (BlobData::Bytes(b), _) => b.slice(offset as usize..(offset + len) as usize),
                (BlobData::File(p), Some(f)) => {
                    let mut buf = vec![0u8; len as usize];
                    f.read_exact(&mut buf).await.map_err(|e| BuildError::Io {
                        what: format!("reading cached layer {}", p.display()),
                        source: e,
                    })?;
                    buf.into()
                }
                (BlobData::File(_), None) => unreachable!("a file blob has an open file"),
            };
            let resp = self
                .req(reqwest::Method::PATCH, &location)
                .header("content-range", format!("{offset}-{}", offset + len - 1))
                .header(CONTENT_LENGTH, len.to_string())
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(chunk)
                .send()
                .await
                .map_err(|e| {
                    BuildError::Push(format!("uploading a chunk of {}: {e}", blob.digest))
                })?;
            if resp.status() != reqwest::StatusCode::ACCEPTED {
                return Err(refused(&format!("PATCH chunk of {}", blob.digest), resp).await);
            }
            location = self.location(&resp)?;
            offset += len;
        }
        Ok(location)
    }

    /// The absolute upload location of a response.
    fn location(&self, resp: &reqwest::Response) -> Result<String, BuildError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| BuildError::Push("the registry gave no upload Location".into()))?;
        if loc.starts_with('/') {
            Ok(format!("{}{loc}", self.base))
        } else if loc.starts_with(&format!("{}/", self.base)) {
            Ok(loc.to_owned())
        } else {
            // An upload elsewhere would carry our credentials to another host.
            Err(BuildError::Push(format!(
                "the registry sent the upload to another place: {loc}"
            )))
        }
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn header_value(s: &str) -> Result<HeaderValue, BuildError> {
    HeaderValue::from_str(s)
        .map(|mut v| {
            v.set_sensitive(true);
            v
        })
        .map_err(|_| BuildError::Request("registry credentials hold invalid characters".into()))
}

/// An error for a registry answer that was not the expected one, with its OCI error code and message.
async fn refused(what: &str, resp: reqwest::Response) -> BuildError {
    let status = resp.status();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = &v["errors"][0];
            Some(format!(
                "{}: {}",
                e["code"].as_str()?,
                e["message"].as_str().unwrap_or("")
            ))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
    BuildError::Push(format!("{what}: the registry answered {status}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        let r: ImageRef = "127.0.0.1:5000/apps/web:1a2b3c4".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "apps/web");
        assert_eq!(r.tag, "1a2b3c4");
        assert_eq!(r.to_string(), "127.0.0.1:5000/apps/web:1a2b3c4");
        assert!("localhost/apps/web:1".parse::<ImageRef>().is_ok());
        for bad in [
            "apps/web:1",
            "127.0.0.1:5000/apps/web",
            "127.0.0.1:5000/Apps/web:1",
            "127.0.0.1:5000/apps//web:1",
            "127.0.0.1:5000/apps/web:-x",
            "127.0.0.1:5000/apps/web:a b",
            "reg.local/apps/../x:1",
            "",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_append_to_locations() {
        assert_eq!(
            with_digest("http://r/u/1", "sha256:x"),
            "http://r/u/1?digest=sha256:x"
        );
        assert_eq!(
            with_digest("http://r/u/1?state=a", "sha256:x"),
            "http://r/u/1?state=a&digest=sha256:x"
        );
    }
}
