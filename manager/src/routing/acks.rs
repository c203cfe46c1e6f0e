//! What the routers acknowledge: the configuration generation they serve, and what they still have open
//! to backends that left the pools (`router_acks/<kind>/<zone>/<host>`, written by each router; the
//! document is `atlantis_common::routing::RouterAck`).
//!
//! A switch or a removal bumps the fleet's generation in its transaction (`super::switch_in`,
//! `super::remove_backends`); [`wait_generation`] waits until every live router (registered under
//! `routers/<kind>/`) serves it, and [`wait_drained`] until no router has a request or tunnel open to
//! the removed backends. Both poll every 50 ms and are bounded; they never fail, they report.

use std::collections::BTreeMap;
use std::time::Duration;

use atlantis_common::routing::{DrainingBackend, RouterAck};
use atlantis_common::zk::{Coord, CoordError, RouterKind};
use atlantis_common::{HostName, ZoneName};

/// How often the routers' acknowledgements are read while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Routers serving a generation: `on` of `of` live routers, and those that do not (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acks {
    /// Live routers serving at least the generation.
    pub on: usize,
    /// Live routers.
    pub of: usize,
    /// `zone/host` of the routers that do not, with what they serve (`none`: nothing reported).
    pub lagging: Vec<String>,
}

impl Acks {
    /// Whether every live router serves the generation.
    pub fn all(&self) -> bool {
        self.lagging.is_empty()
    }
}

/// The outcome of a drain: what each router still had open to the backends when it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// `zone/host` → the backends still open through that router (empty when drained).
    pub remaining: BTreeMap<String, Vec<DrainingBackend>>,
    /// Routers that never acknowledged the removal's generation (they may still send requests).
    pub lagging: Vec<String>,
    /// The deadline passed first.
    pub timed_out: bool,
    /// How long the wait took.
    pub took: Duration,
}

/// One live router and its acknowledgement.
struct Seen {
    name: String,
    ack: Option<RouterAck>,
}

/// The live routers of `kind` with what they acknowledge.
async fn read(coord: &Coord, kind: RouterKind) -> Result<Vec<Seen>, CoordError> {
    let l = coord.layout();
    let mut out = Vec::new();
    for r in crate::state::routers(coord, kind).await? {
        let name = format!("{}/{}", r.zone, r.host);
        let (Ok(zone), Ok(host)) = (r.zone.parse::<ZoneName>(), r.host.parse::<HostName>()) else {
            out.push(Seen { name, ack: None });
            continue;
        };
        let ack = coord
            .get::<RouterAck>(&l.router_ack(kind, &zone, &host))
            .await
            .ok()
            .flatten()
            .map(|v| v.value);
        out.push(Seen { name, ack });
    }
    Ok(out)
}

fn serves(ack: &Option<RouterAck>, generation: u64) -> bool {
    ack.as_ref()
        .and_then(|a| a.generation)
        .is_some_and(|g| g >= generation)
}

fn acks_of(seen: &[Seen], generation: u64) -> Acks {
    let lagging: Vec<String> = seen
        .iter()
        .filter(|s| !serves(&s.ack, generation))
        .map(|s| {
            let at = s.ack.as_ref().and_then(|a| a.generation);
            match at {
                Some(g) => format!("{} (on {g})", s.name),
                None => format!("{} (none)", s.name),
            }
        })
        .collect();
    Acks {
        on: seen.len() - lagging.len(),
        of: seen.len(),
        lagging,
    }
}

/// The fleet's current generation (0 before the first switch).
pub async fn current_generation(coord: &Coord, kind: RouterKind) -> Result<u64, CoordError> {
    let path = coord.layout().router_generation(kind);
    Ok(coord
        .stat(&path)
        .await?
        .map_or(0, |s| s.version.max(0) as u64))
}

/// Waits until every live router of `kind` serves at least `generation`, or `limit` runs out; names
/// the routers that lag. A ZooKeeper error counts as no router acknowledging.
pub async fn wait_generation(
    coord: &Coord,
    kind: RouterKind,
    generation: u64,
    limit: Duration,
) -> Acks {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let acks = match read(coord, kind).await {
            Ok(seen) => acks_of(&seen, generation),
            Err(e) => Acks {
                on: 0,
                of: 0,
                lagging: vec![format!("routers unreadable: {e}")],
            },
        };
        if acks.all() || tokio::time::Instant::now() >= deadline {
            return acks;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every live router of `kind` serves at least `generation` (the removal's) and reports no
/// request or tunnel open to any of `backends` (`host:port`), or `limit` runs out.
pub async fn wait_drained(
    coord: &Coord,
    kind: RouterKind,
    generation: u64,
    backends: &[String],
    limit: Duration,
) -> Drained {
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    loop {
        let mut out = Drained::default();
        match read(coord, kind).await {
            Ok(seen) => {
                out.lagging = acks_of(&seen, generation).lagging;
                for s in &seen {
                    let open: Vec<DrainingBackend> = s
                        .ack
                        .iter()
                        .flat_map(|a| a.draining.iter())
                        .filter(|d| backends.contains(&d.backend) && d.in_flight + d.tunnels > 0)
                        .cloned()
                        .collect();
                    if !open.is_empty() {
                        out.remaining.insert(s.name.clone(), open);
                    }
                }
            }
            Err(e) => out.lagging = vec![format!("routers unreadable: {e}")],
        }
        out.took = started.elapsed();
        let done = out.lagging.is_empty() && out.remaining.is_empty();
        if done || tokio::time::Instant::now() >= deadline {
            out.timed_out = !done;
            return out;
        }
        tokio::time::sleep(POLL).await;
    }
}

impl Drained {
    /// One line for a task's steps: how long it took and what was left.
    pub fn summary(&self) -> String {
        let secs = self.took.as_secs_f64();
        if !self.timed_out {
            return format!("drained in {secs:.1} s");
        }
        let mut parts = Vec::new();
        for (router, open) in &self.remaining {
            let (r, t) = open.iter().fold((0, 0), |(r, t), d| {
                (r + d.in_flight - d.tunnels.min(d.in_flight), t + d.tunnels)
            });
            parts.push(format!("{router}: {r} requests, {t} tunnels"));
        }
        for l in &self.lagging {
            parts.push(format!("{l} did not acknowledge the removal"));
        }
        format!(
            "drain deadline after {secs:.1} s, still open: {}",
            parts.join("; ")
        )
    }
}
