//! The real `atlantis` binary: offline behaviour (help, completions, config, token file, bad input,
//! manager down) and, on one shared cluster (the manager's e2e harness: ZooKeeper, two supervisors on
//! dockerd in network namespaces, a router, the registry, the manager), every command a team uses.

mod cluster;
mod offline;
mod run;
#[allow(dead_code)]
#[path = "../../../tests/it/support.rs"]
mod support;
