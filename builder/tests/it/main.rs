//! Integration tests of the builder against real parts: the Atlantis registry (in-process, on
//! loopback), skopeo, git, a Docker Engine in a network namespace, the CLI binary and the HTTP API, network namespaces standing for the outside.

mod api;
mod badinput;
mod cli;
mod common;
mod debian;
mod docker;
mod guard;
mod hostile;
mod network;
mod push;
mod scoped_push;
mod source_swap;
