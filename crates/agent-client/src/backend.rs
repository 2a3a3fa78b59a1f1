//! [`AgentBackend`]: the pool's view of a (local or remote) agent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use esb_runtimes_core::{
    FunctionSpec, LogSink, RuntimeBackend, RuntimeError, Worker, WorkerEvent, WorkerInfo,
};
use tokio::sync::broadcast;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{AddToken, AgentToken};
use crate::proto::{self, agent_client::AgentClient};
use crate::{ContainerWorker, ImageBuild, SupervisorClient, WorkerOwner};

struct Inner {
    client: AgentClient<InterceptedService<Channel, AddToken>>,
    supervisors: SupervisorClient,
    /// Workers this process holds: id → shared `alive` flag.
    held: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Function and endpoint of each held worker (for a lost node).
    meta: Mutex<HashMap<String, (String, SocketAddr)>>,
    /// The agent's events, re-published for the pool.
    events: broadcast::Sender<WorkerEvent>,
    /// Where the output of the workers this process starts goes (each
    /// followed from its supervisor, `crate::logs`); none: it stays in the
    /// supervisor's bounded queue.
    log_sink: Mutex<Option<Arc<dyn LogSink>>>,
}

/// A [`RuntimeBackend`] that gets its workers from an agent over gRPC.
#[derive(Clone)]
pub struct AgentBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBackend").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn agent_error(status: &tonic::Status) -> RuntimeError {
    RuntimeError::Backend(format!("agent: {}", status.message()))
}

impl AgentBackend {
    /// Connects to the agent at `url` (`http://host:port`), retrying for up
    /// to `wait`, and starts following its worker events. No token: for
    /// agents served without one (tests).
    pub async fn connect(url: &str, wait: Duration) -> Result<Self, RuntimeError> {
        Self::connect_with_token(url, wait, None).await
    }

    /// [`AgentBackend::connect`], sending `token` with every call (the
    /// agent refuses calls without it). HTTP/2 keep-alive pings notice a
    /// lost node within a minute and a half.
    pub async fn connect_with_token(
        url: &str,
        wait: Duration,
        token: Option<AgentToken>,
    ) -> Result<Self, RuntimeError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| RuntimeError::Backend(format!("agent url {url}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(60))
            .keep_alive_while_idle(true);
        let deadline = tokio::time::Instant::now() + wait;
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(RuntimeError::Backend(format!(
                        "cannot reach the agent at {url}: {e}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let backend = Self {
            inner: Arc::new(Inner {
                client: AgentClient::with_interceptor(channel, AddToken(token)),
                supervisors: SupervisorClient::default(),
                held: Mutex::new(HashMap::new()),
                meta: Mutex::new(HashMap::new()),
                events: broadcast::channel(256).0,
                log_sink: Mutex::new(None),
            }),
        };
        tokio::spawn(watch_events(Arc::downgrade(&backend.inner)));
        Ok(backend)
    }

    /// The agent's health (instance id, boot id, worker count).
    pub async fn health(&self) -> Result<proto::HealthResponse, RuntimeError> {
        let mut client = self.inner.client.clone();
        client
            .health(proto::HealthRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| agent_error(&s))
    }

    /// How many workers this client holds on the agent.
    pub fn held_count(&self) -> usize {
        let mut held = lock(&self.inner.held);
        held.retain(|_, alive| alive.load(Ordering::SeqCst));
        held.len()
    }

    /// The workers this client holds (alive): id and supervisor endpoint.
    pub fn held_workers(&self) -> Vec<(String, SocketAddr)> {
        let alive: Vec<String> = {
            let mut held = lock(&self.inner.held);
            held.retain(|_, alive| alive.load(Ordering::SeqCst));
            held.keys().cloned().collect()
        };
        let meta = lock(&self.inner.meta);
        alive
            .into_iter()
            .filter_map(|id| meta.get(&id).map(|(_, addr)| (id, *addr)))
            .collect()
    }

    /// Marks the held workers `ids` dead (their node was lost and they do
    /// not answer: the pool drops them and starts new ones elsewhere) and
    /// tells the pool. Returns how many it dropped.
    pub fn drop_held(&self, ids: &[String]) -> usize {
        let mut dropped = 0;
        for id in ids {
            let alive = lock(&self.inner.held).remove(id);
            let meta = lock(&self.inner.meta).remove(id);
            if let Some(alive) = alive {
                alive.store(false, Ordering::SeqCst);
                dropped += 1;
                let _ = self.inner.events.send(WorkerEvent::Exited {
                    worker_id: id.clone(),
                    function: meta.map(|(f, _)| f).unwrap_or_default(),
                });
            }
        }
        dropped
    }

    /// Asks the agent to remove a worker this client no longer holds.
    pub async fn destroy_unheld(&self, worker_id: &str) -> Result<(), RuntimeError> {
        let mut client = self.inner.client.clone();
        client
            .destroy_worker(proto::DestroyWorkerRequest {
                worker_id: worker_id.to_string(),
            })
            .await
            .map(|_| ())
            .map_err(|s| agent_error(&s))
    }

    /// The workers the agent knows, as it reports them (container ids,
    /// endpoints, adopted or not).
    pub async fn agent_workers(&self) -> Result<Vec<proto::WorkerInfo>, RuntimeError> {
        let mut client = self.inner.client.clone();
        client
            .list_workers(proto::ListWorkersRequest {})
            .await
            .map(|r| r.into_inner().workers)
            .map_err(|s| agent_error(&s))
    }

    /// Asks the agent to build an image function's image (the context is
    /// a path on the agent's machine). With `only_if_missing`, an existing
    /// tag is kept. Returns whether it built, and the build output.
    pub async fn build_image(
        &self,
        job: &ImageBuild,
        only_if_missing: bool,
    ) -> Result<(bool, Vec<String>), RuntimeError> {
        let mut client = self.inner.client.clone();
        client
            .build_image(proto::BuildImageRequest {
                function: job.function.clone(),
                context_dir: job.context.display().to_string(),
                dockerfile: job.dockerfile.clone(),
                tag: job.tag.clone(),
                only_if_missing,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.built, r.output)
            })
            .map_err(|s| agent_error(&s))
    }

    /// Asks the agent to build an offline runtime base image
    /// (`python3.11`); returns whether it built, and its output.
    pub async fn build_base_image(
        &self,
        runtime: &str,
        force: bool,
    ) -> Result<(bool, Vec<String>), RuntimeError> {
        let mut client = self.inner.client.clone();
        client
            .build_base_image(proto::BuildBaseImageRequest {
                runtime: runtime.to_string(),
                force,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.built, r.output)
            })
            .map_err(|s| agent_error(&s))
    }
}

/// Marks held workers dead as the agent reports their containers gone and
/// re-publishes the events; reconnects after the agent restarts.
async fn watch_events(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let mut client = inner.client.clone();
        drop(inner);
        if let Ok(response) = client.watch_events(proto::WatchEventsRequest {}).await {
            let mut stream = response.into_inner();
            while let Ok(Some(event)) = stream.message().await {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                if event.kind() == proto::worker_event::Kind::Exited {
                    if let Some(alive) = lock(&inner.held).get(&event.worker_id) {
                        alive.store(false, Ordering::SeqCst);
                    }
                    let _ = inner.events.send(WorkerEvent::Exited {
                        worker_id: event.worker_id,
                        function: event.function,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[async_trait::async_trait]
impl WorkerOwner for AgentBackend {
    async fn destroy(&self, worker_id: &str) {
        lock(&self.inner.held).remove(worker_id);
        lock(&self.inner.meta).remove(worker_id);
        let mut client = self.inner.client.clone();
        let _ = client
            .destroy_worker(proto::DestroyWorkerRequest {
                worker_id: worker_id.to_string(),
            })
            .await;
    }
}

#[async_trait::async_trait]
impl RuntimeBackend for AgentBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start_worker(&self, spec: Arc<FunctionSpec>) -> Result<Arc<dyn Worker>, RuntimeError> {
        let exclude: Vec<String> = {
            let mut held = lock(&self.inner.held);
            held.retain(|_, alive| alive.load(Ordering::SeqCst));
            held.keys().cloned().collect()
        };
        let mut client = self.inner.client.clone();
        let info = client
            .ensure_worker(proto::EnsureWorkerRequest {
                spec: Some(crate::spec_to_proto(&spec)),
                exclude,
            })
            .await
            .map_err(|status| {
                if status.metadata().get(crate::INIT_ERROR_KEY).is_some() {
                    RuntimeError::Init {
                        function: spec.name.clone(),
                        payload: Bytes::from(status.message().to_string()),
                    }
                } else {
                    agent_error(&status)
                }
            })?
            .into_inner();
        let endpoint: SocketAddr = info.endpoint.parse().map_err(|_| {
            RuntimeError::Backend(format!("agent sent a bad endpoint {:?}", info.endpoint))
        })?;
        let alive = Arc::new(AtomicBool::new(true));
        lock(&self.inner.held).insert(info.worker_id.clone(), alive.clone());
        {
            let mut meta = lock(&self.inner.meta);
            let held = lock(&self.inner.held);
            meta.retain(|id, _| held.contains_key(id));
            meta.insert(info.worker_id.clone(), (spec.name.clone(), endpoint));
        }
        if let Some(sink) = lock(&self.inner.log_sink).clone() {
            crate::logs::follow(
                endpoint,
                spec.name.clone(),
                info.worker_id.clone(),
                sink,
                alive.clone(),
            );
        }
        Ok(Arc::new(ContainerWorker::new(
            info.worker_id,
            endpoint,
            spec.timeout,
            self.inner.supervisors.clone(),
            alive,
            Arc::new(self.clone()),
        )))
    }

    /// Every worker the agent runs for its instance (including adopted
    /// ones nobody holds yet).
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, RuntimeError> {
        let held = lock(&self.inner.held).clone();
        Ok(self
            .agent_workers()
            .await?
            .into_iter()
            .map(|w| {
                let state = match held.get(&w.worker_id) {
                    Some(alive) if !alive.load(Ordering::SeqCst) => "exited",
                    Some(_) => "running",
                    None if w.adopted => "adopted",
                    None => "idle",
                };
                WorkerInfo {
                    id: w.worker_id,
                    function: w.function,
                    code_hash: w.code_hash,
                    pid: None,
                    state: state.to_string(),
                }
            })
            .collect())
    }

    /// Destroys every worker this client holds. The agent itself (and
    /// workers of other clients) stays: a local agent is stopped by its
    /// parent, a remote one is not ours to stop.
    async fn shutdown(&self) {
        let ids: Vec<String> = lock(&self.inner.held).keys().cloned().collect();
        for id in ids {
            WorkerOwner::destroy(self, &id).await;
        }
    }

    fn events(&self) -> Option<broadcast::Receiver<WorkerEvent>> {
        Some(self.inner.events.subscribe())
    }

    fn set_log_sink(&self, sink: Arc<dyn LogSink>) {
        *lock(&self.inner.log_sink) = Some(sink);
    }
}
