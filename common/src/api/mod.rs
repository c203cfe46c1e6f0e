//! api
pub mod app_config;
pub mod exec;
pub mod manager;
pub mod supervisor;
