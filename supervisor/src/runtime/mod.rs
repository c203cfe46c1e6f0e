//! The container runtime seam: what the supervisor needs from a container engine.
//!
//! [`ContainerRuntime`] is held as `Arc<dyn ContainerRuntime>`; [`docker::DockerRuntime`] implements it
//! over the Docker Engine API with bollard. Everything the supervisor decides (limits, hardening, labels,
//! ports, address) is in [`CreateSpec`]; the runtime only carries it out.

pub mod docker;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image does not exist locally and cannot be pulled (unknown repository, tag or digest).
    #[error("image {image} not found: {message}")]
    ImageNotFound { image: String, message: String },
    /// The container does not exist.
    #[error("container {0} not found")]
    NotFound(String),
    /// A container with that name exists already.
    #[error("container {0} already exists")]
    Conflict(String),
    /// The call did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// Any other engine error.
    #[error("docker: {0}")]
    Engine(String),
}

/// Everything needed to create one container.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Container name (the Atlantis ID).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command, or the image's default.
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Memory limit in bytes (swap is set equal: no swap).
    pub memory_bytes: i64,
    /// CPU limit in billionths of a core.
    pub nano_cpus: i64,
    /// PID limit.
    pub pids_limit: i64,
    /// (container port, host address, host port), TCP.
    pub ports: Vec<(u16, Ipv4Addr, u16)>,
    /// Network to join, and the fixed address on it.
    pub network: String,
    /// Address on `network`.
    pub ip: Ipv4Addr,
    /// Bind mounts `host:container:ro`.
    pub binds: Vec<String>,
    /// Read-only root filesystem.
    pub read_only_rootfs: bool,
    /// Capabilities added after dropping all.
    pub cap_add: Vec<String>,
    /// Restart policy name.
    pub restart_policy: String,
    /// SIGTERM to SIGKILL grace on stop.
    pub stop_timeout: Duration,
    /// Namespaced kernel settings of the container (`net.ipv4.ping_group_range`...).
    pub sysctls: HashMap<String, String>,
}

/// A container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Engine ID.
    pub id: String,
    /// Name, without the leading '/'.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Running now.
    pub running: bool,
    /// Being restarted by its policy.
    pub restarting: bool,
    /// The engine's status word (`running`, `exited`, ...).
    pub status: String,
    /// Exit code of the last run.
    pub exit_code: Option<i64>,
    /// How often the engine restarted it (restart policy).
    pub restart_count: i64,
}

/// Limits and hardening as the engine applied them (from inspect).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppliedLimits {
    /// Memory limit, bytes.
    pub memory: i64,
    /// Memory + swap limit, bytes.
    pub memory_swap: i64,
    /// CPU limit, billionths of a core.
    pub nano_cpus: i64,
    /// PID limit.
    pub pids_limit: i64,
    /// Dropped capabilities.
    pub cap_drop: Vec<String>,
    /// Security options.
    pub security_opt: Vec<String>,
    /// Read-only root filesystem.
    pub read_only_rootfs: bool,
}

/// A lifecycle event of an Atlantis container, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// Container name (the Atlantis ID).
    pub name: String,
    /// `start`, `die`, `oom` or `destroy`.
    pub action: String,
    /// Exit code, for `die`.
    pub exit_code: Option<i64>,
}

/// The engine operations the supervisor uses.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Creates the bridge network `name` with `subnet/prefix_len` (gateway `.1`) unless it exists.
    async fn ensure_network(
        &self,
        name: &str,
        subnet: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), RuntimeError>;
    /// Makes `image` available locally, pulling it when missing.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError>;
    /// Creates a container and returns its engine ID.
    async fn create(&self, spec: &CreateSpec) -> Result<String, RuntimeError>;
    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops a container: SIGTERM, then SIGKILL after `timeout`.
    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Removes a container (forced) with its anonymous volumes. Missing is not an error.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Inspects one container by ID or name.
    async fn inspect(&self, id: &str) -> Result<Option<Observed>, RuntimeError>;
    /// The limits the engine applied to a container.
    async fn limits(&self, id: &str) -> Result<AppliedLimits, RuntimeError>;
    /// Every container (running or not) carrying label `key=value`.
    async fn list_labelled(&self, key: &str, value: &str) -> Result<Vec<Observed>, RuntimeError>;
    /// The container's output (stdout and stderr, interleaved); with `follow` the stream lasts as long
    /// as the container runs. `tail` bounds the history sent first.
    fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: u32,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>>;
    /// Lifecycle events (start, die, oom, destroy) of containers labelled `atlantis.managed=true`, from now
    /// on, until the connection drops.
    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;
    /// Runs `argv` in the running container `id` (no shell, no TTY, no stdin): its output as it comes,
    /// then `Exit` (the process is killed after `timeout`) or `Error`. See `docker/exec.rs`.
    async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<BoxStream<'static, atlantis_common::api::exec::ExecEvent>, RuntimeError> {
        let _ = (id, argv, timeout);
        Err(RuntimeError::Engine(
            "this runtime cannot run commands in containers".into(),
        ))
    }
}
