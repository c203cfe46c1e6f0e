//! A small client of the manager's HTTP API (what the `atlantis` CLI will do for users) and of the
//! builder's. Every call to the manager carries `Authorization: Bearer <token>` when the manager has
//! written its admin token file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// An API error: the status and the `{code, message}` body when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer at all.
    #[error("{url}: {message}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// An answer with an unexpected status.
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The body (bounded).
        body: String,
    },
}

/// The manager's API.
#[derive(Debug, Clone)]
pub struct Manager {
    /// Base URL, `http://127.0.0.1:7700`.
    pub base: String,
    /// The admin token file (read at each call: the manager writes it when it starts).
    pub token_file: PathBuf,
    http: reqwest::Client,
}

impl Manager {
    /// A client of the manager at `base`.
    pub fn new(base: String, token_file: PathBuf) -> Manager {
        Manager {
            base,
            token_file,
            http: crate::health::http_client(),
        }
    }

    /// The token, when the file exists.
    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(&self.token_file)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    /// Sends a request; returns the status and the JSON body (`Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), ApiError> {
        let url = format!("{}{path}", self.base);
        let mut r = self.http.request(method, &url);
        if let Some(t) = self.token() {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.map_err(|e| ApiError::Unreachable {
            url: url.clone(),
            message: crate::health::error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// As [`Manager::call`], and any status outside `ok` is an error.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        ok: &[u16],
    ) -> Result<Value, ApiError> {
        let m = method.to_string();
        let (s, v) = self.call(method, path, body).await?;
        if ok.contains(&s) {
            Ok(v)
        } else {
            let mut body = v.to_string();
            body.truncate(2000);
            Err(ApiError::Status {
                method: m,
                url: format!("{}{path}", self.base),
                status: s,
                body,
            })
        }
    }

    /// Polls a task until it is no longer running (or `timeout`); returns its final status.
    /// `on_step` sees each new step as it appears.
    pub async fn wait_task(
        &self,
        id: &str,
        timeout: Duration,
        mut on_step: impl FnMut(&Value),
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            let v = self
                .expect(
                    reqwest::Method::GET,
                    &format!("/v1/tasks/{id}"),
                    None,
                    &[200],
                )
                .await?;
            if let Some(steps) = v["steps"].as_array() {
                for s in steps.iter().skip(seen) {
                    on_step(s);
                }
                seen = seen.max(steps.len());
            }
            if v["state"] != "running" {
                return Ok(v);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "task {id} still running after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
