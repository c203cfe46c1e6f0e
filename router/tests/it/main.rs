//! Router integration tests: a real ZooKeeper (Debian's), real HTTP backends on loopback, and real
//! clients (reqwest, curl, raw TCP). One shared ZooKeeper serves every test except the outage tests,
//! which start their own; each test writes under a root of its own.

mod bad_input;
mod balancing;
mod body_idle;
mod connections;
mod drain;
mod fast_path;
mod h2_backends;
mod keepalive;
mod live;
mod matchers;
mod protocols;
mod resilience;
mod static_source;
mod status_auth;
mod support;
