//! The `docker` runtime: each worker is a container started through the
//! container engine, with the agent's own `esb` executable bind-mounted
//! read-only as its entrypoint (`esb container-supervisor`, see [`entry`]). The supervisor starts the image's
//! bootstrap, serves it the Runtime API on the container's loopback and
//! takes invocations from the pool on one port
//! ([`esb_agent_client::ContainerWorker`]).
//!
//! Owns, one file each: the engine calls ([`engine`], behind the [`Engine`]
//! trait with the bollard implementation and a recording fake in
//! [`fake`]), the container spec and its hardening (`container`), the
//! per-instance network (`network`), Adopt & Sync and claiming adopted
//! workers (`adopt`), the janitor (`janitor`), engine events and container
//! output (`events`), host relays (`relay`) and image builds
//! ([`image_build`], [`base_image`]). Launch plans come from
//! `esb_runtimes_core::launch`, the one planner.
//! Must not: be linked by anything but the agent process (`esb-agent`):
//! only the agent opens the engine socket. Must not hold pool policy (how
//! many workers, when) or know about callers and routes.
#![forbid(unsafe_code)]

mod adopt;
pub mod base_image;
mod container;
pub mod engine;
pub mod entry;
mod events;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod image_build;
mod janitor;
mod network;
mod relay;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esb_agent_client::{ContainerWorker, SupervisorClient, WorkerOwner};
use esb_runtimes_core::launch::{self, PythonBootstrap};
use esb_runtimes_core::{FunctionSpec, LogSink, RuntimeBackend, RuntimeError, Worker};
use tokio::sync::broadcast;

pub use adopt::SyncReport;
pub use engine::{BollardEngine, Engine, EngineError, ImageFacts};
pub use entry::SupervisorMount;
pub use esb_agent_client::ImageBuild;
pub use image_build::{ImageBuildError, ImageBuilder};

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

/// Default image for `python3.x` functions (built by `esb images build`).
pub const DEFAULT_PYTHON_IMAGE: &str = "esb/python3.11:latest";
/// Image of `python3.13` functions (Debian trixie's Python).
pub const PYTHON313_IMAGE: &str = "esb/python3.13:latest";
/// Image of `provided*` functions (a minimal Debian root).
pub const PROVIDED_IMAGE: &str = "esb/provided:latest";

/// Settings of the docker backend.
#[derive(Clone)]
pub struct DockerOptions {
    /// ESB instance id: label of every container and the network name.
    pub instance: String,
    /// The executable (and its loader and libraries) mounted into every
    /// container as the supervisor.
    pub supervisor: SupervisorMount,
    /// Image per Lambda runtime identifier; otherwise ESB's base image of
    /// the runtime ([`base_image::base_name_for_function`]: `python3.x` on
    /// [`DEFAULT_PYTHON_IMAGE`], `python3.13`, `nodejs18.x`, `nodejs20.x`
    /// and `provided*` on their own).
    pub images: BTreeMap<String, String>,
    /// Python runtime client choice (as the process runtime).
    pub python_bootstrap: PythonBootstrap,
    /// Node.js runtime client choice (as the process runtime;
    /// `ESB_NODE_BOOTSTRAP`).
    pub node_bootstrap: launch::NodeBootstrap,
    /// Directory for ESB's built-in runtime files (mounted read-only).
    pub cache_dir: PathBuf,
    /// Where container output goes.
    pub log_sink: Arc<dyn LogSink>,
    /// Most processes per container.
    pub pids_limit: i64,
    /// CPU weight of each worker container (`HostConfig.CpuShares`, 1024
    /// = one host process). 2048: a container runs what the process
    /// runtime runs as two schedulable parts (its supervisor and the
    /// runtime); with the weight of one process, a busy host delays every
    /// wakeup inside the container (c1 p50 8-12 ms against 3-6 ms with
    /// 3072-8192, debug build at load 16-18).
    pub cpu_shares: i64,
    /// Size of the writable `/tmp` in MB (`EphemeralStorage`).
    pub tmp_size_mb: u32,
    /// Upper bound for container start plus init.
    pub start_timeout: Duration,
    /// Port the supervisor listens on inside each container.
    pub supervisor_port: u16,
    /// Keep one started, initialized, unclaimed container per function
    /// (and code hash) once it has run: the next cold start takes it at
    /// once instead of paying create + start + init. The janitor removes
    /// it after the idle timeout like any idle worker.
    pub ready_spare: bool,
}

impl DockerOptions {
    /// Defaults for an instance id.
    pub fn new(instance: impl Into<String>, supervisor: SupervisorMount) -> Self {
        Self {
            instance: instance.into(),
            supervisor,
            images: BTreeMap::new(),
            python_bootstrap: PythonBootstrap::Auto,
            node_bootstrap: std::env::var("ESB_NODE_BOOTSTRAP")
                .ok()
                .and_then(|v| launch::NodeBootstrap::parse(&v))
                .unwrap_or_default(),
            cache_dir: launch::default_cache_dir(),
            log_sink: Arc::new(esb_runtimes_core::StderrLogSink),
            pids_limit: 256,
            cpu_shares: 2048,
            tmp_size_mb: 512,
            start_timeout: Duration::from_secs(30),
            supervisor_port: esb_container_supervisor::DEFAULT_PORT,
            ready_spare: false,
        }
    }

    /// The name of the instance's network.
    pub fn network_name(&self) -> String {
        format!("esb-{}", self.instance)
    }

    /// The label filter selecting this instance's containers.
    pub fn instance_label(&self) -> String {
        format!("{LABEL_INSTANCE}={}", self.instance)
    }
}

impl std::fmt::Debug for DockerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerOptions")
            .field("instance", &self.instance)
            .field("supervisor", &self.supervisor)
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

/// A docker backend failure outside a worker start.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine could not be reached.
    #[error("docker engine: {0}")]
    Engine(#[from] EngineError),
    /// The supervisor executable is missing.
    #[error("supervisor executable {0} not found")]
    NoSupervisor(PathBuf),
}

/// What a container worker looks like from outside (the agent's API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
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
pub struct ContainerEvent {
    /// Worker id.
    pub worker_id: String,
    /// Function name.
    pub function: String,
    /// What happened.
    pub kind: ContainerEventKind,
}

/// Kinds of [`ContainerEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// The container stopped (killed from outside, crashed, removed).
    Exited,
    /// The kernel killed a process for exceeding the memory limit.
    OomKilled,
}

struct Entry {
    info: ContainerInfo,
    alive: Arc<AtomicBool>,
    /// Handed out to a pool (false for adopted workers not yet claimed).
    claimed: bool,
}

struct Inner {
    engine: Arc<dyn Engine>,
    options: DockerOptions,
    client: SupervisorClient,
    workers: Mutex<HashMap<String, Entry>>,
    images: Mutex<HashMap<String, ImageFacts>>,
    relays: relay::Relays,
    events: broadcast::Sender<ContainerEvent>,
    /// The same events in the runtime trait's form.
    worker_events: broadcast::Sender<esb_runtimes_core::WorkerEvent>,
    /// Set by [`DockerBackend::remove_instance`]: no new container starts.
    closing: AtomicBool,
    /// (function, code hash) whose spare is being started.
    spares_starting: Mutex<std::collections::HashSet<(String, String)>>,
    /// Cgroup parent of worker containers, asked of the engine once.
    cgroup_parent: tokio::sync::OnceCell<Option<String>>,
    /// Held while the instance network is looked up and created.
    network_lock: tokio::sync::Mutex<()>,
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
        if !options.supervisor.exe.is_file() {
            return Err(DockerError::NoSupervisor(options.supervisor.exe.clone()));
        }
        let engine = BollardEngine::connect().await?;
        Self::with_engine(Arc::new(engine), options).await
    }

    /// A backend over any [`Engine`] (a [`fake::FakeEngine`] in tests).
    pub async fn with_engine(
        engine: Arc<dyn Engine>,
        options: DockerOptions,
    ) -> Result<Self, DockerError> {
        engine.ping().await?;
        let backend = Self {
            inner: Arc::new(Inner {
                engine,
                options,
                client: SupervisorClient::default(),
                workers: Mutex::new(HashMap::new()),
                images: Mutex::new(HashMap::new()),
                relays: relay::Relays::default(),
                events: broadcast::channel(256).0,
                worker_events: broadcast::channel(256).0,
                closing: AtomicBool::new(false),
                spares_starting: Mutex::new(std::collections::HashSet::new()),
                cgroup_parent: tokio::sync::OnceCell::new(),
                network_lock: tokio::sync::Mutex::new(()),
            }),
        };
        tokio::spawn(events::follow_events(Arc::downgrade(&backend.inner)));
        Ok(backend)
    }

    /// The options.
    pub fn options(&self) -> &DockerOptions {
        &self.inner.options
    }

    /// How many receivers follow this backend's container events (the
    /// agent's `WatchEvents` clients, the pool).
    pub fn event_watchers(&self) -> usize {
        self.inner.events.receiver_count()
    }

    /// Container events (exited, OOM-killed).
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.inner.events.subscribe()
    }

    /// Known workers (started and adopted).
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let workers = lock(&self.inner.workers);
        let mut list: Vec<ContainerInfo> = workers.values().map(|e| e.info.clone()).collect();
        list.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        list
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

    /// The engine's bollard client, for image builds; an error for engines
    /// without one (fakes).
    fn image_builder(&self) -> Result<ImageBuilder, ImageBuildError> {
        self.inner
            .engine
            .docker()
            .map(ImageBuilder::from_docker)
            .ok_or_else(|| ImageBuildError::Build {
                tag: String::new(),
                message: "this engine cannot build images".to_string(),
            })
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
        let builder = self.image_builder()?;
        if only_if_missing && builder.exists(&job.tag).await {
            return Ok(false);
        }
        builder.build(job, output).await?;
        // A rebuilt tag may have another ENTRYPOINT/CMD.
        lock(&self.inner.images).remove(&job.tag);
        Ok(true)
    }

    /// Builds an offline runtime base image (the agent's `BuildBaseImage`,
    /// see [`base_image`]); `Ok(false)` when it exists and not `force`.
    pub async fn build_base_image(
        &self,
        runtime: &str,
        force: bool,
        output: &mut (dyn FnMut(&str) + Send),
    ) -> Result<bool, ImageBuildError> {
        let builder = self.image_builder()?;
        let built = base_image::build(&builder, runtime, force, output).await?;
        lock(&self.inner.images).clear();
        Ok(built)
    }

    /// The supervisor client (for callers building [`ContainerWorker`]s).
    pub fn supervisor_client(&self) -> SupervisorClient {
        self.inner.client.clone()
    }

    /// Removes the instance network if no container uses it any more, and
    /// stops the relays (an agent exiting while adoptable workers run keeps
    /// them, and the engine keeps their network).
    pub async fn release_network(&self) {
        self.inner.remove_network().await;
    }

    /// Removes every container labelled with this instance — known to this
    /// backend or not (adopted, left by an earlier agent, still starting) —
    /// then the instance network and the relays: what an agent owned by an
    /// `esb up` does when either of them stops, so nothing outlives them.
    /// Returns how many containers it removed.
    pub async fn remove_instance(&self) -> usize {
        self.inner.closing.store(true, Ordering::SeqCst);
        let ids: Vec<String> = lock(&self.inner.workers).keys().cloned().collect();
        let mut removed = 0;
        for id in ids {
            self.inner.destroy(&id).await;
            removed += 1;
        }
        match self
            .inner
            .engine
            .list_containers(&self.inner.options.instance_label())
            .await
        {
            Ok(containers) => {
                for container in containers {
                    self.inner.remove_container(&container.id).await;
                    removed += 1;
                }
            }
            Err(e) => tracing::warn!("listing the instance's containers: {e}"),
        }
        self.inner.remove_network().await;
        removed
    }

    /// Removes every container this backend knows and the instance network
    /// (when no container uses it any more).
    pub async fn shutdown(&self) {
        let ids: Vec<String> = lock(&self.inner.workers).keys().cloned().collect();
        for id in ids {
            self.inner.destroy(&id).await;
        }
        self.inner.remove_network().await;
    }
}

impl Inner {
    async fn remove_container(&self, container_id: &str) {
        if let Err(e) = self.engine.remove_container(container_id).await {
            tracing::debug!("remove container {container_id}: {e}");
        }
    }

    async fn destroy(&self, worker_id: &str) {
        let entry = lock(&self.workers).remove(worker_id);
        if let Some(entry) = entry {
            entry.alive.store(false, Ordering::SeqCst);
            self.remove_container(&entry.info.container_id).await;
        }
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
        // The function's output, streamed from the supervisor (its
        // container's own output carries only the supervisor's errors).
        esb_agent_client::logs::follow(
            info.endpoint,
            spec.name.clone(),
            info.worker_id.clone(),
            self.inner.options.log_sink.clone(),
            alive.clone(),
        );
        Ok(Arc::new(ContainerWorker::new(
            info.worker_id,
            info.endpoint,
            spec.timeout,
            self.inner.client.clone(),
            alive,
            Arc::new(self.clone()),
        )))
    }

    async fn list_workers(&self) -> Result<Vec<esb_runtimes_core::WorkerInfo>, RuntimeError> {
        let workers = lock(&self.inner.workers);
        let mut list: Vec<_> = workers
            .values()
            .map(|e| esb_runtimes_core::WorkerInfo {
                id: e.info.worker_id.clone(),
                function: e.info.function.clone(),
                code_hash: e.info.code_hash.clone(),
                pid: None,
                state: if !e.alive.load(Ordering::SeqCst) {
                    "exited"
                } else if !e.claimed {
                    "adopted"
                } else {
                    "running"
                }
                .to_string(),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn shutdown(&self) {
        DockerBackend::shutdown(self).await;
    }

    fn events(&self) -> Option<broadcast::Receiver<esb_runtimes_core::WorkerEvent>> {
        Some(self.inner.worker_events.subscribe())
    }
}

#[cfg(test)]
mod tests;
