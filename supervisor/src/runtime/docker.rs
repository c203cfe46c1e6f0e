//! [`DockerRuntime`]: the [`ContainerRuntime`] over the Docker Engine API (bollard, unix socket).
//!
//! Every container is created hardened: all capabilities dropped (plus the configured few added back),
//! `no-new-privileges`, memory limit with swap equal to it (no swap), CPU and PID limits, a restart
//! policy, no Docker socket, optional read-only root filesystem (then `/tmp` is a small tmpfs).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    InspectNetworkOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};

use super::{AppliedLimits, ContainerRuntime, CreateSpec, Observed, RuntimeError, RuntimeEvent};

/// The Docker Engine runtime.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    pull_timeout: Duration,
    auth: Option<(String, bollard::auth::DockerCredentials)>,
}

impl DockerRuntime {
    /// Connects to the engine at `socket` and negotiates the API version.
    pub async fn connect(
        socket: &std::path::Path,
        api_timeout: Duration,
        pull_timeout: Duration,
    ) -> Result<DockerRuntime, RuntimeError> {
        let path = socket
            .to_str()
            .ok_or_else(|| RuntimeError::Engine("socket path is not UTF-8".into()))?;
        let docker = Docker::connect_with_unix(
            path,
            api_timeout.as_secs().max(1),
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(map_err)?;
        let docker = docker.negotiate_version().await.map_err(map_err)?;
        Ok(DockerRuntime {
            docker,
            pull_timeout,
            auth: None,
        })
    }

    /// Pulls from `server` (the host part of image references) with basic-auth credentials.
    pub fn with_registry_auth(mut self, server: &str, username: &str, password: &str) -> Self {
        let creds = bollard::auth::DockerCredentials {
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            serveraddress: Some(server.to_owned()),
            ..Default::default()
        };
        self.auth = Some((server.to_owned(), creds));
        self
    }

    /// The credentials for `image`, when it lives on the configured registry.
    fn credentials_for(&self, image: &str) -> Option<bollard::auth::DockerCredentials> {
        let (server, creds) = self.auth.as_ref()?;
        let host = image.split('/').next()?;
        (image.contains('/') && host == server).then(|| creds.clone())
    }
}

pub(super) fn map_err(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict(message),
        BollardError::RequestTimeoutError => RuntimeError::Timeout {
            what: "docker API call".into(),
            after: Duration::ZERO,
        },
        other => RuntimeError::Engine(other.to_string()),
    }
}

fn observed(
    id: String,
    name: String,
    labels: HashMap<String, String>,
    state: Option<bollard::models::ContainerState>,
    restart_count: Option<i64>,
) -> Observed {
    let state = state.unwrap_or_default();
    Observed {
        id,
        name: name.trim_start_matches('/').to_owned(),
        labels,
        running: state.running.unwrap_or(false),
        restarting: state.restarting.unwrap_or(false),
        status: state.status.map(|s| s.to_string()).unwrap_or_default(),
        exit_code: state.exit_code,
        restart_count: restart_count.unwrap_or(0),
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn ensure_network(
        &self,
        name: &str,
        subnet: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), RuntimeError> {
        match self
            .docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(map_err(e)),
        }
        let gateway = Ipv4Addr::from(u32::from(subnet) + 1);
        let req = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{subnet}/{prefix_len}")),
                    gateway: Some(gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            )])),
            labels: Some(HashMap::from([(
                crate::labels::MANAGED.to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => Ok(()),
            // Created concurrently by someone else: fine.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(map_err(e)),
        }
        let opts = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pull = async {
            let mut s = self
                .docker
                .create_image(Some(opts), None, self.credentials_for(image));
            while let Some(item) = s.next().await {
                match item {
                    Ok(_) => {}
                    Err(BollardError::DockerResponseServerError {
                        status_code: 404,
                        message,
                    }) => {
                        return Err(RuntimeError::ImageNotFound {
                            image: image.to_owned(),
                            message,
                        });
                    }
                    Err(BollardError::DockerStreamError { error }) if looks_missing(&error) => {
                        return Err(RuntimeError::ImageNotFound {
                            image: image.to_owned(),
                            message: error,
                        });
                    }
                    Err(BollardError::DockerResponseServerError { message, .. })
                        if looks_missing(&message) =>
                    {
                        return Err(RuntimeError::ImageNotFound {
                            image: image.to_owned(),
                            message,
                        });
                    }
                    Err(e) => return Err(RuntimeError::Engine(format!("pulling {image}: {e}"))),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.pull_timeout, pull).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(RuntimeError::Timeout {
                    what: format!("pulling {image}"),
                    after: self.pull_timeout,
                });
            }
        }
        // A pull that "succeeds" without the image (odd registries) is still a missing image.
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) => Err(RuntimeError::ImageNotFound {
                image: image.to_owned(),
                message,
            }),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn create(&self, spec: &CreateSpec) -> Result<String, RuntimeError> {
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .ports
            .iter()
            .map(|(cport, ip, hport)| {
                (
                    format!("{cport}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some(ip.to_string()),
                        host_port: Some(hport.to_string()),
                    }]),
                )
            })
            .collect();
        let restart = match spec.restart_policy.as_str() {
            "always" => RestartPolicyNameEnum::ALWAYS,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            "no" => RestartPolicyNameEnum::NO,
            _ => RestartPolicyNameEnum::UNLESS_STOPPED,
        };
        let host_config = HostConfig {
            memory: Some(spec.memory_bytes),
            memory_swap: Some(spec.memory_bytes),
            nano_cpus: Some(spec.nano_cpus),
            pids_limit: Some(spec.pids_limit),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(spec.read_only_rootfs),
            tmpfs: spec.read_only_rootfs.then(|| {
                HashMap::from([("/tmp".to_owned(), "rw,noexec,nosuid,size=16m".to_owned())])
            }),
            binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
            port_bindings: Some(port_bindings),
            restart_policy: Some(RestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            network_mode: Some(spec.network.clone()),
            privileged: Some(false),
            init: Some(false),
            sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.clone()),
            ..Default::default()
        };
        let endpoint = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(spec.ip.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: Some(
                spec.ports
                    .iter()
                    .map(|(p, _, _)| format!("{p}/tcp"))
                    .collect(),
            ),
            hostname: None,
            stop_timeout: Some(spec.stop_timeout.as_secs() as i64),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(spec.network.clone(), endpoint)])),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let r = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| match map_err(e) {
                RuntimeError::NotFound(m) => RuntimeError::ImageNotFound {
                    image: spec.image.clone(),
                    message: m,
                },
                other => other,
            })?;
        Ok(r.id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(map_err)
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let opts = StopContainerOptionsBuilder::default()
            .t(timeout.as_secs() as i32)
            .build();
        match self.docker.stop_container(id, Some(opts)).await {
            // 304: already stopped.
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn inspect(&self, id: &str) -> Result<Option<Observed>, RuntimeError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(observed(
                c.id.unwrap_or_default(),
                c.name.unwrap_or_default(),
                c.config.and_then(|c| c.labels).unwrap_or_default(),
                c.state,
                c.restart_count,
            ))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn limits(&self, id: &str) -> Result<AppliedLimits, RuntimeError> {
        let c = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(map_err)?;
        let h = c.host_config.unwrap_or_default();
        Ok(AppliedLimits {
            memory: h.memory.unwrap_or(0),
            memory_swap: h.memory_swap.unwrap_or(0),
            nano_cpus: h.nano_cpus.unwrap_or(0),
            pids_limit: h.pids_limit.unwrap_or(0),
            cap_drop: h.cap_drop.unwrap_or_default(),
            security_opt: h.security_opt.unwrap_or_default(),
            read_only_rootfs: h.readonly_rootfs.unwrap_or(false),
        })
    }

    async fn list_labelled(&self, key: &str, value: &str) -> Result<Vec<Observed>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{key}={value}")])]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(map_err)?;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let Some(id) = c.id else { continue };
            // The summary has no exit code or restart flag: inspect each (the list is one host's worth).
            if let Some(o) = self.inspect(&id).await? {
                out.push(o);
            }
        }
        Ok(out)
    }

    fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: u32,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let opts = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        self.docker
            .logs(id, Some(opts))
            .map_ok(|l| l.into_bytes())
            .map_err(map_err)
            .boxed()
    }

    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "label".to_owned(),
                vec![format!("{}=true", crate::labels::MANAGED)],
            ),
            (
                "event".to_owned(),
                ["start", "die", "oom", "destroy"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        let opts = bollard::query_parameters::EventsOptionsBuilder::default()
            .filters(&filters)
            .build();
        self.docker
            .events(Some(opts))
            .map_err(map_err)
            .try_filter_map(|m| async move {
                let attrs = m.actor.and_then(|a| a.attributes).unwrap_or_default();
                let (Some(action), Some(name)) = (m.action, attrs.get("name").cloned()) else {
                    return Ok(None);
                };
                let exit_code = attrs.get("exitCode").and_then(|c| c.parse().ok());
                Ok(Some(RuntimeEvent {
                    name,
                    action,
                    exit_code,
                }))
            })
            .boxed()
    }

    async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<BoxStream<'static, atlantis_common::api::exec::ExecEvent>, RuntimeError> {
        exec::run(&self.docker, id, argv, timeout).await
    }
}

mod exec;

/// True for pull errors that mean "no such image" rather than "registry trouble".
fn looks_missing(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "manifest unknown",
        "not found",
        "does not exist",
        "pull access denied",
        "name unknown",
    ]
    .iter()
    .any(|k| m.contains(k))
}
