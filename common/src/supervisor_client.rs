//! A typed client of the supervisor API (feature `client`), for the manager and tests. It lives here,
//! not in the supervisor crate, so its callers do not compile the supervisor's Docker backend.
//!
//! Every call carries the cluster token; non-2xx answers come back as [`ClientError::Api`] with the
//! supervisor's stable error code, so callers can tell `no_capacity` from `image_not_found` without parsing
//! prose. A deploy waits until the container is healthy, so its timeout is long (configurable).

use std::time::Duration;

use crate::ContainerId;
use crate::api::supervisor::{
    ContainerInfo, ContainerSpec, DependenciesRequest, Dependency, ErrorBody, SupervisorHealth,
    TeardownRequest, TeardownResponse,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::de::DeserializeOwned;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (connection, timeout).
    #[error("supervisor unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    /// The supervisor refused or failed, with its error body.
    #[error("supervisor answered {status}: {} ({})", body.message, body.code)]
    Api {
        /// HTTP status.
        status: u16,
        /// The stable code and message.
        body: ErrorBody,
    },
    /// The answer could not be decoded.
    #[error("undecodable answer from the supervisor: {0}")]
    Decode(String),
}

impl ClientError {
    /// The stable error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }
}

/// A client of one supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorClient {
    base: String,
    token: String,
    http: reqwest::Client,
    timeout: Duration,
    deploy_timeout: Duration,
}

impl SupervisorClient {
    /// A client of the supervisor at `base_url` (`http://host:port`), presenting `token`.
    pub fn new(base_url: &str, token: &str) -> Result<SupervisorClient, ClientError> {
        Self::with_tls(base_url, token, None)
    }

    /// As [`SupervisorClient::new`]; with `tls` (trusting the cluster CA and presenting this manager's
    /// client certificate), `https://` supervisors are called over mutual TLS.
    pub fn with_tls(
        base_url: &str,
        token: &str,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<SupervisorClient, ClientError> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder.build()?;
        Ok(SupervisorClient {
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
            timeout: Duration::from_secs(30),
            deploy_timeout: Duration::from_secs(900),
        })
    }

    /// Sets the timeout of deploys (pull + start + health), default 15 minutes.
    pub fn with_deploy_timeout(mut self, t: Duration) -> Self {
        self.deploy_timeout = t;
        self
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let resp = req.bearer_auth(&self.token).timeout(timeout).send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        if !(200..300).contains(&status) {
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            });
            return Err(ClientError::Api { status, body });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Deploys a container; returns once it is healthy.
    pub async fn deploy(&self, spec: &ContainerSpec) -> Result<ContainerInfo, ClientError> {
        self.call(
            self.http
                .post(format!("{}/v1/containers", self.base))
                .json(spec),
            self.deploy_timeout,
        )
        .await
    }

    /// Tears containers down.
    pub async fn teardown(&self, req: &TeardownRequest) -> Result<TeardownResponse, ClientError> {
        self.call(
            self.http
                .post(format!("{}/v1/teardown", self.base))
                .json(req),
            self.deploy_timeout,
        )
        .await
    }

    /// Replaces the dependencies of a running container (its whole set: an empty list takes them all
    /// away). The supervisor changes its rules at once, cuts the connections they now refuse and keeps
    /// the set across its restarts. `not_found` when it does not run the container.
    pub async fn set_dependencies(
        &self,
        id: &ContainerId,
        dependencies: &[Dependency],
    ) -> Result<ContainerInfo, ClientError> {
        self.call(
            self.http
                .put(format!("{}/v1/containers/{id}/dependencies", self.base))
                .json(&DependenciesRequest {
                    dependencies: dependencies.to_vec(),
                }),
            self.timeout,
        )
        .await
    }

    /// Every container of the supervisor.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>, ClientError> {
        self.call(
            self.http.get(format!("{}/v1/containers", self.base)),
            self.timeout,
        )
        .await
    }

    /// One container, `None` when the supervisor does not run it.
    pub async fn get(&self, id: &ContainerId) -> Result<Option<ContainerInfo>, ClientError> {
        match self
            .call(
                self.http.get(format!("{}/v1/containers/{id}", self.base)),
                self.timeout,
            )
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Capacity, free resources, version.
    pub async fn health(&self) -> Result<SupervisorHealth, ClientError> {
        self.call(
            self.http.get(format!("{}/v1/health", self.base)),
            self.timeout,
        )
        .await
    }

    /// The container's output; with `follow`, a stream that lasts while the container runs.
    pub async fn logs(
        &self,
        id: &ContainerId,
        follow: bool,
        tail: u32,
    ) -> Result<BoxStream<'static, Result<Bytes, ClientError>>, ClientError> {
        let url = format!(
            "{}/v1/containers/{id}/logs?follow={follow}&tail={tail}",
            self.base
        );
        let mut req = self.http.get(url).bearer_auth(&self.token);
        if !follow {
            req = req.timeout(self.timeout);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let bytes = resp.bytes().await?;
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
            return Err(ClientError::Api { status, body });
        }
        Ok(resp.bytes_stream().map_err(ClientError::from).boxed())
    }

    /// Runs a command in a container: the raw ndjson stream of
    /// [`crate::api::exec::ExecEvent`]s (no overall timeout; the supervisor bounds the run time).
    pub async fn exec(
        &self,
        id: &ContainerId,
        req: &crate::api::exec::ExecRequest,
    ) -> Result<BoxStream<'static, Result<Bytes, ClientError>>, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/containers/{id}/exec", self.base))
            .bearer_auth(&self.token)
            .json(req)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let bytes = resp.bytes().await?;
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            });
            return Err(ClientError::Api { status, body });
        }
        Ok(resp.bytes_stream().map_err(ClientError::from).boxed())
    }
}
