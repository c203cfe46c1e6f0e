//! Unit and property tests of the router configuration types and the rule parser.

use proptest::prelude::*;

use super::*;

struct Req {
    host: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    roll: u32,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            host: "www.example.com",
            path: "/",
            query: None,
            headers: vec![],
            roll: 5000,
        }
    }
}

impl RequestView for Req {
    fn host(&self) -> &str {
        self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn header_is(&self, name: &str, value: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value)
    }
    fn roll(&self) -> u32 {
        self.roll
    }
}

fn m(kind: RuleType, v: &str) -> Matcher {
    Matcher::parse(kind, v).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn each_matcher_matches_and_refuses() {
    let r = Req {
        path: "/api/v1/users.json",
        query: Some("a=1&name=J%C3%BCrgen+X&b"),
        headers: vec![("X-Canary", "yes")],
        ..Req::default()
    };
    let cases: Vec<(RuleType, &str, bool)> = vec![
        (RuleType::Static, "true", true),
        (RuleType::Static, "false", false),
        (RuleType::Percent, "100", true),
        (RuleType::Percent, "0", false),
        (RuleType::Percent, "50.01", true),
        (RuleType::Percent, "50", false),
        (RuleType::Host, "WWW.example.com", true),
        (RuleType::Host, "a.com, www.example.com", true),
        (RuleType::Host, "example.com", false),
        (RuleType::MultiHost, "www:example.com,example.org", true),
        (RuleType::MultiHost, "api:example.com", false),
        (RuleType::Header, "x-canary: yes", true),
        (RuleType::Header, "X-Canary:no", false),
        (RuleType::PathPrefix, "/api/", true),
        (RuleType::PathPrefix, "/apx", false),
        (RuleType::PathSuffix, ".json", true),
        (RuleType::PathSuffix, ".xml", false),
        (RuleType::PathRegexp, r"^/api/v\d+/", true),
        (RuleType::PathRegexp, r"^/v\d+/", false),
        (RuleType::QueryParamValue, "a=1", true),
        (RuleType::QueryParamValue, "name=Jürgen X", true),
        (RuleType::QueryParamValue, "b=", true),
        (RuleType::QueryParamValue, "a:2", false),
        (RuleType::QueryRegexp, "(^|&)a=1(&|$)", true),
        (RuleType::QueryRegexp, "c=", false),
    ];
    for (kind, v, want) in cases {
        assert_eq!(m(kind, v).matches(&r), want, "{kind} {v:?}");
    }
    let dotted = Req {
        host: "www.example.com.",
        ..Req::default()
    };
    assert!(m(RuleType::Host, "www.example.com").matches(&dotted));
    let no_query = Req::default();
    assert!(!m(RuleType::QueryParamValue, "a=1").matches(&no_query));
}

#[test]
fn bad_values_are_refused_with_reasons() {
    let cases: Vec<(RuleType, &str, &str)> = vec![
        (RuleType::Static, "yes", "true or false"),
        (RuleType::Percent, "101", "0 to 100"),
        (RuleType::Percent, "-1", "0 to 100"),
        (RuleType::Percent, "1.234", "2 decimals"),
        (RuleType::Percent, "", "0 to 100"),
        (RuleType::Host, "example.com:80", "no ports"),
        (RuleType::Host, "*.example.com", "wildcards"),
        (RuleType::Host, "a..b", "empty"),
        (RuleType::MultiHost, "nocolon", "name:suffix"),
        (RuleType::Header, "novalue", "Header-Name:value"),
        (RuleType::Header, "bad name:v", "HTTP token"),
        (RuleType::PathPrefix, "api", "start with '/'"),
        (RuleType::PathSuffix, "", "non-empty"),
        (RuleType::PathRegexp, "(", "regex parse error"),
        (RuleType::PathRegexp, "", "must not be empty"),
        (RuleType::QueryRegexp, "a{1000000}", "size limit"),
        (RuleType::QueryParamValue, "=x", "name must not be empty"),
        (RuleType::QueryParamValue, "x", "name=value"),
        (RuleType::PathPrefix, "/a\nb", "control character"),
    ];
    for (kind, v, why) in cases {
        let e = Matcher::parse(kind, v).expect_err(v).to_string();
        assert!(e.contains(why), "{kind} {v:?}: {e}");
        assert!(e.starts_with(&format!("invalid {kind} rule value")), "{e}");
    }
    let long = "/".repeat(MAX_VALUE_LEN_PLUS);
    assert!(Matcher::parse(RuleType::PathPrefix, &long).is_err());
}

const MAX_VALUE_LEN_PLUS: usize = rule::MAX_VALUE_LEN + 1;

#[test]
fn documents_parse_and_validate() {
    let (r, _) = parse_rule(
        "r1",
        br#"{"version":1,"type":"path-prefix","value":"/a","pool":"p"}"#,
    )
    .unwrap();
    assert_eq!(r.target(), Target::Pool("p".into()));
    let (r, _) = parse_rule(
        "r2",
        br#"{"type":"query-raw-regexp","value":"x","next":"t"}"#,
    )
    .unwrap();
    assert_eq!(
        (r.kind, r.target()),
        (RuleType::QueryRegexp, Target::Trie("t".into()))
    );
    let e = parse_rule(
        "r",
        br#"{"type":"static","value":"true","pool":"p","next":"t"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("exactly one of"), "{e}");
    let e = parse_rule("r", br#"{"type":"static","value":"true"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly one of"), "{e}");
    let e = parse_rule("r", br#"{"type":"nope","value":"true","pool":"p"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown variant"), "{e}");
    let e = parse_rule(
        "r",
        br#"{"type":"static","value":"true","pool":"p","extra":1}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field"), "{e}");
    let e = parse_rule("r/x", br#"{"type":"static","value":"true","pool":"p"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("name may contain only"), "{e}");
    let e = parse_rule(
        "r",
        br#"{"version":2,"type":"static","value":"true","pool":"p"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unsupported schema version 2"), "{e}");
    let e = parse_rule("r", br#"{"type":"static","value":"true","pool":"../x"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad pool reference"), "{e}");

    let p = parse_port("web", br#"{"port":8080,"trie":"root","tls":true}"#).unwrap();
    assert_eq!(
        p,
        Port {
            version: 1,
            port: 8080,
            trie: "root".into(),
            tls: true
        }
    );
    assert!(parse_port("web", br#"{"port":0,"trie":"root"}"#).is_err());
    assert!(parse_port("web", br#"{"port":70000,"trie":"root"}"#).is_err());
    let t = parse_trie("app.env", br#"{"rules":["a","b"]}"#).unwrap();
    assert_eq!(t.rules, vec!["a", "b"]);
    assert!(parse_trie(".hidden", br#"{"rules":[]}"#).is_err());
    let pool = parse_pool("app-1234567-prod", b"{}").unwrap();
    assert_eq!(pool, Pool::default());
    let e = parse_pool("p", br#"{"accept":"MAINTENANCE"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("accept must be"), "{e}");
    assert!(parse_pool("p", br#"{"request_timeout_ms":0}"#).is_err());
    assert_eq!(
        parse_pool("p", br#"{"keepalive_ms":0}"#)
            .unwrap()
            .keepalive_ms,
        0
    );
    assert_eq!(Pool::default().keepalive_ms, 4_000);
    assert_eq!(Pool::default().protocol, Protocol::Http1);
    assert_eq!(
        parse_pool("p", br#"{"protocol":"h2c"}"#).unwrap().protocol,
        Protocol::H2c
    );
    let e = parse_pool("p", br#"{"protocol":"h3"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected `http1` or `h2c`"), "{e}");
    assert!(
        parse_pool("p", br#"{"protocol":"h2c","healthz_grpc":true}"#)
            .unwrap()
            .healthz_grpc
    );
    let e = parse_pool("p", br#"{"healthz_grpc":true}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("healthz_grpc needs protocol h2c"), "{e}");
    let e = parse_pool("p", br#"{"keepalive_ms":3600001}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("keepalive_ms must be"), "{e}");
    assert!(parse_pool("p", br#"{"healthz_every_ms":5}"#).is_err());
    assert!(parse_pool("p", br#"{"healthz_path":"healthz"}"#).is_err());
    assert!(parse_pool("p", b"not json").is_err());
}

#[test]
fn backends_parse() {
    let b: Backend = "127.0.0.1:8080".parse().unwrap();
    assert_eq!((b.host.as_str(), b.port), ("127.0.0.1", 8080));
    assert_eq!(b.to_string(), "127.0.0.1:8080");
    let b: Backend = "[::1]:80".parse().unwrap();
    assert_eq!(
        (b.host.as_str(), b.to_string().as_str()),
        ("::1", "[::1]:80")
    );
    let b: Backend = "host-1.example:1".parse().unwrap();
    assert_eq!(b.host, "host-1.example");
    // One spelling per address: two nodes cannot name the same backend.
    for other in ["Host-1.example:1", "host-1.example:+1", "host-1.example:01"] {
        let e = other.parse::<Backend>().unwrap_err().to_string();
        assert!(e.contains("write it as host-1.example:1"), "{other}: {e}");
    }
    for bad in [
        "",
        "host",
        "host:0",
        "host:65536",
        "host:x",
        ":80",
        "[::1]80",
        "[zz]:80",
        "a b:80",
        "a/b:80",
    ] {
        assert!(bad.parse::<Backend>().is_err(), "{bad:?}");
    }
}

#[test]
fn health_header_parses() {
    assert_eq!(Health::from_header(" ok "), Some(Health::Ok));
    assert_eq!(
        Health::from_header("MAINTENANCE"),
        Some(Health::Maintenance)
    );
    assert_eq!(Health::from_header("fine"), None);
    assert!(Health::Ok < Health::Degraded && Health::Degraded < Health::Critical);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The parser never panics, and whatever it accepts can be evaluated.
    #[test]
    fn parser_never_panics(kind in prop::sample::select(RuleType::ALL.to_vec()), value in ".{0,64}") {
        if let Ok(m) = Matcher::parse(kind, &value) {
            let _ = m.matches(&Req::default());
        }
    }

    /// Rule documents of arbitrary bytes are refused cleanly or accepted; no panic.
    #[test]
    fn documents_never_panic(data in prop::collection::vec(any::<u8>(), 0..128), name in "[a-z./]{0,8}") {
        let _ = parse_rule(&name, &data);
        let _ = parse_port(&name, &data);
        let _ = parse_pool(&name, &data);
        let _ = parse_trie(&name, &data);
    }

    /// A percent value round-trips to the right share.
    #[test]
    fn percent_share(whole in 0u32..=100, frac in 0u32..100) {
        let v = format!("{whole}.{frac:02}");
        let r = Matcher::parse(RuleType::Percent, &v);
        if whole == 100 && frac > 0 {
            prop_assert!(r.is_err());
        } else {
            match r.unwrap() {
                Matcher::Percent(p) => prop_assert_eq!(p, whole * 100 + frac),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }

    /// Prefix and suffix matchers agree with str methods.
    #[test]
    fn prefix_suffix_agree(p in "/[a-z]{0,4}", path in "/[a-z/]{0,8}") {
        let leak: &'static str = Box::leak(path.clone().into_boxed_str());
        let req = Req { path: leak, ..Req::default() };
        prop_assert_eq!(m(RuleType::PathPrefix, &p).matches(&req), path.starts_with(&p));
        prop_assert_eq!(m(RuleType::PathSuffix, &p).matches(&req), path.ends_with(&p));
    }

    /// Query parameter matching agrees with a decode-then-compare reference.
    #[test]
    fn query_param_agrees(k in "[a-c]{1,2}", v in "[a-c %+]{0,3}", q in "[a-c=&%+2]{0,12}") {
        let reference = q.split('&').any(|pair| {
            let (a, b) = pair.split_once('=').unwrap_or((pair, ""));
            decode(a) == Some(k.clone()) && decode(b) == Some(v.clone())
        });
        prop_assert_eq!(rule::query_has(&q, &k, &v), reference);
    }
}

/// Reference decoder for the property test; `None` when the bytes are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit) =>
            {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}
