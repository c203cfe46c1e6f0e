//! What a router reports about itself in `router_acks/<kind>/<zone>/<host>` (an ephemeral node): the
//! configuration generation it serves, and what it still has open to backends that left its pools.
//!
//! The generation is the data version of `router/<kind>/generation`, which the manager sets in every
//! transaction that changes a pool's backends (`manager/src/routing.rs`). A router reports `g` once the
//! table compiled from a configuration holding that node at version `g` is in use, so every change of
//! those transactions up to `g` is applied. The report is written at most every 100 ms, and within about
//! 100 ms of the table being swapped in; the draining list is refreshed at most every 200 ms.

use serde::{Deserialize, Serialize};

/// The document of `router_acks/<kind>/<zone>/<host>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterAck {
    /// Schema version (1).
    #[serde(default)]
    pub version: u32,
    /// The generation of the table in use; `None` before the first table read from ZooKeeper (or when
    /// the tree has no generation node yet).
    #[serde(default)]
    pub generation: Option<u64>,
    /// Backends that left every pool of the table in use and still have requests or tunnels open
    /// through this router (a backend leaves the list once both counts are zero).
    #[serde(default)]
    pub draining: Vec<DrainingBackend>,
}

/// One backend being drained by a router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingBackend {
    /// The pool it left.
    pub pool: String,
    /// `host:port`.
    pub backend: String,
    /// Requests in flight to it (tunnels included).
    pub in_flight: u32,
    /// Open tunnels (WebSocket and other upgrades) to it.
    pub tunnels: u32,
    /// Milliseconds since it left the pool.
    pub for_ms: u64,
    /// Whether the router's drain deadline passed and it is closing what is left.
    #[serde(default)]
    pub closing: bool,
}
