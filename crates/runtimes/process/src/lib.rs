//! The `process` runtime: each worker is a local child process (the
//! function's runtime client) with an in-process supervisor serving it the
//! Lambda Runtime API. No Docker needed; the default backend of `esb up`.
//!
//! Owns: choosing the launch plan for a function on this machine, starting
//! and tracking workers so that none outlives the backend.
//! Must not: hold pool policy (how many workers, when to reap) or know
//! about HTTP callers.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use esb_runtimes_core::launch::{self, LaunchOptions};
use esb_runtimes_core::{
    FunctionSpec, Invocation, InvokeResult, LogSink, RuntimeBackend, RuntimeError, StderrLogSink,
    Worker, WorkerError, WorkerInfo,
};
use esb_supervisor::{Supervisor, SupervisorConfig};

pub use esb_runtimes_core::launch::PythonBootstrap;

/// Settings of the process backend.
#[derive(Clone)]
pub struct ProcessOptions {
    /// Python interpreter for `python3.x` functions; default `python3.11`
    /// from `PATH`, else `python3`.
    pub python: Option<PathBuf>,
    /// Built-in bootstrap, `awslambdaric`, or auto (awslambdaric when the
    /// interpreter can import it).
    pub python_bootstrap: PythonBootstrap,
    /// Where function output and START/END/REPORT lines go.
    pub log_sink: Arc<dyn LogSink>,
    /// Directory for ESB's built-in runtime files (e.g. `<data dir>/runtime`).
    pub cache_dir: PathBuf,
    /// Run workers in the `sandbox` isolation level (own namespaces, one
    /// unprivileged uid per worker) when the machine allows it (root); on
    /// by default; decided once per process.
    pub sandbox: bool,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            python: None,
            python_bootstrap: PythonBootstrap::Auto,
            log_sink: Arc::new(StderrLogSink),
            cache_dir: launch::default_cache_dir(),
            sandbox: true,
        }
    }
}

impl ProcessOptions {
    /// Defaults, with `ESB_PYTHON` (interpreter) and
    /// `ESB_PYTHON_BOOTSTRAP` (`auto` | `builtin` | `awslambdaric`) read
    /// from the environment. An unknown bootstrap value is an error.
    pub fn from_env() -> Result<Self, ProcessOptionsError> {
        let mut options = Self::default();
        if let Ok(python) = std::env::var("ESB_PYTHON")
            && !python.is_empty()
        {
            options.python = Some(PathBuf::from(python));
        }
        if let Ok(value) = std::env::var("ESB_PYTHON_BOOTSTRAP") {
            options.python_bootstrap = PythonBootstrap::parse(&value)
                .ok_or(ProcessOptionsError::InvalidBootstrap(value))?;
        }
        Ok(options)
    }
}

impl std::fmt::Debug for ProcessOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessOptions")
            .field("python", &self.python)
            .field("python_bootstrap", &self.python_bootstrap)
            .field("cache_dir", &self.cache_dir)
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

/// A bad process backend setting.
#[derive(Debug, thiserror::Error)]
pub enum ProcessOptionsError {
    /// `ESB_PYTHON_BOOTSTRAP` is not `auto`, `builtin` or `awslambdaric`.
    #[error("ESB_PYTHON_BOOTSTRAP={0:?}: expected auto, builtin or awslambdaric")]
    InvalidBootstrap(String),
}

/// Runs workers as local child processes.
pub struct ProcessBackend {
    options: ProcessOptions,
    workers: Mutex<Vec<Weak<ProcessWorker>>>,
}

impl ProcessBackend {
    /// A backend with these options.
    ///
    /// Sets up worker isolation for the data directory `cache_dir` lives
    /// in (once per process): ends what a previous ESB of it left running,
    /// turns the sandbox on when asked and possible, and logs the level.
    pub fn new(options: ProcessOptions) -> Self {
        let instance = options.cache_dir.parent().unwrap_or(&options.cache_dir);
        esb_supervisor::sandbox::configure(options.sandbox, instance);
        Self {
            options,
            workers: Mutex::new(Vec::new()),
        }
    }

    /// Its options.
    pub fn options(&self) -> &ProcessOptions {
        &self.options
    }

    /// Stops every worker this backend started (held by the pool or not)
    /// and waits until their processes are gone (also
    /// [`RuntimeBackend::shutdown`]).
    pub async fn shutdown(&self) {
        let mut stopped = Vec::new();
        for worker in self.live_workers() {
            worker.supervisor.stop().await;
            stopped.push(worker.supervisor.id().to_string());
        }
        esb_supervisor::containment::tidy(&stopped);
    }

    /// Workers started by this backend that still exist.
    pub fn live_workers(&self) -> Vec<Arc<ProcessWorker>> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.retain(|w| w.strong_count() > 0);
        workers.iter().filter_map(Weak::upgrade).collect()
    }
}

impl Default for ProcessBackend {
    fn default() -> Self {
        Self::new(ProcessOptions::default())
    }
}

impl std::fmt::Debug for ProcessBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessBackend")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        // Dropping a supervisor kills its process group; workers still held
        // elsewhere are killed here too, so no child outlives the backend.
        for worker in self.live_workers() {
            worker.supervisor.kill();
        }
    }
}

#[async_trait::async_trait]
impl RuntimeBackend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start_worker(&self, spec: Arc<FunctionSpec>) -> Result<Arc<dyn Worker>, RuntimeError> {
        let launch_options = LaunchOptions {
            python: self.options.python.clone(),
            python_bootstrap: self.options.python_bootstrap,
            cache_dir: self.options.cache_dir.clone(),
            ..LaunchOptions::default()
        };
        // plan() may run the interpreter once (cached) and write files.
        let plan = {
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || launch::plan(&spec, &launch_options))
                .await
                .map_err(|e| RuntimeError::Backend(format!("launch plan task failed: {e}")))??
        };
        let worker_id = uuid::Uuid::new_v4().simple().to_string();
        let config = SupervisorConfig::new(worker_id, spec, plan, self.options.log_sink.clone());
        let supervisor = Supervisor::start(config).await?;
        let worker = Arc::new(ProcessWorker { supervisor });
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.retain(|w| w.strong_count() > 0);
        workers.push(Arc::downgrade(&worker));
        Ok(worker)
    }

    /// The children it started that still exist (alive or not yet reaped).
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, RuntimeError> {
        Ok(self
            .live_workers()
            .iter()
            .map(|w| {
                let spec = w.supervisor.spec();
                WorkerInfo {
                    id: w.supervisor.id().to_string(),
                    function: spec.name.clone(),
                    code_hash: spec.code_hash.clone(),
                    pid: Some(w.supervisor.pid()),
                    state: if w.supervisor.is_alive() {
                        "running".to_string()
                    } else {
                        "exited".to_string()
                    },
                }
            })
            .collect())
    }

    async fn shutdown(&self) {
        ProcessBackend::shutdown(self).await;
    }
}

/// One worker of the process backend: a runtime child process and its
/// supervisor.
#[derive(Debug)]
pub struct ProcessWorker {
    supervisor: Supervisor,
}

impl ProcessWorker {
    /// The supervisor (Runtime API address, pid).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }
}

#[async_trait::async_trait]
impl Worker for ProcessWorker {
    fn id(&self) -> &str {
        self.supervisor.id()
    }

    fn pid(&self) -> Option<u32> {
        Some(self.supervisor.pid())
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeResult, WorkerError> {
        self.supervisor.invoke(invocation).await
    }

    fn is_alive(&self) -> bool {
        self.supervisor.is_alive()
    }

    async fn stop(&self) {
        self.supervisor.stop().await;
    }
}
