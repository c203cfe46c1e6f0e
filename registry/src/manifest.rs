//! Manifest parsing and validation: OCI image manifests and indexes, Docker schema2 manifests and manifest
//! lists. The parser is strict about what the registry relies on (media type, schema version, descriptor
//! digests and sizes) and returns the references the registry must check and the garbage collector must
//! follow. Bodies are bounded by the caller before they get here.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::RegistryError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Every manifest media type the registry stores.
pub const SUPPORTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What the registry needs to know about a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The resolved media type.
    pub media_type: String,
    /// Blobs it references (config and layers), excluding non-distributable layers that carry URLs.
    pub blobs: Vec<Descriptor>,
    /// Child manifests (indexes and lists).
    pub manifests: Vec<Descriptor>,
    /// The subject, for the referrers API.
    pub subject: Option<Descriptor>,
    /// `artifactType`, or the config media type of an image manifest, as the referrers API reports it.
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(msg.into())
}

fn check_media_type(field: &str, mt: &str) -> Result<(), RegistryError> {
    // RFC 6838: type "/" subtype, restricted-name characters, bounded.
    let ok = mt.len() <= 255
        && mt.split_once('/').is_some_and(|(t, s)| {
            let name = |x: &str| {
                !x.is_empty()
                    && x.as_bytes()[0].is_ascii_alphanumeric()
                    && x.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            name(t) && name(s)
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} has an invalid media type {:?}",
            mt.chars().take(80).collect::<String>()
        )))
    }
}

fn check_descriptor(field: &str, d: &Descriptor) -> Result<(), RegistryError> {
    check_media_type(&format!("{field}.mediaType"), &d.media_type)?;
    if let Some(at) = &d.artifact_type {
        check_media_type(&format!("{field}.artifactType"), at)?;
    }
    Ok(())
}

/// Parses `body` sent with `content_type` (which may be empty or carry parameters).
pub fn parse(content_type: &str, body: &[u8]) -> Result<Parsed, RegistryError> {
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a valid manifest document: {e}")))?;
    let header_type = content_type.split(';').next().unwrap_or("").trim();
    let media_type = match (raw.media_type.as_deref(), header_type) {
        (Some(m), h) if !h.is_empty() && h != m && SUPPORTED.contains(&h) => {
            return Err(invalid(format!(
                "mediaType {m:?} does not match Content-Type {h:?}"
            )));
        }
        (Some(m), _) => m.to_owned(),
        (None, h) if SUPPORTED.contains(&h) => h.to_owned(),
        // An OCI manifest may omit mediaType; infer it from the shape.
        (None, _) if raw.config.is_some() => OCI_MANIFEST.to_owned(),
        (None, _) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, h) => {
            return Err(invalid(format!(
                "unknown manifest media type {h:?} and no mediaType field"
            )));
        }
    };
    if !SUPPORTED.contains(&media_type.as_str()) {
        return Err(invalid(format!(
            "unsupported manifest media type {media_type:?}"
        )));
    }
    if raw.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    if let Some(at) = &raw.artifact_type {
        check_media_type("artifactType", at)?;
    }
    if let Some(s) = &raw.subject {
        check_descriptor("subject", s)?;
    }
    let mut parsed = Parsed {
        media_type: media_type.clone(),
        blobs: Vec::new(),
        manifests: Vec::new(),
        subject: raw.subject.clone(),
        artifact_type: raw.artifact_type.clone(),
        annotations: raw.annotations.clone(),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            if raw.manifests.is_some() {
                return Err(invalid("an image manifest has no manifests field"));
            }
            let config = raw.config.ok_or_else(|| invalid("config is required"))?;
            check_descriptor("config", &config)?;
            let layers = raw.layers.ok_or_else(|| invalid("layers is required"))?;
            if media_type == DOCKER_MANIFEST
                && (raw.subject.is_some() || raw.artifact_type.is_some())
            {
                return Err(invalid(
                    "Docker schema2 manifests have no subject or artifactType",
                ));
            }
            if parsed.artifact_type.is_none() && media_type == OCI_MANIFEST {
                parsed.artifact_type = Some(config.media_type.clone());
            }
            parsed.blobs.push(config);
            for (i, l) in layers.into_iter().enumerate() {
                check_descriptor(&format!("layers[{i}]"), &l)?;
                let foreign = l.urls.as_ref().is_some_and(|u| !u.is_empty())
                    && (l.media_type.contains("nondistributable")
                        || l.media_type.contains("foreign"));
                if !foreign {
                    parsed.blobs.push(l);
                }
            }
        }
        _ => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid("an index has no config or layers"));
            }
            let manifests = raw
                .manifests
                .ok_or_else(|| invalid("manifests is required"))?;
            if media_type == DOCKER_LIST && (raw.subject.is_some() || raw.artifact_type.is_some()) {
                return Err(invalid(
                    "Docker manifest lists have no subject or artifactType",
                ));
            }
            for (i, m) in manifests.iter().enumerate() {
                check_descriptor(&format!("manifests[{i}]"), m)?;
            }
            parsed.manifests = manifests;
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn image_manifest() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D}","size":0}}]}}"#
        );
        let p = parse(OCI_MANIFEST, body.as_bytes()).unwrap();
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        // Content-Type disagreeing with mediaType.
        assert!(parse(DOCKER_MANIFEST, body.as_bytes()).is_err());
    }

    #[test]
    fn rejects_bad_documents() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"schemaVersion":1,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
            r#"{"schemaVersion":2,"mediaType":"text/plain","manifests":[]}"#,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x/y","digest":"sha256:abc","size":1}]}"#,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x/y","digest":"sha256:../../../etc","size":1}]}"#,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x/y","size":-1,"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}]}"#,
        ] {
            assert!(parse("", bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
