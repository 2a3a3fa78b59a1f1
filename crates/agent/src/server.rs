//! `esb agent --listen ADDR`: the gRPC service over a [`DockerBackend`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use esb_agent_client::auth::{AgentToken, CheckToken};
use esb_agent_client::proto::{self, agent_server};
use esb_runtimes_core::RuntimeError;
use esb_runtimes_core::launch::PythonBootstrap;
use esb_runtimes_docker::{
    BollardEngine, ContainerEventKind, ContainerInfo, DockerBackend, DockerOptions, SupervisorMount,
};
use futures_util::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::publish::Publisher;

/// Environment variable a parent process hands its child agent the token
/// in (the command line is visible to every user; the environment is not).
pub const CHILD_TOKEN_ENV: &str = "ESB_AGENT_TOKEN";

/// Arguments of `esb agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// gRPC address (keep it on loopback or a private network: workers must
    /// not reach it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// ESB instance id: containers and the network carry it.
    #[arg(long, value_name = "ID", default_value = "default")]
    pub instance: String,
    /// A statically linked executable to mount as the supervisor instead of
    /// this one (it is run as `FILE container-supervisor`). Default: this
    /// `esb` executable with its own loader and libraries.
    #[arg(long, value_name = "FILE", env = "ESB_SUPERVISOR_BIN", hide = true)]
    pub supervisor: Option<PathBuf>,
    /// Remove workers idle this long.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime_duration)]
    pub idle_timeout: Duration,
    /// Python runtime client: auto, builtin or awslambdaric.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub python_bootstrap: String,
    /// Directory for ESB's built-in runtime files.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The agent port's shared token: read from FILE, created (mode 0600)
    /// when missing. Default: `<cache-dir>/agent.token`. Every call must
    /// carry it (`esb up` reads the same file, see docs/docker.md).
    #[arg(long, value_name = "FILE", env = "ESB_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Do not keep a started, unclaimed spare container per function ready
    /// for its next cold start (kept by default; the janitor removes it
    /// after the idle timeout).
    #[arg(long)]
    pub no_ready_spare: bool,
    /// Exit when this process exits (set by `esb up` for its local agent).
    #[arg(long, value_name = "PID", hide = true)]
    pub parent_pid: Option<u32>,
    /// Container engine: `docker` (the Docker engine API) or `containerd`
    /// (containerd's gRPC API, namespace `--containerd-namespace`).
    #[arg(long, value_name = "ENGINE", default_value = "docker", value_parser = ["docker", "containerd"])]
    pub engine: String,
    /// containerd's socket (`--engine containerd`).
    #[arg(
        long,
        value_name = "PATH",
        env = "ESB_CONTAINERD_ADDRESS",
        default_value = esb_runtimes_containerd::DEFAULT_ADDRESS
    )]
    pub containerd_address: PathBuf,
    /// containerd namespace of the images and containers.
    #[arg(long, value_name = "NS", default_value = esb_runtimes_containerd::DEFAULT_NAMESPACE)]
    pub containerd_namespace: String,
    /// Serve image builds only: no supervisor binary needed, no Adopt &
    /// Sync, no janitor (the agent `esb build` / `esb images build` start).
    #[arg(long, hide = true)]
    pub builds_only: bool,
    /// Publish each worker's supervisor port on this address of the node
    /// (an ephemeral port per worker, forwarded by the agent) and report
    /// that as the worker's endpoint: for a compute node whose containers'
    /// addresses the control host cannot reach (another host). Default:
    /// report the container's own address.
    #[arg(long, value_name = "IP")]
    pub advertise: Option<std::net::IpAddr>,
    /// Copy the supervisor (this executable and its shared objects) into
    /// DIR and mount it into workers from there: for an agent running in
    /// a container, where DIR is mounted at the same path on the engine's
    /// host (the box image's agent service).
    #[arg(long, value_name = "DIR")]
    pub stage_supervisor: Option<PathBuf>,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("invalid duration {text:?} (e.g. 30s, 5m)"))
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The docker backend could not start.
    #[error(transparent)]
    Docker(#[from] esb_runtimes_docker::DockerError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("agent server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A bad argument.
    #[error("{0}")]
    Argument(String),
    /// The token file could not be read or created.
    #[error(transparent)]
    Token(#[from] esb_agent_client::auth::TokenError),
    /// containerd could not be reached.
    #[error(transparent)]
    Containerd(#[from] esb_runtimes_containerd::ContainerdError),
}

/// The engine `--engine` names (and the containerd engine itself, when it
/// is that one).
async fn connect_engine(
    args: &AgentArgs,
) -> Result<
    (
        Arc<dyn esb_runtimes_docker::Engine>,
        Option<esb_runtimes_containerd::ContainerdEngine>,
    ),
    AgentError,
> {
    if args.engine == "containerd" {
        let mut options =
            esb_runtimes_containerd::ContainerdOptions::new(args.containerd_address.clone());
        options.namespace = args.containerd_namespace.clone();
        options.state_dir = PathBuf::from("/run/esb-containerd").join(&args.instance);
        let engine = esb_runtimes_containerd::ContainerdEngine::connect(options).await?;
        return Ok((Arc::new(engine.clone()), Some(engine)));
    }
    let engine = BollardEngine::connect()
        .await
        .map_err(esb_runtimes_docker::DockerError::from)?;
    Ok((Arc::new(engine), None))
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct AgentService {
    backend: DockerBackend,
    boot_id: String,
    /// The containerd engine (`--engine containerd`): a base image built
    /// through Docker is imported into its namespace by `BuildBaseImage`.
    containerd: Option<esb_runtimes_containerd::ContainerdEngine>,
    publisher: Option<Arc<Publisher>>,
}

impl AgentService {
    /// A service over `backend`.
    pub fn new(backend: DockerBackend) -> Self {
        Self {
            backend,
            boot_id: uuid_like(),
            containerd: None,
            publisher: None,
        }
    }

    /// The same over the containerd engine `engine`.
    pub fn with_containerd(
        backend: DockerBackend,
        engine: Option<esb_runtimes_containerd::ContainerdEngine>,
    ) -> Self {
        Self {
            containerd: engine,
            ..Self::new(backend)
        }
    }

    /// Reports workers' endpoints as ports published by `publisher` (see
    /// [`crate::publish`]).
    pub fn with_publisher(mut self, publisher: Arc<Publisher>) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// A worker as the client sees it: with the published endpoint when
    /// the agent publishes.
    /// `caller` is the address the request came from: the only one the
    /// published port accepts.
    async fn reported(
        &self,
        mut info: ContainerInfo,
        caller: Option<std::net::IpAddr>,
    ) -> Result<proto::WorkerInfo, Status> {
        if let Some(publisher) = &self.publisher {
            let caller = caller.ok_or_else(|| {
                Status::failed_precondition(
                    "cannot publish a worker to a caller of unknown address",
                )
            })?;
            info.endpoint = publisher
                .publish(&info.worker_id, info.endpoint, caller)
                .await
                .map_err(|e| Status::unavailable(format!("cannot publish the worker: {e}")))?;
        }
        Ok(info_to_proto(info))
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}-{:x}", std::process::id(), nanos)
}

fn info_to_proto(info: ContainerInfo) -> proto::WorkerInfo {
    proto::WorkerInfo {
        worker_id: info.worker_id,
        container_id: info.container_id,
        function: info.function,
        code_hash: info.code_hash,
        endpoint: info.endpoint.to_string(),
        adopted: info.adopted,
        init_duration_us: info
            .init_duration
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
    }
}

fn status_from_error(error: RuntimeError) -> Status {
    match error {
        RuntimeError::Init { payload, .. } => {
            let mut status =
                Status::failed_precondition(String::from_utf8_lossy(&payload).into_owned());
            status.metadata_mut().insert(
                esb_agent_client::INIT_ERROR_KEY,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            status
        }
        RuntimeError::UnsupportedRuntime { .. } | RuntimeError::InvalidCode { .. } => {
            Status::invalid_argument(error.to_string())
        }
        other => Status::unavailable(other.to_string()),
    }
}

fn build_status(error: esb_runtimes_docker::ImageBuildError) -> Status {
    match error {
        esb_runtimes_docker::ImageBuildError::Engine(e) => Status::unavailable(e.to_string()),
        other => Status::failed_precondition(other.to_string()),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::WorkerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl agent_server::Agent for AgentService {
    async fn ensure_worker(
        &self,
        request: Request<proto::EnsureWorkerRequest>,
    ) -> Result<Response<proto::WorkerInfo>, Status> {
        let caller = request.remote_addr().map(|a| a.ip());
        let request = request.into_inner();
        let spec = request
            .spec
            .map(esb_agent_client::spec_from_proto)
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let info = self
            .backend
            .ensure_worker(&spec, &request.exclude)
            .await
            .map_err(status_from_error)?;
        Ok(Response::new(self.reported(info, caller).await?))
    }

    async fn destroy_worker(
        &self,
        request: Request<proto::DestroyWorkerRequest>,
    ) -> Result<Response<proto::DestroyWorkerResponse>, Status> {
        let worker_id = request.into_inner().worker_id;
        self.backend.destroy_worker(&worker_id).await;
        if let Some(publisher) = &self.publisher {
            publisher.unpublish(&worker_id);
        }
        Ok(Response::new(proto::DestroyWorkerResponse {}))
    }

    async fn list_workers(
        &self,
        _request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        let publisher = self.publisher.as_deref();
        let workers = self
            .backend
            .containers()
            .into_iter()
            .map(|mut info| {
                // Only workers handed out are published; others show
                // their container address.
                if let Some(public) = publisher.and_then(|p| p.published(&info.worker_id)) {
                    info.endpoint = public;
                }
                info_to_proto(info)
            })
            .collect();
        Ok(Response::new(proto::ListWorkersResponse { workers }))
    }

    async fn health(
        &self,
        _request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        Ok(Response::new(proto::HealthResponse {
            instance: self.backend.options().instance.clone(),
            boot_id: self.boot_id.clone(),
            workers: u32::try_from(self.backend.containers().len()).unwrap_or(u32::MAX),
        }))
    }

    async fn build_image(
        &self,
        request: Request<proto::BuildImageRequest>,
    ) -> Result<Response<proto::BuildImageResponse>, Status> {
        let request = request.into_inner();
        if request.tag.is_empty() || request.dockerfile.is_empty() {
            return Err(Status::invalid_argument("tag and dockerfile are required"));
        }
        let job = esb_runtimes_docker::ImageBuild {
            function: request.function,
            context: PathBuf::from(request.context_dir),
            dockerfile: request.dockerfile,
            tag: request.tag,
        };
        let mut output = Vec::new();
        let built = self
            .backend
            .build_image(&job, request.only_if_missing, &mut |line: &str| {
                output.push(line.to_string());
            })
            .await
            .map_err(build_status)?;
        Ok(Response::new(proto::BuildImageResponse { built, output }))
    }

    async fn build_base_image(
        &self,
        request: Request<proto::BuildBaseImageRequest>,
    ) -> Result<Response<proto::BuildImageResponse>, Status> {
        let request = request.into_inner();
        if esb_runtimes_docker::base_image::image_for_runtime(&request.runtime).is_none() {
            return Err(Status::invalid_argument(format!(
                "unknown base image {} (known: {})",
                request.runtime,
                esb_runtimes_docker::base_image::KNOWN
            )));
        }
        let mut output = Vec::new();
        let built = self
            .backend
            .build_base_image(&request.runtime, request.force, &mut |line: &str| {
                // The agent's log shows the progress as it goes (a local
                // agent shares `esb up`'s standard error).
                eprintln!("  {line}");
                output.push(line.to_string());
            })
            .await
            .map_err(|e| {
                // The failing step's output is the useful part of the error.
                let tail = output.join("\n");
                match build_status(e) {
                    s if tail.is_empty() => s,
                    s => Status::new(s.code(), format!("{}\n{tail}", s.message())),
                }
            })?;
        // containerd: bring the image into the namespace now (an import of
        // a new or rebuilt image takes seconds), not at the first request.
        let mut built = built;
        if let (Some(engine), Some((repo, tag))) = (
            &self.containerd,
            esb_runtimes_docker::base_image::image_for_runtime(&request.runtime),
        ) {
            let image = format!("{repo}:{tag}");
            let started = std::time::Instant::now();
            engine
                .resolve_image(&image)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            if started.elapsed() > Duration::from_secs(1) {
                let line = format!("imported {image} into containerd namespace");
                eprintln!("  {line}");
                output.push(line);
                built = true;
            }
        }
        Ok(Response::new(proto::BuildImageResponse { built, output }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let stream = BroadcastStream::new(self.backend.subscribe()).filter_map(|event| {
            let event = event.ok()?;
            let kind = match event.kind {
                ContainerEventKind::Exited => proto::worker_event::Kind::Exited,
                ContainerEventKind::OomKilled => proto::worker_event::Kind::OomKilled,
            };
            Some(Ok(proto::WorkerEvent {
                worker_id: event.worker_id,
                function: event.function,
                kind: kind.into(),
            }))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Runs `esb agent` until Ctrl-C / SIGTERM (or the parent process exits):
/// connects to the engine, runs Adopt & Sync, starts the janitor, serves
/// gRPC. Prints `esb agent listening on ADDR` once bound.
pub async fn run(args: &AgentArgs) -> Result<(), AgentError> {
    let supervisor = match &args.supervisor {
        Some(path) => SupervisorMount::static_executable(path.clone()),
        None => {
            SupervisorMount::this_executable().map_err(|e| AgentError::Argument(e.to_string()))?
        }
    };
    let supervisor = match &args.stage_supervisor {
        Some(dir) if !args.builds_only => crate::stage::stage(&supervisor, dir).map_err(|e| {
            AgentError::Argument(format!("--stage-supervisor {}: {e}", dir.display()))
        })?,
        _ => supervisor,
    };
    let mut options = DockerOptions::new(args.instance.clone(), supervisor);
    options.python_bootstrap = PythonBootstrap::parse(&args.python_bootstrap).ok_or_else(|| {
        AgentError::Argument(format!(
            "--python-bootstrap {:?}: expected auto, builtin or awslambdaric",
            args.python_bootstrap
        ))
    })?;
    if let Some(dir) = &args.cache_dir {
        options.cache_dir = dir.clone();
    }
    options.ready_spare = !args.no_ready_spare && !args.builds_only;
    // The token: a child agent gets it in its environment (never on its
    // command line); otherwise from the token file.
    let token = match std::env::var(CHILD_TOKEN_ENV)
        .ok()
        .and_then(|t| AgentToken::parse(&t))
    {
        Some(token) => token,
        None => {
            let file = args
                .token_file
                .clone()
                .unwrap_or_else(|| options.cache_dir.join(esb_agent_client::auth::TOKEN_FILE));
            AgentToken::load_or_create(&file)?
        }
    };
    let (engine, containerd) = connect_engine(args).await?;
    let (backend, janitor) = if args.builds_only {
        let backend = DockerBackend::with_engine(engine, options).await?;
        (backend, None)
    } else {
        if !options.supervisor.exe.is_file() {
            return Err(esb_runtimes_docker::DockerError::NoSupervisor(
                options.supervisor.exe.clone(),
            )
            .into());
        }
        let backend = DockerBackend::with_engine(engine, options).await?;
        let report = backend.adopt_and_sync().await?;
        eprintln!(
            "esb agent: adopted {} warm worker(s), removed {} stale container(s)",
            report.adopted.len(),
            report.removed.len()
        );
        let janitor_every =
            (args.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let janitor = backend.spawn_janitor(args.idle_timeout, janitor_every);
        (backend, Some(janitor))
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: args.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| AgentError::Bind {
        addr: args.listen,
        source,
    })?;
    println!("esb agent listening on {local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut agent_service = AgentService::with_containerd(backend.clone(), containerd);
    if let Some(ip) = args.advertise {
        let publisher = Arc::new(Publisher::new(ip));
        tokio::spawn(unpublish_gone(backend.clone(), Arc::downgrade(&publisher)));
        agent_service = agent_service.with_publisher(publisher);
    }
    let service = agent_server::AgentServer::with_interceptor(agent_service, CheckToken(token));
    let incoming = crate::limits::limited_incoming(listener, crate::limits::MAX_CONNECTIONS);
    let parent = args.parent_pid;
    // The agent of an `esb up` (its own child): whichever of the two stops
    // first, by whatever signal, the containers, the network and the
    // relays go with them — removed as soon as the signal arrives, while
    // the server still answers `esb up`'s last calls. A restarted `esb up`
    // starts afresh (its agent's Adopt & Sync removes what a SIGKILL left).
    let owned = parent.is_some() && !args.builds_only;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let cleanup = backend.clone();
    let stop = async move {
        shutdown(parent).await;
        if owned {
            let removed = cleanup.remove_instance().await;
            eprintln!(
                "esb agent: stopping; removed {removed} container(s) and the instance network"
            );
        }
        let _ = stopped_tx.send(());
    };
    let serve = crate::limits::server_builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop);
    // Graceful shutdown waits for open streams (a client's WatchEvents):
    // give them a moment, not forever.
    let result = tokio::select! {
        result = serve => result,
        _ = async {
            if stopped_rx.await.is_ok() {
                tokio::time::sleep(Duration::from_secs(2)).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => Ok(()),
    };
    if let Some(janitor) = janitor {
        janitor.abort();
    }
    if owned {
        // Anything that started while the first pass ran.
        backend.remove_instance().await;
    } else {
        // A standalone agent keeps its running workers for the next agent
        // to adopt; the network goes once no container uses it.
        backend.release_network().await;
    }
    result.map_err(AgentError::from)
}

/// Stops publishing workers whose containers are gone (exited, removed by
/// the janitor or from outside).
async fn unpublish_gone(backend: DockerBackend, publisher: std::sync::Weak<Publisher>) {
    let mut events = backend.subscribe();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(publisher) = publisher.upgrade() else { return };
                match event {
                    Ok(event) if event.kind == ContainerEventKind::Exited => {
                        publisher.unpublish(&event.worker_id);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
            _ = sweep.tick() => {
                let Some(publisher) = publisher.upgrade() else { return };
                let known = backend.containers().into_iter().map(|c| c.worker_id).collect();
                publisher.retain(&known);
            }
        }
    }
}

async fn shutdown(parent: Option<u32>) {
    let parent_gone = async {
        match parent {
            Some(pid) => loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
            },
            None => std::future::pending::<()>().await,
        }
    };
    use tokio::signal::unix::{SignalKind, signal};
    let on = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    // Every signal that stops a process by default and can be caught: a
    // process group signalled by systemd, `docker stop`, a closed terminal
    // (SIGHUP) or Ctrl-\ (SIGQUIT) must still clean up.
    tokio::select! {
        _ = on(SignalKind::interrupt()) => {},
        _ = on(SignalKind::terminate()) => {},
        _ = on(SignalKind::hangup()) => {},
        _ = on(SignalKind::quit()) => {},
        _ = parent_gone => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn init_errors_keep_their_payload() {
        let status = status_from_error(RuntimeError::Init {
            function: "f".to_string(),
            payload: bytes_payload(),
        });
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status
                .metadata()
                .get(esb_agent_client::INIT_ERROR_KEY)
                .is_some()
        );
        assert!(status.message().contains("Runtime.ExitError"));
    }

    fn bytes_payload() -> bytes::Bytes {
        bytes::Bytes::from_static(br#"{"errorType":"Runtime.ExitError"}"#)
    }
}
