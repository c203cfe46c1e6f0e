//! Registered dependencies as stored: `dependencies/<name>` in ZooKeeper, the data sealed with the
//! operator's key. The API's handlers (`crate::api::deps`) and the release engine (which hands the data
//! and endpoints to containers) both read them here.

use atlantis_common::api::manager::{DependencySpec, Endpoint};
use atlantis_common::zk::{Coord, CoordError};
use atlantis_common::{AppName, TeamName};
use serde::{Deserialize, Serialize};

use crate::secrets::Sealer;

/// The ZooKeeper record `dependencies/<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DependencyRecord {
    /// Schema version.
    pub version: u32,
    /// Owning team.
    pub team: Option<TeamName>,
    /// Variable names (not secret).
    pub data_keys: Vec<String>,
    /// The data (a JSON object), sealed.
    pub sealed_data: String,
    /// Reachable endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A stored dependency that cannot be opened (wrong key, corrupt record).
#[derive(Debug, thiserror::Error)]
#[error("dependency {name}: {reason}")]
pub struct OpenError {
    /// The dependency.
    pub name: AppName,
    /// Why.
    pub reason: String,
}

/// Reads a dependency's record.
pub async fn load(coord: &Coord, n: &AppName) -> Result<Option<DependencyRecord>, CoordError> {
    Ok(coord
        .get::<DependencyRecord>(&coord.layout().dependency(n))
        .await?
        .map(|v| v.value))
}

/// Opens a dependency's record into its spec (the data decrypted).
pub fn open(
    sealer: &Sealer,
    n: &AppName,
    rec: &DependencyRecord,
) -> Result<DependencySpec, OpenError> {
    let fail = |reason: String| OpenError {
        name: n.clone(),
        reason,
    };
    let plain = sealer
        .open(n.as_str(), &rec.sealed_data)
        .map_err(|e| fail(e.to_string()))?;
    let data = serde_json::from_slice(&plain).map_err(|e| fail(e.to_string()))?;
    Ok(DependencySpec {
        team: rec.team.clone(),
        data,
        endpoints: rec.endpoints.clone(),
    })
}
