//! Integration tests of the registry: storage conformance (filesystem and a real S3 server), the
//! Distribution API over HTTP, real clients (skopeo, docker), garbage collection and auth.

mod common;
mod api;
mod badinput;
mod clients;
mod conformance;
mod docker;
mod gc;
