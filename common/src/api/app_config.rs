//! The app config, `atlantis.toml`: what an app directory declares about itself.
//!
//! The builder reads it from the app's root, checks it, and stores its canonical form (all defaults
//! filled in, see [`AppConfig::to_toml`]) in the image label [`LABEL_CONFIG`], so the manager reads the
//! same type back from the image when it deploys. Each field is checked while it is parsed, so an error
//! names the line and the field; unknown fields are refused.
//!
//! ```toml
//! name = "hello"
//! template = "busybox"
//! run = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/app/www"]
//! port = 8080
//! health_path = "/healthz"
//! instances = 2
//! cpu_millis = 250
//! memory_mb = 64
//! dependencies = ["db"]
//!
//! [env]
//! GREETING = "hello"
//! ```
//!
//! The `debian` template also takes `[build]` ([`BuildSteps`]): `packages`, `commands`, `network` and
//! `timeout_secs`; other templates refuse it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::AppName;

/// The file name the builder looks for in the app root.
pub const FILE_NAME: &str = "atlantis.toml";
/// The image label holding the canonical app config (TOML).
pub const LABEL_CONFIG: &str = "atlantis.toml";
/// The image label holding the commit the image was built from.
pub const LABEL_SHA: &str = "atlantis.sha";
/// The image label holding the app name.
pub const LABEL_APP: &str = "atlantis.app";
/// The largest `atlantis.toml` accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// At most this many `run` arguments, each at most [`MAX_ARG_BYTES`] (as the supervisor accepts).
pub const MAX_ARGS: usize = super::supervisor::MAX_ARGS;
/// At most this many bytes per `run` argument.
pub const MAX_ARG_BYTES: usize = super::supervisor::MAX_ARG_BYTES;
/// At most this many instances per zone.
pub const MAX_INSTANCES: u32 = 100;

/// An app's `atlantis.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app's name (`[a-z][a-z0-9-]{0,62}`); must match the name the image is pushed under.
    pub name: AppName,
    /// The base the image is built on.
    pub template: Template,
    /// The command the container runs (argv, no shell), for example `["/app/server", "--port", "8080"]`.
    pub run: Command,
    /// The TCP port the app serves HTTP on.
    #[serde(default)]
    pub port: Port,
    /// The health check path: `GET` must answer 200 (or a `Server-Status: OK|DEGRADED` header).
    #[serde(default)]
    pub health_path: HealthPath,
    /// Instances per zone.
    #[serde(default)]
    pub instances: Instances,
    /// CPU limit in thousandths of a core.
    #[serde(default)]
    pub cpu_millis: CpuMillis,
    /// Memory limit in MiB.
    #[serde(default)]
    pub memory_mb: MemoryMb,
    /// Apps this app calls; the firewall lets it reach only these.
    #[serde(default)]
    pub dependencies: Dependencies,
    /// Environment variables set in the image.
    #[serde(default)]
    pub env: EnvVars,
    /// Build steps (the `debian` template only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSteps>,
}

/// `[build]`: what the `debian` template installs and runs before the app's files become a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSteps {
    /// Debian packages added to the base root (installed by debootstrap).
    #[serde(default)]
    pub packages: Packages,
    /// Commands run in order inside the root, in `/app`, each an argument list.
    #[serde(default)]
    pub commands: Commands,
    /// Whether the commands may use the network (default: no network at all).
    #[serde(default)]
    pub network: bool,
    /// Time limit for all the commands together, in seconds.
    #[serde(default)]
    pub timeout_secs: TimeoutSecs,
}

/// Why an `atlantis.toml` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AppConfigError {
    /// 1-based line of the fault, when it has one.
    pub line: Option<usize>,
    /// The field at fault (`port`, `env.FOO`, ...), when there is one.
    pub field: Option<String>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for AppConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FILE_NAME)?;
        if let Some(l) = self.line {
            write!(f, " line {l}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl AppConfig {
    /// Parses and checks the text of an `atlantis.toml`.
    pub fn parse(text: &str) -> Result<AppConfig, AppConfigError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(AppConfigError {
                line: None,
                field: None,
                message: format!(
                    "is {} bytes, at most {MAX_FILE_BYTES} are accepted",
                    text.len()
                ),
            });
        }
        let cfg: AppConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        if cfg.build.is_some() && cfg.template != Template::Debian {
            let line = text
                .lines()
                .position(|l| l.trim() == "[build]" || l.trim_start().starts_with("build"))
                .map(|i| i + 1);
            return Err(AppConfigError {
                line,
                field: Some("build".into()),
                message: format!(
                    "build steps run only with template = \"debian\", not {:?}",
                    cfg.template.as_str()
                ),
            });
        }
        Ok(cfg)
    }

    /// The canonical form: every field, defaults filled in, in a fixed order. The builder stores this in
    /// the image label [`LABEL_CONFIG`], so the same config always gives the same bytes.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("an app config always serialises")
    }
}

/// Turns a TOML error into one that names the line and the field.
fn toml_error(text: &str, e: &toml::de::Error) -> AppConfigError {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return AppConfigError {
            line: None,
            field: None,
            message,
        };
    };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let field = field_of(text, line_text, line, &message);
    // A check over a whole table (`[env]`) names the offending key first: point at its own line.
    if line_text.trim_start().starts_with('[')
        && let Some(key) = message.strip_prefix('"').and_then(|m| m.split('"').next())
        && let Some(offset) = text.lines().skip(line).position(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(&format!("\"{key}\""))
                .or_else(|| l.strip_prefix(key));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
    {
        return AppConfigError {
            line: Some(line + offset + 1),
            field: Some(format!("{}.{key}", field.unwrap_or_default())),
            message,
        };
    }
    AppConfigError {
        line: Some(line),
        field,
        message,
    }
}

/// The dotted name of the key on `line_text` (with its `[table]` prefix), or of a missing field.
fn field_of(text: &str, line_text: &str, line: usize, message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("missing field `") {
        return rest.split('`').next().map(str::to_owned);
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next()?.to_owned();
        return Some(match table_at(text, line) {
            Some(t) => format!("{t}.{name}"),
            None => name,
        });
    }
    let t = line_text.trim();
    if t.starts_with('[') {
        return Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    }
    let key = t.split('=').next()?.trim().trim_matches('"');
    if key.is_empty() {
        return None;
    }
    Some(match table_at(text, line) {
        Some(tbl) => format!("{tbl}.{key}"),
        None => key.to_owned(),
    })
}

/// The `[table]` a 1-based line belongs to.
fn table_at(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .filter_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && l.ends_with(']')).then(|| l.trim_matches(['[', ']']).trim())
        })
        .last()
        .map(str::to_owned)
}

/// The image templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// A ready binary and its files on an almost empty base (`/etc/passwd`, `/etc/group`, `/tmp`).
    Static,
    /// Debian's static busybox with a link per applet, plus the app's files: shell and httpd apps.
    Busybox,
    /// A minimal Debian root (debootstrap) plus the listed packages; `[build]` commands run in it.
    Debian,
}

impl Template {
    /// The template's name as written in `atlantis.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Static => "static",
            Template::Busybox => "busybox",
            Template::Debian => "debian",
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Defines a checked newtype that serialises as its inner value.
macro_rules! checked {
    ($(#[$doc:meta])* $name:ident($inner:ty, $lit:literal), default = $default:expr, check = $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = $lit, into = $lit)]
        pub struct $name(pub $inner);

        impl TryFrom<$inner> for $name {
            type Error = String;
            fn try_from(v: $inner) -> Result<Self, String> {
                let check: fn(&$inner) -> Result<(), String> = $check;
                check(&v)?;
                Ok($name(v))
            }
        }

        impl From<$name> for $inner {
            fn from(v: $name) -> $inner {
                v.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name($default)
            }
        }
    };
}

checked!(
    /// A TCP port, 1 to 65535.
    Port(u16, "u16"), default = 8080, check = |p| if *p == 0 { Err("must be 1 to 65535".into()) } else { Ok(()) }
);

checked!(
    /// The health check path.
    HealthPath(String, "String"), default = "/healthz".into(), check = |p| {
        if !p.starts_with('/') || p.len() > 256 || p.chars().any(|c| c.is_control() || c == ' ') {
            Err(format!("{p:?} must start with '/', be at most 256 characters, without spaces or control characters"))
        } else {
            Ok(())
        }
    }
);

checked!(
    /// Instances per zone, 1 to [`MAX_INSTANCES`].
    Instances(u32, "u32"), default = 1, check = |n| if (1..=MAX_INSTANCES).contains(n) {
        Ok(())
    } else {
        Err(format!("must be 1 to {MAX_INSTANCES}, got {n}"))
    }
);

checked!(
    /// CPU in thousandths of a core, 1 to 1024000.
    CpuMillis(u32, "u32"), default = 250, check = |n| if (1..=1_024_000).contains(n) {
        Ok(())
    } else {
        Err(format!("must be 1 to 1024000 (thousandths of a core), got {n}"))
    }
);

checked!(
    /// Memory in MiB, 4 to 4194304.
    MemoryMb(u64, "u64"), default = 128, check = |n| if (super::supervisor::MIN_MEMORY_MB..=4 * 1024 * 1024).contains(n) {
        Ok(())
    } else {
        Err(format!("must be {} to 4194304 MiB, got {n}", super::supervisor::MIN_MEMORY_MB))
    }
);

checked!(
    /// The command: 1 to [`MAX_ARGS`] arguments, each at most [`MAX_ARG_BYTES`] bytes without NUL.
    Command(Vec<String>, "Vec<String>"), default = Vec::new(), check = |args| {
        if args.is_empty() || args.len() > MAX_ARGS {
            return Err(format!("must have 1 to {MAX_ARGS} arguments, got {}", args.len()));
        }
        if args[0].is_empty() {
            return Err("the program (first argument) must not be empty".into());
        }
        if let Some(i) = args.iter().position(|a| a.len() > MAX_ARG_BYTES || a.contains('\0')) {
            return Err(format!("argument {i} must be at most {MAX_ARG_BYTES} bytes without NUL"));
        }
        Ok(())
    }
);

checked!(
    /// Dependencies: distinct app names, at most [`super::supervisor::MAX_DEPENDENCIES`].
    Dependencies(Vec<AppName>, "Vec<AppName>"), default = Vec::new(), check = |deps| {
        let max = super::supervisor::MAX_DEPENDENCIES;
        if deps.len() > max {
            return Err(format!("at most {max} dependencies, got {}", deps.len()));
        }
        if let Some((i, d)) = deps.iter().enumerate().find(|(i, d)| deps[..*i].contains(d)) {
            return Err(format!("{d:?} is listed twice (entry {i})"));
        }
        Ok(())
    }
);

checked!(
    /// Environment variables: names `[A-Za-z_][A-Za-z0-9_]{0,127}` not starting with `ATLANTIS_`,
    /// values at most 32 KiB without NUL, at most 256 of them.
    EnvVars(BTreeMap<String, String>, "BTreeMap<String, String>"), default = BTreeMap::new(), check = |vars| {
        use super::supervisor::{MAX_ENV_VALUE, MAX_ENV_VARS};
        if vars.len() > MAX_ENV_VARS {
            return Err(format!("at most {MAX_ENV_VARS} variables, got {}", vars.len()));
        }
        for (k, v) in vars {
            let mut chars = k.chars();
            let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || k.len() > 128 {
                return Err(format!("{k:?}: names must match [A-Za-z_][A-Za-z0-9_]{{0,127}}"));
            }
            if k.starts_with("ATLANTIS_") {
                return Err(format!("{k:?}: names starting with ATLANTIS_ are reserved for Atlantis"));
            }
            if v.len() > MAX_ENV_VALUE || v.contains('\0') {
                return Err(format!("{k:?}: values must be at most {MAX_ENV_VALUE} bytes without NUL"));
            }
        }
        Ok(())
    }
);

checked!(
    /// Debian package names (`[a-z0-9][a-z0-9+.-]+`), at most 64, no duplicates.
    Packages(Vec<String>, "Vec<String>"), default = Vec::new(), check = |pkgs| {
        if pkgs.len() > 64 {
            return Err(format!("at most 64 packages, got {}", pkgs.len()));
        }
        for (i, p) in pkgs.iter().enumerate() {
            let ok = p.len() >= 2
                && p.len() <= 100
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'));
            if !ok {
                return Err(format!("{p:?} is not a Debian package name ([a-z0-9][a-z0-9+.-]+)"));
            }
            if pkgs[..i].contains(p) {
                return Err(format!("{p:?} is listed twice"));
            }
        }
        Ok(())
    }
);

checked!(
    /// Build commands: at most 32, each 1 to [`MAX_ARGS`] arguments of at most [`MAX_ARG_BYTES`].
    Commands(Vec<Vec<String>>, "Vec<Vec<String>>"), default = Vec::new(), check = |cmds| {
        if cmds.len() > 32 {
            return Err(format!("at most 32 commands, got {}", cmds.len()));
        }
        for (i, c) in cmds.iter().enumerate() {
            if c.is_empty() || c.len() > MAX_ARGS || c[0].is_empty() {
                return Err(format!("command {i} must have 1 to {MAX_ARGS} arguments and a program"));
            }
            if c.iter().any(|a| a.len() > MAX_ARG_BYTES || a.contains('\0')) {
                return Err(format!("command {i}: arguments must be at most {MAX_ARG_BYTES} bytes without NUL"));
            }
        }
        Ok(())
    }
);

checked!(
    /// The build time limit in seconds, 1 to 3600.
    TimeoutSecs(u64, "u64"), default = 600, check = |n| if (1..=3600).contains(n) {
        Ok(())
    } else {
        Err(format!("must be 1 to 3600 seconds, got {n}"))
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "hello"
template = "busybox"
run = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/app/www"]
port = 8080
health_path = "/healthz"
instances = 2
cpu_millis = 500
memory_mb = 64
dependencies = ["db", "cache"]

[env]
GREETING = "hi"
"#;

    #[test]
    fn a_full_config_parses_and_round_trips() {
        let c = AppConfig::parse(GOOD).unwrap();
        assert_eq!(c.name.as_str(), "hello");
        assert_eq!(c.template, Template::Busybox);
        assert_eq!(c.run.0[0], "/bin/busybox");
        assert_eq!(c.port.0, 8080);
        assert_eq!(c.instances.0, 2);
        assert_eq!(c.cpu_millis.0, 500);
        assert_eq!(c.memory_mb.0, 64);
        assert_eq!(c.dependencies.0.len(), 2);
        assert_eq!(c.env.0["GREETING"], "hi");
        let canon = c.to_toml();
        assert_eq!(AppConfig::parse(&canon).unwrap(), c);
        assert_eq!(AppConfig::parse(&canon).unwrap().to_toml(), canon);
    }

    #[test]
    fn defaults_fill_in() {
        let c =
            AppConfig::parse("name = \"a\"\ntemplate = \"static\"\nrun = [\"/app/a\"]\n").unwrap();
        assert_eq!(c.port.0, 8080);
        assert_eq!(c.health_path.0, "/healthz");
        assert_eq!(c.instances.0, 1);
        assert_eq!(c.cpu_millis.0, 250);
        assert_eq!(c.memory_mb.0, 128);
        assert!(c.env.0.is_empty() && c.dependencies.0.is_empty());
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let base = "name = \"a\"\ntemplate = \"static\"\nrun = [\"/app/a\"]\n";
        let cases: Vec<(String, Option<usize>, &str, &str)> = vec![
            (format!("{base}port = 0\n"), Some(4), "port", "1 to 65535"),
            (
                format!("{base}prot = 80\n"),
                Some(4),
                "prot",
                "unknown field",
            ),
            (
                format!("{base}memory_mb = 1\n"),
                Some(4),
                "memory_mb",
                "4 to",
            ),
            (
                format!("{base}instances = 0\n"),
                Some(4),
                "instances",
                "1 to 100",
            ),
            (
                format!("{base}health_path = \"healthz\"\n"),
                Some(4),
                "health_path",
                "start with '/'",
            ),
            (
                format!("{base}dependencies = [\"db\", \"db\"]\n"),
                Some(4),
                "dependencies",
                "twice",
            ),
            (
                format!("{base}[env]\nATLANTIS_X = \"1\"\n"),
                Some(5),
                "env",
                "reserved",
            ),
            (
                format!("{base}[env]\n\"A-B\" = \"1\"\n"),
                Some(5),
                "env",
                "names must match",
            ),
            (format!("{base}[env]\nX = 1\n"), Some(5), "env.X", "string"),
            (
                format!("{base}[build]\nx = 1\n"),
                Some(5),
                "build.x",
                "unknown field",
            ),
            (
                "name = \"a\"\ntemplate = \"ruby\"\nrun = [\"/a\"]\n".into(),
                Some(2),
                "template",
                "unknown variant",
            ),
            (
                "name = \"A\"\ntemplate = \"static\"\nrun = [\"/a\"]\n".into(),
                Some(1),
                "name",
                "invalid app name",
            ),
            (
                "name = \"a\"\ntemplate = \"static\"\nrun = []\n".into(),
                Some(3),
                "run",
                "1 to 64",
            ),
            (
                "name = \"a\"\ntemplate = \"static\"\n".into(),
                None,
                "run",
                "missing field",
            ),
            (format!("{base}port = \"8080\n"), Some(4), "port", ""),
        ];
        for (text, line, field, msg) in cases {
            let e = AppConfig::parse(&text).unwrap_err();
            if line.is_some() {
                assert_eq!(e.line, line, "{text}: {e}");
            }
            assert!(
                e.field.as_deref().is_some_and(|f| f.starts_with(field)),
                "{text}: wanted field {field}: {e:?}"
            );
            assert!(e.message.contains(msg), "{text}: wanted {msg:?}: {e}");
            assert!(e.to_string().starts_with("atlantis.toml"), "{e}");
        }
    }

    #[test]
    fn build_steps_belong_to_the_debian_template() {
        let text = "name = \"a\"\ntemplate = \"debian\"\nrun = [\"/app/a\"]\n[build]\npackages = [\"busybox\", \"python3\"]\ncommands = [[\"sh\", \"-c\", \"make\"]]\ntimeout_secs = 60\n";
        let c = AppConfig::parse(text).unwrap();
        let b = c.build.clone().unwrap();
        assert_eq!(b.packages.0, ["busybox", "python3"]);
        assert_eq!(b.commands.0[0][2], "make");
        assert!(!b.network);
        assert_eq!(b.timeout_secs.0, 60);
        assert_eq!(AppConfig::parse(&c.to_toml()).unwrap(), c);
        let e = AppConfig::parse(&text.replace("debian", "busybox")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(4), Some("build")),
            "{e}"
        );
        for (bad, field) in [
            ("packages = [\"Bad_Name\"]", "build.packages"),
            ("commands = [[]]", "build.commands"),
            ("timeout_secs = 0", "build.timeout_secs"),
            ("network = \"yes\"", "build.network"),
            ("shell = \"make\"", "build.shell"),
        ] {
            let t =
                format!("name = \"a\"\ntemplate = \"debian\"\nrun = [\"/a\"]\n[build]\n{bad}\n");
            let e = AppConfig::parse(&t).unwrap_err();
            assert_eq!(e.line, Some(5), "{bad}: {e}");
            assert_eq!(e.field.as_deref(), Some(field), "{bad}: {e}");
        }
    }

    #[test]
    fn oversize_is_refused() {
        let text = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
        assert!(
            AppConfig::parse(&text)
                .unwrap_err()
                .message
                .contains("at most")
        );
    }
}
