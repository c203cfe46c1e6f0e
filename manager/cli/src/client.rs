//! The HTTP client of one manager: JSON calls with the session token, errors mapped to [`CliError`]
//! (unreachable with the URL, the manager's `{code, message}`, 401 as "run atlantis login"), bounded
//! answers and timeouts.

use std::sync::Once;
use std::time::Duration;

use atlantis_common::api::manager::{ErrorBody, TaskAccepted};
use futures::StreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CliError, transport_reason};

/// Largest JSON answer read.
const MAX_ANSWER: usize = 32 * 1024 * 1024;
/// Timeout of an ordinary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one manager.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Percent-encodes one path segment (names are validated already; this keeps anything else inert).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a manager URL: `http://` or `https://`, a host, no query.
pub fn check_url(url: &str) -> Result<String, CliError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| CliError::Config(format!("invalid manager URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(CliError::Config(format!(
            "invalid manager URL {url:?}: expected http://host:port or https://host"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(CliError::Config(format!(
            "invalid manager URL {url:?}: no query or fragment allowed"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Client {
    /// A client of the manager at `base` (checked with [`check_url`]), presenting `token` if any.
    pub fn new(base: &str, token: Option<String>) -> Result<Client, CliError> {
        install_crypto();
        let base = check_url(base)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("atlantis-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Other(format!("HTTP client: {e}")))?;
        Ok(Client { base, token, http })
    }

    /// The manager's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        CliError::Unreachable {
            url: self.base.clone(),
            reason: transport_reason(e),
        }
    }

    /// Sends a request; a non-2xx answer becomes the matching error.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let bytes = read_limited(resp, 64 * 1024).await.unwrap_or_default();
        let body = serde_json::from_slice::<ErrorBody>(&bytes).ok();
        let message = body.as_ref().map_or_else(
            || {
                let t = String::from_utf8_lossy(&bytes);
                let t = t.trim();
                if t.is_empty() {
                    format!("HTTP {status}")
                } else {
                    t.chars().take(300).collect::<String>().replace('\n', " ")
                }
            },
            |b| b.message.clone(),
        );
        // A route this manager does not have: say so rather than "not found".
        let message = if status == 404 && message == "no such route" {
            format!(
                "the manager at {} does not offer this (no such route; an older manager?)",
                self.base
            )
        } else {
            message
        };
        Err(match status {
            401 => CliError::Unauthenticated,
            403 => CliError::Forbidden(message),
            _ => CliError::Api {
                status,
                code: body.map_or_else(|| "unknown".to_owned(), |b| b.code),
                message,
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, CliError> {
        let resp = self.send(req.timeout(CALL_TIMEOUT)).await?;
        let bytes = read_limited(resp, MAX_ANSWER)
            .await
            .map_err(|e| self.read_error(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Other(format!(
                "the manager at {} sent an answer this client does not understand: {e}",
                self.base
            ))
        })
    }

    fn read_error(&self, e: &ReadError) -> CliError {
        match e {
            ReadError::Transport(e) => self.unreachable(e),
            ReadError::TooLarge => CliError::Other(format!(
                "the answer of {} is larger than {MAX_ANSWER} bytes",
                self.base
            )),
        }
    }

    /// `GET path` → JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.json(self.request(reqwest::Method::GET, path)).await
    }

    /// `method path` with a JSON body → JSON.
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        self.json(self.request(method, path).json(body)).await
    }

    /// `method path` (optionally with a JSON body), expecting no content.
    pub async fn call_empty<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), CliError> {
        let mut r = self.request(method, path).timeout(CALL_TIMEOUT);
        if let Some(b) = body {
            r = r.json(b);
        }
        self.send(r).await.map(drop)
    }

    /// `POST path` starting a task → its ID.
    pub async fn start_task<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<TaskAccepted, CliError> {
        self.call(reqwest::Method::POST, path, body).await
    }

    /// A streamed answer (task stream, logs, exec): no overall timeout, the body read by the caller.
    pub async fn stream(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, CliError> {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        self.send(r).await
    }

    /// Maps a failure while reading a streamed body.
    pub fn stream_error(&self, e: &reqwest::Error) -> CliError {
        CliError::Other(format!(
            "the connection to {} broke: {}",
            self.base,
            transport_reason(e)
        ))
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection failed.
    Transport(reqwest::Error),
    /// Over the bound.
    TooLarge,
}

async fn read_limited(resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(ReadError::Transport)?;
        if out.len() + chunk.len() > max {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Warns once when a token would travel in clear text to a host that is not this machine.
pub fn warn_plaintext(base: &str, has_token: bool) {
    if !has_token || !base.starts_with("http://") {
        return;
    }
    let host = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let local = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local {
        eprintln!(
            "warning: the session token is sent in clear text to {base}; use an https:// manager URL"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("hello-1.x"), "hello-1.x");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(check_url("http://m:7700/").unwrap(), "http://m:7700");
        for bad in ["m:7700", "ftp://m", "http://m/?x=1", ""] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
