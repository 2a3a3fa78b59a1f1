//! Several compute nodes behind one pool: [`NodeSet`] is the
//! [`RuntimeBackend`] of `esb up --runtime docker --agent URL[,URL...]`.
//!
//! Each node is one agent ([`AgentBackend`]). A monitor asks every node's
//! `Health` each second (2 s limit); three failures in a row mark the node
//! **lost**: new workers are placed on live nodes only, and each worker
//! held there gets a second to accept a TCP connection. Those that do
//! not (a network partition; an agent that published their ports and
//! died) are dropped: the pool discards them and starts new ones on the
//! remaining nodes, and an invocation running on one ends at once with a
//! transport error ("compute node URL was lost during the invocation": a
//! 502 to the client, instead of waiting for the function's timeout).
//! Those that still answer (a dead agent whose containers the control
//! host reaches directly) keep serving, as with a local agent.
//! When the node answers again it is **regained**: if the same agent
//! process answers (a network outage), the workers dropped while it was
//! away are removed through the agent; if a new agent answers (it was
//! restarted), its own Adopt & Sync has already adopted or removed every
//! container and it hands adopted ones out on the next `EnsureWorker`.
//!
//! Placement: the live node holding (or starting) the fewest of this
//! process's workers, ties broken round-robin. A start that fails because the node stopped
//! answering is retried on the next live node; a start the function
//! caused (init error, unsupported runtime) is not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esb_runtimes_core::{
    FunctionSpec, Invocation, InvokeResult, RuntimeBackend, RuntimeError, Worker, WorkerError,
    WorkerEvent, WorkerInfo,
};
use tokio::sync::{broadcast, watch};

use crate::AgentBackend;

/// How often each node is asked for its health.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a health answer may take (lenient: a loaded node building an
/// image must not look dead).
pub const PROBE_LIMIT: Duration = Duration::from_secs(2);
/// Failed probes in a row that make a node lost (so a node is lost within
/// about 3 × (1 s + 2 s)).
pub const PROBES_TO_LOSE: u32 = 3;
/// How long stopping may wait for one node to destroy its workers.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);
/// How long a lost node's worker gets to accept a connection before it is
/// dropped.
pub const REACH_LIMIT: Duration = Duration::from_secs(1);

/// A node's state as workers and the monitor see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeState {
    /// Answering.
    up: bool,
    /// Bumped on every loss.
    generation: u64,
    /// Bumped whenever workers were dropped.
    drops: u64,
}

/// One compute node (one agent).
pub struct Node {
    url: String,
    backend: AgentBackend,
    state: watch::Sender<NodeState>,
    /// The agent's boot id when it was last seen.
    boot_id: Mutex<Option<String>>,
    /// Workers dropped when it was lost (removed when the same agent
    /// comes back).
    dropped: Mutex<Vec<String>>,
    /// Worker starts under way there (counted by placement).
    starting: AtomicUsize,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("url", &self.url)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    /// A node over a connected agent.
    pub fn new(url: impl Into<String>, backend: AgentBackend) -> Self {
        Self {
            url: url.into(),
            backend,
            state: watch::channel(NodeState {
                up: true,
                generation: 0,
                drops: 0,
            })
            .0,
            boot_id: Mutex::new(None),
            dropped: Mutex::new(Vec::new()),
            starting: AtomicUsize::new(0),
        }
    }

    /// Workers held or being started there.
    fn load(&self) -> usize {
        self.backend.held_count() + self.starting.load(Ordering::SeqCst)
    }

    /// The agent's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The agent client.
    pub fn backend(&self) -> &AgentBackend {
        &self.backend
    }

    /// Whether the node answers.
    pub fn is_up(&self) -> bool {
        self.state.borrow().up
    }

    /// How many times its unreachable workers were checked and dropped
    /// (once per loss, after the check).
    pub fn drop_rounds(&self) -> u64 {
        self.state.borrow().drops
    }

    fn generation(&self) -> u64 {
        self.state.borrow().generation
    }

    /// One health probe: the agent's boot id, or why not.
    async fn probe(&self) -> Result<String, String> {
        match tokio::time::timeout(PROBE_LIMIT, self.backend.health()).await {
            Ok(Ok(health)) => Ok(health.boot_id),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PROBE_LIMIT:?}")),
        }
    }

    /// Marks the node lost (once). Its held workers whose supervisor no
    /// longer accepts a connection are dropped; ones that still answer (a
    /// dead agent whose workers the control host reaches directly) keep
    /// serving.
    async fn lose(&self, reason: &str) {
        let mut changed = false;
        self.state.send_if_modified(|s| {
            if s.up {
                s.up = false;
                s.generation += 1;
                changed = true;
            }
            changed
        });
        if !changed {
            return;
        }
        self.drop_unreachable(reason).await;
    }

    async fn drop_unreachable(&self, reason: &str) {
        let held = self.backend.held_workers();
        let checks = held.iter().map(|(id, addr)| async move {
            let reachable = matches!(
                tokio::time::timeout(REACH_LIMIT, tokio::net::TcpStream::connect(*addr)).await,
                Ok(Ok(_))
            );
            (!reachable).then(|| id.clone())
        });
        let gone: Vec<String> = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        let dropped = self.backend.drop_held(&gone);
        // Invocations running on dropped workers end now.
        self.state.send_modify(|s| s.drops += 1);
        tracing::warn!(
            "compute node {} lost ({reason}): {dropped} worker(s) dropped, {} still answer; new workers go to the remaining nodes",
            self.url,
            held.len() - gone.len()
        );
        lock(&self.dropped).extend(gone);
    }

    /// The node answered (again) with `boot_id`.
    async fn answered(&self, boot_id: String) {
        let previous = lock(&self.boot_id).replace(boot_id.clone());
        if self.is_up() {
            match previous {
                // A new agent answered between two probes: the workers
                // held on the old one went with its published ports.
                Some(ref p) if *p != boot_id => self.lose("the agent restarted").await,
                _ => return,
            }
        }
        let dropped = std::mem::take(&mut *lock(&self.dropped));
        let same_agent = previous.as_deref() == Some(boot_id.as_str());
        if same_agent {
            // The agent still counts them as handed out: remove them.
            for id in &dropped {
                let _ = tokio::time::timeout(PROBE_LIMIT, self.backend.destroy_unheld(id)).await;
            }
        }
        self.state.send_modify(|s| s.up = true);
        tracing::warn!(
            "compute node {} regained ({}); {} worker(s) dropped while it was away {}",
            self.url,
            if same_agent {
                "same agent"
            } else {
                "restarted agent"
            },
            dropped.len(),
            if same_agent {
                "were removed"
            } else {
                "are adopted or removed by its Adopt & Sync"
            }
        );
    }

    /// Resolves when the node is lost or has been lost since `generation`.
    async fn lost_since(&self, generation: u64) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| !s.up || s.generation != generation).await;
    }
}

/// Follows one node's health until the set is dropped.
async fn monitor(node: std::sync::Weak<Node>) {
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        match node.probe().await {
            Ok(boot_id) => {
                failures = 0;
                node.answered(boot_id).await;
            }
            Err(reason) => {
                failures += 1;
                tracing::debug!("compute node {}: health probe failed ({reason})", node.url);
                if failures >= PROBES_TO_LOSE {
                    node.lose(&reason).await;
                }
            }
        }
    }
}

/// The nodes of one `esb up`.
pub struct NodeSet {
    nodes: Vec<Arc<Node>>,
    next: AtomicUsize,
    events: broadcast::Sender<WorkerEvent>,
}

impl std::fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSet")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl NodeSet {
    /// A set over connected agents; starts their monitors and merges their
    /// worker events.
    pub fn new(nodes: Vec<Node>) -> Self {
        let nodes: Vec<Arc<Node>> = nodes.into_iter().map(Arc::new).collect();
        let events = broadcast::channel(256).0;
        for node in &nodes {
            tokio::spawn(monitor(Arc::downgrade(node)));
            if let Some(mut rx) = node.backend.events() {
                let tx: broadcast::Sender<WorkerEvent> = events.clone();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(event) => {
                                let _ = tx.send(event);
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
            }
        }
        Self {
            nodes,
            next: AtomicUsize::new(0),
            events,
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    /// Live nodes in placement order: fewest held workers first, ties
    /// round-robin.
    fn placement(&self) -> Vec<Arc<Node>> {
        let n = self.nodes.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut live: Vec<(usize, usize, Arc<Node>)> = (0..n)
            .map(|i| (i + start) % n)
            .map(|i| &self.nodes[i])
            .filter(|node| node.is_up())
            .enumerate()
            .map(|(rank, node)| (node.load(), rank, node.clone()))
            .collect();
        live.sort_by_key(|(held, rank, _)| (*held, *rank));
        live.into_iter().map(|(_, _, node)| node).collect()
    }

    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A worker on one node: its invocation ends when the node is lost and
/// the worker dropped.
#[derive(Debug)]
struct NodeWorker {
    inner: Arc<dyn Worker>,
    node: Arc<Node>,
}

impl NodeWorker {
    /// Resolves once this worker has been dropped with its node.
    async fn dropped(&self) {
        let mut rx = self.node.state.subscribe();
        loop {
            if !self.inner.is_alive() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[async_trait::async_trait]
impl Worker for NodeWorker {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        tokio::select! {
            result = self.inner.invoke(invocation) => result,
            () = self.dropped() => Err(WorkerError::Transport {
                worker: self.inner.id().to_string(),
                message: format!(
                    "compute node {} was lost during the invocation",
                    self.node.url
                ),
            }),
        }
    }

    fn is_alive(&self) -> bool {
        self.inner.is_alive()
    }

    async fn stop(&self) {
        if self.node.is_up() {
            // Never wait long on a node that stops answering meanwhile.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.stop()).await;
        }
    }
}

/// Counts a start under way until dropped.
struct Starting(Arc<Node>);

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::SeqCst);
    }
}

fn is_functions_fault(e: &RuntimeError) -> bool {
    matches!(
        e,
        RuntimeError::Init { .. }
            | RuntimeError::UnsupportedRuntime { .. }
            | RuntimeError::InvalidCode { .. }
    )
}

#[async_trait::async_trait]
impl RuntimeBackend for NodeSet {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start_worker(&self, spec: Arc<FunctionSpec>) -> Result<Arc<dyn Worker>, RuntimeError> {
        let mut last: Option<RuntimeError> = None;
        for node in self.placement() {
            let generation = node.generation();
            node.starting.fetch_add(1, Ordering::SeqCst);
            let _starting = Starting(node.clone());
            let started = tokio::select! {
                r = node.backend.start_worker(spec.clone()) => r,
                () = node.lost_since(generation) => {
                    last = Some(RuntimeError::Backend(format!(
                        "compute node {} was lost while starting a worker", node.url
                    )));
                    continue;
                }
            };
            match started {
                Ok(worker) => {
                    return Ok(Arc::new(NodeWorker {
                        inner: worker,
                        node,
                    }));
                }
                Err(e) if is_functions_fault(&e) => return Err(e),
                Err(e) => {
                    // The node's fault or the network's? Ask it.
                    if let Err(reason) = node.probe().await {
                        node.lose(&reason).await;
                        last = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            RuntimeError::NoCompute(format!(
                "no compute node is reachable (agents: {})",
                self.urls()
            ))
        }))
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, RuntimeError> {
        let mut all = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_up()) {
            if let Ok(Ok(list)) =
                tokio::time::timeout(PROBE_LIMIT, node.backend.list_workers()).await
            {
                all.extend(list);
            }
        }
        Ok(all)
    }

    /// Destroys the workers held on every node, all nodes at once. A node
    /// marked lost is asked too: it may be back (an agent restarted less
    /// than a probe ago) and still run workers this client holds, which
    /// would otherwise outlive `esb`; a node that is really gone fails
    /// fast or is given up after [`SHUTDOWN_LIMIT`].
    async fn shutdown(&self) {
        let each = self.nodes.iter().map(|node| async move {
            let _ = tokio::time::timeout(SHUTDOWN_LIMIT, node.backend.shutdown()).await;
        });
        futures_util::future::join_all(each).await;
    }

    fn events(&self) -> Option<broadcast::Receiver<WorkerEvent>> {
        Some(self.events.subscribe())
    }

    fn set_log_sink(&self, sink: Arc<dyn esb_runtimes_core::LogSink>) {
        for node in &self.nodes {
            node.backend.set_log_sink(sink.clone());
        }
    }
}
