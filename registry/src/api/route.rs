//! Parsing `/v2/...` paths. Repository names contain slashes, so the path is read from its end: the last
//! segments say which endpoint it is, everything before them is the name. Each segment is
//! percent-decoded on its own and must not decode to a slash or to anything outside printable ASCII.

use crate::error::RegistryError;
use crate::names::RepoName;

/// An endpoint of the Distribution API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, String),
    Blob(RepoName, String),
    UploadStart(RepoName),
    Upload(RepoName, String),
    Referrers(RepoName, String),
}

impl Route {
    /// A label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    /// The repository the route acts on.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(r) | Route::UploadStart(r) => Some(r),
            Route::Manifest(r, _)
            | Route::Blob(r, _)
            | Route::Upload(r, _)
            | Route::Referrers(r, _) => Some(r),
        }
    }
}

fn decode(seg: &str) -> Result<String, RegistryError> {
    let d = percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map_err(|_| RegistryError::NameInvalid("path is not UTF-8".into()))?;
    if d.contains('/') || !d.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RegistryError::NameInvalid(format!(
            "invalid path segment {:?}",
            seg.chars().take(80).collect::<String>()
        )));
    }
    Ok(d.into_owned())
}

/// Parses a request path.
pub fn parse(path: &str) -> Result<Route, RegistryError> {
    if path.len() > 2048 {
        return Err(RegistryError::NameInvalid("path too long".into()));
    }
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Ok(Route::Base),
        Some(r) if r.starts_with('/') => &r[1..],
        _ => return Err(RegistryError::NotFound),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segs: Vec<String> = rest.split('/').map(decode).collect::<Result<_, _>>()?;
    let n = segs.len();
    let name = |k: usize| -> Result<RepoName, RegistryError> {
        if k == 0 {
            return Err(RegistryError::NameInvalid("empty repository name".into()));
        }
        Ok(RepoName::parse(&segs[..k].join("/"))?)
    };
    let at = |i: usize, s: &str| n > i && segs[n - 1 - i] == s;
    if n >= 3 && at(1, "tags") && at(0, "list") {
        return Ok(Route::Tags(name(n - 2)?));
    }
    if n >= 4 && at(2, "blobs") && at(1, "uploads") {
        return if segs[n - 1].is_empty() {
            Ok(Route::UploadStart(name(n - 3)?))
        } else {
            Ok(Route::Upload(name(n - 3)?, segs[n - 1].clone()))
        };
    }
    if n >= 3 && at(1, "blobs") && at(0, "uploads") {
        return Ok(Route::UploadStart(name(n - 2)?));
    }
    if n >= 3 && !segs[n - 1].is_empty() {
        let tail = segs[n - 1].clone();
        if at(1, "manifests") {
            return Ok(Route::Manifest(name(n - 2)?, tail));
        }
        if at(1, "blobs") {
            return Ok(Route::Blob(name(n - 2)?, tail));
        }
        if at(1, "referrers") {
            return Ok(Route::Referrers(name(n - 2)?, tail));
        }
    }
    if segs.iter().any(|s| s == "..") {
        return Err(RegistryError::NameInvalid("path traversal".into()));
    }
    Err(RegistryError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(parse("/v2").unwrap(), Route::Base);
        assert_eq!(parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert_eq!(parse("/v2/a/b/tags/list").unwrap(), Route::Tags(r("a/b")));
        assert_eq!(
            parse("/v2/a/manifests/latest").unwrap(),
            Route::Manifest(r("a"), "latest".into())
        );
        assert_eq!(
            parse("/v2/a/b/c/blobs/sha256%3Aab").unwrap(),
            Route::Blob(r("a/b/c"), "sha256:ab".into())
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/").unwrap(),
            Route::UploadStart(r("a"))
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads").unwrap(),
            Route::UploadStart(r("a"))
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/x-y").unwrap(),
            Route::Upload(r("a"), "x-y".into())
        );
        assert_eq!(
            parse("/v2/a/blobs/blobs/sha256:1").unwrap(),
            Route::Blob(r("a/blobs"), "sha256:1".into())
        );
        assert_eq!(
            parse("/v2/a/referrers/sha256:1").unwrap(),
            Route::Referrers(r("a"), "sha256:1".into())
        );
        assert!(matches!(
            parse("/v2/../etc/manifests/x"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/a%2Fb/manifests/x"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/A/manifests/x"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/manifests/x"),
            Err(RegistryError::NotFound)
        ));
        assert!(matches!(
            parse("/v3/a/manifests/x"),
            Err(RegistryError::NotFound)
        ));
    }
}
