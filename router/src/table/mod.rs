//! The routing table: compiled from the raw configuration nodes, immutable once built, swapped atomically.
//!
//! [`Compiler`] keeps the raw nodes (relative path to data and version) and a cache of compiled rules keyed
//! by name, version and data, so a change among 10,000 rules parses only the rules that changed. Targets
//! are resolved by name at compile time; a reference to a pool or trie that does not exist yet is kept
//! as `Missing` (answered 503) and resolves by itself in the next table once the target appears.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use atlantis_common::routing::{self, Backend, Matcher, RequestView, RuleType, Target};
use atlantis_common::zk::Node;
use serde::Serialize;

use crate::metrics::RouterMetrics;
use crate::pool::PoolState;
use crate::source::SourceEvent;

/// Most trie hops one request may take (loops end here).
pub const MAX_HOPS: usize = 128;

/// A compiled rule (shared between tables while its node is unchanged).
#[derive(Debug)]
pub struct CompiledRule {
    /// Rule name.
    pub name: String,
    /// Matcher type.
    pub kind: RuleType,
    /// Matcher value, as written.
    pub value: String,
    /// The matcher.
    pub matcher: Matcher,
    /// Where a match goes.
    pub target: Target,
}

/// A rule target after name resolution.
#[derive(Clone)]
pub enum Resolved {
    /// An existing pool.
    Pool(Arc<PoolState>),
    /// An existing trie (index into [`Table::tries`]).
    Trie(usize),
    /// Not (yet) defined.
    Missing,
}

/// One rule in a trie.
#[derive(Clone)]
pub struct RuleEntry {
    /// The rule.
    pub rule: Arc<CompiledRule>,
    /// Its resolved target.
    pub target: Resolved,
}

/// A compiled trie.
pub struct CompiledTrie {
    /// Trie name.
    pub name: String,
    /// Rules in order.
    pub rules: Vec<RuleEntry>,
    segments: Vec<Segment>,
}

/// Runs of at least this many consecutive `host` rules are looked up in a hash map instead of scanned.
pub const HOST_INDEX_MIN: usize = 8;

/// How a run of rules is evaluated. A run of consecutive host rules is equivalent to a map from host to
/// the first rule of the run that names it, so first-match order is kept.
enum Segment {
    Linear(std::ops::Range<usize>),
    Hosts(HashMap<String, usize>),
}

impl CompiledTrie {
    fn new(name: String, rules: Vec<RuleEntry>) -> CompiledTrie {
        let mut segments = Vec::new();
        let mut i = 0;
        while i < rules.len() {
            let start = i;
            let is_host = |e: &RuleEntry| matches!(e.rule.matcher, Matcher::Host(_));
            if is_host(&rules[i]) {
                while i < rules.len() && is_host(&rules[i]) {
                    i += 1;
                }
                if i - start >= HOST_INDEX_MIN {
                    let mut index = HashMap::new();
                    for (k, e) in rules[start..i].iter().enumerate() {
                        if let Matcher::Host(hosts) = &e.rule.matcher {
                            for h in hosts {
                                index.entry(h.clone()).or_insert(start + k);
                            }
                        }
                    }
                    segments.push(Segment::Hosts(index));
                    continue;
                }
            } else {
                while i < rules.len() && !is_host(&rules[i]) {
                    i += 1;
                }
            }
            match segments.last_mut() {
                Some(Segment::Linear(r)) if r.end == start => r.end = i,
                _ => segments.push(Segment::Linear(start..i)),
            }
        }
        CompiledTrie {
            name,
            rules,
            segments,
        }
    }

    /// The first matching rule (fast path, no trace).
    fn first_match<R: RequestView + ?Sized>(&self, req: &R) -> Option<&RuleEntry> {
        for seg in &self.segments {
            match seg {
                Segment::Linear(r) => {
                    if let Some(e) = self.rules[r.clone()]
                        .iter()
                        .find(|e| e.rule.matcher.matches(req))
                    {
                        return Some(e);
                    }
                }
                Segment::Hosts(index) => {
                    let h = req.host();
                    let h = h.strip_suffix('.').unwrap_or(h);
                    let hit = if h.bytes().any(|b| b.is_ascii_uppercase()) {
                        index.get(&h.to_ascii_lowercase())
                    } else {
                        index.get(h)
                    };
                    if let Some(&i) = hit {
                        return Some(&self.rules[i]);
                    }
                }
            }
        }
        None
    }
}

/// A listener definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortEntry {
    /// Port node name.
    pub name: String,
    /// TCP port.
    pub port: u16,
    /// Serve TLS.
    pub tls: bool,
    /// Start trie name.
    pub trie: String,
    /// Start trie index, if it exists.
    #[serde(skip)]
    pub trie_index: Option<usize>,
}

/// The immutable routing table.
#[derive(Default)]
pub struct Table {
    /// Increases with every compilation.
    pub generation: u64,
    /// Listeners by port number.
    pub ports: HashMap<u16, PortEntry>,
    /// Tries.
    pub tries: Vec<Arc<CompiledTrie>>,
    /// Trie index by name.
    pub trie_index: HashMap<String, usize>,
    /// Pools by name.
    pub pools: BTreeMap<String, Arc<PoolState>>,
    /// Nodes refused as invalid, with the reason (shown on `/statusz.json`).
    pub errors: Vec<Invalid>,
    /// Number of rules.
    pub rule_count: usize,
    /// How long the compilation took, in milliseconds.
    pub compile_ms: f64,
}

/// The outcome of walking the table.
pub enum Route {
    /// Send to this pool.
    Pool(Arc<PoolState>),
    /// No listener is configured for this port.
    NoPort,
    /// No rule matched.
    NoMatch,
    /// A matched rule (or the port) names a pool or trie that does not exist.
    Missing(String),
    /// More than [`MAX_HOPS`] tries (a loop).
    TooDeep,
}

/// The most rule evaluations a trace records.
pub const MAX_TRACE_STEPS: usize = 1000;

/// One rule evaluation, for the trace endpoint.
#[derive(Debug, Serialize)]
pub struct Step {
    /// Trie.
    pub trie: String,
    /// Rule.
    pub rule: String,
    /// Matcher type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Matcher value.
    pub value: String,
    /// Whether it matched.
    pub matched: bool,
}

impl Table {
    /// Walks the tries from `port`'s start trie; with `trace`, records every rule evaluated.
    pub fn route<R: RequestView + ?Sized>(
        &self,
        port: u16,
        req: &R,
        mut trace: Option<&mut Vec<Step>>,
    ) -> Route {
        let Some(p) = self.ports.get(&port) else {
            return Route::NoPort;
        };
        let Some(mut t) = p.trie_index else {
            return Route::Missing(p.trie.clone());
        };
        for _ in 0..MAX_HOPS {
            let trie = &self.tries[t];
            let hit = match trace.as_deref_mut() {
                None => trie.first_match(req),
                Some(steps) => {
                    let mut hit = None;
                    for e in &trie.rules {
                        let matched = e.rule.matcher.matches(req);
                        // A looping configuration of long rules would otherwise cost memory without
                        // bound; past the cap the walk goes on untraced.
                        if steps.len() < MAX_TRACE_STEPS {
                            steps.push(Step {
                                trie: trie.name.clone(),
                                rule: e.rule.name.clone(),
                                kind: e.rule.kind.as_str(),
                                value: e.rule.value.clone(),
                                matched,
                            });
                        }
                        if matched {
                            hit = Some(e);
                            break;
                        }
                    }
                    hit
                }
            };
            let Some(e) = hit else { return Route::NoMatch };
            match &e.target {
                Resolved::Pool(p) => return Route::Pool(p.clone()),
                Resolved::Trie(i) => t = *i,
                Resolved::Missing => {
                    return Route::Missing(match &e.rule.target {
                        Target::Pool(n) | Target::Trie(n) => n.clone(),
                    });
                }
            }
        }
        Route::TooDeep
    }
}

fn same_target(a: &Resolved, b: &Resolved) -> bool {
    match (a, b) {
        (Resolved::Pool(x), Resolved::Pool(y)) => Arc::ptr_eq(x, y),
        (Resolved::Trie(x), Resolved::Trie(y)) => x == y,
        (Resolved::Missing, Resolved::Missing) => true,
        _ => false,
    }
}

/// A node refused by the compiler, as `/statusz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Invalid {
    /// Relative path, such as `rules/api`.
    pub node: String,
    /// The refused version of the node.
    pub version: i32,
    /// Why it was refused.
    pub error: String,
    /// The version still in use instead (the last valid one), if there is one.
    pub serving_version: Option<i32>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} version {}: {}", self.node, self.version, self.error)?;
        match self.serving_version {
            Some(v) => write!(f, " (still serving its last valid version {v})"),
            None => write!(f, " (ignored: no valid version to keep)"),
        }
    }
}

/// The last valid version of a node.
struct Good<T> {
    version: i32,
    data: Vec<u8>,
    value: T,
}

/// A node as last seen and parsed, and the last valid version of it, kept while the node is invalid.
struct Kept<T> {
    version: i32,
    data: Vec<u8>,
    error: Option<String>,
    good: Option<Good<T>>,
}

/// Parses `node` (named `name` in `section`) unless `cache` holds that very version already; returns the
/// value to use: the node's own, or its last valid version when the node is invalid. An invalid node is
/// reported in `errors`.
fn keep<T: Clone>(
    cache: &mut HashMap<String, Kept<T>>,
    section: &str,
    name: &str,
    node: &Node,
    errors: &mut Vec<Invalid>,
    parse: impl FnOnce() -> Result<T, String>,
) -> Option<T> {
    let fresh = cache
        .get(name)
        .is_none_or(|c| c.version != node.version || c.data != node.data);
    if fresh {
        let parsed = parse();
        let old = cache.remove(name).and_then(|k| k.good);
        let (error, good) = match parsed {
            Ok(value) => (
                None,
                Some(Good {
                    version: node.version,
                    data: node.data.clone(),
                    value,
                }),
            ),
            Err(e) => (Some(e), old),
        };
        cache.insert(
            name.to_owned(),
            Kept {
                version: node.version,
                data: node.data.clone(),
                error,
                good,
            },
        );
    }
    let k = &cache[name];
    if let Some(e) = &k.error {
        errors.push(Invalid {
            node: format!("{section}/{name}"),
            version: k.version,
            error: e.clone(),
            serving_version: k.good.as_ref().map(|g| g.version),
        });
    }
    k.good.as_ref().map(|g| g.value.clone())
}

/// Drops cache entries of nodes that no longer exist.
fn prune<T>(cache: &mut HashMap<String, Kept<T>>, live: &std::collections::HashSet<&str>) {
    if cache.len() > live.len() || cache.keys().any(|k| !live.contains(k.as_str())) {
        cache.retain(|k, _| live.contains(k.as_str()));
    }
}

/// Turns raw nodes into tables; owns the pools' run-time state.
///
/// A node whose new version is invalid does not take the old one away: the last valid version keeps
/// serving (and is what [`Compiler::effective`] returns) until the node is fixed or deleted.
pub struct Compiler {
    raw: BTreeMap<String, Node>,
    ports: HashMap<String, Kept<routing::Port>>,
    rules: HashMap<String, Kept<Arc<CompiledRule>>>,
    trie_docs: HashMap<String, Kept<Arc<routing::Trie>>>,
    pool_docs: HashMap<String, Kept<routing::Pool>>,
    prev_tries: HashMap<String, Arc<CompiledTrie>>,
    pools: HashMap<String, Arc<PoolState>>,
    generation: u64,
    metrics: RouterMetrics,
}

impl Compiler {
    /// An empty compiler.
    pub fn new(metrics: RouterMetrics) -> Compiler {
        Compiler {
            raw: BTreeMap::new(),
            ports: HashMap::new(),
            rules: HashMap::new(),
            trie_docs: HashMap::new(),
            pool_docs: HashMap::new(),
            prev_tries: HashMap::new(),
            pools: HashMap::new(),
            generation: 0,
            metrics,
        }
    }

    /// Applies a source event; returns whether the raw configuration changed.
    pub fn apply(&mut self, ev: SourceEvent) -> bool {
        match ev {
            SourceEvent::Reset(map) => {
                let changed = map != self.raw;
                self.raw = map;
                changed
            }
            SourceEvent::Upsert { path, node } => {
                self.raw.insert(path, node.clone()).as_ref() != Some(&node)
            }
            SourceEvent::Remove { path } => self.raw.remove(&path).is_some(),
            SourceEvent::Connected(_) => false,
        }
    }

    /// The configuration the last table was compiled from, as nodes: every node as read, except that an
    /// invalid node is replaced by its last valid version (or left out when it never had one). This is
    /// what the router saves as its snapshot.
    pub fn effective(&self) -> BTreeMap<String, Node> {
        let mut out = BTreeMap::new();
        for (path, node) in &self.raw {
            let mut parts = path.splitn(3, '/');
            let (section, name, child) = (parts.next().unwrap_or(""), parts.next(), parts.next());
            let Some(name) = name else { continue };
            let good = |v: Option<(i32, &Vec<u8>)>| {
                v.map(|(version, data)| Node {
                    version,
                    data: data.clone(),
                })
            };
            fn pick<'a, T>(
                c: &'a HashMap<String, Kept<T>>,
                name: &str,
            ) -> Option<(i32, &'a Vec<u8>)> {
                c.get(name)?.good.as_ref().map(|g| (g.version, &g.data))
            }
            let node = match (section, child) {
                ("ports", None) => good(pick(&self.ports, name)),
                ("rules", None) => good(pick(&self.rules, name)),
                ("tries", None) => good(pick(&self.trie_docs, name)),
                ("pools", None) => good(pick(&self.pool_docs, name)),
                ("pools", Some(b)) if !b.contains('/') && b.parse::<Backend>().is_ok() => {
                    Some(node.clone())
                }
                _ => None,
            };
            if let Some(n) = node {
                out.insert(path.clone(), n);
            }
        }
        out
    }

    /// Compiles a new table from the current nodes.
    pub fn compile(&mut self) -> Table {
        self.generation += 1;
        self.metrics.compiles.inc();
        let mut errors: Vec<Invalid> = Vec::new();
        let mut ports: Vec<(String, routing::Port)> = Vec::new();
        let mut tries: Vec<(String, Arc<routing::Trie>)> = Vec::new();
        let mut compiled: HashMap<&str, Arc<CompiledRule>> =
            HashMap::with_capacity(self.rules.len());
        let mut pool_cfgs: BTreeMap<String, (routing::Pool, Vec<Backend>)> = BTreeMap::new();
        let mut backends: Vec<(&str, Backend)> = Vec::new();
        let mut live: [std::collections::HashSet<&str>; 4] = Default::default();
        let metrics = &self.metrics;
        for (path, node) in &self.raw {
            let mut parts = path.splitn(3, '/');
            let (section, name, child) = (parts.next().unwrap_or(""), parts.next(), parts.next());
            let Some(name) = name else { continue };
            match (section, child) {
                ("ports", None) => {
                    live[0].insert(name);
                    let p = keep(&mut self.ports, section, name, node, &mut errors, || {
                        routing::parse_port(name, &node.data).map_err(|e| e.to_string())
                    });
                    if let Some(p) = p {
                        ports.push((name.to_owned(), p));
                    }
                }
                ("tries", None) => {
                    live[1].insert(name);
                    let t = keep(
                        &mut self.trie_docs,
                        section,
                        name,
                        node,
                        &mut errors,
                        || {
                            routing::parse_trie(name, &node.data)
                                .map(Arc::new)
                                .map_err(|e| e.to_string())
                        },
                    );
                    if let Some(t) = t {
                        tries.push((name.to_owned(), t));
                    }
                }
                // Rules: reuse the compiled form unless the node changed.
                ("rules", None) => {
                    live[2].insert(name);
                    let r = keep(&mut self.rules, section, name, node, &mut errors, || {
                        metrics.rules_compiled.inc();
                        routing::parse_rule(name, &node.data)
                            .map(|(r, matcher)| {
                                Arc::new(CompiledRule {
                                    name: name.to_owned(),
                                    kind: r.kind,
                                    target: r.target(),
                                    value: r.value,
                                    matcher,
                                })
                            })
                            .map_err(|e| e.to_string())
                    });
                    if let Some(r) = r {
                        compiled.insert(name, r);
                    }
                }
                ("pools", None) => {
                    live[3].insert(name);
                    let p = keep(
                        &mut self.pool_docs,
                        section,
                        name,
                        node,
                        &mut errors,
                        || routing::parse_pool(name, &node.data).map_err(|e| e.to_string()),
                    );
                    if let Some(p) = p {
                        pool_cfgs.insert(name.to_owned(), (p, Vec::new()));
                    }
                }
                ("pools", Some(b)) if !b.contains('/') => match b.parse::<Backend>() {
                    Ok(b) => backends.push((name, b)),
                    Err(e) => errors.push(Invalid {
                        node: path.clone(),
                        version: node.version,
                        error: format!("{e} (in pool {name:?})"),
                        serving_version: None,
                    }),
                },
                _ => {}
            }
        }
        for (pool, b) in backends {
            if let Some((_, list)) = pool_cfgs.get_mut(pool) {
                list.push(b);
            }
        }
        prune(&mut self.ports, &live[0]);
        prune(&mut self.trie_docs, &live[1]);
        prune(&mut self.rules, &live[2]);
        prune(&mut self.pool_docs, &live[3]);
        // Pools: keep run-time state across tables.
        self.pools.retain(|name, p| {
            let keep = pool_cfgs.contains_key(name);
            if !keep {
                p.close(&self.metrics);
            }
            keep
        });
        let mut pools = BTreeMap::new();
        for (name, (cfg, backends)) in pool_cfgs {
            let state = self
                .pools
                .entry(name.clone())
                .or_insert_with(|| Arc::new(PoolState::new(&name, cfg.clone(), &self.metrics)));
            state.set_config(cfg);
            state.set_backends(&backends, &self.metrics);
            pools.insert(name, state.clone());
        }
        // Tries, then targets.
        let trie_index: HashMap<String, usize> = tries
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let mut rule_count = 0;
        let compiled_tries = tries
            .iter()
            .map(|(name, t)| {
                let rules = t
                    .rules
                    .iter()
                    .filter_map(|r| compiled.get(r.as_str()))
                    .map(|rule| {
                        let target = match &rule.target {
                            Target::Pool(p) => pools
                                .get(p)
                                .map(|p| Resolved::Pool(p.clone()))
                                .unwrap_or(Resolved::Missing),
                            Target::Trie(t) => trie_index
                                .get(t)
                                .map(|i| Resolved::Trie(*i))
                                .unwrap_or(Resolved::Missing),
                        };
                        RuleEntry {
                            rule: rule.clone(),
                            target,
                        }
                    })
                    .collect::<Vec<_>>();
                rule_count += rules.len();
                // Unchanged rules and targets: keep the previous compiled trie (and its host index).
                match self.prev_tries.get(name) {
                    Some(prev)
                        if prev.rules.len() == rules.len()
                            && prev.rules.iter().zip(&rules).all(|(a, b)| {
                                Arc::ptr_eq(&a.rule, &b.rule) && same_target(&a.target, &b.target)
                            }) =>
                    {
                        prev.clone()
                    }
                    _ => Arc::new(CompiledTrie::new(name.clone(), rules)),
                }
            })
            .collect::<Vec<Arc<CompiledTrie>>>();
        self.prev_tries = compiled_tries
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let mut by_port: HashMap<u16, PortEntry> = HashMap::new();
        for (name, p) in ports {
            if let Some(other) = by_port.get(&p.port) {
                let version = self.ports.get(&name).map_or(0, |k| k.version);
                errors.push(Invalid {
                    error: format!(
                        "port {name:?} uses port {} already taken by port {:?}",
                        p.port, other.name
                    ),
                    node: format!("ports/{name}"),
                    version,
                    serving_version: None,
                });
                continue;
            }
            let trie_index = trie_index.get(&p.trie).copied();
            by_port.insert(
                p.port,
                PortEntry {
                    name,
                    port: p.port,
                    tls: p.tls,
                    trie: p.trie,
                    trie_index,
                },
            );
        }
        self.metrics.invalid_nodes.set(errors.len() as i64);
        Table {
            generation: self.generation,
            ports: by_port,
            tries: compiled_tries,
            trie_index,
            pools,
            errors,
            rule_count,
            compile_ms: 0.0,
        }
    }
}

#[cfg(test)]
mod tests;
