//! Integration tests of the registry: storage conformance (filesystem and a real S3 server), the
//! Distribution API over HTTP, real clients (skopeo, docker), garbage collection and auth.

mod api;
mod auth;
mod badinput;
mod binary;
mod clients;
mod common;
mod conformance;
mod docker;
mod gc;
mod props;
