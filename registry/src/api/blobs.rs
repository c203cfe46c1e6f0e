//! Blob and upload endpoints: `GET/HEAD/DELETE /v2/<name>/blobs/<digest>` (with `Range`), and
//! `POST /v2/<name>/blobs/uploads/` (monolithic with `?digest=`, cross-repository `?mount=&from=`, or a new
//! session), `GET/PATCH/PUT/DELETE /v2/<name>/blobs/uploads/<uuid>`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::StreamExt as _;

use super::{AppState, authorize, content_length, empty, header_str, query};
use crate::auth::{Action, Principal};
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::names::RepoName;
use crate::uploads::{self, ChunkCheck};

fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse::<Digest>().map_err(RegistryError::from)
}

fn parse_upload_id(s: &str) -> Result<uuid::Uuid, RegistryError> {
    match uuid::Uuid::parse_str(s) {
        Ok(id) if id.hyphenated().to_string() == s => Ok(id),
        _ => Err(RegistryError::BlobUploadUnknown(
            s.chars().take(80).collect(),
        )),
    }
}

/// A parsed single `Range: bytes=...` request header.
fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, RegistryError> {
    let unsatisfiable =
        || RegistryError::RangeInvalid(format!("range {value:?} of a {size}-byte blob"));
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // Multiple ranges: serve the whole blob, as RFC 9110 allows.
    }
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (
            s.parse().map_err(|_| unsatisfiable())?,
            size.saturating_sub(1),
        ),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| unsatisfiable())?;
            let e: u64 = e.parse().map_err(|_| unsatisfiable())?;
            if e < s {
                return Err(unsatisfiable());
            }
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

pub async fn get(
    st: &AppState,
    repo: &RepoName,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, RegistryError> {
    let digest = parse_digest(digest)?;
    let size = if head {
        st.registry.head_blob(repo, &digest).await?
    } else {
        st.registry.stat_blob(repo, &digest).await?
    };
    let range = match header_str(headers, header::RANGE) {
        Some(v) => parse_range(v, size)?,
        None => None,
    };
    let (status, offset, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        .header("docker-content-digest", digest.to_string());
    if let Some((s, e)) = range {
        b = b.header(header::CONTENT_RANGE, format!("bytes {s}-{e}/{size}"));
    }
    let body = if head {
        Body::empty()
    } else {
        let sent = st.metrics.bytes_sent.clone();
        let stream = st
            .registry
            .read_blob(repo, &digest, offset, Some(len))
            .await?;
        Body::from_stream(stream.inspect(move |c| {
            if let Ok(c) = c {
                sent.inc_by(c.len() as u64);
            }
        }))
    };
    b.body(body)
        .map_err(|e| RegistryError::BadRequest(e.to_string()))
}

pub async fn delete(
    st: &AppState,
    repo: &RepoName,
    digest: &str,
) -> Result<Response, RegistryError> {
    if !st.delete_enabled {
        return Err(RegistryError::Unsupported("deletes are disabled".into()));
    }
    let digest = parse_digest(digest)?;
    st.registry.delete_blob(repo, &digest).await?;
    empty(
        StatusCode::ACCEPTED,
        vec![(
            "docker-content-digest".parse().expect("static"),
            digest.to_string(),
        )],
    )
}

fn body_stream(st: &AppState, body: Body) -> uploads::Body<'static> {
    let received = st.metrics.bytes_received.clone();
    Box::pin(body.into_data_stream().map(move |r| match r {
        Ok(b) => {
            received.inc_by(b.len() as u64);
            Ok(b)
        }
        Err(e) => Err(e.to_string()),
    }))
}

fn upload_headers(
    repo: &RepoName,
    id: &uuid::Uuid,
    size: u64,
) -> Vec<(header::HeaderName, String)> {
    vec![
        (header::LOCATION, format!("/v2/{repo}/blobs/uploads/{id}")),
        (header::RANGE, format!("0-{}", size.saturating_sub(1))),
        (
            "docker-upload-uuid".parse().expect("static"),
            id.to_string(),
        ),
        (header::CONTENT_LENGTH, "0".into()),
    ]
}

fn committed(st: &AppState, repo: &RepoName, digest: &Digest) -> Result<Response, RegistryError> {
    st.metrics.blobs_committed.inc();
    empty(
        StatusCode::CREATED,
        vec![
            (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
            (
                "docker-content-digest".parse().expect("static"),
                digest.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".into()),
        ],
    )
}

pub async fn start(
    st: &AppState,
    who: &Principal,
    repo: &RepoName,
    req: Request,
) -> Result<Response, RegistryError> {
    let q = query(req.uri());
    if let Some(mount) = q.get("mount") {
        let digest = parse_digest(mount)?;
        if let Some(from) = q.get("from") {
            let from = RepoName::parse(from)?;
            // Mount only from a repository the caller may pull; otherwise fall back to a normal upload.
            if authorize(st, who, from.as_str(), Action::Pull).is_ok()
                && st.registry.mount_blob(repo, &from, &digest).await?
            {
                return committed(st, repo, &digest);
            }
        } else if st.registry.mount_blob(repo, repo, &digest).await? {
            return committed(st, repo, &digest);
        }
    } else if let Some(d) = q.get("digest") {
        let digest = parse_digest(d)?;
        let length = content_length(req.headers())?;
        st.registry
            .put_blob(repo, &digest, length, body_stream(st, req.into_body()))
            .await?;
        return committed(st, repo, &digest);
    }
    let id = st.registry.start_upload(repo).await?;
    empty(StatusCode::ACCEPTED, upload_headers(repo, &id, 0))
}

pub async fn status(st: &AppState, repo: &RepoName, id: &str) -> Result<Response, RegistryError> {
    let id = parse_upload_id(id)?;
    let size = st.registry.upload_status(repo, &id).await?;
    empty(StatusCode::NO_CONTENT, upload_headers(repo, &id, size))
}

/// Reads `Content-Range: <start>-<end>` (also with a `bytes ` or `bytes=` prefix) into a chunk check.
fn chunk_check(headers: &HeaderMap) -> Result<ChunkCheck, RegistryError> {
    let length = content_length(headers)?;
    let Some(raw) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok(ChunkCheck {
            start: None,
            length,
        });
    };
    let invalid = || RegistryError::RangeInvalid(format!("invalid Content-Range {raw:?}"));
    let spec = raw
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches(['=', ' ']);
    let spec = spec.split('/').next().unwrap_or("");
    let (a, b) = spec.split_once('-').ok_or_else(invalid)?;
    let start: u64 = a.trim().parse().map_err(|_| invalid())?;
    let end: u64 = b.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    let span = end - start + 1;
    if let Some(l) = length
        && l != span
    {
        return Err(RegistryError::SizeInvalid(format!(
            "Content-Range spans {span} bytes, Content-Length is {l}"
        )));
    }
    Ok(ChunkCheck {
        start: Some(start),
        length: Some(span),
    })
}

pub async fn patch(
    st: &AppState,
    repo: &RepoName,
    id: &str,
    req: Request,
) -> Result<Response, RegistryError> {
    let id = parse_upload_id(id)?;
    let check = chunk_check(req.headers())?;
    let size = st
        .registry
        .append_chunk(repo, &id, check, body_stream(st, req.into_body()))
        .await?;
    empty(StatusCode::ACCEPTED, upload_headers(repo, &id, size))
}

pub async fn finish(
    st: &AppState,
    repo: &RepoName,
    id: &str,
    req: Request,
) -> Result<Response, RegistryError> {
    let id = parse_upload_id(id)?;
    let q = query(req.uri());
    let digest = parse_digest(
        q.get("digest")
            .ok_or_else(|| RegistryError::DigestInvalid("digest parameter missing".into()))?,
    )?;
    let check = chunk_check(req.headers())?;
    st.registry
        .finish_upload(repo, &id, &digest, check, body_stream(st, req.into_body()))
        .await?;
    committed(st, repo, &digest)
}

pub async fn cancel(st: &AppState, repo: &RepoName, id: &str) -> Result<Response, RegistryError> {
    let id = parse_upload_id(id)?;
    st.registry.cancel_upload(repo, &id).await?;
    empty(
        StatusCode::NO_CONTENT,
        vec![(header::CONTENT_LENGTH, "0".into())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), Some((50, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=9-1", 100).is_err());
        assert!(parse_range("bytes=x-1", 100).is_err());
    }
}
