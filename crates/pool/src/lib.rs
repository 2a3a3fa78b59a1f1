//! Worker pool: per-function worker sets, acquire/release, concurrency
//! limits, bounded wait then throttle, idle reaping, pre-warm, replacement of
//! crashed workers.
//!
//! Must not: parse HTTP or know how a worker is started (that is the
//! [`RuntimeBackend`]'s job).

use std::sync::Arc;
use std::time::Duration;

use esb_runtimes_core::{
    FunctionSpec, Invocation, InvokeResult, RuntimeBackend, RuntimeError, WorkerError,
};

/// Pool-wide settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most workers alive at once over all functions (AWS: account
    /// concurrency). Over it: `ConcurrentInvocationLimitExceeded`.
    pub max_workers: usize,
    /// A worker idle this long is stopped (default 5 minutes).
    pub idle_timeout: Duration,
    /// How long a request waits for a worker when the limit is reached.
    pub queue_timeout: Duration,
    /// How many requests may wait per function; more are throttled at once.
    pub queue_len: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_workers: 64,
            idle_timeout: Duration::from_secs(300),
            queue_timeout: Duration::from_secs(10),
            queue_len: 100,
        }
    }
}

/// Per-function limits from the template.
#[derive(Debug, Clone, Default)]
pub struct FunctionLimits {
    /// `ReservedConcurrentExecutions` (0 = always throttled).
    pub reserved_concurrency: Option<u32>,
    /// Workers kept warm from start (`ProvisionedConcurrencyConfig`).
    pub min_warm: u32,
}

/// Which limit throttled a request (the Invoke API's `Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// The function's `ReservedConcurrentExecutions` is used up.
    ReservedFunctionConcurrentInvocationLimitExceeded,
    /// The pool-wide maximum is used up.
    ConcurrentInvocationLimitExceeded,
}

/// Why the pool could not run an invocation.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No function with that name is registered.
    #[error("function not found: {0}")]
    UnknownFunction(String),
    /// Every allowed worker was busy for the whole wait.
    #[error("rate exceeded ({0:?})")]
    Throttled(ThrottleReason),
    /// A cold start failed.
    #[error(transparent)]
    Start(#[from] RuntimeError),
    /// The worker failed (not the function).
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The pool is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// A function's workers right now (`esb ps`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FunctionStatus {
    /// Function name.
    pub name: String,
    /// Idle, ready workers.
    pub warm: usize,
    /// Workers running an invocation.
    pub busy: usize,
    /// Workers being started.
    pub starting: usize,
    /// Concurrency limit that applies to it.
    pub limit: usize,
    /// Process ids of its workers, when known.
    pub pids: Vec<u32>,
}

/// The pool. Cheap to clone; all clones share the same workers.
#[derive(Clone)]
pub struct Pool {
    #[allow(dead_code)]
    inner: Arc<()>,
}

#[allow(unused_variables, clippy::unused_async)]
impl Pool {
    /// A pool that starts workers through `backend`.
    pub fn new(backend: Arc<dyn RuntimeBackend>, config: PoolConfig) -> Self {
        todo!("pool")
    }
    /// Adds a function (before or after start; re-registering replaces the
    /// spec for new workers).
    pub fn register(&self, spec: FunctionSpec, limits: FunctionLimits) {
        todo!("pool")
    }
    /// The spec of a registered function.
    pub fn function(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        todo!("pool")
    }
    /// All registered functions.
    pub fn functions(&self) -> Vec<Arc<FunctionSpec>> {
        todo!("pool")
    }
    /// Starts `min_warm` workers for every function.
    pub async fn prewarm(&self) -> Result<(), PoolError> {
        todo!("pool")
    }
    /// Runs one invocation on a warm worker, a new one, or after a bounded
    /// wait; throttles when none becomes free.
    pub async fn invoke(&self, function: &str, invocation: Invocation) -> Result<InvokeResult, PoolError> {
        todo!("pool")
    }
    /// Workers per function.
    pub fn status(&self) -> Vec<FunctionStatus> {
        todo!("pool")
    }
    /// Stops idle workers past the idle timeout, until shutdown (spawned
    /// once by `esb up`).
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        todo!("pool")
    }
    /// Refuses new invocations, waits (bounded by `grace`) for running ones,
    /// then stops every worker.
    pub async fn shutdown(&self, grace: Duration) {
        todo!("pool")
    }
}
