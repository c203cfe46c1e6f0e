//! Integration tests of atlantis-common against a real ZooKeeper (Debian's `zookeeper`).

mod tidy;
mod zk;
mod zk_cache;
mod zk_ensemble;
mod zk_sync;
