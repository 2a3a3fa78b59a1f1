//! The docker runtime's logic against the recording fake engine and fake
//! supervisors: no daemon needed (the real-daemon tests are in
//! `tests/docker.rs`).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use esb_runtimes_core::launch::ImageConfig;
use esb_runtimes_core::{FunctionSpec, RuntimeBackend, WorkerEvent};

use crate::fake::{EngineCall, FakeContainer, FakeEngine, FakeSupervisor};
use crate::{
    DEFAULT_PYTHON_IMAGE, DockerBackend, DockerOptions, ImageFacts, LABEL_CODE_HASH,
    LABEL_FUNCTION, LABEL_INSTANCE, LABEL_PORT, LABEL_WORKER, SupervisorMount,
};

const INSTANCE: &str = "t1";

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("esb-fake-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(supervisor_port: u16) -> DockerOptions {
    let mut options = DockerOptions::new(INSTANCE, SupervisorMount::static_executable("/opt/esb"));
    options.supervisor_port = supervisor_port;
    options.cache_dir = temp_dir();
    options.start_timeout = Duration::from_secs(5);
    options
}

fn spec(name: &str, code_hash: &str) -> Arc<FunctionSpec> {
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
        code_hash: code_hash.to_string(),
    })
}

fn labels(
    instance: &str,
    worker: &str,
    function: &str,
    hash: &str,
    port: u16,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_WORKER.to_string(), worker.to_string()),
        (LABEL_FUNCTION.to_string(), function.to_string()),
        (LABEL_CODE_HASH.to_string(), hash.to_string()),
        (LABEL_PORT.to_string(), port.to_string()),
    ])
}

/// A container an earlier agent left running, answered by `supervisor`.
fn seeded(worker: &str, function: &str, hash: &str, port: u16, running: bool) -> FakeContainer {
    FakeContainer {
        name: format!("esb-{worker}"),
        labels: labels(INSTANCE, worker, function, hash, port),
        running,
        ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        body: None,
    }
}

fn esb_image(engine: &FakeEngine) {
    engine.add_image(
        DEFAULT_PYTHON_IMAGE,
        ImageFacts {
            config: ImageConfig {
                working_dir: Some("/var/task".to_string()),
                esb_runtime: Some("python3.11".to_string()),
                ..Default::default()
            },
            esb_image: true,
            awslambdaric: false,
        },
    );
}

/// A port nothing listens on.
/// A backend over `engine` (given the ESB image) whose containers are
/// all answered by one fake supervisor, which the caller keeps alive.
async fn fake_backend(engine: &FakeEngine) -> (FakeSupervisor, DockerBackend) {
    esb_image(engine);
    let supervisor = FakeSupervisor::start("any").await.unwrap();
    let backend =
        DockerBackend::with_engine(Arc::new(engine.clone()), options(supervisor.addr.port()))
            .await
            .unwrap();
    (supervisor, backend)
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn adopt_and_sync_keeps_answering_workers_and_removes_the_rest() {
    let engine = FakeEngine::new();
    let ok = FakeSupervisor::start("w-ok").await.unwrap();
    let impostor = FakeSupervisor::start("someone-else").await.unwrap();
    engine.seed_container("c-ok", seeded("w-ok", "f", "h1", ok.addr.port(), true));
    engine.seed_container(
        "c-impostor",
        seeded("w-impostor", "f", "h1", impostor.addr.port(), true),
    );
    engine.seed_container(
        "c-stopped",
        seeded("w-stopped", "f", "h1", ok.addr.port(), false),
    );
    engine.seed_container(
        "c-silent",
        seeded("w-silent", "f", "h1", closed_port(), true),
    );
    let mut other = seeded("w-other", "f", "h1", ok.addr.port(), true);
    other.labels = labels("another-instance", "w-other", "f", "h1", ok.addr.port());
    engine.seed_container("c-other", other);

    let backend = DockerBackend::with_engine(Arc::new(engine.clone()), options(1))
        .await
        .unwrap();
    let mut report = backend.adopt_and_sync().await.unwrap();
    report.removed.sort();
    assert_eq!(report.adopted, vec!["w-ok".to_string()]);
    assert_eq!(report.removed, vec!["w-impostor", "w-silent", "w-stopped"]);
    let left: Vec<String> = engine.containers().into_keys().collect();
    assert_eq!(
        left,
        vec!["c-ok", "c-other"],
        "other instances are not touched"
    );
    assert!(engine.calls().contains(&EngineCall::PruneNetworks));
    let listed = backend.list_workers().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "w-ok");
    assert_eq!(listed[0].state, "adopted");
}

#[tokio::test]
async fn an_adopted_worker_is_handed_out_once_and_stale_code_is_removed() {
    let engine = FakeEngine::new();
    esb_image(&engine);
    let ok = FakeSupervisor::start("w-ok").await.unwrap();
    let stale = FakeSupervisor::start("w-stale").await.unwrap();
    engine.seed_container("c-ok", seeded("w-ok", "f", "h1", ok.addr.port(), true));
    engine.seed_container(
        "c-stale",
        seeded("w-stale", "f", "h0", stale.addr.port(), true),
    );
    // New containers' supervisors answer here.
    let fresh = FakeSupervisor::start("fresh").await.unwrap();
    let backend = DockerBackend::with_engine(Arc::new(engine.clone()), options(fresh.addr.port()))
        .await
        .unwrap();
    backend.adopt_and_sync().await.unwrap();
    engine.clear_calls();

    let first = backend.ensure_worker(&spec("f", "h1"), &[]).await.unwrap();
    assert_eq!(first.worker_id, "w-ok");
    assert!(first.adopted);
    assert!(
        !engine.containers().contains_key("c-stale"),
        "stale code removed"
    );
    assert!(
        !engine
            .calls()
            .iter()
            .any(|c| matches!(c, EngineCall::CreateContainer { .. })),
        "adoption starts nothing"
    );
    // The adopted worker is claimed: the next caller gets a new container.
    let second = backend.ensure_worker(&spec("f", "h1"), &[]).await.unwrap();
    assert_ne!(second.worker_id, "w-ok");
    assert!(!second.adopted);
}

#[tokio::test]
async fn a_new_worker_gets_a_hardened_container_on_the_instance_network() {
    let engine = FakeEngine::new();
    // A cgroupfs engine: each worker's cgroup at the top, not under /docker.
    engine.set_cgroup_parent(Some("/"));
    let (_supervisor, backend) = fake_backend(&engine).await;
    let worker = backend
        .start_worker(spec("Hello World", "h1"))
        .await
        .unwrap();
    assert!(worker.is_alive());

    let containers = engine.containers();
    assert_eq!(containers.len(), 1);
    let container = containers.values().next().unwrap();
    assert!(container.running);
    assert!(
        container.name.starts_with("esb-t1-hello-world-"),
        "{}",
        container.name
    );
    let body = container.body.clone().unwrap();
    let host = body.host_config.clone().unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_string()])
    );
    assert_eq!(host.memory, Some(128 * 1024 * 1024));
    assert_eq!(host.memory_swap, host.memory, "no swap beyond the limit");
    assert_eq!(host.pids_limit, Some(256));
    assert_eq!(host.network_mode.as_deref(), Some("esb-t1"));
    assert_eq!(host.cgroup_parent.as_deref(), Some("/"));
    assert_eq!(host.cpu_shares, Some(2048));
    let binds = host.binds.unwrap();
    assert!(
        binds.contains(&"/opt/esb:/esb/esb:ro".to_string()),
        "{binds:?}"
    );
    assert!(
        binds.contains(&"/srv/code:/var/task:ro".to_string()),
        "{binds:?}"
    );
    assert_eq!(body.user.as_deref(), Some("993:990"));
    assert_eq!(
        body.entrypoint,
        Some(vec![
            "/esb/esb".to_string(),
            "container-supervisor".to_string()
        ])
    );
    let labels = body.labels.unwrap();
    assert_eq!(labels[LABEL_WORKER], worker.id());
    assert_eq!(labels[LABEL_CODE_HASH], "h1");
    // The launch plan in the supervisor's configuration comes from the one
    // planner, with container paths.
    let env = body.env.unwrap();
    let config = env[0]
        .strip_prefix(&format!("{}=", esb_container_supervisor::CONFIG_ENV))
        .unwrap();
    let config: esb_container_supervisor::ContainerConfig = serde_json::from_str(config).unwrap();
    assert_eq!(config.launch.program, "python3");
    assert_eq!(
        config.launch.args,
        vec![
            "-S".to_string(),
            "/esb/runtime/python-bootstrap/esb_bootstrap.py".to_string(),
            "app.handler".to_string()
        ]
    );
    assert_eq!(engine.networks(), vec!["esb-t1".to_string()]);
}

#[tokio::test]
async fn a_missing_image_fails_the_start_with_the_build_command() {
    let engine = FakeEngine::new();
    let backend = DockerBackend::with_engine(Arc::new(engine.clone()), options(1))
        .await
        .unwrap();
    let err = backend.start_worker(spec("f", "h1")).await.unwrap_err();
    assert!(err.to_string().contains("esb images build"), "{err}");
    assert!(engine.containers().is_empty());
}

#[tokio::test]
async fn the_janitor_removes_unknown_stopped_dead_and_idle_containers() {
    let engine = FakeEngine::new();
    let busy = FakeSupervisor::start("w-busy").await.unwrap();
    let idle = FakeSupervisor::start("w-idle").await.unwrap();
    let dead = FakeSupervisor::start("w-dead").await.unwrap();
    let stopping = FakeSupervisor::start("w-stopping").await.unwrap();
    for (id, s) in [
        ("w-busy", &busy),
        ("w-idle", &idle),
        ("w-dead", &dead),
        ("w-stopping", &stopping),
    ] {
        engine.seed_container(
            &format!("c-{id}"),
            seeded(id, "f", "h1", s.addr.port(), true),
        );
    }
    let backend = DockerBackend::with_engine(Arc::new(engine.clone()), options(1))
        .await
        .unwrap();
    assert_eq!(backend.adopt_and_sync().await.unwrap().adopted.len(), 4);
    // After adoption things change: one is busy for long, one idles past
    // the timeout, one's runtime exits, one container stops; and a
    // container nobody knows appears.
    busy.set(|s| {
        s.busy = true;
        s.idle_ms = 3_600_000;
    });
    idle.set(|s| s.idle_ms = 120_000);
    dead.set(|s| s.alive = false);
    engine.kill("c-w-stopping");
    engine.seed_container(
        "c-unknown",
        seeded("w-unknown", "f", "h1", busy.addr.port(), true),
    );

    backend.sweep(Duration::from_secs(60)).await;
    let left: Vec<String> = engine.containers().into_keys().collect();
    assert_eq!(left, vec!["c-w-busy"]);
    let known: Vec<String> = backend
        .containers()
        .into_iter()
        .map(|c| c.worker_id)
        .collect();
    assert_eq!(known, vec!["w-busy"]);
}

type Starting = tokio::task::JoinHandle<
    Result<Arc<dyn esb_runtimes_core::Worker>, esb_runtimes_core::RuntimeError>,
>;

/// A worker start held inside the engine's `create_container` (the
/// container exists, the call has not returned): the engine, the backend,
/// the notify that lets the create finish, the start's task and the fake
/// supervisor the worker will reach.
async fn start_held_at_create() -> (
    FakeEngine,
    DockerBackend,
    Arc<tokio::sync::Notify>,
    Starting,
    FakeSupervisor,
) {
    let engine = FakeEngine::new();
    let (supervisor, backend) = fake_backend(&engine).await;
    let release = engine.hold_creates();
    let starting = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.start_worker(spec("f", "h1")).await })
    };
    eventually("container created", || engine.containers().len() == 1).await;
    (engine, backend, release, starting, supervisor)
}

/// A janitor pass while the engine is still creating a worker's container
/// leaves it alone (it used to find a container of no known worker and
/// remove it, and the start then failed: "snapshot … does not exist").
#[tokio::test]
async fn the_janitor_leaves_a_container_that_is_being_created() {
    let (engine, backend, release, starting, _supervisor) = start_held_at_create().await;
    backend.sweep(Duration::from_secs(60)).await;
    assert_eq!(
        engine.containers().len(),
        1,
        "the janitor removed a starting worker's container"
    );
    release.notify_one();
    let worker = starting.await.unwrap().unwrap();
    assert!(worker.is_alive());
    let containers = engine.containers();
    assert_eq!(containers.len(), 1);
    assert!(containers.values().all(|c| c.running));
}

/// A start abandoned midway (the caller gone while the engine creates the
/// container) leaves neither the worker's entry nor its container behind.
#[tokio::test]
async fn an_abandoned_start_removes_its_worker_and_container() {
    let (engine, backend, _release, starting, _supervisor) = start_held_at_create().await;
    assert_eq!(backend.containers().len(), 1, "registered while starting");
    starting.abort();
    assert!(starting.await.unwrap_err().is_cancelled());
    eventually("container removed", || engine.containers().is_empty()).await;
    assert!(backend.containers().is_empty());
}

#[tokio::test]
async fn a_container_killed_outside_esb_marks_its_worker_dead_and_is_reported() {
    let engine = FakeEngine::new();
    let (_supervisor, backend) = fake_backend(&engine).await;
    let mut events = backend.events().unwrap();
    let worker = backend.start_worker(spec("f", "h1")).await.unwrap();
    let container = engine.containers().into_keys().next().unwrap();
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
    eventually("worker marked dead", || !worker.is_alive()).await;
}

#[tokio::test]
async fn shutdown_removes_containers_network_and_relays_and_is_idempotent() {
    let engine = FakeEngine::new();
    let (_supervisor, backend) = fake_backend(&engine).await;
    let mut with_s3 = (*spec("f", "h1")).clone();
    with_s3.environment.insert(
        "AWS_ENDPOINT_URL_S3".to_string(),
        format!("http://127.0.0.1:{}", closed_port()),
    );
    backend.start_worker(Arc::new(with_s3)).await.unwrap();
    backend.start_worker(spec("g", "h1")).await.unwrap();
    assert_eq!(engine.containers().len(), 2);
    assert_eq!(backend.inner.relays.count(), 1);

    RuntimeBackend::shutdown(&backend).await;
    assert!(engine.containers().is_empty());
    assert!(engine.networks().is_empty());
    assert_eq!(backend.inner.relays.count(), 0);
    assert!(backend.list_workers().await.unwrap().is_empty());
    RuntimeBackend::shutdown(&backend).await;
}

#[tokio::test]
async fn a_ready_spare_is_handed_out_and_refilled_and_stop_removes_everything() {
    let engine = FakeEngine::new();
    esb_image(&engine);
    let supervisor = FakeSupervisor::start("any").await.unwrap();
    let mut opts = options(supervisor.addr.port());
    opts.ready_spare = true;
    let backend = DockerBackend::with_engine(Arc::new(engine.clone()), opts)
        .await
        .unwrap();
    let f = spec("f", "h1");
    let first = backend.ensure_worker(&f, &[]).await.unwrap();
    // One for the caller, one spare started behind it.
    eventually("a spare", || engine.containers().len() == 2).await;
    eventually("the spare is ready", || {
        backend
            .containers()
            .iter()
            .filter(|c| c.endpoint.port() != 0)
            .count()
            == 2
    })
    .await;
    let spare_id = backend
        .containers()
        .into_iter()
        .find(|c| c.worker_id != first.worker_id)
        .unwrap()
        .worker_id;
    // The next cold start takes the spare (no create), and a new spare follows.
    engine.clear_calls();
    let second = backend.ensure_worker(&f, &[]).await.unwrap();
    assert_eq!(second.worker_id, spare_id);
    eventually("a new spare", || engine.containers().len() == 3).await;
    // Another code hash gets no stale spare.
    assert_ne!(
        backend
            .ensure_worker(&spec("f", "h2"), &[])
            .await
            .unwrap()
            .worker_id,
        first.worker_id
    );
    // Stopping removes workers and spares alike.
    backend.remove_instance().await;
    eventually("nothing left", || engine.containers().is_empty()).await;
    assert!(
        backend.ensure_worker(&f, &[]).await.is_err(),
        "stopping: no new worker"
    );
}

#[tokio::test]
async fn concurrent_cold_starts_create_the_instance_network_once() {
    // Engine 20.10 makes a second network of the same name when asked;
    // then every lookup by name is ambiguous and all starts fail.
    let engine = FakeEngine::new();
    let (_supervisor, backend) = fake_backend(&engine).await;
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..6 {
        let backend = backend.clone();
        starts.spawn(async move {
            backend
                .ensure_worker(&spec(&format!("f{i}"), "h1"), &[])
                .await
        });
    }
    while let Some(started) = starts.join_next().await {
        started.unwrap().unwrap();
    }
    let creates = engine
        .calls()
        .iter()
        .filter(|c| matches!(c, EngineCall::CreateNetwork(_)))
        .count();
    assert_eq!(creates, 1, "{:?}", engine.calls());
}
