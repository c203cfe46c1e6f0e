//! Router configuration wire types (docs/design.md §6), shared by the router and the manager.
//!
//! The ZooKeeper tree `router/<internal|external>/{ports,tries,rules,pools}/<name>` holds one JSON document
//! per node, each with a schema `version` field:
//!
//! - [`Port`] `{port, trie, tls}`: a listener that routes into a trie.
//! - [`Trie`] `{rules: [..]}`: rule names, tried in order; the first match wins.
//! - [`Rule`] `{type, value, pool | next}`: a matcher ([`rule::Matcher`]) and where a match goes.
//! - [`Pool`] `{healthz_every_ms, ..}`: balancing settings; its backends are child nodes named `host:port`
//!   ([`Backend`]), whose data may be empty or JSON.
//!
//! Every document is checked by [`parse_port`], [`parse_trie`], [`parse_rule`] and [`parse_pool`], so the
//! manager refuses what a router could not use, with the same message the router would log.

pub mod ack;
pub mod rule;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use ack::{DrainingBackend, RouterAck};
pub use rule::{Matcher, RequestView, RuleError, RuleType};

/// The schema version this code writes and the newest it understands.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest name of a port, trie, rule or pool node.
pub const MAX_NAME_LEN: usize = 128;
/// Most rules in one trie.
pub const MAX_TRIE_RULES: usize = 100_000;
/// Largest JSON document accepted for one node.
pub const MAX_DOC_BYTES: usize = 1 << 20;

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// A listener: requests arriving on `port` are routed through `trie`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Schema version of this document.
    #[serde(default = "schema_version")]
    pub version: u32,
    /// The TCP port to listen on (1-65535).
    pub port: u16,
    /// The trie requests start in.
    pub trie: String,
    /// Serve TLS on this port (certificates chosen by SNI from the router's own config).
    #[serde(default)]
    pub tls: bool,
}

/// An ordered list of rule names; the first rule that matches decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trie {
    /// Schema version of this document.
    #[serde(default = "schema_version")]
    pub version: u32,
    /// Rule names, in evaluation order.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// A matcher and its target: a pool, or another trie to continue in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Schema version of this document.
    #[serde(default = "schema_version")]
    pub version: u32,
    /// The matcher type.
    #[serde(rename = "type")]
    pub kind: RuleType,
    /// The matcher's argument; its syntax depends on `type` (see [`rule::Matcher::parse`]).
    pub value: String,
    /// On a match, send the request to this pool...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// ...or continue in this trie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Where a matching rule sends a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A pool of backends.
    Pool(String),
    /// Another trie.
    Trie(String),
}

impl Rule {
    /// The rule's target (valid once [`parse_rule`] accepted the rule).
    pub fn target(&self) -> Target {
        match (&self.pool, &self.next) {
            (Some(p), _) => Target::Pool(p.clone()),
            (None, Some(t)) => Target::Trie(t.clone()),
            (None, None) => Target::Pool(String::new()),
        }
    }
}

/// Backend health as reported by `GET /healthz` (`Server-Status` header), best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Healthy.
    Ok,
    /// Working, but worse than its peers; used when no OK backend is left.
    Degraded,
    /// Failing (or unreachable); used only if the pool accepts CRITICAL.
    Critical,
    /// Taken out on purpose; never used.
    Maintenance,
    /// Not checked yet, or an unparsable answer; never used.
    Unknown,
}

impl Health {
    /// The `Server-Status` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Degraded => "DEGRADED",
            Health::Critical => "CRITICAL",
            Health::Maintenance => "MAINTENANCE",
            Health::Unknown => "UNKNOWN",
        }
    }

    /// Parses a `Server-Status` header value (case-insensitive, surrounding spaces ignored).
    pub fn from_header(v: &str) -> Option<Health> {
        let v = v.trim();
        [
            Health::Ok,
            Health::Degraded,
            Health::Critical,
            Health::Maintenance,
        ]
        .into_iter()
        .find(|h| v.eq_ignore_ascii_case(h.as_str()))
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn d_every() -> u64 {
    5_000
}
fn d_hc_timeout() -> u64 {
    2_000
}
fn d_request_timeout() -> u64 {
    120_000
}
fn d_connect_timeout() -> u64 {
    2_000
}
fn d_slow_start() -> u64 {
    30_000
}
fn d_accept() -> Health {
    Health::Degraded
}
fn d_healthz_path() -> String {
    "/healthz".into()
}
fn d_retries() -> u32 {
    2
}
fn d_keepalive() -> u64 {
    4_000
}

/// How the router speaks to a pool's backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (gRPC servers): one multiplexed connection per
    /// backend, trailers passed through. Upgrade requests (WebSocket) still use HTTP/1.1.
    H2c,
}

/// Balancing and health settings of a pool. Backends are the pool node's children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Schema version of this document.
    #[serde(default = "schema_version")]
    pub version: u32,
    /// Health check period in milliseconds; 0 turns checks off (backends are then taken as OK).
    #[serde(default = "d_every")]
    pub healthz_every_ms: u64,
    /// Health check timeout in milliseconds.
    #[serde(default = "d_hc_timeout")]
    pub healthz_timeout_ms: u64,
    /// Health check path.
    #[serde(default = "d_healthz_path")]
    pub healthz_path: String,
    /// Check health with the gRPC health protocol (`grpc.health.v1.Health/Check` for the whole server)
    /// instead of `GET healthz_path`; needs `protocol: h2c`.
    #[serde(default)]
    pub healthz_grpc: bool,
    /// Time allowed for a backend to answer with response headers, in milliseconds (then 504).
    #[serde(default = "d_request_timeout")]
    pub request_timeout_ms: u64,
    /// Time allowed to open a TCP connection to a backend, in milliseconds.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// The worst health that still receives traffic (OK, DEGRADED or CRITICAL).
    #[serde(default = "d_accept")]
    pub accept: Health,
    /// Ramp-up time for a backend that just became usable, in milliseconds (0: none).
    #[serde(default = "d_slow_start")]
    pub slow_start_ms: u64,
    /// How many other backends to try after a refused connection.
    #[serde(default = "d_retries")]
    pub retries: u32,
    /// How long an idle backend connection may be reused, in milliseconds (0: no reuse). Keep it below
    /// the backends' own keep-alive timeout (Node.js: 5 s); requests that must not be sent twice reuse
    /// only connections idle for less than half of it.
    #[serde(default = "d_keepalive")]
    pub keepalive_ms: u64,
    /// The protocol spoken to the backends (health checks included).
    #[serde(default)]
    pub protocol: Protocol,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            version: SCHEMA_VERSION,
            healthz_every_ms: d_every(),
            healthz_timeout_ms: d_hc_timeout(),
            healthz_path: d_healthz_path(),
            healthz_grpc: false,
            request_timeout_ms: d_request_timeout(),
            connect_timeout_ms: d_connect_timeout(),
            accept: d_accept(),
            slow_start_ms: d_slow_start(),
            retries: d_retries(),
            keepalive_ms: d_keepalive(),
            protocol: Protocol::Http1,
        }
    }
}

/// A backend address, the name of a pool's child node: `host:port`, where host is an IPv4 address, a
/// bracketed IPv6 address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Host part (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Backend {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Backend, ConfigError> {
        let bad = |why: &str| ConfigError::Invalid {
            what: "backend",
            name: s.to_owned(),
            reason: why.to_owned(),
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| bad("expected [ipv6]:port"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("invalid IPv6 address"))?;
            (h, p)
        } else {
            s.rsplit_once(':')
                .ok_or_else(|| bad("expected host:port"))?
        };
        if !s.starts_with('[') {
            rule::check_hostname(host).map_err(|e| bad(&e))?;
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port must be a number 1-65535"))?;
        if port == 0 {
            return Err(bad("port must be a number 1-65535"));
        }
        let b = Backend {
            host: host.to_ascii_lowercase(),
            port,
        };
        // One spelling per address (no `+80`, `080` or upper case), so two nodes cannot name the same
        // backend.
        if b.to_string() != s {
            return Err(bad(&format!("write it as {b}")));
        }
        Ok(b)
    }
}

/// Why a router configuration document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid JSON for its section.
    #[error("invalid {what} {name:?}: {reason}")]
    Invalid {
        /// "port", "trie", "rule", "pool" or "backend".
        what: &'static str,
        /// The node name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(what: &'static str, name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        what,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Checks the name of a port, trie, rule or pool node: 1-128 characters of `A-Za-z0-9._-`, not starting
/// with `.` (so `app.env` and `app-sha-env` are fine, and a name can never be a path).
pub fn check_name(what: &'static str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            what,
            name,
            format!("name must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if name.starts_with('.') {
        return Err(invalid(what, name, "name must not start with '.'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            what,
            name,
            format!("name may contain only A-Z, a-z, 0-9, '.', '_' and '-', found {c:?}"),
        ));
    }
    Ok(())
}

fn parse_doc<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    name: &str,
    data: &[u8],
) -> Result<T, ConfigError> {
    check_name(what, name)?;
    if data.len() > MAX_DOC_BYTES {
        return Err(invalid(
            what,
            name,
            format!("document is larger than {MAX_DOC_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(data).map_err(|e| invalid(what, name, e.to_string()))
}

fn check_version(what: &'static str, name: &str, v: u32) -> Result<(), ConfigError> {
    if v == 0 || v > SCHEMA_VERSION {
        return Err(invalid(
            what,
            name,
            format!("unsupported schema version {v} (this build reads 1 to {SCHEMA_VERSION})"),
        ));
    }
    Ok(())
}

/// Parses and checks a port document.
pub fn parse_port(name: &str, data: &[u8]) -> Result<Port, ConfigError> {
    let p: Port = parse_doc("port", name, data)?;
    validate_port(name, &p)?;
    Ok(p)
}

/// Checks a port document.
pub fn validate_port(name: &str, p: &Port) -> Result<(), ConfigError> {
    check_version("port", name, p.version)?;
    if p.port == 0 {
        return Err(invalid("port", name, "port must be 1-65535"));
    }
    check_name("trie", &p.trie)
        .map_err(|e| invalid("port", name, format!("bad trie reference: {e}")))
}

/// Parses and checks a trie document.
pub fn parse_trie(name: &str, data: &[u8]) -> Result<Trie, ConfigError> {
    let t: Trie = parse_doc("trie", name, data)?;
    validate_trie(name, &t)?;
    Ok(t)
}

/// Checks a trie document.
pub fn validate_trie(name: &str, t: &Trie) -> Result<(), ConfigError> {
    check_version("trie", name, t.version)?;
    if t.rules.len() > MAX_TRIE_RULES {
        return Err(invalid(
            "trie",
            name,
            format!("more than {MAX_TRIE_RULES} rules"),
        ));
    }
    for r in &t.rules {
        check_name("rule", r)
            .map_err(|e| invalid("trie", name, format!("bad rule reference: {e}")))?;
    }
    Ok(())
}

/// Parses and checks a rule document, returning it with its compiled matcher.
pub fn parse_rule(name: &str, data: &[u8]) -> Result<(Rule, Matcher), ConfigError> {
    let r: Rule = parse_doc("rule", name, data)?;
    let m = validate_rule(name, &r)?;
    Ok((r, m))
}

/// Checks a rule document and compiles its matcher.
pub fn validate_rule(name: &str, r: &Rule) -> Result<Matcher, ConfigError> {
    check_version("rule", name, r.version)?;
    match (&r.pool, &r.next) {
        (Some(p), None) => check_name("pool", p)
            .map_err(|e| invalid("rule", name, format!("bad pool reference: {e}")))?,
        (None, Some(t)) => check_name("trie", t)
            .map_err(|e| invalid("rule", name, format!("bad trie reference: {e}")))?,
        _ => {
            return Err(invalid(
                "rule",
                name,
                "exactly one of `pool` and `next` must be set",
            ));
        }
    }
    Matcher::parse(r.kind, &r.value).map_err(|e| invalid("rule", name, e.to_string()))
}

/// Parses and checks a pool document.
pub fn parse_pool(name: &str, data: &[u8]) -> Result<Pool, ConfigError> {
    let p: Pool = parse_doc("pool", name, data)?;
    validate_pool(name, &p)?;
    Ok(p)
}

/// Checks a pool document.
pub fn validate_pool(name: &str, p: &Pool) -> Result<(), ConfigError> {
    check_version("pool", name, p.version)?;
    const DAY: u64 = 86_400_000;
    for (field, v, min) in [
        ("healthz_timeout_ms", p.healthz_timeout_ms, 1),
        ("request_timeout_ms", p.request_timeout_ms, 1),
        ("connect_timeout_ms", p.connect_timeout_ms, 1),
        ("healthz_every_ms", p.healthz_every_ms, 0),
        ("slow_start_ms", p.slow_start_ms, 0),
    ] {
        if v < min || v > DAY {
            return Err(invalid(
                "pool",
                name,
                format!("{field} must be between {min} and {DAY}"),
            ));
        }
    }
    if p.keepalive_ms > 3_600_000 {
        return Err(invalid(
            "pool",
            name,
            "keepalive_ms must be between 0 and 3600000",
        ));
    }
    if p.healthz_grpc && p.protocol != Protocol::H2c {
        return Err(invalid(
            "pool",
            name,
            "healthz_grpc needs protocol h2c (gRPC is HTTP/2)",
        ));
    }
    if p.healthz_every_ms != 0 && p.healthz_every_ms < 100 {
        return Err(invalid(
            "pool",
            name,
            "healthz_every_ms must be 0 (off) or at least 100",
        ));
    }
    if !matches!(p.accept, Health::Ok | Health::Degraded | Health::Critical) {
        return Err(invalid(
            "pool",
            name,
            "accept must be OK, DEGRADED or CRITICAL",
        ));
    }
    if !p.healthz_path.starts_with('/')
        || p.healthz_path.len() > 1024
        || p.healthz_path.bytes().any(|b| b <= b' ' || b >= 0x7f)
    {
        return Err(invalid(
            "pool",
            name,
            "healthz_path must be an absolute path of printable characters",
        ));
    }
    if p.retries > 16 {
        return Err(invalid("pool", name, "retries must be at most 16"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
