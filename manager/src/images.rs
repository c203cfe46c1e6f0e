//! Image resolution: `apps/<app>:<sha>` in the OCI registry, to the reference supervisors run.

use std::time::Duration;

use atlantis_common::{AppName, Sha};

use crate::config::{ImageRef, RegistryConfig};

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Why an image could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The registry has no such tag.
    #[error("no image apps/{app}:{sha} in the registry (build and push it first)")]
    NotFound {
        /// App.
        app: String,
        /// Commit.
        sha: String,
    },
    /// The registry failed or answered something unusable.
    #[error("registry: {0}")]
    Registry(String),
}

/// A resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// The reference given to supervisors.
    pub reference: String,
}

/// Resolves tags to digests with `HEAD /v2/apps/<app>/manifests/<sha>`.
#[derive(Debug, Clone)]
pub struct Images {
    cfg: RegistryConfig,
    password: Option<String>,
    http: reqwest::Client,
}

impl Images {
    /// A resolver for the configured registry.
    pub fn new(cfg: RegistryConfig) -> anyhow::Result<Images> {
        let password = match &cfg.password_file {
            Some(p) => Some(std::fs::read_to_string(p)?.trim().to_owned()),
            None => None,
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Images {
            cfg,
            password,
            http,
        })
    }

    fn pull_host(&self) -> String {
        match &self.cfg.pull_host {
            Some(h) => h.clone(),
            None => {
                let u = self.cfg.url.trim_end_matches('/');
                u.split_once("://").map_or(u, |(_, h)| h).to_owned()
            }
        }
    }

    /// Resolves `apps/<app>:<sha>`.
    pub async fn resolve(&self, app: &AppName, sha: &Sha) -> Result<Resolved, ImageError> {
        let url = format!(
            "{}/v2/apps/{app}/manifests/{sha}",
            self.cfg.url.trim_end_matches('/')
        );
        let mut req = self.http.head(&url).header("accept", ACCEPT);
        if let Some(u) = &self.cfg.user {
            req = req.basic_auth(u, self.password.as_deref());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ImageError::Registry(e.to_string()))?;
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return Err(ImageError::NotFound {
                    app: app.to_string(),
                    sha: sha.to_string(),
                });
            }
            s => {
                return Err(ImageError::Registry(format!("HEAD {url} answered {s}")));
            }
        }
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ImageError::Registry(format!(
                "no usable Docker-Content-Digest for apps/{app}:{sha} (got {digest:?})"
            )));
        }
        let host = self.pull_host();
        let reference = match self.cfg.image_ref {
            ImageRef::Digest => format!("{host}/apps/{app}@{digest}"),
            ImageRef::Tag => format!("{host}/apps/{app}:{sha}"),
        };
        Ok(Resolved { digest, reference })
    }
}
