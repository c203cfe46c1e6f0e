//! Manifest, tag, catalog and referrers endpoints.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;

use super::{AppState, content_length, empty, header_str, query};
use crate::auth::{Action, Principal};
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::manifest::OCI_INDEX;
use crate::names::{Reference, RepoName};

pub async fn get(
    st: &AppState,
    repo: &RepoName,
    reference: &str,
    head: bool,
) -> Result<Response, RegistryError> {
    // A reference that is neither a tag nor a digest names nothing that could exist: reading it answers
    // "unknown", as the conformance suite expects; only writes refuse it as invalid.
    let reference = Reference::parse(reference).map_err(|_| {
        RegistryError::ManifestUnknown(format!(
            "{repo}:{} (not a valid tag or digest)",
            reference.chars().take(200).collect::<String>()
        ))
    })?;
    let m = st.registry.get_manifest(repo, &reference).await?;
    let b = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &m.media_type)
        .header(header::CONTENT_LENGTH, m.body.len())
        .header(header::ETAG, format!("\"{}\"", m.digest))
        .header("docker-content-digest", m.digest.to_string());
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.body)
    };
    b.body(body)
        .map_err(|e| RegistryError::BadRequest(e.to_string()))
}

/// Reads a request body of at most `limit` bytes.
async fn read_bounded(
    req: Request,
    limit: u64,
    idle: std::time::Duration,
) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::TooLarge(format!("manifests are limited to {limit} bytes"));
    let announced = content_length(req.headers())?;
    if announced.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut stream = req.into_body().into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = tokio::time::timeout(idle, stream.next())
        .await
        .map_err(|_| {
            RegistryError::ManifestInvalid(format!("request body sent nothing for {idle:?}"))
        })?
    {
        let chunk = chunk
            .map_err(|e| RegistryError::ManifestInvalid(format!("request body broke off: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    if let Some(l) = announced
        && l != buf.len() as u64
    {
        return Err(RegistryError::SizeInvalid(format!(
            "body has {} bytes, {l} were announced",
            buf.len()
        )));
    }
    Ok(buf.freeze())
}

pub async fn put(
    st: &AppState,
    repo: &RepoName,
    reference: &str,
    req: Request,
) -> Result<Response, RegistryError> {
    let reference = Reference::parse(reference)?;
    let content_type = header_str(req.headers(), header::CONTENT_TYPE)
        .unwrap_or("")
        .to_owned();
    let limits = st.registry.limits();
    let body = read_bounded(req, limits.max_manifest_bytes, limits.body_idle_timeout).await?;
    let out = st
        .registry
        .put_manifest(repo, &reference, &content_type, body)
        .await?;
    st.metrics.manifests_pushed.inc();
    let mut headers = vec![
        (
            header::LOCATION,
            format!("/v2/{repo}/manifests/{}", out.digest),
        ),
        (
            "docker-content-digest".parse().expect("static"),
            out.digest.to_string(),
        ),
        (header::CONTENT_LENGTH, "0".into()),
    ];
    if let Some(s) = out.subject {
        headers.push(("oci-subject".parse().expect("static"), s.to_string()));
    }
    empty(StatusCode::CREATED, headers)
}

pub async fn delete(
    st: &AppState,
    repo: &RepoName,
    reference: &str,
) -> Result<Response, RegistryError> {
    if !st.delete_enabled {
        return Err(RegistryError::Unsupported("deletes are disabled".into()));
    }
    let reference = Reference::parse(reference)?;
    st.registry.delete_manifest(repo, &reference).await?;
    empty(
        StatusCode::ACCEPTED,
        vec![(header::CONTENT_LENGTH, "0".into())],
    )
}

/// Applies `n`/`last` pagination; returns the page and the `Link` header for the next one.
fn paginate(
    all: Vec<String>,
    uri: &Uri,
    base: &str,
) -> Result<(Vec<String>, Option<String>), RegistryError> {
    let q = query(uri);
    let last = q.get("last").cloned();
    let n = match q.get("n") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| RegistryError::BadRequest(format!("invalid n {v:?}")))?,
        ),
        None => None,
    };
    let mut items: Vec<String> = match &last {
        Some(l) => all
            .into_iter()
            .filter(|t| t.as_str() > l.as_str())
            .collect(),
        None => all,
    };
    let mut link = None;
    if let Some(n) = n
        && items.len() > n
    {
        items.truncate(n);
        if let Some(last) = items.last() {
            let enc =
                percent_encoding::utf8_percent_encode(last, percent_encoding::NON_ALPHANUMERIC);
            link = Some(format!("<{base}?n={n}&last={enc}>; rel=\"next\""));
        }
    }
    Ok((items, link))
}

fn json_page(body: serde_json::Value, link: Option<String>) -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(l) = link
        && let Ok(v) = l.parse()
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

pub async fn tags(st: &AppState, repo: &RepoName, uri: &Uri) -> Result<Response, RegistryError> {
    let all = st.registry.tags(repo).await?;
    let (page, link) = paginate(all, uri, &format!("/v2/{repo}/tags/list"))?;
    Ok(json_page(
        serde_json::json!({ "name": repo.as_str(), "tags": page }),
        link,
    ))
}

pub async fn catalog(st: &AppState, who: &Principal, uri: &Uri) -> Result<Response, RegistryError> {
    if st.auth.is_some() && *who == Principal::Anonymous {
        return Err(RegistryError::Unauthorized);
    }
    let mut all = st.registry.catalog().await?;
    if let Some(a) = &st.auth {
        all.retain(|r| a.allowed(who, r, Action::Pull));
    }
    let (page, link) = paginate(all, uri, "/v2/_catalog")?;
    Ok(json_page(serde_json::json!({ "repositories": page }), link))
}

pub async fn referrers(
    st: &AppState,
    repo: &RepoName,
    digest: &str,
    uri: &Uri,
) -> Result<Response, RegistryError> {
    let subject: Digest = digest.parse()?;
    let q = query(uri);
    let filter = q.get("artifactType").map(String::as_str);
    let list = st.registry.referrers(repo, &subject, filter).await?;
    let body = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list });
    let mut resp = ([(header::CONTENT_TYPE, OCI_INDEX)], body.to_string()).into_response();
    if filter.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            header::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
