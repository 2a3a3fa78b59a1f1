//! Test doubles at the engine boundary (feature `test-util`): a recording
//! [`FakeEngine`] that keeps containers, networks and images in memory and
//! a [`FakeSupervisor`] answering the supervisor's `/ready` and `/status`
//! on a loopback port, so Adopt & Sync, the janitor, starts and engine
//! events are tested without a daemon.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bollard::models::ContainerCreateBody;
use bytes::Bytes;
use esb_container_supervisor::wire::{ReadyResponse, StatusResponse};
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::{Request, Response};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::engine::{
    ContainerState, Engine, EngineError, EngineEvent, EventStream, ImageFacts, LogStream,
};

/// One call the fake engine received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineCall {
    /// `list_containers` with its label filter.
    ListContainers(String),
    /// `create_container` with the container name and image.
    CreateContainer {
        /// Container name.
        name: String,
        /// Image.
        image: String,
    },
    /// `start_container`.
    StartContainer(String),
    /// `remove_container`.
    RemoveContainer(String),
    /// `create_network`.
    CreateNetwork(String),
    /// `remove_network`.
    RemoveNetwork(String),
    /// `prune_networks`.
    PruneNetworks,
}

/// A container the fake engine holds.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    /// Container name.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Running or stopped.
    pub running: bool,
    /// Address reported for it.
    pub ip: Option<IpAddr>,
    /// The create request (None for seeded containers).
    pub body: Option<ContainerCreateBody>,
}

#[derive(Default)]
struct State {
    calls: Vec<EngineCall>,
    containers: BTreeMap<String, FakeContainer>,
    networks: BTreeMap<String, IpAddr>,
    images: HashMap<String, ImageFacts>,
    next: u32,
    cgroup_parent: Option<String>,
    /// When set, `create_container` waits for it after the container
    /// exists (a slow engine, to test what runs meanwhile).
    hold_create: Option<Arc<tokio::sync::Notify>>,
}

/// A recording, in-memory container engine. Containers it starts get the
/// address 127.0.0.1 (where a [`FakeSupervisor`] can listen).
#[derive(Clone)]
pub struct FakeEngine {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<EngineEvent>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::channel(64).0,
        }
    }
}

impl std::fmt::Debug for FakeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeEngine").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn matches(labels: &HashMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(filter),
    }
}

impl FakeEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// What [`Engine::worker_cgroup_parent`] answers (default `None`).
    pub fn set_cgroup_parent(&self, parent: Option<&str>) {
        lock(&self.state).cgroup_parent = parent.map(str::to_string);
    }

    /// Makes every later `create_container` wait, once the container
    /// exists, until the returned notify is signalled (once per create).
    pub fn hold_creates(&self) -> Arc<tokio::sync::Notify> {
        let notify = Arc::new(tokio::sync::Notify::new());
        lock(&self.state).hold_create = Some(notify.clone());
        notify
    }

    /// Makes `image` available with these facts.
    pub fn add_image(&self, image: &str, facts: ImageFacts) {
        lock(&self.state).images.insert(image.to_string(), facts);
    }

    /// Puts a container there as if an earlier agent had started it.
    pub fn seed_container(&self, id: &str, container: FakeContainer) {
        lock(&self.state)
            .containers
            .insert(id.to_string(), container);
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<EngineCall> {
        lock(&self.state).calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        lock(&self.state).calls.clear();
    }

    /// The containers it holds now, by id.
    pub fn containers(&self) -> BTreeMap<String, FakeContainer> {
        lock(&self.state).containers.clone()
    }

    /// Network names it holds now.
    pub fn networks(&self) -> Vec<String> {
        lock(&self.state).networks.keys().cloned().collect()
    }

    /// Stops a container from outside (`docker kill`) and emits `die`.
    pub fn kill(&self, id: &str) {
        let labels = {
            let mut state = lock(&self.state);
            let Some(c) = state.containers.get_mut(id) else {
                return;
            };
            c.running = false;
            c.labels.clone()
        };
        let _ = self.events.send(EngineEvent {
            action: "die".to_string(),
            attributes: labels,
        });
    }
}

#[async_trait::async_trait]
impl Engine for FakeEngine {
    async fn worker_cgroup_parent(&self) -> Option<String> {
        lock(&self.state).cgroup_parent.clone()
    }

    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn list_containers(&self, label: &str) -> Result<Vec<ContainerState>, EngineError> {
        let mut state = lock(&self.state);
        state
            .calls
            .push(EngineCall::ListContainers(label.to_string()));
        Ok(state
            .containers
            .iter()
            .filter(|(_, c)| matches(&c.labels, label))
            .map(|(id, c)| ContainerState {
                id: id.clone(),
                labels: c.labels.clone(),
                running: c.running,
                ip: c.ip,
            })
            .collect())
    }

    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        let (id, hold) = {
            let mut state = lock(&self.state);
            let image = body.image.clone().unwrap_or_default();
            state.calls.push(EngineCall::CreateContainer {
                name: name.to_string(),
                image: image.clone(),
            });
            if !state.images.contains_key(&image) {
                return Err(EngineError::Other(format!("no such image: {image}")));
            }
            state.next += 1;
            let id = format!("fake{:04}", state.next);
            state.containers.insert(
                id.clone(),
                FakeContainer {
                    name: name.to_string(),
                    labels: body.labels.clone().unwrap_or_default(),
                    running: false,
                    ip: None,
                    body: Some(body),
                },
            );
            (id, state.hold_create.clone())
        };
        if let Some(hold) = hold {
            hold.notified().await;
        }
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<Option<IpAddr>, EngineError> {
        let mut state = lock(&self.state);
        state.calls.push(EngineCall::StartContainer(id.to_string()));
        let container = state
            .containers
            .get_mut(id)
            .ok_or_else(|| EngineError::Other(format!("no such container: {id}")))?;
        container.running = true;
        container.ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        Ok(container.ip)
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        let removed = {
            let mut state = lock(&self.state);
            state
                .calls
                .push(EngineCall::RemoveContainer(id.to_string()));
            // By id or by name, as Docker's API takes either.
            let key = state
                .containers
                .iter()
                .find(|(key, c)| key.as_str() == id || c.name == id)
                .map(|(key, _)| key.clone());
            key.and_then(|key| state.containers.remove(&key))
        };
        let Some(removed) = removed else {
            return Err(EngineError::Other(format!("no such container: {id}")));
        };
        let _ = self.events.send(EngineEvent {
            action: "destroy".to_string(),
            attributes: removed.labels,
        });
        Ok(())
    }

    async fn image_facts(&self, image: &str) -> Result<ImageFacts, EngineError> {
        lock(&self.state)
            .images
            .get(image)
            .cloned()
            .ok_or_else(|| EngineError::Other(format!("no such image: {image}")))
    }

    async fn network_gateway(&self, name: &str) -> Result<Option<IpAddr>, EngineError> {
        // A real engine answers after a round trip: other tasks run meanwhile.
        tokio::task::yield_now().await;
        lock(&self.state)
            .networks
            .get(name)
            .map(|gw| Some(*gw))
            .ok_or_else(|| EngineError::Other(format!("no such network: {name}")))
    }

    async fn create_network(
        &self,
        name: &str,
        _labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        tokio::task::yield_now().await;
        let mut state = lock(&self.state);
        state
            .calls
            .push(EngineCall::CreateNetwork(name.to_string()));
        // Relays bind the gateway address: loopback works without a bridge.
        state
            .networks
            .insert(name.to_string(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        let mut state = lock(&self.state);
        state
            .calls
            .push(EngineCall::RemoveNetwork(name.to_string()));
        state.networks.remove(name);
        Ok(())
    }

    async fn prune_networks(&self, _label: &str) -> Result<(), EngineError> {
        lock(&self.state).calls.push(EngineCall::PruneNetworks);
        Ok(())
    }

    fn events(&self, label: &str) -> EventStream {
        let label = label.to_string();
        Box::pin(
            BroadcastStream::new(self.events.subscribe()).filter_map(move |e| {
                let event = e.ok().filter(|e| matches(&e.attributes, &label));
                std::future::ready(event.map(Ok))
            }),
        )
    }

    fn logs(&self, _id: &str) -> LogStream {
        Box::pin(futures_util::stream::empty())
    }
}

/// A fake in-container supervisor: answers `GET /ready` (ready at once) and
/// `GET /status` with what the test sets.
#[derive(Clone)]
pub struct FakeSupervisor {
    status: Arc<Mutex<StatusResponse>>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl std::fmt::Debug for FakeSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSupervisor")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeSupervisor {
    /// Starts one on a free loopback port for worker `worker_id`.
    pub async fn start(worker_id: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let status = Arc::new(Mutex::new(StatusResponse {
            worker_id: worker_id.to_string(),
            function: String::new(),
            code_hash: String::new(),
            alive: true,
            busy: false,
            idle_ms: 0,
            invocations: 0,
        }));
        let shared = status.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let status = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<_>| {
                        let status = lock(&status).clone();
                        async move {
                            let body = if request.uri().path() == "/ready" {
                                serde_json::to_vec(&ReadyResponse {
                                    worker_id: status.worker_id,
                                    init_duration_us: Some(1000),
                                    error: None,
                                })
                            } else {
                                serde_json::to_vec(&status)
                            }
                            .unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { status, addr })
    }

    /// Changes what `/status` answers.
    pub fn set(&self, change: impl FnOnce(&mut StatusResponse)) {
        change(&mut lock(&self.status));
    }
}
