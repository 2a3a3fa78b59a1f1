//! The engine boundary: every call the docker runtime makes to the
//! container engine goes through the [`Engine`] trait, so the runtime's
//! logic (Adopt & Sync, the janitor, starts, events) runs against
//! [`BollardEngine`] in the agent and against a recording fake in tests
//! (`fake` module, feature `test-util`).
//!
//! Owns: translating between the engine's API (bollard models) and the
//! few facts the runtime needs (container state, IP, image config, events).
//! Must not: decide anything (which container to keep, what to start).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, LogsOptions,
    PruneNetworksOptions, RemoveContainerOptions,
};
use bytes::Bytes;
use esb_runtimes_core::launch::ImageConfig;
use futures_util::{Stream, StreamExt};

/// An engine call that failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The Docker Engine API answered with an error or could not be reached.
    #[error(transparent)]
    Docker(#[from] bollard::errors::Error),
    /// Anything else (fakes, missing data in an answer).
    #[error("{0}")]
    Other(String),
}

/// A container of this instance as listed by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Whether it is running.
    pub running: bool,
    /// Its address on its network, if it has one.
    pub ip: Option<IpAddr>,
}

/// What the runtime needs to know about an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// ENTRYPOINT, CMD, WORKDIR and the `io.esb.runtime` label.
    pub config: ImageConfig,
    /// One of ESB's base images (it has the unprivileged user 993).
    pub esb_image: bool,
    /// `io.esb.awslambdaric=yes`: the image's Python can import it.
    pub awslambdaric: bool,
}

/// A container event (`die`, `oom`, `destroy`) with its actor's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    /// The action (`die`, `oom`, `destroy`).
    pub action: String,
    /// The container's attributes (its labels among them).
    pub attributes: HashMap<String, String>,
}

/// A stream of engine events; ends when the engine connection does.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<EngineEvent, EngineError>> + Send>>;
/// A container's combined output, chunk by chunk.
pub type LogStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// The container engine operations the docker runtime uses.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Checks the engine answers.
    async fn ping(&self) -> Result<(), EngineError>;
    /// Every container (running or not) carrying `label` (`key=value`).
    async fn list_containers(&self, label: &str) -> Result<Vec<ContainerState>, EngineError>;
    /// Creates a container; returns its id.
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError>;
    /// Starts a created container; returns its address on its network.
    async fn start_container(&self, id: &str) -> Result<Option<IpAddr>, EngineError>;
    /// Removes a container and its anonymous volumes, killing it first.
    async fn remove_container(&self, id: &str) -> Result<(), EngineError>;
    /// An image's configuration; an error when the image is not there.
    async fn image_facts(&self, image: &str) -> Result<ImageFacts, EngineError>;
    /// The gateway address of network `name`; an error when it does not
    /// exist, `None` when it has no gateway.
    async fn network_gateway(&self, name: &str) -> Result<Option<IpAddr>, EngineError>;
    /// Creates a bridge network with labels.
    async fn create_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError>;
    /// Removes a network (refused while containers use it).
    async fn remove_network(&self, name: &str) -> Result<(), EngineError>;
    /// Removes unused networks carrying `label` (a key).
    async fn prune_networks(&self, label: &str) -> Result<(), EngineError>;
    /// Container events (`die`, `oom`, `destroy`) of containers with
    /// `label` (`key=value`).
    fn events(&self, label: &str) -> EventStream;
    /// Follows a container's stdout and stderr.
    fn logs(&self, id: &str) -> LogStream;
    /// The bollard client for image builds and imports; `None` for fakes.
    fn docker(&self) -> Option<Docker> {
        None
    }
    /// The cgroup parent for worker containers (`HostConfig.CgroupParent`),
    /// or `None` for the engine's default. See
    /// [`BollardEngine::worker_cgroup_parent`].
    async fn worker_cgroup_parent(&self) -> Option<String> {
        None
    }
}

/// The real engine: the Docker Engine API through bollard.
#[derive(Debug, Clone)]
pub struct BollardEngine {
    docker: Docker,
}

impl BollardEngine {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket),
    /// negotiating the API version.
    pub async fn connect() -> Result<Self, EngineError> {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        Ok(Self { docker })
    }
}

fn label_filter(label: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![label.to_string()])])
}

#[async_trait::async_trait]
impl Engine for BollardEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await?;
        Ok(())
    }

    async fn list_containers(&self, label: &str) -> Result<Vec<ContainerState>, EngineError> {
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filter(label)),
                ..Default::default()
            }))
            .await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let ip = c
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .and_then(|n| {
                        n.values()
                            .find_map(|e| e.ip_address.as_deref().and_then(|ip| ip.parse().ok()))
                    });
                Some(ContainerState {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                    running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                    ip,
                })
            })
            .collect())
    }

    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await?;
        Ok(created.id)
    }

    async fn start_container(&self, id: &str) -> Result<Option<IpAddr>, EngineError> {
        self.docker.start_container(id, None).await?;
        let inspect = self.docker.inspect_container(id, None).await?;
        Ok(inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| {
                n.values()
                    .find_map(|e| e.ip_address.as_deref().and_then(|ip| ip.parse().ok()))
            }))
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await?;
        Ok(())
    }

    async fn image_facts(&self, image: &str) -> Result<ImageFacts, EngineError> {
        let inspect = self.docker.inspect_image(image).await?;
        let config = inspect.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        Ok(ImageFacts {
            config: ImageConfig {
                entrypoint: config.entrypoint.unwrap_or_default(),
                cmd: config.cmd.unwrap_or_default(),
                working_dir: config.working_dir.filter(|w| !w.is_empty()),
                esb_runtime: labels.get("io.esb.runtime").cloned(),
            },
            esb_image: labels.contains_key("io.esb.runtime"),
            awslambdaric: labels.get("io.esb.awslambdaric").map(String::as_str) == Some("yes"),
        })
    }

    async fn network_gateway(&self, name: &str) -> Result<Option<IpAddr>, EngineError> {
        let network = self.docker.inspect_network(name, None).await?;
        Ok(network
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway))
            .and_then(|g| g.parse().ok()))
    }

    async fn create_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".to_string()),
                labels: Some(labels),
                // No traffic between containers: a function could otherwise
                // call another function's supervisor directly (invoke it
                // past every check, read its output stream). The host side
                // (esb, the agent's relays and published ports) still
                // reaches every container, and they reach it.
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.enable_icc".to_string(),
                    "false".to_string(),
                )])),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        self.docker.remove_network(name).await?;
        Ok(())
    }

    async fn prune_networks(&self, label: &str) -> Result<(), EngineError> {
        self.docker
            .prune_networks(Some(PruneNetworksOptions {
                filters: Some(label_filter(label)),
            }))
            .await?;
        Ok(())
    }

    fn events(&self, label: &str) -> EventStream {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![label.to_string()]),
            (
                "event".to_string(),
                vec!["die".to_string(), "oom".to_string(), "destroy".to_string()],
            ),
        ]);
        let stream = self.docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        Box::pin(stream.map(|event| {
            let event = event?;
            Ok(EngineEvent {
                action: event.action.unwrap_or_default(),
                attributes: event.actor.and_then(|a| a.attributes).unwrap_or_default(),
            })
        }))
    }

    fn logs(&self, id: &str) -> LogStream {
        let stream = self.docker.logs(
            id,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        Box::pin(
            stream
                .take_while(|chunk| std::future::ready(chunk.is_ok()))
                .filter_map(|chunk| std::future::ready(chunk.ok().map(|c| c.into_bytes()))),
        )
    }

    /// `/` with the `cgroupfs` driver: each worker container's cgroup
    /// sits at the top of the hierarchy (removed with the container), so
    /// it competes for CPU like any process on the host, as a worker of
    /// the process runtime does. Under the engine's default parent
    /// (`/docker`, one cgroup of weight 1024 for every container on the
    /// host) all workers together get one process's share: on a busy host
    /// they starve (c8 33 req/s against 309 with the weight lifted, in a
    /// debug build at load 19). The systemd driver wants a slice name and
    /// gives each container its own scope already: `None` there.
    async fn worker_cgroup_parent(&self) -> Option<String> {
        let info = self.docker.info().await.ok()?;
        (info.cgroup_driver == Some(bollard::models::SystemInfoCgroupDriverEnum::CGROUPFS))
            .then(|| "/".to_string())
    }

    fn docker(&self) -> Option<Docker> {
        Some(self.docker.clone())
    }
}
