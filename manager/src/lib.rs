//! Atlantis manager: the control plane's API server and release engine.
//!
//! - [`api`]: the HTTP/JSON API (axum), errors as `{code, message}` ([`error`]), OpenAPI at `/openapi.json`.
//! - [`release`]: the release engine (deploy, rollback, scale, teardown, maintenance, the replacement
//!   after a revoke) over a [`fleet::hosts::HostFleet`] and the store; one phase machine for every
//!   release-like task. [`placement`] and [`routing`] are its pure placement and its router-config
//!   writes; [`tasks`] tracks long operations and their durable journals. [`ctx`]: the API's state, a
//!   thin wrapper around the engine.
//! - [`deps`]: registered dependencies as stored (read by the handlers and the engine).
//! - [`history`]: releases and finished tasks in SQL (SQLite or PostgreSQL); [`secrets`]: dependency
//!   data sealed at rest; [`images`]: tag to digest resolution in the registry; [`state`]: ZooKeeper reads.
//! - [`auth`]: bearer tokens, LDAP logins, teams, authorisation of every route and the audit log.
//! - [`grants`]: dependency grants (an app uses a dependency only once its owning team granted it).
//! - [`fleet`]: the host API seam (real supervisor client, in-memory fake) and its contract.
//! - [`server`]: startup, registration and the leadership campaign; while leading, [`reconcile`] takes
//!   over dead managers' tasks ([`recovery`]) and re-places the containers of dead hosts.
//! - [`testhook`]: TEST-ONLY pause points (inert unless their variables are set).

pub mod api;
pub mod auth;
pub mod config;
pub mod ctx;
pub mod deps;
pub mod error;
pub mod fleet;
pub mod grants;
pub mod history;
pub mod images;
pub mod placement;
pub mod reconcile;
pub mod recovery;
pub mod release;
pub mod routing;
pub mod secrets;
pub mod server;
pub mod state;
pub mod tasks;
pub mod testhook;

pub use config::Config;
pub use server::App;
