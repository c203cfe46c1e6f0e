//! Aquarium: a whole Atlantis cluster on one machine, for development, demos and end-to-end tests.
//!
//! `aquarium up` starts ZooKeeper, the registry, the builder, a manager, two supervisors in two zones
//! (each with its own Docker Engine in a network namespace of its own) and an internal and an external
//! router per zone, as detached processes with pid files and logs under one data directory; then it
//! builds the sample app with the builder and deploys it through the manager's API. `status`, `logs`,
//! `verify`, `deploy` and `down` work on the same data directory. See `docs/aquarium.md`.

pub mod client;
pub mod components;
pub mod down;
pub mod health;
pub mod logs;
pub mod net;
pub mod paths;
pub mod plan;
pub mod process;
pub mod progress;
pub mod sample;
pub mod status;
pub mod up;
pub mod verify;
