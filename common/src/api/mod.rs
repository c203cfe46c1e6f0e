//! api
pub mod manager;
pub mod supervisor;
