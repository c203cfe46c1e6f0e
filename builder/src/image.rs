//! The OCI image config and manifest, serialised with a fixed field order and no timestamps but the
//! epoch, so the same layers and app config give the same bytes.

use std::collections::BTreeMap;

use atlantis_common::api::app_config::{self, AppConfig};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::layer::LayerInfo;
use crate::template::PATH_ENV;

/// OCI media type of an image manifest.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI media type of an image config.
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// OCI media type of a gzip layer.
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Where the app's files go in the image; also the working directory.
pub const APP_DIR: &str = "/app";
/// The fixed creation time written in configs.
const EPOCH: &str = "1970-01-01T00:00:00Z";

#[derive(Serialize)]
struct ImageConfig<'a> {
    created: &'static str,
    architecture: &'static str,
    os: &'static str,
    config: RunConfig<'a>,
    rootfs: RootFs<'a>,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig<'a> {
    cmd: &'a [String],
    env: Vec<String>,
    exposed_ports: BTreeMap<String, serde_json::Value>,
    working_dir: &'static str,
    labels: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
struct History {
    created: &'static str,
    created_by: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'static str,
    digest: &'a str,
    size: u64,
}

/// The OCI architecture name of this machine.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// An assembled image: its config and manifest bytes and their digests.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config blob.
    pub config: Vec<u8>,
    /// `sha256:` digest of the config blob.
    pub config_digest: String,
    /// The manifest.
    pub manifest: Vec<u8>,
    /// `sha256:` digest of the manifest: the image's digest.
    pub digest: String,
    /// The layers, base first.
    pub layers: Vec<LayerInfo>,
}

/// Assembles the config and manifest of an image over `layers` (base first).
///
/// The config's command is the app's `run` (as `Cmd`, so a supervisor's command override replaces it
/// whole), its environment is `PATH` plus the app's `env`, it exposes the app's port, works in
/// [`APP_DIR`], and carries the labels: the canonical app config, the app name and the sha.
pub fn assemble(
    app: &AppConfig,
    sha: Option<&str>,
    revision: Option<&str>,
    template_note: &str,
    layers: Vec<LayerInfo>,
) -> Image {
    let mut env = vec![PATH_ENV.to_owned()];
    env.extend(app.env.0.iter().map(|(k, v)| format!("{k}={v}")));
    let mut labels = BTreeMap::new();
    labels.insert(app_config::LABEL_CONFIG, app.to_toml());
    labels.insert(app_config::LABEL_APP, app.name.to_string());
    if let Some(sha) = sha {
        labels.insert(app_config::LABEL_SHA, sha.to_owned());
    }
    if let Some(rev) = revision.or(sha) {
        labels.insert("org.opencontainers.image.revision", rev.to_owned());
    }
    let config = ImageConfig {
        created: EPOCH,
        architecture: architecture(),
        os: "linux",
        config: RunConfig {
            cmd: &app.run.0,
            env,
            exposed_ports: [(format!("{}/tcp", app.port.0), serde_json::json!({}))].into(),
            working_dir: APP_DIR,
            labels,
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers.iter().map(|l| l.diff_id.as_str()).collect(),
        },
        history: vec![
            History {
                created: EPOCH,
                created_by: format!("atlantis-builder: template {template_note}"),
            },
            History {
                created: EPOCH,
                created_by: format!("atlantis-builder: app files in {APP_DIR}"),
            },
        ],
    };
    let config = serde_json::to_vec(&config).expect("config serialises");
    let config_digest = sha256(&config);
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE,
        config: Descriptor {
            media_type: CONFIG_TYPE,
            digest: &config_digest,
            size: config.len() as u64,
        },
        layers: layers
            .iter()
            .map(|l| Descriptor {
                media_type: LAYER_TYPE,
                digest: &l.digest,
                size: l.size,
            })
            .collect(),
    };
    let manifest = serde_json::to_vec(&manifest).expect("manifest serialises");
    let digest = sha256(&manifest);
    Image {
        config,
        config_digest,
        manifest,
        digest,
        layers,
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_manifest_are_stable_and_carry_the_labels() {
        let app = AppConfig::parse(
            "name = \"web\"\ntemplate = \"busybox\"\nrun = [\"/bin/sh\", \"-c\", \"x\"]\nport = 9000\n[env]\nB = \"2\"\nA = \"1\"\n",
        )
        .unwrap();
        let layers = vec![LayerInfo {
            digest: format!("sha256:{}", "1".repeat(64)),
            diff_id: format!("sha256:{}", "2".repeat(64)),
            size: 10,
        }];
        let a = assemble(&app, Some("1a2b3c4"), None, "busybox", layers.clone());
        let b = assemble(&app, Some("1a2b3c4"), None, "busybox", layers);
        assert_eq!(a.manifest, b.manifest);
        assert_eq!(a.digest, sha256(&a.manifest));
        let c: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(
            c["config"]["Cmd"],
            serde_json::json!(["/bin/sh", "-c", "x"])
        );
        assert_eq!(c["config"]["Env"][1], "A=1");
        assert_eq!(c["config"]["Env"][2], "B=2");
        assert!(c["config"]["ExposedPorts"]["9000/tcp"].is_object());
        assert_eq!(c["config"]["Labels"]["atlantis.sha"], "1a2b3c4");
        let label = c["config"]["Labels"]["atlantis.toml"].as_str().unwrap();
        assert_eq!(AppConfig::parse(label).unwrap(), app);
        assert_eq!(
            c["rootfs"]["diff_ids"][0],
            format!("sha256:{}", "2".repeat(64))
        );
        let m: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["config"]["digest"], a.config_digest.as_str());
        assert_eq!(m["layers"][0]["mediaType"], LAYER_TYPE);
    }
}
