//! The supervisor: one per worker. It starts the function's runtime
//! process from a [`LaunchPlan`], serves it the Lambda Runtime API on
//! `127.0.0.1:<ephemeral port>`, hands it invocations one at a time,
//! captures its stdout/stderr per request (with START/END/REPORT lines),
//! enforces the timeout by killing the process group, and turns init
//! failures and crashes into Lambda's error payloads.
//!
//! Rendezvous: [`Supervisor::invoke`] queues a delivery and parks on a
//! oneshot; the runtime's `/next` takes the delivery (or parks its own
//! oneshot until one comes); `/response` or `/error` completes the
//! invocation's oneshot. No lock is held across an `.await`.
//!
//! Must not: know about routes, auth, pools or HTTP callers; decide when
//! workers start or stop (the pool does).

mod logs;
mod server;

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use esb_runtimes_core::launch::{LaunchPlan, WorkerEnvironment, runtime_environment};
use esb_runtimes_core::{
    ErrorKind, FunctionSpec, Invocation, InvocationOutcome, InvokeResult, LogSink, RuntimeError,
    Worker, WorkerError,
};
use http::HeaderValue;
use tokio::net::TcpListener;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::logs::LogCapture;

/// Largest buffered response a runtime may post (RIE's 6 MiB + 100 bytes);
/// larger ones get 413 and the caller `Function.ResponseSizeTooLarge`.
pub const MAX_RESPONSE_SIZE: usize = server::MAX_RESPONSE_BYTES;

/// Lambda's own limit for the init phase.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to start one worker.
#[derive(Clone)]
pub struct SupervisorConfig {
    /// Unique worker id (log stream suffix, `Worker::id`).
    pub worker_id: String,
    /// The function.
    pub spec: Arc<FunctionSpec>,
    /// Program to start (from [`esb_runtimes_core::launch::plan`]).
    pub plan: LaunchPlan,
    /// Where log lines go.
    pub log_sink: Arc<dyn LogSink>,
    /// Upper bound for init (spawn to first `/next`); default: 10 s, or
    /// the function's timeout when larger.
    pub init_timeout: Option<Duration>,
    /// `PATH` given to the runtime; default ESB's own `PATH`.
    pub path: Option<String>,
    /// `HOME` given to the runtime; default ESB's own `HOME`.
    pub home: Option<String>,
}

impl SupervisorConfig {
    /// A config with ESB's `PATH`/`HOME` and the default init timeout.
    pub fn new(
        worker_id: impl Into<String>,
        spec: Arc<FunctionSpec>,
        plan: LaunchPlan,
        log_sink: Arc<dyn LogSink>,
    ) -> Self {
        Self {
            worker_id: worker_id.into(),
            spec,
            plan,
            log_sink,
            init_timeout: None,
            path: std::env::var("PATH").ok(),
            home: std::env::var("HOME").ok(),
        }
    }
}

impl std::fmt::Debug for SupervisorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorConfig")
            .field("worker_id", &self.worker_id)
            .field("function", &self.spec.name)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// What `/next` hands to the runtime, prepared by `invoke` outside locks.
pub(crate) struct Delivery {
    request_id: HeaderValue,
    deadline_ms: HeaderValue,
    arn: HeaderValue,
    trace_id: HeaderValue,
    client_context: Option<HeaderValue>,
    cognito_identity: Option<HeaderValue>,
    payload: Bytes,
}

/// How the runtime finished an invocation.
pub(crate) enum Completion {
    Response(Bytes),
    Error(Bytes),
    TooLarge(usize),
}

pub(crate) enum InitSignal {
    Ready,
    Error(Bytes),
}

pub(crate) struct Current {
    request_id: Arc<str>,
    delivered: bool,
    done: oneshot::Sender<Completion>,
}

pub(crate) struct State {
    /// Present until the first `/next` or `/runtime/init/error`.
    init: Option<oneshot::Sender<InitSignal>>,
    next_waiter: Option<oneshot::Sender<Delivery>>,
    queued: Option<Delivery>,
    current: Option<Current>,
    dead: bool,
}

pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_current(&self, request_id: &str) -> bool {
        self.lock_state()
            .current
            .as_ref()
            .is_some_and(|c| c.delivered && &*c.request_id == request_id)
    }

    /// Takes the invocation `request_id` if the runtime may answer it now.
    pub(crate) fn take_current(&self, request_id: &str) -> Option<oneshot::Sender<Completion>> {
        let mut state = self.lock_state();
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.delivered && &*c.request_id == request_id)
        {
            state.current.take().map(|c| c.done)
        } else {
            None
        }
    }

    /// The runtime is gone: release a parked `/next` and forget work.
    fn mark_dead(&self) {
        let mut state = self.lock_state();
        state.dead = true;
        state.next_waiter = None;
        state.queued = None;
    }
}

/// One worker: the runtime process and its Runtime API server.
///
/// Dropping it kills the runtime's process group; [`Supervisor::stop`]
/// also waits until the process is reaped.
pub struct Supervisor {
    id: String,
    spec: Arc<FunctionSpec>,
    pid: u32,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    logs: Arc<LogCapture>,
    exit: watch::Receiver<Option<ExitStatus>>,
    alive: Arc<AtomicBool>,
    busy: AtomicBool,
    init_duration: Mutex<Option<Duration>>,
    /// Last known peak RSS in MB, for REPORT after the process is gone.
    max_memory_mb: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
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

fn init_payload(error_type: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "errorType": error_type, "errorMessage": message }).to_string())
}

/// Go-style text for an exit status (`exit status 1`, `signal: killed`),
/// as Lambda prints it.
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(libc::SIGKILL) => "signal: killed".to_string(),
        Some(libc::SIGSEGV) => "signal: segmentation fault".to_string(),
        Some(libc::SIGABRT) => "signal: aborted".to_string(),
        Some(libc::SIGTERM) => "signal: terminated".to_string(),
        Some(libc::SIGINT) => "signal: interrupt".to_string(),
        Some(libc::SIGBUS) => "signal: bus error".to_string(),
        Some(signal) => format!("signal: {signal}"),
        None => "exited without providing a reason".to_string(),
    }
}

#[allow(unsafe_code)]
fn kill_process_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions. The negative id
    // names the process group the runtime leads (spawned with
    // process_group(0)), so only the runtime and its descendants are hit.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Peak resident set size (`VmHWM`) of `pid` in MB, rounded up.
fn peak_rss_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.div_ceil(1024))
}

fn header_value(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

fn generated_trace_id(now: SystemTime) -> String {
    let epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let root = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{epoch:08x}-{};Parent={};Sampled=0",
        &root[..24],
        &parent[..16]
    )
}

fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
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
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(spawn_error)?;
        let addr = listener.local_addr().map_err(spawn_error)?;
        let runtime_api = addr.to_string();
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

        let (init_tx, init_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                init: Some(init_tx),
                next_waiter: None,
                queued: None,
                current: None,
                dead: false,
            }),
        });
        let server = tokio::spawn(server::serve(listener, shared.clone()));

        let mut command = tokio::process::Command::new(&config.plan.program);
        command
            .args(&config.plan.args)
            .env_clear()
            .envs(env)
            .current_dir(&config.plan.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let spawned_at = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                server.abort();
                return Err(RuntimeError::Spawn {
                    function,
                    source: std::io::Error::new(
                        error.kind(),
                        format!("{}: {error}", config.plan.program.display()),
                    ),
                });
            }
        };
        let pid = child.id().unwrap_or(0);
        let stdout = child
            .stdout
            .take()
            .and_then(|s| s.into_owned_fd().ok())
            .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());
        let stderr = child
            .stderr
            .take()
            .and_then(|s| s.into_owned_fd().ok())
            .and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok());
        let logs = Arc::new(LogCapture::new(
            function.clone(),
            config.worker_id.clone(),
            config.log_sink.clone(),
            stdout,
            stderr,
        ));

        let alive = Arc::new(AtomicBool::new(true));
        let (exit_tx, exit_rx) = watch::channel(None);
        let reaper = {
            let shared = shared.clone();
            let alive = alive.clone();
            tokio::spawn(async move {
                let status = child.wait().await;
                alive.store(false, Ordering::SeqCst);
                shared.mark_dead();
                // Descendants in the group go with the leader.
                kill_process_group(pid);
                let status = status.unwrap_or_else(|_| ExitStatus::from_raw(0x7f00));
                let _ = exit_tx.send(Some(status));
            })
        };
        let pumps = [0, 1].map(|index| tokio::spawn(logs.clone().pump(index)));

        let mut supervisor = Supervisor {
            id: config.worker_id,
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
            tasks: vec![server, reaper],
        };
        supervisor.tasks.extend(pumps);

        let init_timeout = config
            .init_timeout
            .unwrap_or_else(|| DEFAULT_INIT_TIMEOUT.max(config.spec.timeout));
        let mut exit = supervisor.exit.clone();
        let failure = tokio::select! {
            signal = init_rx => match signal {
                Ok(InitSignal::Ready) => None,
                Ok(InitSignal::Error(payload)) => Some(payload),
                Err(_) => Some(init_payload("Runtime.ExitError", "Error: Runtime exited without providing a reason")),
            },
            status = exit.wait_for(Option::is_some) => {
                let reason = status
                    .ok()
                    .and_then(|s| s.as_ref().map(describe_exit))
                    .unwrap_or_else(|| "exited without providing a reason".to_string());
                Some(init_payload(
                    "Runtime.ExitError",
                    &format!("Error: Runtime exited with error: {reason}"),
                ))
            }
            _ = tokio::time::sleep(init_timeout) => Some(init_payload(
                "Sandbox.Timedout",
                &format!("Error: Init timed out after {:.2} seconds", init_timeout.as_secs_f64()),
            )),
        };
        if let Some(payload) = failure {
            supervisor.stop_inner().await;
            let error_type = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| {
                    v.get("errorType")
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "Runtime.Unknown".to_string());
            supervisor.logs.platform_line(&format!(
                "INIT_REPORT Init Duration: {:.2} ms\tPhase: init\tStatus: error\tError Type: {error_type}",
                spawned_at.elapsed().as_secs_f64() * 1000.0
            ));
            return Err(RuntimeError::Init { function, payload });
        }
        *supervisor
            .init_duration
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(spawned_at.elapsed());
        Ok(supervisor)
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

    /// Runs one invocation to its end: response, function error, timeout
    /// (the runtime is killed), crash, or oversized response.
    ///
    /// If the returned future is dropped before it finishes, the runtime
    /// is killed: its state would be unknown.
    pub async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        if !self.is_alive() {
            return Err(WorkerError::Gone(self.id.clone()));
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(WorkerError::Busy(self.id.clone()));
        }
        let mut guard = CancelGuard {
            supervisor: self,
            armed: true,
        };
        let result = self.run(invocation).await;
        guard.armed = false;
        self.busy.store(false, Ordering::Release);
        result
    }

    async fn run(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        let limit = invocation
            .timeout
            .map_or(self.spec.timeout, |t| t.min(self.spec.timeout));
        let now = SystemTime::now();
        let deadline_ms = now.duration_since(UNIX_EPOCH).unwrap_or_default() + limit;
        let transport = |message: &str| WorkerError::Transport {
            worker: self.id.clone(),
            message: message.to_string(),
        };
        let request_id_header = header_value(&invocation.request_id)
            .ok_or_else(|| transport("request id is not a valid header value"))?;
        let arn = if invocation.invoked_function_arn.is_empty() {
            self.spec.arn()
        } else {
            invocation.invoked_function_arn.clone()
        };
        let trace_id = invocation
            .trace_id
            .as_deref()
            .and_then(header_value)
            .unwrap_or_else(|| {
                HeaderValue::from_str(&generated_trace_id(now)).unwrap_or(HeaderValue::from_static(
                    "Root=1-00000000-000000000000000000000000;Sampled=0",
                ))
            });
        let delivery = Delivery {
            request_id: request_id_header,
            deadline_ms: HeaderValue::from(deadline_ms.as_millis() as u64),
            arn: header_value(&arn).ok_or_else(|| transport("invalid function arn"))?,
            trace_id,
            client_context: invocation.client_context.as_deref().and_then(header_value),
            cognito_identity: invocation
                .cognito_identity
                .as_deref()
                .and_then(header_value),
            payload: invocation.payload,
        };
        let request_id: Arc<str> = Arc::from(invocation.request_id.as_str());
        let (done_tx, done_rx) = oneshot::channel();

        self.logs.begin(
            request_id.clone(),
            &format!("START RequestId: {request_id} Version: $LATEST"),
        );
        let started = Instant::now();
        {
            let mut state = self.shared.lock_state();
            if state.dead {
                drop(state);
                self.logs.finish(&[]);
                return Err(WorkerError::Gone(self.id.clone()));
            }
            let mut current = Current {
                request_id: request_id.clone(),
                delivered: false,
                done: done_tx,
            };
            // No parked /next (or its connection went away): the
            // runtime's next poll takes the delivery.
            match state.next_waiter.take() {
                Some(waiter) => match waiter.send(delivery) {
                    Ok(()) => current.delivered = true,
                    Err(delivery) => state.queued = Some(delivery),
                },
                None => state.queued = Some(delivery),
            }
            state.current = Some(current);
        }

        let mut exit = self.exit.clone();
        let ended = tokio::select! {
            biased;
            completion = done_rx => match completion {
                Ok(c) => Ended::Completed(c),
                Err(_) => Ended::Exited,
            },
            _ = exit.wait_for(Option::is_some) => Ended::Exited,
            _ = tokio::time::sleep(limit) => Ended::TimedOut,
        };
        let duration = started.elapsed();
        if let Some(mb) = peak_rss_mb(self.pid) {
            self.max_memory_mb.store(mb, Ordering::Relaxed);
        }
        let init_duration = self
            .init_duration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();

        let mut extra_lines: Vec<String> = Vec::new();
        let (outcome, duration) = match ended {
            Ended::Completed(Completion::Response(body)) => {
                (InvocationOutcome::Success(body), duration)
            }
            Ended::Completed(Completion::Error(body)) => (
                InvocationOutcome::Error {
                    kind: ErrorKind::Function,
                    payload: body,
                },
                duration,
            ),
            Ended::Completed(Completion::TooLarge(size)) => (
                InvocationOutcome::Error {
                    kind: ErrorKind::ResponseTooLarge,
                    payload: init_payload(
                        "Function.ResponseSizeTooLarge",
                        &format!(
                            "Response payload size ({size} bytes) exceeded maximum allowed payload size ({} bytes).",
                            server::MAX_RESPONSE_BYTES
                        ),
                    ),
                },
                duration,
            ),
            Ended::TimedOut => {
                self.kill_and_reap().await;
                let seconds = format!("{:.2}", limit.as_secs_f64());
                extra_lines.push(format!(
                    "{} {request_id} Task timed out after {seconds} seconds",
                    iso_now()
                ));
                (
                    InvocationOutcome::Error {
                        kind: ErrorKind::Timeout,
                        payload: init_payload(
                            "Sandbox.Timedout",
                            &format!(
                                "RequestId: {request_id} Error: Task timed out after {seconds} seconds"
                            ),
                        ),
                    },
                    limit,
                )
            }
            Ended::Exited => {
                // Make sure the process is reaped (and the group killed).
                self.kill_and_reap().await;
                let reason = self
                    .exit
                    .borrow()
                    .as_ref()
                    .map(describe_exit)
                    .unwrap_or_else(|| "exited without providing a reason".to_string());
                let message =
                    format!("RequestId: {request_id} Error: Runtime exited with error: {reason}");
                extra_lines.push(message.clone());
                extra_lines.push("Runtime.ExitError".to_string());
                (
                    InvocationOutcome::Error {
                        kind: ErrorKind::RuntimeExit,
                        payload: init_payload("Runtime.ExitError", &message),
                    },
                    duration,
                )
            }
        };
        {
            // Whatever happened, this invocation is over for the API.
            let mut state = self.shared.lock_state();
            if state
                .current
                .as_ref()
                .is_some_and(|c| c.request_id == request_id)
            {
                state.current = None;
                state.queued = None;
            }
        }

        let duration_ms = duration.as_secs_f64() * 1000.0;
        let mut report = format!(
            "REPORT RequestId: {request_id}\tDuration: {duration_ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB\t",
            duration_ms.ceil().max(1.0) as u64,
            self.spec.memory_mb,
            self.max_memory_mb.load(Ordering::Relaxed),
        );
        if let Some(init) = init_duration {
            report.push_str(&format!(
                "Init Duration: {:.2} ms\t",
                init.as_secs_f64() * 1000.0
            ));
        }
        let end = format!("END RequestId: {request_id}");
        let mut closing: Vec<&str> = extra_lines.iter().map(String::as_str).collect();
        closing.push(&end);
        closing.push(&report);
        let log_tail = self.logs.finish(&closing);
        Ok(InvokeResult {
            outcome,
            log_tail,
            duration,
            init_duration,
            worker_alive: self.is_alive(),
        })
    }

    /// Kills the runtime's process group and waits until it is reaped.
    async fn kill_and_reap(&self) {
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

    async fn stop_inner(&self) {
        self.kill_and_reap().await;
        // Let the pipe readers see EOF so they flush their last lines.
        self.logs.drain();
        if let Some(server) = self.tasks.first() {
            server.abort();
        }
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
        self.stop_inner().await;
    }
}

enum Ended {
    Completed(Completion),
    Exited,
    TimedOut,
}

/// Kills the runtime when an invocation is abandoned half-way.
struct CancelGuard<'a> {
    supervisor: &'a Supervisor,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.supervisor.alive.store(false, Ordering::SeqCst);
            if self.supervisor.exit.borrow().is_none() {
                kill_process_group(self.supervisor.pid);
            }
            self.supervisor.shared.mark_dead();
            self.supervisor.busy.store(false, Ordering::Release);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.exit.borrow().is_none() {
            kill_process_group(self.pid);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions_match_lambda() {
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(1 << 8)),
            "exit status 1"
        );
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(libc::SIGKILL)),
            "signal: killed"
        );
    }

    #[test]
    fn generated_trace_id_has_xray_shape() {
        let id = generated_trace_id(SystemTime::now());
        let parts: Vec<&str> = id.split(';').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[0].starts_with("Root=1-") && parts[0].len() == "Root=1-".len() + 8 + 1 + 24);
        assert_eq!(parts[1].len(), "Parent=".len() + 16);
        assert_eq!(parts[2], "Sampled=0");
    }

    #[test]
    fn peak_rss_of_self_is_positive() {
        assert!(peak_rss_mb(std::process::id()).unwrap() > 0);
    }
}
