//! Replacing a running container's dependencies (`PUT /v1/containers/{id}/dependencies`): the manager
//! calls it when a grant is revoked (or given), so the container loses (or gains) its firewall opening
//! without a redeploy.
//!
//! The container's chain is re-rendered at once and the connections the new rules refuse are cut
//! ([`crate::firewall`]). Labels are immutable, so the new set is kept in the supervisor's data dir,
//! `<data_dir>/containers/<id>/dependencies.json` (mode 0600, written atomically BEFORE the rules
//! change); [`crate::reconcile`] reads it back at start over the labels' set, so a restart rebuilds the
//! same rules. The file goes with the container's folder when the container is removed. The container's
//! environment (`ATLANTIS_DEP_<NAME>`) keeps what it was started with: a removed dependency's variable
//! stays but its address is refused; a new one is reachable but gets no variable until a redeploy.

use std::path::{Path, PathBuf};

use atlantis_common::ContainerId;
use atlantis_common::api::supervisor::{ContainerInfo, DependenciesRequest, Dependency};

use crate::error::ApiError;
use crate::service::Supervisor;

/// The file that overrides the labels' dependencies of `id`.
pub fn path(data_dir: &Path, id: &ContainerId) -> PathBuf {
    data_dir
        .join("containers")
        .join(id.as_str())
        .join("dependencies.json")
}

/// The replaced dependencies of `id`, if they were replaced. An unreadable file is logged and ignored
/// (the labels' set applies), never fatal.
pub fn load(data_dir: &Path, id: &ContainerId) -> Option<Vec<Dependency>> {
    let p = path(data_dir, id);
    let raw = match std::fs::read(&p) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(path = %p.display(), error = %e, "Cannot read replaced dependencies; using the labels' set.");
            return None;
        }
    };
    match serde_json::from_slice::<DependenciesRequest>(&raw) {
        Ok(r) if r.validate().is_ok() => Some(r.dependencies),
        _ => {
            tracing::error!(path = %p.display(), "Unreadable replaced dependencies; using the labels' set.");
            None
        }
    }
}

/// Writes the file atomically, mode 0600.
fn store(data_dir: &Path, id: &ContainerId, deps: &[Dependency]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let p = path(data_dir, id);
    let dir = p.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("dependencies.json.tmp");
    let body = serde_json::to_vec(&DependenciesRequest {
        dependencies: deps.to_vec(),
    })
    .expect("dependencies serialise");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)
}

impl Supervisor {
    /// Replaces the dependencies of a running container: persisted, then installed (one transaction),
    /// then the connections the new rules refuse are cut. Waits for a deploy of the container in flight.
    pub async fn replace_dependencies(
        &self,
        id: &ContainerId,
        req: DependenciesRequest,
    ) -> Result<ContainerInfo, ApiError> {
        req.validate()?;
        let not_found = || ApiError::NotFound(id.to_string());
        let op = self
            .lock()
            .entries
            .get(id)
            .map(|e| e.op.clone())
            .ok_or_else(not_found)?;
        let _guard = op.lock().await;
        let before = self
            .lock()
            .entries
            .get(id)
            .map(|e| e.deployed.dependencies.clone())
            .ok_or_else(not_found)?;
        store(&self.cfg.data_dir, id, &req.dependencies).map_err(|e| {
            ApiError::Internal(format!("cannot persist the dependencies of {id}: {e}"))
        })?;
        match self.lock().entries.get_mut(id) {
            Some(e) => e.deployed.dependencies = req.dependencies.clone(),
            None => return Err(not_found()),
        }
        let name = |d: &[Dependency]| {
            d.iter()
                .map(|d| format!("{}={}:{}", d.name, d.address, d.port))
                .collect::<Vec<_>>()
        };
        tracing::info!(container = %id, before = ?name(&before), after = ?name(&req.dependencies), "Dependencies replaced.");
        // On failure the new set is in place for the reconcile loop, which installs it.
        self.sync_firewall().await?;
        self.info(id).ok_or_else(not_found)
    }
}
