//! The claims of a registry token: the JWT the manager signs (`manager/src/auth/registry.rs`), the
//! registry checks (`registry/src/auth.rs`) and the builder reads before a push
//! (`builder/src/push.rs`, `check_scoped_token`). One type, so the three cannot drift apart.
//!
//! The shape is Docker's token authentication: the standard `iss`, `sub`, `aud`, `exp`, `nbf`, `iat` and
//! `jti` claims plus `access`, the list of repository actions granted. Serde only: signing and checking
//! the signature stay with the manager and the registry.

use serde::{Deserialize, Serialize};

/// The resource type of every grant Atlantis issues.
pub const REPOSITORY: &str = "repository";
/// The action that reads a repository.
pub const PULL: &str = "pull";
/// The action that writes a repository.
pub const PUSH: &str = "push";

/// The claims of a registry token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer (the manager's `[auth.registry] issuer`).
    pub iss: String,
    /// Who the token was issued to.
    pub sub: String,
    /// The audience: the registry's service name.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default)]
    pub nbf: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// The token's unique ID.
    #[serde(default)]
    pub jti: String,
    /// What the token grants.
    #[serde(default)]
    pub access: Vec<Access>,
}

impl Claims {
    /// Whether the claims grant `action` on the repository `name`.
    pub fn grants(&self, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| a.grants(name, action))
    }
}

/// One grant of a token (an entry of Docker's `access` claim): actions on a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The resource type: [`REPOSITORY`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository name.
    pub name: String,
    /// The actions granted: [`PULL`], [`PUSH`].
    #[serde(default)]
    pub actions: Vec<String>,
}

impl Access {
    /// A grant of `actions` on the repository `name`.
    pub fn repository(name: impl Into<String>, actions: &[&str]) -> Access {
        Access {
            kind: REPOSITORY.to_owned(),
            name: name.into(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    /// Whether this grant is `action` on the repository `name`.
    pub fn grants(&self, name: &str, action: &str) -> bool {
        self.kind == REPOSITORY && self.name == name && self.actions.iter().any(|a| a == action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "atlantis-manager".into(),
            sub: "alice".into(),
            aud: "atlantis-registry".into(),
            exp: 1_700_000_300,
            nbf: 1_699_999_995,
            iat: 1_700_000_000,
            jti: "7c0ffee0-0000-4000-8000-000000000000".into(),
            access: vec![
                Access::repository("apps/web", &[PULL, PUSH]),
                Access::repository("base/debian", &[PULL]),
            ],
        }
    }

    #[test]
    fn round_trips_with_docker_field_names() {
        let c = claims();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["access"][0]["type"], "repository");
        assert_eq!(
            json["access"][0]["actions"],
            serde_json::json!(["pull", "push"])
        );
        assert_eq!(json["aud"], "atlantis-registry");
        assert_eq!(json["exp"], 1_700_000_300u64);
        let back: Claims = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn optional_claims_default_and_required_ones_do_not() {
        let minimal = serde_json::json!({"iss": "i", "sub": "s", "aud": "a", "exp": 5});
        let c: Claims = serde_json::from_value(minimal).unwrap();
        assert_eq!((c.nbf, c.iat, c.jti.as_str()), (0, 0, ""));
        assert!(c.access.is_empty());
        for missing in ["iss", "sub", "aud", "exp"] {
            let mut v = serde_json::json!({"iss": "i", "sub": "s", "aud": "a", "exp": 5});
            v.as_object_mut().unwrap().remove(missing);
            assert!(
                serde_json::from_value::<Claims>(v).is_err(),
                "{missing} is required"
            );
        }
    }

    #[test]
    fn grants_match_type_name_and_action_exactly() {
        let c = claims();
        assert!(c.grants("apps/web", PUSH));
        assert!(c.grants("base/debian", PULL));
        assert!(!c.grants("base/debian", PUSH));
        assert!(!c.grants("apps/web2", PULL));
        assert!(!c.grants("apps", PULL));
        let other = Access {
            kind: "registry".into(),
            name: "apps/web".into(),
            actions: vec![PULL.into()],
        };
        assert!(!other.grants("apps/web", PULL));
    }
}
