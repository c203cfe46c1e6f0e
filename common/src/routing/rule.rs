//! Rule matchers: the syntax of each rule type's `value`, its parser, and how a matcher tests a request.
//!
//! | type | value | matches when |
//! |---|---|---|
//! | `static` | `true` / `false` | always / never |
//! | `percent` | `0`-`100`, up to 2 decimals | a random draw falls under the share (canary) |
//! | `host` | `a.example.com[,b.example.com...]` | the request host (port ignored, case-insensitive) is one of them |
//! | `multi-host` | `name:suffix1,suffix2` | the host is `name.suffix1` or `name.suffix2` |
//! | `header` | `Name:value` | a `Name` header has exactly `value` |
//! | `path-prefix` | `/api/` | the path starts with it |
//! | `path-suffix` | `.json` | the path ends with it |
//! | `path-regexp` | a regex | the regex finds a match in the path |
//! | `query-param-value` | `name=value` (or `name:value`) | a query parameter `name` (decoded) equals `value` |
//! | `query-regexp` | a regex | the regex finds a match in the raw query string |
//!
//! Values are refused at write time when they cannot be parsed; a router never guesses.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest rule value.
pub const MAX_VALUE_LEN: usize = 4096;
/// Compiled size limit of a rule regex: 256 KiB, so that thousands of regex rules stay within memory
/// (Unicode classes are large: `\w{0,20}` needs about 1 MiB; `(?-u:\w){0,20}` or `[a-z0-9_]{0,20}` far
/// less).
pub const MAX_REGEX_BYTES: usize = 256 << 10;

/// The matcher type of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleType {
    /// `true` or `false`.
    Static,
    /// A share of requests, in percent.
    Percent,
    /// One host or a comma-separated list of hosts.
    Host,
    /// `name:suffix1,suffix2`: the name under each suffix.
    MultiHost,
    /// `Header-Name:value`.
    Header,
    /// A path prefix.
    PathPrefix,
    /// A path suffix.
    PathSuffix,
    /// A regex searched in the path.
    PathRegexp,
    /// `name=value` over decoded query parameters.
    #[serde(alias = "query-param")]
    QueryParamValue,
    /// A regex searched in the raw query string.
    #[serde(alias = "query-raw-regexp")]
    QueryRegexp,
}

impl RuleType {
    /// Every rule type.
    pub const ALL: [RuleType; 10] = [
        RuleType::Static,
        RuleType::Percent,
        RuleType::Host,
        RuleType::MultiHost,
        RuleType::Header,
        RuleType::PathPrefix,
        RuleType::PathSuffix,
        RuleType::PathRegexp,
        RuleType::QueryParamValue,
        RuleType::QueryRegexp,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleType::Static => "static",
            RuleType::Percent => "percent",
            RuleType::Host => "host",
            RuleType::MultiHost => "multi-host",
            RuleType::Header => "header",
            RuleType::PathPrefix => "path-prefix",
            RuleType::PathSuffix => "path-suffix",
            RuleType::PathRegexp => "path-regexp",
            RuleType::QueryParamValue => "query-param-value",
            RuleType::QueryRegexp => "query-regexp",
        }
    }
}

impl fmt::Display for RuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a rule value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} rule value {value:?}: {reason}")]
pub struct RuleError {
    /// The rule type.
    pub kind: RuleType,
    /// The value, as given (cut to 200 characters).
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// A compiled matcher.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Always or never.
    Static(bool),
    /// Matches when a draw in 0..10000 is below this (percent times 100).
    Percent(u32),
    /// Lower-case hosts without port.
    Host(Vec<String>),
    /// Lower-case header name and exact value.
    Header {
        /// Header name, lower case.
        name: String,
        /// Exact value.
        value: String,
    },
    /// Path prefix.
    PathPrefix(String),
    /// Path suffix.
    PathSuffix(String),
    /// Regex searched in the path.
    PathRegexp(regex::Regex),
    /// Decoded query parameter name and value.
    QueryParam {
        /// Parameter name.
        name: String,
        /// Parameter value.
        value: String,
    },
    /// Regex searched in the raw query.
    QueryRegexp(regex::Regex),
}

/// What a matcher needs to know about a request. The router implements it over its request type.
pub trait RequestView {
    /// The host, without port (any case).
    fn host(&self) -> &str;
    /// The path (raw, as sent).
    fn path(&self) -> &str;
    /// The raw query string, without `?`.
    fn query(&self) -> Option<&str>;
    /// Whether a header `name` (lower case) has a value equal to `value`.
    fn header_is(&self, name: &str, value: &str) -> bool;
    /// A uniform draw in 0..10000 (for `percent`).
    fn roll(&self) -> u32;
}

impl Matcher {
    /// Parses `value` as a rule of type `kind`.
    pub fn parse(kind: RuleType, value: &str) -> Result<Matcher, RuleError> {
        let err = |reason: &str| RuleError {
            kind,
            value: value.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        if value.len() > MAX_VALUE_LEN {
            return Err(err(&format!("longer than {MAX_VALUE_LEN} bytes")));
        }
        if value.chars().any(char::is_control) {
            return Err(err("contains a control character"));
        }
        Ok(match kind {
            RuleType::Static => match value.trim() {
                "true" => Matcher::Static(true),
                "false" => Matcher::Static(false),
                _ => return Err(err("must be true or false")),
            },
            RuleType::Percent => Matcher::Percent(parse_percent(value.trim()).map_err(&err)?),
            RuleType::Host => {
                let hosts: Result<Vec<String>, String> = value
                    .split(',')
                    .map(|h| {
                        let h = h.trim();
                        check_hostname(h).map(|()| h.to_ascii_lowercase())
                    })
                    .collect();
                Matcher::Host(hosts.map_err(|r| err(&r))?)
            }
            RuleType::MultiHost => {
                let (name, suffixes) = value
                    .split_once(':')
                    .ok_or_else(|| err("expected name:suffix1,suffix2"))?;
                let mut hosts = Vec::new();
                for s in suffixes.split(',') {
                    let h = format!("{}.{}", name.trim(), s.trim());
                    check_hostname(&h).map_err(|r| err(&r))?;
                    hosts.push(h.to_ascii_lowercase());
                }
                Matcher::Host(hosts)
            }
            RuleType::Header => {
                let (name, v) = value
                    .split_once(':')
                    .ok_or_else(|| err("expected Header-Name:value"))?;
                let name = name.trim();
                if name.is_empty() || !name.bytes().all(is_tchar) {
                    return Err(err("header name must be a non-empty HTTP token"));
                }
                Matcher::Header {
                    name: name.to_ascii_lowercase(),
                    value: v.trim().to_owned(),
                }
            }
            RuleType::PathPrefix | RuleType::PathSuffix => {
                if value.is_empty() || value.bytes().any(|b| b == b' ' || b == b'?' || b == b'#') {
                    return Err(err("must be non-empty, without spaces, '?' or '#'"));
                }
                if kind == RuleType::PathPrefix {
                    if !value.starts_with('/') {
                        return Err(err("a path prefix must start with '/'"));
                    }
                    Matcher::PathPrefix(value.to_owned())
                } else {
                    Matcher::PathSuffix(value.to_owned())
                }
            }
            RuleType::PathRegexp => Matcher::PathRegexp(compile(value).map_err(|r| err(&r))?),
            RuleType::QueryRegexp => Matcher::QueryRegexp(compile(value).map_err(|r| err(&r))?),
            RuleType::QueryParamValue => {
                let (name, v) = value
                    .split_once('=')
                    .or_else(|| value.split_once(':'))
                    .ok_or_else(|| err("expected name=value"))?;
                if name.is_empty() {
                    return Err(err("the parameter name must not be empty"));
                }
                Matcher::QueryParam {
                    name: name.to_owned(),
                    value: v.to_owned(),
                }
            }
        })
    }

    /// Whether the request matches.
    pub fn matches<R: RequestView + ?Sized>(&self, req: &R) -> bool {
        match self {
            Matcher::Static(b) => *b,
            Matcher::Percent(p) => *p >= 10_000 || (*p > 0 && req.roll() < *p),
            Matcher::Host(hosts) => {
                let h = req.host();
                let h = h.strip_suffix('.').unwrap_or(h);
                hosts.iter().any(|x| x.eq_ignore_ascii_case(h))
            }
            Matcher::Header { name, value } => req.header_is(name, value),
            Matcher::PathPrefix(p) => req.path().starts_with(p.as_str()),
            Matcher::PathSuffix(s) => req.path().ends_with(s.as_str()),
            Matcher::PathRegexp(re) => re.is_match(req.path()),
            Matcher::QueryRegexp(re) => re.is_match(req.query().unwrap_or("")),
            Matcher::QueryParam { name, value } => {
                req.query().is_some_and(|q| query_has(q, name, value))
            }
        }
    }
}

fn parse_percent(v: &str) -> Result<u32, &'static str> {
    const MSG: &str = "must be a number from 0 to 100 with at most 2 decimals";
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty()
        || int.len() > 3
        || frac.len() > 2
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(MSG);
    }
    let whole: u32 = int.parse().map_err(|_| MSG)?;
    let frac: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().map_err(|_| MSG)?
    };
    let p = whole * 100 + frac;
    if p > 10_000 { Err(MSG) } else { Ok(p) }
}

fn compile(v: &str) -> Result<regex::Regex, String> {
    if v.is_empty() {
        return Err("the regex must not be empty".into());
    }
    regex::RegexBuilder::new(v)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(MAX_REGEX_BYTES)
        .nest_limit(64)
        .build()
        .map_err(|e| e.to_string())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a DNS host name or IPv4 address (no port): labels of `A-Za-z0-9-` (and `_`), 1-63 characters,
/// at most 253 in all.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 {
        return Err("a host must be 1 to 253 characters".into());
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("host {h:?} has an empty or over-long label"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "host {h:?} contains {c:?} (no ports, schemes or wildcards)"
            ));
        }
    }
    Ok(())
}

/// Whether the raw query `q` has a parameter `name` whose decoded value is `value`.
pub fn query_has(q: &str, name: &str, value: &str) -> bool {
    q.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        decoded_eq(k, name) && decoded_eq(v, value)
    })
}

/// Compares a form-encoded string (`%XX`, `+` for space) with a plain one without allocating.
fn decoded_eq(raw: &str, plain: &str) -> bool {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return raw == plain;
    }
    let raw = raw.as_bytes();
    let mut out = plain.bytes();
    let mut i = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'+' => b' ',
            b'%' => match (hex(raw.get(i + 1).copied()), hex(raw.get(i + 2).copied())) {
                (Some(h), Some(l)) => {
                    i += 2;
                    h * 16 + l
                }
                _ => b'%',
            },
            b => b,
        };
        if out.next() != Some(b) {
            return false;
        }
        i += 1;
    }
    out.next().is_none()
}

fn hex(b: Option<u8>) -> Option<u8> {
    match b? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
