//! Atlantis manager: the control plane's API server.
//!
//! Today it connects to ZooKeeper, registers itself (EPHEMERAL `managers/hosts/<host>`), campaigns for
//! leadership of background work, and serves `/healthz` and `/metrics`. The resources of DESIGN.md
//! section 4 (apps, envs, deploys as tasks, placement, router config, teams) build on this skeleton.

pub mod config;
pub mod server;

pub use config::Config;
pub use server::App;
