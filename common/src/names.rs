//! Validated names: every identifier of docs/design.md §2 as a newtype.
//!
//! A value of these types is valid by construction: the only ways in are `FromStr`, `TryFrom<String>` and
//! serde, and all three run the same check. Invalid input is rejected with a message that says what was
//! expected; nothing is ever sanitised into something the user did not type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    /// What kind of name it was meant to be ("app name", "sha", ...).
    pub kind: &'static str,
    /// The input, as given.
    pub value: String,
    /// What was wrong with it.
    pub reason: String,
}

impl NameError {
    fn new(kind: &'static str, value: &str, reason: impl Into<String>) -> Self {
        NameError {
            kind,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Checks `s` against `[a-z][a-z0-9-]{0,max-1}` (a DNS-label-like name that starts with a letter).
fn check_label(
    kind: &'static str,
    s: &str,
    max: usize,
    first_letter: bool,
) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::new(kind, s, "must not be empty"));
    }
    if s.len() > max {
        return Err(NameError::new(
            kind,
            s,
            format!("must be at most {max} characters, got {}", s.len()),
        ));
    }
    let first = s.as_bytes()[0];
    if first_letter && !first.is_ascii_lowercase() {
        return Err(NameError::new(
            kind,
            s,
            "must start with a lowercase letter a-z",
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::new(
            kind,
            s,
            format!("may contain only a-z, 0-9 and '-', found {c:?}"),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this kind of name is called in error messages.
            pub const KIND: &'static str = $kind;

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(s)?;
                Ok($name(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(&s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// An application name: `[a-z][a-z0-9-]{0,62}`.
    AppName,
    "app name",
    |s| check_label(AppName::KIND, s, 63, true)
);

name_type!(
    /// An environment name: `[a-z][a-z0-9-]{0,31}`.
    EnvName,
    "env name",
    |s| check_label(EnvName::KIND, s, 32, true)
);

name_type!(
    /// A zone name: `[a-z0-9-]+` (at most 63 characters).
    ZoneName,
    "zone name",
    |s| check_label(ZoneName::KIND, s, 63, false)
);

name_type!(
    /// A region name: `[a-z0-9-]+` (at most 63 characters).
    RegionName,
    "region name",
    |s| check_label(RegionName::KIND, s, 63, false)
);

name_type!(
    /// A team: the common name of an LDAP group, `[a-z0-9][a-z0-9_.-]{0,63}`.
    TeamName,
    "team name",
    |s| {
        if s.is_empty() || s.len() > 64 {
            return Err(NameError::new(TeamName::KIND, s, "must be 1 to 64 characters"));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NameError::new(TeamName::KIND, s, "must start with a-z or 0-9"));
        }
        match s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))) {
            Some(c) => Err(NameError::new(TeamName::KIND, s, format!("may contain only a-z, 0-9, '-', '_' and '.', found {c:?}"))),
            None => Ok(()),
        }
    }
);

name_type!(
    /// A host name as supervisors and routers register it: `[a-z0-9][a-z0-9.-]{0,252}`.
    HostName,
    "host name",
    |s| {
        if s.is_empty() || s.len() > 253 {
            return Err(NameError::new(HostName::KIND, s, "must be 1 to 253 characters"));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NameError::new(HostName::KIND, s, "must start with a-z or 0-9"));
        }
        match s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))) {
            Some(c) => Err(NameError::new(HostName::KIND, s, format!("may contain only a-z, 0-9, '-' and '.', found {c:?}"))),
            None => Ok(()),
        }
    }
);

name_type!(
    /// A git commit: 7 to 40 lowercase hex digits.
    Sha,
    "sha",
    |s| {
        if !(7..=40).contains(&s.len()) {
            return Err(NameError::new(Sha::KIND, s, format!("must be 7 to 40 hex digits, got {}", s.len())));
        }
        match s.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            Some(c) => Err(NameError::new(Sha::KIND, s, format!("must be lowercase hex, found {c:?}"))),
            None => Ok(()),
        }
    }
);

impl Sha {
    /// The first seven digits, as used in container IDs.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

name_type!(
    /// A container ID: `<app>-<sha7>-<env>-<rand6>`, where rand6 is 6 characters of `[a-z0-9]`.
    ContainerId,
    "container id",
    |s| ContainerId::parse_parts(s).map(|_| ())
);

impl ContainerId {
    /// Builds the ID of a new container with a fresh random suffix.
    pub fn generate(app: &AppName, sha: &Sha, env: &EnvName) -> ContainerId {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let suffix: String = (0..6)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        ContainerId::with_suffix(app, sha, env, &suffix).expect("generated suffix is valid")
    }

    /// Builds an ID with a given 6-character suffix.
    pub fn with_suffix(
        app: &AppName,
        sha: &Sha,
        env: &EnvName,
        suffix: &str,
    ) -> Result<ContainerId, NameError> {
        format!("{app}-{}-{env}-{suffix}", sha.short()).parse()
    }

    /// Splits an ID into (app, sha7, env, suffix). App and env names may contain '-', so the sha7 is found
    /// by position: the app is everything before the first `-<7 hex>-` that leaves a valid env behind.
    /// That split is ambiguous when an app name itself contains `-<7 hex>-`, so code that needs the app or
    /// env of a container reads its labels, not its ID.
    fn parse_parts(s: &str) -> Result<(AppName, String, EnvName, String), NameError> {
        let err = |reason: &str| NameError::new(ContainerId::KIND, s, reason.to_owned());
        if s.len() > 63 + 1 + 7 + 1 + 32 + 1 + 6 {
            return Err(err("is too long"));
        }
        let (rest, suffix) = s
            .rsplit_once('-')
            .ok_or_else(|| err("must look like <app>-<sha7>-<env>-<rand6>"))?;
        if suffix.len() != 6
            || !suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(err("must end in 6 characters of a-z0-9"));
        }
        for (i, _) in rest.match_indices('-') {
            let app = &rest[..i];
            let tail = &rest[i + 1..];
            if tail.len() < 9 || tail.as_bytes()[7] != b'-' {
                continue;
            }
            let sha7 = &tail[..7];
            let env = &tail[8..];
            if sha7.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
                && let (Ok(app), Ok(env)) = (app.parse::<AppName>(), env.parse::<EnvName>())
            {
                return Ok((app, sha7.to_owned(), env, suffix.to_owned()));
            }
        }
        Err(err("must look like <app>-<sha7>-<env>-<rand6>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        for ok in [
            "a",
            "hello",
            "hello-world",
            "a1",
            &format!("a{}", "b".repeat(62)),
        ] {
            assert!(ok.parse::<AppName>().is_ok(), "{ok} should be accepted");
        }
        let cases = [
            ("", "must not be empty"),
            ("1abc", "must start with a lowercase letter"),
            ("-abc", "must start with a lowercase letter"),
            ("Hello", "must start with a lowercase letter"),
            ("hello_world", "found '_'"),
            ("hello.world", "found '.'"),
            ("héllo", "found 'é'"),
            ("../etc", "must start"),
        ];
        for (bad, msg) in cases {
            let e = bad.parse::<AppName>().unwrap_err();
            assert!(e.to_string().contains(msg), "{bad:?}: {e}");
            assert!(e.to_string().starts_with("invalid app name"), "{e}");
        }
        let long = format!("a{}", "b".repeat(63));
        assert!(
            long.parse::<AppName>()
                .unwrap_err()
                .to_string()
                .contains("at most 63")
        );
    }

    #[test]
    fn env_names() {
        assert!("prod".parse::<EnvName>().is_ok());
        assert!("staging-2".parse::<EnvName>().is_ok());
        assert!(format!("a{}", "b".repeat(31)).parse::<EnvName>().is_ok());
        assert!(format!("a{}", "b".repeat(32)).parse::<EnvName>().is_err());
        assert!("Prod".parse::<EnvName>().is_err());
        assert!("2prod".parse::<EnvName>().is_err());
    }

    #[test]
    fn zones_regions_teams_hosts() {
        assert!("us-east-1a".parse::<ZoneName>().is_ok());
        assert!("1a".parse::<ZoneName>().is_ok());
        assert!("US".parse::<ZoneName>().is_err());
        assert!("".parse::<RegionName>().is_err());
        assert!("eu_west".parse::<RegionName>().is_err());
        assert!("web.apps_2".parse::<TeamName>().is_ok());
        assert!("Web".parse::<TeamName>().is_err());
        assert!("a/b".parse::<TeamName>().is_err());
        assert!("host-1.example.test".parse::<HostName>().is_ok());
        assert!("host:1".parse::<HostName>().is_err());
    }

    #[test]
    fn shas() {
        assert!("1a2b3c4".parse::<Sha>().is_ok());
        assert!(
            "0123456789abcdef0123456789abcdef01234567"
                .parse::<Sha>()
                .is_ok()
        );
        assert!(
            "1a2b3c"
                .parse::<Sha>()
                .unwrap_err()
                .to_string()
                .contains("7 to 40")
        );
        assert!(
            "1A2B3C4"
                .parse::<Sha>()
                .unwrap_err()
                .to_string()
                .contains("lowercase hex")
        );
        assert!("1a2b3cz".parse::<Sha>().is_err());
        assert!("0".repeat(41).parse::<Sha>().is_err());
        assert_eq!("1a2b3c4d5e".parse::<Sha>().unwrap().short(), "1a2b3c4");
    }

    #[test]
    fn container_ids() {
        let app: AppName = "my-app".parse().unwrap();
        let sha: Sha = "1a2b3c4d5e6f".parse().unwrap();
        let env: EnvName = "prod-eu".parse().unwrap();
        let id = ContainerId::generate(&app, &sha, &env);
        assert!(id.as_str().starts_with("my-app-1a2b3c4-prod-eu-"), "{id}");
        let parsed: ContainerId = id.as_str().parse().unwrap();
        assert_eq!(parsed, id);
        // An app name that itself contains something shaped like a sha.
        assert!(
            "a-1234567-b-1234567-prod-abc123"
                .parse::<ContainerId>()
                .is_ok()
        );
        for bad in [
            "my-app-1a2b3c4-prod",
            "my-app-1a2b3c4-prod-ABC123",
            "my-app-xyz-prod-abc123",
            "-1a2b3c4-prod-abc123",
            "",
        ] {
            assert!(
                bad.parse::<ContainerId>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn serde_validates() {
        let ok: AppName = serde_json::from_str("\"hello\"").unwrap();
        assert_eq!(ok.as_str(), "hello");
        let err = serde_json::from_str::<AppName>("\"Hello\"").unwrap_err();
        assert!(err.to_string().contains("invalid app name"), "{err}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"hello\"");
    }

    proptest::proptest! {
        #[test]
        fn app_name_parse_never_panics_and_roundtrips(s in "\\PC{0,80}") {
            if let Ok(n) = s.parse::<AppName>() {
                proptest::prop_assert_eq!(n.as_str(), s.as_str());
                proptest::prop_assert!(n.as_str().len() <= 63);
            }
        }

        #[test]
        fn valid_container_ids_roundtrip(app in "[a-z][a-z0-9-]{0,20}", env in "[a-z][a-z0-9-]{0,10}", sha in "[0-9a-f]{7,40}", suf in "[a-z0-9]{6}") {
            let (app, env, sha): (AppName, EnvName, Sha) = (app.parse().unwrap(), env.parse().unwrap(), sha.parse().unwrap());
            let id = ContainerId::with_suffix(&app, &sha, &env, &suf).unwrap();
            let back: ContainerId = id.as_str().parse().unwrap();
            proptest::prop_assert_eq!(back.as_str(), id.as_str());
        }

        #[test]
        fn container_id_parse_never_panics(s in "\\PC{0,120}") {
            let _ = s.parse::<ContainerId>();
        }
    }
}
