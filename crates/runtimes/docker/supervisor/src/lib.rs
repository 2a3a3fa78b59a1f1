//! The in-container supervisor: the entrypoint of every docker worker.
//!
//! Runs as `esb container-supervisor` ([`main_from_env`]): the agent
//! bind-mounts its own `esb` executable read-only into the container (see
//! `esb_runtimes_docker::entry`). It reads its [`ContainerConfig`] from one environment
//! variable, starts the image's bootstrap through the same
//! [`esb_supervisor::Supervisor`] the `process` runtime uses (Runtime API on
//! the container's loopback), and serves the pool a tiny HTTP/1.1 API on one
//! port: `GET /ready` (waits for init), `POST /invoke` (one invocation,
//! the raw event in and the raw result out with a few headers, see
//! [`wire`]; keep-alive), `GET /status` (for the janitor) and `GET /logs`
//! (the function's output as a stream, see [`logs`]).
//!
//! Must not: talk to the container engine, decide when workers start or stop,
//! or know about routes and callers.
#![forbid(unsafe_code)]

pub mod logs;
pub mod wire;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_runtimes_core::{ErrorKind, InvocationOutcome, WorkerError};
use esb_supervisor::{Supervisor, SupervisorConfig};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use logs::{ContainerLogSink, LogBuffer};

pub use wire::{CONFIG_ENV, ContainerConfig, DEFAULT_PORT, TASK_ROOT};
use wire::{ReadyResponse, StatusResponse};

/// Largest invoke request body (the raw event; Lambda's limit is 6 MB,
/// the gateway enforces it, this bounds what a confused client can send).
const MAX_REQUEST_BYTES: usize = 7 * 1024 * 1024;

/// Why the supervisor could not run.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The configuration variable is missing or not valid JSON.
    #[error("invalid {CONFIG_ENV}: {0}")]
    Config(String),
    /// Binding the invoke port or a forwarded port failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The whole supervisor process: configuration from [`CONFIG_ENV`], a
/// single-threaded runtime (one invocation at a time; starts faster),
/// [`run`] until killed. What `esb container-supervisor` runs.
pub fn main_from_env() -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match config_from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("esb container-supervisor: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("esb container-supervisor: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("esb container-supervisor: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the configuration from [`CONFIG_ENV`].
pub fn config_from_env() -> Result<ContainerConfig, SupervisorError> {
    let text = std::env::var(CONFIG_ENV).map_err(|_| SupervisorError::Config("not set".into()))?;
    serde_json::from_str(&text).map_err(|e| SupervisorError::Config(e.to_string()))
}

enum Phase {
    Starting,
    Ready(Arc<Supervisor>),
    Failed(String),
}

struct State {
    worker_id: String,
    function: String,
    code_hash: String,
    phase: watch::Receiver<Arc<Phase>>,
    busy: AtomicBool,
    last_used: Mutex<Instant>,
    invocations: AtomicU64,
    init_duration: Mutex<Option<Duration>>,
    /// The container's OOM-kill count when last looked at.
    oom_kills: AtomicU64,
    /// Function output waiting for (or streaming to) `GET /logs`.
    logs: Arc<LogBuffer>,
}

/// Runs the supervisor until the process is killed: binds the invoke port
/// and forwarded ports, starts the runtime, serves.
pub async fn run(config: ContainerConfig) -> Result<(), SupervisorError> {
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SupervisorError::Bind { addr, source })?;
    for forward in &config.forwards {
        let local = SocketAddr::from(([127, 0, 0, 1], forward.local_port));
        let listener = TcpListener::bind(local)
            .await
            .map_err(|source| SupervisorError::Bind {
                addr: local,
                source,
            })?;
        tokio::spawn(forward_loop(listener, forward.host.clone(), forward.port));
    }

    let (phase_tx, phase_rx) = watch::channel(Arc::new(Phase::Starting));
    let logs = LogBuffer::new();
    let state = Arc::new(State {
        worker_id: config.worker_id.clone(),
        function: config.function.name.clone(),
        code_hash: config.function.code_hash.clone(),
        phase: phase_rx,
        busy: AtomicBool::new(false),
        last_used: Mutex::new(Instant::now()),
        invocations: AtomicU64::new(0),
        init_duration: Mutex::new(None),
        oom_kills: AtomicU64::new(oom_kills()),
        logs: logs.clone(),
    });

    let supervisor_config = supervisor_config(&config, logs.clone());
    let init_state = state.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let phase = match Supervisor::start(supervisor_config).await {
            Ok(supervisor) => {
                *init_state
                    .init_duration
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(started.elapsed());
                Phase::Ready(Arc::new(supervisor))
            }
            Err(esb_runtimes_core::RuntimeError::Init { payload, .. }) => {
                logs.spill_to_stderr();
                Phase::Failed(String::from_utf8_lossy(&payload).into_owned())
            }
            Err(other) => {
                logs.spill_to_stderr();
                Phase::Failed(
                    serde_json::json!({
                        "errorType": "Runtime.InvalidEntrypoint",
                        "errorMessage": other.to_string(),
                    })
                    .to_string(),
                )
            }
        };
        let _ = phase_tx.send(Arc::new(phase));
        // Keep the sender so receivers never see a closed channel.
        std::future::pending::<()>().await;
    });

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, request).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The [`SupervisorConfig`] for the container: code at `/var/task`, the
/// image's own environment (`PATH`, `LD_LIBRARY_PATH`, ...) under the
/// function's variables.
fn supervisor_config(config: &ContainerConfig, logs: Arc<LogBuffer>) -> SupervisorConfig {
    let mut function = config.function.to_spec(PathBuf::from(TASK_ROOT));
    let mut inherited: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k != CONFIG_ENV && k != "HOSTNAME")
        .collect();
    let path = inherited.remove("PATH");
    let home = inherited.remove("HOME");
    for (k, v) in inherited {
        function.environment.entry(k).or_insert(v);
    }
    let mut supervisor = SupervisorConfig::new(
        config.worker_id.clone(),
        Arc::new(function),
        config.launch.to_plan(),
        Arc::new(ContainerLogSink(logs)),
    );
    supervisor.path = path;
    supervisor.home = home.or_else(|| Some("/tmp".to_string()));
    supervisor
}

async fn forward_loop(listener: TcpListener, host: String, port: u16) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let host = host.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect((host.as_str(), port)).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// A small whole body, or the `GET /logs` stream.
type Reply = Response<Either<Full<Bytes>, Channel<Bytes, Infallible>>>;

fn whole(body: Bytes) -> Reply {
    Response::new(Either::Left(Full::new(body)))
}

fn json(status: StatusCode, body: impl serde::Serialize) -> Reply {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = whole(Bytes::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn message(status: StatusCode, text: &str) -> Reply {
    json(status, serde_json::json!({ "message": text }))
}

async fn route(state: &Arc<State>, request: Request<Incoming>) -> Reply {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/ready") => ready(state).await,
        (&Method::GET, "/status") => status(state),
        (&Method::POST, "/invoke") => invoke(state, request).await,
        (&Method::GET, "/logs") => Response::new(Either::Right(state.logs.subscribe())),
        _ => message(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn settled_phase(state: &State) -> Arc<Phase> {
    let mut phase = state.phase.clone();
    match phase
        .wait_for(|p| !matches!(p.as_ref(), Phase::Starting))
        .await
    {
        Ok(p) => p.clone(),
        Err(_) => Arc::new(Phase::Failed("supervisor stopped".to_string())),
    }
}

async fn ready(state: &State) -> Reply {
    let phase = settled_phase(state).await;
    let init = *state
        .init_duration
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (status, init_duration_us, error) = match phase.as_ref() {
        Phase::Ready(_) => (
            StatusCode::OK,
            init.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            None,
        ),
        Phase::Failed(error) => (StatusCode::BAD_GATEWAY, None, Some(error.clone())),
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, None, None),
    };
    json(
        status,
        ReadyResponse {
            worker_id: state.worker_id.clone(),
            init_duration_us,
            error,
        },
    )
}

fn status(state: &State) -> Reply {
    let alive = match state.phase.borrow().as_ref() {
        Phase::Ready(supervisor) => supervisor.is_alive(),
        _ => false,
    };
    let idle = state
        .last_used
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .elapsed();
    json(
        StatusCode::OK,
        StatusResponse {
            worker_id: state.worker_id.clone(),
            function: state.function.clone(),
            code_hash: state.code_hash.clone(),
            alive,
            busy: state.busy.load(Ordering::Acquire),
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            invocations: state.invocations.load(Ordering::Relaxed),
        },
    )
}

async fn invoke(state: &Arc<State>, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return message(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
    };
    let Some(invocation) = wire::invocation_from(&parts.headers, body) else {
        return message(StatusCode::BAD_REQUEST, "invalid invoke request");
    };
    let phase = settled_phase(state).await;
    let supervisor = match phase.as_ref() {
        Phase::Ready(supervisor) => supervisor.clone(),
        _ => return message(StatusCode::GONE, "runtime is not running"),
    };
    state.busy.store(true, Ordering::Release);
    let result = supervisor.invoke(invocation).await;
    state.busy.store(false, Ordering::Release);
    *state.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    state.invocations.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(mut result) => {
            // The cgroup's OOM counter is read only when the runtime died
            // (not on every warm invocation).
            if matches!(
                result.outcome,
                InvocationOutcome::Error {
                    kind: ErrorKind::RuntimeExit,
                    ..
                }
            ) {
                let now = oom_kills();
                if now > state.oom_kills.swap(now, Ordering::AcqRel) {
                    mark_out_of_memory(&mut result.outcome);
                }
            }
            let (headers, body) = wire::result_parts(&result);
            let mut response = whole(body);
            *response.headers_mut() = headers;
            response
        }
        Err(WorkerError::Gone(_)) => message(StatusCode::GONE, "runtime is not running"),
        Err(WorkerError::Busy(_)) => message(StatusCode::CONFLICT, "worker is busy"),
        Err(WorkerError::Transport { message: m, .. }) => message(StatusCode::BAD_REQUEST, &m),
    }
}

/// The container's cgroup OOM-kill counter (v2 `memory.events`, v1
/// `memory.oom_control`); 0 when neither can be read.
fn oom_kills() -> u64 {
    for path in [
        "/sys/fs/cgroup/memory.events",
        "/sys/fs/cgroup/memory/memory.oom_control",
    ] {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(count) = text
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        {
            return count;
        }
    }
    0
}

/// Lambda reports a runtime killed by the memory limit as
/// `Runtime.OutOfMemory`, not as a plain exit.
fn mark_out_of_memory(outcome: &mut InvocationOutcome) {
    if let InvocationOutcome::Error {
        kind: ErrorKind::RuntimeExit,
        payload,
    } = outcome
    {
        let message = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| {
                v.get("errorMessage")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "Runtime exited with error: signal: killed".to_string());
        *payload = Bytes::from(
            serde_json::json!({ "errorType": "Runtime.OutOfMemory", "errorMessage": message })
                .to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_rewrites_only_runtime_exits() {
        let mut exit = InvocationOutcome::Error {
            kind: ErrorKind::RuntimeExit,
            payload: Bytes::from_static(
                br#"{"errorType":"Runtime.ExitError","errorMessage":"RequestId: r Error: Runtime exited with error: signal: killed"}"#,
            ),
        };
        mark_out_of_memory(&mut exit);
        let InvocationOutcome::Error { payload, .. } = exit else {
            panic!("not an error")
        };
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["errorType"], "Runtime.OutOfMemory");
        assert!(
            v["errorMessage"]
                .as_str()
                .unwrap()
                .contains("signal: killed")
        );

        let mut function = InvocationOutcome::Error {
            kind: ErrorKind::Function,
            payload: Bytes::from_static(br#"{"errorType":"ValueError"}"#),
        };
        mark_out_of_memory(&mut function);
        let InvocationOutcome::Error { payload, .. } = function else {
            panic!("not an error")
        };
        assert_eq!(&payload[..], br#"{"errorType":"ValueError"}"#);
    }
}
