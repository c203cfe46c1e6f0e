//! api
pub mod app_config;
pub mod supervisor;
