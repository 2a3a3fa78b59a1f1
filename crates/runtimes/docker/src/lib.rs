//! The `docker` runtime: each worker is a container started through the
//! Docker Engine API (bollard), with ESB's static `esb-supervisor`
//! bind-mounted read-only as its entrypoint. The supervisor starts the
//! image's bootstrap, serves it the Runtime API on the container's loopback
//! and takes invocations from the pool on one port ([`ContainerWorker`]).
//!
//! Owns: the engine socket (only the agent process, or a directly wired
//! backend, may create a [`DockerBackend`]), containers and their settings
//! (per-instance network, limits, read-only root, labels), Adopt & Sync
//! ([`DockerBackend::adopt_and_sync`]), the janitor
//! ([`DockerBackend::spawn_janitor`]) and engine events.
//! Must not: hold pool policy (how many workers, when) or know about
//! callers and routes.
#![forbid(unsafe_code)]

pub mod client;
pub mod image_build;
mod relay;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions,
};
use esb_container_supervisor::wire::{ContainerConfig, Forward, FunctionConfig, LaunchConfig};
use esb_runtimes_core::launch::{self, PythonBootstrap};
use esb_runtimes_core::{FunctionSpec, LogSink, RuntimeBackend, RuntimeError, Worker};
use futures_util::StreamExt;
use tokio::sync::broadcast;

pub use client::{ContainerWorker, SupervisorClient, WorkerOwner};
pub use image_build::{ImageBuild, ImageBuildError, ImageBuilder};

/// Label carrying the ESB instance id.
pub const LABEL_INSTANCE: &str = "io.esb.instance";
/// Label carrying the function name.
pub const LABEL_FUNCTION: &str = "io.esb.function";
/// Label carrying the worker id.
pub const LABEL_WORKER: &str = "io.esb.worker";
/// Label carrying the function's code hash.
pub const LABEL_CODE_HASH: &str = "io.esb.code-hash";
/// Label carrying the supervisor port.
pub const LABEL_PORT: &str = "io.esb.port";

/// Default image for `python3.x` functions (built by
/// `scripts/build-images.sh`).
pub const DEFAULT_PYTHON_IMAGE: &str = "esb/python3.11:latest";

/// Where the supervisor binary is mounted in each container.
const SUPERVISOR_PATH: &str = "/esb/supervisor";
/// Where ESB's built-in runtime files are mounted.
const RUNTIME_FILES: &str = "/esb/runtime";
/// Where the gateway's CA certificate is mounted.
const CA_PATH: &str = "/esb/ca.pem";

/// Settings of the docker backend.
#[derive(Clone)]
pub struct DockerOptions {
    /// ESB instance id: label of every container and the network name.
    pub instance: String,
    /// Host path of the static `esb-supervisor` binary.
    pub supervisor_bin: PathBuf,
    /// Image per Lambda runtime identifier; `python3.x` falls back to
    /// [`DEFAULT_PYTHON_IMAGE`], `provided*` to the same Debian base.
    pub images: BTreeMap<String, String>,
    /// Python runtime client choice (as the process runtime).
    pub python_bootstrap: PythonBootstrap,
    /// Directory for ESB's built-in runtime files (mounted read-only).
    pub cache_dir: PathBuf,
    /// Where container output goes.
    pub log_sink: Arc<dyn LogSink>,
    /// Most processes per container.
    pub pids_limit: i64,
    /// Size of the writable `/tmp` in MB (`EphemeralStorage`).
    pub tmp_size_mb: u32,
    /// Upper bound for container start plus init.
    pub start_timeout: Duration,
}

impl DockerOptions {
    /// Defaults for an instance id.
    pub fn new(instance: impl Into<String>, supervisor_bin: PathBuf) -> Self {
        Self {
            instance: instance.into(),
            supervisor_bin,
            images: BTreeMap::new(),
            python_bootstrap: PythonBootstrap::Auto,
            cache_dir: launch::default_cache_dir(),
            log_sink: Arc::new(esb_runtimes_core::StderrLogSink),
            pids_limit: 256,
            tmp_size_mb: 512,
            start_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for DockerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerOptions")
            .field("instance", &self.instance)
            .field("supervisor_bin", &self.supervisor_bin)
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

/// A docker backend failure outside a worker start.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine could not be reached.
    #[error("docker engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// The supervisor binary is missing.
    #[error("supervisor binary {0} not found (build it with scripts/build-supervisor.sh)")]
    NoSupervisor(PathBuf),
}

/// What a worker looks like from outside (agent API, `esb ps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker id.
    pub worker_id: String,
    /// Container id.
    pub container_id: String,
    /// Function name.
    pub function: String,
    /// Code hash it was started with.
    pub code_hash: String,
    /// Supervisor address (container IP and port).
    pub endpoint: SocketAddr,
    /// Handed back by Adopt & Sync rather than started.
    pub adopted: bool,
    /// Init duration when it was started by this backend.
    pub init_duration: Option<Duration>,
}

/// Something that happened to a worker's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEvent {
    /// Worker id.
    pub worker_id: String,
    /// Function name.
    pub function: String,
    /// What happened.
    pub kind: WorkerEventKind,
}

/// Kinds of [`WorkerEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEventKind {
    /// The container stopped (killed from outside, crashed, removed).
    Exited,
    /// The kernel killed a process for exceeding the memory limit.
    OomKilled,
}

/// What Adopt & Sync found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Running workers kept for adoption.
    pub adopted: Vec<String>,
    /// Containers removed (stopped, unresponsive).
    pub removed: Vec<String>,
}

struct Entry {
    info: WorkerInfo,
    alive: Arc<AtomicBool>,
    /// Handed out to a pool (false for adopted workers not yet claimed).
    claimed: bool,
}

struct Inner {
    docker: Docker,
    options: DockerOptions,
    client: SupervisorClient,
    workers: Mutex<HashMap<String, Entry>>,
    images: Mutex<HashMap<String, ImageFacts>>,
    relays: relay::Relays,
    events: broadcast::Sender<WorkerEvent>,
}

#[derive(Debug, Clone)]
struct NetworkInfo {
    name: String,
    gateway: IpAddr,
}

#[derive(Debug, Clone)]
struct ImageFacts {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    working_dir: Option<String>,
    esb_image: bool,
    /// `io.esb.runtime` label of ESB's base images (`python3.11`).
    esb_runtime: Option<String>,
    awslambdaric: bool,
}

/// Runs workers as Docker containers.
#[derive(Clone)]
pub struct DockerBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn backend_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Backend(format!("docker: {e}"))
}

impl DockerBackend {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket),
    /// negotiating the API version, and starts following its events.
    pub async fn connect(options: DockerOptions) -> Result<Self, DockerError> {
        if !options.supervisor_bin.is_file() {
            return Err(DockerError::NoSupervisor(options.supervisor_bin.clone()));
        }
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        docker.ping().await?;
        let (events, _) = broadcast::channel(256);
        let backend = Self {
            inner: Arc::new(Inner {
                docker,
                options,
                client: SupervisorClient::default(),
                workers: Mutex::new(HashMap::new()),
                images: Mutex::new(HashMap::new()),
                relays: relay::Relays::default(),
                events,
            }),
        };
        tokio::spawn(follow_events(Arc::downgrade(&backend.inner)));
        Ok(backend)
    }

    /// The options.
    pub fn options(&self) -> &DockerOptions {
        &self.inner.options
    }

    /// Worker events (exited, OOM-killed).
    pub fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.inner.events.subscribe()
    }

    /// Known workers.
    pub fn list_workers(&self) -> Vec<WorkerInfo> {
        let workers = lock(&self.inner.workers);
        let mut list: Vec<WorkerInfo> = workers.values().map(|e| e.info.clone()).collect();
        list.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        list
    }

    /// Adopt & Sync: lists the containers labelled with this instance;
    /// running ones whose supervisor answers are kept for adoption (handed
    /// out by [`DockerBackend::ensure_worker`] when the code hash matches),
    /// all others are removed.
    pub async fn adopt_and_sync(&self) -> Result<SyncReport, DockerError> {
        let inner = &self.inner;
        let mut report = SyncReport::default();
        // Networks of ESB instances that no container uses any more (an
        // `esb up` that was killed never removed its own) are given back, so
        // the engine's address pools do not run out.
        let prune = bollard::query_parameters::PruneNetworksOptions {
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![LABEL_INSTANCE.to_string()],
            )])),
        };
        if let Err(e) = inner.docker.prune_networks(Some(prune)).await {
            tracing::debug!("prune unused esb networks: {e}");
        }
        for container in inner.list_instance_containers().await? {
            let Some(id) = container.id.clone() else {
                continue;
            };
            let labels = container.labels.clone().unwrap_or_default();
            let worker_id = labels.get(LABEL_WORKER).cloned().unwrap_or_default();
            if lock(&inner.workers).contains_key(&worker_id) {
                continue;
            }
            let running = container.state == Some(ContainerSummaryStateEnum::RUNNING);
            let endpoint = container_ip(&container).and_then(|ip| {
                let port = labels.get(LABEL_PORT)?.parse().ok()?;
                Some(SocketAddr::new(ip, port))
            });
            let healthy = match (running, endpoint) {
                (true, Some(addr)) => inner
                    .client
                    .status(addr, Duration::from_secs(2))
                    .await
                    .is_ok_and(|s| s.alive && s.worker_id == worker_id),
                _ => false,
            };
            match (healthy, endpoint) {
                (true, Some(endpoint)) => {
                    let info = WorkerInfo {
                        worker_id: worker_id.clone(),
                        container_id: id,
                        function: labels.get(LABEL_FUNCTION).cloned().unwrap_or_default(),
                        code_hash: labels.get(LABEL_CODE_HASH).cloned().unwrap_or_default(),
                        endpoint,
                        adopted: true,
                        init_duration: None,
                    };
                    lock(&inner.workers).insert(
                        worker_id.clone(),
                        Entry {
                            info,
                            alive: Arc::new(AtomicBool::new(true)),
                            claimed: false,
                        },
                    );
                    report.adopted.push(worker_id);
                }
                _ => {
                    inner.remove_container(&id).await;
                    report.removed.push(worker_id);
                }
            }
        }
        Ok(report)
    }

    /// A ready worker for `spec`: an adopted one with the same code hash
    /// (not in `exclude`, the ids the caller already holds), else a new
    /// container. Adopted workers of `spec`'s function with another code
    /// hash are removed.
    pub async fn ensure_worker(
        &self,
        spec: &FunctionSpec,
        exclude: &[String],
    ) -> Result<WorkerInfo, RuntimeError> {
        let inner = &self.inner;
        // Callers already holding adopted workers claim them.
        let mut stale = Vec::new();
        let candidate = {
            let mut workers = lock(&inner.workers);
            for id in exclude {
                if let Some(entry) = workers.get_mut(id) {
                    entry.claimed = true;
                }
            }
            let mut found = None;
            for entry in workers.values_mut() {
                if entry.claimed || entry.info.function != spec.name {
                    continue;
                }
                if entry.info.code_hash != spec.code_hash {
                    stale.push(entry.info.worker_id.clone());
                } else if found.is_none() && entry.alive.load(Ordering::SeqCst) {
                    entry.claimed = true;
                    found = Some(entry.info.clone());
                }
            }
            found
        };
        for id in stale {
            inner.destroy(&id).await;
        }
        if let Some(info) = candidate {
            let ok = inner
                .client
                .status(info.endpoint, Duration::from_secs(2))
                .await
                .is_ok_and(|s| s.alive && !s.busy);
            if ok {
                tracing::info!(function = %spec.name, worker = %info.worker_id, "adopted warm worker");
                return Ok(info);
            }
            inner.destroy(&info.worker_id).await;
        }
        inner.start_container(spec).await
    }

    /// Removes a worker's container.
    pub async fn destroy_worker(&self, worker_id: &str) {
        self.inner.destroy(worker_id).await;
    }

    /// The shared `alive` flag of a worker (cleared on engine events).
    pub fn alive_flag(&self, worker_id: &str) -> Option<Arc<AtomicBool>> {
        lock(&self.inner.workers)
            .get(worker_id)
            .map(|e| e.alive.clone())
    }

    /// Builds an image function's image (the agent's `BuildImage`): when
    /// `only_if_missing` and the tag exists, does nothing and returns
    /// `Ok(false)`. Build output lines go to `output`.
    pub async fn build_image(
        &self,
        job: &ImageBuild,
        only_if_missing: bool,
        output: &mut (dyn FnMut(&str) + Send),
    ) -> Result<bool, ImageBuildError> {
        let builder = ImageBuilder::from_docker(self.inner.docker.clone());
        if only_if_missing && builder.exists(&job.tag).await {
            return Ok(false);
        }
        builder.build(job, output).await?;
        // A rebuilt tag may have another ENTRYPOINT/CMD.
        lock(&self.inner.images).remove(&job.tag);
        Ok(true)
    }

    /// The supervisor client (for callers building [`ContainerWorker`]s).
    pub fn supervisor_client(&self) -> SupervisorClient {
        self.inner.client.clone()
    }

    /// Removes every container this backend knows (used when `esb up`
    /// runs the backend directly and shuts down).
    pub async fn shutdown(&self) {
        let ids: Vec<String> = lock(&self.inner.workers).keys().cloned().collect();
        for id in ids {
            self.inner.destroy(&id).await;
        }
        // Give the network's address pool back: the engine has only a few
        // dozen, and leaked per-instance networks make later starts fail
        // ("could not find an available, non-overlapping IPv4 address pool").
        // The engine refuses while containers are still attached, so a
        // network adopted workers use survives.
        let name = format!("esb-{}", self.inner.options.instance);
        if let Err(e) = self.inner.docker.remove_network(&name).await {
            tracing::debug!("remove network {name}: {e}");
        }
    }

    /// The janitor: every `interval`, removes containers of this instance
    /// that are stopped, unknown, unresponsive, or idle longer than
    /// `idle_timeout`.
    pub fn spawn_janitor(
        &self,
        idle_timeout: Duration,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.sweep(idle_timeout).await;
            }
        })
    }

    /// One janitor pass (see [`DockerBackend::spawn_janitor`]).
    pub async fn sweep(&self, idle_timeout: Duration) {
        self.inner.sweep(idle_timeout).await;
    }
}

fn container_ip(container: &bollard::models::ContainerSummary) -> Option<IpAddr> {
    container
        .network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .values()
        .find_map(|n| n.ip_address.as_deref().and_then(|ip| ip.parse().ok()))
}

fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned.chars().take(40).collect()
}

/// Which service a `AWS_ENDPOINT_URL_*` variable names, as the original
/// system's logical host name.
fn service_alias(variable: &str) -> &'static str {
    match variable {
        "AWS_ENDPOINT_URL_S3" => "s3-storage",
        "AWS_ENDPOINT_URL_DYNAMODB" => "database",
        "AWS_ENDPOINT_URL_LAMBDA" => "esb-gateway",
        _ => "esb-host",
    }
}

/// Loopback endpoints in the function's environment: (variable, port).
fn loopback_endpoints(env: &BTreeMap<String, String>) -> Vec<(&'static str, u16)> {
    let mut out = Vec::new();
    for (k, v) in env {
        if !k.starts_with("AWS_ENDPOINT_URL") {
            continue;
        }
        let Some(rest) = v.split_once("://").map(|(_, r)| r) else {
            continue;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let Some((host, port)) = authority.rsplit_once(':') else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
            continue;
        }
        if let Ok(port) = port.parse() {
            out.push((service_alias(k), port));
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Inner {
    async fn list_instance_containers(
        &self,
    ) -> Result<Vec<bollard::models::ContainerSummary>, bollard::errors::Error> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_INSTANCE}={}", self.options.instance)],
        )]);
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
    }

    /// The instance network, created when missing. Looked up on every cold
    /// start (not cached): a network removed from outside (`docker network
    /// prune`, another tool) is recreated instead of failing every start.
    async fn network(&self) -> Result<NetworkInfo, RuntimeError> {
        {
            {
                let name = format!("esb-{}", self.options.instance);
                let existing = self.docker.inspect_network(&name, None).await;
                let network = match existing {
                    Ok(n) => n,
                    Err(_) => {
                        let create = NetworkCreateRequest {
                            name: name.clone(),
                            driver: Some("bridge".to_string()),
                            labels: Some(HashMap::from([(
                                LABEL_INSTANCE.to_string(),
                                self.options.instance.clone(),
                            )])),
                            ..Default::default()
                        };
                        if let Err(e) = self.docker.create_network(create).await {
                            tracing::debug!("create network {name}: {e}");
                        }
                        self.docker
                            .inspect_network(&name, None)
                            .await
                            .map_err(backend_error)?
                    }
                };
                let gateway = network
                    .ipam
                    .and_then(|i| i.config)
                    .and_then(|c| c.into_iter().find_map(|c| c.gateway))
                    .and_then(|g| g.parse().ok())
                    .ok_or_else(|| backend_error(format!("network {name} has no gateway")))?;
                Ok(NetworkInfo { name, gateway })
            }
        }
    }

    async fn image_facts(&self, image: &str) -> Result<ImageFacts, RuntimeError> {
        if let Some(facts) = lock(&self.images).get(image) {
            return Ok(facts.clone());
        }
        let inspect = self.docker.inspect_image(image).await.map_err(|e| {
            backend_error(format!(
                "image {image} is not available ({e}); build it with `scripts/build-images.sh` or `esb build`"
            ))
        })?;
        let config = inspect.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let facts = ImageFacts {
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            working_dir: config.working_dir.filter(|w| !w.is_empty()),
            esb_image: labels.contains_key("io.esb.runtime"),
            esb_runtime: labels.get("io.esb.runtime").cloned(),
            awslambdaric: labels.get("io.esb.awslambdaric").map(String::as_str) == Some("yes"),
        };
        lock(&self.images).insert(image.to_string(), facts.clone());
        Ok(facts)
    }

    fn image_for(&self, spec: &FunctionSpec) -> Result<String, RuntimeError> {
        if let Some(image) = &spec.image {
            return Ok(image.clone());
        }
        if let Some(image) = self.options.images.get(&spec.runtime) {
            return Ok(image.clone());
        }
        if spec.runtime.starts_with("python3")
            || spec.runtime == "provided"
            || spec.runtime.starts_with("provided.")
        {
            return Ok(DEFAULT_PYTHON_IMAGE.to_string());
        }
        Err(RuntimeError::UnsupportedRuntime {
            function: spec.name.clone(),
            runtime: spec.runtime.clone(),
            backend: "docker",
        })
    }

    fn launch_for(
        &self,
        spec: &FunctionSpec,
        facts: &ImageFacts,
    ) -> Result<(LaunchConfig, Option<String>), RuntimeError> {
        if spec.image.is_some() {
            return self.launch_for_image(spec, facts);
        }
        let handler = spec.handler.clone().unwrap_or_default();
        if spec.runtime.starts_with("python3") {
            let launch = self.python_launch(&spec.runtime, handler, facts);
            return Ok((launch, spec.handler.clone()));
        }
        let bootstrap = spec.code_dir.join("bootstrap");
        if !bootstrap.is_file() {
            return Err(RuntimeError::InvalidCode {
                function: spec.name.clone(),
                message: format!(
                    "Runtime.InvalidEntrypoint: no executable bootstrap at {}",
                    bootstrap.display()
                ),
            });
        }
        let launch = LaunchConfig {
            program: format!("{}/bootstrap", esb_container_supervisor::TASK_ROOT),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: esb_container_supervisor::TASK_ROOT.to_string(),
            execution_env: None,
        };
        Ok((launch, spec.handler.clone()))
    }

    /// How an image function starts, and the handler (`_HANDLER`) it gets.
    /// `ImageConfig.Command` (its first element reaches us as the handler)
    /// overrides the image's CMD. An ESB base image without ENTRYPOINT
    /// (`FROM esb/python3.11` + `CMD ["app.handler"]`) runs the CMD as a
    /// handler under the Python runtime client, as a zip function would;
    /// any other image (AWS base images: `/lambda-entrypoint.sh` + CMD
    /// handler) runs its own ENTRYPOINT + CMD under the supervisor.
    fn launch_for_image(
        &self,
        spec: &FunctionSpec,
        facts: &ImageFacts,
    ) -> Result<(LaunchConfig, Option<String>), RuntimeError> {
        let cmd = match &spec.handler {
            Some(handler) => vec![handler.clone()],
            None => facts.cmd.clone(),
        };
        let handler = cmd.first().cloned();
        if facts.entrypoint.is_empty()
            && let (Some(runtime), Some(handler)) = (&facts.esb_runtime, &handler)
            && runtime.starts_with("python3")
        {
            let mut launch = self.python_launch(runtime, handler.clone(), facts);
            if let Some(dir) = &facts.working_dir {
                launch.working_dir = dir.clone();
            }
            return Ok((launch, Some(handler.clone())));
        }
        let mut argv = facts.entrypoint.clone();
        argv.extend(cmd);
        if argv.is_empty() {
            return Err(RuntimeError::InvalidCode {
                function: spec.name.clone(),
                message: "Runtime.InvalidEntrypoint: the image has no ENTRYPOINT or CMD"
                    .to_string(),
            });
        }
        let program = argv.remove(0);
        let launch = LaunchConfig {
            program,
            args: argv,
            env: Vec::new(),
            working_dir: facts
                .working_dir
                .clone()
                .unwrap_or_else(|| esb_container_supervisor::TASK_ROOT.to_string()),
            execution_env: None,
        };
        Ok((launch, handler))
    }

    /// The Python runtime client (awslambdaric or ESB's bootstrap) for a
    /// handler.
    fn python_launch(&self, runtime: &str, handler: String, facts: &ImageFacts) -> LaunchConfig {
        let use_ric = match self.options.python_bootstrap {
            PythonBootstrap::Auto => facts.awslambdaric,
            PythonBootstrap::Builtin => false,
            PythonBootstrap::Awslambdaric => true,
        };
        let args = if use_ric {
            vec!["-m".to_string(), "awslambdaric".to_string(), handler]
        } else {
            vec![
                format!("{RUNTIME_FILES}/python-bootstrap/esb_bootstrap.py"),
                handler,
            ]
        };
        LaunchConfig {
            program: "python3".to_string(),
            args,
            env: vec![
                (
                    "PYTHONPATH".to_string(),
                    format!("{RUNTIME_FILES}/python-site"),
                ),
                ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
            ],
            working_dir: esb_container_supervisor::TASK_ROOT.to_string(),
            execution_env: Some(format!("AWS_Lambda_{runtime}")),
        }
    }

    async fn start_container(
        self: &Arc<Self>,
        spec: &FunctionSpec,
    ) -> Result<WorkerInfo, RuntimeError> {
        let image = self.image_for(spec)?;
        let facts = self.image_facts(&image).await?;
        let (launch, handler) = self.launch_for(spec, &facts)?;
        let network = self.network().await?;
        let cache_dir = self.options.cache_dir.clone();
        tokio::task::spawn_blocking(move || launch::write_python_files(&cache_dir))
            .await
            .map_err(backend_error)?
            .map_err(|source| RuntimeError::Spawn {
                function: spec.name.clone(),
                source,
            })?;

        let mut environment = spec.environment.clone();
        let mut binds = vec![
            format!(
                "{}:{SUPERVISOR_PATH}:ro",
                self.options.supervisor_bin.display()
            ),
            format!("{}:{RUNTIME_FILES}:ro", self.options.cache_dir.display()),
        ];
        if spec.image.is_none() {
            binds.push(format!(
                "{}:{}:ro",
                spec.code_dir.display(),
                esb_container_supervisor::TASK_ROOT
            ));
        }
        if let Some(ca) = environment.get("AWS_CA_BUNDLE").cloned()
            && Path::new(&ca).is_file()
        {
            binds.push(format!("{ca}:{CA_PATH}:ro"));
            environment.insert("AWS_CA_BUNDLE".to_string(), CA_PATH.to_string());
        }
        let endpoints = loopback_endpoints(&environment);
        let mut forwards = Vec::new();
        let mut extra_hosts = vec![
            format!("s3-storage:{}", network.gateway),
            format!("database:{}", network.gateway),
            format!("esb-gateway:{}", network.gateway),
            format!("esb-host:{}", network.gateway),
        ];
        extra_hosts.dedup();
        for (alias, port) in endpoints {
            self.relays.ensure(network.gateway, port);
            forwards.push(Forward {
                local_port: port,
                host: alias.to_string(),
                port,
            });
        }

        let worker_id = uuid::Uuid::new_v4().simple().to_string();
        let mut function = FunctionConfig::from_spec(spec);
        function.environment = environment;
        function.handler = handler;
        let config = ContainerConfig {
            worker_id: worker_id.clone(),
            function,
            launch,
            port: esb_container_supervisor::DEFAULT_PORT,
            forwards,
        };
        let config_json = serde_json::to_string(&config).map_err(backend_error)?;
        let labels = HashMap::from([
            (LABEL_INSTANCE.to_string(), self.options.instance.clone()),
            (LABEL_FUNCTION.to_string(), spec.name.clone()),
            (LABEL_WORKER.to_string(), worker_id.clone()),
            (LABEL_CODE_HASH.to_string(), spec.code_hash.clone()),
            (
                LABEL_PORT.to_string(),
                esb_container_supervisor::DEFAULT_PORT.to_string(),
            ),
        ]);
        let memory = i64::from(spec.memory_mb.max(16)) * 1024 * 1024;
        let host_config = HostConfig {
            binds: Some(binds),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(self.options.pids_limit),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            cap_drop: Some(vec!["ALL".to_string()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                format!(
                    "rw,exec,nosuid,nodev,size={}m,mode=1777",
                    self.options.tmp_size_mb
                ),
            )])),
            network_mode: Some(network.name.clone()),
            extra_hosts: Some(extra_hosts),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec![SUPERVISOR_PATH.to_string()]),
            cmd: Some(Vec::new()),
            env: Some(vec![format!(
                "{}={config_json}",
                esb_container_supervisor::CONFIG_ENV
            )]),
            labels: Some(labels),
            // ESB's images have an unprivileged user; other images keep
            // theirs (AWS base images run as root and expect it).
            user: facts.esb_image.then(|| "993:990".to_string()),
            working_dir: Some(
                facts
                    .working_dir
                    .clone()
                    .unwrap_or_else(|| esb_container_supervisor::TASK_ROOT.to_string()),
            ),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = format!(
            "esb-{}-{}-{}",
            sanitize(&self.options.instance),
            sanitize(&spec.name).to_ascii_lowercase(),
            &worker_id[..8]
        );
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(backend_error)?;
        let container_id = created.id;
        let alive = Arc::new(AtomicBool::new(true));
        let endpoint_placeholder = SocketAddr::from(([0, 0, 0, 0], 0));
        lock(&self.workers).insert(
            worker_id.clone(),
            Entry {
                info: WorkerInfo {
                    worker_id: worker_id.clone(),
                    container_id: container_id.clone(),
                    function: spec.name.clone(),
                    code_hash: spec.code_hash.clone(),
                    endpoint: endpoint_placeholder,
                    adopted: false,
                    init_duration: None,
                },
                alive: alive.clone(),
                claimed: true,
            },
        );
        let started = self.finish_start(spec, &worker_id, &container_id).await;
        match started {
            Ok(info) => Ok(info),
            Err(e) => {
                self.destroy(&worker_id).await;
                Err(e)
            }
        }
    }

    async fn finish_start(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        worker_id: &str,
        container_id: &str,
    ) -> Result<WorkerInfo, RuntimeError> {
        self.docker
            .start_container(container_id, None)
            .await
            .map_err(backend_error)?;
        let inspect = self
            .docker
            .inspect_container(container_id, None)
            .await
            .map_err(backend_error)?;
        let ip: IpAddr = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|n| {
                n.values()
                    .find_map(|e| e.ip_address.as_deref().and_then(|ip| ip.parse().ok()))
            })
            .ok_or_else(|| backend_error("container has no IP address"))?;
        let endpoint = SocketAddr::new(ip, esb_container_supervisor::DEFAULT_PORT);
        self.follow_logs(container_id, &spec.name, worker_id);
        let limit = self.options.start_timeout.max(spec.timeout);
        let init = match self.client.wait_ready(endpoint, limit).await {
            Ok(init) => init,
            Err(Ok(payload)) => {
                return Err(RuntimeError::Init {
                    function: spec.name.clone(),
                    payload,
                });
            }
            Err(Err(e)) => return Err(backend_error(e)),
        };
        let mut workers = lock(&self.workers);
        let entry = workers
            .get_mut(worker_id)
            .ok_or_else(|| backend_error("worker was removed while starting"))?;
        entry.info.endpoint = endpoint;
        entry.info.init_duration = init;
        Ok(entry.info.clone())
    }

    /// Forwards the container's output to the log sink.
    fn follow_logs(&self, container_id: &str, function: &str, worker_id: &str) {
        let docker = self.docker.clone();
        let sink = self.options.log_sink.clone();
        let container_id = container_id.to_string();
        let function = function.to_string();
        let worker_id = worker_id.to_string();
        tokio::spawn(async move {
            let mut logs = docker.logs(
                &container_id,
                Some(bollard::query_parameters::LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            );
            let mut partial = String::new();
            while let Some(Ok(chunk)) = logs.next().await {
                partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                while let Some(pos) = partial.find('\n') {
                    let line: String = partial.drain(..=pos).collect();
                    sink.line(&function, &worker_id, None, line.trim_end_matches('\n'));
                }
            }
        });
    }

    async fn remove_container(&self, container_id: &str) {
        let _ = self
            .docker
            .remove_container(
                container_id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
    }

    async fn destroy(&self, worker_id: &str) {
        let entry = lock(&self.workers).remove(worker_id);
        if let Some(entry) = entry {
            entry.alive.store(false, Ordering::SeqCst);
            self.remove_container(&entry.info.container_id).await;
        }
    }

    async fn sweep(&self, idle_timeout: Duration) {
        let containers = match self.list_instance_containers().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("janitor: cannot list containers: {e}");
                return;
            }
        };
        for container in containers {
            let Some(id) = container.id.clone() else {
                continue;
            };
            let labels = container.labels.clone().unwrap_or_default();
            let worker_id = labels.get(LABEL_WORKER).cloned().unwrap_or_default();
            let known = lock(&self.workers)
                .get(&worker_id)
                .map(|e| (e.info.endpoint, e.info.endpoint.port() != 0));
            let running = container.state == Some(ContainerSummaryStateEnum::RUNNING);
            let reason = match known {
                None => Some("unknown worker"),
                Some(_) if !running => Some("stopped"),
                // Still starting: its start call owns it.
                Some((_, false)) => None,
                Some((endpoint, true)) => {
                    match self.client.status(endpoint, Duration::from_secs(2)).await {
                        Err(_) => Some("supervisor does not answer"),
                        Ok(s) if !s.alive => Some("runtime exited"),
                        Ok(s) if !s.busy && Duration::from_millis(s.idle_ms) >= idle_timeout => {
                            Some("idle")
                        }
                        Ok(_) => None,
                    }
                }
            };
            if let Some(reason) = reason {
                tracing::info!(worker = %worker_id, container = %id, "janitor: removing container ({reason})");
                if known.is_some() {
                    self.destroy(&worker_id).await;
                } else {
                    self.remove_container(&id).await;
                }
            }
        }
    }
}

/// Follows the engine's container events for this instance: marks workers
/// dead when their container stops and publishes [`WorkerEvent`]s.
async fn follow_events(weak: std::sync::Weak<Inner>) {
    let Some(inner) = weak.upgrade() else {
        return;
    };
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "label".to_string(),
            vec![format!("{LABEL_INSTANCE}={}", inner.options.instance)],
        ),
        (
            "event".to_string(),
            vec!["die".to_string(), "oom".to_string(), "destroy".to_string()],
        ),
    ]);
    let mut stream = Box::pin(inner.docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    })));
    drop(inner);
    while let Some(event) = stream.next().await {
        let Ok(event) = event else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let attributes = event.actor.and_then(|a| a.attributes).unwrap_or_default();
        let worker_id = attributes.get(LABEL_WORKER).cloned().unwrap_or_default();
        let function = attributes.get(LABEL_FUNCTION).cloned().unwrap_or_default();
        let kind = match event.action.as_deref() {
            Some("oom") => WorkerEventKind::OomKilled,
            _ => WorkerEventKind::Exited,
        };
        if kind == WorkerEventKind::Exited
            && let Some(entry) = lock(&inner.workers).get(&worker_id)
        {
            entry.alive.store(false, Ordering::SeqCst);
        }
        let _ = inner.events.send(WorkerEvent {
            worker_id,
            function,
            kind,
        });
    }
}

#[async_trait::async_trait]
impl WorkerOwner for DockerBackend {
    async fn destroy(&self, worker_id: &str) {
        self.inner.destroy(worker_id).await;
    }
}

#[async_trait::async_trait]
impl RuntimeBackend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start_worker(&self, spec: Arc<FunctionSpec>) -> Result<Arc<dyn Worker>, RuntimeError> {
        let info = self.ensure_worker(&spec, &[]).await?;
        let alive = self
            .alive_flag(&info.worker_id)
            .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
        Ok(Arc::new(ContainerWorker::new(
            info.worker_id,
            info.endpoint,
            spec.timeout,
            self.inner.client.clone(),
            alive,
            Arc::new(self.clone()),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> Inner {
        // The client connects lazily: no engine is needed to plan a launch.
        let docker = Docker::connect_with_local_defaults().unwrap();
        Inner {
            docker,
            options: DockerOptions::new("t", PathBuf::from("/nonexistent")),
            client: SupervisorClient::default(),
            workers: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            relays: relay::Relays::default(),
            events: broadcast::channel(1).0,
        }
    }

    fn image_spec(handler: Option<&str>) -> FunctionSpec {
        FunctionSpec {
            name: "imagefn".to_string(),
            runtime: String::new(),
            handler: handler.map(str::to_string),
            code_dir: PathBuf::from("/ctx"),
            image: Some("imagefn:latest".to_string()),
            memory_mb: 128,
            timeout: Duration::from_secs(3),
            environment: BTreeMap::new(),
            region: "us-east-1".to_string(),
            account_id: "123456789012".to_string(),
            code_hash: "h".to_string(),
        }
    }

    fn facts(entrypoint: &[&str], cmd: &[&str], esb_runtime: Option<&str>) -> ImageFacts {
        ImageFacts {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            working_dir: Some("/var/task".to_string()),
            esb_image: esb_runtime.is_some(),
            esb_runtime: esb_runtime.map(str::to_string),
            awslambdaric: false,
        }
    }

    #[tokio::test]
    async fn esb_base_image_runs_its_cmd_as_a_python_handler() {
        let inner = inner();
        let (launch, handler) = inner
            .launch_for(
                &image_spec(None),
                &facts(&[], &["app.handler"], Some("python3.11")),
            )
            .unwrap();
        assert_eq!(handler.as_deref(), Some("app.handler"));
        assert_eq!(launch.program, "python3");
        assert_eq!(launch.args.last().map(String::as_str), Some("app.handler"));
        assert_eq!(
            launch.execution_env.as_deref(),
            Some("AWS_Lambda_python3.11")
        );
    }

    #[tokio::test]
    async fn aws_base_image_runs_entrypoint_with_cmd_or_image_config_command() {
        let inner = inner();
        let aws = facts(&["/lambda-entrypoint.sh"], &["app.handler"], None);
        let (launch, handler) = inner.launch_for(&image_spec(None), &aws).unwrap();
        assert_eq!(launch.program, "/lambda-entrypoint.sh");
        assert_eq!(launch.args, vec!["app.handler".to_string()]);
        assert_eq!(handler.as_deref(), Some("app.handler"));
        // ImageConfig.Command overrides CMD.
        let (launch, handler) = inner
            .launch_for(&image_spec(Some("other.main")), &aws)
            .unwrap();
        assert_eq!(launch.args, vec!["other.main".to_string()]);
        assert_eq!(handler.as_deref(), Some("other.main"));
        // Nothing to run is an init error, not a crash.
        let err = inner
            .launch_for(&image_spec(None), &facts(&[], &[], None))
            .unwrap_err();
        assert!(err.to_string().contains("InvalidEntrypoint"), "{err}");
    }

    #[test]
    fn loopback_endpoints_map_to_service_aliases() {
        let env = BTreeMap::from([
            (
                "AWS_ENDPOINT_URL_S3".to_string(),
                "http://127.0.0.1:9000".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_DYNAMODB".to_string(),
                "http://localhost:8001/".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_LAMBDA".to_string(),
                "https://127.0.0.1:8443".to_string(),
            ),
            (
                "AWS_ENDPOINT_URL_SQS".to_string(),
                "https://sqs.example.com:443".to_string(),
            ),
            ("OTHER".to_string(), "http://127.0.0.1:1".to_string()),
        ]);
        assert_eq!(
            loopback_endpoints(&env),
            vec![
                ("database", 8001),
                ("esb-gateway", 8443),
                ("s3-storage", 9000)
            ]
        );
    }

    #[test]
    fn container_names_are_sanitized() {
        assert_eq!(sanitize("Hello World/fn"), "Hello-World-fn");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 40);
    }
}
