//! The agent served in-process over the recording fake engine, with the
//! real client: workers survive an agent restart (Adopt & Sync), are not
//! handed out twice, and engine events reach the client over the
//! re-established stream. No daemon needed.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use esb_agent::AgentService;
use esb_agent_client::AgentBackend;
use esb_agent_client::proto::agent_server::AgentServer;
use esb_runtimes_core::launch::ImageConfig;
use esb_runtimes_core::{FunctionSpec, RuntimeBackend, WorkerEvent};
use esb_runtimes_docker::fake::{FakeEngine, FakeSupervisor};
use esb_runtimes_docker::{
    DEFAULT_PYTHON_IMAGE, DockerBackend, DockerOptions, ImageFacts, SupervisorMount,
};

fn spec(name: &str) -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec {
        name: name.to_string(),
        runtime: "python3.11".to_string(),
        handler: Some("app.handler".to_string()),
        code_dir: PathBuf::from("/srv/code"),
        image: None,
        memory_mb: 128,
        timeout: Duration::from_secs(3),
        environment: Default::default(),
        region: "us-east-1".to_string(),
        account_id: "123456789012".to_string(),
        code_hash: "h1".to_string(),
    })
}

/// An agent "process": its own runtime on its own thread, so stopping it
/// drops every task and connection at once, as kill -9 would.
struct AgentProcess {
    backend: DockerBackend,
    addr: SocketAddr,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentProcess {
    /// Runs as `esb agent` does, but over `engine`: connect, Adopt & Sync,
    /// serve on `addr`.
    async fn start(engine: &FakeEngine, supervisor_port: u16, addr: SocketAddr) -> Self {
        let engine = engine.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut options =
                    DockerOptions::new("restart", SupervisorMount::static_executable("/opt/esb"));
                options.supervisor_port = supervisor_port;
                options.cache_dir = std::env::temp_dir().join("esb-agent-restart-test");
                let backend = DockerBackend::with_engine(Arc::new(engine), options)
                    .await
                    .unwrap();
                backend.adopt_and_sync().await.unwrap();
                // The port of a killed agent may linger for a moment.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let listener = loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) => {
                            assert!(tokio::time::Instant::now() < deadline, "rebind {addr}: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                let local = listener.local_addr().unwrap();
                let service = AgentServer::new(AgentService::new(backend.clone()));
                let _ = ready_tx.send((backend, local));
                let serve = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
                tokio::select! {
                    _ = serve => {},
                    _ = kill_rx => {},
                }
            });
            // Dropping the runtime here ends every connection task.
        });
        let (backend, addr) = ready_rx.await.unwrap();
        Self {
            backend,
            addr,
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    async fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join().unwrap())
                .await
                .unwrap();
        }
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn workers_survive_an_agent_restart_and_events_follow_the_new_agent() {
    let engine = FakeEngine::new();
    engine.add_image(
        DEFAULT_PYTHON_IMAGE,
        ImageFacts {
            config: ImageConfig {
                esb_runtime: Some("python3.11".to_string()),
                ..Default::default()
            },
            esb_image: true,
            awslambdaric: false,
        },
    );
    let supervisor = FakeSupervisor::start("pending").await.unwrap();
    let first = AgentProcess::start(
        &engine,
        supervisor.addr.port(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let addr = first.addr;

    let client = AgentBackend::connect(&format!("http://{addr}"), Duration::from_secs(5))
        .await
        .unwrap();
    let first_boot = client.health().await.unwrap().boot_id;
    let worker = client.start_worker(spec("f")).await.unwrap();
    supervisor.set(|s| s.worker_id = worker.id().to_string());
    let listed = client.list_workers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, "running");
    assert_eq!(first.backend.containers().len(), 1);

    // kill -9 of the agent: the container keeps running.
    first.kill().await;
    let second = AgentProcess::start(&engine, supervisor.addr.port(), addr).await;
    let second_backend = second.backend.clone();
    assert_eq!(
        second_backend.containers().len(),
        1,
        "adopted after restart"
    );
    assert_ne!(client.health().await.unwrap().boot_id, first_boot);

    // The client holds the adopted worker: a new start gets a new one.
    let other = client.start_worker(spec("f")).await.unwrap();
    assert_ne!(other.id(), worker.id());
    assert_eq!(engine.containers().len(), 2);

    // Events reach the client over the re-established stream.
    let mut events = client.events().unwrap();
    eventually("client re-subscribed", || {
        second_backend.event_watchers() > 0
    })
    .await;
    let container = engine
        .containers()
        .into_iter()
        .find(|(_, c)| c.labels.values().any(|v| v == worker.id()))
        .unwrap()
        .0;
    engine.kill(&container);
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        WorkerEvent::Exited {
            worker_id: worker.id().to_string(),
            function: "f".to_string()
        }
    );
    eventually("held worker marked dead", || !worker.is_alive()).await;
    assert!(other.is_alive());

    // Shutdown destroys what this client holds.
    client.shutdown().await;
    eventually("containers removed", || engine.containers().is_empty()).await;
}
