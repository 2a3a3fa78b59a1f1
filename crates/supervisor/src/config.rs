//! What a supervisor needs to start one worker.

use std::sync::Arc;
use std::time::Duration;

use esb_runtimes_core::launch::LaunchPlan;
use esb_runtimes_core::{FunctionSpec, LogSink};

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

    /// The init limit: the configured one, else 10 s or the function's
    /// timeout when larger.
    pub(crate) fn init_limit(&self) -> Duration {
        self.init_timeout
            .unwrap_or_else(|| DEFAULT_INIT_TIMEOUT.max(self.spec.timeout))
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
