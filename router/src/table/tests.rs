//! Table compilation and routing walks over a static set of nodes.

use std::collections::BTreeMap;

use http::HeaderMap;

use super::*;
use crate::proxy::View;

fn node(data: &str, version: i32) -> Node {
    Node {
        data: data.as_bytes().to_vec(),
        version,
    }
}

fn base() -> BTreeMap<String, Node> {
    let mut m = BTreeMap::new();
    m.insert(
        "ports/web".into(),
        node(r#"{"port":8080,"trie":"root"}"#, 0),
    );
    m.insert(
        "tries/root".into(),
        node(r#"{"rules":["api","app","fallback"]}"#, 0),
    );
    m.insert(
        "tries/app".into(),
        node(r#"{"rules":["canary","stable"]}"#, 0),
    );
    m.insert(
        "rules/api".into(),
        node(r#"{"type":"path-prefix","value":"/api/","pool":"api"}"#, 0),
    );
    m.insert(
        "rules/app".into(),
        node(
            r#"{"type":"host","value":"app.example.com","next":"app"}"#,
            0,
        ),
    );
    m.insert(
        "rules/canary".into(),
        node(
            r#"{"type":"header","value":"X-Canary:1","pool":"app-new"}"#,
            0,
        ),
    );
    m.insert(
        "rules/stable".into(),
        node(r#"{"type":"static","value":"true","pool":"app-old"}"#, 0),
    );
    m.insert(
        "rules/fallback".into(),
        node(
            r#"{"type":"path-suffix","value":".html","pool":"later"}"#,
            0,
        ),
    );
    for p in ["api", "app-new", "app-old"] {
        m.insert(format!("pools/{p}"), node(r#"{"healthz_every_ms":0}"#, 0));
        m.insert(format!("pools/{p}/127.0.0.1:1"), node("", 0));
    }
    m
}

fn walk(t: &Table, host: &str, path: &str, headers: &[(&'static str, &'static str)]) -> String {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, v.parse().unwrap());
    }
    match t.route(8080, &View::from_parts(host, path, None, &h), None) {
        Route::Pool(p) => format!("pool:{}", p.name),
        Route::NoPort => "no-port".into(),
        Route::NoMatch => "no-match".into(),
        Route::Missing(n) => format!("missing:{n}"),
        Route::TooDeep => "loop".into(),
    }
}

#[tokio::test]
async fn routes_through_tries_and_resolves_forward_references() {
    let mut c = Compiler::new(RouterMetrics::new());
    c.apply(SourceEvent::Reset(base()));
    let t = c.compile();
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_eq!(walk(&t, "x", "/api/v1", &[]), "pool:api");
    assert_eq!(walk(&t, "app.example.com:8080", "/", &[]), "pool:app-old");
    assert_eq!(
        walk(&t, "APP.example.com", "/", &[("x-canary", "1")]),
        "pool:app-new"
    );
    assert_eq!(walk(&t, "x", "/index.html", &[]), "missing:later");
    assert_eq!(walk(&t, "x", "/nothing", &[]), "no-match");
    // The pool named before it existed appears: the same rule now routes.
    assert!(c.apply(SourceEvent::Upsert {
        path: "pools/later".into(),
        node: node("{}", 0)
    }));
    let t = c.compile();
    assert_eq!(walk(&t, "x", "/index.html", &[]), "pool:later");
    assert_eq!(t.rule_count, 5);
}

#[tokio::test]
async fn only_changed_rules_are_recompiled() {
    let metrics = RouterMetrics::new();
    let mut m = base();
    let names: Vec<String> = (0..10_000).map(|i| format!("r{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        m.insert(
            format!("rules/{n}"),
            node(
                &format!(r#"{{"type":"path-prefix","value":"/r{i}/","pool":"api"}}"#),
                0,
            ),
        );
    }
    m.insert(
        "tries/root".into(),
        node(&serde_json::json!({ "rules": names }).to_string(), 0),
    );
    let mut c = Compiler::new(metrics.clone());
    c.apply(SourceEvent::Reset(m.clone()));
    c.compile();
    let first = metrics.rules_compiled.get();
    assert_eq!(first, 10_005);
    c.apply(SourceEvent::Upsert {
        path: "rules/r77".into(),
        node: node(
            r#"{"type":"path-prefix","value":"/seventy-seven","pool":"app-new"}"#,
            1,
        ),
    });
    let t = c.compile();
    assert_eq!(metrics.rules_compiled.get(), first + 1);
    assert_eq!(walk(&t, "x", "/seventy-seven", &[]), "pool:app-new");
    assert_eq!(walk(&t, "x", "/r9999/abc", &[]), "pool:api");
    // A reset with the same nodes (a reconnect) compiles nothing new.
    assert!(!c.apply(SourceEvent::Reset(c.raw.clone())));
    // An unrelated change (a new backend) keeps the compiled trie; a rule change rebuilds it.
    let root = |t: &Table| t.tries[t.trie_index["root"]].clone();
    c.apply(SourceEvent::Upsert {
        path: "pools/api/127.0.0.1:9".into(),
        node: node("", 0),
    });
    let t2 = c.compile();
    assert!(Arc::ptr_eq(&root(&t), &root(&t2)));
    c.apply(SourceEvent::Upsert {
        path: "rules/r5".into(),
        node: node(r#"{"type":"path-prefix","value":"/five","pool":"api"}"#, 1),
    });
    let t3 = c.compile();
    assert!(!Arc::ptr_eq(&root(&t2), &root(&t3)));
    assert_eq!(walk(&t3, "x", "/five", &[]), "pool:api");
}

#[tokio::test]
async fn invalid_nodes_are_reported_and_loops_end() {
    let mut m = base();
    m.insert(
        "rules/bad".into(),
        node(r#"{"type":"path-regexp","value":"(","pool":"api"}"#, 0),
    );
    m.insert(
        "ports/dup".into(),
        node(r#"{"port":8080,"trie":"root"}"#, 0),
    );
    m.insert("pools/api/not-a-backend".into(), node("", 0));
    m.insert("tries/loop".into(), node(r#"{"rules":["again"]}"#, 0));
    m.insert(
        "rules/again".into(),
        node(r#"{"type":"static","value":"true","next":"loop"}"#, 0),
    );
    m.insert(
        "rules/api".into(),
        node(r#"{"type":"path-prefix","value":"/api/","next":"loop"}"#, 0),
    );
    let mut c = Compiler::new(RouterMetrics::new());
    c.apply(SourceEvent::Reset(m));
    let t = c.compile();
    assert_eq!(t.errors.len(), 3, "{:?}", t.errors);
    assert!(
        t.errors
            .iter()
            .any(|e| e.error.contains("regex parse error"))
    );
    assert!(t.errors.iter().any(|e| e.error.contains("already taken")));
    assert!(t.errors.iter().any(|e| e.error.contains("not-a-backend")));
    assert_eq!(walk(&t, "x", "/api/x", &[]), "loop");
    let mut steps = Vec::new();
    let view_headers = HeaderMap::new();
    t.route(
        8080,
        &View::from_parts("app.example.com", "/", None, &view_headers),
        Some(&mut steps),
    );
    let walked: Vec<(&str, bool)> = steps.iter().map(|s| (s.rule.as_str(), s.matched)).collect();
    assert_eq!(
        walked,
        vec![
            ("api", false),
            ("app", true),
            ("canary", false),
            ("stable", true)
        ]
    );
}

#[tokio::test]
async fn pool_state_survives_recompiles_and_backends_follow_children() {
    let mut c = Compiler::new(RouterMetrics::new());
    c.apply(SourceEvent::Reset(base()));
    let t1 = c.compile();
    let p1 = t1.pools["api"].clone();
    let b1 = p1.backends()[0].clone();
    c.apply(SourceEvent::Upsert {
        path: "pools/api/127.0.0.1:2".into(),
        node: node("", 0),
    });
    let t2 = c.compile();
    assert!(Arc::ptr_eq(&p1, &t2.pools["api"]));
    let names: Vec<String> = p1.backends().iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, vec!["127.0.0.1:1", "127.0.0.1:2"]);
    assert!(Arc::ptr_eq(&b1, &p1.backends()[0]));
    c.apply(SourceEvent::Remove {
        path: "pools/api/127.0.0.1:1".into(),
    });
    c.compile();
    let names: Vec<String> = p1.backends().iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, vec!["127.0.0.1:2"]);
    c.apply(SourceEvent::Remove {
        path: "pools/api".into(),
    });
    let t = c.compile();
    assert!(!t.pools.contains_key("api"));
    assert_eq!(walk(&t, "x", "/api/1", &[]), "missing:api");
}

#[tokio::test]
async fn host_index_agrees_with_the_linear_walk() {
    // 30 host rules (some hosts named twice, some lists), a path rule in the middle, then 12 more.
    let mut m = base();
    let mut names = Vec::new();
    for i in 0..42 {
        let name = format!("h{i}");
        let doc = if i == 30 {
            r#"{"type":"path-prefix","value":"/mid","pool":"app-new"}"#.to_string()
        } else {
            let pool = if i % 2 == 0 { "api" } else { "app-old" };
            format!(
                r#"{{"type":"host","value":"h{}.test, dup{}.test","pool":"{pool}"}}"#,
                i % 25,
                i % 3
            )
        };
        m.insert(format!("rules/{name}"), node(&doc, 0));
        names.push(name);
    }
    m.insert(
        "tries/root".into(),
        node(&serde_json::json!({ "rules": names }).to_string(), 0),
    );
    let mut c = Compiler::new(RouterMetrics::new());
    c.apply(SourceEvent::Reset(m));
    let t = c.compile();
    assert!(
        t.tries
            .iter()
            .any(|t| t.segments.iter().any(|s| matches!(s, Segment::Hosts(_))))
    );
    let h = HeaderMap::new();
    for host in [
        "h0.test",
        "H7.Test",
        "h24.test",
        "h13.test.",
        "dup0.test",
        "dup1.test",
        "dup2.test",
        "nope.test",
    ] {
        for path in ["/", "/mid/x"] {
            let v = View::from_parts(host, path, None, &h);
            let fast = match t.route(8080, &v, None) {
                Route::Pool(p) => p.name.clone(),
                _ => "none".into(),
            };
            let mut steps = Vec::new();
            let slow = match t.route(8080, &v, Some(&mut steps)) {
                Route::Pool(p) => p.name.clone(),
                _ => "none".into(),
            };
            assert_eq!(fast, slow, "{host} {path}");
        }
    }
}

/// A bad document written over a live rule, trie, pool or port keeps the last valid version in use
/// (so `/api` does not fall through to the catch-all), reported as invalid with the version served;
/// a fix replaces it, a deletion removes it, and a node that never was valid is ignored.
#[tokio::test]
async fn an_invalid_update_keeps_the_last_valid_version() {
    let mut c = Compiler::new(RouterMetrics::new());
    let mut m = base();
    m.insert(
        "rules/fallback".into(),
        node(r#"{"type":"static","value":"true","pool":"app-old"}"#, 0),
    );
    c.apply(SourceEvent::Reset(m));
    let t = c.compile();
    assert_eq!(walk(&t, "x", "/api/x", &[]), "pool:api");
    let api_pool = t.pools["api"].clone();
    for (path, bad) in [
        ("rules/api", "{not json"),
        ("tries/root", r#"{"rules":"api"}"#),
        ("pools/api", r#"{"healthz_every_ms":"often"}"#),
        ("ports/web", r#"{"port":0,"trie":"root"}"#),
    ] {
        c.apply(SourceEvent::Upsert {
            path: path.into(),
            node: node(bad, 7),
        });
        let t = c.compile();
        assert_eq!(
            walk(&t, "x", "/api/x", &[]),
            "pool:api",
            "after a bad {path}"
        );
        assert!(Arc::ptr_eq(&t.pools["api"], &api_pool));
        let e = t.errors.iter().find(|e| e.node == path).expect(path);
        assert_eq!((e.version, e.serving_version), (7, Some(0)), "{e}");
        assert_eq!(c.effective()[path].version, 0, "{path}");
    }
    let t = c.compile();
    assert_eq!(t.errors.len(), 4, "{:?}", t.errors);
    // Another bad version: still the last valid one.
    c.apply(SourceEvent::Upsert {
        path: "rules/api".into(),
        node: node(r#"{"type":"path-regexp","value":"(","pool":"api"}"#, 8),
    });
    let t = c.compile();
    assert_eq!(walk(&t, "x", "/api/x", &[]), "pool:api");
    // A fix is used at once.
    c.apply(SourceEvent::Upsert {
        path: "rules/api".into(),
        node: node(r#"{"type":"path-prefix","value":"/v2/","pool":"api"}"#, 9),
    });
    let t = c.compile();
    assert_eq!(walk(&t, "x", "/api/x", &[]), "pool:app-old");
    assert_eq!(walk(&t, "x", "/v2/x", &[]), "pool:api");
    assert!(!t.errors.iter().any(|e| e.node == "rules/api"));
    // A node that never was valid is ignored; a deleted one is gone with its last valid version.
    c.apply(SourceEvent::Upsert {
        path: "rules/new".into(),
        node: node("[]", 0),
    });
    c.apply(SourceEvent::Remove {
        path: "rules/api".into(),
    });
    let t = c.compile();
    let e = t.errors.iter().find(|e| e.node == "rules/new").unwrap();
    assert_eq!(e.serving_version, None);
    assert!(!c.effective().contains_key("rules/new"));
    assert!(!c.effective().contains_key("rules/api"));
    assert_eq!(walk(&t, "x", "/v2/x", &[]), "pool:app-old");
}
