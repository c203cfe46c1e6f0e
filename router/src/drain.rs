//! Backends that left the pools: what is still open to them, reported to the manager, and closed
//! cleanly at the drain deadline.
//!
//! When a table is swapped in, every backend of the previous table that is in no pool of the new one
//! (compared by identity: a backend's state lives as long as it stays in its pool) starts draining. The
//! control loop then reads its counters (`in_flight`, `tunnels`: relaxed atomics the request path keeps
//! anyway) every 200 ms while anything drains, and the router's `router_acks` node lists the backends
//! with something still open (see `atlantis_common::routing::ack`). A backend leaves the list once both
//! counts are zero. At `limits.backend_drain_deadline_ms` after it left its pool, the router asks what is
//! left to end ([`BackendState::close_now`]): tunnels send a WebSocket close (1001, going away) to the
//! client, streamed bodies end (the last chunk on a chunked answer), and the backend connection is
//! closed.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use atlantis_common::routing::DrainingBackend;

use crate::pool::BackendState;
use crate::table::Table;

/// How long a backend stays listed after it left its pool even with nothing open, so a request that
/// chose it just before the swap is counted once it takes its slot.
const GRACE: Duration = Duration::from_millis(200);

struct Entry {
    pool: String,
    backend: Arc<BackendState>,
    since: Instant,
}

/// The backends being drained.
pub struct Drains {
    entries: Vec<Entry>,
    deadline: Duration,
}

/// Every backend of a table, with its pool.
pub fn backends_of(table: &Table) -> Vec<(String, Arc<BackendState>)> {
    table
        .pools
        .iter()
        .flat_map(|(name, p)| {
            p.backends()
                .iter()
                .map(|b| (name.clone(), b.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

impl Drains {
    /// Nothing draining; open connections are closed `deadline` after their backend leaves its pool.
    pub fn new(deadline: Duration) -> Drains {
        Drains {
            entries: Vec::new(),
            deadline,
        }
    }

    /// Whether anything is draining.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts draining the backends of `before` (the previous table) that `after` no longer has.
    pub fn swapped(&mut self, before: Vec<(String, Arc<BackendState>)>, after: &Table) {
        let kept: HashSet<*const BackendState> = backends_of(after)
            .iter()
            .map(|(_, b)| Arc::as_ptr(b))
            .collect();
        let now = Instant::now();
        for (pool, backend) in before {
            let p = Arc::as_ptr(&backend);
            if kept.contains(&p) || self.entries.iter().any(|e| Arc::as_ptr(&e.backend) == p) {
                continue;
            }
            tracing::debug!(pool, backend = %backend.name, "Backend left its pool; draining.");
            self.entries.push(Entry {
                pool,
                backend,
                since: now,
            });
        }
    }

    /// Closes what is left past the deadline, forgets backends with nothing open, and returns the list
    /// to report.
    pub fn tick(&mut self) -> Vec<DrainingBackend> {
        let now = Instant::now();
        let deadline = self.deadline;
        self.entries.retain(|e| {
            let age = now.duration_since(e.since);
            let open = e.backend.in_flight.load(Relaxed) + e.backend.tunnels.load(Relaxed);
            if open > 0 && age >= deadline && !e.backend.closing() {
                tracing::info!(pool = e.pool, backend = %e.backend.name, open,
                    "Drain deadline passed; closing what is left open to the backend.");
                e.backend.close_now();
            }
            open > 0 || age < GRACE
        });
        self.report()
    }

    /// The backends with something open, for the router's acknowledgement node.
    pub fn report(&self) -> Vec<DrainingBackend> {
        let now = Instant::now();
        self.entries
            .iter()
            .filter_map(|e| {
                let in_flight = e.backend.in_flight.load(Relaxed);
                let tunnels = e.backend.tunnels.load(Relaxed);
                (in_flight + tunnels > 0).then(|| DrainingBackend {
                    pool: e.pool.clone(),
                    backend: e.backend.name.clone(),
                    in_flight,
                    tunnels,
                    for_ms: now.duration_since(e.since).as_millis() as u64,
                    closing: e.backend.closing(),
                })
            })
            .collect()
    }
}
