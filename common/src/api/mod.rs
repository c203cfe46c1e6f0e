//! api
pub mod app_config;
pub mod manager;
pub mod supervisor;
