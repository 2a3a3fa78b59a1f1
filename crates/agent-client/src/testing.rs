//! An in-process fake agent (feature `test-util`): a real gRPC server on a
//! loopback port that hands out recorded workers without any engine, so
//! the client side (and the pool over it) is tested without a daemon,
//! including the agent going away and coming back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::proto::{self, agent_server};

/// One call the fake agent received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCall {
    /// `EnsureWorker` for a function, with the caller's `exclude` list.
    Ensure {
        /// Function name.
        function: String,
        /// Ids the caller already holds.
        exclude: Vec<String>,
    },
    /// `DestroyWorker`.
    Destroy(String),
    /// `BuildImage` for a tag.
    BuildImage(String),
    /// `BuildBaseImage` for a runtime.
    BuildBaseImage(String),
}

#[derive(Default)]
struct State {
    calls: Vec<AgentCall>,
    workers: BTreeMap<String, proto::WorkerInfo>,
    next: u32,
}

/// What the fake agent knows; shared by the server task and the test.
#[derive(Clone)]
pub struct FakeAgent {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<proto::WorkerEvent>,
    boot_id: String,
    /// `host:port` handed out as every worker's supervisor endpoint.
    pub worker_endpoint: String,
}

impl std::fmt::Debug for FakeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAgent")
            .field("boot_id", &self.boot_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeAgent {
    /// A fake agent whose workers claim to listen at `worker_endpoint`.
    pub fn new(boot_id: &str, worker_endpoint: &str) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            events: broadcast::channel(64).0,
            boot_id: boot_id.to_string(),
            worker_endpoint: worker_endpoint.to_string(),
        }
    }

    /// Serves it on `addr` (port 0 for any) on a runtime of its own, so
    /// [`RunningAgent::kill`] ends every connection at once, as a crash
    /// would. Returns once it listens.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<RunningAgent> {
        let agent = self.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let bound = tokio::net::TcpListener::bind(addr)
                    .await
                    .and_then(|l| Ok((l.local_addr()?, l)));
                let listener = match bound {
                    Ok((local, listener)) => {
                        let _ = ready_tx.send(Ok(local));
                        listener
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let serve = tonic::transport::Server::builder()
                    .add_service(agent_server::AgentServer::new(agent))
                    .serve_with_incoming(incoming);
                tokio::select! {
                    _ = serve => {},
                    _ = kill_rx => {},
                }
            });
            // Dropping the runtime ends every connection task.
        });
        let addr = ready_rx
            .await
            .map_err(|_| std::io::Error::other("fake agent thread died"))??;
        Ok(RunningAgent {
            addr,
            kill: Some(kill_tx),
            thread: Some(thread),
        })
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<AgentCall> {
        lock(&self.state).calls.clone()
    }

    /// Ids of the workers it runs now.
    pub fn worker_ids(&self) -> Vec<String> {
        lock(&self.state).workers.keys().cloned().collect()
    }

    /// Adds a worker as Adopt & Sync would after a restart.
    pub fn adopt(&self, worker_id: &str, function: &str) {
        lock(&self.state).workers.insert(
            worker_id.to_string(),
            proto::WorkerInfo {
                worker_id: worker_id.to_string(),
                container_id: format!("c-{worker_id}"),
                function: function.to_string(),
                code_hash: "h".to_string(),
                endpoint: self.worker_endpoint.clone(),
                adopted: true,
                init_duration_us: None,
            },
        );
    }

    /// Reports a worker's container as gone (killed outside ESB).
    pub fn kill(&self, worker_id: &str) {
        let info = lock(&self.state).workers.remove(worker_id);
        let function = info.map(|i| i.function).unwrap_or_default();
        let _ = self.events.send(proto::WorkerEvent {
            worker_id: worker_id.to_string(),
            function,
            kind: proto::worker_event::Kind::Exited.into(),
        });
    }

    /// How many clients follow its events now.
    pub fn watchers(&self) -> usize {
        self.events.receiver_count()
    }
}

/// A fake agent being served.
#[derive(Debug)]
pub struct RunningAgent {
    /// Where it listens.
    pub addr: SocketAddr,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    /// Stops it as a crash would (no goodbye to clients) and waits.
    pub async fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::WorkerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl agent_server::Agent for FakeAgent {
    async fn ensure_worker(
        &self,
        request: Request<proto::EnsureWorkerRequest>,
    ) -> Result<Response<proto::WorkerInfo>, Status> {
        let request = request.into_inner();
        let spec = request
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let mut state = lock(&self.state);
        state.calls.push(AgentCall::Ensure {
            function: spec.name.clone(),
            exclude: request.exclude.clone(),
        });
        let adopted = state
            .workers
            .values()
            .find(|w| {
                w.function == spec.name && w.adopted && !request.exclude.contains(&w.worker_id)
            })
            .cloned();
        if let Some(mut info) = adopted {
            info.adopted = false;
            state.workers.insert(info.worker_id.clone(), info.clone());
            return Ok(Response::new(info));
        }
        state.next += 1;
        let info = proto::WorkerInfo {
            worker_id: format!("{}-w{}", self.boot_id, state.next),
            container_id: format!("c{}", state.next),
            function: spec.name,
            code_hash: spec.code_hash,
            endpoint: self.worker_endpoint.clone(),
            adopted: false,
            init_duration_us: Some(1000),
        };
        state.workers.insert(info.worker_id.clone(), info.clone());
        Ok(Response::new(info))
    }

    async fn destroy_worker(
        &self,
        request: Request<proto::DestroyWorkerRequest>,
    ) -> Result<Response<proto::DestroyWorkerResponse>, Status> {
        let id = request.into_inner().worker_id;
        let mut state = lock(&self.state);
        state.calls.push(AgentCall::Destroy(id.clone()));
        state.workers.remove(&id);
        Ok(Response::new(proto::DestroyWorkerResponse {}))
    }

    async fn list_workers(
        &self,
        _request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        let workers = lock(&self.state).workers.values().cloned().collect();
        Ok(Response::new(proto::ListWorkersResponse { workers }))
    }

    async fn health(
        &self,
        _request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        let workers = u32::try_from(lock(&self.state).workers.len()).unwrap_or(u32::MAX);
        Ok(Response::new(proto::HealthResponse {
            instance: "fake".to_string(),
            boot_id: self.boot_id.clone(),
            workers,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        _request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let stream = BroadcastStream::new(self.events.subscribe()).filter_map(|e| e.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn build_image(
        &self,
        request: Request<proto::BuildImageRequest>,
    ) -> Result<Response<proto::BuildImageResponse>, Status> {
        let tag = request.into_inner().tag;
        lock(&self.state)
            .calls
            .push(AgentCall::BuildImage(tag.clone()));
        Ok(Response::new(proto::BuildImageResponse {
            built: true,
            output: vec![format!("built {tag}")],
        }))
    }

    async fn build_base_image(
        &self,
        request: Request<proto::BuildBaseImageRequest>,
    ) -> Result<Response<proto::BuildImageResponse>, Status> {
        let runtime = request.into_inner().runtime;
        lock(&self.state)
            .calls
            .push(AgentCall::BuildBaseImage(runtime.clone()));
        Ok(Response::new(proto::BuildImageResponse {
            built: true,
            output: vec![format!("built {runtime}")],
        }))
    }
}
