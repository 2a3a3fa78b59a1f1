//! The containerd engine of the agent (`esb agent --engine containerd`,
//! `esb up --runtime containerd`): a second implementation of the docker
//! runtime's [`Engine`] trait that drives containerd directly through its
//! gRPC API (`containerd-client`), in its own namespace (`esb` by
//! default, never `moby` or `k8s.io`). Everything above the trait — Adopt
//! & Sync, the janitor, the ready spare, the clean stop, the relays, the
//! agent's gRPC service — is the docker runtime's, unchanged.
//!
//! Owns, one file each: the create request → OCI runtime spec mapping
//! with the docker runtime's hardening ([`spec`]), the instance network
//! containerd does not provide (bridge, per-container network namespace
//! and veth pair, [`net`]), images in the namespace (content store,
//! snapshots, imports, [`image`]), and here the calls themselves:
//! containers, tasks, events, output.
//!
//! Container output: tasks write stdout and stderr to a file under the
//! engine's state directory (`file://` stdio URIs, so no FIFO needs a
//! reader), followed by [`ContainerdEngine::logs`] and removed with the
//! container.
//!
//! Must not: be linked by anything but the agent (`esb-agent`), as with
//! bollard; decide anything (which container to keep, what to start).
#![forbid(unsafe_code)]

pub mod image;
pub mod net;
pub mod spec;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bytes::Bytes;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest,
    StartRequest, SubscribeRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use esb_runtimes_core::launch::ImageConfig;
use esb_runtimes_docker::engine::{
    ContainerState, Engine, EngineError, EngineEvent, EventStream, ImageFacts, LogStream,
};
use futures_util::StreamExt;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Default containerd socket.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// Default namespace.
pub const DEFAULT_NAMESPACE: &str = "esb";
/// Label carrying a container's address on its network.
pub const LABEL_IP: &str = "io.esb.containerd.ip";
/// Label carrying the network a container is attached to.
pub const LABEL_NETWORK: &str = "io.esb.containerd.network";

const RUNTIME: &str = "io.containerd.runc.v2";
/// How long a container without a running task counts as starting.
const STARTING_GRACE_SECS: i64 = 60;
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A containerd engine failure.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket could not be reached.
    #[error("containerd at {address}: {source}")]
    Connect {
        /// Socket path.
        address: String,
        /// Transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("containerd: {0}")]
    Call(#[from] tonic::Status),
    /// The container spec could not be built.
    #[error("container spec: {0}")]
    Spec(String),
    /// An image could not be found, imported or unpacked.
    #[error("image: {0}")]
    Image(String),
    /// The instance network could not be set up.
    #[error("network: {0}")]
    Network(String),
    /// A local file (logs, hosts) could not be written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<ContainerdError> for EngineError {
    fn from(e: ContainerdError) -> Self {
        EngineError::Other(e.to_string())
    }
}

/// Where and how to reach containerd.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// Socket path (`--containerd-address`).
    pub address: PathBuf,
    /// Namespace.
    pub namespace: String,
    /// Snapshotter (`overlayfs`).
    pub snapshotter: String,
    /// Directory for container output and `/etc/hosts` files.
    pub state_dir: PathBuf,
}

impl ContainerdOptions {
    /// Defaults for a socket path.
    pub fn new(address: impl Into<PathBuf>) -> Self {
        Self {
            address: address.into(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            snapshotter: "overlayfs".to_string(),
            state_dir: PathBuf::from("/run/esb-containerd"),
        }
    }
}

struct Inner {
    channel: Channel,
    options: ContainerdOptions,
    docker: Option<bollard::Docker>,
    /// Serializes network creation and address allocation.
    net_lock: tokio::sync::Mutex<()>,
    /// Serializes layer unpacking.
    unpack_lock: tokio::sync::Mutex<()>,
    /// Serializes image imports.
    import_lock: tokio::sync::Mutex<()>,
    /// Labels of containers seen, for events of containers already gone.
    labels: Mutex<HashMap<String, HashMap<String, String>>>,
}

/// The [`Engine`] over containerd's gRPC API.
#[derive(Clone)]
pub struct ContainerdEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ContainerdEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdEngine")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(e: &tonic::Status) -> bool {
    e.code() == Code::NotFound
}

impl ContainerdEngine {
    /// Connects to containerd at `options.address`. A Docker engine that
    /// answers (`DOCKER_HOST` or the default socket) is kept for image
    /// builds and as the source of images missing from the namespace.
    pub async fn connect(options: ContainerdOptions) -> Result<Self, ContainerdError> {
        let channel = containerd_client::connect(&options.address)
            .await
            .map_err(|source| ContainerdError::Connect {
                address: options.address.display().to_string(),
                source,
            })?;
        std::fs::create_dir_all(&options.state_dir)?;
        let docker = match bollard::Docker::connect_with_local_defaults() {
            Ok(d) => {
                match tokio::time::timeout(Duration::from_secs(3), d.negotiate_version()).await {
                    Ok(Ok(d)) => Some(d),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                channel,
                options,
                docker,
                net_lock: tokio::sync::Mutex::new(()),
                unpack_lock: tokio::sync::Mutex::new(()),
                import_lock: tokio::sync::Mutex::new(()),
                labels: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub(crate) fn client(&self) -> containerd_client::Client {
        containerd_client::Client::from(self.inner.channel.clone())
    }

    /// A request in this engine's namespace.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(ns) = self.inner.options.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", ns);
        }
        request
    }

    pub(crate) fn snapshotter(&self) -> &str {
        &self.inner.options.snapshotter
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.inner.options.namespace
    }

    pub(crate) fn docker(&self) -> Option<bollard::Docker> {
        self.inner.docker.clone()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.inner.options.state_dir.join(format!("{id}.log"))
    }

    fn hosts_path(&self, id: &str) -> PathBuf {
        self.inner.options.state_dir.join(format!("{id}.hosts"))
    }

    async fn containers_with(&self, filter: &str) -> Result<Vec<Container>, ContainerdError> {
        Ok(self
            .client()
            .containers()
            .list(self.request(ListContainersRequest {
                filters: vec![filter.to_string()],
            }))
            .await?
            .into_inner()
            .containers)
    }

    async fn task_status(&self, id: &str) -> Result<Option<TaskStatus>, ContainerdError> {
        match self
            .client()
            .tasks()
            .get(self.request(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r
                .into_inner()
                .process
                .and_then(|p| TaskStatus::try_from(p.status).ok())),
            Err(s) if not_found(&s) => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    async fn allocate_address(
        &self,
        network: &str,
        gateway: Ipv4Addr,
    ) -> Result<Ipv4Addr, ContainerdError> {
        let filter = format!("labels.\"{LABEL_NETWORK}\"=={network}");
        let used: Vec<IpAddr> = self
            .containers_with(&filter)
            .await?
            .iter()
            .filter_map(|c| c.labels.get(LABEL_IP)?.parse().ok())
            .collect();
        net::pick_address(gateway, &used)
            .ok_or_else(|| ContainerdError::Network(format!("network {network} is full")))
    }

    async fn create(&self, id: &str, body: ContainerCreateBody) -> Result<(), ContainerdError> {
        let image_name = body
            .image
            .clone()
            .ok_or_else(|| ContainerdError::Spec("no image".to_string()))?;
        let image = self.resolve_image(&image_name).await?;
        let host = body.host_config.clone().unwrap_or_default();
        let mut labels = spec::labels(&body);
        // The network: a namespace with an address on the instance bridge.
        let mut netns = None;
        if let Some(network) = host.network_mode.clone().filter(|n| n.starts_with("esb-")) {
            let _guard = self.inner.net_lock.lock().await;
            let gateway = match net::gateway(&network).await? {
                Some(IpAddr::V4(g)) => g,
                _ => {
                    return Err(ContainerdError::Network(format!(
                        "network {network} has no IPv4 gateway"
                    )));
                }
            };
            let addr = self.allocate_address(&network, gateway).await?;
            netns = Some(net::attach(&network, id, addr, gateway).await?);
            labels.insert(LABEL_IP.to_string(), addr.to_string());
            labels.insert(LABEL_NETWORK.to_string(), network.clone());
            // Reserve the address before the lock goes: the container
            // record carries it from here on.
            let result = self
                .create_records(id, &body, &image, netns.clone(), labels.clone())
                .await;
            if result.is_err() {
                net::detach(id).await;
            }
            return result;
        }
        self.create_records(id, &body, &image, netns, labels).await
    }

    async fn create_records(
        &self,
        id: &str,
        body: &ContainerCreateBody,
        image: &image::ResolvedImage,
        netns: Option<PathBuf>,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let extra_hosts = body
            .host_config
            .as_ref()
            .and_then(|h| h.extra_hosts.clone())
            .unwrap_or_default();
        let hosts = self.hosts_path(id);
        std::fs::write(&hosts, spec::hosts_file(id, &extra_hosts))?;
        let paths = spec::HostPaths {
            netns,
            hosts_file: Some(hosts.clone()),
        };
        let spec = spec::worker_spec(id, body, &image.defaults, &paths)?;
        let spec_json =
            serde_json::to_vec(&spec).map_err(|e| ContainerdError::Spec(e.to_string()))?;
        let container = Container {
            id: id.to_string(),
            labels: labels.clone(),
            image: body.image.clone().unwrap_or_default(),
            runtime: Some(Runtime {
                name: RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE.to_string(),
                value: spec_json,
            }),
            snapshotter: self.snapshotter().to_string(),
            snapshot_key: id.to_string(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        // The container record first, then its snapshot: containerd's
        // garbage collector removes a snapshot nothing references, and it
        // runs shortly after removals (another container's), so a snapshot
        // prepared before its record could vanish in between ("snapshot …
        // does not exist" at start). The record names the key, which
        // protects the snapshot from the moment it exists.
        if let Err(e) = self
            .client()
            .containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
        {
            let _ = std::fs::remove_file(&hosts);
            return Err(e.into());
        }
        if let Err(e) = self
            .client()
            .snapshots()
            .prepare(self.request(PrepareSnapshotRequest {
                snapshotter: self.snapshotter().to_string(),
                key: id.to_string(),
                parent: image.chain_id.clone(),
                labels: HashMap::new(),
            }))
            .await
        {
            let _ = self
                .client()
                .containers()
                .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
                .await;
            let _ = std::fs::remove_file(&hosts);
            return Err(e.into());
        }
        lock(&self.inner.labels).insert(id.to_string(), labels);
        Ok(())
    }

    async fn remove_snapshot(&self, id: &str) {
        let _ = self
            .client()
            .snapshots()
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: self.snapshotter().to_string(),
                key: id.to_string(),
            }))
            .await;
    }

    async fn start(&self, id: &str) -> Result<Option<IpAddr>, ContainerdError> {
        let container = self
            .client()
            .containers()
            .get(self.request(GetContainerRequest { id: id.to_string() }))
            .await?
            .into_inner()
            .container
            .ok_or_else(|| ContainerdError::Spec(format!("container {id} not found")))?;
        let rootfs = self
            .client()
            .snapshots()
            .mounts(self.request(MountsRequest {
                snapshotter: container.snapshotter.clone(),
                key: container.snapshot_key.clone(),
            }))
            .await?
            .into_inner()
            .mounts;
        let log = format!("file://{}", self.log_path(id).display());
        self.client()
            .tasks()
            .create(self.request(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdin: String::new(),
                stdout: log.clone(),
                stderr: log,
                terminal: false,
                checkpoint: None,
                options: None,
                runtime_path: String::new(),
            }))
            .await?;
        self.client()
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await?;
        Ok(container
            .labels
            .get(LABEL_IP)
            .and_then(|ip| ip.parse().ok()))
    }

    async fn remove(&self, id: &str) -> Result<(), ContainerdError> {
        let tasks = self.client().tasks();
        match self.task_status(id).await? {
            Some(TaskStatus::Stopped) | None => {}
            Some(_) => {
                let killed = tasks
                    .clone()
                    .kill(self.request(KillRequest {
                        container_id: id.to_string(),
                        exec_id: String::new(),
                        signal: 9,
                        all: true,
                    }))
                    .await;
                if let Err(e) = killed
                    && !not_found(&e)
                {
                    tracing::debug!("kill {id}: {e}");
                }
                let mut waiter = tasks.clone();
                let wait = waiter.wait(self.request(WaitRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                }));
                let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
            }
        }
        match tasks
            .clone()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
        {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        match self
            .client()
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        self.remove_snapshot(id).await;
        net::detach(id).await;
        let _ = std::fs::remove_file(self.log_path(id));
        let _ = std::fs::remove_file(self.hosts_path(id));
        Ok(())
    }

    async fn labels_of(&self, id: &str) -> HashMap<String, String> {
        if let Some(labels) = lock(&self.inner.labels).get(id) {
            return labels.clone();
        }
        match self
            .client()
            .containers()
            .get(self.request(GetContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .container
                .map(|c| c.labels)
                .unwrap_or_default(),
            Err(_) => HashMap::new(),
        }
    }
}

fn parse_label(label: &str) -> (String, Option<String>) {
    match label.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (label.to_string(), None),
    }
}

/// containerd's filter syntax for "has label `k=v`" (or "has label `k`").
fn label_filter(label: &str) -> String {
    match parse_label(label) {
        (k, Some(v)) => format!("labels.\"{k}\"=={v}"),
        (k, None) => format!("labels.\"{k}\""),
    }
}

#[async_trait::async_trait]
impl Engine for ContainerdEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        self.client()
            .version()
            .version(())
            .await
            .map_err(ContainerdError::from)?;
        Ok(())
    }

    async fn list_containers(&self, label: &str) -> Result<Vec<ContainerState>, EngineError> {
        let containers = self.containers_with(&label_filter(label)).await?;
        let mut out = Vec::new();
        for c in containers {
            let status = self.task_status(&c.id).await?;
            // A container whose task is still being created or started
            // counts as running for a minute: its start call owns it, and
            // the janitor must not take it for a stopped one (a worker
            // that never answers is still removed by its health check).
            let starting = matches!(status, None | Some(TaskStatus::Created))
                && c.created_at.as_ref().is_some_and(|t| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0);
                    now - t.seconds < STARTING_GRACE_SECS
                });
            let running = status == Some(TaskStatus::Running) || starting;
            lock(&self.inner.labels).insert(c.id.clone(), c.labels.clone());
            out.push(ContainerState {
                ip: c.labels.get(LABEL_IP).and_then(|ip| ip.parse().ok()),
                id: c.id,
                labels: c.labels,
                running,
            });
        }
        Ok(out)
    }

    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        self.create(name, body).await?;
        Ok(name.to_string())
    }

    async fn start_container(&self, id: &str) -> Result<Option<IpAddr>, EngineError> {
        Ok(self.start(id).await?)
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        self.remove(id).await?;
        lock(&self.inner.labels).remove(id);
        Ok(())
    }

    async fn image_facts(&self, image: &str) -> Result<ImageFacts, EngineError> {
        let resolved = self.resolve_image(image).await?;
        Ok(ImageFacts {
            config: ImageConfig {
                entrypoint: resolved.defaults.entrypoint.clone(),
                cmd: resolved.defaults.cmd.clone(),
                working_dir: resolved.defaults.working_dir.clone(),
                esb_runtime: resolved.labels.get("io.esb.runtime").cloned(),
            },
            esb_image: resolved.labels.contains_key("io.esb.runtime"),
            awslambdaric: resolved
                .labels
                .get("io.esb.awslambdaric")
                .map(String::as_str)
                == Some("yes"),
        })
    }

    async fn network_gateway(&self, name: &str) -> Result<Option<IpAddr>, EngineError> {
        Ok(net::gateway(name).await?)
    }

    async fn create_network(
        &self,
        name: &str,
        _labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        let _guard = self.inner.net_lock.lock().await;
        Ok(net::create(name).await?)
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        let _guard = self.inner.net_lock.lock().await;
        // Namespaces whose container record never came to be (an agent
        // that exited between the namespace and the record) hold the
        // bridge: this instance's network is the only place to find them.
        if let Ok(ids) = net::attached(name).await {
            for id in ids {
                let exists = self
                    .client()
                    .containers()
                    .get(self.request(GetContainerRequest { id: id.clone() }))
                    .await;
                if matches!(&exists, Err(e) if not_found(e)) {
                    net::detach(&id).await;
                }
            }
        }
        Ok(net::remove(name).await?)
    }

    async fn prune_networks(&self, _label: &str) -> Result<(), EngineError> {
        let _guard = self.inner.net_lock.lock().await;
        Ok(net::prune().await?)
    }

    fn events(&self, label: &str) -> EventStream {
        let engine = self.clone();
        let (key, value) = parse_label(label);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<EngineEvent, EngineError>>(64);
        tokio::spawn(async move {
            let subscribed = engine
                .client()
                .events()
                .subscribe(SubscribeRequest {
                    filters: vec![
                        format!("namespace=={},topic==\"/tasks/exit\"", engine.namespace()),
                        format!("namespace=={},topic==\"/tasks/oom\"", engine.namespace()),
                    ],
                })
                .await;
            let mut stream = match subscribed {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    let _ = tx.send(Err(ContainerdError::from(e).into())).await;
                    return;
                }
            };
            while let Some(envelope) = stream.next().await {
                let envelope = match envelope {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(ContainerdError::from(e).into())).await;
                        return;
                    }
                };
                let Some(any) = envelope.event else { continue };
                let (action, id) = match envelope.topic.as_str() {
                    "/tasks/exit" => match containerd_client::events::TaskExit::decode(&*any.value)
                    {
                        // Only the init process's exit stops the container.
                        Ok(e) if e.id == e.container_id || e.id.is_empty() => {
                            ("die", e.container_id)
                        }
                        _ => continue,
                    },
                    "/tasks/oom" => match containerd_client::events::TaskOom::decode(&*any.value) {
                        Ok(e) => ("oom", e.container_id),
                        Err(_) => continue,
                    },
                    _ => continue,
                };
                let labels = engine.labels_of(&id).await;
                let matches = match &value {
                    Some(v) => labels.get(&key) == Some(v),
                    None => labels.contains_key(&key),
                };
                if !matches {
                    continue;
                }
                let event = EngineEvent {
                    action: action.to_string(),
                    attributes: labels,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    fn logs(&self, id: &str) -> LogStream {
        let path = self.log_path(id);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        tokio::spawn(follow_file(path, tx));
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    fn docker(&self) -> Option<bollard::Docker> {
        self.inner.docker.clone()
    }
}

/// Size at which a followed output file is emptied.
const LOG_TRUNCATE_BYTES: u64 = 1 << 20;

/// Sends what is appended to `path` until the file is removed (the
/// container with it) or the receiver goes away.
async fn follow_file(path: PathBuf, tx: tokio::sync::mpsc::Sender<Bytes>) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut offset = 0u64;
    let mut missing_for = 0u32;
    loop {
        match tokio::fs::File::open(&path).await {
            Ok(mut file) => {
                missing_for = 0;
                let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    offset = 0;
                }
                if len > offset && file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                    let mut buf = Vec::new();
                    if let Ok(n) = (&mut file).take(len - offset).read_to_end(&mut buf).await {
                        offset += n as u64;
                        if n > 0 && tx.send(Bytes::from(buf)).await.is_err() {
                            return;
                        }
                    }
                }
                // The file lives in /run (memory): once read, a large one
                // is emptied so a function printing without end cannot
                // fill it. The shim appends (O_APPEND), so its next write
                // lands at the new end; what it wrote between the read
                // and the truncation is lost.
                if offset >= LOG_TRUNCATE_BYTES
                    && let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path)
                    && f.set_len(0).is_ok()
                {
                    offset = 0;
                }
            }
            Err(_) => {
                // Not created yet (the task starts after this), or removed.
                missing_for += 1;
                if offset > 0 || missing_for > 600 {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap
    use super::*;

    #[tokio::test]
    async fn output_files_are_followed_and_emptied_once_large() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("esb-ctrd-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.log");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let big = vec![b'x'; (LOG_TRUNCATE_BYTES + 10) as usize];
        file.write_all(&big).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(follow_file(path.clone(), tx));
        let mut got = 0;
        while got < big.len() {
            got += rx.recv().await.unwrap().len();
        }
        // Emptied once read, and what the task appends next still arrives.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&path).unwrap().len() != 0 {
            assert!(std::time::Instant::now() < deadline, "not emptied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        file.write_all(b"after\n").unwrap();
        assert_eq!(&rx.recv().await.unwrap()[..], b"after\n");
        // Removed with its container: the stream ends.
        std::fs::remove_file(&path).unwrap();
        assert!(rx.recv().await.is_none());
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn label_filters_use_containerds_syntax() {
        assert_eq!(
            label_filter("io.esb.instance=abc"),
            "labels.\"io.esb.instance\"==abc"
        );
        assert_eq!(
            label_filter("io.esb.instance"),
            "labels.\"io.esb.instance\""
        );
    }
}
