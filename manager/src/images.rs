//! Image resolution: `apps/<app>:<sha>` in the OCI registry, to the reference supervisors run.

use std::time::Duration;

use atlantis_common::api::app_config::AppConfig;
use atlantis_common::api::manager::ManifestOverrides;
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
    /// The image's manifest label is unusable.
    #[error("{0}")]
    Manifest(String),
}

/// A resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// The reference given to supervisors.
    pub reference: String,
}

/// The largest manifest or image config read from the registry.
const MAX_DOC: usize = 4 << 20;

/// The image label that carries the app's manifest: the builder's canonical `atlantis.toml`.
pub const MANIFEST_LABEL: &str = atlantis_common::api::app_config::LABEL_CONFIG;

/// Parses the `atlantis.toml` label of `app`'s image (the same [`AppConfig`] the builder wrote) into
/// manifest overrides. The build-only parts (template, build steps) and the declared dependencies, which
/// the app's record decides, are not used here.
pub fn parse_manifest_label(app: &AppName, text: &str) -> Result<ManifestOverrides, ImageError> {
    let m = AppConfig::parse(text)
        .map_err(|e| ImageError::Manifest(format!("the image's {MANIFEST_LABEL} label: {e}")))?;
    if m.name != *app {
        return Err(ImageError::Manifest(format!(
            "the image's {MANIFEST_LABEL} names app {:?}, not {app}",
            m.name.as_str()
        )));
    }
    let command: Vec<String> = m.run.into();
    Ok(ManifestOverrides {
        instances: Some(m.instances.into()),
        cpu_millis: Some(m.cpu_millis.into()),
        memory_mb: Some(m.memory_mb.into()),
        port: Some(m.port.into()),
        health_path: Some(m.health_path.into()),
        start_timeout_ms: None,
        command: (!command.is_empty()).then_some(command),
        env_vars: m.env.into(),
    })
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

    async fn get_doc(&self, url: &str) -> Result<serde_json::Value, ImageError> {
        let mut req = self.http.get(url).header("accept", ACCEPT);
        if let Some(u) = &self.cfg.user {
            req = req.basic_auth(u, self.password.as_deref());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ImageError::Registry(e.to_string()))?;
        if resp.status() != 200 {
            return Err(ImageError::Registry(format!(
                "GET {url} answered {}",
                resp.status()
            )));
        }
        if resp.content_length().is_some_and(|n| n > MAX_DOC as u64) {
            return Err(ImageError::Registry(format!(
                "{url} is larger than {MAX_DOC} bytes"
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ImageError::Registry(e.to_string()))?;
        if bytes.len() > MAX_DOC {
            return Err(ImageError::Registry(format!(
                "{url} is larger than {MAX_DOC} bytes"
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Registry(format!("{url}: not JSON: {e}")))
    }

    /// The overrides carried by the image's `atlantis.toml` label (none if it has no such label). An
    /// index is followed to its linux/amd64 image (or its first).
    pub async fn manifest_overrides(
        &self,
        app: &AppName,
        digest: &str,
    ) -> Result<ManifestOverrides, ImageError> {
        let base = self.cfg.url.trim_end_matches('/');
        let mut doc = self
            .get_doc(&format!("{base}/v2/apps/{app}/manifests/{digest}"))
            .await?;
        if let Some(list) = doc.get("manifests").and_then(|m| m.as_array()) {
            let pick = list
                .iter()
                .find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                })
                .or_else(|| list.first())
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| ImageError::Registry("an image index without images".into()))?
                .to_owned();
            doc = self
                .get_doc(&format!("{base}/v2/apps/{app}/manifests/{pick}"))
                .await?;
        }
        let Some(config) = doc["config"]["digest"].as_str() else {
            return Ok(ManifestOverrides::default());
        };
        if !config.starts_with("sha256:") || config.contains('/') {
            return Err(ImageError::Registry(format!(
                "bad config digest {config:?}"
            )));
        }
        let cfg = self
            .get_doc(&format!("{base}/v2/apps/{app}/blobs/{config}"))
            .await?;
        match cfg["config"]["Labels"][MANIFEST_LABEL].as_str() {
            Some(text) => parse_manifest_label(app, text),
            None => Ok(ManifestOverrides::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_labels_parse() {
        let app: AppName = "web".parse().unwrap();
        let o = parse_manifest_label(
            &app,
            "name = \"web\"\ntemplate = \"static\"\nrun = [\"/app\"]\nport = 9090\ninstances = 2\n[env]\nMODE = \"prod\"\n",
        )
        .unwrap();
        assert_eq!(o.port, Some(9090));
        assert_eq!(o.instances, Some(2));
        assert_eq!(o.command, Some(vec!["/app".to_owned()]));
        assert_eq!(o.env_vars["MODE"], "prod");
        let e = parse_manifest_label(
            &app,
            "name = \"api\"\ntemplate = \"static\"\nrun = [\"/app\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("names app \"api\""), "{e}");
        assert!(
            parse_manifest_label(
                &app,
                "name = \"web\"\ntemplate = \"static\"\nrun = [\"/app\"]\nport = \"x\""
            )
            .is_err()
        );
        assert!(
            parse_manifest_label(
                &app,
                "name = \"web\"\ntemplate = \"static\"\nrun = [\"/app\"]\nport = 70000"
            )
            .is_err()
        );
    }

    /// The label the builder writes (the canonical form, every default filled in) is what the manager reads.
    #[test]
    fn the_builders_canonical_label_parses() {
        let app: AppName = "web".parse().unwrap();
        let cfg = AppConfig::parse(
            "name = \"web\"\ntemplate = \"busybox\"\nrun = [\"/bin/busybox\", \"httpd\", \"-f\"]\nport = 8080\n[env]\nA = \"1\"\n",
        )
        .unwrap();
        let o = parse_manifest_label(&app, &cfg.to_toml()).unwrap();
        assert_eq!(o.port, Some(8080));
        assert_eq!(o.instances, Some(1));
        assert_eq!(o.health_path.as_deref(), Some("/healthz"));
        assert_eq!(o.command.as_deref().map(|c| c.len()), Some(3));
        assert_eq!(o.env_vars["A"], "1");
    }
}
