//! The `atlantis` command line: argument model and validation.
//!
//! Every name is parsed into common's validated types at the edge, so a typo is refused before anything
//! is sent. The commands talk to the manager API; until that API lands, running one reports that clearly.

pub mod args;

pub use args::{Cli, Command};
