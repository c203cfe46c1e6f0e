//! api
pub mod supervisor;
