//! The `atlantis` command line: a client of the manager API (`docs/api.md`), pleasant for people (tables,
//! live task progress, errors on one line) and exact for scripts (`--json`, stable exit codes).
//!
//! Names are parsed into common's validated types at the edge ([`args`]), so a typo is refused before
//! anything is sent. [`client`] talks HTTP to one manager; [`cmd`] runs each command against the managers
//! of the chosen regions; [`progress`] follows tasks; [`config`] keeps the config file and the token.

pub mod args;
pub mod client;
pub mod cmd;
pub mod config;
pub mod error;
pub mod output;
pub mod progress;

pub use args::{Cli, Command};
pub use error::CliError;
