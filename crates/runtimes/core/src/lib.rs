//! The runtime trait: how a worker sandbox is started, invoked and stopped.
//!
//! Owns the contract between the pool (policy: how many workers, when) and
//! the runtime backends (`process`, `docker` inside the agent, the agent
//! client): [`RuntimeBackend`] starts a [`Worker`] for a [`FunctionSpec`],
//! lists and shuts down its workers and reports [`WorkerEvent`]s; a worker
//! runs one invocation at a time through [`Worker::invoke`]. Also owns the launch plan for each
//! Lambda runtime identifier ([`launch`]) so the in-process supervisor and the
//! in-container supervisor start runtimes the same way.
//!
//! Must not: hold pool policy, parse HTTP, or know about routes.
#![deny(missing_docs)]

pub mod launch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// Everything a runtime backend needs to start a worker for one function.
///
/// Built once per function (by the CLI from the template model) and shared
/// by all its workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    /// Function name as callers use it (the `FunctionName` property, or the
    /// logical id).
    pub name: String,
    /// Lambda runtime identifier (`python3.12`, `provided.al2023`,
    /// `nodejs20.x`), empty for image functions.
    pub runtime: String,
    /// `Handler` property (`app.handler`); `None` for `provided` runtimes
    /// and images that define their own.
    pub handler: Option<String>,
    /// Absolute path of the code directory (`CodeUri`, or inline code
    /// written out), mounted or used as `LAMBDA_TASK_ROOT`.
    pub code_dir: PathBuf,
    /// Container image for `PackageType: Image` functions.
    pub image: Option<String>,
    /// `MemorySize` in MB.
    pub memory_mb: u32,
    /// `Timeout` of one invocation.
    pub timeout: Duration,
    /// Environment from the template (`Environment.Variables`) plus
    /// endpoints and credentials chosen by ESB; the Lambda variables
    /// (`AWS_LAMBDA_*`, `_HANDLER`, ...) are added by the supervisor.
    pub environment: BTreeMap<String, String>,
    /// AWS region the function believes it runs in.
    pub region: String,
    /// Account id used to build ARNs.
    pub account_id: String,
    /// Stable hash of code and configuration; workers with another hash are
    /// stale (used by Adopt & Sync in the docker runtime).
    pub code_hash: String,
}

impl FunctionSpec {
    /// The function's ARN, as `context.invoked_function_arn` shows it.
    pub fn arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.region, self.account_id, self.name
        )
    }
}

/// One invocation handed to a worker.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// Event JSON bytes, passed to the runtime untouched.
    pub payload: Bytes,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub invoked_function_arn: String,
    /// `Lambda-Runtime-Trace-Id`, if the caller sent one.
    pub trace_id: Option<String>,
    /// `Lambda-Runtime-Client-Context` (JSON text), if any.
    pub client_context: Option<String>,
    /// `Lambda-Runtime-Cognito-Identity` (JSON text), if any.
    pub cognito_identity: Option<String>,
    /// Upper bound for this invocation; the worker's own `Timeout` applies
    /// when it is lower (API Gateway's 29 s cap is passed here).
    pub timeout: Option<Duration>,
}

/// Why an invocation did not produce a normal result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The handler raised / returned an error (`/response` was not used,
    /// `/error` was).
    Function,
    /// The invocation ran past its timeout; the worker was killed.
    Timeout,
    /// The runtime process exited or crashed before answering.
    RuntimeExit,
    /// The runtime failed during init (`/runtime/init/error`, or it exited
    /// before its first `/next`).
    Init,
    /// The function's response was larger than 6 MB.
    ResponseTooLarge,
}

/// The result of one invocation, as the caller of the Invoke API sees it.
#[derive(Debug, Clone)]
pub enum InvocationOutcome {
    /// The runtime posted a response; these are its bytes.
    Success(Bytes),
    /// The function failed; `payload` is the Lambda error JSON
    /// (`{"errorMessage":..,"errorType":..,"stackTrace":[..]}`), sent with
    /// `X-Amz-Function-Error: Unhandled`.
    Error {
        /// What kind of failure it was.
        kind: ErrorKind,
        /// Error object for the caller.
        payload: Bytes,
    },
}

/// What a finished invocation reports besides its outcome.
#[derive(Debug, Clone)]
pub struct InvokeResult {
    /// Response or error.
    pub outcome: InvocationOutcome,
    /// The invocation's log lines (runtime output and START/END/REPORT),
    /// already cut to the last 4 KB, for `X-Amz-Log-Type: Tail`.
    pub log_tail: String,
    /// Time from handing the event over to the response.
    pub duration: Duration,
    /// Init duration when this was the worker's first invocation.
    pub init_duration: Option<Duration>,
    /// False when the worker died or was killed during this invocation and
    /// must not be reused.
    pub worker_alive: bool,
}

/// A failure of the worker itself (not of the function): the pool drops the
/// worker and, for a cold start, reports it to the caller.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker is not running any more.
    #[error("worker {0} is gone")]
    Gone(String),
    /// The worker is busy with another invocation (a pool bug, never a user
    /// error).
    #[error("worker {0} is already running an invocation")]
    Busy(String),
    /// Talking to the worker failed (docker runtime: the supervisor's port).
    #[error("worker {worker} transport: {message}")]
    Transport {
        /// Worker id.
        worker: String,
        /// What went wrong.
        message: String,
    },
}

/// A failure to start a worker.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The function's runtime identifier has no launch plan here.
    #[error("function {function}: runtime {runtime:?} is not supported by the {backend} runtime")]
    UnsupportedRuntime {
        /// Function name.
        function: String,
        /// Lambda runtime identifier.
        runtime: String,
        /// Backend name.
        backend: &'static str,
    },
    /// The function's code could not be found or used.
    #[error("function {function}: {message}")]
    InvalidCode {
        /// Function name.
        function: String,
        /// What is wrong with it.
        message: String,
    },
    /// Spawning the worker failed.
    #[error("function {function}: could not start worker: {source}")]
    Spawn {
        /// Function name.
        function: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime failed its init phase; `payload` is the Lambda error
    /// JSON to return to the invocation that caused the cold start.
    #[error("function {function}: init failed")]
    Init {
        /// Function name.
        function: String,
        /// Error object (`Runtime.ExitError`, the runtime's init error...).
        payload: Bytes,
    },
    /// Anything else the backend reports (docker engine errors, agent
    /// errors).
    #[error("{0}")]
    Backend(String),
    /// No compute node can take a worker now (every agent is lost): the
    /// gateway answers 503 at once (robustness contract C5).
    #[error("{0}")]
    NoCompute(String),
}

/// One running worker: a sandbox with one runtime client and its
/// supervisor.
#[async_trait::async_trait]
pub trait Worker: Send + Sync + std::fmt::Debug {
    /// Unique id (also the log stream suffix).
    fn id(&self) -> &str;
    /// OS process id of the runtime, when the backend knows it.
    fn pid(&self) -> Option<u32>;
    /// Runs one invocation to its end (response, error, timeout, crash).
    /// The caller must not call it again before it returns.
    async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError>;
    /// False once the runtime has exited or been killed.
    fn is_alive(&self) -> bool;
    /// Stops the worker and waits until its processes are gone.
    async fn stop(&self);
}

/// Where workers' log lines go (function output and platform lines).
pub trait LogSink: Send + Sync {
    /// One line (no trailing newline) from `function`'s worker `worker_id`,
    /// during invocation `request_id` if one was running.
    fn line(&self, function: &str, worker_id: &str, request_id: Option<&str>, line: &str);
}

/// A log sink that writes `[function] line` to standard error.
#[derive(Debug, Default, Clone, Copy)]
pub struct StderrLogSink;

impl LogSink for StderrLogSink {
    fn line(&self, function: &str, _worker_id: &str, _request_id: Option<&str>, line: &str) {
        eprintln!("[{function}] {line}");
    }
}

/// A log sink that drops everything (benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullLogSink;

impl LogSink for NullLogSink {
    fn line(&self, _: &str, _: &str, _: Option<&str>, _: &str) {}
}

/// A sandbox a backend runs now, as `esb ps` and the agent's `ListWorkers`
/// show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Function name.
    pub function: String,
    /// Code hash the worker was started with.
    pub code_hash: String,
    /// OS process id of the runtime, when the backend knows it.
    pub pid: Option<u32>,
    /// Backend-specific state (`running`, `idle`, `adopted`, `exited`).
    pub state: String,
}

/// Something that happened to a worker outside the pool's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The worker died or was removed outside ESB (container killed, OOM,
    /// `docker rm`).
    Exited {
        /// Worker id.
        worker_id: String,
        /// Function name.
        function: String,
    },
}

/// A sandbox backend: `process`, `docker`, a remote agent.
#[async_trait::async_trait]
pub trait RuntimeBackend: Send + Sync {
    /// Backend name for messages (`process`, `docker`).
    fn name(&self) -> &'static str;
    /// Starts a worker and waits until its runtime is ready for the first
    /// invocation (it called `/next`), or fails with the init error.
    async fn start_worker(&self, spec: Arc<FunctionSpec>) -> Result<Arc<dyn Worker>, RuntimeError>;
    /// Sandboxes this backend runs now (its own and, for container
    /// backends, adopted ones).
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, RuntimeError>;
    /// Stops every worker it started plus their networks/relays, and
    /// waits. Idempotent.
    async fn shutdown(&self);
    /// Lifecycle events (a worker died or was removed outside ESB) for the
    /// pool; `None` if the backend has none.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<WorkerEvent>> {
        None
    }
    /// Where the output of workers started from now on goes (the app's log
    /// store), for backends that are built before it (the container
    /// backends: their workers' output is streamed from the supervisor,
    /// see `esb_agent_client::logs`). The process backend gets its sink in
    /// its options; the default does nothing.
    fn set_log_sink(&self, _sink: Arc<dyn LogSink>) {}
}

/// Lambda's limit for synchronous request and response payloads.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
