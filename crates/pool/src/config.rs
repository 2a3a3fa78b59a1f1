//! The pool's settings, per-function limits, errors and status report.

use std::time::Duration;

use esb_runtimes_core::{RuntimeError, WorkerError};

/// Longest sleep of the reaper: crashed idle workers are noticed within it.
pub(crate) const REAPER_TICK: Duration = Duration::from_secs(1);
/// After a background start (pre-warm top-up) fails, wait this long before
/// trying again, so a broken function does not start a process every tick.
pub(crate) const WARM_RETRY_BACKOFF: Duration = Duration::from_secs(30);
/// How often `shutdown` looks whether in-flight invocations are done.
pub(crate) const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

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
    /// Start failures in a row after which new workers of the function are
    /// refused at once (the circuit breaker opens); 0 turns it off.
    pub breaker_threshold: u32,
    /// How long an open breaker refuses starts before one probe start is
    /// let through.
    pub breaker_cooldown: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_workers: 64,
            idle_timeout: Duration::from_secs(300),
            queue_timeout: Duration::from_secs(10),
            queue_len: 100,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(10),
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

impl ThrottleReason {
    /// The `Reason` member of Lambda's `TooManyRequestsException`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReservedFunctionConcurrentInvocationLimitExceeded => {
                "ReservedFunctionConcurrentInvocationLimitExceeded"
            }
            Self::ConcurrentInvocationLimitExceeded => "ConcurrentInvocationLimitExceeded",
        }
    }
}

impl std::fmt::Display for ThrottleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Requests waiting for a worker.
    #[serde(default)]
    pub queued: usize,
    /// The start circuit breaker: `ok`, `open` or `half-open`.
    #[serde(default = "ok")]
    pub breaker: String,
    /// Worker starts that failed in a row.
    #[serde(default)]
    pub init_failures: u32,
    /// When open: milliseconds until a probe start may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

fn ok() -> String {
    "ok".to_string()
}
