//! api
pub mod app_config;
pub mod exec;
pub mod grants;
pub mod manager;
pub mod registry_token;
pub mod supervisor;
