//! [`Supervisor`]: one worker's lifecycle — bind the Runtime API, spawn the
//! runtime, wait for its first `/next` (init), stop it.

use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_runtimes_core::launch::{WorkerEnvironment, runtime_environment};
use esb_runtimes_core::{
    FunctionSpec, Invocation, InvokeResult, RuntimeError, Worker, WorkerError,
};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::SupervisorConfig;
use crate::logs::LogCapture;
use crate::process::{self, describe_exit, kill_process_group};
use crate::rendezvous::{InitSignal, Shared};
use crate::server;

/// One worker: the runtime process and its Runtime API server.
///
/// Dropping it kills the runtime's process group; [`Supervisor::stop`]
/// also waits until the process is reaped.
pub struct Supervisor {
    pub(crate) id: String,
    pub(crate) spec: Arc<FunctionSpec>,
    pub(crate) pid: u32,
    addr: std::net::SocketAddr,
    pub(crate) shared: Arc<Shared>,
    pub(crate) logs: Arc<LogCapture>,
    pub(crate) exit: watch::Receiver<Option<ExitStatus>>,
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) busy: AtomicBool,
    pub(crate) init_duration: Mutex<Option<Duration>>,
    /// Last known peak RSS in MB, for REPORT after the process is gone.
    pub(crate) max_memory_mb: AtomicU64,
    /// Where the peak RSS is read from.
    pub(crate) proc_status: process::ProcStatus,
    /// The Runtime API server first, then the reaper and the pipe readers.
    tasks: Vec<JoinHandle<()>>,
    /// The sandbox (its uid, its relays to S3, DynamoDB and the Invoke
    /// API), released after the process is killed.
    sandbox: Option<crate::sandbox::Attached>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("id", &self.id)
            .field("function", &self.spec.name)
            .field("pid", &self.pid)
            .field("runtime_api", &self.addr)
            .finish_non_exhaustive()
    }
}

/// How often a spawn that meets `ETXTBSY` is tried again.
const BUSY_RETRIES: u32 = 20;

/// Spawns the runtime; while the program is "text file busy" (`ETXTBSY`:
/// some process still holds it open for writing), tries again after a
/// short pause. That state is brief and common: a build or an editor that
/// has just written `bootstrap`, or any thread of this process that forked
/// while a write descriptor to it was open (the child holds the descriptor
/// until its own `exec`). After [`BUSY_RETRIES`] tries (about a second) the
/// error is returned as it is.
async fn spawn_retrying_busy(
    plan: &esb_runtimes_core::launch::LaunchPlan,
    env: Vec<(String, String)>,
    worker_id: &str,
    memory_mb: u64,
    hook: impl Fn() -> Option<crate::sandbox::Hook>,
) -> std::io::Result<process::Spawned> {
    let mut attempt = 0;
    loop {
        match process::spawn(plan, env.clone(), worker_id, memory_mb, hook()) {
            Err(error)
                if error.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && attempt < BUSY_RETRIES =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5)).await;
            }
            other => return other,
        }
    }
}

/// `{"errorType": .., "errorMessage": ..}`, Lambda's error payload.
pub(crate) fn error_payload(error_type: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "errorType": error_type, "errorMessage": message }).to_string())
}

impl Supervisor {
    /// Binds the Runtime API, spawns the runtime and waits until it asks
    /// for its first invocation.
    ///
    /// Errors: [`RuntimeError::Spawn`] when the program cannot be started,
    /// [`RuntimeError::Init`] when the runtime posts `/runtime/init/error`,
    /// exits before its first `/next`, or does not get there within the
    /// init timeout (`Sandbox.Timedout`).
    pub async fn start(config: SupervisorConfig) -> Result<Self, RuntimeError> {
        let function = config.spec.name.clone();
        let spawn_error = |source: std::io::Error| RuntimeError::Spawn {
            function: function.clone(),
            source,
        };
        let sandboxed = crate::sandbox::enabled();
        let host_listener = if sandboxed {
            None
        } else {
            Some(
                TcpListener::bind(("127.0.0.1", 0))
                    .await
                    .map_err(spawn_error)?,
            )
        };
        let runtime_api = match &host_listener {
            Some(listener) => listener.local_addr().map_err(spawn_error)?.to_string(),
            None => format!("127.0.0.1:{}", crate::sandbox::RUNTIME_API_PORT),
        };
        let date = chrono::Utc::now().format("%Y/%m/%d").to_string();
        let env = runtime_environment(
            &config.spec,
            &config.plan,
            &WorkerEnvironment {
                runtime_api: &runtime_api,
                worker_id: &config.worker_id,
                date: &date,
                path: config.path.as_deref(),
                home: config.home.as_deref(),
            },
        );
        // Sandbox: the Runtime API and the relays live in the worker's own
        // network namespace.
        let mut sandbox = None;
        let listener = match host_listener {
            Some(listener) => listener,
            None => {
                let (plan, env) = (config.plan.clone(), env.clone());
                let mut prepared =
                    tokio::task::spawn_blocking(move || crate::sandbox::prepare(&plan, &env))
                        .await
                        .map_err(|e| spawn_error(std::io::Error::other(e.to_string())))?
                        .map_err(spawn_error)?;
                let api = prepared.runtime_api.take();
                let listener = api
                    .ok_or_else(|| spawn_error(std::io::Error::other("no Runtime API listener")))
                    .and_then(|l| TcpListener::from_std(l).map_err(spawn_error))?;
                sandbox = Some(prepared);
                listener
            }
        };
        let addr = listener.local_addr().map_err(spawn_error)?;
        let plan = config.plan.clone();

        let (init_tx, init_rx) = oneshot::channel();
        let shared = Arc::new(Shared::new(init_tx));
        let server = tokio::spawn(server::serve(listener, shared.clone()));
        let spawned_at = Instant::now();
        let memory_mb = u64::from(config.spec.memory_mb);
        let spawned = match spawn_retrying_busy(&plan, env, &config.worker_id, memory_mb, || {
            sandbox.as_ref().map(crate::sandbox::Prepared::hook)
        })
        .await
        {
            Ok(spawned) => spawned,
            Err(source) => {
                server.abort();
                return Err(spawn_error(source));
            }
        };
        let mut supervisor = Self::assemble(&config, addr, shared, server, spawned);
        if let Some(mut prepared) = sandbox {
            let relays = std::mem::take(&mut prepared.relays);
            let relays = crate::sandbox::spawn_relays(relays).map_err(spawn_error)?;
            supervisor.sandbox = Some(prepared.attach(relays));
        }
        supervisor
            .await_init(config.init_limit(), init_rx, spawned_at)
            .await?;
        Ok(supervisor)
    }

    /// The supervisor of a just-spawned runtime: log pumps and reaper
    /// running.
    fn assemble(
        config: &SupervisorConfig,
        addr: std::net::SocketAddr,
        shared: Arc<Shared>,
        server: JoinHandle<()>,
        spawned: process::Spawned,
    ) -> Self {
        let logs = Arc::new(LogCapture::new(
            config.spec.name.clone(),
            config.worker_id.clone(),
            config.log_sink.clone(),
            spawned.stdout,
            spawned.stderr,
        ));
        let alive = Arc::new(AtomicBool::new(true));
        let (exit_tx, exit_rx) = watch::channel(None);
        let pid = spawned.pid;
        let reaper =
            process::spawn_reaper(spawned.child, pid, shared.clone(), alive.clone(), exit_tx);
        let mut tasks = vec![server, reaper];
        tasks.extend([0, 1].map(|index| tokio::spawn(logs.clone().pump(index))));
        Supervisor {
            id: config.worker_id.clone(),
            spec: config.spec.clone(),
            pid,
            addr,
            shared,
            logs,
            exit: exit_rx,
            alive,
            busy: AtomicBool::new(false),
            init_duration: Mutex::new(None),
            max_memory_mb: AtomicU64::new(0),
            proc_status: process::ProcStatus::open(pid),
            tasks,
            sandbox: None,
        }
    }

    /// Waits for the end of init: the first `/next` (ready), an init error,
    /// the runtime's exit, or the limit. On failure the runtime is stopped
    /// and `INIT_REPORT` logged.
    async fn await_init(
        &self,
        limit: Duration,
        init_rx: oneshot::Receiver<InitSignal>,
        spawned_at: Instant,
    ) -> Result<(), RuntimeError> {
        let mut exit = self.exit.clone();
        let failure = tokio::select! {
            signal = init_rx => match signal {
                Ok(InitSignal::Ready) => None,
                Ok(InitSignal::Error(payload)) => Some(payload),
                Err(_) => Some(error_payload("Runtime.ExitError", "Error: Runtime exited without providing a reason")),
            },
            status = exit.wait_for(Option::is_some) => {
                let reason = status
                    .ok()
                    .and_then(|s| s.as_ref().map(describe_exit))
                    .unwrap_or_else(|| "exited without providing a reason".to_string());
                Some(error_payload(
                    "Runtime.ExitError",
                    &format!("Error: Runtime exited with error: {reason}"),
                ))
            }
            _ = tokio::time::sleep(limit) => Some(error_payload(
                "Sandbox.Timedout",
                &format!("Error: Init timed out after {:.2} seconds", limit.as_secs_f64()),
            )),
        };
        let Some(payload) = failure else {
            *self.init_duration.lock() = Some(spawned_at.elapsed());
            return Ok(());
        };
        self.stop().await;
        let error_type = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|v| v.get("errorType")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "Runtime.Unknown".to_string());
        self.logs.platform_line(&format!(
            "INIT_REPORT Init Duration: {:.2} ms\tPhase: init\tStatus: error\tError Type: {error_type}",
            spawned_at.elapsed().as_secs_f64() * 1000.0
        ));
        Err(RuntimeError::Init {
            function: self.spec.name.clone(),
            payload,
        })
    }

    /// Worker id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The function this worker runs.
    pub fn spec(&self) -> &Arc<FunctionSpec> {
        &self.spec
    }

    /// OS process id of the runtime (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Address of the Runtime API (`AWS_LAMBDA_RUNTIME_API`).
    pub fn runtime_api_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// False once the runtime has exited or been killed.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Kills the runtime's process group and waits until it is reaped.
    pub(crate) async fn kill_and_reap(&self) {
        if self.exit.borrow().is_none() {
            kill_process_group(self.pid);
        }
        let mut exit = self.exit.clone();
        // The reaper task answers right after SIGKILL; the bound only
        // guards against a wedged runtime of tokio itself.
        let _ = tokio::time::timeout(Duration::from_secs(5), exit.wait_for(Option::is_some)).await;
        self.alive.store(false, Ordering::SeqCst);
        self.shared.mark_dead();
    }

    /// Kills the runtime's process group without waiting; the reaper task
    /// reaps it (use [`Supervisor::stop`] to wait).
    pub fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        if self.exit.borrow().is_none() {
            kill_process_group(self.pid);
        }
        self.shared.mark_dead();
    }

    /// Stops the worker and waits until its process is gone.
    pub async fn stop(&self) {
        self.kill_and_reap().await;
        // Let the pipe readers see EOF so they flush their last lines.
        self.logs.drain();
        if let Some(server) = self.tasks.first() {
            server.abort();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.exit.borrow().is_none() {
            kill_process_group(self.pid);
        }
        crate::containment::release(self.pid, &self.id);
        self.shared.mark_dead();
        // The reaper and pipe readers finish on their own once the
        // process is gone; the server would otherwise live forever.
        if let Some(server) = self.tasks.first() {
            server.abort();
        }
    }
}

#[async_trait::async_trait]
impl Worker for Supervisor {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        Supervisor::invoke(self, invocation).await
    }

    fn is_alive(&self) -> bool {
        Supervisor::is_alive(self)
    }

    async fn stop(&self) {
        Supervisor::stop(self).await;
    }
}
