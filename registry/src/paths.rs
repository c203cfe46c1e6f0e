//! The storage layout: the only place that builds storage paths. It follows distribution's layout so an
//! operator can read it:
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>/data                                   content (layers, configs, manifests)
//! repositories/<name>/_layers/<alg>/<hex>/link                         the repository may serve this blob
//! repositories/<name>/_manifests/revisions/<alg>/<hex>/link            a manifest of the repository (JSON)
//! repositories/<name>/_manifests/tags/<tag>/current/link               tag -> manifest digest
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>/<hex>/link          subject -> referrer descriptor (JSON)
//! repositories/<name>/_uploads/<uuid>/{startedat,data}                 an upload in progress
//! ```
//!
//! Names and digests are validated before they get here, and no valid repository component starts with
//! `_`, so the `_layers`-style directories can never collide with a nested repository name.

use crate::digest::{Algorithm, Digest};
use crate::names::RepoName;

pub const BLOBS: &str = "blobs";
pub const REPOSITORIES: &str = "repositories";

pub fn blob_data(d: &Digest) -> String {
    format!(
        "{BLOBS}/{}/{}/{}/data",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

pub fn blob_alg_dir(alg: Algorithm) -> String {
    format!("{BLOBS}/{}", alg.as_str())
}

pub fn repo(name: &RepoName) -> String {
    format!("{REPOSITORIES}/{name}")
}

pub fn layer_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_layers/{}/{}/link",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn layers_dir(name: &RepoName) -> String {
    format!("{REPOSITORIES}/{name}/_layers")
}

pub fn revision_link(name: &RepoName, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_manifests/revisions/{}/{}/link",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn revisions_dir(name: &RepoName) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/revisions")
}

pub fn tags_dir(name: &RepoName) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/tags")
}

pub fn tag_dir(name: &RepoName, tag: &str) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/tags/{tag}")
}

pub fn tag_link(name: &RepoName, tag: &str) -> String {
    format!("{REPOSITORIES}/{name}/_manifests/tags/{tag}/current/link")
}

pub fn referrers_dir(name: &RepoName, subject: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{name}/_referrers/{}/{}",
        subject.algorithm().as_str(),
        subject.hex()
    )
}

pub fn referrer_link(name: &RepoName, subject: &Digest, d: &Digest) -> String {
    format!(
        "{}/{}/{}/link",
        referrers_dir(name, subject),
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn uploads_dir(name: &RepoName) -> String {
    format!("{REPOSITORIES}/{name}/_uploads")
}

pub fn upload_dir(name: &RepoName, id: &uuid::Uuid) -> String {
    format!("{REPOSITORIES}/{name}/_uploads/{id}")
}

pub fn upload_data(name: &RepoName, id: &uuid::Uuid) -> String {
    format!("{}/data", upload_dir(name, id))
}

pub fn upload_started(name: &RepoName, id: &uuid::Uuid) -> String {
    format!("{}/startedat", upload_dir(name, id))
}
