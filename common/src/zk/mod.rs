//! ZooKeeper: the tree layout and the coordination layer every component uses.
//!
//! - [`layout`]: the only place that builds paths (the tree is drawn there).
//! - [`Coord`] (`client`): typed JSON get/set with versions, compare-and-set, ephemeral registrations that
//!   survive session loss, and the session status callers follow.
//! - `txn`: multi-op transactions. `watch`: data and child watch streams. [`TreeCache`] (`cache`): a live
//!   mirror of a subtree. `lock`: prefix locks. `election`: leader election.

mod cache;
mod client;
mod election;
mod error;
pub mod layout;
mod lock;
mod txn;
mod watch;

pub use cache::{Node, TreeCache, TreeEvent};
pub use client::{Coord, NodeStat, Registration, SessionStatus, Versioned, ZkConfig};
pub use election::{LeaderRecord, Leadership};
pub use error::CoordError;
pub use layout::{Layout, RouterKind, Section};
pub use lock::{LockError, LockGuard, LockHolder, LockKey};
pub use txn::{Txn, TxnResult};
pub use watch::NodeData;
