//! Repository names, tags and manifest references, validated per the OCI Distribution grammar.
//!
//! Name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
//! Tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. Both are safe as storage path segments as validated here:
//! no component can be empty, start with a dot or underscore, or contain anything but `[a-z0-9._-]`.

use std::fmt;

use crate::digest::Digest;

/// Why a name or reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid repository name {0:?}")]
    Repository(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid reference {0:?}: neither a tag nor a digest")]
    Reference(String),
}

/// A validated repository name such as `apps/web` or `library/busybox`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

fn alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", always followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl RepoName {
    /// Validates a repository name.
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.is_empty() || s.len() > 255 || !s.split('/').all(valid_component) {
            return Err(NameError::Repository(s.chars().take(300).collect()));
        }
        Ok(RepoName(s.to_owned()))
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates a tag.
pub fn validate_tag(s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NameError::Tag(s.chars().take(200).collect()))
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    /// Parses a reference: anything with a `:` must be a valid digest, anything else a valid tag.
    pub fn parse(s: &str) -> Result<Reference, crate::error::RegistryError> {
        if s.contains(':') {
            Ok(Reference::Digest(
                s.parse().map_err(crate::error::RegistryError::from)?,
            ))
        } else {
            validate_tag(s).map_err(|_| {
                crate::error::RegistryError::TagInvalid(s.chars().take(200).collect())
            })?;
            Ok(Reference::Tag(s.to_owned()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in [
            "a",
            "apps/web",
            "library/busy-box",
            "a.b_c__d---e/f0",
            "x/y/z/w",
            "0",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "-a",
            "a-",
            "a___b",
            "a..b",
            "../etc",
            "a/../b",
            "a/.b",
            "_a",
            "a b",
            "a:b",
            "a%2f",
            long.as_str(),
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.0.0", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"t".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }
}
